//! One relayed channel: a client's channel on the router and its channel
//! on the node, bytes and messages passed both ways. Used for every kind
//! of channel the router relays (session, `direct-tcpip`,
//! `forwarded-tcpip`).
//!
//! Each direction is two tasks: a reader that takes every message off its
//! russh channel at once (so russh's per-channel queue never fills and
//! never stalls the connection's other channels), and a writer that passes
//! them on in order, waiting for the other side's window.
//!
//! Flow control: each side's data is credited back to it only once the
//! other side took it (`window_follows_consumption` on the router's server
//! and on its links, patches/russh), so what a reader holds is bounded by
//! the window granted, and a slow end holds back its own peer and nothing
//! else. A peer that sends past its window is cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::sync::mpsc;

use super::link::NodeCredit;

/// The writing half of a channel on a node link.
pub(super) type NodeWrite = russh::ChannelWriteHalf<russh::client::Msg>;

/// Answers to channel requests the node may queue before the handler
/// reads them.
const REPLY_BACKLOG: usize = 16;

/// Bytes a direction may hold: the window granted (2 MiB, `ssh.rs` and
/// `link.rs`) plus a packet's worth of slack. Past it, the sender broke
/// the protocol.
const MAX_HELD: usize = 2 * 1024 * 1024 + 64 * 1024;

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
    credit: NodeCredit,
) -> Relay {
    let id = channel.id();
    let node_id = node.id();
    let (client_read, client_write) = channel.split();
    let (node_read, node_write) = node.split();
    let (replies_tx, replies) = mpsc::channel(REPLY_BACKLOG);
    let node_write = Arc::new(node_write);
    let (to_node, from_client) = mpsc::unbounded_channel();
    let (to_client, from_node) = mpsc::unbounded_channel();
    let held_up = Arc::new(AtomicUsize::new(0));
    let held_down = Arc::new(AtomicUsize::new(0));
    tokio::spawn(take_all(client_read, to_node, held_up.clone(), "client"));
    tokio::spawn(take_all(node_read, to_client, held_down.clone(), "node"));
    tokio::spawn(client_to_node(
        from_client,
        node_write.clone(),
        handle.clone(),
        id,
        held_up,
    ));
    tokio::spawn(node_to_client(
        from_node,
        Downstream {
            client: client_write,
            handle,
            id,
            credit,
            node_id,
        },
        replies_tx,
        held_down,
    ));
    Relay {
        node: node_write,
        replies,
    }
}

/// The data bytes of a message, if it carries any.
fn data_len(msg: &ChannelMsg) -> usize {
    match msg {
        ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len(),
        _ => 0,
    }
}

/// Take every message off `read` as it comes, counting the data held in
/// `held` (the writer takes it off); stop at the channel's end, when the
/// writer is gone, or when the sender goes past its window.
async fn take_all(
    mut read: russh::ChannelReadHalf,
    to: mpsc::UnboundedSender<ChannelMsg>,
    held: Arc<AtomicUsize>,
    from: &'static str,
) {
    while let Some(msg) = read.wait().await {
        let n = data_len(&msg);
        if held.fetch_add(n, Ordering::SeqCst) + n > MAX_HELD {
            tracing::warn!(
                from,
                "router ssh: a channel's data went past its window: closing it"
            );
            break;
        }
        let last = matches!(msg, ChannelMsg::Close);
        if to.send(msg).is_err() || last {
            break;
        }
    }
}

/// The client's side of a channel to the node: data (credited back to the
/// client once the node took it), EOF, window changes, signals.
async fn client_to_node(
    mut from_client: mpsc::UnboundedReceiver<ChannelMsg>,
    node: Arc<NodeWrite>,
    handle: russh::server::Handle,
    id: ChannelId,
    held: Arc<AtomicUsize>,
) {
    while let Some(msg) = from_client.recv().await {
        let sent = match msg {
            ChannelMsg::Data { data } => {
                let n = data.len();
                let sent = node.data_bytes(data).await;
                held.fetch_sub(n, Ordering::SeqCst);
                handle.consumed(id, n as u32);
                sent
            }
            // Not relayed (no use from a client), but credited back.
            ChannelMsg::ExtendedData { data, .. } => {
                held.fetch_sub(data.len(), Ordering::SeqCst);
                handle.consumed(id, data.len() as u32);
                Ok(())
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

/// Where the node's side of a channel goes: the client's channel, and the
/// node's channel to credit once the client took its data.
struct Downstream {
    client: russh::ChannelWriteHalf<Msg>,
    handle: russh::server::Handle,
    id: ChannelId,
    credit: NodeCredit,
    node_id: ChannelId,
}

/// The node's side of a channel to the client: output, stderr (credited
/// back to the node once the client took them), EOF, exit status or
/// signal, close; its answers to requests to the handler.
async fn node_to_client(
    mut from_node: mpsc::UnboundedReceiver<ChannelMsg>,
    down: Downstream,
    replies: mpsc::Sender<bool>,
    held: Arc<AtomicUsize>,
) {
    let Downstream {
        client,
        handle,
        id,
        credit,
        node_id,
    } = down;
    while let Some(msg) = from_node.recv().await {
        let n = data_len(&msg);
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
        if n > 0 {
            held.fetch_sub(n, Ordering::SeqCst);
            credit.consumed(node_id, n as u32).await;
        }
        if sent.is_err() {
            break;
        }
    }
    let _ = client.close().await;
}
