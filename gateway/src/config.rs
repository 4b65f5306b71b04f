//! Gateway configuration: a TOML file (see `config/blink.example.toml`),
//! overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::ssh::admission::{MaxStartups, NetBlockSize, Network};

/// The longest time a setting may hold, in seconds.
const MAX_SECS: u64 = 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config is invalid: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    /// Stop a cold session after this many seconds with nothing running in
    /// it (default 300).
    pub session_idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub ssh: SshConfig,
    #[serde(default)]
    pub rest: crate::rest::RestConfig,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    /// `[images]`: pulls from registries (docs/IMAGES.md).
    #[serde(default)]
    pub images: blink_sdk::image::PullConfig,
}

/// The `[network]` table: sessions' egress (docs/NETWORK.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// `"none"` (loopback only, the default) or `"proxy"`: the policy of a
    /// new session that does not bring its own.
    pub mode: blink_sdk::network::Mode,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Names the egress proxy resolves itself, before the host's resolver
    /// (an operator's table; its addresses count as explicitly allowed).
    pub resolve: std::collections::BTreeMap<String, std::net::IpAddr>,
}

impl NetworkConfig {
    pub fn policy(&self) -> blink_sdk::network::NetworkPolicy {
        blink_sdk::network::NetworkPolicy {
            mode: self.mode,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        }
    }
}

/// The `[sandbox]` table: how sandboxes are confined.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `"default"` (Docker's default semantics) or `"unconfined"`.
    pub seccomp: blink_sdk::runtime::local::SeccompProfile,
    /// First host id of the per-sandbox id ranges (65536 ids each) when
    /// running as root. Give each Blink on one host its own base.
    pub id_base: u32,
    /// Disk size of a new session in MiB (its disk quota) unless it asks
    /// for its own (`disk_mib` in `POST /api/sessions`).
    pub disk_size_mib: u64,
    /// Ephemeral sandboxes of the default image kept started ahead of
    /// time, so a run does not wait for one to boot (0: none).
    pub ephemeral_pool: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            seccomp: blink_sdk::runtime::local::SeccompProfile::Default,
            id_base: blink_sdk::runtime::local::DEFAULT_ID_BASE,
            disk_size_mib: blink_sdk::runtime::local::DEFAULT_DISK_MIB,
            ephemeral_pool: 2,
        }
    }
}

/// The `[ssh]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Ed25519 host key; default `<data_dir>/gateway/ssh_host_ed25519_key`.
    pub host_key: Option<PathBuf>,
    /// OpenSSH authorized_keys file whose keys may reach every session.
    pub admin_authorized_keys: Option<PathBuf>,
    /// Let an admin key create a missing session (default image) on login.
    pub admin_create_sessions: bool,
    /// Environment names accepted from clients besides LANG, LC_* and TERM.
    pub env_allow: Vec<String>,
    /// On SIGTERM, how long running channels may take to finish before
    /// their connections are closed.
    pub shutdown_grace_secs: u64,
    /// Offer only post-quantum key exchange (mlkem768x25519-sha256):
    /// clients older than OpenSSH 9.9 (Debian 12's 9.2) cannot connect.
    pub post_quantum_only: bool,
    /// TCP forwarding (`ssh -L`, `-D`, `-R`) to and from each session's own
    /// loopback; keys may still refuse it (`no-port-forwarding`,
    /// `restrict`) or narrow it (`permitopen=`, `permitlisten=`).
    pub allow_forwarding: bool,
    pub limits: Limits,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            host_key: None,
            admin_authorized_keys: None,
            admin_create_sessions: false,
            env_allow: Vec::new(),
            shutdown_grace_secs: 10,
            post_quantum_only: false,
            allow_forwarding: true,
            limits: Limits::default(),
        }
    }
}

impl SshConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Connection limits. Times are in seconds. The admission limits before
/// authentication follow OpenSSH 9.8's sshd (`ssh/admission.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Public-key attempts per connection.
    pub max_auth_attempts: usize,
    /// From TCP accept to the end of the version exchange (at most the
    /// login grace time).
    pub handshake_timeout_secs: u64,
    /// From TCP accept to successful authentication (OpenSSH's
    /// LoginGraceTime). `auth_timeout_secs` is its former name.
    #[serde(alias = "auth_timeout_secs")]
    pub login_grace_time_secs: u64,
    /// Unauthenticated connections in total, `"start:rate:full"`: random
    /// early drop from `start`, all dropped at `full` (MaxStartups).
    pub max_startups: MaxStartups,
    /// Unauthenticated connections per source block (0: no limit).
    pub per_source_max_startups: usize,
    /// Prefix lengths grouping sources into blocks, `"v4:v6"`.
    pub per_source_net_block_size: NetBlockSize,
    /// Penalize sources that fail or abandon logins (PerSourcePenalties).
    pub per_source_penalties: bool,
    /// Penalty for a connection whose keys were all refused.
    pub penalty_authfail_secs: u64,
    /// Penalty for a connection closed without trying to authenticate.
    pub penalty_noauth_secs: u64,
    /// Penalty for a connection still unauthenticated at the grace time.
    pub penalty_grace_exceeded_secs: u64,
    /// A source is refused once its penalty passes this...
    pub penalty_min_secs: u64,
    /// ...and accrues at most this much.
    pub penalty_max_secs: u64,
    /// Sources (blocks) tracked at most; the soonest to expire go first.
    pub penalty_max_sources: usize,
    /// Addresses and networks never penalized (default: none).
    pub penalty_exempt: Vec<Network>,
    /// Open connections in total.
    pub max_connections: usize,
    /// Authenticated connections per session.
    pub max_connections_per_session: usize,
    /// Open channels per connection.
    pub max_channels_per_connection: usize,
    /// Forwarded TCP connections open at once per connection (`ssh -L`,
    /// `-D` and `-R` together); each buffers at most a channel window.
    pub max_forwarded_connections: usize,
    /// Listeners (`ssh -R`) per connection.
    pub max_remote_forwards: usize,
    /// A connection with no traffic for this long is closed (0: never).
    pub idle_timeout_secs: u64,
    /// Send a keepalive after this long without client traffic (0: off).
    pub keepalive_interval_secs: u64,
    /// Close after this many unanswered keepalives.
    pub keepalive_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_auth_attempts: 6,
            handshake_timeout_secs: 30,
            login_grace_time_secs: 60,
            max_startups: MaxStartups {
                start: 10,
                rate: 30,
                full: 100,
            },
            per_source_max_startups: 10,
            per_source_net_block_size: NetBlockSize { v4: 32, v6: 128 },
            per_source_penalties: true,
            penalty_authfail_secs: 5,
            penalty_noauth_secs: 1,
            penalty_grace_exceeded_secs: 10,
            penalty_min_secs: 15,
            penalty_max_secs: 600,
            penalty_max_sources: 65536,
            penalty_exempt: Vec::new(),
            max_connections: 256,
            max_connections_per_session: 32,
            max_channels_per_connection: 16,
            max_forwarded_connections: 32,
            max_remote_forwards: 8,
            idle_timeout_secs: 1800,
            keepalive_interval_secs: 30,
            keepalive_max: 3,
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    pub fn login_grace_time(&self) -> Duration {
        Duration::from_secs(self.login_grace_time_secs)
    }
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_secs > 0)
            .then(|| Duration::from_secs(self.keepalive_interval_secs))
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        use blink_sdk::runtime::local::{MAX_DISK_MIB, MIN_DISK_MIB};
        if self.sandbox.ephemeral_pool > 64 {
            return Err(ConfigError::Invalid(
                "sandbox.ephemeral_pool must be at most 64".into(),
            ));
        }
        let disk = self.sandbox.disk_size_mib;
        if !(MIN_DISK_MIB..=MAX_DISK_MIB).contains(&disk) {
            return Err(ConfigError::Invalid(format!(
                "sandbox.disk_size_mib must be between {MIN_DISK_MIB} and {MAX_DISK_MIB}, not {disk}"
            )));
        }
        blink_sdk::network::validate(&self.network.policy())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.images
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let l = &self.ssh.limits;
        let positive = [
            ("max_auth_attempts", l.max_auth_attempts as u64),
            ("handshake_timeout_secs", l.handshake_timeout_secs),
            ("login_grace_time_secs", l.login_grace_time_secs),
            ("penalty_max_sources", l.penalty_max_sources as u64),
            ("max_connections", l.max_connections as u64),
            (
                "max_connections_per_session",
                l.max_connections_per_session as u64,
            ),
            (
                "max_channels_per_connection",
                l.max_channels_per_connection as u64,
            ),
            (
                "max_forwarded_connections",
                l.max_forwarded_connections as u64,
            ),
            ("max_remote_forwards", l.max_remote_forwards as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "ssh.limits.{name} must be at least 1"
                )));
            }
        }
        // Times a deadline is computed from (an Instant cannot hold any
        // number of seconds): at most a year.
        let times = [
            ("handshake_timeout_secs", l.handshake_timeout_secs),
            ("login_grace_time_secs", l.login_grace_time_secs),
            ("penalty_authfail_secs", l.penalty_authfail_secs),
            ("penalty_noauth_secs", l.penalty_noauth_secs),
            ("penalty_grace_exceeded_secs", l.penalty_grace_exceeded_secs),
            ("penalty_min_secs", l.penalty_min_secs),
            ("penalty_max_secs", l.penalty_max_secs),
        ];
        for (name, value) in times {
            if value > MAX_SECS {
                return Err(ConfigError::Invalid(format!(
                    "ssh.limits.{name} must be at most {MAX_SECS} (a year)"
                )));
            }
        }
        if l.per_source_penalties && l.penalty_max_secs <= l.penalty_min_secs {
            return Err(ConfigError::Invalid(
                "ssh.limits.penalty_max_secs must be above penalty_min_secs, or no source \
                 would ever be refused (set per_source_penalties = false to turn them off)"
                    .into(),
            ));
        }
        // One semaphore permit per connection, and per forwarded one.
        for (name, value) in [
            ("max_connections", l.max_connections),
            ("max_forwarded_connections", l.max_forwarded_connections),
        ] {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(ConfigError::Invalid(format!(
                    "ssh.limits.{name} must be at most {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                )));
            }
        }
        for name in &self.ssh.env_allow {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(ConfigError::Invalid(format!(
                    "ssh.env_allow has an invalid name {name:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/blink.example.toml");
        let config = FileConfig::load(&path).unwrap();
        assert_eq!(config.ssh.listen.port(), 2222);
        assert!(config.ssh.env_allow.iter().any(|n| n == "EDITOR"));
        assert_eq!(config.ssh.shutdown_grace(), Duration::from_secs(10));
    }

    /// The `[images]` values the example shows commented out are the
    /// defaults (the credentials file and the mirror are examples).
    #[test]
    fn example_images_values_are_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/blink.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let section = text.split("\n[images]\n").nth(1).unwrap();
        let section = section.split("\n[").next().unwrap();
        let values: String = section
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(key, _)| {
                    key != "auth_file" && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(values.contains("pull_timeout_secs"), "{values}");
        let parsed: blink_sdk::image::PullConfig = toml::from_str(&values).unwrap();
        assert_eq!(parsed, blink_sdk::image::PullConfig::default());
    }

    #[test]
    fn rejects_unknown_and_zero() {
        assert!(toml::from_str::<FileConfig>("[ssh]\nlisten_addr = \"x\"").is_err());
        let c: FileConfig = toml::from_str("[ssh.limits]\nmax_connections = 0").unwrap();
        assert!(c.validate().is_err());
    }
}
