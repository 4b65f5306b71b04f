//! The manager's settings and where its data lives by default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::image::DEFAULT_IMAGE;
use crate::runtime::Limits;
use crate::runtime::selection::RuntimeChoice;

/// Where agent memory lives inside every session.
pub const MEMORY_DIR: &str = "/var/blink/memory";

/// Where host scripts are copied before they run.
pub(super) const SCRIPT_DIR: &str = "/var/blink/run";

/// Everything a manager needs; `ManagerConfig::new(data_dir)` gives sane
/// defaults.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    /// `auto` (boxlite when its preflight passes, else local), `boxlite`
    /// or `local`; decided once in `Manager::open`.
    pub runtime: RuntimeChoice,
    /// First host id of the per-sandbox id ranges when running as root
    /// (each sandbox owns 65536 ids from there); `None` maps sandbox root
    /// to the caller.
    pub id_base: Option<u32>,
    /// The seccomp filter every sandbox process runs under.
    pub seccomp: crate::runtime::local::SeccompProfile,
    /// Relay each box's V-Hub endpoint over an execution (boxlite only;
    /// off by default: docs/VHUB.md, Endpoints).
    pub boxlite_vhub_relay: bool,
    /// How long a box may take to boot before it is taken as hung, stopped
    /// and booted once more (boxlite only; `runtime/boxlite/boot.rs`).
    pub boxlite_boot_timeout: Duration,
    pub default_image: String,
    /// A non-warm session with nothing running stops after this long.
    pub idle_timeout: Duration,
    /// Default limit for a pipe-mode run.
    pub run_timeout: Duration,
    /// Bytes kept per captured stream.
    pub output_limit: u64,
    /// Bytes of spawn output kept while detached.
    pub replay_limit: usize,
    /// How long a finished spawn (and its output) stays attachable.
    pub spawn_retention: Duration,
    /// Spawns kept per session, running or finished; a new spawn beyond it
    /// first forgets the oldest finished one, and is refused if none is.
    pub max_spawns_per_session: usize,
    /// Resource limits of a new session unless it asks for its own, and of
    /// every ephemeral sandbox.
    pub limits: Limits,
    /// The most one session may ask for (docs/RESOURCES.md).
    pub maxima: super::ResourceMaxima,
    /// Largest script a run may copy into a sandbox.
    pub max_script_bytes: u64,
    /// Ephemeral sandboxes of the default image kept started ahead of
    /// time (0: none; each run then makes its own).
    pub ephemeral_pool: usize,
    /// Egress policy of a new session unless it asks for its own.
    pub network: crate::network::NetworkPolicy,
    /// SSH forwards a new session takes (`[network.forwarding]`).
    pub forwarding: crate::types::ForwardingPolicy,
    /// The operator's name table for the egress proxy (`[network] resolve`).
    pub resolve: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// Registry pulls: on demand or not, mirrors, credentials, limits
    /// (`[images]`, docs/IMAGES.md).
    pub pull: crate::image::PullConfig,
}

impl ManagerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let maxima = super::ResourceMaxima::for_this_host();
        Self {
            data_dir: data_dir.into(),
            runtime: RuntimeChoice::Auto,
            id_base: Some(crate::runtime::local::DEFAULT_ID_BASE),
            seccomp: crate::runtime::local::SeccompProfile::Default,
            boxlite_vhub_relay: false,
            boxlite_boot_timeout: crate::runtime::boxlite::boot::DEFAULT_BOOT_TIMEOUT,
            default_image: DEFAULT_IMAGE.into(),
            idle_timeout: Duration::from_secs(300),
            run_timeout: Duration::from_secs(600),
            output_limit: 16 << 20,
            replay_limit: 1 << 20,
            spawn_retention: Duration::from_secs(600),
            max_spawns_per_session: 64,
            limits: Limits {
                memory_mib: Some(2048.min(maxima.memory_mib)),
                cpus: None,
                pids: Some(1024),
                disk_mib: None,
            },
            maxima,
            max_script_bytes: 64 << 20,
            network: Default::default(),
            forwarding: Default::default(),
            resolve: Default::default(),
            ephemeral_pool: 0,
            pull: Default::default(),
        }
    }
}

/// The data dir used when none is given: `$BLINK_DATA_DIR`, else
/// `/var/lib/blink` for root, else `$XDG_DATA_HOME/blink`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BLINK_DATA_DIR") {
        return dir.into();
    }
    if rustix::process::geteuid().is_root() {
        return "/var/lib/blink".into();
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("blink")
}

/// Where `blink-server` keeps its own files in a data dir (its SSH host key,
/// `ssh_host_ed25519_key` and `.pub`): the gateway and the CLI agree on it.
pub fn gateway_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("gateway")
}

/// The unix socket on which `blink-server` serves its REST API to this
/// host (0600, its owner's): `blink-cli` goes through it while the server
/// owns the data dir. The gateway and the CLI agree on it.
pub fn api_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("blink.sock")
}
