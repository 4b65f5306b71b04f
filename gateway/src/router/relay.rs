//! One relayed channel: a client's channel on the router and its channel
//! on the node, bytes and messages passed both ways by two tasks. Used for
//! every kind of channel the router relays (session, `direct-tcpip`,
//! `forwarded-tcpip`).
//!
//! Flow control: the client's data is credited back to it only once the
//! node's channel took it (`window_follows_consumption`), and the node's
//! data is written to the client only as its window allows, so a slow end
//! holds back its own peer and nothing else.

use std::sync::Arc;

use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::sync::mpsc;

/// The writing half of a channel on a node link.
pub(super) type NodeWrite = russh::ChannelWriteHalf<russh::client::Msg>;

/// Answers to channel requests the node may queue before the handler
/// reads them.
const REPLY_BACKLOG: usize = 16;

/// A relayed channel's node end, for requests the client sends on it.
pub(super) struct Relay {
    pub node: Arc<NodeWrite>,
    /// The node's answers to those requests, in order.
    pub replies: mpsc::Receiver<bool>,
}

/// Relay `channel` (the client's) and `node` both ways until either ends.
pub(super) fn spawn(
    channel: Channel<Msg>,
    node: russh::Channel<russh::client::Msg>,
    handle: russh::server::Handle,
) -> Relay {
    let id = channel.id();
    let (client_read, client_write) = channel.split();
    let (node_read, node_write) = node.split();
    let (replies_tx, replies) = mpsc::channel(REPLY_BACKLOG);
    let node_write = Arc::new(node_write);
    tokio::spawn(client_to_node(
        client_read,
        node_write.clone(),
        handle.clone(),
        id,
    ));
    tokio::spawn(node_to_client(
        node_read,
        client_write,
        handle,
        id,
        replies_tx,
    ));
    Relay {
        node: node_write,
        replies,
    }
}

/// The client's side of a channel to the node: data (credited back to the
/// client once the node took it), EOF, window changes, signals.
async fn client_to_node(
    mut client: russh::ChannelReadHalf,
    node: Arc<NodeWrite>,
    handle: russh::server::Handle,
    id: ChannelId,
) {
    while let Some(msg) = client.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => {
                let n = data.len() as u32;
                let sent = node.data_bytes(data).await;
                handle.consumed(id, n);
                sent
            }
            ChannelMsg::Eof => node.eof().await,
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                node.window_change(col_width, row_height, pix_width, pix_height)
                    .await
            }
            ChannelMsg::Signal { signal } => node.signal(signal).await,
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = node.close().await;
}

/// The node's side of a channel to the client: output, stderr, EOF, exit
/// status or signal, close; its answers to requests to the handler.
async fn node_to_client(
    mut node: russh::ChannelReadHalf,
    client: russh::ChannelWriteHalf<Msg>,
    handle: russh::server::Handle,
    id: ChannelId,
    replies: mpsc::Sender<bool>,
) {
    while let Some(msg) = node.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => client.data_bytes(data).await.map_err(|_| ()),
            ChannelMsg::ExtendedData { data, ext } => {
                client.extended_data_bytes(ext, data).await.map_err(|_| ())
            }
            ChannelMsg::Eof => client.eof().await.map_err(|_| ()),
            ChannelMsg::ExitStatus { exit_status } => {
                client.exit_status(exit_status).await.map_err(|_| ())
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
            }
            ChannelMsg::Success => replies.send(true).await.map_err(|_| ()),
            ChannelMsg::Failure => replies.send(false).await.map_err(|_| ()),
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = client.close().await;
}
