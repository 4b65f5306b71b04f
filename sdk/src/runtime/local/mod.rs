//! The `local` runtime: each sandbox is a set of Linux namespaces made by
//! bubblewrap (user, pid, mount, ipc, uts, network, cgroup) around a
//! writable root directory unpacked from an OCI image.
//!
//! - The sandbox's root user maps to one unprivileged host uid
//!   (`sandbox_uid`) when Blink runs as root, so nothing in a sandbox is
//!   host root, even after an escape.
//! - The network namespace has loopback only.
//! - A sandbox "runs" while its init (`blink-guest init`) lives; executions
//!   join it with nsenter, so processes, loopback services and /tmp persist
//!   between executions like on a VM.
//! - Limits go to cgroups where writable, rlimits otherwise (see limits.rs).

mod bwrap;
mod exec;
mod limits;
mod pty;
mod spawner;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

pub use self::exec::GUEST_PATH;
pub use self::limits::LimitBackend;
use self::limits::SandboxCgroup;
use self::spawner::Spawner;
use super::{
    Check, Diagnosis, ExecSpec, Execution, IsolationClass, Runtime, RuntimeInfo, SandboxSpec,
};
use crate::error::{Error, Result};
use crate::fs::ConfinedRoot;
use crate::image::ImageStore;

/// The guest helper, built by build.rs as a static binary.
pub const GUEST_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/blink-guest"));

/// Default host uid for sandbox root when Blink runs as root.
pub const DEFAULT_SANDBOX_UID: u32 = 900_000;

/// How long bubblewrap may take to set a sandbox up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Directory holding one directory per sandbox.
    pub root: PathBuf,
    /// Host uid/gid that sandbox root maps to; `None` keeps the caller's
    /// uid (the only choice when Blink does not run as root).
    pub sandbox_uid: Option<u32>,
}

/// A running sandbox: its bubblewrap process and init.
#[derive(Debug)]
struct Running {
    init_pid: u32,
    bwrap_pid: u32,
    cgroup: Option<Arc<SandboxCgroup>>,
    limits: super::Limits,
}

#[derive(Debug)]
pub struct LocalRuntime {
    root: PathBuf,
    images: Arc<ImageStore>,
    owner: Option<(u32, u32)>,
    bwrap: PathBuf,
    nsenter: PathBuf,
    guest: PathBuf,
    backend: LimitBackend,
    spawner: Spawner,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

impl LocalRuntime {
    /// Check the tools, write the guest helper and detect limits. Must be
    /// called inside a tokio runtime.
    pub fn new(options: LocalOptions, images: Arc<ImageStore>) -> Result<Self> {
        let bwrap = which("bwrap").ok_or_else(|| Error::RuntimeUnavailable {
            runtime: "local".into(),
            reason: "bubblewrap is not installed (apt-get install bubblewrap)".into(),
        })?;
        let nsenter = which("nsenter").ok_or_else(|| Error::RuntimeUnavailable {
            runtime: "local".into(),
            reason: "nsenter is not installed (apt-get install util-linux)".into(),
        })?;
        std::fs::create_dir_all(&options.root)
            .map_err(|e| Error::io(format!("creating {}", options.root.display()), e))?;
        let guest = options.root.join(".blink-guest");
        write_guest(&guest)?;
        let owner = options.sandbox_uid.filter(|_| is_root()).map(|u| (u, u));
        if let Some((uid, _)) = owner {
            ensure_reachable(&options.root, uid)?;
        }
        let spawner = Spawner::new().map_err(|e| Error::io("starting the sandbox spawner", e))?;
        Ok(Self {
            root: options.root,
            images,
            owner,
            bwrap,
            nsenter,
            guest,
            backend: {
                let backend = LimitBackend::detect();
                limits::remove_stale(&backend);
                backend
            },
            spawner,
            running: Arc::default(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn rootfs(&self, id: &str) -> PathBuf {
        self.dir(id).join("rootfs")
    }

    fn confined(&self, id: &str) -> Result<ConfinedRoot> {
        let rootfs = self.rootfs(id);
        if !rootfs.is_dir() {
            return Err(Error::SandboxDead {
                id: id.into(),
                reason: "its disk is missing".into(),
            });
        }
        let root = ConfinedRoot::open(&rootfs)?;
        Ok(match self.owner {
            Some((uid, gid)) => root.with_owner(uid, gid),
            None => root,
        })
    }

    fn target(&self, id: &str) -> Result<exec::Target<'_>> {
        let running = lock(&self.running);
        let r = running.get(id).ok_or_else(|| Error::SandboxDead {
            id: id.into(),
            reason: "it is not running".into(),
        })?;
        Ok(exec::Target {
            nsenter: &self.nsenter,
            init_pid: r.init_pid,
            cgroup_procs: r
                .cgroup
                .as_ref()
                .map(|c| c.procs_files())
                .unwrap_or_default(),
            rlimits: (self.backend == LimitBackend::Rlimit).then(|| r.limits.clone()),
        })
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn info(&self) -> RuntimeInfo {
        let uid = match self.owner {
            Some((uid, _)) => format!("sandbox root = host uid {uid}"),
            None => format!(
                "sandbox root = host uid {} (caller)",
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
        let _ = std::fs::remove_dir_all(&staging);
        let result: Result<()> = async {
            let rootfs = staging.join("rootfs");
            std::fs::create_dir_all(&rootfs).map_err(|e| Error::io("creating sandbox dir", e))?;
            let images = self.images.clone();
            let owner = self.owner;
            let target = rootfs.clone();
            tokio::task::spawn_blocking(move || images.unpack(&image, &target, owner))
                .await
                .map_err(|e| Error::Runtime(format!("unpack task failed: {e}")))??;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&rootfs, Some(uid), Some(gid))
                    .map_err(|e| Error::io("chown rootfs", e))?;
            }
            let root = ConfinedRoot::open(&rootfs)?;
            let root = match self.owner {
                Some((uid, gid)) => root.with_owner(uid, gid),
                None => root,
            };
            root.create_dir_all("/.blink", 0o755)?;
            root.create_dir_all("/var/blink/memory", 0o755)?;
            std::fs::rename(&staging, &dir).map_err(|e| Error::io("committing sandbox dir", e))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn exists(&self, id: &str) -> bool {
        validate_id(id).is_ok() && self.rootfs(id).is_dir()
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<()> {
        if self.is_running(&spec.id) {
            return Ok(());
        }
        let rootfs = self.rootfs(&spec.id);
        if !rootfs.is_dir() {
            return Err(Error::SandboxDead {
                id: spec.id.clone(),
                reason: "its disk is missing".into(),
            });
        }
        let cgroup = SandboxCgroup::create(&self.backend, &spec.id, &spec.limits)
            .map_err(|e| Error::io(format!("creating cgroup for {}", spec.id), e))?
            .map(Arc::new);
        let launch = bwrap::Launch {
            bwrap: &self.bwrap,
            rootfs: &rootfs,
            guest: &self.guest,
            hostname: &spec.hostname,
            owner: self.owner,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            rlimits: (self.backend == LimitBackend::Rlimit).then(|| spec.limits.clone()),
        };
        let started = launch.start(&self.spawner);
        let mut started = match started.await {
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
        let init_pid = match tokio::time::timeout(START_TIMEOUT, started.wait_ready()).await {
            Ok(Ok(pid)) => pid,
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
            // The cgroup goes first: `stop` returns once the entry is gone,
            // and by then nothing of the sandbox may be left.
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
            // Rename first so a crash mid-delete never leaves a half disk
            // under the sandbox's name.
            let doomed = self.root.join(format!(".{id}.removing"));
            let _ = std::fs::remove_dir_all(&doomed);
            std::fs::rename(&dir, &doomed)
                .map_err(|e| Error::io(format!("removing sandbox {id}"), e))?;
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&doomed))
                .await
                .map_err(|e| Error::Runtime(e.to_string()))?
                .map_err(|e| Error::io(format!("deleting disk of {id}"), e))?;
        }
        Ok(())
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Execution> {
        let target = self.target(id)?;
        exec::start(target, spec).await
    }

    async fn copy_in(&self, id: &str, host_src: &Path, dest: &str, mode: u32) -> Result<()> {
        let root = self.confined(id)?;
        let src = host_src.to_path_buf();
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut input = std::fs::File::open(&src).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::ScriptNotFound(src.clone()),
                _ => Error::io(format!("reading {}", src.display()), e),
            })?;
            write_into(&root, &dest, &mut input, mode)
        })
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?
    }

    async fn write_file(&self, id: &str, dest: &str, data: &[u8], mode: u32) -> Result<()> {
        let root = self.confined(id)?;
        write_into(&root, dest, &mut &data[..], mode)
    }

    /// While the sandbox runs, its files are seen through its own mount
    /// namespace (`/proc/<init>/root`), so `/tmp` (a tmpfs inside) is the
    /// one its processes see; when stopped, the disk itself.
    fn filesystem(&self, id: &str) -> Result<ConfinedRoot> {
        let init_pid = lock(&self.running).get(id).map(|r| r.init_pid);
        let Some(pid) = init_pid.filter(|_| self.is_running(id)) else {
            return self.confined(id);
        };
        let root = ConfinedRoot::open(Path::new(&format!("/proc/{pid}/root")))?;
        Ok(match self.owner {
            Some((uid, gid)) => root.with_owner(uid, gid),
            None => root,
        })
    }

    async fn remove_file(&self, id: &str, path: &str) -> Result<()> {
        match self.confined(id)?.remove_file(path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            other => other,
        }
    }

    async fn read_file(&self, id: &str, path: &str, limit: u64) -> Result<Vec<u8>> {
        use std::io::Read;
        let root = self.confined(id)?;
        let file = root.open_file(path, crate::fs::OpenFlags::read_only(), 0)?;
        let mut out = Vec::new();
        file.take(limit)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(format!("reading {path} in sandbox {id}"), e))?;
        Ok(out)
    }
}

fn write_into(
    root: &ConfinedRoot,
    dest: &str,
    input: &mut dyn std::io::Read,
    mode: u32,
) -> Result<()> {
    if let Some(parent) = Path::new(dest).parent() {
        root.create_dir_all(parent, 0o755)?;
    }
    let mut out = root.open_file(dest, crate::fs::OpenFlags::create_truncate(), mode)?;
    std::io::copy(input, &mut out)
        .map_err(|e| Error::io(format!("writing {dest} in sandbox"), e))?;
    root.set_permissions(dest, mode)?;
    out.sync_all().map_err(|e| Error::io("sync", e))?;
    let _ = out.as_raw_fd();
    Ok(())
}

/// bubblewrap runs as the sandbox uid and resolves the rootfs path itself,
/// so every directory above a disk must be searchable by that uid. Blink's
/// own directories (the data dir and its sandboxes dir) are made so (search
/// only: `o+x`, no listing); an ancestor that is not is named in the error.
fn ensure_reachable(root: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let own = [Some(root), root.parent()];
    for dir in own.into_iter().flatten() {
        let meta = std::fs::metadata(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if meta.mode() & 0o001 == 0 {
            let mode = (meta.mode() & 0o7777) | 0o001;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io(format!("making {} searchable", dir.display()), e))?;
        }
    }
    for dir in root.ancestors().skip(2) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let searchable =
            meta.mode() & 0o001 != 0 || (meta.uid() == uid && meta.mode() & 0o100 != 0);
        if !searchable {
            return Err(Error::RuntimeUnavailable {
                runtime: "local".into(),
                reason: format!(
                    "sandboxes run as host uid {uid}, which cannot reach {}: {} has mode {:o}; \
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

fn write_guest(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|b| b == GUEST_BINARY) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, GUEST_BINARY).map_err(|e| Error::io("writing blink-guest", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io("chmod blink-guest", e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("installing blink-guest", e))
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
