//! The `local` runtime: each sandbox is a set of Linux namespaces made by
//! bubblewrap (user, pid, mount, ipc, uts, network, cgroup) around a
//! writable root directory unpacked from an OCI image.
//!
//! - When Blink runs as root, each sandbox owns a range of 65536 unprivileged
//!   host ids (ids.rs): nothing in a sandbox is host root, even after an
//!   escape, and no two sandboxes share a host uid.
//! - Every process of a sandbox runs under its seccomp filter (seccomp.rs),
//!   with Docker's default capability set, and cannot make new user
//!   namespaces.
//! - Nothing runs with host privileges on the sandbox's behalf: its files
//!   are written by processes inside it (`blink-guest put`), and its SFTP
//!   server runs inside it too.
//! - The network namespace has loopback only.
//! - A sandbox "runs" while its init (`blink-guest init`, pid 1) lives;
//!   executions join it with nsenter, so processes, loopback services and
//!   /tmp persist between executions like on a VM.
//! - Limits go to cgroups where writable, rlimits otherwise (see limits.rs).

mod archives;
mod bwrap;
mod disk;
mod disk_image;
mod exec;
mod flatten;
mod handover;
mod idmap;
mod ids;
mod layers;
mod limits;
mod loopdev;
mod mounts;
mod namespaces;
mod pty;
mod seccomp;
mod snapshots;
mod spawner;
mod trees;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

pub use self::disk_image::{MAX_MIB as MAX_DISK_MIB, MIN_MIB as MIN_DISK_MIB};
pub use self::exec::GUEST_PATH;
pub use self::ids::DEFAULT_BASE as DEFAULT_ID_BASE;
pub use self::ids::RANGE as ID_RANGE;
use self::ids::{IdRange, IdRanges};
pub use self::limits::LimitBackend;
use self::limits::SandboxCgroup;
use self::namespaces::Namespaces;
pub use self::seccomp::SeccompProfile;
use self::spawner::Spawner;
use super::{
    Applied, Check, Diagnosis, ExecSpec, Execution, ExportRequest, ImportRequest, IsolationClass,
    Limits, LimitsApplied, ResourceUsage, Runtime, RuntimeInfo, SandboxSpec, SnapshotInfo,
};
use crate::error::{Error, Result};
use crate::fs::ConfinedRoot;
use crate::image::ImageStore;

/// The guest helper, built by build.rs as a static binary.
pub const GUEST_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/blink-guest"));

/// How long bubblewrap may take to set a sandbox up.
/// Numbers the V-Hub endpoints of this process's boots.
static VHUB_BOOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A disk's size when neither the session nor the config names one.
pub const DEFAULT_DISK_MIB: u64 = 10 * 1024;

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Directory holding one directory per sandbox.
    pub root: PathBuf,
    /// First host id of the per-sandbox id ranges when Blink runs as root;
    /// `None`, or not root, maps sandbox root to the caller's uid.
    pub id_base: Option<u32>,
    pub seccomp: SeccompProfile,
}

/// A running sandbox: its bubblewrap process and init.
#[derive(Debug)]
struct Running {
    init_pid: u32,
    bwrap_pid: u32,
    /// The V-Hub endpoint bound in this boot and the boot's number, if it
    /// could be bound.
    vhub: Option<(u64, std::os::unix::net::UnixListener)>,
    namespaces: Arc<Namespaces>,
    cgroup: Option<Arc<SandboxCgroup>>,
    limits: super::Limits,
}

#[derive(Debug)]
pub struct LocalRuntime {
    root: PathBuf,
    images: Arc<ImageStore>,
    /// Per-sandbox host id ranges (root only).
    ids: Option<IdRanges>,
    /// The seccomp filter: bytes for bubblewrap, an in-memory file for
    /// executions.
    seccomp: Option<(Vec<u8>, Arc<OwnedFd>)>,
    bwrap: PathBuf,
    nsenter: PathBuf,
    backend: LimitBackend,
    spawner: Spawner,
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Shared image trees (layered disks only).
    trees: Arc<trees::Trees>,
    templates: Arc<disk_image::Templates>,
    /// Read-only layers shared by disks, snapshots and clones.
    layers: Arc<layers::Layers>,
}

impl LocalRuntime {
    /// Check the tools, build the seccomp filter and detect limits. Must
    /// be called inside a tokio runtime.
    pub fn new(options: LocalOptions, images: Arc<ImageStore>) -> Result<Self> {
        let bwrap = which("bwrap").ok_or_else(|| Error::RuntimeUnavailable {
            runtime: "local".into(),
            reason: "bubblewrap is not installed (apt-get install bubblewrap)".into(),
        })?;
        let nsenter = which("nsenter").ok_or_else(|| Error::RuntimeUnavailable {
            runtime: "local".into(),
            reason: "nsenter is not installed (apt-get install util-linux)".into(),
        })?;
        private_dir(&options.root)?;
        let ids = match options.id_base.filter(|_| is_root()) {
            Some(base) => {
                traversable(&options.root)?;
                Some(IdRanges::load(base, &options.root)?)
            }
            None => None,
        };
        let seccomp = match seccomp::compile(options.seccomp)? {
            Some(program) => {
                let file = handover::bytes("blink-seccomp", &program)?;
                Some((program, Arc::new(file)))
            }
            None => None,
        };
        let spawner = Spawner::new().map_err(|e| Error::io("starting the sandbox spawner", e))?;
        let data = options
            .root
            .parent()
            .map_or_else(|| options.root.clone(), Path::to_path_buf);
        let trees = Arc::new(trees::Trees::new(data.join("image-trees"), images.clone()));
        let templates = Arc::new(disk_image::Templates::new(data.join("disk-templates")));
        let layers = Arc::new(layers::Layers::new(
            data.join(layers::DIR),
            options.root.clone(),
        ));
        let backend = LimitBackend::detect();
        // Groups a killed predecessor left; then old empty ones of others.
        limits::remove_left_by(&backend, &box_ids(&options.root));
        limits::remove_stale(&backend);
        Ok(Self {
            root: options.root,
            images,
            ids,
            seccomp,
            bwrap,
            nsenter,
            backend,
            spawner,
            running: Arc::default(),
            trees,
            templates,
            layers,
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn rootfs(&self, id: &str) -> PathBuf {
        self.dir(id).join("rootfs")
    }

    fn target(&self, id: &str) -> Result<exec::Target<'_>> {
        let running = lock(&self.running);
        let r = running.get(id).ok_or_else(|| Error::SandboxDead {
            id: id.into(),
            reason: "it is not running".into(),
        })?;
        Ok(exec::Target {
            nsenter: &self.nsenter,
            namespaces: r.namespaces.clone(),
            seccomp: self.seccomp.as_ref().map(|(_, fd)| fd.clone()),
            cgroup_procs: r
                .cgroup
                .as_ref()
                .map(|c| c.procs_files())
                .unwrap_or_default(),
            rlimits: (self.backend == LimitBackend::Rlimit).then(|| r.limits.clone()),
        })
    }

    /// Run the guest helper inside the sandbox, as one of its processes,
    /// with `input` as its stdin; an error carries what it printed.
    async fn run_guest(
        &self,
        id: &str,
        args: &[&str],
        input: Option<tokio::fs::File>,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut argv = vec![GUEST_PATH.to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let spec = ExecSpec {
            argv,
            env: Vec::new(),
            cwd: Some("/".into()),
            tty: None,
        };
        let mut execution = self.exec(id, spec).await?;
        let stdin = execution.stdin.take();
        let feed = async move {
            if let (Some(mut stdin), Some(mut input)) = (stdin, input) {
                tokio::io::copy(&mut input, &mut stdin).await?;
                stdin.shutdown().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let mut stderr = execution.stderr.take();
        let errors = async move {
            let mut text = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = (&mut *s).take(64 * 1024).read_to_end(&mut text).await;
            }
            text
        };
        let (fed, text) = tokio::join!(feed, errors);
        let status = execution.control.wait().await?;
        if status.code != 0 {
            let text = String::from_utf8_lossy(&text);
            return Err(Error::Runtime(format!(
                "{} in sandbox {id} failed: {}",
                args.first().copied().unwrap_or("helper"),
                text.trim()
            )));
        }
        fed.map_err(|e| Error::io(format!("writing into sandbox {id}"), e))
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn info(&self) -> RuntimeInfo {
        let uid = match &self.ids {
            Some(ids) => format!(
                "each sandbox owns {} host ids of its own (up to {} sandboxes)",
                ids::RANGE,
                ids.capacity()
            ),
            None => format!(
                "sandbox root = host uid {} (caller; no per-sandbox ids without root)",
                rustix::process::getuid().as_raw()
            ),
        };
        RuntimeInfo {
            name: "local".into(),
            isolation: IsolationClass::Namespace,
            limits: self.backend.describe(),
            details: super::details(&[
                (
                    "mechanism",
                    "bubblewrap (user, pid, mount, ipc, uts, net, cgroup namespaces)".into(),
                ),
                ("uid_map", uid),
                (
                    "seccomp",
                    if self.seccomp.is_some() {
                        "default (Docker's default semantics)".into()
                    } else {
                        "unconfined".into()
                    },
                ),
                ("network", "none (loopback only)".into()),
            ]),
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<()> {
        validate_id(&spec.id)?;
        let dir = self.dir(&spec.id);
        if dir.exists() {
            return Err(Error::Runtime(format!(
                "sandbox {} already has a disk",
                spec.id
            )));
        }
        let image = self.images.resolve(&spec.image)?;
        let staging = self.root.join(format!(".{}.partial", spec.id));
        let _ = crate::fs::remove_tree(&staging);
        let range = self.ids.as_ref().map(IdRanges::allocate).transpose()?;
        let result: Result<()> = async {
            std::fs::create_dir_all(&staging).map_err(|e| Error::io("creating sandbox dir", e))?;
            own_dir(&staging, range)?;
            if let (Some(ids), Some(range)) = (&self.ids, range) {
                ids.record(&staging, range)?;
            }
            if range.is_some() && disk_image::available() {
                self.create_layered(spec, &image, &staging).await?;
            } else {
                self.create_copy(&image, &staging, range).await?;
            }
            std::fs::rename(&staging, &dir).map_err(|e| Error::io("committing sandbox dir", e))
        }
        .await;
        if result.is_err() {
            let _ = crate::fs::remove_tree(&staging);
            if let (Some(ids), Some(range)) = (&self.ids, range) {
                ids.release(range);
            }
        }
        result
    }

    fn exists(&self, id: &str) -> bool {
        validate_id(id).is_ok()
            && (self.rootfs(id).is_dir() || self.dir(id).join(disk_image::FILE).is_file())
    }

    fn disk_usage(&self, id: &str) -> Option<crate::types::DiskUsage> {
        validate_id(id).ok()?;
        let dir = self.dir(id);
        let usage = disk_image::usage(&dir)?;
        let chain = layers::top_of(&dir.join(disk_image::FILE))
            .and_then(|top| self.layers.chain(top.as_deref()))
            .unwrap_or_default();
        Some(crate::types::DiskUsage {
            size_bytes: usage.size_bytes,
            used_bytes: usage.used_bytes,
            layers: chain.len() as u32,
            layers_bytes: layers::Layers::bytes(&chain),
        })
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<()> {
        if self.is_running(&spec.id) {
            return Ok(());
        }
        let rootfs = self.rootfs(&spec.id);
        if !self.exists(&spec.id) {
            return Err(Error::SandboxDead {
                id: spec.id.clone(),
                reason: "its disk is missing".into(),
            });
        }
        let dir = self.dir(&spec.id);
        let layered = dir.join(disk_image::FILE).is_file();
        if layered && self.ids.is_none() {
            return Err(Error::RuntimeUnavailable {
                runtime: "local".into(),
                reason: format!(
                    "the disk of {} is a disk image, which only a server running as root can mount",
                    spec.id
                ),
            });
        }
        let range = self.id_range(&spec.id, &rootfs).await?;
        let prepare = |e| Error::io(format!("preparing the disk of {}", spec.id), e);
        // As root, the disk is seen through an overlay that names no host
        // path inside (disk.rs); without root it is bound as it is. The
        // loop device is ours until bubblewrap has mounted it.
        let mut device = None;
        let root = match range {
            Some(range) if layered => {
                let key = trees::named_by(&dir).ok_or_else(|| Error::SandboxDead {
                    id: spec.id.clone(),
                    reason: "its disk names no image".into(),
                })?;
                let tree = self.trees.path(&key).ok_or_else(|| Error::SandboxDead {
                    id: spec.id.clone(),
                    reason: format!("its image (sha256:{key}) is no longer on this host"),
                })?;
                self.disk_released(&spec.id).await?;
                self.grow_disk(&spec.id, spec.limits.disk_mib).await;
                let image = dir.join(disk_image::FILE);
                let dead = |reason: String| Error::SandboxDead {
                    id: spec.id.clone(),
                    reason,
                };
                let chain = layers::top_of(&image)
                    .and_then(|top| self.layers.chain(top.as_deref()))
                    .map_err(|e| dead(format!("its disk's layers: {e}")))?;
                let fresh = layers::is_fresh(&image);
                layers::clear_fresh(&image)?;
                let attached = loopdev::attach(&image).map_err(prepare)?;
                // Each layer read-only, seen in the sandbox's ids (one user
                // namespace per range layers were written in).
                let mut lowers = Vec::new();
                let mut held = Vec::new();
                let mut maps: HashMap<u32, OwnedFd> = HashMap::new();
                for layer in &chain {
                    let device = loopdev::attach_read_only(&layer.image).map_err(prepare)?;
                    let userns = if layer.id_root == range.root {
                        None
                    } else {
                        use std::collections::hash_map::Entry;
                        let ns = match maps.entry(layer.id_root) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(v) => v.insert(
                                idmap::userns_mapping(layer.id_root, range).map_err(prepare)?,
                            ),
                        };
                        Some(ns.try_clone().map_err(prepare)?)
                    };
                    lowers.push(disk::LowerLayer {
                        device: device.path().to_path_buf(),
                        userns,
                    });
                    held.push(device);
                }
                let userns = idmap::userns_for(range).map_err(prepare)?;
                let overlay = disk::prepare_layered(
                    &dir,
                    attached.path(),
                    &tree,
                    userns,
                    range.root,
                    lowers,
                    fresh,
                )
                .map_err(prepare)?;
                held.push(attached);
                device = Some(held);
                bwrap::Root::Overlay(Box::new(overlay))
            }
            Some(_) => bwrap::Root::Overlay(Box::new(disk::prepare_legacy(&dir).map_err(prepare)?)),
            None => bwrap::Root::Bind(&rootfs),
        };
        let cgroup = SandboxCgroup::create(&self.backend, &spec.id, &spec.limits)
            .map_err(|e| Error::io(format!("creating cgroup for {}", spec.id), e))?
            .map(Arc::new);
        let launch = bwrap::Launch {
            bwrap: &self.bwrap,
            root,
            guest: GUEST_BINARY,
            hostname: &spec.hostname,
            ids: range,
            seccomp: self.seccomp.as_ref().map(|(program, _)| program.as_slice()),
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            rlimits: (self.backend == LimitBackend::Rlimit).then(|| spec.limits.clone()),
        };
        let started = launch.start(&self.spawner).await;
        // Mounted (or failed): the device goes with its mount from now on.
        drop(device);
        let mut started = match started {
            Ok(x) => x,
            Err(e) => {
                if let Some(c) = &cgroup {
                    c.remove();
                }
                return Err(e);
            }
        };
        let bwrap_pid = started.child.id().unwrap_or(0);
        let mut stderr = started.child.stderr.take();
        let ready = async {
            let pid = started.wait_ready().await?;
            let namespaces = Namespaces::open(pid)
                .map_err(|e| Error::io("opening the sandbox's namespaces", e))?;
            namespaces
                .forbid_nested_user_namespaces()
                .map_err(|e| Error::io("closing user namespaces to the sandbox", e))?;
            // A sandbox whose image leaves no room for the endpoint (its
            // /run not a directory, say) runs without one rather than not
            // at all.
            let vhub = match namespaces.bind_vhub(range.map(|r| r.root)) {
                Ok(listener) => Some(listener),
                Err(e) => {
                    tracing::warn!(sandbox = %spec.id, error = %e, "no V-Hub endpoint in this sandbox");
                    None
                }
            };
            Ok::<_, Error>((pid, namespaces, vhub))
        };
        let (init_pid, namespaces, vhub) = match tokio::time::timeout(START_TIMEOUT, ready).await {
            Ok(Ok(ready)) => ready,
            outcome => {
                let mut child = started.child;
                let _ = child.start_kill();
                let _ = child.wait().await;
                let mut msg = String::new();
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_string(&mut msg).await;
                }
                if let Some(c) = &cgroup {
                    c.remove();
                }
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                    Ok(Ok(_)) => String::new(),
                };
                return Err(Error::Runtime(format!(
                    "bubblewrap could not start sandbox {}: {} {}",
                    spec.id,
                    msg.trim(),
                    why
                )));
            }
        };
        lock(&self.running).insert(
            spec.id.clone(),
            Running {
                init_pid,
                bwrap_pid,
                vhub: vhub.map(|listener| {
                    (
                        VHUB_BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        listener,
                    )
                }),
                namespaces: Arc::new(namespaces),
                cgroup: cgroup.clone(),
                limits: spec.limits.clone(),
            },
        );
        tracing::info!(sandbox = %spec.id, init_pid, "sandbox started");
        // Watch the sandbox: when bubblewrap exits, it is no longer running.
        let mut child = started.child;
        let running = self.running.clone();
        let id = spec.id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let mut msg = String::new();
            if let Some(mut s) = stderr {
                let _ = s.read_to_string(&mut msg).await;
            }
            // The cgroup goes first (the overlay went with the sandbox's
            // mount namespace): `stop` returns once the entry is gone, and
            // by then nothing of the sandbox may be left.
            if let Some(c) = cgroup {
                c.remove();
            }
            let mut map = lock(&running);
            if map.get(&id).is_some_and(|r| r.bwrap_pid == bwrap_pid) {
                map.remove(&id);
            }
            drop(map);
            tracing::info!(sandbox = %id, ?status, stderr = %msg.trim(), "sandbox ended");
        });
        Ok(())
    }

    fn vhub_listener(&self, id: &str) -> Result<Option<(u64, std::os::unix::net::UnixListener)>> {
        let running = lock(&self.running);
        let Some((boot, listener)) = running.get(id).and_then(|r| r.vhub.as_ref()) else {
            return Ok(None);
        };
        listener
            .try_clone()
            .map(|l| Some((*boot, l)))
            .map_err(|e| Error::io("duplicating a V-Hub endpoint", e))
    }

    fn is_running(&self, id: &str) -> bool {
        let map = lock(&self.running);
        map.get(id)
            .is_some_and(|r| Path::new(&format!("/proc/{}", r.init_pid)).exists())
    }

    async fn stop(&self, id: &str) -> Result<()> {
        let Some(bwrap_pid) = lock(&self.running).get(id).map(|r| r.bwrap_pid) else {
            return Ok(());
        };
        // Killing bubblewrap's outer process tears down the pid namespace
        // and with it every process of the sandbox.
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(bwrap_pid as i32, libc::SIGKILL);
        }
        for _ in 0..500 {
            if !lock(&self.running).contains_key(id) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Error::Runtime(format!(
            "sandbox {id} did not stop within 5 s"
        )))
    }

    async fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        self.stop(id).await?;
        let dir = self.dir(id);
        if dir.exists() {
            disk::unmount_legacy(&dir);
            let range = self.ids.as_ref().and_then(|ids| ids.recorded(&dir));
            let had_layers = uses_layers(&dir);
            // Rename first so a crash mid-delete never leaves a half disk
            // under the sandbox's name.
            let doomed = self.root.join(format!(".{id}.removing"));
            let _ = crate::fs::remove_tree(&doomed);
            std::fs::rename(&dir, &doomed)
                .map_err(|e| Error::io(format!("removing sandbox {id}"), e))?;
            tokio::task::spawn_blocking(move || crate::fs::remove_tree(&doomed))
                .await
                .map_err(|e| Error::Runtime(e.to_string()))?
                .map_err(|e| Error::io(format!("deleting disk of {id}"), e))?;
            if let (Some(ids), Some(range)) = (&self.ids, range) {
                ids.release(range);
            }
            if had_layers {
                self.collect_layers().await;
            }
        }
        Ok(())
    }

    async fn retain(&self, keep: &std::collections::HashSet<String>) -> Result<()> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("listing sandboxes", e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() {
                continue;
            }
            // Nothing runs yet: an overlay an older version left on the
            // host goes.
            disk::unmount_legacy(&entry.path());
            // Partial and half-removed disks start with a dot.
            if keep.contains(&name) {
                snapshots::remove_leftovers(&entry.path());
                continue;
            }
            tracing::info!(sandbox = %name, "removing a sandbox left by an earlier process");
            let range = self
                .ids
                .as_ref()
                .and_then(|ids| ids.recorded(&entry.path()));
            let path = entry.path();
            tokio::task::spawn_blocking(move || crate::fs::remove_tree(&path))
                .await
                .map_err(|e| Error::Runtime(e.to_string()))?
                .map_err(|e| Error::io(format!("removing sandbox {name}"), e))?;
            if let (Some(ids), Some(range)) = (&self.ids, range) {
                ids.release(range);
            }
        }
        // Image trees no remaining disk names (their image was removed,
        // or their last session).
        let used: std::collections::HashSet<String> = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| trees::named_by(&e.path()))
                    .collect()
            })
            .unwrap_or_default();
        let trees = self.trees.clone();
        let _ = tokio::task::spawn_blocking(move || trees.remove_unused(&used)).await;
        // Layers half made, and layers nothing needs any more.
        self.layers.remove_leftovers();
        self.collect_layers().await;
        Ok(())
    }

    /// cgroup limits change on the running sandbox; rlimits are set on
    /// each process as it starts, so they wait for the next start (for
    /// every process of the sandbox to have the same). A disk grows when
    /// the sandbox next starts (disk_image::grow).
    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<LimitsApplied> {
        validate_id(id)?;
        let group = lock(&self.running)
            .get(id)
            .and_then(|r| r.cgroup.clone().map(|c| (c, r.limits.clone())));
        let Some((cgroup, before)) = group.filter(|_| self.is_running(id)) else {
            return Ok(LimitsApplied::NEXT_START);
        };
        let backend = self.backend.clone();
        let wanted = limits.clone();
        let written = tokio::task::spawn_blocking(move || {
            let outcome = cgroup.apply(&backend, &wanted);
            if outcome.is_err() {
                // All or nothing: what was written goes back.
                let _ = cgroup.apply(&backend, &before);
            }
            outcome
        })
        .await
        .map_err(|e| Error::Runtime(format!("limits task failed: {e}")))?;
        match written {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Error::InvalidArgument(format!(
                    "memory_mib: sandbox {id} uses more than {} MiB now, and the kernel could \
                     not reclaim enough; free memory in it or stop it first",
                    limits.memory_mib.unwrap_or(0)
                )));
            }
            Err(e) => return Err(Error::io(format!("changing the limits of {id}"), e)),
        }
        if let Some(r) = lock(&self.running).get_mut(id) {
            r.limits = limits.clone();
        }
        tracing::info!(sandbox = %id, ?limits, "limits changed");
        Ok(LimitsApplied {
            memory: Applied::Live,
            cpus: Applied::Live,
            pids: Applied::Live,
            disk: Applied::NextStart,
        })
    }

    fn usage(&self, id: &str) -> ResourceUsage {
        let parts = lock(&self.running)
            .get(id)
            .map(|r| (r.cgroup.clone(), r.init_pid));
        let mut usage = match parts.filter(|_| self.is_running(id)) {
            Some((Some(cgroup), _)) => cgroup.usage(&self.backend),
            Some((None, init_pid)) => limits::proc_usage(init_pid),
            None => ResourceUsage {
                source: "none".into(),
                ..ResourceUsage::default()
            },
        };
        usage.disk_used_bytes = self.disk_usage(id).map(|d| d.used_bytes);
        usage
    }

    async fn connect_loopback(&self, id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let ns = self.namespaces_of(id)?;
        let stream = tokio::task::spawn_blocking(move || {
            ns.in_network(move || {
                let stream = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(10),
                )?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })
        })
        .await
        .map_err(|e| Error::Runtime(format!("connect task failed: {e}")))?
        .map_err(|e| Error::io(format!("connecting to port {port} in sandbox {id}"), e))?;
        tokio::net::TcpStream::from_std(stream)
            .map_err(|e| Error::io("registering a connection", e))
    }

    async fn listen_loopback(&self, id: &str, port: u16) -> Result<tokio::net::TcpListener> {
        let ns = self.namespaces_of(id)?;
        let listener = tokio::task::spawn_blocking(move || {
            ns.in_network(move || {
                let listener = std::net::TcpListener::bind(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    port,
                )))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
        })
        .await
        .map_err(|e| Error::Runtime(format!("listen task failed: {e}")))?
        .map_err(|e| Error::io(format!("listening on port {port} in sandbox {id}"), e))?;
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io("registering a listener", e))
    }

    fn snapshots_supported(&self) -> bool {
        self.ids.is_some() && disk_image::available()
    }

    async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo> {
        validate_id(id)?;
        let dir = self.dir(id);
        let running = self.frozen_parts(id);
        if running.is_none() && dir.join(disk_image::FILE).is_file() {
            self.disk_released(id).await?;
        }
        let id_root = self.id_root(id)?;
        let (layers, templates) = (self.layers.clone(), self.templates.clone());
        let id_owned = id.to_owned();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let freeze = freeze_of(running.as_ref());
            if running.is_some() && freeze.is_none() {
                return Err(Error::Unsupported(
                    "a snapshot of a running session without cgroups on this host; stop the session first".into(),
                ));
            }
            let disks = snapshots::Disks {
                layers: &layers,
                templates: &templates,
            };
            let running = running.is_some().then_some(freeze);
            snapshots::take(disks, &dir, &id_owned, &name, id_root, running)
        })
        .await
        .map_err(|e| Error::Runtime(format!("snapshot task failed: {e}")))?
    }

    fn snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        validate_id(id)?;
        Ok(snapshots::list(&self.dir(id), &self.layers))
    }

    async fn restore(&self, id: &str, name: &str) -> Result<()> {
        validate_id(id)?;
        if self.is_running(id) {
            return Err(Error::SessionBusy {
                name: id.into(),
                reason: "a sandbox is restored only while stopped".into(),
            });
        }
        let dir = self.dir(id);
        self.disk_released(id).await?;
        let id_root = self.id_root(id)?;
        let (layers, templates) = (self.layers.clone(), self.templates.clone());
        let (id, name) = (id.to_owned(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            let disks = snapshots::Disks {
                layers: &layers,
                templates: &templates,
            };
            snapshots::restore(disks, &dir, &id, &name, id_root)
        })
        .await
        .map_err(|e| Error::Runtime(format!("restore task failed: {e}")))?
    }

    async fn remove_snapshot(&self, id: &str, name: &str) -> Result<()> {
        validate_id(id)?;
        snapshots::remove(&self.dir(id), id, name)?;
        self.collect_layers().await;
        Ok(())
    }

    async fn create_from(
        &self,
        spec: &SandboxSpec,
        source: &str,
        snapshot: Option<&str>,
    ) -> Result<()> {
        validate_id(&spec.id)?;
        validate_id(source)?;
        let source_dir = self.dir(source);
        let (Some(ids), true) = (&self.ids, source_dir.join(disk_image::FILE).is_file()) else {
            return Err(Error::Unsupported(
                "cloning this session: its disk is a directory (made without root, or before disk images)".into(),
            ));
        };
        if let Some(name) = snapshot
            && !snapshots::exists(&source_dir, name)
        {
            return Err(Error::SnapshotNotFound {
                session: source.into(),
                snapshot: name.into(),
            });
        }
        let source_root = self.id_root(source)?;
        let dir = self.dir(&spec.id);
        if dir.exists() {
            return Err(Error::Runtime(format!(
                "sandbox {} already has a disk",
                spec.id
            )));
        }
        let staging = self.root.join(format!(".{}.partial", spec.id));
        let _ = crate::fs::remove_tree(&staging);
        let range = ids.allocate()?;
        let running = if snapshot.is_none() {
            self.frozen_parts(source)
        } else {
            None
        };
        if snapshot.is_none() && running.is_none() {
            self.disk_released(source).await?;
        }
        let made: Result<()> = async {
            std::fs::create_dir_all(&staging).map_err(|e| Error::io("creating sandbox dir", e))?;
            own_dir(&staging, Some(range))?;
            ids.record(&staging, range)?;
            std::fs::copy(source_dir.join(trees::FILE), staging.join(trees::FILE))
                .map_err(|e| Error::io("naming the disk's image", e))?;
            let (src_dir, stage) = (source_dir.clone(), staging.clone());
            let (layers, templates) = (self.layers.clone(), self.templates.clone());
            let (source_id, snapshot) = (source.to_owned(), snapshot.map(str::to_owned));
            tokio::task::spawn_blocking(move || -> Result<()> {
                let disks = snapshots::Disks {
                    layers: &layers,
                    templates: &templates,
                };
                // A running source without a freezer is copied as it runs.
                let running = running.as_ref().map(|r| freeze_of(Some(r)));
                snapshots::clone_disk(
                    disks,
                    &src_dir,
                    &source_id,
                    source_root,
                    snapshot.as_deref(),
                    running,
                    &stage.join(disk_image::FILE),
                )
            })
            .await
            .map_err(|e| Error::Runtime(format!("clone task failed: {e}")))??;
            std::fs::rename(&staging, &dir).map_err(|e| Error::io("committing sandbox dir", e))
        }
        .await;
        if made.is_err() {
            let _ = crate::fs::remove_tree(&staging);
            ids.release(range);
            // A layer made for it may be needed by nothing now.
            self.collect_layers().await;
        }
        made
    }

    async fn export(&self, request: ExportRequest) -> Result<u64> {
        validate_id(&request.id)?;
        let dir = self.dir(&request.id);
        let (Some(ids), true) = (&self.ids, dir.join(disk_image::FILE).is_file()) else {
            return Err(Error::Unsupported(
                "exporting this session: its disk is a directory (made without root, or before disk images)".into(),
            ));
        };
        let range = ids
            .recorded(&dir)
            .ok_or_else(|| Error::Runtime(format!("sandbox {} has no id range", request.id)))?;
        let chain = layers::top_of(&dir.join(disk_image::FILE))
            .and_then(|top| self.layers.chain(top.as_deref()))?;
        let mut snapshot_disks = Vec::new();
        for s in &request.header.snapshots {
            let stored =
                snapshots::stored(&dir, &s.name).ok_or_else(|| Error::SnapshotNotFound {
                    session: request.header.session.name.clone(),
                    snapshot: s.name.clone(),
                })?;
            let disk = match stored {
                snapshots::Stored::Layered(top) => {
                    archives::SnapshotDisk::Chain(self.layers.chain(top.as_deref())?)
                }
                snapshots::Stored::Copy(image) => archives::SnapshotDisk::Copy(image),
            };
            snapshot_disks.push((s.name.clone(), disk));
        }
        let running = self.frozen_parts(&request.id);
        if running.is_none() {
            self.disk_released(&request.id).await?;
        }
        let source = dir.clone();
        let copy_disk = move |dest: &Path| -> Result<u64> {
            let freeze = freeze_of(running.as_ref());
            snapshots::copy_disk(&source, dest, freeze)
        };
        let ExportRequest {
            header,
            image_archive,
            dest,
            progress,
            ..
        } = request;
        let disk = archives::ExportDisk {
            dir,
            id_root: range.root,
            chain,
            snapshots: snapshot_disks,
        };
        tokio::task::spawn_blocking(move || {
            archives::export(disk, header, image_archive, dest, copy_disk, progress)
        })
        .await
        .map_err(|e| Error::Runtime(format!("export task failed: {e}")))?
    }

    async fn import(&self, request: ImportRequest) -> Result<crate::archive::Header> {
        let ImportRequest {
            spec,
            archive,
            check,
            progress,
        } = request;
        validate_id(&spec.id)?;
        let Some(ids) = &self.ids.as_ref().filter(|_| disk_image::available()) else {
            return Err(Error::Unsupported(
                "import on this server: it needs disk images (a server running as root)".into(),
            ));
        };
        let dir = self.dir(&spec.id);
        if dir.exists() {
            return Err(Error::Runtime(format!(
                "sandbox {} already has a disk",
                spec.id
            )));
        }
        let staging = self.root.join(format!(".{}.partial", spec.id));
        let _ = crate::fs::remove_tree(&staging);
        let range = ids.allocate()?;
        let made: Result<crate::archive::Header> = async {
            std::fs::create_dir_all(&staging).map_err(|e| Error::io("creating sandbox dir", e))?;
            own_dir(&staging, Some(range))?;
            ids.record(&staging, range)?;
            let (stage, templates) = (staging.clone(), self.templates.clone());
            let default_mib = spec.limits.disk_mib.unwrap_or(DEFAULT_DISK_MIB);
            let imported = tokio::task::spawn_blocking(move || {
                archives::import(
                    stage,
                    archive,
                    range.root,
                    templates,
                    default_mib,
                    check,
                    progress,
                )
            })
            .await
            .map_err(|e| Error::Runtime(format!("import task failed: {e}")))??;
            if !staging.join(disk_image::FILE).is_file() {
                return Err(Error::InvalidArchive("it holds no changes/ section".into()));
            }
            // The image: from the archive when it came along, else this
            // host's copy; either way the digest must be the header's.
            let image_file = staging.join("image.oci.tar");
            if imported.has_image {
                let images = self.images.clone();
                let file = image_file.clone();
                tokio::task::spawn_blocking(move || images.import_archive(&file, None))
                    .await
                    .map_err(|e| Error::Runtime(format!("image import task failed: {e}")))??;
            }
            let _ = std::fs::remove_file(&image_file);
            let header = imported.header;
            let image = self.images.resolve(&header.image.digest).map_err(|_| {
                Error::InvalidArchive(format!(
                    "its image {} ({}) is not on this host and not in the archive",
                    header.image.reference, header.image.digest
                ))
            })?;
            let trees = self.trees.clone();
            let resolved = image.clone();
            tokio::task::spawn_blocking(move || trees.ensure(&resolved))
                .await
                .map_err(|e| Error::Runtime(format!("tree task failed: {e}")))??;
            std::fs::write(staging.join(trees::FILE), trees::Trees::key(&image))
                .map_err(|e| Error::io("naming the disk's image", e))?;
            for s in &header.snapshots {
                snapshots::record_imported(&staging, &s.name, s.created_at)?;
            }
            for entry in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with("import-") {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            std::fs::rename(&staging, &dir).map_err(|e| Error::io("committing sandbox dir", e))?;
            Ok(header)
        }
        .await;
        if made.is_err() {
            let _ = crate::fs::remove_tree(&staging);
            ids.release(range);
        }
        made
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Execution> {
        let target = self.target(id)?;
        exec::start(target, spec).await
    }

    /// Written by a process inside the sandbox (`blink-guest put`), with
    /// exactly the sandbox's privileges: host root never writes into a
    /// disk a sandbox has used.
    async fn copy_in(&self, id: &str, host_src: &Path, dest: &str, mode: u32) -> Result<()> {
        let input = crate::runtime::open_copy_source(host_src).await?;
        let mode = format!("{:o}", mode & 0o7777);
        self.run_guest(id, &["put", "--mode", &mode, dest], Some(input))
            .await
    }

    async fn remove_file(&self, id: &str, path: &str) -> Result<()> {
        self.run_guest(id, &["rm", path], None).await
    }
}

impl LocalRuntime {
    /// Wait (briefly) for the kernel to let go of a stopped sandbox's disk:
    /// its filesystem is unmounted once the last reference to its mount
    /// namespace is gone, which can trail the sandbox's end. Nothing may
    /// mount, copy or replace the disk image before.
    async fn disk_released(&self, id: &str) -> Result<()> {
        let image = self.dir(id).join(disk_image::FILE);
        if loopdev::wait_released(&image, Duration::from_secs(20)).await {
            return Ok(());
        }
        Err(Error::SessionBusy {
            name: id.into(),
            reason: "its disk is still mounted by its previous run; try again in a moment".into(),
        })
    }

    /// Grow a stopped sandbox's disk image to the size its spec asks for
    /// (a size it already has, or less, leaves it). A failure leaves the
    /// disk as it was and the sandbox starts with it: the session's info
    /// shows the size it has.
    async fn grow_disk(&self, id: &str, mib: Option<u64>) {
        let Some(mib) = mib else { return };
        let image = self.dir(id).join(disk_image::FILE);
        let grown = tokio::task::spawn_blocking(move || disk_image::grow(&image, mib)).await;
        match grown {
            Ok(Ok(true)) => tracing::info!(sandbox = %id, mib, "disk grown"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(sandbox = %id, mib, error = %e, "growing the disk failed; it keeps its size");
            }
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "disk growth task failed"),
        }
    }

    /// The host id of a sandbox's root (disk images exist only with id
    /// ranges).
    fn id_root(&self, id: &str) -> Result<u32> {
        self.ids
            .as_ref()
            .and_then(|ids| ids.recorded(&self.dir(id)))
            .map(|range| range.root)
            .ok_or_else(|| Error::Runtime(format!("sandbox {id} has no id range")))
    }

    /// Remove the disk layers nothing needs any more.
    async fn collect_layers(&self) {
        let layers = self.layers.clone();
        let _ = tokio::task::spawn_blocking(move || layers.collect()).await;
    }

    /// The namespaces of a running sandbox.
    fn namespaces_of(&self, id: &str) -> Result<Arc<Namespaces>> {
        let running = lock(&self.running);
        running
            .get(id)
            .map(|r| r.namespaces.clone())
            .ok_or_else(|| Error::SandboxDead {
                id: id.into(),
                reason: "it is not running".into(),
            })
    }

    /// What freezing a running sandbox needs (its cgroup, its root); `None`
    /// when it is not running.
    fn frozen_parts(&self, id: &str) -> Option<FreezeParts> {
        if !self.is_running(id) {
            return None;
        }
        let running = lock(&self.running);
        running
            .get(id)
            .map(|r| (r.cgroup.clone(), r.namespaces.clone()))
    }

    /// A layered disk: the image's shared tree (unpacked now if this is
    /// its first disk) and an empty disk image of the session's size.
    async fn create_layered(
        &self,
        spec: &SandboxSpec,
        image: &crate::image::ResolvedImage,
        staging: &Path,
    ) -> Result<()> {
        let mib = spec.limits.disk_mib.unwrap_or(DEFAULT_DISK_MIB);
        if !(disk_image::MIN_MIB..=disk_image::MAX_MIB).contains(&mib) {
            return Err(Error::InvalidArgument(format!(
                "disk size {mib} MiB is out of range ({} MiB to {} MiB)",
                disk_image::MIN_MIB,
                disk_image::MAX_MIB
            )));
        }
        let trees = self.trees.clone();
        let templates = self.templates.clone();
        let image = image.clone();
        let staging = staging.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<()> {
            trees.ensure(&image)?;
            std::fs::write(staging.join(trees::FILE), trees::Trees::key(&image))
                .map_err(|e| Error::io("naming the disk's image", e))?;
            layers::fresh_disk(&templates, mib, &staging.join(disk_image::FILE), None)
        })
        .await
        .map_err(|e| Error::Runtime(format!("disk task failed: {e}")))?
    }

    /// A disk that is a full copy of the image (without root: no loop
    /// devices, no id maps).
    async fn create_copy(
        &self,
        image: &crate::image::ResolvedImage,
        staging: &Path,
        range: Option<IdRange>,
    ) -> Result<()> {
        let owner = range.map(|r| (r.root, r.root));
        let rootfs = staging.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| Error::io("creating sandbox dir", e))?;
        let images = self.images.clone();
        let target = rootfs.clone();
        let image = image.clone();
        tokio::task::spawn_blocking(move || images.unpack(&image, &target, owner))
            .await
            .map_err(|e| Error::Runtime(format!("unpack task failed: {e}")))??;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&rootfs, Some(uid), Some(gid))
                .map_err(|e| Error::io("chown rootfs", e))?;
        }
        // The image's files, still unreachable by the sandbox: host root
        // may write them.
        let root = ConfinedRoot::open(&rootfs)?;
        let root = match owner {
            Some((uid, gid)) => root.with_owner(uid, gid),
            None => root,
        };
        root.create_dir_all("/.blink", 0o755)?;
        root.create_dir_all("/var/blink/memory", 0o755)?;
        Ok(())
    }

    /// The sandbox's host id range, recorded in its directory. A disk made
    /// before ranges existed (no record) moves into a new range first, and
    /// the record is written only once that is done.
    async fn id_range(&self, id: &str, rootfs: &Path) -> Result<Option<IdRange>> {
        let Some(ids) = &self.ids else {
            return Ok(None);
        };
        let dir = self.dir(id);
        if let Some(range) = ids.recorded(&dir) {
            return Ok(Some(range));
        }
        let range = ids.allocate()?;
        let disk = rootfs.to_path_buf();
        let moved = tokio::task::spawn_blocking(move || ids::adopt(&disk, range))
            .await
            .map_err(|e| Error::Runtime(format!("id migration task failed: {e}")))
            .and_then(|r| r)
            .and_then(|()| ids.record(&dir, range))
            .and_then(|()| own_dir(&dir, Some(range)));
        if let Err(e) = moved {
            ids.release(range);
            return Err(e);
        }
        Ok(Some(range))
    }
}

/// Whether a sandbox directory's disk or snapshots name disk layers (its
/// removal may leave some unneeded).
fn uses_layers(dir: &Path) -> bool {
    let disk = dir.join(disk_image::FILE);
    (disk.is_file() && layers::top_of(&disk).map_or(true, |top| top.is_some()))
        || snapshots::layers_named(dir).map_or(true, |tops| !tops.is_empty())
}

/// A running sandbox's cgroup (if limits use cgroups) and namespaces.
type FreezeParts = (Option<Arc<SandboxCgroup>>, Arc<Namespaces>);

/// How to keep a running sandbox still for a copy of its disk: `None` when
/// it is not running, or runs without a cgroup to freeze.
fn freeze_of(running: Option<&FreezeParts>) -> Option<snapshots::Freeze<'_>> {
    let (cgroup, ns) = running?;
    Some(snapshots::Freeze {
        cgroup: cgroup.as_ref()?,
        root: &ns.root,
    })
}

/// Blink's own directories are reachable by no other host user (0700):
/// session disks hold private files, and a setuid file made inside a
/// sandbox must be unreachable from the host. (See `traversable` for the
/// one exception.)
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("making {} private", dir.display()), e))
}

/// bubblewrap runs as the sandbox's root id and resolves the path of the
/// disk it is handed (by descriptor) once more, so the sandboxes dir and the
/// data dir above it may be traversed, never listed (0711), and every
/// ancestor must be searchable. Each sandbox's own directory is 0700 and
/// owned by that sandbox's root id, so its disk stays unreachable to every
/// other host user, other sandboxes included.
fn traversable(root: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for dir in [Some(root), root.parent()].into_iter().flatten() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))?;
    }
    for dir in root.ancestors().skip(2) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        if meta.mode() & 0o001 == 0 {
            return Err(Error::RuntimeUnavailable {
                runtime: "local".into(),
                reason: format!(
                    "sandboxes run as unprivileged host ids, which cannot reach {}: {} has mode {:o}; \
                     choose a data dir under a searchable path (e.g. /var/lib/blink) or `chmod o+x {}`",
                    root.display(),
                    dir.display(),
                    meta.mode() & 0o7777,
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// A sandbox's directory: only its own root id may enter.
fn own_dir(dir: &Path, range: Option<IdRange>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(range) = range {
        std::os::unix::fs::chown(dir, Some(range.root), Some(range.root))
            .map_err(|e| Error::io(format!("chown {}", dir.display()), e))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))
}

/// The ids of every sandbox with a directory under `root`, whole, being
/// made (`.<id>.partial`) or being removed (`.<id>.removing`).
fn box_ids(root: &Path) -> std::collections::HashSet<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = match name.strip_prefix('.') {
                Some(rest) => rest
                    .strip_suffix(".partial")
                    .or_else(|| rest.strip_suffix(".removing"))?
                    .to_owned(),
                None => name,
            };
            validate_id(&id).is_ok().then_some(id)
        })
        .collect()
}

/// Sandbox ids become directory names: keep them boring.
fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 80
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("invalid sandbox id {id:?}")))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Find a program on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What `doctor` says about the local runtime on this machine.
pub fn diagnose() -> Diagnosis {
    let mut checks = Vec::new();
    let bwrap = which("bwrap");
    checks.push(Check {
        name: "bubblewrap".into(),
        ok: bwrap.is_some(),
        detail: bwrap
            .as_ref()
            .map_or("missing: apt-get install bubblewrap".into(), |p| {
                p.display().to_string()
            }),
    });
    let nsenter = which("nsenter");
    checks.push(Check {
        name: "nsenter".into(),
        ok: nsenter.is_some(),
        detail: nsenter.map_or("missing: apt-get install util-linux".into(), |p| {
            p.display().to_string()
        }),
    });
    let userns = std::process::Command::new(bwrap.unwrap_or_else(|| "bwrap".into()))
        .args([
            "--unshare-all",
            "--uid",
            "0",
            "--ro-bind",
            "/",
            "/",
            "--",
            "/bin/true",
        ])
        .output();
    let (ok, detail) = match userns {
        Ok(o) if o.status.success() => (
            true,
            "user, pid, mount, net namespaces can be created".into(),
        ),
        Ok(o) => (false, String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => (false, e.to_string()),
    };
    checks.push(Check {
        name: "namespaces".into(),
        ok,
        detail,
    });
    let filter = seccomp::compile(SeccompProfile::Default);
    checks.push(Check {
        name: "seccomp".into(),
        ok: filter.is_ok(),
        detail: match filter {
            Ok(_) => "the default filter (Docker's default semantics) builds".into(),
            Err(e) => e.to_string(),
        },
    });
    checks.push(Check {
        name: "id ranges".into(),
        ok: true,
        detail: if is_root() {
            format!("each sandbox gets {} host ids of its own", ids::RANGE)
        } else {
            "not root: sandbox root maps to your uid and sandboxes share it".into()
        },
    });
    let backend = LimitBackend::detect();
    checks.push(Check {
        name: "limits".into(),
        ok: true,
        detail: backend
            .describe()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    });
    let usable = checks.iter().all(|c| c.ok);
    Diagnosis {
        runtime: "local".into(),
        usable,
        checks,
    }
}
