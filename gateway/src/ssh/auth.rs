//! Public-key authentication: the admin authorized_keys file reaches every
//! session, a session's own file reaches that session. An unknown session
//! and a wrong key are rejected the same way.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use blink_sdk::manager::OpenOptions;
use blink_sdk::manager::keys;
use blink_sdk::manager::names;
use blink_sdk::manager::store::Store;
use russh::keys::{Algorithm, PublicKey};
use russh::server::Auth;

use super::Conn;

/// Where authorized keys come from.
pub struct KeyCheck {
    store: Store,
    admin_file: Option<PathBuf>,
}

/// Who a key lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    None,
    Session,
    Admin,
}

impl KeyCheck {
    pub fn new(store: Store, admin_file: Option<PathBuf>) -> Self {
        Self { store, admin_file }
    }

    fn grant(&self, session: &str, fingerprint: &str) -> Grant {
        if let Some(path) = &self.admin_file {
            match keys::read_file(path) {
                Ok(list) if list.iter().any(|k| k.fingerprint == fingerprint) => {
                    return Grant::Admin;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "admin authorized_keys unreadable"),
            }
        }
        match keys::list(&self.store, session) {
            Ok(list) if list.iter().any(|k| k.fingerprint == fingerprint) => Grant::Session,
            Ok(_) => Grant::None,
            Err(e) => {
                tracing::warn!(session = %session, error = %e, "session authorized_keys unreadable");
                Grant::None
            }
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
            *who = (user.chars().take(64).collect(), fingerprint.clone());
        }
        if self.counted_session.is_some() || !algorithm_allowed(algorithm) {
            return Auth::reject();
        }
        if names::validate(user).is_err() {
            return Auth::reject();
        }
        let gateway = self.gateway.clone();
        let exists = gateway.manager.session_info(user).is_ok();
        let grant = gateway.keys.grant(user, &fingerprint);
        let ok = match grant {
            Grant::None => false,
            Grant::Session => exists,
            Grant::Admin => exists || gateway.config.admin_create_sessions,
        };
        if !ok {
            if verified {
                tracing::info!(peer = %self.peer, login = %user, key = %fingerprint, "ssh auth rejected");
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
                    tracing::info!(session = %user, key = %fingerprint, "session created on admin ssh login")
                }
                Err(e) => {
                    tracing::warn!(session = %user, error = %e, "creating session on ssh login failed");
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
                tracing::info!(peer = %self.peer, session = %user, "ssh auth refused: too many connections to this session");
                return Auth::reject();
            }
            *n += 1;
        }
        self.counted_session = Some(user.to_string());
        self.stats.authenticated.store(true, Ordering::SeqCst);
        tracing::info!(peer = %self.peer, login = %user, key = %fingerprint, admin = grant == Grant::Admin, "ssh login");
        Auth::Accept
    }
}

#[cfg(test)]
mod fuzz_tests;
