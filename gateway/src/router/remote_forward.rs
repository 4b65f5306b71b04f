//! Remote forwarding (`ssh -R`) through a router. The client's
//! `tcpip-forward` and `cancel-tcpip-forward` requests are sent to the
//! session's node over the link, which decides on them by its own rules
//! and listens on the session's loopback; its answer (with the port it
//! bound when the client asked for port 0) is the client's. Each
//! connection a program of the session makes to such a listener comes to
//! the router as a `forwarded-tcpip` channel on the link (`link.rs` queues
//! it here); the router opens one with the same addresses to the client,
//! accepts the node's once the client accepted, and relays the two as any
//! other channel (`relay.rs`). A client that refuses, or does not answer
//! in time, gets the node's open refused: the node closes the program's
//! connection. An open for no forward of this connection (by the port
//! bound and the address asked) is refused too: the router trusts the
//! node it verified, but does not let it reach the client with channels
//! the client never asked for.
//!
//! Bounds: forwards per connection (the node has its own, lower one),
//! opens queued from the link, and opens waiting for the client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use blink_sdk::escape::Escaped;
use russh::ChannelOpenFailure;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

use super::link::{Link, NodeCredit};
use super::relay;

/// Forwards one client connection may hold through a router (the node
/// refuses past its own `max_remote_forwards` first, 8 by default).
const MAX_FORWARDS: usize = 64;
/// `forwarded-tcpip` opens a link queues for its connection.
pub(super) const QUEUED_OPENS: usize = 32;
/// `forwarded-tcpip` opens waiting for the client's answer at once, per
/// connection.
const PENDING_OPENS: usize = 32;
/// How long the client may take to accept a `forwarded-tcpip` channel:
/// less than the node waits for the router (30 s), so the node learns of
/// the refusal rather than giving up.
const CLIENT_OPEN_WAIT: Duration = Duration::from_secs(20);
/// Time the node has to answer a forwarding request (it may start a
/// stopped session for it).
const NODE_REPLY_WAIT: Duration = Duration::from_secs(60);
/// How long an open for a port not (yet) among the connection's forwards
/// waits for it: the node's answer to a request and its first open come
/// in order on the link, but are handled by different tasks here.
const FORWARD_KNOWN_WAIT: Duration = Duration::from_secs(5);

/// A `forwarded-tcpip` channel the node opened on the link, not yet
/// answered.
pub(super) struct ForwardedOpen {
    pub channel: russh::Channel<russh::client::Msg>,
    pub connected_address: String,
    pub connected_port: u32,
    pub originator_address: String,
    pub originator_port: u32,
    pub reply: russh::client::ChannelOpenHandle,
}

/// The address each forward of a connection was asked on, by the port
/// bound.
type Listening = HashMap<u32, String>;

/// One client connection's remote forwards.
pub(super) struct RemoteForwards {
    /// The connection's forwards; the opener checks the node's opens
    /// against them.
    listening: watch::Sender<Listening>,
    /// Opens the node's forwarded connections on the client, from the
    /// first forward until the connection ends.
    opener: Option<AbortOnDropHandle<()>>,
}

impl Default for RemoteForwards {
    fn default() -> Self {
        Self {
            listening: watch::Sender::new(Listening::new()),
            opener: None,
        }
    }
}

impl RemoteForwards {
    /// A `tcpip-forward` request: the node's answer. On success with
    /// `port` 0, `port` becomes the port the node bound.
    pub(super) async fn request(
        &mut self,
        link: &mut Link,
        address: &str,
        port: &mut u32,
        client: russh::server::Handle,
    ) -> bool {
        if self.listening.borrow().len() >= MAX_FORWARDS {
            tracing::info!(host = %Escaped::limit(address, 256), port = *port, "router ssh: remote forward refused: too many on this connection");
            return false;
        }
        if self.opener.is_none()
            && let Some(opens) = link.take_forwarded()
        {
            self.opener = Some(AbortOnDropHandle::new(tokio::spawn(open_on_client(
                opens,
                client,
                link.credit(),
                self.listening.subscribe(),
            ))));
        }
        let bound = match tokio::time::timeout(NODE_REPLY_WAIT, link.tcpip_forward(address, *port))
            .await
        {
            Ok(Ok(bound)) => bound,
            Ok(Err(e)) => {
                tracing::debug!(host = %Escaped::limit(address, 256), port = *port, error = %e, "router ssh: the node refused a remote forward");
                return false;
            }
            Err(_) => {
                tracing::warn!(host = %Escaped::limit(address, 256), port = *port, "router ssh: the node did not answer a remote forward");
                return false;
            }
        };
        if *port == 0 {
            *port = bound;
        }
        self.listening.send_modify(|listening| {
            listening.insert(*port, address.to_owned());
        });
        true
    }

    /// A `cancel-tcpip-forward` request for a forward of this connection
    /// (by the port bound, as the node matches it): the node's answer.
    pub(super) async fn cancel(&mut self, link: &Link, address: &str, port: u32) -> bool {
        if !self
            .listening
            .send_if_modified(|listening| listening.remove(&port).is_some())
        {
            return false;
        }
        matches!(
            tokio::time::timeout(NODE_REPLY_WAIT, link.cancel_tcpip_forward(address, port)).await,
            Ok(Ok(()))
        )
    }
}

/// Whether a forward of this connection listens on `port` at `address`,
/// waiting up to `within` for one to appear.
async fn is_forwarded(
    listening: &mut watch::Receiver<Listening>,
    address: &str,
    port: u32,
    within: Duration,
) -> bool {
    let known = listening.wait_for(|l| l.get(&port).is_some_and(|a| a == address));
    matches!(tokio::time::timeout(within, known).await, Ok(Ok(_)))
}

/// Take the node's `forwarded-tcpip` opens off the link's queue, each
/// answered on its own (at most [`PENDING_OPENS`] at once, more are
/// refused), until the link ends.
async fn open_on_client(
    mut opens: mpsc::Receiver<ForwardedOpen>,
    client: russh::server::Handle,
    credit: NodeCredit,
    listening: watch::Receiver<Listening>,
) {
    let pending = Arc::new(Semaphore::new(PENDING_OPENS));
    while let Some(open) = opens.recv().await {
        match pending.clone().try_acquire_owned() {
            Ok(slot) => {
                let (client, credit, mut listening) =
                    (client.clone(), credit.clone(), listening.clone());
                tokio::spawn(async move {
                    let (address, port) = (&open.connected_address, open.connected_port);
                    if is_forwarded(&mut listening, address, port, FORWARD_KNOWN_WAIT).await {
                        forward_one(open, client, credit, slot).await;
                    } else {
                        tracing::warn!(host = %Escaped::limit(address, 256), port, "router ssh: the node opened a forwarded connection for no forward of this connection: refused");
                        drop(slot);
                        open.reply
                            .reject(ChannelOpenFailure::AdministrativelyProhibited)
                            .await;
                    }
                });
            }
            Err(_) => {
                tracing::info!(
                    "router ssh: forwarded connection refused: too many waiting for the client"
                );
                open.reply
                    .reject(ChannelOpenFailure::ResourceShortage)
                    .await;
            }
        }
    }
}

/// Open the node's forwarded connection on the client with the same
/// addresses; accepted on the node and relayed once the client accepts,
/// refused on the node otherwise.
async fn forward_one(
    open: ForwardedOpen,
    client: russh::server::Handle,
    credit: NodeCredit,
    slot: OwnedSemaphorePermit,
) {
    let opening = client.channel_open_forwarded_tcpip(
        open.connected_address.clone(),
        open.connected_port,
        open.originator_address.clone(),
        open.originator_port,
    );
    let answer = tokio::time::timeout(CLIENT_OPEN_WAIT, opening).await;
    drop(slot);
    match answer {
        Ok(Ok(channel)) => {
            open.reply.accept().await;
            // No channel requests are relayed on a `forwarded-tcpip`
            // channel: the relay's request end is not kept.
            drop(relay::spawn(channel, open.channel, client, credit));
        }
        Ok(Err(e)) => {
            tracing::debug!(port = open.connected_port, error = %e, "router ssh: the client refused a forwarded connection");
            open.reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
        Err(_) => {
            tracing::info!(
                port = open.connected_port,
                "router ssh: the client did not answer a forwarded connection"
            );
            open.reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn only_a_forward_of_the_connection_lets_an_open_through() {
        let forwards = RemoteForwards::default();
        let mut seen = forwards.listening.subscribe();
        forwards.listening.send_modify(|l| {
            l.insert(4000, "localhost".into());
        });
        assert!(is_forwarded(&mut seen, "localhost", 4000, SHORT).await);
        // Another port, or the same port asked on another address.
        assert!(!is_forwarded(&mut seen, "localhost", 4001, SHORT).await);
        assert!(!is_forwarded(&mut seen, "0.0.0.0", 4000, SHORT).await);
        // Cancelled: no longer.
        forwards
            .listening
            .send_if_modified(|l| l.remove(&4000).is_some());
        assert!(!is_forwarded(&mut seen, "localhost", 4000, SHORT).await);
    }

    #[tokio::test]
    async fn an_open_just_ahead_of_its_forward_waits_for_it() {
        let forwards = RemoteForwards::default();
        let mut seen = forwards.listening.subscribe();
        let sender = forwards.listening.clone();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send_modify(|l| {
                l.insert(4000, "localhost".into());
            });
        });
        assert!(is_forwarded(&mut seen, "localhost", 4000, Duration::from_secs(10)).await);
        late.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_gone_lets_nothing_through() {
        let forwards = RemoteForwards::default();
        let mut seen = forwards.listening.subscribe();
        drop(forwards);
        assert!(!is_forwarded(&mut seen, "localhost", 4000, Duration::from_secs(10)).await);
    }
}
