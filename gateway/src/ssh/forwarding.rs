//! What a connection's forwarding requests do. A `direct-tcpip` channel
//! (`ssh -L`, `ssh -D`) connects to a port on the session's own loopback;
//! a `tcpip-forward` request (`ssh -R`) listens on one, and each
//! connection a program of the session makes to it comes to the client as
//! a `forwarded-tcpip` channel. Whether a request is allowed is the SDK's
//! rule (`blink_sdk::manager::forwarding`), asked before anything is made;
//! the bytes go through `tunnel.rs`.
//!
//! A connection's listeners live in [`Forwarding`], held by its `Conn`:
//! `cancel-tcpip-forward` drops one, and all go when the connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::ForwardListener;
use blink_sdk::manager::forwarding::ForwardRules;
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::connection::ConnStats;
use super::requests::Conn;
use super::shutdown::Shutdown;
use super::tunnel::{self, Direction, Forward, Tunnel};

/// How long the client may take to accept a `forwarded-tcpip` channel
/// (OpenSSH's client answers once it has connected to its own target).
const CLIENT_OPEN_WAIT: Duration = Duration::from_secs(30);

/// A connection's forwards: the bound on forwarded connections open at
/// once, and its listeners by the port they listen on.
pub(super) struct Forwarding {
    slots: Arc<Semaphore>,
    listeners: HashMap<u16, RemoteForward>,
}

impl Forwarding {
    pub(super) fn new(max_connections: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_connections)),
            listeners: HashMap::new(),
        }
    }
}

/// One `ssh -R` listener: its accept loop runs until this is dropped
/// (cancelled, or the connection ended), then one log line.
struct RemoteForward {
    task: JoinHandle<()>,
    session: String,
    peer: SocketAddr,
    address: String,
    port: u16,
    started: Instant,
    connections: Arc<AtomicU64>,
    ended: &'static str,
}

impl Drop for RemoteForward {
    fn drop(&mut self) {
        self.task.abort();
        tracing::info!(
            target: "blink::ssh::forward",
            peer = %self.peer,
            session = %self.session,
            direction = "remote",
            host = %Escaped::limit(&self.address, 256),
            port = self.port,
            connections = self.connections.load(Ordering::SeqCst),
            ended = self.ended,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "ssh remote forward closed"
        );
    }
}

impl Conn {
    /// The rules for this connection's forwards: the server's switch and
    /// the login key's options.
    fn forward_rules(&self) -> ForwardRules<'_> {
        ForwardRules {
            enabled: self.gateway.config.allow_forwarding,
            key: &self.key_options,
        }
    }

    /// A `direct-tcpip` channel (`ssh -L`, `ssh -D`) to `host:port`. The
    /// rules are asked at once: a refusal rejects the open (returned, for
    /// the client's debug output). The connection is then made in a task
    /// of its own (a stopped session starts for it), the open accepted
    /// once it is, or rejected as OpenSSH's sshd does when its connect
    /// fails.
    pub(super) async fn open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        origin: (&str, u32),
        reply: ChannelOpenHandle,
        handle: Handle,
    ) -> Option<String> {
        let Some(session) = self.counted_session.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return None;
        };
        let forward = Forward {
            session,
            peer: self.peer,
            direction: Direction::Local,
            host: host.to_string(),
            port,
            origin: format!("{}:{}", origin.0, origin.1),
        };
        let checked = if self.shutdown.is_shutdown() {
            Err("the server is shutting down".to_string())
        } else {
            self.forward_rules()
                .connect(host, port)
                .map_err(|e| e.to_string())
        };
        let target = match checked {
            Ok(target) => target,
            Err(why) => {
                forward.refused(&why);
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Some(why);
            }
        };
        let Ok(slot) = self.forwarding.slots.clone().try_acquire_owned() else {
            let why = "too many forwarded connections on this SSH connection";
            forward.refused(why);
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Some(why.to_string());
        };
        self.stats.forwards.fetch_add(1, Ordering::SeqCst);
        metrics::counter!(crate::metrics::SSH_CHANNELS_TOTAL, "kind" => "direct-tcpip")
            .increment(1);
        self.stats.touch();
        let manager = self.gateway.manager.clone();
        let stats = self.stats.clone();
        self.channel_tasks.spawn(async move {
            match manager.forward_connect(&forward.session, target).await {
                Ok(connection) => {
                    reply.accept().await;
                    let tunnel = Tunnel {
                        forward,
                        stats,
                        handle,
                        slot,
                    };
                    tunnel.run(channel, connection).await;
                }
                Err(e) => {
                    if e.kind() == blink_sdk::error::ErrorKind::Forbidden {
                        forward.refused(&e.to_string());
                    } else {
                        forward.failed(&e.to_string());
                    }
                    reply.reject(tunnel::open_failure(&e)).await;
                }
            }
        });
        None
    }

    /// A `tcpip-forward` request (`ssh -R`): listen on the session's
    /// loopback (port 0: any free one, written back to `port`). Answered
    /// once the listener is made (a stopped session starts for it);
    /// `Err` says why not, for the client's debug output.
    pub(super) async fn request_remote_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        handle: Handle,
    ) -> Result<(), String> {
        let Some(session) = self.counted_session.clone() else {
            return Err("not logged in".into());
        };
        let forward = Forward {
            session: session.clone(),
            peer: self.peer,
            direction: Direction::Remote,
            host: address.to_string(),
            port: *port,
            origin: String::new(),
        };
        let refuse = |why: String| {
            forward.refused(&why);
            Err(why)
        };
        if self.shutdown.is_shutdown() {
            return refuse("the server is shutting down".into());
        }
        let target = match self.forward_rules().listen(address, *port) {
            Ok(target) => target,
            Err(e) => return refuse(e.to_string()),
        };
        if self.forwarding.listeners.len() >= self.gateway.config.limits.max_remote_forwards {
            return refuse("too many remote forwards on this SSH connection".into());
        }
        if target.port() != 0 && self.forwarding.listeners.contains_key(&target.port()) {
            return refuse("this connection already forwards that port".into());
        }
        let listener = match self.gateway.manager.forward_listen(&session, target).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == blink_sdk::error::ErrorKind::Forbidden => {
                return refuse(e.to_string());
            }
            Err(e) => {
                forward.failed(&e.to_string());
                return Err(tunnel::listen_failure(&e, *port));
            }
        };
        let bound = listener.port();
        *port = u32::from(bound);
        let connections = Arc::new(AtomicU64::new(0));
        let accepting = Accepting {
            listener,
            address: address.to_string(),
            forward: Forward {
                port: u32::from(bound),
                ..forward
            },
            slots: self.forwarding.slots.clone(),
            handle,
            stats: self.stats.clone(),
            tasks: self.channel_tasks.clone(),
            shutdown: self.shutdown.clone(),
            connections: connections.clone(),
        };
        tracing::info!(
            target: "blink::ssh::forward",
            peer = %self.peer,
            session = %session,
            direction = "remote",
            host = %Escaped::limit(address, 256),
            port = bound,
            allowed = true,
            "ssh remote forward listening"
        );
        self.stats.touch();
        self.forwarding.listeners.insert(
            bound,
            RemoteForward {
                task: tokio::spawn(accepting.run()),
                session,
                peer: self.peer,
                address: address.to_string(),
                port: bound,
                started: Instant::now(),
                connections,
                ended: "connection closed",
            },
        );
        Ok(())
    }

    /// A `cancel-tcpip-forward` request: stop listening on `port` (the
    /// port bound, as the client knows it). False if there is no such
    /// listener.
    pub(super) fn cancel_remote_forward(&mut self, port: u32) -> bool {
        let Ok(port) = u16::try_from(port) else {
            return false;
        };
        match self.forwarding.listeners.remove(&port) {
            Some(mut forward) => {
                forward.ended = "cancelled";
                true
            }
            None => false,
        }
    }
}

/// One listener's accept loop: each connection a program of the session
/// makes to it, while the connection has room for one more forward, goes
/// to the client on a `forwarded-tcpip` channel.
struct Accepting {
    listener: ForwardListener,
    /// The address the client asked for: it names the forward in each
    /// channel open, with the port bound.
    address: String,
    forward: Forward,
    slots: Arc<Semaphore>,
    handle: Handle,
    stats: Arc<ConnStats>,
    tasks: TaskTracker,
    shutdown: Shutdown,
    connections: Arc<AtomicU64>,
}

impl Accepting {
    async fn run(mut self) {
        loop {
            // A place first: at the bound, connections wait in the
            // listener's backlog rather than being taken and dropped.
            let slot = tokio::select! {
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                _ = self.shutdown.recv() => return,
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = self.shutdown.recv() => return,
            };
            let connection = match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of descriptors, most likely: wait it out.
                    tracing::warn!(session = %self.forward.session, error = %e, "ssh remote forward: accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.connections.fetch_add(1, Ordering::SeqCst);
            self.stats.forwards.fetch_add(1, Ordering::SeqCst);
            metrics::counter!(crate::metrics::SSH_CHANNELS_TOTAL, "kind" => "forwarded-tcpip")
                .increment(1);
            self.stats.touch();
            let forward = Forward {
                origin: connection.peer.to_string(),
                ..self.forward.clone()
            };
            let handle = self.handle.clone();
            let stats = self.stats.clone();
            let address = self.address.clone();
            let port = self.listener.port();
            self.tasks.spawn(async move {
                let peer = connection.peer;
                let open = handle.channel_open_forwarded_tcpip(
                    address,
                    u32::from(port),
                    peer.ip().to_string(),
                    u32::from(peer.port()),
                );
                let channel = match tokio::time::timeout(CLIENT_OPEN_WAIT, open).await {
                    Ok(Ok(channel)) => channel,
                    Ok(Err(e)) => {
                        forward.failed(&format!("the client refused the channel: {e}"));
                        return;
                    }
                    Err(_) => {
                        forward.failed("the client did not answer the channel open");
                        return;
                    }
                };
                let tunnel = Tunnel {
                    forward,
                    stats,
                    handle,
                    slot,
                };
                tunnel.run(channel, connection).await;
            });
        }
    }
}
