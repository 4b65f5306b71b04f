//! What sandboxes can leave on the host after a crash: processes, mounts
//! and cgroups. Tests that kill blink-server look for them here.

use std::path::Path;
use std::time::Duration;

/// Host pids whose real uid lies in `[first, first + count)`: the
/// processes of sandboxes whose id ranges start there (a test gives its
/// server a private id base, see [`crate::abuse::private_id_base_config`]).
pub fn processes_in_ids(first: u64, count: u64) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .is_some_and(|uid| uid >= first && uid < first + count)
        })
        .collect()
}

/// Wait up to 5 s for the processes of those ids to be gone (the kernel
/// tears a pid namespace down asynchronously); the ones left.
pub fn wait_processes_gone(first: u64, count: u64) -> Vec<u32> {
    let mut left = processes_in_ids(first, count);
    for _ in 0..200 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        left = processes_in_ids(first, count);
    }
    left
}

/// Each pid with its parent and command line, for a failure message.
pub fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .unwrap_or("?")
                .trim()
                .to_owned();
            format!("[{pid} ppid {ppid}: {}]", cmdline.trim())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mounts of the host's mount table under `dir`, as "<mount id> <mount
/// point>": a mount made again at the same place has a new id.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let id = fields.next()?;
            let point = fields.nth(3)?;
            point.starts_with(&prefix).then(|| format!("{id} {point}"))
        })
        .collect()
}

/// Every sandbox cgroup and mount of a data dir, to compare before and
/// after a restart.
pub fn traces(data_dir: &Path) -> Vec<String> {
    let mut all = mounts_under(data_dir);
    for id in box_ids(data_dir) {
        all.extend(cgroups_of(&id).into_iter().map(|g| format!("cgroup {g}")));
    }
    all
}

/// Which of `old` (from [`traces`] after a crash) are still there.
pub fn still_there(old: &[String], data_dir: &Path) -> Vec<String> {
    let now = traces(data_dir);
    old.iter().filter(|t| now.contains(t)).cloned().collect()
}

/// The distinct cgroups (`<box_id>.<boot>`) of one sandbox, over every
/// hierarchy Blink uses.
pub fn cgroups_of(box_id: &str) -> Vec<String> {
    let mut parents = vec![Path::new("/sys/fs/cgroup/blink").to_path_buf()];
    parents.extend(
        ["memory", "pids", "cpu", "unified"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join("blink")),
    );
    let mut names: Vec<String> = parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.rsplit_once('.').is_some_and(|(id, _)| id == box_id))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A process of a running sandbox (found through its cgroup) whose root
/// is the sandbox's, not the host's.
pub fn sandbox_process(box_id: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::metadata("/").ok()?;
    let groups = cgroups_of(box_id);
    let parents = ["pids", "memory", "cpu", "unified"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join("blink"))
        .chain([Path::new("/sys/fs/cgroup/blink").to_path_buf()]);
    for parent in parents {
        for group in &groups {
            let procs = std::fs::read_to_string(parent.join(group).join("cgroup.procs"))
                .unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if let Ok(root) = std::fs::metadata(format!("/proc/{pid}/root/"))
                    && (root.dev(), root.ino()) != (host.dev(), host.ino())
                {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Box ids with a directory in a data dir's sandboxes dir (made, being
/// made or being removed).
pub fn box_ids(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("sandboxes")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .map(|n| {
            let n = n.trim_start_matches('.');
            n.strip_suffix(".partial")
                .or_else(|| n.strip_suffix(".removing"))
                .unwrap_or(n)
                .to_owned()
        })
        .collect()
}
