//! [`Conn`], one connection's state, and what its channel requests do:
//! open a channel, ask for a terminal or a variable, start a program.
//! Authentication is in `auth.rs`, forwarding in `forwarding.rs`;
//! `handler.rs` turns russh's callbacks into these calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::keys::KeyOptions;
use blink_sdk::manager::policy;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tokio_util::task::TaskTracker;

use super::channel::{self, What};
use super::compat;
use super::connection::ConnStats;
use super::forwarding::Forwarding;
use super::server::Gateway;
use super::shutdown::Shutdown;

/// Per-channel state gathered before the channel starts a program.
struct Pending {
    channel: Channel<Msg>,
    pty: Option<channel::PtyRequest>,
    env: Vec<(String, String)>,
}

/// One connection's handler. Nothing here blocks: a program runs in a
/// task per channel, tracked in `channel_tasks`.
pub(super) struct Conn {
    pub(super) gateway: Arc<Gateway>,
    pub(super) peer: SocketAddr,
    pub(super) stats: Arc<ConnStats>,
    /// Channels opened that run nothing yet.
    channels: HashMap<ChannelId, Pending>,
    /// The session this connection was counted against.
    pub(super) counted_session: Option<String>,
    /// Options of the key that logged in (see `auth.rs`).
    pub(super) key_options: KeyOptions,
    /// Channels open on this connection (pending or running).
    open_channels: Arc<AtomicUsize>,
    /// The tasks of the channels running a program or carrying a
    /// forwarded connection.
    pub(super) channel_tasks: TaskTracker,
    /// Forwarded connections and `ssh -R` listeners (`forwarding.rs`);
    /// the listeners close when the connection ends.
    pub(super) forwarding: Forwarding,
    /// Once the server shuts down, no channel opens or starts.
    pub(super) shutdown: Shutdown,
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
    pub(super) fn new(
        gateway: Arc<Gateway>,
        peer: SocketAddr,
        stats: Arc<ConnStats>,
        channel_tasks: TaskTracker,
        shutdown: Shutdown,
    ) -> Self {
        let forwarding = Forwarding::new(gateway.config.limits.max_forwarded_connections);
        Self {
            gateway,
            peer,
            stats,
            channels: HashMap::new(),
            counted_session: None,
            key_options: KeyOptions::default(),
            open_channels: Arc::new(AtomicUsize::new(0)),
            channel_tasks,
            forwarding,
            shutdown,
        }
    }

    /// A session channel, kept until it asks to run something. Refused
    /// over the per-connection limit and once the server shuts down.
    pub(super) fn open_channel(&mut self, channel: Channel<Msg>) -> Result<(), ChannelOpenFailure> {
        if self.shutdown.is_shutdown() {
            tracing::info!(peer = %self.peer, "ssh channel refused: shutting down");
            return Err(ChannelOpenFailure::AdministrativelyProhibited);
        }
        let max = self.gateway.config.limits.max_channels_per_connection;
        if self.open_channels.load(Ordering::SeqCst) >= max {
            tracing::info!(peer = %self.peer, "ssh channel refused: too many channels");
            return Err(ChannelOpenFailure::ResourceShortage);
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
        Ok(())
    }

    /// A channel closed before it ran anything.
    pub(super) fn close_pending(&mut self, id: ChannelId) {
        if self.channels.remove(&id).is_some() {
            self.open_channels.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A terminal for a channel that has none yet, if the key allows one.
    pub(super) fn request_pty(&mut self, id: ChannelId, term: &str, cols: u32, rows: u32) -> bool {
        let allowed = self.key_allows_pty();
        match self.channels.get_mut(&id) {
            Some(p) if p.pty.is_none() && allowed => {
                p.pty = Some(channel::PtyRequest {
                    term: sanitize_term(term),
                    size: channel::pty_size(cols, rows),
                });
                true
            }
            _ => false,
        }
    }

    /// A variable for the program, if its name is on the allow-list and
    /// it keeps the SDK's environment rules (at most 64 per channel).
    pub(super) fn request_env(&mut self, id: ChannelId, name: &str, value: &str) -> bool {
        let allowed = env_allowed(name, &self.gateway.config.env_allow)
            && policy::check_env(&[(name.to_owned(), value.to_owned())]).is_ok();
        if !allowed {
            tracing::debug!(peer = %self.peer, name = %Escaped::limit(name, 64), "ssh env request refused");
        }
        match self.channels.get_mut(&id) {
            Some(p) if allowed && p.env.len() < 64 => {
                p.env.retain(|(n, _)| n != name);
                p.env.push((name.to_string(), value.to_string()));
                true
            }
            _ => false,
        }
    }

    /// The program of a subsystem request: sftp only, if the key allows it,
    /// fitted to the client (`client_id`, its identification string).
    pub(super) fn subsystem(&self, name: &str, client_id: &[u8]) -> Option<What> {
        if name != "sftp" || !self.key_allows_subsystem(name) {
            tracing::info!(peer = %self.peer, subsystem = %Escaped::limit(name, 64), "ssh subsystem refused");
            return None;
        }
        let order = compat::symlink_order(client_id);
        tracing::debug!(peer = %self.peer, client = %Escaped::limit(&String::from_utf8_lossy(client_id), 128), symlink_order = order.flag(), "ssh sftp compat");
        Some(What::Sftp(order))
    }

    /// Start a program on a pending channel, in a task of its own. False
    /// (the channel stays open) when the key's options refuse it, the
    /// channel is unknown or the server is shutting down.
    pub(super) fn start(&mut self, id: ChannelId, what: What, handle: Handle) -> bool {
        if self.shutdown.is_shutdown() {
            tracing::info!(peer = %self.peer, "ssh channel request refused: shutting down");
            return false;
        }
        // The login key's options first: they may refuse the request or
        // replace what runs.
        let Some((what, key_env)) = self.key_channel(what) else {
            return false;
        };
        let Some(name) = self.counted_session.clone() else {
            return false;
        };
        let Some(pending) = self.channels.remove(&id) else {
            return false;
        };
        let pty = match what {
            What::Sftp(_) => None,
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
        metrics::counter!(crate::metrics::SSH_CHANNELS_TOTAL, "kind" => what.kind()).increment(1);
        let job = channel::Job {
            manager: self.gateway.manager.clone(),
            recordings: self.gateway.recordings.clone(),
            session: name,
            login_peer: self.peer,
            what,
            pty,
            env,
            stats: self.stats.clone(),
            open_channels: self.open_channels.clone(),
            handle,
        };
        self.channel_tasks.spawn(job.run(pending.channel));
        true
    }
}

/// LANG, LC_* and TERM, plus the configured names (which variables an SSH
/// client may set is this surface's own rule; whether a name or value can
/// be set at all is the SDK's, `policy::check_env`).
pub fn env_allowed(name: &str, extra: &[String]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_allow_list() {
        let extra = vec!["EDITOR".to_string()];
        for ok in ["LANG", "LC_ALL", "TERM", "EDITOR"] {
            assert!(env_allowed(ok, &extra), "{ok}");
        }
        for no in ["PATH", "LD_PRELOAD", "HOME", "lang"] {
            assert!(!env_allowed(no, &extra), "{no}");
        }
        // Names no environment can hold pass the allow-list's prefix rule
        // but not the SDK's rules, which request_env applies too.
        for bad in ["LC_A\0B", "LC_A=B"] {
            assert!(
                policy::check_env(&[(bad.into(), "x".into())]).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(sanitize_term("xterm-256color"), "xterm-256color");
        assert_eq!(sanitize_term("$(x)"), "x");
        assert_eq!(sanitize_term(""), "xterm");
    }
}
