//! Authentication: public keys and OpenSSH certificates. The admin
//! authorized_keys file reaches every session, a session's own file
//! reaches that session, a certificate signed by a trusted CA
//! (`auth/certs.rs`) reaches the sessions its principals name. Revoked
//! keys and certificates (`auth/revocation.rs`, `auth/krl.rs`) are
//! refused, and an auth hook (`auth/hook.rs`), when configured, has the
//! last word on every login. An unknown session, a wrong key and every
//! refused certificate are rejected the same way; the log says why.
//!
//! A key's options (`from=`, `expiry-time=`, ...) and a certificate's
//! critical options are checked here, at every attempt; those that act on
//! channels (`command=`/`force-command`, `no-pty`, `environment=`, ...)
//! are kept on the connection and consulted when a channel starts
//! ([`Conn::key_channel`], [`Conn::key_allows_pty`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use blink_sdk::escape::Escaped;
use blink_sdk::manager::KeyStore;
use blink_sdk::manager::OpenOptions;
use blink_sdk::manager::keys::{self, AuthorizedKey, INTERNAL_SFTP, KeyOptions};
use blink_sdk::manager::names;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, Certificate, HashAlg, PublicKey};
use russh::server::Auth;

use self::certs::CertCheck;
use self::hook::{AuthHook, CertInfo, HookRequest, KeyInfo};
use self::reloading::Reloading;
use self::revocation::RevocationList;
use super::channel::What;
use super::requests::Conn;
use crate::config::{HookMode, SshConfig};

mod certs;
pub(crate) mod hook;
mod krl;
pub(crate) mod relayed;
mod reloading;
mod revocation;

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

/// Every source of a login decision a gateway has.
pub(super) struct LoginCheck {
    keys: KeyCheck,
    certs: Option<CertCheck>,
    revoked: Option<Reloading<RevocationList>>,
    hook: Option<AuthHook>,
    /// A cluster's routers (`relayed.rs`), when this is a node of one.
    routers: Option<relayed::RouterKeys>,
}

impl LoginCheck {
    /// From the `[ssh]` config; the files it names (trusted CAs, revoked
    /// keys, the hook's token) are read now, and an error names the one
    /// that cannot be used.
    pub(super) fn new(store: KeyStore, config: &SshConfig) -> Result<Self, String> {
        let certs = match &config.trusted_user_ca_keys {
            Some(path) => Some(CertCheck::open(
                path,
                config.wildcard_principal.clone(),
                config.certificate_clock_skew_secs,
            )?),
            None => None,
        };
        let revoked = match &config.revoked_keys {
            Some(path) => Some(Reloading::open(
                path,
                "revoked keys",
                RevocationList::parse,
            )?),
            None => None,
        };
        let hook = match &config.auth_hook {
            Some(hook) => Some(AuthHook::new(hook)?),
            None => None,
        };
        Ok(Self {
            keys: KeyCheck::new(store, config.admin_authorized_keys.clone()),
            certs,
            revoked,
            hook,
            routers: config.router_keys.as_deref().map(relayed::RouterKeys::new),
        })
    }

    /// Why this key (and the certificate holding it) may not log in
    /// whatever else says: revoked, or the revocation list is unusable
    /// (then nothing logs in, as with sshd).
    fn revoked(&self, key: &KeyData, cert: Option<&Certificate>) -> Option<String> {
        let list = self.revoked.as_ref()?;
        match list.get() {
            Ok(list) => list.refuses(key, cert).map(str::to_string),
            Err(e) => Some(format!("the revocation list is unusable: {e}")),
        }
    }
}

/// What a client offers: a plain key, or a certificate holding one.
#[derive(Clone, Copy)]
pub(super) enum Offer<'a> {
    Key(&'a PublicKey),
    Cert(&'a Certificate),
}

impl Offer<'_> {
    /// The key the client proves it holds.
    fn key(&self) -> &KeyData {
        match self {
            Offer::Key(k) => k.key_data(),
            Offer::Cert(c) => c.public_key(),
        }
    }

    fn certificate(&self) -> Option<&Certificate> {
        match self {
            Offer::Key(_) => None,
            Offer::Cert(c) => Some(c),
        }
    }
}

/// Key types accepted for user authentication, and signature algorithms
/// accepted from CAs: no ssh-rsa with SHA-1.
pub(crate) fn algorithm_allowed(algorithm: &Algorithm) -> bool {
    match algorithm {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => true,
        Algorithm::Rsa { hash } => hash.is_some(),
        _ => false,
    }
}

/// What the hook is told already lets a login in.
fn granted_by(grant: Grant, offer: Offer<'_>) -> Option<&'static str> {
    match (grant, offer) {
        (Grant::None, _) => None,
        (Grant::Session, Offer::Key(_)) => Some("session_key"),
        (Grant::Admin, Offer::Key(_)) => Some("admin_key"),
        (Grant::Session, Offer::Cert(_)) => Some("certificate"),
        (Grant::Admin, Offer::Cert(_)) => Some("admin_certificate"),
    }
}

impl Conn {
    /// Decide on a key or certificate for a login. `algorithm` is the one
    /// the client named (russh asks with it before the final step of a
    /// certificate, which then has none). `verified` is the final step
    /// (the client proved it holds the key); only then are counters
    /// touched, the hook asked and sessions created.
    pub(super) async fn check_login(
        &mut self,
        user: &str,
        offer: Offer<'_>,
        algorithm: Option<&Algorithm>,
        verified: bool,
    ) -> Auth {
        let fingerprint = offer.key().fingerprint(HashAlg::Sha256).to_string();
        if let Ok(mut who) = self.stats.who.lock() {
            *who = (Escaped::limit(user, 64).to_string(), fingerprint.clone());
        }
        if self.counted_session.is_some() || algorithm.is_some_and(|a| !algorithm_allowed(a)) {
            return Auth::reject();
        }
        if names::validate(user).is_err() {
            return Auth::reject();
        }
        let gateway = self.gateway.clone();
        let check = &gateway.auth;
        let cert = offer.certificate();
        let cert_id = cert.map(|c| Escaped::limit(c.key_id(), 128).to_string());
        let serial = cert.map(Certificate::serial);
        if let Some(why) = check.revoked(offer.key(), cert) {
            metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "revoked").increment(1);
            tracing::info!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, cert_id, serial, reason = %why, "ssh login refused: revoked");
            return Auth::reject();
        }
        let exists = gateway.manager.session_info(user).is_ok();
        let (grant, options) = match offer {
            Offer::Key(_) => {
                let decision = check.keys.grant(user, &fingerprint, self.peer.ip());
                if decision.grant == Grant::None {
                    for why in &decision.refused {
                        metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "key_options").increment(1);
                        tracing::info!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, reason = %Escaped(why), "ssh key refused by its options");
                    }
                }
                (decision.grant, decision.options)
            }
            Offer::Cert(c) => {
                let checked = match &check.certs {
                    Some(certs) => certs.check(c, user, self.peer.ip(), SystemTime::now()),
                    None => {
                        Err("certificates are not accepted (no ssh.trusted_user_ca_keys)".into())
                    }
                };
                match checked {
                    Ok(g) => (g.grant, g.options),
                    Err(why) => {
                        metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "certificate").increment(1);
                        tracing::info!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, cert_id, serial, reason = %Escaped(&why), "ssh certificate refused");
                        (Grant::None, KeyOptions::default())
                    }
                }
            }
        };
        let admitted = match grant {
            Grant::None => false,
            Grant::Session => exists,
            Grant::Admin => exists || gateway.config.admin_create_sessions,
        };
        // A hook that authorizes may let in a plain key nothing else
        // does; it is asked once the key is proven, so every such offer is
        // accepted until then (whatever the session: no name is revealed).
        let hook_may_grant = grant == Grant::None
            && matches!(offer, Offer::Key(_))
            && check
                .hook
                .as_ref()
                .is_some_and(|h| h.mode == HookMode::Authorize);
        if !verified {
            if admitted || hook_may_grant {
                return Auth::Accept;
            }
            // An offered key nobody authorized: the client never signs
            // with it, so this is its only line.
            metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "unknown_key").increment(1);
            tracing::info!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, reason = "no authorized key or certificate matches", "ssh auth rejected");
            return Auth::reject();
        }
        let rejected = |why: &str| {
            metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "unknown_key").increment(1);
            tracing::info!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, reason = why, "ssh auth rejected");
            Auth::reject()
        };
        let hook_grants = hook_may_grant && exists;
        if !admitted && !hook_grants {
            return rejected(if grant == Grant::None {
                "no key, certificate or hook lets it in"
            } else {
                "no such session"
            });
        }
        let mut grant = grant;
        let mut options = options;
        let mut via = if cert.is_some() { "certificate" } else { "key" };
        if let Some(hook) = &check.hook {
            let request = HookRequest {
                session: user.to_string(),
                session_exists: exists,
                client_address: self.peer.ip().to_canonical().to_string(),
                key: key_info(offer.key(), &fingerprint),
                certificate: cert.map(cert_info),
                granted_by: granted_by(grant, offer),
            };
            match hook.decide(&request).await {
                Ok(hook::Decision::Allow(extra)) => {
                    options = match options.merge(&extra) {
                        Ok(merged) => merged,
                        Err(e) => {
                            metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "hook_conflict").increment(1);
                            tracing::warn!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, error = %Escaped(&e.to_string()), "ssh auth hook's options conflict with the login's: refused");
                            return Auth::reject();
                        }
                    };
                    if grant == Grant::None {
                        grant = Grant::Session;
                        via = "hook";
                    }
                }
                Ok(hook::Decision::Deny(reason)) => {
                    let reason = reason.unwrap_or_default();
                    metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "hook_denied").increment(1);
                    tracing::info!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, cert_id, reason = %Escaped::limit(&reason, 256), "ssh login denied by the auth hook");
                    return Auth::reject();
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "hook_failed").increment(1);
                    tracing::warn!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, error = %Escaped(&e), "ssh auth hook failed: login refused");
                    return Auth::reject();
                }
            }
        }
        if !exists {
            match gateway
                .manager
                .open_session(user, OpenOptions::default())
                .await
            {
                Ok(_) => {
                    tracing::info!(session = %Escaped(user), key = %fingerprint, via, "session created on admin ssh login")
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
                metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "refused", "reason" => "too_many_connections").increment(1);
                tracing::info!(target: "blink::ssh::auth", peer = %self.peer, session = %Escaped(user), "ssh auth refused: too many connections to this session");
                return Auth::reject();
            }
            *n += 1;
        }
        self.counted_session = Some(user.to_string());
        self.key_options = options;
        self.stats.authenticated.store(true, Ordering::SeqCst);
        let ca = cert.map(|c| c.signature_key().fingerprint(HashAlg::Sha256).to_string());
        metrics::counter!(crate::metrics::SSH_AUTH_TOTAL, "result" => "accepted", "reason" => "")
            .increment(1);
        tracing::info!(target: "blink::ssh::auth", peer = %self.peer, login = %Escaped(user), key = %fingerprint, via, cert_id, serial, ca, admin = grant == Grant::Admin, options = %Escaped(&self.key_options.to_string()), "ssh login");
        Auth::Accept
    }

    /// Whether `key` is a cluster router's: its offer is accepted (the
    /// router proves it holds it next), and its login is a relayed one.
    pub(super) fn is_router_key(&self, key: &PublicKey) -> bool {
        self.gateway
            .auth
            .routers
            .as_ref()
            .is_some_and(|r| r.holds(key))
    }

    /// A login relayed by a router (`relayed.rs`): the user name names
    /// the session, the client's address and its key or certificate,
    /// decided on as that client's own login from that address.
    pub(super) async fn check_relayed_login(&mut self, user: &str) -> Auth {
        let Some(relayed) = relayed::decode(user) else {
            tracing::info!(target: "blink::ssh::auth", peer = %self.peer, "ssh relayed login refused: malformed");
            return Auth::reject();
        };
        tracing::debug!(router = %self.peer, client = %relayed.peer, session = %Escaped(&relayed.session), "ssh login relayed by a router");
        self.peer = std::net::SocketAddr::new(relayed.peer, 0);
        match &relayed.identity {
            relayed::Identity::Key(key) => {
                let algorithm = key.algorithm();
                self.check_login(&relayed.session, Offer::Key(key), Some(&algorithm), true)
                    .await
            }
            relayed::Identity::Cert(cert) => {
                self.check_login(&relayed.session, Offer::Cert(cert), None, true)
                    .await
            }
        }
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
                    tracing::info!(target: "blink::ssh::auth", peer = %self.peer, original = %Escaped::limit(&original, 256), "ssh forced command (key option) replaces the client's command");
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

/// A key as the hook is told it.
fn key_info(key: &KeyData, fingerprint: &str) -> KeyInfo {
    let public = PublicKey::new(key.clone(), "");
    KeyInfo {
        algorithm: key.algorithm().to_string(),
        fingerprint: fingerprint.to_string(),
        public_key: public.to_openssh().unwrap_or_default(),
    }
}

/// A certificate as the hook is told it.
fn cert_info(cert: &Certificate) -> CertInfo {
    CertInfo {
        key_id: cert.key_id().to_string(),
        serial: cert.serial(),
        principals: cert.valid_principals().to_vec(),
        ca_fingerprint: cert
            .signature_key()
            .fingerprint(HashAlg::Sha256)
            .to_string(),
        valid_after: cert.valid_after(),
        valid_before: cert.valid_before(),
    }
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
