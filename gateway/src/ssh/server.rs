//! The SSH server: bind, accept (asking `admission.rs` first), one tracked
//! task per connection (`connection.rs`), and the shutdown that waits for
//! all of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use blink_sdk::manager::Manager;
use russh::keys::PrivateKey;
use russh::{MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::admission::{Admission, RefusalLog};
use super::auth::LoginCheck;
use super::connection::{self, CLOSE_WAIT};
use super::shutdown::{Shutdown, Trigger};
use crate::config::SshConfig;
use crate::recording::Recordings;

/// Bytes a client may send on a channel before the program has consumed
/// them: what the gateway buffers per channel at most.
pub const CHANNEL_WINDOW: u32 = 2 << 20;

/// What every connection shares.
pub(super) struct Gateway {
    pub manager: Arc<Manager>,
    pub config: SshConfig,
    pub(super) russh: Arc<russh::server::Config>,
    /// Authenticated connections per session.
    pub(super) per_session: Mutex<HashMap<String, usize>>,
    /// Keys, certificates, revocations and the auth hook.
    pub(super) auth: LoginCheck,
    /// Who may connect before authenticating.
    pub(super) admission: Arc<Admission>,
    /// Where PTY channels are recorded (if they are).
    pub(super) recordings: Arc<Recordings>,
}

impl Gateway {
    fn new(
        manager: Arc<Manager>,
        config: SshConfig,
        host_key: PrivateKey,
        recordings: Arc<Recordings>,
    ) -> anyhow::Result<Arc<Self>> {
        let limits = &config.limits;
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let russh = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-blink".into()),
            preferred: super::algorithms::preferred(config.post_quantum_only),
            methods,
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            max_auth_attempts: limits.max_auth_attempts,
            // The idle timeout is the gateway's own (see `idle_watch`):
            // russh's counts keepalive replies as activity.
            inactivity_timeout: None,
            keepalive_interval: limits.keepalive_interval(),
            keepalive_max: limits.keepalive_max,
            nodelay: true,
            window_size: CHANNEL_WINDOW,
            maximum_packet_size: 32768,
            // Flow control per channel (patches/russh): a program that reads
            // its stdin slowly holds back its own client, never another
            // channel, and is never killed for it.
            window_follows_consumption: true,
            // Certificates' validity windows are checked in `auth/certs.rs`,
            // with the configured clock skew and a log line on refusal.
            certificate_validity_by_handler: true,
            ..Default::default()
        };
        let auth = LoginCheck::new(manager.keys(), &config).map_err(anyhow::Error::msg)?;
        let admission = Admission::new(limits);
        Ok(Arc::new(Self {
            manager,
            config,
            russh: Arc::new(russh),
            per_session: Mutex::new(HashMap::new()),
            auth,
            admission,
            recordings,
        }))
    }
}

/// A running SSH server. Dropping it shuts it down with no grace and
/// without waiting; [`SshServer::shutdown`] is the orderly way.
pub struct SshServer {
    local_addr: SocketAddr,
    trigger: Trigger,
    accept: JoinHandle<()>,
    connections: TaskTracker,
}

/// Bind `config.listen` and start serving. Prints `ssh listening on ADDR`
/// on stdout once bound (tests and supervisors read it). PTY channels are
/// recorded in `recordings` as its config says.
pub async fn start(
    manager: Arc<Manager>,
    config: SshConfig,
    host_key: PrivateKey,
    recordings: Arc<Recordings>,
) -> anyhow::Result<SshServer> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the SSH gateway to {}", config.listen))?;
    let local_addr = listener.local_addr().context("SSH listener address")?;
    let gateway = Gateway::new(manager, config, host_key, recordings)?;
    let trigger = Trigger::new();
    let connections = TaskTracker::new();
    let accept = tokio::spawn(accept_loop(
        gateway,
        listener,
        trigger.subscribe(),
        connections.clone(),
    ));
    tracing::info!(addr = %local_addr, "ssh gateway listening");
    println!("ssh listening on {local_addr}");
    Ok(SshServer {
        local_addr,
        trigger,
        accept,
        connections,
    })
}

impl SshServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting; let running channels finish for up to `grace`;
    /// tell every client still connected why it is disconnected
    /// ([`SHUTDOWN_REASON`](super::SHUTDOWN_REASON)), as soon as its
    /// channels are done or the grace is over; return once every
    /// connection has ended.
    pub async fn shutdown(self, grace: Duration) {
        tracing::info!(
            addr = %self.local_addr,
            connections = self.connections.len(),
            grace_secs = grace.as_secs_f64(),
            "ssh gateway shutting down"
        );
        let deadline = self.trigger.begin(grace);
        // The accept loop ends at once, dropping the listener.
        let _ = self.accept.await;
        self.connections.close();
        // Each connection ends by the deadline plus its goodbye.
        let all_closed = deadline + CLOSE_WAIT + Duration::from_secs(1);
        if tokio::time::timeout_at(all_closed, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.connections.len(),
                "ssh gateway: connections still open after the grace period; leaving them"
            );
        }
        tracing::info!(addr = %self.local_addr, "ssh gateway stopped");
    }
}

/// Accept connections until the shutdown; each runs in a task of its own
/// (handshakes included), tracked in `connections`. Nothing here waits on
/// a client: admission is a lookup, and a refusal is said and closed in a
/// task of its own.
async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: Shutdown,
    connections: TaskTracker,
) {
    let max = gateway.config.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    let mut refusals = RefusalLog::default();
    loop {
        let (socket, peer) = tokio::select! {
            biased;
            _ = shutdown.recv() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let startup = match gateway.admission.admit(peer.ip()) {
            Ok(startup) => startup,
            Err(refusal) => {
                refusals.refused(peer, &refusal);
                refuse(socket, refusal.client_line(), &lingering);
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if refusals.line_allowed("max_connections") {
                tracing::warn!(
                    target: "blink::ssh::connection",
                    %peer,
                    reason = "max_connections",
                    max_connections = max,
                    "ssh connection refused: too many connections"
                );
            }
            refuse(socket, TOO_MANY_CONNECTIONS, &lingering);
            continue;
        };
        let connection =
            connection::serve(gateway.clone(), socket, peer, startup, shutdown.clone());
        metrics::counter!(crate::metrics::SSH_CONNECTIONS_TOTAL).increment(1);
        let open = metrics::gauge!(crate::metrics::SSH_CONNECTIONS_OPEN);
        open.increment(1.0);
        connections.spawn(async move {
            connection.await;
            open.decrement(1.0);
            drop(permit);
        });
    }
}

/// An accept that failed: a connection that went away before it was
/// accepted is nothing; anything else (out of descriptors) is logged and
/// waited out, as hyper's server does, instead of ending every session.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "ssh accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What a connection over `max_connections` is told.
pub(crate) const TOO_MANY_CONNECTIONS: &str = "blink: too many connections, try again later\r\n";

/// Refused connections closed in an orderly way at once; past that, a
/// refused socket is closed at once after a non-blocking write.
pub(crate) const MAX_LINGERING: usize = 64;

/// How long a refused connection may linger for its orderly close.
const LINGER: Duration = Duration::from_secs(1);

/// Close a refused connection cleanly: a line before the version string
/// (RFC 4253 4.2 allows it), an orderly shutdown, then what the client
/// sent is read and dropped until it closes too (for at most [`LINGER`]),
/// so the client reads the line and sees the connection closed rather than
/// reset. Under a flood, past [`MAX_LINGERING`] at once, the line is
/// written without waiting and the socket closed.
pub(crate) fn refuse(socket: TcpStream, line: &'static str, lingering: &Arc<Semaphore>) {
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        let _ = socket.try_write(line.as_bytes());
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = socket;
        let _ = tokio::time::timeout(LINGER, async {
            socket.write_all(line.as_bytes()).await?;
            socket.shutdown().await?;
            let mut sink = [0u8; 1024];
            while socket.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}
