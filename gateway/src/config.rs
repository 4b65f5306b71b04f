//! Gateway configuration: a TOML file (see `config/blink.example.toml`),
//! overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::ssh::admission::{MaxStartups, NetBlockSize, Network};

/// The longest time a setting may hold, in seconds.
const MAX_SECS: u64 = 365 * 24 * 3600;

/// A cold session's idle timeout unless the config sets one.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;

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
    /// `"auto"` (default), `"boxlite"` or `"local"`; the same as
    /// `[sandbox] runtime` (setting both differently is an error).
    pub runtime: Option<blink_sdk::runtime::selection::RuntimeChoice>,
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
    #[serde(default)]
    pub recording: crate::recording::RecordingConfig,
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// `[cluster]`: this server is one node of many (docs/SCALE.md).
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// `[vhub]`: the V-Hub relay between sandboxes and host clients
    /// (docs/VHUB.md).
    #[serde(default)]
    pub vhub: blink_sdk::vhub::HubConfig,
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
    /// SSH forwards a new session takes (`local`, `remote`; both on by
    /// default). `[ssh] allow_forwarding` turns them off server-wide.
    pub forwarding: blink_sdk::types::ForwardingPolicy,
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
    /// The sandbox runtime: `"auto"` (boxlite when its preflight passes,
    /// else local), `"boxlite"` or `"local"` (docs/BOXLITE.md).
    pub runtime: Option<blink_sdk::runtime::selection::RuntimeChoice>,
    /// `"default"` (Docker's default semantics) or `"unconfined"`.
    pub seccomp: blink_sdk::runtime::local::SeccompProfile,
    /// Relay each box's V-Hub endpoint over an execution (boxlite only;
    /// off by default, docs/VHUB.md says why).
    pub boxlite_vhub_relay: bool,
    /// How long a micro-VM may take to boot before it is taken as hung,
    /// stopped and booted once more (boxlite only; docs/BOXLITE.md).
    pub boxlite_boot_timeout_ms: u64,
    /// First host id of the per-sandbox id ranges (65536 ids each) when
    /// running as root. Give each Blink on one host its own base.
    pub id_base: u32,
    /// Disk size of a new session in MiB (its disk quota) unless it asks
    /// for its own (`disk_mib` in `POST /api/sessions`).
    pub disk_size_mib: u64,
    /// Ephemeral sandboxes of the default image kept started ahead of
    /// time, so a run does not wait for one to boot (0: none).
    pub ephemeral_pool: usize,
    /// A new session's CPU quota in cores unless it asks for its own
    /// (absent: no quota). docs/RESOURCES.md.
    pub cpus: Option<f64>,
    /// A new session's memory limit in MiB unless it asks for its own.
    pub memory_mib: u64,
    /// A new session's limit on processes (and threads) at once.
    pub pids: u64,
    /// Default time limit of a pipe-mode run, unless the session or the
    /// run sets its own (at most `[rest] max_run_timeout_secs`).
    pub run_timeout_secs: u64,
    /// The most one session may ask for: CPU cores (default: this host's),
    /// memory (default: this host's), processes, disk, idle timeout.
    pub max_cpus: Option<f64>,
    pub max_memory_mib: Option<u64>,
    pub max_pids: u64,
    pub max_disk_mib: u64,
    pub max_idle_timeout_secs: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let host = blink_sdk::manager::ResourceMaxima::for_this_host();
        Self {
            runtime: None,
            seccomp: blink_sdk::runtime::local::SeccompProfile::Default,
            boxlite_vhub_relay: false,
            boxlite_boot_timeout_ms: blink_sdk::runtime::boxlite::boot::DEFAULT_BOOT_TIMEOUT
                .as_millis() as u64,
            id_base: blink_sdk::runtime::local::DEFAULT_ID_BASE,
            disk_size_mib: blink_sdk::runtime::local::DEFAULT_DISK_MIB,
            ephemeral_pool: 2,
            cpus: None,
            memory_mib: 2048.min(host.memory_mib),
            pids: 1024,
            run_timeout_secs: 600,
            max_cpus: None,
            max_memory_mib: None,
            max_pids: host.pids,
            max_disk_mib: host.disk_mib,
            max_idle_timeout_secs: host.idle_timeout_secs,
        }
    }
}

impl FileConfig {
    /// The runtime choice: top-level `runtime` or `[sandbox] runtime`
    /// (default `auto`).
    pub fn runtime(&self) -> Result<blink_sdk::runtime::selection::RuntimeChoice, ConfigError> {
        match (self.runtime, self.sandbox.runtime) {
            (Some(a), Some(b)) if a != b => Err(ConfigError::Invalid(format!(
                "runtime = {a:?} and sandbox.runtime = {b:?} disagree: set one"
            ))),
            (a, b) => Ok(a.or(b).unwrap_or_default()),
        }
    }
}

impl SandboxConfig {
    /// The maxima as the manager takes them; a run's timeout is bounded by
    /// `[rest] max_run_timeout_secs`, one bound for both.
    pub fn maxima(&self, max_run_timeout_secs: u64) -> blink_sdk::manager::ResourceMaxima {
        let host = blink_sdk::manager::ResourceMaxima::for_this_host();
        blink_sdk::manager::ResourceMaxima {
            cpus: self.max_cpus.unwrap_or(host.cpus),
            memory_mib: self.max_memory_mib.unwrap_or(host.memory_mib),
            pids: self.max_pids,
            disk_mib: self.max_disk_mib,
            run_timeout_secs: max_run_timeout_secs,
            idle_timeout_secs: self.max_idle_timeout_secs,
        }
    }

    /// What a new session gets unless it asks for its own, as a request
    /// the maxima check.
    pub fn defaults(&self, idle_timeout_secs: u64) -> blink_sdk::manager::ResourceRequest {
        blink_sdk::manager::ResourceRequest {
            cpus: self.cpus,
            memory_mib: Some(self.memory_mib),
            pids: Some(self.pids),
            disk_mib: Some(self.disk_size_mib),
            run_timeout_secs: Some(self.run_timeout_secs),
            idle_timeout_secs: Some(idle_timeout_secs),
        }
    }

    /// The maxima are themselves sane, and the defaults within them.
    fn validate(
        &self,
        max_run_timeout_secs: u64,
        idle_timeout_secs: u64,
    ) -> Result<(), ConfigError> {
        use blink_sdk::manager::{MIN_CPUS, MIN_MEMORY_MIB, MIN_PIDS};
        use blink_sdk::runtime::local::{MAX_DISK_MIB, MIN_DISK_MIB};
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(c) = self.max_cpus
            && !(c.is_finite() && c >= MIN_CPUS)
        {
            return invalid(format!(
                "sandbox.max_cpus must be at least {MIN_CPUS}, not {c}"
            ));
        }
        let floors = [
            (
                "max_memory_mib",
                self.max_memory_mib.unwrap_or(u64::MAX),
                MIN_MEMORY_MIB,
            ),
            ("max_pids", self.max_pids, MIN_PIDS),
            ("max_disk_mib", self.max_disk_mib, MIN_DISK_MIB),
            ("max_idle_timeout_secs", self.max_idle_timeout_secs, 1),
        ];
        for (name, value, floor) in floors {
            if value < floor {
                return invalid(format!(
                    "sandbox.{name} must be at least {floor}, not {value}"
                ));
            }
        }
        if self.max_disk_mib > MAX_DISK_MIB {
            return invalid(format!(
                "sandbox.max_disk_mib must be at most {MAX_DISK_MIB}"
            ));
        }
        if self.max_idle_timeout_secs > MAX_SECS {
            return invalid(format!(
                "sandbox.max_idle_timeout_secs must be at most {MAX_SECS} (a year)"
            ));
        }
        self.maxima(max_run_timeout_secs)
            .check(&self.defaults(idle_timeout_secs))
            .map_err(|e| {
                ConfigError::Invalid(format!(
                    "a new session's defaults ([sandbox] cpus, memory_mib, pids, disk_size_mib, \
                     run_timeout_secs; session_idle_timeout_secs) must lie within the maxima: {e}"
                ))
            })
    }
}

/// The `[ssh]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Public keys of a cluster's routers (`[cluster] router_keys`, set by
    /// the binary; docs/SCALE.md): a login with one of them is a relayed
    /// one (`ssh/auth/relayed.rs`). Not an `[ssh]` key of its own.
    #[serde(skip)]
    pub router_keys: Option<PathBuf>,
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
    /// OpenSSH public keys of CAs (one a line) whose user certificates log
    /// in to the sessions their principals name (sshd's
    /// `TrustedUserCAKeys`); read again when the file changes.
    pub trusted_user_ca_keys: Option<PathBuf>,
    /// A certificate principal that reaches every session, as an admin
    /// key does (`admin_create_sessions` included). It may not be a valid
    /// session name (e.g. `"*"`), so that a certificate for one session
    /// never reaches them all.
    pub wildcard_principal: Option<String>,
    /// Seconds a certificate is still taken before its `valid after` and
    /// after its `valid before` (clocks of the CA and the gateway differ).
    pub certificate_clock_skew_secs: u64,
    /// Revoked keys and certificates: an OpenSSH KRL (`ssh-keygen -k`) or
    /// a text list (keys, `serial:`, `id:`, `sha256:` lines); read again
    /// when the file changes. Unreadable or invalid: every login refused.
    pub revoked_keys: Option<PathBuf>,
    /// An HTTP endpoint asked on every login (docs/XENSEMBLE.md).
    pub auth_hook: Option<AuthHookConfig>,
    pub limits: Limits,
}

/// The `[ssh.auth_hook]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthHookConfig {
    /// `http://host[:port]/path`, asked with a POST per login.
    pub url: String,
    /// `"confirm"`: the hook must also allow what keys and certificates
    /// let in; `"authorize"`: it may also let in keys nothing else does.
    #[serde(default)]
    pub mode: HookMode,
    /// No answer in this long refuses the login.
    #[serde(default = "AuthHookConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Answers (allow and deny) are reused this long (0: never).
    #[serde(default = "AuthHookConfig::default_cache_secs")]
    pub cache_secs: u64,
    /// At most this many answers kept.
    #[serde(default = "AuthHookConfig::default_cache_max_entries")]
    pub cache_max_entries: usize,
    /// A file holding the token sent as `Authorization: Bearer`.
    pub token_file: Option<PathBuf>,
}

impl AuthHookConfig {
    fn default_timeout_ms() -> u64 {
        2000
    }
    fn default_cache_secs() -> u64 {
        5
    }
    fn default_cache_max_entries() -> usize {
        4096
    }
}

/// What the auth hook decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// Only refuses: a login needs a key or certificate and the hook.
    #[default]
    Confirm,
    /// Also grants: a key no file or CA lets in may log in to an existing
    /// session when the hook allows it (ContainerSSH's model).
    Authorize,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            router_keys: None,
            host_key: None,
            admin_authorized_keys: None,
            admin_create_sessions: false,
            env_allow: Vec::new(),
            shutdown_grace_secs: 10,
            post_quantum_only: false,
            allow_forwarding: true,
            trusted_user_ca_keys: None,
            wildcard_principal: None,
            certificate_clock_skew_secs: 60,
            revoked_keys: None,
            auth_hook: None,
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
        if !(1..=3_600_000).contains(&self.sandbox.boxlite_boot_timeout_ms) {
            return Err(ConfigError::Invalid(format!(
                "sandbox.boxlite_boot_timeout_ms must be between 1 and 3600000 (an hour), not {}",
                self.sandbox.boxlite_boot_timeout_ms
            )));
        }
        let disk = self.sandbox.disk_size_mib;
        if !(MIN_DISK_MIB..=MAX_DISK_MIB).contains(&disk) {
            return Err(ConfigError::Invalid(format!(
                "sandbox.disk_size_mib must be between {MIN_DISK_MIB} and {MAX_DISK_MIB}, not {disk}"
            )));
        }
        self.runtime()?;
        blink_sdk::network::validate(&self.network.policy())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.images
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.recording.validate().map_err(ConfigError::Invalid)?;
        self.audit.validate().map_err(ConfigError::Invalid)?;
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(ConfigError::Invalid)?;
        }
        self.vhub.validate().map_err(ConfigError::Invalid)?;
        self.sandbox.validate(
            self.rest.max_run_timeout_secs,
            self.session_idle_timeout_secs
                .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS),
        )?;
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
        self.validate_auth()?;
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

impl FileConfig {
    /// Certificates and the auth hook: the settings themselves (the files
    /// they name are read when the SSH server starts).
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let ssh = &self.ssh;
        if ssh.certificate_clock_skew_secs > 3600 {
            return Err(ConfigError::Invalid(
                "ssh.certificate_clock_skew_secs must be at most 3600 (an hour)".into(),
            ));
        }
        if let Some(w) = &ssh.wildcard_principal {
            if w.is_empty() || w.contains([',', '\0']) || w.chars().any(char::is_whitespace) {
                return Err(ConfigError::Invalid(format!(
                    "ssh.wildcard_principal {w:?} must be one principal: no spaces, commas or NUL"
                )));
            }
            if blink_sdk::manager::names::validate(w).is_ok() {
                return Err(ConfigError::Invalid(format!(
                    "ssh.wildcard_principal {w:?} is also a valid session name, so a \
                     certificate for that one session would reach every session; pick \
                     one that is not (e.g. \"*\")"
                )));
            }
        }
        if let Some(hook) = &ssh.auth_hook {
            crate::ssh::parse_hook_url(&hook.url).map_err(ConfigError::Invalid)?;
            if !(1..=60_000).contains(&hook.timeout_ms) {
                return Err(ConfigError::Invalid(
                    "ssh.auth_hook.timeout_ms must be between 1 and 60000".into(),
                ));
            }
            if hook.cache_secs > 3600 {
                return Err(ConfigError::Invalid(
                    "ssh.auth_hook.cache_secs must be at most 3600".into(),
                ));
            }
            if !(1..=1 << 20).contains(&hook.cache_max_entries) {
                return Err(ConfigError::Invalid(
                    "ssh.auth_hook.cache_max_entries must be between 1 and 1048576".into(),
                ));
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
    fn runtime_choice_top_level_or_in_sandbox() {
        use blink_sdk::runtime::selection::RuntimeChoice;
        let parse = |t: &str| toml::from_str::<FileConfig>(t).map(|c| c.runtime());
        assert_eq!(parse("").unwrap().unwrap(), RuntimeChoice::Auto);
        assert_eq!(
            parse("runtime = \"local\"").unwrap().unwrap(),
            RuntimeChoice::Local
        );
        assert_eq!(
            parse("[sandbox]\nruntime = \"boxlite\"").unwrap().unwrap(),
            RuntimeChoice::Boxlite
        );
        assert_eq!(
            parse("runtime = \"auto\"\n[sandbox]\nruntime = \"auto\"")
                .unwrap()
                .unwrap(),
            RuntimeChoice::Auto
        );
        let both = parse("runtime = \"local\"\n[sandbox]\nruntime = \"boxlite\"")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(both.contains("disagree"), "{both}");
        let bad = parse("[sandbox]\nruntime = \"qemu\"")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("\"qemu\"") && bad.contains("auto, boxlite or local"),
            "{bad}"
        );
    }

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

    /// The boot timeout the example shows is the default; 0 and more than
    /// an hour are refused, naming the key.
    #[test]
    fn boxlite_boot_timeout_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/blink.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let shown = text
            .lines()
            .find_map(|l| l.strip_prefix("# boxlite_boot_timeout_ms = "))
            .unwrap();
        assert_eq!(
            shown.parse::<u64>().unwrap(),
            SandboxConfig::default().boxlite_boot_timeout_ms
        );
        for bad in [0, 3_600_001] {
            let err = toml::from_str::<FileConfig>(&format!(
                "[sandbox]\nboxlite_boot_timeout_ms = {bad}\n"
            ))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
            assert!(err.contains("sandbox.boxlite_boot_timeout_ms"), "{err}");
        }
        let ok =
            toml::from_str::<FileConfig>("[sandbox]\nboxlite_boot_timeout_ms = 250\n").unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.sandbox.boxlite_boot_timeout_ms, 250);
    }

    /// The `[vhub.limits]` the example shows are the defaults; a limit of
    /// zero is refused, naming it.
    #[test]
    fn vhub_settings() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/blink.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let section = text.split("\n[vhub.limits]\n").nth(1).unwrap();
        let section = section.split("\n[").next().unwrap();
        let values: String = section
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: blink_sdk::vhub::Limits = toml::from_str(&values).unwrap();
        assert_eq!(parsed, blink_sdk::vhub::Limits::default());
        let bad = toml::from_str::<FileConfig>("[vhub.limits]\nsubscriber_queue = 0\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("vhub.limits.subscriber_queue"), "{bad}");
        let bad = toml::from_str::<FileConfig>("[vhub]\ncheckpoint_sessions = [\"../x\"]\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("vhub.checkpoint_sessions"), "{bad}");
    }

    #[test]
    fn certificate_and_hook_settings() {
        let load = |text: &str| {
            toml::from_str::<FileConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string()))
        };
        let c = load(
            "[ssh]\ntrusted_user_ca_keys = \"/ca.pub\"\nwildcard_principal = \"*\"\n\
             [ssh.auth_hook]\nurl = \"http://127.0.0.1:9000/auth\"\nmode = \"authorize\"\n",
        )
        .unwrap();
        let hook = c.ssh.auth_hook.unwrap();
        assert_eq!(hook.mode, HookMode::Authorize);
        assert_eq!((hook.timeout_ms, hook.cache_secs), (2000, 5));
        assert_eq!(c.ssh.certificate_clock_skew_secs, 60);
        for (text, named) in [
            (
                "[ssh]\nwildcard_principal = \"admin\"",
                "wildcard_principal",
            ),
            ("[ssh]\nwildcard_principal = \"a b\"", "wildcard_principal"),
            ("[ssh]\ncertificate_clock_skew_secs = 7200", "skew"),
            ("[ssh.auth_hook]\nurl = \"https://h/\"", "https"),
            (
                "[ssh.auth_hook]\nurl = \"http://h/\"\ntimeout_ms = 0",
                "timeout_ms",
            ),
            (
                "[ssh.auth_hook]\nurl = \"http://h/\"\nmode = \"maybe\"",
                "maybe",
            ),
            (
                "[ssh.auth_hook]\nurl = \"http://h/\"\ncache_max_entries = 0",
                "cache_max",
            ),
            (
                "[ssh.auth_hook]\nurl = \"http://h/\"\ntoken = \"x\"",
                "token",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn sandbox_defaults_must_lie_within_the_maxima() {
        let c: FileConfig =
            toml::from_str("[sandbox]\nmemory_mib = 4096\nmax_memory_mib = 1024").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("memory_mib"), "{e}");
        let c: FileConfig = toml::from_str("[sandbox]\nrun_timeout_secs = 7200").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("run_timeout_secs"), "{e}");
        let c: FileConfig = toml::from_str("[sandbox]\nmax_cpus = 0.0").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("max_cpus"));
        let c: FileConfig =
            toml::from_str("[sandbox]\ncpus = 0.5\nmemory_mib = 256\npids = 64\nmax_pids = 128")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.sandbox.maxima(3600).pids, 128);
    }

    #[test]
    fn rejects_unknown_and_zero() {
        assert!(toml::from_str::<FileConfig>("[ssh]\nlisten_addr = \"x\"").is_err());
        let c: FileConfig = toml::from_str("[ssh.limits]\nmax_connections = 0").unwrap();
        assert!(c.validate().is_err());
    }
}
