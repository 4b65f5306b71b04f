//! Public-key authentication: the admin authorized_keys file reaches every
//! session, a session's own file reaches that session. An unknown session
//! and a wrong key are rejected the same way.
//!
//! A key's options (`from=`, `expiry-time=`, ...) are checked here, at
//! every attempt; those that act on channels (`command=`, `no-pty`,
//! `environment=`, ...) are kept on the connection and consulted when a
//! channel starts ([`Conn::key_channel`], [`Conn::key_allows_pty`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use blink_sdk::escape::Escaped;
use blink_sdk::manager::KeyStore;
use blink_sdk::manager::OpenOptions;
use blink_sdk::manager::keys::{self, AuthorizedKey, INTERNAL_SFTP, KeyOptions};
use blink_sdk::manager::names;
use russh::keys::{Algorithm, PublicKey};
use russh::server::Auth;

use super::channel::What;
use super::requests::Conn;

/// Where authorized keys come from.
pub struct KeyCheck {
    store: KeyStore,
    admin_file: Option<PathBuf>,
}

/// Who a key lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    None,
    Session,
    Admin,
}

/// The decision on one key: the grant, the options of the line that
/// granted it, and why matching lines did not (for the log).
struct Decision {
    grant: Grant,
    options: KeyOptions,
    refused: Vec<String>,
}

impl KeyCheck {
    pub fn new(store: KeyStore, admin_file: Option<PathBuf>) -> Self {
        Self { store, admin_file }
    }

    /// The first line holding the key whose options let `peer` in now, as
    /// OpenSSH does: admin file first, then the session's.
    fn grant(&self, session: &str, fingerprint: &str, peer: IpAddr) -> Decision {
        let now = SystemTime::now();
        let mut refused = Vec::new();
        let mut pick = |list: Vec<AuthorizedKey>| {
            for k in list.into_iter().filter(|k| k.fingerprint == fingerprint) {
                match k.options.check_login(peer, now) {
                    Ok(()) => return Some(k.options),
                    Err(why) => refused.push(why),
                }
            }
            None
        };
        if let Some(path) = &self.admin_file {
            match keys::read_file(path) {
                Ok(list) => {
                    if let Some(options) = pick(list) {
                        return Decision {
                            grant: Grant::Admin,
                            options,
                            refused,
                        };
                    }
                }
                Err(e) => tracing::warn!(error = %e, "admin authorized_keys unreadable"),
            }
        }
        let found = match self.store.list(session) {
            Ok(list) => pick(list),
            Err(e) => {
                tracing::warn!(session = %Escaped(session), error = %e, "session authorized_keys unreadable");
                None
            }
        };
        match found {
            Some(options) => Decision {
                grant: Grant::Session,
                options,
                refused,
            },
            None => Decision {
                grant: Grant::None,
                options: KeyOptions::default(),
                refused,
            },
        }
    }
}

/// Key types accepted for user authentication: no ssh-rsa with SHA-1.
fn algorithm_allowed(algorithm: &Algorithm) -> bool {
    match algorithm {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => true,
        Algorithm::Rsa { hash } => hash.is_some(),
        _ => false,
    }
}

impl Conn {
    /// Decide on a key for a login. `verified` is the final step (the
    /// client proved it holds the key); only then are counters touched and
    /// sessions created.
    pub(super) async fn check_key(
        &mut self,
        user: &str,
        key: &PublicKey,
        algorithm: &Algorithm,
        verified: bool,
    ) -> Auth {
        let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
        if let Ok(mut who) = self.stats.who.lock() {
            *who = (Escaped::limit(user, 64).to_string(), fingerprint.clone());
        }
        if self.counted_session.is_some() || !algorithm_allowed(algorithm) {
            return Auth::reject();
        }
        if names::validate(user).is_err() {
            return Auth::reject();
        }
        let gateway = self.gateway.clone();
        let exists = gateway.manager.session_info(user).is_ok();
        let decision = gateway.keys.grant(user, &fingerprint, self.peer.ip());
        let grant = decision.grant;
        let refused_by_options = if grant == Grant::None {
            decision.refused.as_slice()
        } else {
            &[]
        };
        for why in refused_by_options {
            tracing::info!(peer = %self.peer, login = %Escaped(user), key = %fingerprint, reason = %Escaped(why), "ssh key refused by its options");
        }
        let ok = match grant {
            Grant::None => false,
            Grant::Session => exists,
            Grant::Admin => exists || gateway.config.admin_create_sessions,
        };
        if !ok {
            if verified {
                tracing::info!(peer = %self.peer, login = %Escaped(user), key = %fingerprint, "ssh auth rejected");
            }
            return Auth::reject();
        }
        if !verified {
            return Auth::Accept;
        }
        if !exists {
            match gateway
                .manager
                .open_session(user, OpenOptions::default())
                .await
            {
                Ok(_) => {
                    tracing::info!(session = %Escaped(user), key = %fingerprint, "session created on admin ssh login")
                }
                Err(e) => {
                    tracing::warn!(session = %Escaped(user), error = %e, "creating session on ssh login failed");
                    return Auth::reject();
                }
            }
        }
        let max = gateway.config.limits.max_connections_per_session;
        {
            let Ok(mut map) = gateway.per_session.lock() else {
                return Auth::reject();
            };
            let n = map.entry(user.to_string()).or_insert(0);
            if *n >= max {
                tracing::info!(peer = %self.peer, session = %Escaped(user), "ssh auth refused: too many connections to this session");
                return Auth::reject();
            }
            *n += 1;
        }
        self.counted_session = Some(user.to_string());
        self.key_options = decision.options;
        self.stats.authenticated.store(true, Ordering::SeqCst);
        tracing::info!(peer = %self.peer, login = %Escaped(user), key = %fingerprint, admin = grant == Grant::Admin, options = %Escaped(&self.key_options.to_string()), "ssh login");
        Auth::Accept
    }

    /// Whether the login key lets a channel have a terminal (`no-pty`,
    /// `restrict`).
    pub(super) fn key_allows_pty(&self) -> bool {
        self.key_options.pty_allowed()
    }

    /// What a channel runs under the login key's options, and the
    /// variables the key sets (over the client's): a forced command
    /// (`command=`) replaces the client's, which the program finds in
    /// `SSH_ORIGINAL_COMMAND`; `environment=` variables. `None`: the key
    /// forbids it (a forced `internal-sftp` serves only the sftp subsystem).
    pub(super) fn key_channel(&self, what: What) -> Option<(What, Vec<(String, String)>)> {
        let options = &self.key_options;
        let mut env: Vec<(String, String)> = options
            .environment()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        match options.forced_command() {
            None => Some((what, env)),
            // sftp runs under `internal-sftp`; nothing else does.
            Some(INTERNAL_SFTP) => matches!(what, What::Sftp(_)).then_some((what, env)),
            Some(_) if matches!(what, What::Sftp(_)) => None,
            Some(forced) => {
                if let What::Exec(original) = what {
                    tracing::info!(peer = %self.peer, original = %Escaped::limit(&original, 256), "ssh forced command (key option) replaces the client's command");
                    env.push(("SSH_ORIGINAL_COMMAND".into(), original));
                }
                Some((What::Exec(forced.to_string()), env))
            }
        }
    }

    /// Whether the login key lets a subsystem start: under a forced
    /// command only sftp, and only when the command is `internal-sftp`.
    pub(super) fn key_allows_subsystem(&self, name: &str) -> bool {
        match self.key_options.forced_command() {
            None => true,
            Some(forced) => forced == INTERNAL_SFTP && name == "sftp",
        }
    }
}

#[cfg(test)]
mod fuzz_tests;
