//! One accepted connection, start to end: the login grace time (from
//! accept to authentication, enforced by cutting the socket), the penalty
//! its source earns if it never authenticates (`admission.rs`), the idle
//! watch, the server's shutdown, and one log line when it closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::server::{Auth, Handle, RunningSession};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Pending, Startup};
use super::cuttable::{Authenticated, Cuttable};
use super::requests::Conn;
use super::server::Gateway;
use super::shutdown::Shutdown;

/// What every client still connected is told when the server shuts down.
pub const SHUTDOWN_REASON: &str = "blink-server is shutting down";

/// What a client still unauthenticated at the login grace time is told
/// (when its key exchange is done: before that it is only cut off).
pub const GRACE_REASON: &str = "login grace time exceeded";

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

/// Once told that its grace time is over, how long an unauthenticated
/// connection may take to close before its socket is cut.
const GRACE_GOODBYE: Duration = Duration::from_millis(500);

/// Serve one connection until it closes. Unauthenticated, it is cut at the
/// login grace time. On shutdown: no new channel, running channels finish
/// until the deadline, then the client gets a disconnect with
/// [`SHUTDOWN_REASON`].
pub(super) async fn serve(
    gateway: Arc<Gateway>,
    socket: TcpStream,
    peer: SocketAddr,
    startup: Startup,
    mut shutdown: Shutdown,
) {
    let _ = socket.set_nodelay(true);
    let started = Instant::now();
    let stats = Arc::new(ConnStats::new(startup));
    let channels = TaskTracker::new();
    let handler = Conn::new(
        gateway.clone(),
        peer,
        stats.clone(),
        channels.clone(),
        shutdown.clone(),
    );
    let limits = &gateway.config.limits;
    let grace = limits.login_grace_time();
    let now = tokio::time::Instant::now();
    let grace_deadline = now + grace;
    let version_deadline = now + limits.handshake_timeout().min(grace);
    let cut = CancellationToken::new();
    let stream = Cuttable::new(socket, &cut, stats.clone(), GRACE_REASON);
    let handshake = tokio::time::timeout_at(
        version_deadline,
        russh::server::run_stream(gateway.russh.clone(), stream, handler),
    );
    let mut running = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                stats.log_closed(peer, started, Some(format!("version exchange: {e}")));
                stats.pending.ended(peer);
                return;
            }
            Err(_) => {
                let error = if version_deadline >= grace_deadline {
                    stats.pending.grace_exceeded();
                    format!("{GRACE_REASON} (in the version exchange)")
                } else {
                    "version exchange timed out".into()
                };
                stats.log_closed(peer, started, Some(error));
                stats.pending.ended(peer);
                return;
            }
        },
        _ = shutdown.recv() => {
            tracing::info!(%peer, "ssh handshake dropped: shutting down");
            return;
        }
    };
    let handle = running.handle();
    let grace_watch = tokio::spawn(grace_watch(
        handle.clone(),
        stats.clone(),
        cut,
        grace_deadline,
        peer,
    ));
    let idle_watch = limits
        .idle_timeout()
        .map(|limit| tokio::spawn(idle_watch(handle.clone(), stats.clone(), limit)));
    let mut shut_down = false;
    let result = tokio::select! {
        result = &mut running => result.map_err(|e| e.to_string()),
        deadline = shutdown.recv() => {
            shut_down = true;
            close_for_shutdown(peer, &handle, &stats, &channels, deadline, &mut running).await
        }
    };
    grace_watch.abort();
    if let Some(idle) = idle_watch {
        idle.abort();
    }
    stats.log_closed(peer, started, result.err());
    if shut_down {
        // Closed by the server: nothing held against the source.
        stats.pending.released();
    } else {
        stats.pending.ended(peer);
    }
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

/// At the login grace time, end a connection that has not authenticated:
/// tell it why (heard only once its key exchange is done: russh reads no
/// message of ours before that), then cut its socket.
async fn grace_watch(
    handle: Handle,
    stats: Arc<ConnStats>,
    cut: CancellationToken,
    deadline: tokio::time::Instant,
    peer: SocketAddr,
) {
    tokio::time::sleep_until(deadline).await;
    if stats.authenticated.load(Ordering::SeqCst) {
        return;
    }
    stats.pending.grace_exceeded();
    tracing::info!(target: "blink::ssh::connection", %peer, "ssh login grace time exceeded: closing");
    let goodbye = tokio::time::Instant::now() + GRACE_GOODBYE;
    let _ = tokio::time::timeout_at(
        goodbye,
        handle.disconnect(
            russh::Disconnect::ByApplication,
            GRACE_REASON.into(),
            String::new(),
        ),
    )
    .await;
    tokio::time::sleep_until(goodbye).await;
    cut.cancel();
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
#[derive(Debug)]
pub struct ConnStats {
    /// When channel traffic last crossed the connection (None: at start).
    pub last_activity: Mutex<Option<Instant>>,
    pub authenticated: AtomicBool,
    /// Its standing with admission until it authenticates or ends.
    pub pending: Pending,
    /// (login, key fingerprint) of the last attempt or the success.
    pub who: Mutex<(String, String)>,
    pub channels: AtomicU64,
    /// Forwarded TCP connections (`ssh -L`, `-D`, `-R`).
    pub forwards: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl ConnStats {
    fn new(startup: Startup) -> Self {
        let stats = Self {
            last_activity: Mutex::default(),
            authenticated: AtomicBool::default(),
            pending: Pending::new(startup),
            who: Mutex::default(),
            channels: AtomicU64::default(),
            forwards: AtomicU64::default(),
            bytes_in: AtomicU64::default(),
            bytes_out: AtomicU64::default(),
        };
        stats.touch();
        stats
    }

    /// Note the answer to an authentication attempt (`handler.rs`): a
    /// verified success frees the connection's place among unauthenticated
    /// ones; a refusal counts towards its source's penalty.
    pub fn auth_answered(&self, auth: &Auth, verified: bool) {
        match auth {
            Auth::Accept if verified => self.pending.authenticated(),
            Auth::Accept => {}
            _ => self.pending.auth_refused(),
        }
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
        let (bytes_in, bytes_out) = (
            self.bytes_in.load(Ordering::SeqCst),
            self.bytes_out.load(Ordering::SeqCst),
        );
        metrics::counter!(crate::metrics::SSH_BYTES_TOTAL, "direction" => "in").increment(bytes_in);
        metrics::counter!(crate::metrics::SSH_BYTES_TOTAL, "direction" => "out")
            .increment(bytes_out);
        tracing::info!(
            target: "blink::ssh::connection",
            %peer,
            login = %user,
            key = %key,
            authenticated = self.authenticated.load(Ordering::SeqCst),
            channels = self.channels.load(Ordering::SeqCst),
            forwards = self.forwards.load(Ordering::SeqCst),
            bytes_in = self.bytes_in.load(Ordering::SeqCst),
            bytes_out = self.bytes_out.load(Ordering::SeqCst),
            duration_ms = started.elapsed().as_millis() as u64,
            error = error.as_deref().unwrap_or(""),
            "ssh connection closed"
        );
    }
}

impl Authenticated for ConnStats {
    fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }
}
