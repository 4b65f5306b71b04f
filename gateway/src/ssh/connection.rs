//! One accepted connection, start to end: the version exchange (bounded),
//! the authentication deadline, the idle watch, the server's shutdown, and
//! one log line when it closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::server::{Handle, RunningSession};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::requests::Conn;
use super::server::Gateway;
use super::shutdown::Shutdown;

/// What every client still connected is told when the server shuts down.
pub const SHUTDOWN_REASON: &str = "blink-server is shutting down";

/// Once its channels are done during a shutdown, how long a client that
/// ran something gets to hang up by itself before it is told to go:
/// OpenSSH's `ssh` leaves as soon as its command's channel closes, and a
/// disconnect arriving with that close would turn the command's exit
/// status into ssh's 255.
const HANG_UP_WAIT: Duration = Duration::from_secs(1);

/// Once a client is told to go, how long the connection may take to end
/// (a client that reads nothing can keep its socket full) and its channel
/// tasks to stop their programs.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Serve one connection until it closes. On shutdown: no new channel,
/// running channels finish until the deadline, then the client gets a
/// disconnect with [`SHUTDOWN_REASON`].
pub(super) async fn serve(
    gateway: Arc<Gateway>,
    socket: TcpStream,
    peer: SocketAddr,
    mut shutdown: Shutdown,
) {
    let _ = socket.set_nodelay(true);
    let started = Instant::now();
    let stats = Arc::new(ConnStats::new());
    let channels = TaskTracker::new();
    let handler = Conn::new(
        gateway.clone(),
        peer,
        stats.clone(),
        channels.clone(),
        shutdown.clone(),
    );
    let limits = &gateway.config.limits;
    let handshake = tokio::time::timeout(
        limits.handshake_timeout(),
        russh::server::run_stream(gateway.russh.clone(), socket, handler),
    );
    let mut running = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "ssh handshake timed out");
                return;
            }
        },
        _ = shutdown.recv() => {
            tracing::info!(%peer, "ssh handshake dropped: shutting down");
            return;
        }
    };
    let handle = running.handle();
    let auth_watch = tokio::spawn(auth_watch(
        handle.clone(),
        stats.clone(),
        limits.auth_timeout(),
    ));
    let idle_watch = limits
        .idle_timeout()
        .map(|limit| tokio::spawn(idle_watch(handle.clone(), stats.clone(), limit)));
    let result = tokio::select! {
        result = &mut running => result.map_err(|e| e.to_string()),
        deadline = shutdown.recv() => {
            close_for_shutdown(peer, &handle, &stats, &channels, deadline, &mut running).await
        }
    };
    auth_watch.abort();
    if let Some(idle) = idle_watch {
        idle.abort();
    }
    stats.log_closed(peer, started, result.err());
}

/// The connection's part of a shutdown (no channel opens or starts any
/// more: `Conn` refuses them). Running channels get until `deadline`; a
/// client that ran something then gets a moment to hang up by itself; then
/// it is disconnected with [`SHUTDOWN_REASON`].
async fn close_for_shutdown(
    peer: SocketAddr,
    handle: &Handle,
    stats: &ConnStats,
    channels: &TaskTracker,
    deadline: tokio::time::Instant,
    running: &mut RunningSession<Conn>,
) -> Result<(), String> {
    channels.close();
    if tokio::time::timeout_at(deadline, channels.wait())
        .await
        .is_err()
    {
        tracing::info!(target: "blink::ssh::connection", %peer, channels = channels.len(), "ssh shutdown grace over: closing running channels");
    } else if stats.channels.load(Ordering::SeqCst) > 0 {
        let hang_up = (tokio::time::Instant::now() + HANG_UP_WAIT).min(deadline);
        if let Ok(result) = tokio::time::timeout_at(hang_up, &mut *running).await {
            return result.map_err(|e| e.to_string());
        }
    }
    tracing::info!(target: "blink::ssh::connection", %peer, "ssh connection told to go: shutting down");
    let close = async {
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                SHUTDOWN_REASON.into(),
                "en".into(),
            )
            .await;
        let result = (&mut *running).await.map_err(|e| e.to_string());
        // Channels cut short stop their programs once the session is gone.
        channels.wait().await;
        result
    };
    tokio::time::timeout(CLOSE_WAIT, close)
        .await
        .unwrap_or_else(|_| Err("did not close after the shutdown disconnect".into()))
}

/// Disconnect a client that has not authenticated within `limit`.
async fn auth_watch(handle: Handle, stats: Arc<ConnStats>, limit: Duration) {
    tokio::time::sleep(limit).await;
    if !stats.authenticated.load(Ordering::SeqCst) {
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                "authentication timed out".into(),
                String::new(),
            )
            .await;
    }
}

/// Disconnect once nothing but keepalives crossed the connection for
/// `limit`: no channel data either way, no channel opened.
async fn idle_watch(handle: Handle, stats: Arc<ConnStats>, limit: Duration) {
    loop {
        let idle = stats.idle_for();
        if idle >= limit {
            tracing::info!(target: "blink::ssh::connection", idle_secs = limit.as_secs(), "ssh connection idle: closing");
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "idle timeout".into(),
                    String::new(),
                )
                .await;
            return;
        }
        tokio::time::sleep(limit - idle).await;
    }
}

/// Counters of one connection, summed from its channels.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// When channel traffic last crossed the connection (None: at start).
    pub last_activity: Mutex<Option<Instant>>,
    pub authenticated: AtomicBool,
    /// (login, key fingerprint) of the last attempt or the success.
    pub who: Mutex<(String, String)>,
    pub channels: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl ConnStats {
    fn new() -> Self {
        let stats = Self::default();
        stats.touch();
        stats
    }

    /// Note traffic on the connection (for the idle timeout).
    pub fn touch(&self) {
        if let Ok(mut last) = self.last_activity.lock() {
            *last = Some(Instant::now());
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_activity
            .lock()
            .ok()
            .and_then(|l| *l)
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// The connection's one log line.
    fn log_closed(&self, peer: SocketAddr, started: Instant, error: Option<String>) {
        let (user, key) = self.who.lock().map(|w| w.clone()).unwrap_or_default();
        tracing::info!(
            target: "blink::ssh::connection",
            %peer,
            login = %user,
            key = %key,
            authenticated = self.authenticated.load(Ordering::SeqCst),
            channels = self.channels.load(Ordering::SeqCst),
            bytes_in = self.bytes_in.load(Ordering::SeqCst),
            bytes_out = self.bytes_out.load(Ordering::SeqCst),
            duration_ms = started.elapsed().as_millis() as u64,
            error = error.as_deref().unwrap_or(""),
            "ssh connection closed"
        );
    }
}
