//! Wire types that Blink clients need: run results, session descriptions,
//! runtime descriptions and the error body. No runtime, no I/O: a control
//! plane can depend on this crate alone (published as `blinkvm-shared`).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// How strongly a sandbox is isolated from its host. Shown everywhere a
/// sandbox is described, so nobody mistakes namespaces for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationClass {
    /// Linux namespaces on the host kernel (the `local` runtime).
    Namespace,
    /// A micro-VM with its own kernel (the `boxlite` runtime).
    Vm,
}

impl std::fmt::Display for IsolationClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Namespace => "namespace",
            Self::Vm => "vm",
        })
    }
}

/// What a runtime is and how it enforces limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// `local` or `boxlite`.
    pub name: String,
    pub isolation: IsolationClass,
    /// Mechanism behind each resource limit, e.g. `{"memory": "cgroup-v1"}`.
    pub limits: std::collections::BTreeMap<String, String>,
    /// Free-form facts worth showing an operator (versions, uid mapping).
    pub details: std::collections::BTreeMap<String, String>,
}

/// Lifecycle of a session's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Running,
    Stopped,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
        })
    }
}

/// A named session as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub name: String,
    /// Stable sandbox id, the brief's `box_id`.
    pub box_id: String,
    pub image: String,
    pub warm: bool,
    pub state: SessionState,
    pub runtime: String,
    pub isolation: IsolationClass,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub last_used_at: u64,
    /// Executions currently running in the session.
    pub active_executions: u32,
    /// The session's disk: its quota and what it holds on the host's disk
    /// (absent where the runtime has no per-session disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskUsage>,
    /// The session's egress policy and what went through its proxy.
    #[serde(default)]
    pub network: NetworkInfo,
    /// What the session may use (docs/RESOURCES.md).
    #[serde(default)]
    pub resources: Resources,
    /// What it uses now, read from the kernel's counters.
    #[serde(default)]
    pub usage: ResourceUsage,
}

/// A session's size: what it may use. A limit that is `None` is not
/// enforced (only `cpus` is unlimited by default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU quota in cores (1.5 = one and a half cores' time).
    pub cpus: Option<f64>,
    pub memory_mib: Option<u64>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
    /// Disk size (quota) the session's disk is made or grown to.
    pub disk_mib: Option<u64>,
    /// Default time limit of a pipe-mode run (a run may ask for its own).
    pub run_timeout_secs: u64,
    /// A cold session with nothing running stops after this long.
    pub idle_timeout_secs: u64,
}

/// What a session uses, read from the kernel's counters while its sandbox
/// runs. Counters are those of the sandbox's current start (they begin at
/// zero each time it starts); a figure the mechanism cannot give is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Where the figures come from: `cgroup-v2`, `cgroup-v1`, `proc` (no
    /// cgroups: summed over the sandbox's processes, so no peak and no
    /// OOM count) or `none` (not running: only disk and egress).
    pub source: String,
    pub memory_bytes: Option<u64>,
    /// Highest memory use since the sandbox started.
    pub memory_peak_bytes: Option<u64>,
    /// CPU time used, user and system, in microseconds.
    pub cpu_usec: Option<u64>,
    /// Scheduler periods in which the CPU quota held the sandbox back,
    /// and for how long in all.
    pub cpu_throttled_periods: Option<u64>,
    pub cpu_throttled_usec: Option<u64>,
    /// Processes and threads now.
    pub pids: Option<u64>,
    /// Processes the kernel killed for the memory limit.
    pub oom_kills: Option<u64>,
    /// Host disk space the session's disk takes.
    pub disk_used_bytes: Option<u64>,
    /// Bytes through the session's egress proxy since the server started.
    pub egress_bytes_sent: u64,
    pub egress_bytes_received: u64,
}

/// `GET /api/sessions/{name}/stats`: one reading of a session's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub name: String,
    pub state: SessionState,
    /// Milliseconds since the Unix epoch, when the counters were read.
    pub taken_at_ms: u64,
    pub resources: Resources,
    pub usage: ResourceUsage,
}

/// How a change of a session's resources took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// On the running sandbox, now.
    Live,
    /// When the sandbox next starts (it is stopped, or the mechanism
    /// cannot change it while it runs).
    NextStart,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Live => "live",
            Self::NextStart => "next start",
        })
    }
}

/// The answer to a change of a session's resources: the new settings, and
/// for each field changed how it applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourcesChanged {
    pub resources: Resources,
    pub applied: std::collections::BTreeMap<String, Applied>,
}

/// Whether a session's programs reach anything beyond its own loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only: no proxy, no route out.
    #[default]
    None,
    /// Through the session's egress proxy, by the allow and deny lists.
    Proxy,
}

/// A session's egress policy (docs/NETWORK.md): rules are `HOST[:PORT]`
/// with HOST a name, `*.suffix`, `*`, an address or a CIDR.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub mode: NetworkMode,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Egress counters of a session since its server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressCounters {
    pub allowed_connections: u64,
    pub denied_connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A session's network, as session info reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub policy: NetworkPolicy,
    pub egress: EgressCounters,
    /// Which SSH forwards the session takes.
    #[serde(default)]
    pub forwarding: ForwardingPolicy,
}

/// Which SSH forwards a session takes (docs/NETWORK.md). The server's
/// `[ssh] allow_forwarding` and the login key's options may refuse more;
/// nothing here widens them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingPolicy {
    /// `ssh -L`, `-D`, `-W`: connections from the client into the session
    /// (its loopback, or other hosts by its egress policy).
    #[serde(default = "yes")]
    pub local: bool,
    /// `ssh -R`: listeners on the session's loopback.
    #[serde(default = "yes")]
    pub remote: bool,
}

fn yes() -> bool {
    true
}

impl Default for ForwardingPolicy {
    fn default() -> Self {
        Self {
            local: true,
            remote: true,
        }
    }
}

/// A session disk's size (its quota) and the host disk space it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub size_bytes: u64,
    /// Host bytes of the session's own writable disk (what it wrote since
    /// its last layer).
    pub used_bytes: u64,
    /// Read-only layers under the disk (its past, shared with its
    /// snapshots and clones; docs/DISKS.md).
    #[serde(default)]
    pub layers: u32,
    /// Host bytes those layers take, shared with whoever else uses them.
    #[serde(default)]
    pub layers_bytes: u64,
}

/// Result of `open`: the session and whether this call created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenedSession {
    pub session: SessionInfo,
    pub created: bool,
}

/// How captured bytes are carried in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `data` is the bytes, which were valid UTF-8.
    Utf8,
    /// `data` is standard base64 of bytes that were not valid UTF-8.
    Base64,
}

/// One captured output stream, capped at a configured size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedOutput {
    pub data: String,
    pub encoding: Encoding,
    /// True when the stream produced more than the cap; `data` holds the
    /// first `cap` bytes.
    pub truncated: bool,
    /// Bytes the stream produced in total, kept or not.
    pub total_bytes: u64,
}

impl CapturedOutput {
    /// Encode captured bytes: UTF-8 as text, anything else as base64.
    pub fn from_bytes(bytes: &[u8], truncated: bool, total_bytes: u64) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self {
                data: text.to_owned(),
                encoding: Encoding::Utf8,
                truncated,
                total_bytes,
            },
            Err(_) => Self {
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
                encoding: Encoding::Base64,
                truncated,
                total_bytes,
            },
        }
    }

    /// The captured bytes, decoded from their JSON form.
    pub fn to_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.encoding {
            Encoding::Utf8 => Ok(self.data.clone().into_bytes()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(&self.data),
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when the process exited; 128 + signal when a signal killed
    /// it (as shells report it).
    pub code: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

/// The outcome of a pipe-mode run: structured, stdout and stderr apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: CapturedOutput,
    pub stderr: CapturedOutput,
    pub duration_ms: u64,
    /// Session the run happened in; `None` for an ephemeral run.
    pub session: Option<String>,
    pub box_id: String,
    pub isolation: IsolationClass,
}

/// A local image as listed by the image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Reference name, e.g. `blink/default:latest`.
    pub reference: String,
    /// `sha256:` digest of the manifest.
    pub digest: String,
    /// Compressed size of the layers in bytes.
    pub size: u64,
    pub layers: usize,
}

/// Body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code such as `session_not_found`.
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_round_trips_text_and_binary() {
        let text = CapturedOutput::from_bytes(b"hello\n", false, 6);
        assert_eq!(text.encoding, Encoding::Utf8);
        assert_eq!(text.to_bytes().unwrap(), b"hello\n");
        let bin = CapturedOutput::from_bytes(&[0xff, 0x00, 0xfe], true, 10);
        assert_eq!(bin.encoding, Encoding::Base64);
        assert!(bin.truncated);
        assert_eq!(bin.to_bytes().unwrap(), vec![0xff, 0x00, 0xfe]);
    }

    #[test]
    fn isolation_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&IsolationClass::Namespace).unwrap(),
            "\"namespace\""
        );
    }
}
