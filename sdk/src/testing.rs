//! Test support: `FakeRuntime`, an in-memory **test double** of the
//! sandbox runtime, so the manager's policies (idle stop, warm restart,
//! spawn caps, recovery, busy refusals) are tested in milliseconds without
//! bubblewrap. Nothing here isolates anything; real sandboxes are tested
//! through the `local` runtime.
//!
//! Its "programs" are a few words: `true`, `false`, `echo ARGS`, `sleep SECS`
//! (ends early when killed) and `cat` (stdin to stdout); anything else exits
//! 127. A sandbox's "loopback" is ports of the host's 127.0.0.1 the fake
//! hands out (`listen_loopback`, `serve_loopback`) and connects to
//! (`connect_loopback`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::runtime::exec::{ExecControl, ExecSpec, Execution, PtySize};
use crate::runtime::{
    Applied, IsolationClass, Limits, LimitsApplied, ResourceUsage, Runtime, RuntimeInfo,
    SandboxSpec,
};
use crate::types::ExitStatus;

/// A fake disk's size when its spec names none (the local runtime's
/// default).
const FAKE_DISK_MIB: u64 = crate::runtime::local::DEFAULT_DISK_MIB;

/// What the fake knows of one sandbox.
#[derive(Debug, Default, Clone)]
pub struct FakeSandbox {
    pub running: bool,
    pub starts: u32,
    pub stops: u32,
    /// Files written into it (copied scripts).
    pub files: HashSet<String>,
    /// The limits it runs with now: its spec's at start, changed by
    /// `update_limits` while it runs.
    pub limits: Limits,
    /// Its disk's size in MiB: its spec's at creation, grown at start.
    pub disk_mib: u64,
    /// What `usage` reports while it runs (set by a test).
    pub usage: ResourceUsage,
    /// Dead, though `is_running` still says it runs (as a micro-VM whose
    /// init ended on its own, until its runtime is asked).
    pub died_unnoticed: bool,
}

/// An in-memory runtime (a test double; see the module docs).
#[derive(Debug, Default)]
pub struct FakeRuntime {
    sandboxes: Mutex<HashMap<String, FakeSandbox>>,
    /// Kill switches of running executions, by sandbox.
    executions: Mutex<HashMap<String, Vec<watch::Sender<bool>>>>,
    /// A sandbox's loopback ports, by (sandbox, port): where on the host's
    /// 127.0.0.1 each one really is.
    loopback: Mutex<HashMap<(String, u16), std::net::SocketAddr>>,
}

impl FakeRuntime {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// What the fake knows of a sandbox, if it exists.
    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        lock(&self.sandboxes).get(id).cloned()
    }

    /// Whether the sandbox runs right now.
    pub fn is_running_now(&self, id: &str) -> bool {
        lock(&self.sandboxes).get(id).is_some_and(|b| b.running)
    }

    /// Every sandbox id with a disk.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Give a sandbox the usage figures `usage` reports while it runs.
    pub fn set_usage(&self, id: &str, usage: ResourceUsage) {
        if let Some(b) = lock(&self.sandboxes).get_mut(id) {
            b.usage = usage;
        }
    }

    /// Make a disk behind the manager's back (an orphan left by a crash).
    pub fn plant(&self, id: &str) {
        lock(&self.sandboxes).insert(id.into(), FakeSandbox::default());
    }

    /// The sandbox dies on its own (its executions are killed).
    pub fn crash(&self, id: &str) {
        self.kill_all(id);
        if let Some(b) = lock(&self.sandboxes).get_mut(id) {
            b.running = false;
        }
    }

    /// The sandbox dies without `is_running` noticing: only `is_alive`
    /// (and an exec) find out.
    pub fn die_unnoticed(&self, id: &str) {
        self.kill_all(id);
        if let Some(b) = lock(&self.sandboxes).get_mut(id) {
            b.died_unnoticed = true;
        }
    }

    /// Something listening on `port` of a running sandbox's loopback (a
    /// program of the session, for `connect_loopback`).
    pub async fn serve_loopback(&self, id: &str, port: u16) -> Result<tokio::net::TcpListener> {
        self.listen_loopback(id, port).await
    }

    fn kill_all(&self, id: &str) {
        for kill in lock(&self.executions).remove(id).unwrap_or_default() {
            let _ = kill.send(true);
        }
    }

    fn running_or_dead(&self, id: &str) -> Result<()> {
        if self.is_running_now(id) {
            Ok(())
        } else {
            Err(Error::SandboxDead {
                id: id.into(),
                reason: "it is not running".into(),
            })
        }
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut FakeSandbox) -> T) -> Result<T> {
        lock(&self.sandboxes)
            .get_mut(id)
            .map(f)
            .ok_or_else(|| Error::SandboxDead {
                id: id.into(),
                reason: "it has no disk".into(),
            })
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "fake".into(),
            isolation: IsolationClass::Namespace,
            limits: Default::default(),
            details: Default::default(),
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<()> {
        let mut boxes = lock(&self.sandboxes);
        if boxes.contains_key(&spec.id) {
            return Err(Error::Runtime(format!(
                "sandbox {} already has a disk",
                spec.id
            )));
        }
        boxes.insert(
            spec.id.clone(),
            FakeSandbox {
                disk_mib: spec.limits.disk_mib.unwrap_or(FAKE_DISK_MIB),
                ..FakeSandbox::default()
            },
        );
        Ok(())
    }

    fn disk_usage(&self, id: &str) -> Option<crate::types::DiskUsage> {
        lock(&self.sandboxes)
            .get(id)
            .map(|b| crate::types::DiskUsage {
                size_bytes: b.disk_mib << 20,
                used_bytes: 0,
                layers: 0,
                layers_bytes: 0,
            })
    }

    /// Like a cgroup runtime: CPU, memory and processes change while it
    /// runs, the disk grows at the next start.
    async fn update_limits(&self, id: &str, limits: &Limits) -> Result<LimitsApplied> {
        self.with(id, |b| {
            if !b.running {
                return LimitsApplied::NEXT_START;
            }
            b.limits = Limits {
                disk_mib: b.limits.disk_mib,
                ..limits.clone()
            };
            LimitsApplied {
                memory: Applied::Live,
                cpus: Applied::Live,
                pids: Applied::Live,
                disk: Applied::NextStart,
            }
        })
    }

    fn usage(&self, id: &str) -> ResourceUsage {
        let boxes = lock(&self.sandboxes);
        let sandbox = boxes.get(id);
        let mut usage = match sandbox {
            Some(b) if b.running => b.usage.clone(),
            _ => ResourceUsage {
                source: "none".into(),
                ..ResourceUsage::default()
            },
        };
        usage.disk_used_bytes = sandbox.map(|_| 0);
        usage
    }

    fn exists(&self, id: &str) -> bool {
        lock(&self.sandboxes).contains_key(id)
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<()> {
        self.with(&spec.id, |b| {
            if !b.running || b.died_unnoticed {
                b.running = true;
                b.starts += 1;
                b.died_unnoticed = false;
                b.limits = spec.limits.clone();
                b.disk_mib = b.disk_mib.max(spec.limits.disk_mib.unwrap_or(0));
            }
        })
    }

    fn is_running(&self, id: &str) -> bool {
        lock(&self.sandboxes).get(id).is_some_and(|b| b.running)
    }

    async fn is_alive(&self, id: &str) -> bool {
        lock(&self.sandboxes)
            .get(id)
            .is_some_and(|b| b.running && !b.died_unnoticed)
    }

    async fn connect_loopback(&self, id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        self.running_or_dead(id)?;
        let refused = || {
            Error::io(
                format!("connecting to port {port} in sandbox {id}"),
                std::io::ErrorKind::ConnectionRefused.into(),
            )
        };
        let addr = lock(&self.loopback)
            .get(&(id.to_string(), port))
            .copied()
            .ok_or_else(refused)?;
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|_| refused())
    }

    async fn listen_loopback(&self, id: &str, port: u16) -> Result<tokio::net::TcpListener> {
        self.running_or_dead(id)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("binding a fake loopback port", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("a fake loopback port", e))?;
        let port = if port == 0 { addr.port() } else { port };
        let mut ports = lock(&self.loopback);
        if ports.contains_key(&(id.to_string(), port)) {
            return Err(Error::io(
                format!("listening on port {port} in sandbox {id}"),
                std::io::ErrorKind::AddrInUse.into(),
            ));
        }
        ports.insert((id.to_string(), port), addr);
        Ok(listener)
    }

    async fn stop(&self, id: &str) -> Result<()> {
        self.kill_all(id);
        if let Some(b) = lock(&self.sandboxes).get_mut(id)
            && b.running
        {
            b.running = false;
            b.stops += 1;
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.kill_all(id);
        lock(&self.sandboxes).remove(id);
        Ok(())
    }

    async fn retain(&self, keep: &HashSet<String>) -> Result<()> {
        let gone: Vec<String> = lock(&self.sandboxes)
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id).await?;
        }
        Ok(())
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Execution> {
        if !self.is_alive(id).await {
            return Err(Error::SandboxDead {
                id: id.into(),
                reason: "it is not running".into(),
            });
        }
        let (kill_tx, kill_rx) = watch::channel(false);
        lock(&self.executions)
            .entry(id.into())
            .or_default()
            .push(kill_tx.clone());
        let (stdin_w, stdin_r) = tokio::io::duplex(64 * 1024);
        let (stdout_w, stdout_r) = tokio::io::duplex(64 * 1024);
        let (_stderr_w, stderr_r) = tokio::io::duplex(1024);
        let (status_tx, status_rx) = watch::channel(None);
        tokio::spawn(run_program(
            spec.argv, stdin_r, stdout_w, kill_rx, status_tx,
        ));
        Ok(Execution {
            stdin: Some(Box::pin(stdin_w)),
            stdout: Some(Box::pin(stdout_r)),
            stderr: Some(Box::pin(stderr_r)),
            control: Arc::new(FakeControl {
                kill: kill_tx,
                status: status_rx,
            }),
            tty: spec.tty.is_some(),
        })
    }

    async fn copy_in(&self, id: &str, _host_src: &Path, dest: &str, _mode: u32) -> Result<()> {
        self.with(id, |b| {
            b.files.insert(dest.into());
        })
    }

    async fn remove_file(&self, id: &str, path: &str) -> Result<()> {
        self.with(id, |b| {
            b.files.remove(path);
        })
    }
}

const KILLED: ExitStatus = ExitStatus {
    code: 128 + 9,
    signal: Some(9),
};

async fn run_program(
    argv: Vec<String>,
    mut stdin: tokio::io::DuplexStream,
    mut stdout: tokio::io::DuplexStream,
    mut kill: watch::Receiver<bool>,
    status: watch::Sender<Option<ExitStatus>>,
) {
    let exited = |code| ExitStatus { code, signal: None };
    let work = async {
        match argv.first().map(String::as_str) {
            Some("true") => exited(0),
            Some("false") => exited(1),
            Some("echo") => {
                let line = format!("{}\n", argv[1..].join(" "));
                let _ = stdout.write_all(line.as_bytes()).await;
                exited(0)
            }
            Some("sleep") => {
                let secs: f64 = argv.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                exited(0)
            }
            Some("cat") => {
                let mut buf = vec![0u8; 16384];
                loop {
                    match stdin.read(&mut buf).await {
                        Ok(0) | Err(_) => break exited(0),
                        Ok(n) => {
                            if stdout.write_all(&buf[..n]).await.is_err() {
                                break exited(1);
                            }
                        }
                    }
                }
            }
            _ => exited(127),
        }
    };
    let outcome = tokio::select! {
        s = work => s,
        _ = kill.wait_for(|k| *k) => KILLED,
    };
    drop(stdout);
    let _ = status.send(Some(outcome));
}

struct FakeControl {
    kill: watch::Sender<bool>,
    status: watch::Receiver<Option<ExitStatus>>,
}

#[async_trait]
impl ExecControl for FakeControl {
    async fn wait(&self) -> Result<ExitStatus> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Runtime("fake execution vanished".into()))?;
        Ok(status.unwrap_or(KILLED))
    }

    fn try_status(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    fn signal(&self, _signal: i32) -> Result<()> {
        self.kill()
    }

    fn kill(&self) -> Result<()> {
        let _ = self.kill.send(true);
        Ok(())
    }

    fn resize(&self, _size: PtySize) -> Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A test that cannot run here says so by name: on stderr, and as a line in
/// the file `$BLINK_SKIP_LOG` names, which `scripts/test.sh` counts as
/// skipped (not passed) in its summary. The test then returns.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed test");
    eprintln!("SKIPPED: {name}: {reason}");
    if let Some(path) = std::env::var_os("BLINK_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(log, "{name}: {reason}");
        }
    }
}

/// A capability a test needs: when it is missing the test is skipped (see
/// [`skip`]), except under `CI=true`, where a missing capability fails.
pub fn require(available: bool, what: &str) -> bool {
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to run this test: {what}"
        );
        skip(what);
    }
    available
}

/// Open a manager again on a data dir in the same process (a test's
/// "after a restart"). The last manager's background tasks (idle reaper,
/// pool) may still hold it across an await for a moment after the test
/// dropped its handle, and with it the data dir's lock: `open` is asked
/// again while it answers `DataDirLocked`, for up to 10 s.
pub async fn reopen<F, Fut>(mut open: F) -> Result<std::sync::Arc<crate::Manager>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<std::sync::Arc<crate::Manager>>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open().await {
            Err(crate::Error::DataDirLocked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}
