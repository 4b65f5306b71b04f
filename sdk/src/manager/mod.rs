//! The session manager: one per process. CLI, REST and SSH all go through
//! it. It owns session records, the warm/idle policy, ephemeral runs and
//! spawned executions; the runtime below it only knows sandboxes by id.

mod collect;
mod key_options;
pub mod keys;
pub mod names;
mod spawn;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::collect::Collected;
pub use self::spawn::{Attachment, Chunk, SpawnInfo, Spawned, Stream};
use self::store::{DataDirLock, SessionRecord, Store};
use crate::error::{Error, Result};
use crate::image::{DEFAULT_IMAGE, ImageStore, ResolvedImage};
use crate::runtime::local::{LocalOptions, LocalRuntime};
use crate::runtime::{ExecSpec, Execution, Limits, PtySize, Runtime, RuntimeKind, SandboxSpec};
use crate::types::{OpenedSession, RunResult, RuntimeInfo, SessionInfo, SessionState};

/// Where agent memory lives inside every session.
pub const MEMORY_DIR: &str = "/var/blink/memory";
/// Where host scripts are copied before they run.
const SCRIPT_DIR: &str = "/var/blink/run";

/// Everything a manager needs; `ManagerConfig::new(data_dir)` gives sane
/// defaults.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    pub runtime: RuntimeKind,
    /// First host id of the per-sandbox id ranges when running as root
    /// (each sandbox owns 65536 ids from there); `None` maps sandbox root
    /// to the caller.
    pub id_base: Option<u32>,
    /// The seccomp filter every sandbox process runs under.
    pub seccomp: crate::runtime::local::SeccompProfile,
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
    /// Resource limits of every sandbox.
    pub limits: Limits,
    /// Largest script a run may copy into a sandbox.
    pub max_script_bytes: u64,
}

impl ManagerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            runtime: RuntimeKind::Local,
            id_base: Some(crate::runtime::local::DEFAULT_ID_BASE),
            seccomp: crate::runtime::local::SeccompProfile::Default,
            default_image: DEFAULT_IMAGE.into(),
            idle_timeout: Duration::from_secs(300),
            run_timeout: Duration::from_secs(600),
            output_limit: 16 << 20,
            replay_limit: 1 << 20,
            spawn_retention: Duration::from_secs(600),
            max_spawns_per_session: 64,
            limits: Limits {
                memory_mib: Some(2048),
                cpus: None,
                pids: Some(1024),
            },
            max_script_bytes: 64 << 20,
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

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A host file, copied into the sandbox and executed.
    Script(PathBuf),
    /// A command line, run as is.
    Command(Vec<String>),
}

/// How to run it.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub timeout: Option<Duration>,
    pub output_limit: Option<u64>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
    /// Image for ephemeral runs; the default image when `None`.
    pub image: Option<String>,
    /// Extra arguments after the program.
    pub args: Vec<String>,
}

/// Options of `open_session`.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub image: Option<String>,
    /// `Some(true)` makes the session warm (kept running), `Some(false)`
    /// makes it cold again, `None` keeps what it was.
    pub warm: Option<bool>,
}

/// In-memory state of one session.
#[derive(Debug)]
struct Slot {
    record: Mutex<SessionRecord>,
    /// Serializes start, stop and remove.
    lifecycle: tokio::sync::Mutex<()>,
    active: AtomicU32,
    /// Milliseconds since the epoch: second granularity would let the
    /// idle policy stop a session the moment a second boundary passes.
    last_used: AtomicU64,
    removed: std::sync::atomic::AtomicBool,
}

/// Keeps a session from idling out while it lives: one per execution,
/// SSH channel or anything else that uses the session.
#[derive(Debug)]
pub struct ActivityGuard {
    slot: Arc<Slot>,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.slot.last_used.store(now_ms(), Ordering::SeqCst);
        self.slot.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps what an execution depends on alive: the session's activity guard,
/// or the whole sandbox of an ephemeral run.
#[derive(Debug)]
pub enum Lease {
    Session(ActivityGuard),
    Ephemeral(EphemeralBox),
}

/// An ephemeral sandbox, destroyed when released (or, as a fallback, when
/// dropped).
#[derive(Debug)]
pub struct EphemeralBox {
    id: String,
    runtime: Arc<dyn Runtime>,
    released: bool,
}

impl EphemeralBox {
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.runtime.remove(&self.id).await
    }
}

impl Drop for EphemeralBox {
    fn drop(&mut self) {
        if !self.released {
            let runtime = self.runtime.clone();
            let id = std::mem::take(&mut self.id);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = runtime.remove(&id).await {
                        tracing::warn!(sandbox = %id, error = %e, "removing ephemeral sandbox failed");
                    }
                });
            }
        }
    }
}

/// Where a program runs.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A fresh sandbox, destroyed afterwards.
    Ephemeral,
    /// A named session.
    Session(&'a str),
}

/// A started execution and what keeps it alive. Hand it back to
/// `Manager::finish` when done.
#[derive(Debug)]
pub struct Started {
    pub execution: Execution,
    pub lease: Lease,
    pub box_id: String,
    /// A script copied in for this execution, deleted at finish.
    cleanup: Option<String>,
}

pub struct Manager {
    config: ManagerConfig,
    runtime: Arc<dyn Runtime>,
    images: Arc<ImageStore>,
    store: Store,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Serializes session creation and removal by name.
    catalog: tokio::sync::Mutex<()>,
    spawns: Mutex<HashMap<String, Arc<Spawned>>>,
    _lock: DataDirLock,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Take the data dir, recover state left by a previous process, and
    /// start the idle policy. Must run inside a tokio runtime.
    pub async fn open(config: ManagerConfig) -> Result<Arc<Self>> {
        let data = &config.data_dir;
        crate::runtime::local::private_dir(data)?;
        let lock = DataDirLock::acquire(data)?;
        let images = Arc::new(ImageStore::open(&data.join("images"))?);
        let runtime: Arc<dyn Runtime> = match config.runtime {
            RuntimeKind::Local => Arc::new(LocalRuntime::new(
                LocalOptions {
                    root: data.join("sandboxes"),
                    id_base: config.id_base,
                    seccomp: config.seccomp,
                },
                images.clone(),
            )?),
            RuntimeKind::Boxlite => {
                return Err(Error::RuntimeUnavailable {
                    runtime: "boxlite".into(),
                    reason: "this build has no boxlite runtime; run 'blink-cli doctor'".into(),
                });
            }
        };
        let store = Store::open(data)?;
        let manager = Arc::new(Self {
            config,
            runtime,
            images,
            store,
            slots: Mutex::default(),
            catalog: tokio::sync::Mutex::new(()),
            spawns: Mutex::default(),
            _lock: lock,
        });
        manager.recover()?;
        manager.start_policy();
        Ok(manager)
    }

    /// Load records; remove ephemeral sandboxes and disks no record owns
    /// (left by a crash between steps).
    fn recover(&self) -> Result<()> {
        let records = self.store.list()?;
        let owned: std::collections::HashSet<String> =
            records.iter().map(|r| r.box_id.clone()).collect();
        let sandboxes = self.config.data_dir.join("sandboxes");
        if let Ok(entries) = std::fs::read_dir(&sandboxes) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let orphan = if name.starts_with(".blink-guest") {
                    false
                } else {
                    name.starts_with('.') || !owned.contains(&name)
                };
                if orphan && entry.path().is_dir() {
                    tracing::info!(sandbox = %name, "removing sandbox left by an earlier process");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let mut slots = lock(&self.slots);
        for r in records {
            let last = r.last_used_at.saturating_mul(1000);
            slots.insert(r.name.clone(), Arc::new(new_slot(r, last)));
        }
        Ok(())
    }

    /// Start warm sessions and the idle reaper.
    fn start_policy(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(m) = weak.upgrade() {
                for name in m.warm_sessions() {
                    if let Err(e) = m.ensure_running(&name).await {
                        tracing::warn!(session = %name, error = %e, "starting warm session failed");
                    }
                }
            }
            loop {
                let Some(m) = weak.upgrade() else { break };
                let tick = (m.config.idle_timeout / 4)
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                m.reap_idle().await;
                m.forget_finished_spawns();
                drop(m);
                tokio::time::sleep(tick).await;
            }
        });
    }

    fn warm_sessions(&self) -> Vec<String> {
        lock(&self.slots)
            .iter()
            .filter(|(_, s)| lock(&s.record).warm)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Stop every cold session that has been idle long enough. A session
    /// with anything active is never stopped.
    async fn reap_idle(&self) {
        let idle = self.config.idle_timeout.as_millis() as u64;
        let candidates: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in candidates {
            let (warm, box_id, name) = {
                let r = lock(&slot.record);
                (r.warm, r.box_id.clone(), r.name.clone())
            };
            if warm || !self.runtime.is_running(&box_id) {
                continue;
            }
            let idle_for = now_ms().saturating_sub(slot.last_used.load(Ordering::SeqCst));
            if slot.active.load(Ordering::SeqCst) > 0 || idle_for < idle {
                continue;
            }
            let _life = slot.lifecycle.lock().await;
            // Re-check under the lifecycle lock: something may have started.
            if slot.active.load(Ordering::SeqCst) == 0 {
                tracing::info!(session = %name, idle_for_ms = idle_for, "stopping idle session");
                if let Err(e) = self.runtime.stop(&box_id).await {
                    tracing::warn!(session = %name, error = %e, "stopping idle session failed");
                }
            }
        }
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn runtime_info(&self) -> RuntimeInfo {
        self.runtime.info()
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// The session records' store (for keys and other per-session files).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>> {
        names::validate(name)?;
        lock(&self.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::SessionNotFound(name.into()))
    }

    fn info_of(&self, slot: &Slot) -> SessionInfo {
        let r = lock(&slot.record).clone();
        let rt = self.runtime.info();
        SessionInfo {
            state: if self.runtime.is_running(&r.box_id) {
                SessionState::Running
            } else {
                SessionState::Stopped
            },
            name: r.name,
            box_id: r.box_id,
            image: r.image,
            warm: r.warm,
            runtime: rt.name,
            isolation: rt.isolation,
            created_at: r.created_at,
            last_used_at: slot.last_used.load(Ordering::SeqCst) / 1000,
            active_executions: slot.active.load(Ordering::SeqCst),
        }
    }

    fn spec_of(&self, record: &SessionRecord) -> SandboxSpec {
        SandboxSpec {
            id: record.box_id.clone(),
            image: record.image.clone(),
            hostname: record.name.clone(),
            limits: record.limits.clone(),
        }
    }

    /// Resolve an image reference, making the default image on first use.
    fn resolve_image(&self, image: Option<&str>) -> Result<String> {
        let reference = image.unwrap_or(&self.config.default_image);
        match self.images.resolve(reference) {
            Ok(resolved) => Ok(resolved.reference.clone()),
            Err(Error::ImageNotFound { .. })
                if reference == "default" || reference == DEFAULT_IMAGE =>
            {
                self.images.ensure_default()?;
                Ok(self.images.resolve(reference)?.reference.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// Open a session, creating it (and its disk) if missing.
    pub async fn open_session(&self, name: &str, options: OpenOptions) -> Result<OpenedSession> {
        names::validate(name)?;
        let _catalog = self.catalog.lock().await;
        if let Ok(slot) = self.slot(name) {
            if let Some(warm) = options.warm {
                let mut r = lock(&slot.record).clone();
                if r.warm != warm {
                    r.warm = warm;
                    self.store.save(&r)?;
                    *lock(&slot.record) = r;
                }
            }
            if lock(&slot.record).warm {
                drop(_catalog);
                self.ensure_running(name).await?;
            }
            return Ok(OpenedSession {
                session: self.info_of(&slot),
                created: false,
            });
        }
        let image = {
            let image = options.image.clone();
            tokio::task::block_in_place(|| self.resolve_image(image.as_deref()))?
        };
        let t = now();
        let record = SessionRecord {
            name: name.into(),
            box_id: format!("s-{}", uuid::Uuid::new_v4().simple()),
            image,
            warm: options.warm.unwrap_or(false),
            runtime: self.runtime.info().name,
            created_at: t,
            last_used_at: t,
            limits: self.config.limits.clone(),
        };
        let spec = self.spec_of(&record);
        self.runtime.create(&spec).await?;
        if let Err(e) = self.store.save(&record) {
            let _ = self.runtime.remove(&spec.id).await;
            let _ = self.store.delete(name);
            return Err(e);
        }
        let slot = Arc::new(new_slot(record.clone(), t.saturating_mul(1000)));
        lock(&self.slots).insert(name.into(), slot.clone());
        drop(_catalog);
        tracing::info!(session = %name, box_id = %record.box_id, image = %record.image, "session created");
        if record.warm {
            self.ensure_running(name).await?;
        }
        Ok(OpenedSession {
            session: self.info_of(&slot),
            created: true,
        })
    }

    pub fn session_info(&self, name: &str) -> Result<SessionInfo> {
        let slot = self.slot(name)?;
        Ok(self.info_of(&slot))
    }

    pub fn list_sessions(&self) -> Vec<SessionInfo> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut out: Vec<SessionInfo> = slots.iter().map(|s| self.info_of(s)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Mark the session in use; it will not be stopped by the idle policy
    /// while the guard lives.
    pub fn hold(&self, name: &str) -> Result<ActivityGuard> {
        let slot = self.slot(name)?;
        slot.active.fetch_add(1, Ordering::SeqCst);
        slot.last_used.store(now_ms(), Ordering::SeqCst);
        Ok(ActivityGuard { slot })
    }

    /// Start the session's sandbox if it is not running.
    pub async fn ensure_running(&self, name: &str) -> Result<()> {
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        if slot.removed.load(Ordering::SeqCst) {
            return Err(Error::SessionNotFound(name.into()));
        }
        let record = lock(&slot.record).clone();
        if !self.runtime.is_running(&record.box_id) {
            self.runtime.start(&self.spec_of(&record)).await?;
        }
        Ok(())
    }

    /// Stop a session's sandbox; its disk is kept. Refused while something
    /// runs in it unless `force`.
    pub async fn stop_session(&self, name: &str, force: bool) -> Result<SessionInfo> {
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        refuse_if_busy(&slot, name, force)?;
        let box_id = lock(&slot.record).box_id.clone();
        self.runtime.stop(&box_id).await?;
        drop(_life);
        Ok(self.info_of(&slot))
    }

    /// Remove a session and its disk. Refused while something runs in it
    /// unless `force`.
    pub async fn remove_session(&self, name: &str, force: bool) -> Result<()> {
        let _catalog = self.catalog.lock().await;
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        refuse_if_busy(&slot, name, force)?;
        let box_id = lock(&slot.record).box_id.clone();
        // Record first: a crash after this leaves an orphan disk, which the
        // next start removes, never a record without a disk.
        self.store.delete(name)?;
        slot.removed.store(true, Ordering::SeqCst);
        lock(&self.slots).remove(name);
        lock(&self.spawns).retain(|_, s| s.session != name);
        self.runtime.remove(&box_id).await?;
        tracing::info!(session = %name, box_id = %box_id, "session removed");
        Ok(())
    }

    /// Environment for an execution: image env, then Blink's defaults,
    /// then the caller's.
    fn env_for(
        image: Option<&ResolvedImage>,
        tty: bool,
        extra: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| {
            env.retain(|(key, _)| key != k);
            env.push((k.to_owned(), v.to_owned()));
        };
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        for kv in image.map(|i| i.env.as_slice()).unwrap_or_default() {
            if let Some((k, v)) = kv.split_once('=') {
                set(k, v);
            }
        }
        set("HOME", "/root");
        set("USER", "root");
        set("BLINK_MEMORY_DIR", MEMORY_DIR);
        if tty {
            set("TERM", "xterm-256color");
        }
        for (k, v) in extra {
            set(k, v);
        }
        env
    }

    /// Start an execution in a session, starting its sandbox if needed.
    pub async fn exec(&self, name: &str, mut spec: ExecSpec) -> Result<Started> {
        let guard = self.hold(name)?;
        self.ensure_running(name).await?;
        let record = lock(&guard.slot.record).clone();
        self.complete_spec(&record.image, &mut spec);
        let execution = self.runtime.exec(&record.box_id, spec).await?;
        Ok(Started {
            execution,
            lease: Lease::Session(guard),
            box_id: record.box_id,
            cleanup: None,
        })
    }

    /// Fill in environment and working directory from the image.
    /// The image is read once per execution, for both.
    fn complete_spec(&self, image: &str, spec: &mut ExecSpec) {
        let resolved = self.images.resolve(image).ok();
        spec.env = Self::env_for(resolved.as_ref(), spec.tty.is_some(), &spec.env);
        if spec.cwd.is_none() {
            let dir = resolved
                .and_then(|i| i.working_dir)
                .filter(|d| !d.is_empty());
            spec.cwd = Some(dir.unwrap_or_else(|| "/root".into()));
        }
    }

    /// Start a program (a host script or a command) in a session or in a
    /// fresh ephemeral sandbox, with streams for the caller to drive.
    /// `Started::finish` cleans up (the copied script, the ephemeral box).
    pub async fn start(
        &self,
        target: Target<'_>,
        program: &Program,
        options: &RunOptions,
        tty: Option<PtySize>,
    ) -> Result<Started> {
        if let Program::Script(p) = program {
            self.check_script(p)?;
        }
        let mut spec = ExecSpec {
            argv: Vec::new(),
            env: options.env.clone(),
            cwd: options.cwd.clone(),
            tty,
        };
        match target {
            Target::Session(name) => {
                let guard = self.hold(name)?;
                self.ensure_running(name).await?;
                let record = lock(&guard.slot.record).clone();
                let (argv, copied) = self
                    .materialize(&record.box_id, program, &options.args)
                    .await?;
                spec.argv = argv;
                self.complete_spec(&record.image, &mut spec);
                let execution = match self.runtime.exec(&record.box_id, spec).await {
                    Ok(e) => e,
                    Err(e) => {
                        if let Some(path) = copied {
                            let _ = self.runtime.remove_file(&record.box_id, &path).await;
                        }
                        return Err(e);
                    }
                };
                Ok(Started {
                    execution,
                    lease: Lease::Session(guard),
                    box_id: record.box_id,
                    cleanup: copied,
                })
            }
            Target::Ephemeral => {
                let image = self.resolve_image_blocking(options.image.as_deref())?;
                let b = self.new_ephemeral(&image).await?;
                let (argv, _) = self.materialize(&b.id, program, &options.args).await?;
                spec.argv = argv;
                self.complete_spec(&image, &mut spec);
                let execution = self.runtime.exec(&b.id, spec).await?;
                Ok(Started {
                    execution,
                    box_id: b.id.clone(),
                    lease: Lease::Ephemeral(b),
                    cleanup: None,
                })
            }
        }
    }

    fn resolve_image_blocking(&self, image: Option<&str>) -> Result<String> {
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.resolve_image(image))
            }
            _ => self.resolve_image(image),
        }
    }

    /// Create and start a fresh sandbox that is removed when released.
    async fn new_ephemeral(&self, image: &str) -> Result<EphemeralBox> {
        let id = format!("run-{}", uuid::Uuid::new_v4().simple());
        let sandbox = SandboxSpec {
            id: id.clone(),
            image: image.to_owned(),
            hostname: "blink-run".into(),
            limits: self.config.limits.clone(),
        };
        self.runtime.create(&sandbox).await?;
        let b = EphemeralBox {
            id,
            runtime: self.runtime.clone(),
            released: false,
        };
        self.runtime.start(&sandbox).await?;
        Ok(b)
    }

    /// Check a host script before anything is made for it.
    fn check_script(&self, path: &Path) -> Result<()> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ScriptNotFound(path.to_path_buf()),
            _ => Error::io(format!("reading script {}", path.display()), e),
        })?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "script {} is not a regular file",
                path.display()
            )));
        }
        if meta.len() > self.config.max_script_bytes {
            return Err(Error::TooLarge {
                what: format!("script {}", path.display()),
                size: meta.len(),
                limit: self.config.max_script_bytes,
            });
        }
        Ok(())
    }

    /// Turn a program into argv, copying a script into the sandbox.
    async fn materialize(
        &self,
        box_id: &str,
        program: &Program,
        args: &[String],
    ) -> Result<(Vec<String>, Option<String>)> {
        match program {
            Program::Command(argv) => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(Error::InvalidArgument("empty command".into()));
                }
                let mut argv = argv.clone();
                argv.extend_from_slice(args);
                Ok((argv, None))
            }
            Program::Script(path) => {
                let base: String = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "script".into())
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let dest = format!("{SCRIPT_DIR}/{}-{base}", uuid::Uuid::new_v4().simple());
                self.runtime.copy_in(box_id, path, &dest, 0o755).await?;
                let mut argv = vec![dest.clone()];
                argv.extend_from_slice(args);
                Ok((argv, Some(dest)))
            }
        }
    }

    /// Pipe-mode run: structured result, stdout and stderr apart.
    pub async fn run(
        &self,
        target: Target<'_>,
        program: &Program,
        options: RunOptions,
    ) -> Result<RunResult> {
        let session = match target {
            Target::Session(n) => Some(n.to_owned()),
            Target::Ephemeral => None,
        };
        let mut started = self.start(target, program, &options, None).await?;
        let timeout = options.timeout.unwrap_or(self.config.run_timeout);
        let cap = options.output_limit.unwrap_or(self.config.output_limit);
        let collected =
            collect::collect(&mut started.execution, options.stdin.clone(), timeout, cap).await;
        let box_id = started.box_id.clone();
        let finished = self.finish(started).await;
        let collected = collected?;
        finished?;
        Ok(RunResult {
            exit_code: collected.status.code,
            signal: collected.status.signal,
            timed_out: collected.timed_out,
            stdout: collected.stdout,
            stderr: collected.stderr,
            duration_ms: collected.duration.as_millis() as u64,
            session,
            box_id,
            isolation: self.runtime.info().isolation,
        })
    }

    /// Release what a started execution held: delete a copied script,
    /// remove an ephemeral sandbox.
    pub async fn finish(&self, started: Started) -> Result<()> {
        let Started {
            lease,
            box_id,
            cleanup,
            ..
        } = started;
        match lease {
            Lease::Session(guard) => {
                if let Some(path) = cleanup {
                    let _ = self.runtime.remove_file(&box_id, &path).await;
                }
                drop(guard);
                Ok(())
            }
            Lease::Ephemeral(b) => b.release().await,
        }
    }

    /// Pipe-mode run in a named session.
    pub async fn run_in_session(
        &self,
        name: &str,
        program: &Program,
        options: RunOptions,
    ) -> Result<RunResult> {
        self.run(Target::Session(name), program, options).await
    }

    /// Pipe-mode run in a fresh sandbox that is destroyed afterwards.
    pub async fn run_ephemeral(&self, program: &Program, options: RunOptions) -> Result<RunResult> {
        self.run(Target::Ephemeral, program, options).await
    }

    /// Start a process that can be attached and detached.
    pub async fn spawn(
        &self,
        name: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        tty: Option<PtySize>,
    ) -> Result<SpawnInfo> {
        self.slot(name)?;
        self.make_room_for_spawn(name)?;
        let spec = ExecSpec {
            argv: argv.clone(),
            env,
            cwd: None,
            tty,
        };
        let started = self.exec(name, spec).await?;
        let Lease::Session(guard) = started.lease else {
            return Err(Error::Runtime("spawn needs a session".into()));
        };
        let id = format!("x-{}", uuid::Uuid::new_v4().simple());
        let spawned = Spawned::start(
            id.clone(),
            name.into(),
            argv,
            started.execution,
            self.config.replay_limit,
            guard,
        );
        let info = spawned.info();
        lock(&self.spawns).insert(id, spawned);
        Ok(info)
    }

    /// Keep a session's spawns within `max_spawns_per_session`: forget the
    /// oldest finished one, or refuse when all are still running.
    fn make_room_for_spawn(&self, name: &str) -> Result<()> {
        let mut spawns = lock(&self.spawns);
        let in_session = spawns.values().filter(|s| s.session == name).count();
        if in_session < self.config.max_spawns_per_session {
            return Ok(());
        }
        let oldest_finished = spawns
            .values()
            .filter(|s| s.session == name)
            .filter_map(|s| s.finished_at().map(|t| (t, s.id.clone())))
            .min();
        match oldest_finished {
            Some((_, old)) => {
                spawns.remove(&old);
                Ok(())
            }
            None => Err(Error::SessionBusy {
                name: name.into(),
                reason: format!(
                    "{in_session} spawned processes are running (the limit is {})",
                    self.config.max_spawns_per_session
                ),
            }),
        }
    }

    /// Attach to a spawned execution of a session.
    pub fn attach(&self, name: &str, id: &str) -> Result<Attachment> {
        self.slot(name)?;
        let spawns = lock(&self.spawns);
        let s = spawns
            .get(id)
            .filter(|s| s.session == name)
            .ok_or_else(|| Error::ExecutionNotFound(id.into()))?;
        Ok(s.attach())
    }

    pub fn spawn_info(&self, name: &str, id: &str) -> Result<SpawnInfo> {
        self.slot(name)?;
        lock(&self.spawns)
            .get(id)
            .filter(|s| s.session == name)
            .map(|s| s.info())
            .ok_or_else(|| Error::ExecutionNotFound(id.into()))
    }

    pub fn list_spawns(&self, name: &str) -> Result<Vec<SpawnInfo>> {
        self.slot(name)?;
        Ok(lock(&self.spawns)
            .values()
            .filter(|s| s.session == name)
            .map(|s| s.info())
            .collect())
    }

    /// Forget spawns that ended longer ago than the retention period, with
    /// their replay buffers.
    fn forget_finished_spawns(&self) {
        let horizon = now().saturating_sub(self.config.spawn_retention.as_secs());
        lock(&self.spawns).retain(|_, s| s.finished_at().is_none_or(|t| t > horizon));
    }

    /// Stop every running sandbox (for an orderly shutdown).
    pub async fn shutdown(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let box_id = lock(&slot.record).box_id.clone();
            if let Err(e) = self.runtime.stop(&box_id).await {
                tracing::warn!(box_id = %box_id, error = %e, "stopping sandbox at shutdown failed");
            }
            let mut r = lock(&slot.record).clone();
            r.last_used_at = slot.last_used.load(Ordering::SeqCst) / 1000;
            let _ = self.store.save(&r);
        }
    }
}

/// Stop and remove are refused while something runs, unless forced.
fn refuse_if_busy(slot: &Slot, name: &str, force: bool) -> Result<()> {
    let active = slot.active.load(Ordering::SeqCst);
    if active > 0 && !force {
        return Err(Error::SessionBusy {
            name: name.into(),
            reason: format!("{active} execution(s) running; stop them or use --force"),
        });
    }
    Ok(())
}

fn new_slot(record: SessionRecord, last_used_ms: u64) -> Slot {
    Slot {
        record: Mutex::new(record),
        lifecycle: tokio::sync::Mutex::new(()),
        active: AtomicU32::new(0),
        last_used: AtomicU64::new(last_used_ms),
        removed: Default::default(),
    }
}

fn now() -> u64 {
    now_ms() / 1000
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
