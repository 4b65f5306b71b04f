//! What keeps web pages out of the API. A page on any site can make its
//! visitor's browser send requests to `127.0.0.1:8787`: through DNS
//! rebinding (a name of the attacker's that resolves to loopback, so the
//! browser sends `Host: evil.example`) or, for WebSockets, directly (the
//! browser sends the page's `Origin` and no CORS check applies).
//!
//! So every request must name an allowed host (`Host`, and the authority
//! of an absolute request target): loopback, the listen address, and
//! `[rest] allowed_hosts`; others get 421 `host_not_allowed`
//! (`/api/health` is exempt, for probes that use a pod address). A request
//! that carries an `Origin` (browsers add it to WebSocket handshakes and
//! cross-site requests) must name one of `[rest] allowed_origins`, empty by
//! default; others get 403 `origin_not_allowed`. Clients that are not
//! browsers (curl, control planes) send no `Origin` and are not affected.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blink_sdk::escape::Escaped;

use super::RestConfig;
use super::error::ApiError;

/// Names that always reach the API: this machine.
const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// The allowed hosts and origins, fixed at start.
#[derive(Debug)]
pub struct Guard {
    any_host: bool,
    hosts: Vec<HostName>,
    origins: Vec<String>,
}

/// A host as `Host` carries it: a lowercase name or address (IPv6 in
/// brackets, without a trailing dot) and maybe a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName {
    name: String,
    port: Option<u16>,
}

impl HostName {
    /// `NAME`, `NAME:PORT`, `[V6]` or `[V6]:PORT`; `None` when malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.to_ascii_lowercase();
        let port = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u16>().ok()
        };
        if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            let addr: Ipv6Addr = inside.parse().ok()?;
            let port = match after {
                "" => None,
                p => Some(port(p.strip_prefix(':')?)?),
            };
            return Some(Self {
                name: format!("[{addr}]"),
                port,
            });
        }
        let (name, port) = match text.split_once(':') {
            Some((name, p)) => (name, Some(port(p)?)),
            None => (text.as_str(), None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        valid.then(|| Self {
            name: name.to_string(),
            port,
        })
    }

    fn of_ip(ip: IpAddr) -> Self {
        let name = match ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        Self { name, port: None }
    }

    /// Whether `given` is this host (any port when this one has none).
    fn admits(&self, given: &HostName) -> bool {
        self.name == given.name && self.port.is_none_or(|p| given.port == Some(p))
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// An origin in a form to compare: `scheme://host[:port]`, lowercase,
/// without a default port or trailing slash; `None` when it is not one
/// (`null`, a path, no scheme).
pub fn normalize_origin(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('/').unwrap_or(&text);
    let (scheme, authority) = text.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }
    let mut host = HostName::parse(authority)?;
    if matches!(
        (scheme, host.port),
        ("http", Some(80)) | ("https", Some(443))
    ) {
        host.port = None;
    }
    Some(format!("{scheme}://{host}"))
}

impl Guard {
    /// From the config (validated) and the address the API is bound to.
    pub fn new(config: &RestConfig, bound: SocketAddr) -> Self {
        let mut hosts: Vec<HostName> = LOOPBACK.iter().filter_map(|h| HostName::parse(h)).collect();
        if !bound.ip().is_unspecified() {
            hosts.push(HostName::of_ip(bound.ip()));
        }
        hosts.extend(
            config
                .allowed_hosts
                .iter()
                .filter_map(|h| HostName::parse(h)),
        );
        Self {
            any_host: config.allowed_hosts.iter().any(|h| h == "*"),
            hosts,
            origins: config
                .allowed_origins
                .iter()
                .filter_map(|o| normalize_origin(o))
                .collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.any_host
            || HostName::parse(host).is_some_and(|h| self.hosts.iter().any(|a| a.admits(&h)))
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .ok()
            .and_then(normalize_origin)
            .is_some_and(|o| self.origins.contains(&o))
    }

    /// Why a request is refused, if it is.
    fn refusal(&self, req: &Request) -> Option<ApiError> {
        if req.uri().path() != "/api/health" {
            let header = req.headers().get(header::HOST);
            let mut named = Vec::new();
            if let Some(h) = header {
                named.push(String::from_utf8_lossy(h.as_bytes()).into_owned());
            }
            if let Some(a) = req.uri().authority() {
                named.push(a.as_str().to_string());
            }
            if named.is_empty() {
                return Some(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "host_not_allowed",
                    "the request names no host (send a Host header)",
                ));
            }
            if let Some(bad) = named.iter().find(|h| !self.host_allowed(h)) {
                tracing::debug!(host = %Escaped::limit(bad, 100), "HTTP request refused: host not allowed");
                return Some(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "host_not_allowed",
                    format!(
                        "host {:?} is not allowed: this API answers to loopback, its listen \
                         address and rest.allowed_hosts (a web page reaching it through DNS \
                         rebinding names its own host)",
                        bad.chars().take(100).collect::<String>()
                    ),
                ));
            }
        }
        if let Some(origin) = req.headers().get(header::ORIGIN)
            && !self.origin_allowed(origin)
        {
            let shown = String::from_utf8_lossy(origin.as_bytes());
            tracing::debug!(origin = %Escaped::limit(&shown, 100), "HTTP request refused: origin not allowed");
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "origin {:?} is not allowed: requests from web pages need their origin in \
                     rest.allowed_origins",
                    shown.chars().take(100).collect::<String>()
                ),
            ));
        }
        None
    }
}

/// The middleware: refuse, or pass the request on.
pub async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match guard.refusal(&req) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str], origins: &[&str], bound: &str) -> Guard {
        let config = RestConfig {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..RestConfig::default()
        };
        Guard::new(&config, bound.parse().unwrap())
    }

    #[test]
    fn hosts() {
        let g = guard(
            &["blink.internal", "api.example:8443"],
            &[],
            "10.1.2.3:8787",
        );
        for ok in [
            "localhost",
            "LOCALHOST:1",
            "localhost.:8787",
            "127.0.0.1:8787",
            "[::1]:8787",
            "[0:0:0:0:0:0:0:1]",
            "10.1.2.3:8787",
            "blink.internal:80",
            "api.example:8443",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for no in [
            "evil.example",
            "evil.example:8787",
            "api.example:8444",
            "api.example",
            "127.0.0.2",
            "localhost.evil.example",
            "localhost:80:80",
            "",
            "[::1",
            "a b",
            "localhost:+80",
        ] {
            assert!(!g.host_allowed(no), "{no}");
        }
        // A wildcard listen address is not a name.
        assert!(!guard(&[], &[], "0.0.0.0:8787").host_allowed("0.0.0.0:8787"));
        assert!(guard(&["*"], &[], "0.0.0.0:8787").host_allowed("anything.example"));
    }

    #[test]
    fn origins() {
        let g = guard(
            &[],
            &["https://Console.Example.com/", "http://localhost:3000"],
            "127.0.0.1:1",
        );
        let ok = |o: &str| g.origin_allowed(&HeaderValue::from_str(o).unwrap());
        assert!(ok("https://console.example.com"));
        assert!(ok("https://console.example.com:443"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("http://console.example.com"));
        assert!(!ok("http://localhost:3001"));
        assert!(!ok("http://evil.example"));
        assert!(!ok("null"));
        assert!(
            !guard(&[], &[], "127.0.0.1:1")
                .origin_allowed(&HeaderValue::from_static("http://127.0.0.1:8787"))
        );
        assert_eq!(normalize_origin("https://a.example/x"), None);
        assert_eq!(normalize_origin("a.example"), None);
    }
}
