//! The boxlite runtime: each sandbox a BoxLite micro-VM ("box") named by
//! the sandbox's id, its disk kept across stops. Programs run under
//! `blink-guest wire` (the exec wire), mounted read-only at `/.blink` in
//! every box, which is also the box's init.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::boxlite::{BoxCommand, BoxliteOptions, LiteBox};
use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::options::{self, GUEST};
use crate::error::{Error, Result};
use crate::image::ImageStore;
use crate::runtime::exec::{ExecSpec, Execution};
use crate::runtime::{
    IsolationClass, Limits, LimitsApplied, Runtime, RuntimeInfo, SandboxSpec, SnapshotInfo, wire,
};

/// The boxlite runtime over `<data>/boxlite`.
pub struct BoxliteRuntime {
    root: PathBuf,
    vmm: ::boxlite::BoxliteRuntime,
    images: Arc<ImageStore>,
    /// Boxes this runtime knows (made, imported or found at open).
    known: Mutex<HashSet<String>>,
    running: Mutex<HashSet<String>>,
    /// One handle per box, held for as long as the box exists: a running
    /// box that is not detached ends when the last handle to it goes (its
    /// shim watches a pipe the handle keeps open).
    handles: Mutex<HashMap<String, Arc<LiteBox>>>,
    /// The V-Hub endpoints of running boxes.
    endpoints: Arc<super::vhub::Endpoints>,
    /// Whether boxes get a relayed V-Hub endpoint (`[sandbox]
    /// boxlite_vhub_relay`).
    relay: bool,
    /// How long a boot may take (`boot.rs`).
    boot_timeout: Duration,
}

impl std::fmt::Debug for BoxliteRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxliteRuntime")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// How long after a box is ready its V-Hub relay starts.
const RELAY_DELAY: Duration = Duration::from_secs(3);
/// How long stopping a box that did not boot may take before its handle
/// is let go anyway (which ends its VM).
const ABANDON_WITHIN: Duration = Duration::from_secs(30);

fn vmm_error(what: &str, e: ::boxlite::BoxliteError) -> Error {
    Error::Runtime(format!("{what}: {e}"))
}

/// Write the guest helper where boxes mount it from.
fn place_guest(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join("guest");
    let tmp = dir.join(".guest.tmp");
    std::fs::write(&tmp, crate::runtime::local::GUEST_BINARY)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("placing {}", path.display()), e))
}

impl BoxliteRuntime {
    /// Open the runtime on `root` (made if missing), with the boxes left
    /// there by an earlier process. `relay`: relayed V-Hub endpoints;
    /// `boot_timeout`: how long a boot may take (`boot.rs`).
    pub async fn open(
        root: &Path,
        images: Arc<ImageStore>,
        relay: bool,
        boot_timeout: Duration,
    ) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        place_guest(&root.join("guest"))?;
        let vmm = ::boxlite::BoxliteRuntime::new(BoxliteOptions {
            home_dir: root.join("home"),
            ..BoxliteOptions::default()
        })
        .map_err(|e| Error::RuntimeUnavailable {
            runtime: "boxlite".into(),
            reason: e.to_string(),
        })?;
        let known = vmm
            .list_info()
            .await
            .map_err(|e| vmm_error("listing boxes", e))?
            .into_iter()
            .filter_map(|info| info.name)
            .collect();
        Ok(Self {
            root: root.to_path_buf(),
            vmm,
            images,
            known: Mutex::new(known),
            running: Mutex::default(),
            handles: Mutex::default(),
            endpoints: Arc::new(super::vhub::Endpoints::new(root.join("vhub"))),
            relay,
            boot_timeout,
        })
    }

    async fn get(&self, id: &str) -> Result<Arc<LiteBox>> {
        if let Some(handle) = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(handle.clone());
        }
        let found = self
            .vmm
            .get(id)
            .await
            .map_err(|e| vmm_error(&format!("finding box {id}"), e))?
            .ok_or_else(|| Error::SandboxDead {
                id: id.into(),
                reason: "no such box".into(),
            })?;
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        Ok(handles
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(found))
            .clone())
    }

    /// Keep the handle of a box just made (see `handles`).
    fn hold(&self, id: &str, handle: LiteBox) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), Arc::new(handle));
    }

    /// Let a box's handle go (after a stop it is invalid; after a removal,
    /// of nothing).
    fn release(&self, id: &str) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Let go of a box whose boot hung (`boot.rs`): stop it, within
    /// [`ABANDON_WITHIN`], and drop its handle either way, which ends its
    /// VM; the next start takes a fresh handle.
    async fn abandon(&self, id: &str) {
        self.mark(&self.running, id, false);
        self.endpoints.detach(id);
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(b) = handle {
            match tokio::time::timeout(ABANDON_WITHIN, b.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(sandbox = id, error = %e, "stopping a box that did not boot")
                }
                Err(_) => tracing::warn!(
                    sandbox = id,
                    "stopping a box that did not boot took too long: its handle is let go"
                ),
            }
        }
        self.release(id);
    }

    fn mark(&self, set: &Mutex<HashSet<String>>, id: &str, on: bool) {
        let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            set.insert(id.to_owned());
        } else {
            set.remove(id);
        }
    }

    fn snapshots_file(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.json"))
    }

    fn write_snapshots(&self, id: &str, list: &[SnapshotInfo]) -> Result<()> {
        let path = self.snapshots_file(id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("creating snapshots dir", e))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(list).map_err(|e| Error::Runtime(e.to_string()))?,
        )
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Run the guest helper with `args` in a running box, `input` as its
    /// stdin; its complaint becomes the error.
    async fn run_guest(
        &self,
        id: &str,
        args: &[&str],
        input: Option<tokio::fs::File>,
    ) -> Result<()> {
        let mut argv = vec![GUEST.to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut ex = self
            .exec(
                id,
                ExecSpec {
                    argv,
                    env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                    cwd: None,
                    tty: None,
                },
            )
            .await?;
        let mut stdin = ex.stdin.take();
        let feed = async {
            if let (Some(mut file), Some(w)) = (input, stdin.as_mut()) {
                tokio::io::copy(&mut file, w)
                    .await
                    .map_err(|e| Error::io("copying into the box", e))?;
            }
            if let Some(mut w) = stdin.take() {
                let _ = w.shutdown().await;
            }
            Ok::<(), Error>(())
        };
        let mut stderr = Vec::new();
        let mut out_sink = Vec::new();
        let drain = async {
            if let Some(r) = ex.stdout.as_mut() {
                let _ = r.read_to_end(&mut out_sink).await;
            }
            if let Some(r) = ex.stderr.as_mut() {
                let _ = r.take(64 * 1024).read_to_end(&mut stderr).await;
            }
        };
        let (fed, ()) = tokio::join!(feed, drain);
        fed?;
        let status = ex.control.wait().await?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Runtime(format!(
                "blink-guest {} in box {id}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&stderr).trim()
            )))
        }
    }
}

#[async_trait]
impl Runtime for BoxliteRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "boxlite".into(),
            isolation: IsolationClass::Vm,
            limits: crate::runtime::details(&[
                (
                    "memory",
                    "micro-VM memory (fixed when the box is made)".into(),
                ),
                (
                    "cpus",
                    "micro-VM vCPUs, whole (fixed when the box is made)".into(),
                ),
                ("disk", "box disk, whole GB".into()),
            ]),
            details: crate::runtime::details(&[
                ("boxlite", ::boxlite::VERSION.into()),
                (
                    "exec",
                    "blink-guest wire over BoxLite exec (byte-exact, flow-controlled)".into(),
                ),
                ("home", self.root.join("home").display().to_string()),
            ]),
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<()> {
        let images = self.images.clone();
        let reference = spec.image.clone();
        let layouts = self.root.join("layouts");
        let layout = tokio::task::spawn_blocking(move || {
            super::layout::ensure(&images, &reference, &layouts)
        })
        .await
        .map_err(|e| Error::Runtime(format!("making the image layout: {e}")))??;
        let options = options::box_options(spec, &layout, &self.root.join("guest"));
        let made = self
            .vmm
            .create(options, Some(spec.id.clone()))
            .await
            .map_err(|e| vmm_error(&format!("making box {}", spec.id), e))?;
        self.hold(&spec.id, made);
        self.mark(&self.known, &spec.id, true);
        Ok(())
    }

    fn exists(&self, id: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<()> {
        // BoxLite's start is a no-op on a running box, and asking it (not
        // our own mark) notices a box that died meanwhile.
        let id = spec.id.as_str();
        super::boot::bounded(
            id,
            self.boot_timeout,
            || async {
                let b = self.get(id).await?;
                let was_running = self.is_running(id);
                b.start()
                    .await
                    .map_err(|e| vmm_error(&format!("starting box {id}"), e))?;
                if !was_running {
                    ready(&b, id).await?;
                }
                Ok(())
            },
            || self.abandon(id),
        )
        .await?;
        let b = self.get(id).await?;
        self.mark(&self.running, id, true);
        if self.relay && !self.endpoints.live(&spec.id) {
            let (endpoints, id) = (self.endpoints.clone(), spec.id.clone());
            tokio::spawn(async move {
                // Not at once: a relay started as the box came up broke
                // BoxLite's exec transport more often (docs/VHUB.md).
                tokio::time::sleep(RELAY_DELAY).await;
                // The box runs without a V-Hub endpoint rather than not at all.
                let relay = match start_wire(&b, &id, super::vhub::relay_spec()).await {
                    Ok(execution) => endpoints.attach(&id, execution),
                    Err(e) => Err(e),
                };
                if let Err(e) = relay {
                    tracing::warn!(sandbox = %id, error = %e, "no V-Hub endpoint");
                }
            });
        }
        Ok(())
    }

    fn vhub_listener(&self, id: &str) -> Result<Option<(u64, std::os::unix::net::UnixListener)>> {
        if !self.is_running(id) {
            return Ok(None);
        }
        self.endpoints.listener(id)
    }

    fn is_running(&self, id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    async fn is_alive(&self, id: &str) -> bool {
        if !self.is_running(id) {
            return false;
        }
        // BoxLite's watcher marks a box whose init ended Stopped; our mark
        // learns it here.
        let alive = match self.get(id).await {
            Ok(b) => matches!(
                b.info().await.map(|i| i.status),
                Ok(::boxlite::BoxStatus::Running)
            ),
            Err(_) => false,
        };
        if !alive {
            tracing::info!(sandbox = id, "the box stopped on its own");
            self.mark(&self.running, id, false);
            self.endpoints.detach(id);
            // BoxLite let go of the spent handle: the next start takes a
            // fresh one.
            self.release(id);
        }
        alive
    }

    async fn stop(&self, id: &str) -> Result<()> {
        let b = self.get(id).await?;
        self.endpoints.detach(id);
        let result = b.stop().await;
        self.mark(&self.running, id, false);
        // BoxLite invalidates a handle once it stopped its box: the next
        // start takes a fresh one.
        self.release(id);
        result.map_err(|e| vmm_error(&format!("stopping box {id}"), e))
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.mark(&self.running, id, false);
        self.endpoints.detach(id);
        match self.vmm.remove(id, true).await {
            Ok(()) => {}
            Err(e) if !self.vmm.exists(id).await.unwrap_or(true) => {
                tracing::debug!(sandbox = id, error = %e, "box already gone");
            }
            Err(e) => return Err(vmm_error(&format!("removing box {id}"), e)),
        }
        self.mark(&self.known, id, false);
        self.release(id);
        let _ = std::fs::remove_file(self.snapshots_file(id));
        Ok(())
    }

    async fn retain(&self, keep: &HashSet<String>) -> Result<()> {
        let boxes = self
            .vmm
            .list_info()
            .await
            .map_err(|e| vmm_error("listing boxes", e))?;
        for info in boxes {
            let name = info.name.clone().unwrap_or_else(|| info.id.to_string());
            if !keep.contains(&name) {
                tracing::info!(sandbox = %name, "removing a box no session keeps");
                self.remove(&name).await?;
            }
        }
        Ok(())
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Execution> {
        if !self.is_running(id) {
            return Err(Error::SandboxDead {
                id: id.into(),
                reason: "not running".into(),
            });
        }
        let b = self.get(id).await?;
        let started = start_wire(&b, id, spec).await;
        if let Err(Error::SandboxDead { .. }) = &started {
            self.mark(&self.running, id, false);
        }
        started
    }

    async fn copy_in(&self, id: &str, host_src: &Path, dest: &str, mode: u32) -> Result<()> {
        let input = crate::runtime::open_copy_source(host_src).await?;
        let mode = format!("{:o}", mode & 0o7777);
        self.run_guest(id, &["put", "--mode", &mode, dest], Some(input))
            .await
    }

    async fn remove_file(&self, id: &str, path: &str) -> Result<()> {
        self.run_guest(id, &["rm", path], None).await
    }

    async fn update_limits(&self, id: &str, _limits: &Limits) -> Result<LimitsApplied> {
        Err(Error::Unsupported(format!(
            "changing the size of box {id}: BoxLite fixes a micro-VM's CPUs, memory and disk when it is made"
        )))
    }

    fn snapshots_supported(&self) -> bool {
        true
    }

    async fn snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo> {
        let mut list = self.snapshots(id)?;
        if list.iter().any(|s| s.name == name) {
            return Err(Error::SnapshotExists {
                session: id.into(),
                snapshot: name.into(),
            });
        }
        // BoxLite 0.10.8 snapshots by renaming the disk file and putting a
        // fresh child on top, which only the next boot opens: a running VM
        // keeps writing the renamed file, so its snapshot would take every
        // change up to the next stop. Measured in tests/tests/boxlite_vm.rs.
        if self.is_running(id) {
            return Err(Error::SessionBusy {
                name: id.into(),
                reason: "a running micro-VM cannot be snapshotted on boxlite (BoxLite 0.10.8 would keep writing into the snapshot): stop the session first".into(),
            });
        }
        let b = self.get(id).await?;
        let made = b
            .snapshots()
            .create(Default::default(), name)
            .await
            .map_err(|e| vmm_error(&format!("snapshotting box {id}"), e))?;
        let info = SnapshotInfo {
            name: made.name,
            created_at: u64::try_from(made.created_at).unwrap_or(0),
            size_bytes: made.disk_info.size_bytes,
            frozen_ms: 0,
        };
        list.push(info.clone());
        self.write_snapshots(id, &list)?;
        Ok(info)
    }

    fn snapshots(&self, id: &str) -> Result<Vec<SnapshotInfo>> {
        match std::fs::read(self.snapshots_file(id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                path: self.snapshots_file(id),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("reading snapshots", e)),
        }
    }

    async fn restore(&self, id: &str, name: &str) -> Result<()> {
        if !self.snapshots(id)?.iter().any(|s| s.name == name) {
            return Err(Error::SnapshotNotFound {
                session: id.into(),
                snapshot: name.into(),
            });
        }
        let b = self.get(id).await?;
        b.snapshots()
            .restore(name)
            .await
            .map_err(|e| vmm_error(&format!("restoring box {id} to {name}"), e))
    }

    async fn remove_snapshot(&self, id: &str, name: &str) -> Result<()> {
        let mut list = self.snapshots(id)?;
        if !list.iter().any(|s| s.name == name) {
            return Err(Error::SnapshotNotFound {
                session: id.into(),
                snapshot: name.into(),
            });
        }
        let b = self.get(id).await?;
        b.snapshots()
            .remove(name)
            .await
            .map_err(|e| vmm_error(&format!("removing snapshot {name} of box {id}"), e))?;
        list.retain(|s| s.name != name);
        self.write_snapshots(id, &list)
    }

    async fn export(&self, request: crate::runtime::ExportRequest) -> Result<u64> {
        Err(Error::Unsupported(format!(
            "export of box {} on boxlite: Blink's session archive is a tree of files and BoxLite's .boxlite is its own disk format; not mapped yet (docs/BOXLITE.md)",
            request.id
        )))
    }

    async fn import(
        &self,
        request: crate::runtime::ImportRequest,
    ) -> Result<crate::archive::Header> {
        Err(Error::Unsupported(format!(
            "import into box {} on boxlite: not mapped yet (docs/BOXLITE.md)",
            request.spec.id
        )))
    }

    async fn create_from(
        &self,
        spec: &SandboxSpec,
        source: &str,
        snapshot: Option<&str>,
    ) -> Result<()> {
        if snapshot.is_some() {
            return Err(Error::Unsupported(
                "cloning from a snapshot on boxlite (BoxLite clones a box's current disk; restore the snapshot, then clone)".into(),
            ));
        }
        // BoxLite clones the way it snapshots (the disk renamed into a
        // shared base, children on top): a running VM would keep writing
        // into the clone's base.
        if self.is_running(source) {
            return Err(Error::SessionBusy {
                name: source.into(),
                reason: "a running micro-VM cannot be cloned on boxlite (BoxLite 0.10.8 would keep writing into the clone's base): stop the session first".into(),
            });
        }
        let b = self.get(source).await?;
        let made = b
            .clone_box(Default::default(), Some(spec.id.clone()))
            .await
            .map_err(|e| vmm_error(&format!("cloning box {source}"), e))?;
        self.hold(&spec.id, made);
        self.mark(&self.known, &spec.id, true);
        Ok(())
    }
}

/// Wait until a box that has just booted runs programs: BoxLite's start
/// returns once the VM is up, while the container in it may still be on
/// its way, and an execution then fails. A bounded number of probes.
/// `spec` under the exec wire in box `id`.
async fn start_wire(b: &LiteBox, id: &str, spec: ExecSpec) -> Result<Execution> {
    let command = BoxCommand::new(GUEST).args(wire::wire_args(&spec));
    let execution = match b.exec(command).await {
        Ok(execution) => execution,
        Err(e) => {
            let status = b.info().await.map(|i| i.status);
            if !matches!(status, Ok(::boxlite::BoxStatus::Running)) {
                return Err(Error::SandboxDead {
                    id: id.into(),
                    reason: format!("the box is {status:?}: {e}"),
                });
            }
            return Err(vmm_error(&format!("starting a program in box {id}"), e));
        }
    };
    wire::start(super::exec::wire_process(id, execution)?, &spec).await
}

async fn ready(b: &LiteBox, id: &str) -> Result<()> {
    const PROBES: u32 = 40;
    let mut last = String::new();
    for attempt in 0..PROBES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match b
            .exec(BoxCommand::new(GUEST).args(["rm", "/.blink-ready-probe"]))
            .await
        {
            Ok(mut ex) => {
                drop(ex.stdin());
                match ex.wait().await {
                    Ok(r) if r.exit_code == 0 => return Ok(()),
                    Ok(r) => last = format!("the probe exited {}", r.exit_code),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tracing::debug!(sandbox = id, attempt, error = %last, "box not ready yet");
    }
    Err(Error::SandboxDead {
        id: id.into(),
        reason: format!("booted but runs no program: {last}"),
    })
}

/// The preflight's last word: make, boot and run `true` in a box of an
/// empty image, then remove it, within `timeout`. On its own thread and
/// tokio runtime, so it can be asked from anywhere.
pub fn test_boot(timeout: Duration) -> std::result::Result<Duration, String> {
    let run = move || -> std::result::Result<Duration, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for the test boot: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("blink-boxlite-preflight-")
            .tempdir()
            .map_err(|e| format!("a directory for the test boot: {e}"))?;
        rt.block_on(async {
            tokio::time::timeout(timeout, boot_once(dir.path()))
                .await
                .map_err(|_| format!("no box booted within {} s", timeout.as_secs()))?
        })
    };
    std::thread::spawn(run)
        .join()
        .map_err(|_| "the test boot panicked".to_owned())?
}

async fn boot_once(dir: &Path) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    place_guest(&dir.join("guest")).map_err(|e| e.to_string())?;
    let layout = super::layout::empty(&dir.join("layout")).map_err(|e| e.to_string())?;
    let vmm = ::boxlite::BoxliteRuntime::new(BoxliteOptions {
        home_dir: dir.join("home"),
        ..BoxliteOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let spec = SandboxSpec {
        id: "preflight".into(),
        image: String::new(),
        hostname: "preflight".into(),
        limits: Limits {
            memory_mib: Some(256),
            cpus: Some(1.0),
            ..Limits::default()
        },
    };
    let outcome = async {
        let b = vmm
            .create(
                options::box_options(&spec, &layout, &dir.join("guest")),
                Some(spec.id.clone()),
            )
            .await
            .map_err(|e| format!("making the test box: {e}"))?;
        b.start()
            .await
            .map_err(|e| format!("booting the test box: {e}"))?;
        let mut ex = b
            .exec(BoxCommand::new(GUEST).args(["rm", "/nonexistent"]))
            .await
            .map_err(|e| format!("running in the test box: {e}"))?;
        drop(ex.stdin());
        let result = ex
            .wait()
            .await
            .map_err(|e| format!("waiting in the test box: {e}"))?;
        let _ = b.stop().await;
        if result.exit_code != 0 {
            return Err(format!(
                "the test box's program exited {}",
                result.exit_code
            ));
        }
        Ok(started.elapsed())
    }
    .await;
    let _ = vmm.remove("preflight", true).await;
    let _ = vmm.shutdown(Some(5)).await;
    outcome
}
