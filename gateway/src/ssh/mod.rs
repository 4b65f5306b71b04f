//! The SSH gateway: the login name is the session name; public keys only;
//! exec and shell channels run in the session through the manager.

mod auth;
mod channel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::Manager;
use blink_sdk::manager::keys::KeyOptions;
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::SshConfig;

pub use self::auth::KeyCheck;

/// What every connection shares.
pub struct Gateway {
    pub manager: Arc<Manager>,
    pub config: SshConfig,
    russh: Arc<russh::server::Config>,
    /// Authenticated connections per session.
    per_session: Mutex<HashMap<String, usize>>,
    keys: KeyCheck,
}

impl Gateway {
    pub fn new(manager: Arc<Manager>, config: SshConfig, host_key: PrivateKey) -> Arc<Self> {
        let limits = &config.limits;
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let russh = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-blink".into()),
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
            window_size: 2 << 20,
            maximum_packet_size: 32768,
            ..Default::default()
        };
        let keys = KeyCheck::new(manager.keys(), config.admin_authorized_keys.clone());
        Arc::new(Self {
            manager,
            config,
            russh: Arc::new(russh),
            per_session: Mutex::new(HashMap::new()),
            keys,
        })
    }

    /// Accept connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.config.limits.max_connections));
        loop {
            let (socket, peer) = listener.accept().await?;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    target: "blink::ssh::connection",
                    %peer,
                    max_connections = self.config.limits.max_connections,
                    "ssh connection refused: too many connections"
                );
                tokio::spawn(refuse(socket));
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                gateway.connection(socket, peer).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, socket: tokio::net::TcpStream, peer: SocketAddr) {
        let _ = socket.set_nodelay(true);
        let started = Instant::now();
        let stats = Arc::new(ConnStats::new());
        let handler = Conn {
            gateway: self.clone(),
            peer,
            stats: stats.clone(),
            channels: HashMap::new(),
            counted_session: None,
            key_options: KeyOptions::default(),
            open_channels: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        };
        let limits = &self.config.limits;
        let running = match tokio::time::timeout(
            limits.handshake_timeout(),
            russh::server::run_stream(self.russh.clone(), socket, handler),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "ssh handshake timed out");
                return;
            }
        };
        let handle = running.handle();
        let auth_stats = stats.clone();
        let auth_timeout = limits.auth_timeout();
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep(auth_timeout).await;
            if !auth_stats.authenticated.load(Ordering::SeqCst) {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "authentication timed out".into(),
                        String::new(),
                    )
                    .await;
            }
        });
        let idle = limits
            .idle_timeout()
            .map(|limit| tokio::spawn(idle_watch(running.handle(), stats.clone(), limit)));
        let result = running.await;
        watchdog.abort();
        if let Some(idle) = idle {
            idle.abort();
        }
        let error = result.err().map(|e| e.to_string());
        let (user, key) = {
            let who = stats.who.lock().map(|w| w.clone()).unwrap_or_default();
            (who.0, who.1)
        };
        tracing::info!(
            target: "blink::ssh::connection",
            %peer,
            login = %user,
            key = %key,
            authenticated = stats.authenticated.load(Ordering::SeqCst),
            channels = stats.channels.load(Ordering::SeqCst),
            bytes_in = stats.bytes_in.load(Ordering::SeqCst),
            bytes_out = stats.bytes_out.load(Ordering::SeqCst),
            duration_ms = started.elapsed().as_millis() as u64,
            error = error.as_deref().unwrap_or(""),
            "ssh connection closed"
        );
    }
}

/// Close a connection over the limit cleanly: a line before the version
/// string (RFC 4253 4.2 allows it), then an orderly shutdown, so the client
/// sees the connection closed rather than reset.
async fn refuse(mut socket: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = socket
            .write_all(b"blink: too many connections, try again later\r\n")
            .await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// Disconnect once nothing but keepalives crossed the connection for
/// `limit`: no channel data either way, no channel opened.
async fn idle_watch(handle: russh::server::Handle, stats: Arc<ConnStats>, limit: Duration) {
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
}

/// Per-channel state gathered before the channel starts a program.
struct Pending {
    channel: Channel<Msg>,
    pty: Option<channel::PtyRequest>,
    env: Vec<(String, String)>,
}

/// One connection's handler. Callbacks never block: anything long runs in
/// a task per channel.
struct Conn {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    stats: Arc<ConnStats>,
    channels: HashMap<ChannelId, Pending>,
    /// The session this connection was counted against.
    counted_session: Option<String>,
    /// Options of the key that logged in (see `auth.rs`).
    key_options: KeyOptions,
    /// Channels open on this connection (pending or running).
    open_channels: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(name) = self.counted_session.take()
            && let Ok(mut map) = self.gateway.per_session.lock()
            && let Some(n) = map.get_mut(&name)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&name);
            }
        }
    }
}

impl Conn {
    fn session_name(&self) -> Option<String> {
        self.counted_session.clone()
    }

    fn start(&mut self, id: ChannelId, session: &mut Session, what: channel::What) {
        // The login key's options first: they may refuse the request
        // (the channel stays open) or replace what runs.
        let Some((what, key_env)) = self.key_channel(what) else {
            let _ = session.channel_failure(id);
            return;
        };
        let Some(pending) = self.channels.remove(&id) else {
            let _ = session.channel_failure(id);
            return;
        };
        let Some(name) = self.session_name() else {
            let _ = session.channel_failure(id);
            return;
        };
        let _ = session.channel_success(id);
        let pty = match what {
            channel::What::Sftp => None,
            _ => pending.pty,
        };
        let mut env = pending.env;
        if let Some(pty) = &pty {
            env.push(("TERM".into(), pty.term.clone()));
        }
        for (key, value) in key_env {
            env.retain(|(n, _)| *n != key);
            env.push((key, value));
        }
        let job = channel::Job {
            manager: self.gateway.manager.clone(),
            session: name,
            login_peer: self.peer,
            what,
            pty,
            env,
            stats: self.stats.clone(),
            open_channels: self.open_channels.clone(),
            handle: session.handle(),
        };
        tokio::spawn(job.run(pending.channel));
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self
            .check_key(user, offer.public_key, offer.algorithm, false)
            .await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self
            .check_key(user, key.public_key, key.algorithm, true)
            .await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let max = self.gateway.config.limits.max_channels_per_connection;
        if self.open_channels.load(Ordering::SeqCst) >= max {
            tracing::info!(peer = %self.peer, "ssh channel refused: too many channels");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.open_channels.fetch_add(1, Ordering::SeqCst);
        self.stats.channels.fetch_add(1, Ordering::SeqCst);
        self.stats.touch();
        self.channels.insert(
            channel.id(),
            Pending {
                channel,
                pty: None,
                env: Vec::new(),
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The data itself reaches the channel's task directly.
        self.stats.touch();
        Ok(())
    }

    async fn extended_data(
        &mut self,
        _channel: ChannelId,
        _code: u32,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.stats.touch();
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A channel closed before it ran anything.
        if self.channels.remove(&channel).is_some() {
            self.open_channels.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.key_allows_pty();
        match self.channels.get_mut(&channel) {
            Some(p) if p.pty.is_none() && allowed => {
                p.pty = Some(channel::PtyRequest {
                    term: sanitize_term(term),
                    size: channel::pty_size(col_width, row_height),
                });
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = env_allowed(name, &self.gateway.config.env_allow)
            && !value.contains('\0')
            && value.len() <= 4096;
        if !allowed {
            tracing::debug!(peer = %self.peer, name = %Escaped::limit(name, 64), "ssh env request refused");
        }
        match self.channels.get_mut(&channel) {
            Some(p) if allowed && p.env.len() < 64 => {
                p.env.retain(|(n, _)| n != name);
                p.env.push((name.to_string(), value.to_string()));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, session, channel::What::Shell);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match String::from_utf8(data.to_vec()) {
            Ok(command) if !command.contains('\0') => {
                self.start(channel, session, channel::What::Exec(command));
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" || !self.key_allows_subsystem(name) {
            tracing::info!(peer = %self.peer, subsystem = %Escaped::limit(name, 64), "ssh subsystem refused");
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.start(channel, session, channel::What::Sftp);
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn signal(
        &mut self,
        _channel: ChannelId,
        _signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Delivered to the running channel's task through the channel.
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

/// LANG, LC_* and TERM, plus the configured names; never a name that no
/// environment can hold (`=` or NUL in it).
pub fn env_allowed(name: &str, extra: &[String]) -> bool {
    if name.contains(['=', '\0']) {
        return false;
    }
    name == "LANG" || name == "TERM" || name.starts_with("LC_") || extra.iter().any(|n| n == name)
}

fn sanitize_term(term: &str) -> String {
    let t: String = term
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        .take(64)
        .collect();
    if t.is_empty() { "xterm".into() } else { t }
}

/// Bind and serve until the process ends.
pub async fn run(gateway: Arc<Gateway>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(gateway.config.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "ssh gateway listening");
    println!("ssh listening on {addr}");
    gateway.serve(listener).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_allow_list() {
        let extra = vec!["EDITOR".to_string()];
        for ok in ["LANG", "LC_ALL", "TERM", "EDITOR"] {
            assert!(env_allowed(ok, &extra), "{ok}");
        }
        for no in [
            "PATH",
            "LD_PRELOAD",
            "HOME",
            "lang",
            "LC_A\0B",
            "LC_A=B",
            "EDITOR\0",
        ] {
            assert!(!env_allowed(no, &extra), "{no}");
        }
        assert_eq!(sanitize_term("xterm-256color"), "xterm-256color");
        assert_eq!(sanitize_term("$(x)"), "x");
        assert_eq!(sanitize_term(""), "xterm");
    }
}
