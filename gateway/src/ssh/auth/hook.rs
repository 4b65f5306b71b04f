//! The auth hook (`[ssh.auth_hook]`), as ContainerSSH's authentication
//! webhook: an HTTP endpoint of the operator's control plane, asked on
//! every login (after the client proved it holds its key) with the
//! session, the key or certificate and the client's address. It answers
//! allow or deny, and may add key options (`restrict`, `command=`, ...)
//! that narrow what the login may do. The schema is in
//! docs/XENSEMBLE.md ("Auth hook").
//!
//! It fails closed: a timeout, a refused connection, any status but 2xx,
//! a body that is not the answer's JSON, or options Blink cannot enforce
//! all refuse the login. Answers (allow and deny, not failures) are kept
//! for `cache_secs` in a cache of at most `cache_max_entries`. The
//! bearer token is read from a file at start and never logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{self, Uri, header};
use blink_sdk::manager::keys::KeyOptions;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::config::{AuthHookConfig, HookMode};

/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// A secret that never shows in logs or debug output.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What the hook is told about one login.
#[derive(Debug, Clone, Serialize)]
pub struct HookRequest {
    /// The login name: the session.
    pub session: String,
    pub session_exists: bool,
    /// The client's IP address.
    pub client_address: String,
    pub key: KeyInfo,
    /// When the client logged in with a certificate (one the gateway
    /// accepted: trusted CA, valid, naming the session).
    pub certificate: Option<CertInfo>,
    /// What already lets this login in: `session_key`, `admin_key`,
    /// `certificate`, `admin_certificate` (a wildcard principal), or
    /// `null` (nothing: only a hook in `authorize` mode may let it in).
    pub granted_by: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The public key as an authorized_keys line (no comment).
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub key_id: String,
    pub serial: u64,
    pub principals: Vec<String>,
    pub ca_fingerprint: String,
    pub valid_after: u64,
    pub valid_before: u64,
}

/// The hook's answer, as sent.
#[derive(Debug, Deserialize)]
struct Answer {
    allow: bool,
    /// authorized_keys options for this login.
    #[serde(default)]
    options: Option<String>,
    /// Why (logged).
    #[serde(default)]
    reason: Option<String>,
}

/// The hook's decision on one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// With the options the hook adds (empty: none).
    Allow(KeyOptions),
    /// With the hook's reason, if it gave one.
    Deny(Option<String>),
}

/// A configured hook.
#[derive(Debug)]
pub struct AuthHook {
    uri: Uri,
    host: String,
    port: u16,
    pub mode: HookMode,
    timeout: Duration,
    cache_ttl: Duration,
    cache_max: usize,
    token: Option<Secret>,
    cache: Mutex<HashMap<String, (Instant, Decision)>>,
}

/// An `http://` URL's parts, or why it is not one the hook can use.
pub fn parse_url(url: &str) -> Result<(Uri, String, u16), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("ssh.auth_hook.url {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "ssh.auth_hook.url {url:?}: https is not supported; run the hook on \
                 loopback or a private network (or a TLS proxy beside the gateway)"
            ));
        }
        _ => return Err(format!("ssh.auth_hook.url {url:?} must start with http://")),
    }
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(format!("ssh.auth_hook.url {url:?} has no host"));
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("ssh.auth_hook.url must not hold credentials; use token_file".to_string());
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    Ok((uri, host, port))
}

impl AuthHook {
    /// From its config; reads the token file now.
    pub fn new(config: &AuthHookConfig) -> Result<Self, String> {
        let (uri, host, port) = parse_url(&config.url)?;
        let token = match &config.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Ok(Self {
            uri,
            host,
            port,
            mode: config.mode,
            timeout: Duration::from_millis(config.timeout_ms),
            cache_ttl: Duration::from_secs(config.cache_secs),
            cache_max: config.cache_max_entries,
            token,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The hook's decision on a login; an error (the hook could not be
    /// asked, or answered wrong) refuses it too.
    pub async fn decide(&self, request: &HookRequest) -> Result<Decision, String> {
        let body = serde_json::to_vec(request).map_err(|e| format!("encoding the request: {e}"))?;
        // The whole request is the cache key: any change asks again.
        let key = String::from_utf8_lossy(&body).into_owned();
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let (status, answer) = tokio::time::timeout(self.timeout, self.post(body))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
        if !status.is_success() {
            return Err(format!("answered HTTP {}", status.as_u16()));
        }
        let answer: Answer = serde_json::from_slice(&answer)
            .map_err(|e| format!("its answer is not {{\"allow\": bool, ...}}: {e}"))?;
        let decision = if answer.allow {
            let options = KeyOptions::parse(answer.options.as_deref().unwrap_or("").trim())
                .map_err(|e| format!("its options are refused: {e}"))?;
            Decision::Allow(options)
        } else {
            Decision::Deny(answer.reason)
        };
        self.remember(key, &decision);
        Ok(decision)
    }

    fn cached(&self, key: &str) -> Option<Decision> {
        let cache = self.cache.lock().ok()?;
        let (at, decision) = cache.get(key)?;
        (at.elapsed() < self.cache_ttl).then(|| decision.clone())
    }

    /// Keep an answer, making room first: expired ones go, then the
    /// oldest.
    fn remember(&self, key: String, decision: &Decision) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= self.cache_max {
            let ttl = self.cache_ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        while cache.len() >= self.cache_max {
            let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            cache.remove(&oldest);
        }
        cache.insert(key, (Instant::now(), decision.clone()));
    }

    /// One POST on a fresh connection: the status and at most
    /// [`MAX_ANSWER_BYTES`] of body.
    async fn post(&self, body: Vec<u8>) -> Result<(http::StatusCode, Bytes), String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or("");
        let mut request = http::Request::post(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("blink-server/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONNECTION, "close");
        if let Some(Secret(token)) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            // The connection's task ends once the sender is gone.
            drop(sender);
            Ok((status, body))
        };
        let (result, _) = tokio::join!(exchange, connection);
        result
    }
}

fn read_token(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("ssh.auth_hook.token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "ssh.auth_hook.token_file {}: must hold one token (no spaces or control characters)",
            path.display()
        ));
    }
    Ok(Secret(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (_, host, port) = parse_url("http://127.0.0.1:9000/auth?x=1").unwrap();
        assert_eq!((host.as_str(), port), ("127.0.0.1", 9000));
        let (_, host, port) = parse_url("http://[::1]/a").unwrap();
        assert_eq!((host.as_str(), port), ("::1", 80));
        for bad in [
            "https://h/",
            "ftp://h/",
            "h:80",
            "http://u:p@h/",
            "not a url",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_token_never_shows() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "***");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "tok en\n").unwrap();
        let e = read_token(&path).unwrap_err();
        assert!(!e.contains("tok en"), "{e}");
    }

    fn hook(ttl: u64, max: usize) -> AuthHook {
        AuthHook::new(&AuthHookConfig {
            url: "http://127.0.0.1:9/".into(),
            mode: HookMode::Confirm,
            timeout_ms: 100,
            cache_secs: ttl,
            cache_max_entries: max,
            token_file: None,
        })
        .unwrap()
    }

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let h = hook(60, 3);
        for i in 0..10 {
            h.remember(format!("k{i}"), &Decision::Deny(None));
        }
        let cache = h.cache.lock().unwrap();
        assert_eq!(cache.len(), 3);
        // The newest are kept.
        assert!(cache.contains_key("k9") && cache.contains_key("k7"));
        drop(cache);
        assert_eq!(h.cached("k9"), Some(Decision::Deny(None)));
        assert_eq!(h.cached("k0"), None);
        // No cache at all with cache_secs = 0.
        let none = hook(0, 3);
        none.remember("k".into(), &Decision::Deny(None));
        assert_eq!(none.cached("k"), None);
    }
}
