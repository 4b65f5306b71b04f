//! Resource limits for local sandboxes: cgroup v2 where its controllers are
//! delegated to us, cgroup v1 where its hierarchies are writable, rlimits
//! otherwise. Which one applied is reported per resource.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::runtime::Limits;
use crate::types::ResourceUsage;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const GROUP: &str = "blink";

/// The mechanism that enforces limits on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitBackend {
    /// Unified hierarchy at the given mount with memory, pids and cpu.
    CgroupV2(PathBuf),
    /// Legacy per-controller hierarchies.
    CgroupV1,
    /// setrlimit on each process: memory as address space, pids as
    /// RLIMIT_NPROC of the sandbox uid; no CPU quota.
    Rlimit,
}

impl LimitBackend {
    /// Find the best mechanism that works for this process.
    pub fn detect() -> Self {
        for unified in [
            Path::new(CGROUP_ROOT),
            &Path::new(CGROUP_ROOT).join("unified"),
        ] {
            if let Ok(controllers) = std::fs::read_to_string(unified.join("cgroup.controllers")) {
                let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
                if has("memory") && has("pids") && probe_dir(&unified.join(GROUP)) {
                    return Self::CgroupV2(unified.to_path_buf());
                }
            }
        }
        let v1 = ["memory", "pids", "cpu"]
            .iter()
            .all(|c| probe_dir(&Path::new(CGROUP_ROOT).join(c).join(GROUP)));
        if v1 { Self::CgroupV1 } else { Self::Rlimit }
    }

    /// Mechanism name per resource, for reports.
    pub fn describe(&self) -> std::collections::BTreeMap<String, String> {
        let (memory, pids, cpu) = match self {
            Self::CgroupV2(_) => ("cgroup-v2", "cgroup-v2", "cgroup-v2"),
            Self::CgroupV1 => ("cgroup-v1", "cgroup-v1", "cgroup-v1"),
            Self::Rlimit => ("rlimit-as", "rlimit-nproc", "none"),
        };
        [("memory", memory), ("pids", pids), ("cpu", cpu)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// Can we create (and remove) a directory here?
fn probe_dir(parent: &Path) -> bool {
    if std::fs::create_dir_all(parent).is_err() {
        return false;
    }
    let probe = parent.join(format!("probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// The parent groups holding one group per sandbox boot.
fn parents(backend: &LimitBackend) -> Vec<PathBuf> {
    match backend {
        LimitBackend::Rlimit => Vec::new(),
        LimitBackend::CgroupV2(root) => vec![root.join(GROUP)],
        LimitBackend::CgroupV1 => ["memory", "pids", "cpu", "freezer", "cpuacct"]
            .iter()
            .map(|c| Path::new(CGROUP_ROOT).join(c).join(GROUP))
            .collect(),
    }
}

/// Remove the groups of these sandboxes, which an earlier process of this
/// data dir left when it was killed (the caller holds the data dir, so
/// none of them is in use): whatever still runs in one is killed first,
/// then the group goes, young or old.
pub fn remove_left_by(backend: &LimitBackend, boxes: &std::collections::HashSet<String>) {
    for parent in parents(backend) {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owned = name
                .rsplit_once('.')
                .is_some_and(|(id, _boot)| boxes.contains(id));
            if !owned || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let group = SandboxCgroup {
                dirs: vec![entry.path()],
            };
            group.remove();
            tracing::info!(cgroup = %entry.path().display(), "removed a cgroup left by an earlier process");
        }
    }
}

/// Remove sandbox cgroups left by processes that died without cleaning
/// up. Only empty groups can be removed (rmdir fails on a live one), and
/// only ones older than a minute, so a group another process has just made
/// for a sandbox it is starting is left alone.
pub fn remove_stale(backend: &LimitBackend) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for parent in parents(backend) {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = entry.file_type().is_ok_and(|t| t.is_dir())
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < old);
            if stale && std::fs::remove_dir(&path).is_ok() {
                tracing::debug!(cgroup = %path.display(), "removed stale sandbox cgroup");
            }
        }
    }
}

/// The cgroup(s) of one sandbox; `remove` deletes them once its processes are gone.
#[derive(Debug)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// Create the sandbox's cgroup and write its limits.
    pub fn create(
        backend: &LimitBackend,
        id: &str,
        limits: &Limits,
    ) -> std::io::Result<Option<Self>> {
        // One group per boot of the sandbox (`<id>.<boot>`): a watcher of an
        // earlier boot that cleans up late can never remove a newer group.
        let boot = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("{id}.{}", &boot[..8]);
        let id = id.as_str();
        let dirs: Vec<PathBuf> = match backend {
            LimitBackend::Rlimit => return Ok(None),
            LimitBackend::CgroupV2(root) => {
                let parent = root.join(GROUP);
                // Delegate the controllers to children of our group.
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                vec![parent.join(id)]
            }
            LimitBackend::CgroupV1 => {
                let mut dirs: Vec<PathBuf> = ["memory", "pids", "cpu"]
                    .iter()
                    .map(|c| Path::new(CGROUP_ROOT).join(c).join(GROUP).join(id))
                    .collect();
                // The freezer, where there is one, for consistent snapshots;
                // cpuacct, where it is a hierarchy of its own, for CPU time.
                // (Co-mounted with cpu, cpuacct is the same directory.)
                let real = |p: &Path| std::fs::canonicalize(p).ok();
                for optional in ["freezer", "cpuacct"] {
                    let hierarchy = Path::new(CGROUP_ROOT).join(optional);
                    let parent = hierarchy.join(GROUP);
                    if !hierarchy.join("cgroup.procs").exists()
                        || std::fs::create_dir_all(&parent).is_err()
                    {
                        continue;
                    }
                    let seen = dirs
                        .iter()
                        .any(|d| d.parent().and_then(real) == real(&parent));
                    if !seen {
                        dirs.push(parent.join(id));
                    }
                }
                dirs
            }
        };
        for dir in &dirs {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let group = Self { dirs };
        group.apply(backend, limits)?;
        Ok(Some(group))
    }

    /// Write `limits` into the group: at creation, and on a running
    /// sandbox (the kernel applies cgroup limits at once; a memory limit
    /// below what the group uses makes it reclaim, and under cgroup v1
    /// refuses with EBUSY when it cannot).
    pub fn apply(&self, backend: &LimitBackend, limits: &Limits) -> std::io::Result<()> {
        let write = |file: &str, value: String| -> std::io::Result<()> {
            for dir in &self.dirs {
                let path = dir.join(file);
                if path.exists() {
                    std::fs::write(&path, &value)?;
                }
            }
            Ok(())
        };
        match backend {
            LimitBackend::CgroupV2(_) => {
                let mem = limits
                    .memory_mib
                    .map_or("max".into(), |m| (m << 20).to_string());
                write("memory.max", mem)?;
                write("memory.swap.max", "0".into()).ok();
                write(
                    "pids.max",
                    limits.pids.map_or("max".into(), |p| p.to_string()),
                )?;
                let cpu = limits.cpus.map_or("max 100000".into(), |c| {
                    format!("{} 100000", (c * 100_000.0).round().max(1000.0) as u64)
                });
                write("cpu.max", cpu)?;
            }
            LimitBackend::CgroupV1 => {
                let mem = limits
                    .memory_mib
                    .map_or("-1".into(), |m| (m << 20).to_string());
                write("memory.limit_in_bytes", mem)?;
                write(
                    "pids.max",
                    limits.pids.map_or("max".into(), |p| p.to_string()),
                )?;
                write("cpu.cfs_period_us", "100000".into())?;
                let quota = limits.cpus.map_or("-1".into(), |c| {
                    ((c * 100_000.0).round().max(1000.0) as u64).to_string()
                });
                write("cpu.cfs_quota_us", quota)?;
            }
            LimitBackend::Rlimit => {}
        }
        Ok(())
    }

    /// The group's counters, as the kernel keeps them.
    pub fn usage(&self, backend: &LimitBackend) -> ResourceUsage {
        let read = |file: &str| {
            self.dirs
                .iter()
                .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
        };
        let number = |file: &str| read(file).and_then(|t| t.trim().parse::<u64>().ok());
        let keyed = |file: &str, key: &str| read(file).and_then(|t| keyed_value(&t, key));
        match backend {
            LimitBackend::CgroupV2(_) => ResourceUsage {
                source: "cgroup-v2".into(),
                memory_bytes: number("memory.current"),
                memory_peak_bytes: number("memory.peak"),
                cpu_usec: keyed("cpu.stat", "usage_usec"),
                cpu_throttled_periods: keyed("cpu.stat", "nr_throttled"),
                cpu_throttled_usec: keyed("cpu.stat", "throttled_usec"),
                pids: number("pids.current"),
                oom_kills: keyed("memory.events", "oom_kill"),
                ..ResourceUsage::default()
            },
            LimitBackend::CgroupV1 => ResourceUsage {
                source: "cgroup-v1".into(),
                memory_bytes: number("memory.usage_in_bytes"),
                memory_peak_bytes: number("memory.max_usage_in_bytes"),
                cpu_usec: number("cpuacct.usage").map(|ns| ns / 1000),
                cpu_throttled_periods: keyed("cpu.stat", "nr_throttled"),
                cpu_throttled_usec: keyed("cpu.stat", "throttled_time").map(|ns| ns / 1000),
                pids: number("pids.current"),
                oom_kills: keyed("memory.oom_control", "oom_kill"),
                ..ResourceUsage::default()
            },
            LimitBackend::Rlimit => ResourceUsage::default(),
        }
    }

    /// `cgroup.procs` paths, prepared before fork for `attach_self`.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Freeze (or thaw) every process of the sandbox, waiting until they
    /// are; false where no freezer is available (rlimits, or a v1 host
    /// without the freezer hierarchy).
    pub fn freeze(&self, frozen: bool) -> std::io::Result<bool> {
        for dir in &self.dirs {
            let (file, value, done_file, done) = if dir.join("cgroup.freeze").exists() {
                (
                    "cgroup.freeze",
                    if frozen { "1" } else { "0" },
                    "cgroup.events",
                    if frozen { "frozen 1" } else { "frozen 0" },
                )
            } else if dir.join("freezer.state").exists() {
                let state = if frozen { "FROZEN" } else { "THAWED" };
                ("freezer.state", state, "freezer.state", state)
            } else {
                continue;
            };
            std::fs::write(dir.join(file), value)?;
            // Bounded: a freeze waits for tasks in uninterruptible sleep.
            for _ in 0..1000 {
                let now = std::fs::read_to_string(dir.join(done_file)).unwrap_or_default();
                if now.lines().any(|l| l.trim() == done) {
                    return Ok(true);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            return Err(std::io::Error::other(format!(
                "the sandbox's processes did not become {} within 5 s",
                if frozen { "frozen" } else { "thawed" }
            )));
        }
        Ok(false)
    }

    /// SIGKILL every process in the group: `cgroup.kill` where the kernel
    /// has it (v2), else each pid of `cgroup.procs` until none is left.
    fn kill_members(&self) {
        for dir in &self.dirs {
            if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for _ in 0..50 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill(2) on a member of a group only Blink's
                    // sandboxes of this data dir are put in.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Remove the cgroup directories once the sandbox has ended: a process
    /// still in one (say an nsenter wrapper outside the sandbox's pid
    /// namespace) is killed first, so no group outlives its sandbox.
    pub fn remove(&self) {
        // Frozen tasks would not die (cgroup v1).
        let _ = self.freeze(false);
        self.kill_members();
        for dir in &self.dirs {
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
    }
}

/// `key value` lines (`cpu.stat`, `memory.events`): the value of `key`.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Usage without cgroups: summed over the processes in the pid namespace
/// of `init_pid` (a sandbox's init), from `/proc`. No peak and no OOM
/// count: nothing keeps them.
pub fn proc_usage(init_pid: u32) -> ResourceUsage {
    use std::os::unix::fs::MetadataExt;
    let namespace = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let mut usage = ResourceUsage {
        source: "proc".into(),
        ..ResourceUsage::default()
    };
    let Some(sandbox) = namespace(&init_pid.to_string()) else {
        return usage;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    // SAFETY: as above.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (mut threads, mut rss, mut cpu_ticks) = (0u64, 0u64, 0u64);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if namespace(pid) != Some(sandbox) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14, stime 15, num_threads 20.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        cpu_ticks += field(14) + field(15);
        threads += field(20).max(1);
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
        rss += statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0)
            * page;
    }
    usage.memory_bytes = Some(rss);
    usage.cpu_usec = Some(cpu_ticks * 1_000_000 / ticks);
    usage.pids = Some(threads);
    usage
}

/// Moves the calling process into the given cgroups. Runs between fork and
/// exec, so it only makes raw syscalls on memory prepared before the fork.
///
/// # Safety
/// Must only be called in a freshly forked child.
pub unsafe fn attach_self(procs_files: &[CString]) -> std::io::Result<()> {
    for file in procs_files {
        // SAFETY: file is a valid NUL-terminated path; the buffer is static.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Apply rlimits between fork and exec (rlimit backend only).
///
/// # Safety
/// Must only be called in a freshly forked child.
pub unsafe fn apply_rlimits(limits: &Limits) -> std::io::Result<()> {
    let set = |resource, value: u64| -> std::io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: plain syscall with a valid pointer.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    if let Some(m) = limits.memory_mib {
        set(libc::RLIMIT_AS, m << 20)?;
    }
    if let Some(p) = limits.pids {
        set(libc::RLIMIT_NPROC, p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_counters_are_read_by_name() {
        let stat = "usage_usec 1234\nnr_periods 10\nnr_throttled 3\nthrottled_usec 99\n";
        assert_eq!(keyed_value(stat, "usage_usec"), Some(1234));
        assert_eq!(keyed_value(stat, "nr_throttled"), Some(3));
        assert_eq!(keyed_value(stat, "nr"), None);
        let events = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(2));
    }

    #[test]
    fn without_cgroups_usage_is_summed_over_a_pid_namespace() {
        // This test's own pid namespace: it holds at least this process,
        // its threads, the memory it maps and the CPU it has used.
        let burn = std::time::Instant::now();
        while burn.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        let usage = proc_usage(std::process::id());
        assert_eq!(usage.source, "proc");
        assert!(usage.pids.unwrap_or(0) >= 2, "{usage:?}");
        assert!(usage.memory_bytes.unwrap_or(0) > 1 << 20, "{usage:?}");
        assert!(usage.cpu_usec.unwrap_or(0) >= 10_000, "{usage:?}");
        assert_eq!((usage.memory_peak_bytes, usage.oom_kills), (None, None));
        // A process that does not exist has nothing to sum.
        assert_eq!(proc_usage(u32::MAX).pids, None);
    }
}
