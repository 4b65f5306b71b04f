//! The sandbox runtime layer: one interface, two runtimes.
//!
//! A runtime knows nothing of session names, keys or policies: it makes a
//! sandbox's disk from an image, starts and stops the sandbox with the disk
//! kept, runs executions inside it and gives confined access to its files.
//! The `local` runtime (Linux namespaces through bubblewrap) runs everywhere
//! a Linux kernel allows user namespaces; the `boxlite` micro-VM runtime needs
//! hardware virtualization (see docs/ARCHITECTURE.md).

pub mod boxlite;
pub mod exec;
pub mod local;
pub mod preflight;
pub mod selection;
pub mod support;
pub mod wire;

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;

use crate::error::{Error, Result};
pub use crate::types::{Applied, IsolationClass, ResourceUsage, RuntimeInfo};
pub use exec::{ExecSpec, Execution, PtySize};

/// Resource limits for one sandbox. `None` leaves a resource unlimited.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_mib: Option<u64>,
    /// CPU quota in cores (1.5 = one and a half cores).
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Disk size in MiB: the session's quota (runtimes with per-session
    /// disks; `None` is the runtime's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
}

/// How a change of limits took effect on a sandbox, per resource
/// ([`Runtime::update_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsApplied {
    pub memory: Applied,
    pub cpus: Applied,
    pub pids: Applied,
    pub disk: Applied,
}

impl LimitsApplied {
    /// Everything when the sandbox next starts.
    pub const NEXT_START: Self = Self {
        memory: Applied::NextStart,
        cpus: Applied::NextStart,
        pids: Applied::NextStart,
        disk: Applied::NextStart,
    };
}

/// What [`Runtime::export`] writes.
pub struct ExportRequest {
    pub id: String,
    pub header: crate::archive::Header,
    /// The image as an OCI archive, when it goes in.
    pub image_archive: Option<std::path::PathBuf>,
    pub dest: std::path::PathBuf,
    /// Bytes of file data written so far.
    pub progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
}

/// Checks an archive's header before an import writes anything.
pub type HeaderCheck = Box<dyn FnMut(&crate::archive::Header) -> Result<()> + Send>;

/// What [`Runtime::import`] reads.
pub struct ImportRequest {
    pub spec: SandboxSpec,
    pub archive: std::path::PathBuf,
    /// Checks the archive's header (names, sizes) before anything is made.
    pub check: HeaderCheck,
    /// Bytes of the archive read so far.
    pub progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
}

/// One snapshot of a sandbox's disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Host bytes the snapshot takes.
    pub size_bytes: u64,
    /// How long the sandbox's processes were frozen for it (0 when it was
    /// not running).
    pub frozen_ms: u64,
}

/// Everything a runtime needs to make a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Stable id; also the sandbox's directory name. `[a-z0-9-]` only.
    pub id: String,
    /// Image reference as the image store knows it.
    pub image: String,
    pub hostname: String,
    pub limits: Limits,
}

/// A sandbox runtime. Every method names the sandbox by id; a missing id is
/// an error naming it, never a panic.
#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// What this runtime is: name, isolation class, limit mechanisms.
    fn info(&self) -> RuntimeInfo;

    /// Make the sandbox's disk from its image. Leaves nothing behind on
    /// failure.
    async fn create(&self, spec: &SandboxSpec) -> Result<()>;

    /// Whether a disk exists for this id.
    fn exists(&self, id: &str) -> bool;

    /// Boot the sandbox. Starting a running sandbox is a no-op.
    async fn start(&self, spec: &SandboxSpec) -> Result<()>;

    /// Whether the sandbox is running right now, as far as this runtime
    /// knows without asking anyone (cheap).
    fn is_running(&self, id: &str) -> bool;

    /// Whether the sandbox is running, asked of what runs it where
    /// [`Runtime::is_running`] may be stale: a micro-VM whose init ended
    /// on its own is noticed by BoxLite, not by Blink's own mark. Checked
    /// before a pooled sandbox is handed out.
    async fn is_alive(&self, id: &str) -> bool {
        self.is_running(id)
    }

    /// The listening socket of this sandbox's V-Hub endpoint
    /// (docs/VHUB.md) while it runs, with the number of the boot that
    /// bound it: whatever connects on it came from this sandbox and nowhere
    /// else. Each call returns a new descriptor of the same socket. `None`:
    /// not running, or the runtime has no V-Hub endpoint.
    fn vhub_listener(&self, _id: &str) -> Result<Option<(u64, std::os::unix::net::UnixListener)>> {
        Ok(None)
    }

    /// Stop the sandbox, killing what runs in it; the disk is kept.
    async fn stop(&self, id: &str) -> Result<()>;

    /// Stop if needed and delete the disk.
    async fn remove(&self, id: &str) -> Result<()>;

    /// Delete every sandbox but these (after a restart: ephemeral
    /// sandboxes, and disks left by a crash between steps). The runtime owns
    /// its disk layout; the manager only says what to keep.
    async fn retain(&self, keep: &std::collections::HashSet<String>) -> Result<()>;

    /// Start a process in a running sandbox.
    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Execution>;

    /// Copy a host file into the running sandbox at `dest` (a sandbox
    /// path), with `mode`, written with the sandbox's own privileges.
    /// Parent directories are created.
    async fn copy_in(&self, id: &str, host_src: &Path, dest: &str, mode: u32) -> Result<()>;

    /// Delete a file in the sandbox; a missing file is not an error.
    async fn remove_file(&self, id: &str, path: &str) -> Result<()>;

    /// The sandbox disk's size and the host space it takes, where the
    /// runtime gives each sandbox a disk of its own.
    fn disk_usage(&self, _id: &str) -> Option<crate::types::DiskUsage> {
        None
    }

    /// Change a sandbox's limits. A running sandbox gets at once what its
    /// mechanism can change while it runs; the rest, and everything on a
    /// stopped sandbox, takes effect when it next starts (from its spec,
    /// which the caller keeps). Refused as a whole (nothing changed) when a
    /// live change fails, such as a memory limit below what it uses.
    async fn update_limits(&self, _id: &str, _limits: &Limits) -> Result<LimitsApplied> {
        Ok(LimitsApplied::NEXT_START)
    }

    /// What the sandbox uses now (memory, CPU time, processes, OOM kills,
    /// disk), from the kernel's counters; `source` says from which, `none`
    /// when it is not running.
    fn usage(&self, id: &str) -> ResourceUsage {
        ResourceUsage {
            source: "none".into(),
            disk_used_bytes: self.disk_usage(id).map(|d| d.used_bytes),
            ..ResourceUsage::default()
        }
    }

    /// A TCP connection to `port` on the sandbox's own loopback (inside its
    /// network namespace, never the host's). The sandbox runs.
    async fn connect_loopback(&self, id: &str, _port: u16) -> Result<tokio::net::TcpStream> {
        Err(Error::Unsupported(format!(
            "connections into sandbox {id} on this runtime"
        )))
    }

    /// A listener on the sandbox's loopback at `port` (0: any free one),
    /// accepted from the host side: what the sandbox's programs connect
    /// to reaches Blink. The sandbox runs.
    async fn listen_loopback(&self, id: &str, _port: u16) -> Result<tokio::net::TcpListener> {
        Err(Error::Unsupported(format!(
            "listeners in sandbox {id} on this runtime"
        )))
    }

    /// Whether disks here have snapshots and clones.
    fn snapshots_supported(&self) -> bool {
        false
    }

    /// Snapshot the sandbox's disk as `name`: consistent, freezing a
    /// running sandbox's processes for the copy. Names are checked by the
    /// caller; an existing one is `SnapshotExists`.
    async fn snapshot(&self, _id: &str, _name: &str) -> Result<SnapshotInfo> {
        Err(Error::Unsupported(
            "snapshots on this runtime (they need a disk image: a server running as root)".into(),
        ))
    }

    /// The sandbox's snapshots, oldest first.
    fn snapshots(&self, _id: &str) -> Result<Vec<SnapshotInfo>> {
        Ok(Vec::new())
    }

    /// Put the disk back as snapshot `name` was. The sandbox must be
    /// stopped.
    async fn restore(&self, _id: &str, _name: &str) -> Result<()> {
        Err(Error::Unsupported(
            "restoring snapshots on this runtime".into(),
        ))
    }

    async fn remove_snapshot(&self, _id: &str, _name: &str) -> Result<()> {
        Err(Error::Unsupported("snapshots on this runtime".into()))
    }

    /// Make `spec`'s disk a copy of sandbox `source`'s (as it is now, or
    /// as its snapshot `snapshot` was). Leaves nothing behind on failure.
    async fn create_from(
        &self,
        _spec: &SandboxSpec,
        _source: &str,
        _snapshot: Option<&str>,
    ) -> Result<()> {
        Err(Error::Unsupported("cloning disks on this runtime".into()))
    }

    /// Write a session archive (crate::archive) of the sandbox's disk to
    /// `dest`: `header` first, the image archive if given, its changes
    /// (consistent: a running sandbox is frozen while its disk is copied),
    /// and the snapshots named in the header.
    async fn export(&self, _request: ExportRequest) -> Result<u64> {
        Err(Error::Unsupported(
            "export on this runtime (it needs disk images: a server running as root)".into(),
        ))
    }

    /// Make `spec`'s disk (and snapshots) from a session archive; the
    /// header is checked by `check` before anything is written. Leaves
    /// nothing behind on failure.
    async fn import(&self, _request: ImportRequest) -> Result<crate::archive::Header> {
        Err(Error::Unsupported(
            "import on this runtime (it needs disk images: a server running as root)".into(),
        ))
    }
}

/// Which runtime to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Local,
    Boxlite,
}

impl std::str::FromStr for RuntimeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Self::Local),
            "boxlite" => Ok(Self::Boxlite),
            other => Err(Error::InvalidArgument(format!(
                "unknown runtime {other:?}: expected local or boxlite"
            ))),
        }
    }
}

impl RuntimeKind {
    /// `local` or `boxlite`, as [`RuntimeInfo::name`] says it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Boxlite => "boxlite",
        }
    }
}

/// One line of `doctor`: a check and its outcome.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What each runtime can do on this machine, and why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Diagnosis {
    pub runtime: String,
    pub usable: bool,
    pub checks: Vec<Check>,
}

/// A runtime's diagnosis and whether the configured choice selects it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DoctorReport {
    #[serde(flatten)]
    pub diagnosis: Diagnosis,
    /// Whether the requested choice selects this runtime here.
    pub selected: bool,
    /// Why this runtime is or is not the one selected.
    pub reason: String,
}

/// Check both runtimes on this machine without starting anything lasting,
/// and say which one `requested` selects (local first, then boxlite).
pub fn diagnose(requested: selection::RuntimeChoice) -> Vec<DoctorReport> {
    let boxlite = preflight::boxlite();
    let chosen = selection::select(requested, &boxlite);
    [local::diagnose(), boxlite_diagnosis(boxlite)]
        .into_iter()
        .map(|diagnosis| {
            let (selected, reason) = match &chosen {
                Ok((_, s)) if s.runtime == diagnosis.runtime => (true, s.reason.clone()),
                Ok((_, s)) => (false, format!("not selected: {}", s.reason)),
                Err(e) => (false, e.to_string()),
            };
            DoctorReport {
                diagnosis,
                selected,
                reason,
            }
        })
        .collect()
}

/// The boxlite preflight as a doctor's diagnosis.
fn boxlite_diagnosis(preflight: preflight::Preflight) -> Diagnosis {
    Diagnosis {
        runtime: "boxlite".into(),
        usable: preflight.usable(),
        checks: preflight.checks,
    }
}

/// A host file a runtime copies into a sandbox (`Runtime::copy_in`); a
/// missing one is `ScriptNotFound`.
pub(crate) async fn open_copy_source(host_src: &Path) -> Result<tokio::fs::File> {
    tokio::fs::File::open(host_src)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ScriptNotFound(host_src.to_path_buf()),
            _ => Error::io(format!("reading {}", host_src.display()), e),
        })
}

pub(crate) fn details(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}
