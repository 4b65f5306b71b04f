//! The `[rest]` table of the gateway config, and the `BLINK_BIND` /
//! `BLINK_API_TOKEN` environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Port used when only an address is given (`BLINK_BIND=0.0.0.0`).
pub const DEFAULT_PORT: u16 = 8787;

/// The `[rest]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Host directories whose files `script` runs may name. Empty: no
    /// host script is accepted (commands still are).
    pub script_dirs: Vec<PathBuf>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Runs executing at once; more wait in the queue.
    pub max_concurrent_runs: usize,
    /// Runs waiting to start; more are refused with 429.
    pub max_queued_runs: usize,
    /// Runs of one session waiting to start; more of that session's are
    /// refused with 429 (`session_queue_full`) while others still queue.
    pub max_queued_runs_per_session: usize,
    /// Runs remembered for `GET /api/runs/{id}` (in memory and in their
    /// records under `<data>/runs`, across restarts); the oldest finished
    /// ones are forgotten first.
    pub max_runs_kept: usize,
    /// How long a finished run is remembered.
    pub run_retention_secs: u64,
    /// WebSocket attachments open at once; more are refused with 429.
    pub max_attachments: usize,
    /// Largest archive `POST /api/import` takes (413 past it).
    pub max_import_bytes: u64,
    /// How long an export stays downloadable.
    pub export_retention_secs: u64,
    /// Longest `timeout_secs` a run may ask for.
    pub max_run_timeout_secs: u64,
    /// On SIGTERM, how long running runs may take to finish.
    pub shutdown_grace_secs: u64,
    /// Bearer token required on every request but `/api/health`. Usually
    /// set through `BLINK_API_TOKEN` rather than the file.
    pub token: Option<String>,
    /// `Host` names (and addresses) accepted besides loopback (`localhost`,
    /// `127.0.0.1`, `[::1]`) and the listen address, which always are.
    /// `name` accepts any port, `name:port` that port only; `"*"` turns the
    /// check off. Other hosts get 421 (DNS rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://console.example.com`) whose pages may call
    /// the API, WebSocket attach included. A request with any other
    /// `Origin` header gets 403; requests without one are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            script_dirs: Vec::new(),
            max_body_bytes: 1 << 20,
            max_concurrent_runs: 4,
            max_queued_runs: 256,
            max_queued_runs_per_session: 64,
            max_runs_kept: 1000,
            run_retention_secs: 86_400,
            max_attachments: 256,
            max_import_bytes: 16 << 30,
            export_retention_secs: 24 * 3600,
            max_run_timeout_secs: 3600,
            shutdown_grace_secs: 30,
            token: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

impl RestConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Problems that make the config unusable.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_concurrent_runs", self.max_concurrent_runs),
            ("max_queued_runs", self.max_queued_runs),
            (
                "max_queued_runs_per_session",
                self.max_queued_runs_per_session,
            ),
            ("max_runs_kept", self.max_runs_kept),
            ("max_attachments", self.max_attachments),
        ] {
            if value == 0 {
                return Err(format!("rest.{name} must be at least 1"));
            }
        }
        // Each is the permit count of a semaphore.
        for (name, value) in [
            ("max_concurrent_runs", self.max_concurrent_runs),
            ("max_attachments", self.max_attachments),
        ] {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(format!(
                    "rest.{name} must be at most {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                ));
            }
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err("rest.token must not be empty".into());
        }
        for host in &self.allowed_hosts {
            if host != "*" && super::guard::HostName::parse(host).is_none() {
                return Err(format!(
                    "rest.allowed_hosts: {host:?} is not a host name or address (NAME, NAME:PORT, [V6]:PORT or \"*\")"
                ));
            }
        }
        for origin in &self.allowed_origins {
            if super::guard::normalize_origin(origin).is_none() {
                return Err(format!(
                    "rest.allowed_origins: {origin:?} is not an origin such as https://console.example.com"
                ));
            }
        }
        Ok(())
    }
}

/// Parse a listen address: `HOST:PORT`, or a bare IP (port 8787).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(format!(
        "{text:?} is not an address: use IP or IP:PORT, e.g. 127.0.0.1:8787"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("0.0.0.0").unwrap().port(), 8787);
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(parse_listen("[::1]:9").unwrap().port(), 9);
        assert_eq!(parse_listen("::1").unwrap().port(), 8787);
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn defaults_are_valid_and_unknown_keys_rejected() {
        assert!(RestConfig::default().validate().is_ok());
        assert!(toml::from_str::<RestConfig>("bind = \"x\"").is_err());
        let c: RestConfig = toml::from_str("max_runs_kept = 0").unwrap();
        assert!(c.validate().is_err());
        let c: RestConfig =
            toml::from_str("allowed_hosts = [\"blink.internal\", \"10.0.0.5:8787\", \"*\"]")
                .unwrap();
        assert!(c.validate().is_ok());
        for bad in [
            "allowed_hosts = [\"a b\"]",
            "allowed_hosts = [\"\"]",
            "allowed_origins = [\"evil.example\"]",
            "allowed_origins = [\"https://a.example/path\"]",
        ] {
            let c: RestConfig = toml::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
