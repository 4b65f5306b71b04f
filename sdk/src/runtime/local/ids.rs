//! Host id ranges for sandboxes. When Blink runs as root, every sandbox
//! owns a range of 65536 host uids and gids of its own (as rootless
//! container engines do with subordinate ids): sandbox uid N is host uid
//! `base + index * 65536 + N`. So per-user kernel quotas (inotify
//! instances, keys, processes) are never shared between sessions, no two
//! sessions can touch each other's files, and `useradd`, `su` and package
//! managers work inside with a full id space.
//!
//! A sandbox's range index is kept in its directory (`ids`), so it is stable
//! across restarts; indexes are reused once a sandbox is removed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Ids per sandbox: a full 16-bit id space.
pub const RANGE: u32 = 65536;
/// Default first host id of the sandbox ranges: above the ranges that
/// systemd gives containers and dynamic users (which end below 0x70000000).
pub const DEFAULT_BASE: u32 = 0x7000_0000;
/// Ranges end below 2^31: some tools treat larger ids as negative.
const LIMIT: u64 = 0x8000_0000;

/// The file in a sandbox's directory that records its range index.
const FILE: &str = "ids";

/// The ranges in use, and where they start.
#[derive(Debug)]
pub struct IdRanges {
    base: u32,
    used: Mutex<BTreeSet<u32>>,
}

/// One sandbox's host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub index: u32,
    /// Host uid and gid of the sandbox's root.
    pub root: u32,
}

impl IdRanges {
    /// Ranges starting at `base`; the ones recorded under `root` (a
    /// directory of sandbox directories) are in use.
    pub fn load(base: u32, root: &Path) -> Result<Self> {
        if u64::from(base) + u64::from(RANGE) > LIMIT {
            return Err(Error::InvalidArgument(format!(
                "sandbox id base {base} leaves no room for a range of {RANGE} ids below {LIMIT}"
            )));
        }
        let ranges = Self {
            base,
            used: Mutex::default(),
        };
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                if let Some(index) = read_index(&entry.path()) {
                    ranges.lock().insert(index);
                }
            }
        }
        Ok(ranges)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many sandboxes can exist at once.
    pub fn capacity(&self) -> u32 {
        ((LIMIT - u64::from(self.base)) / u64::from(RANGE)) as u32
    }

    fn range(&self, index: u32) -> IdRange {
        IdRange {
            index,
            root: self.base + index * RANGE,
        }
    }

    /// The range recorded in a sandbox directory, or a new one recorded
    /// there now (a disk made before ranges existed).
    pub fn for_dir(&self, dir: &Path) -> Result<IdRange> {
        if let Some(index) = read_index(dir) {
            self.lock().insert(index);
            return Ok(self.range(index));
        }
        let range = self.allocate()?;
        if let Err(e) = self.record(dir, range) {
            self.release(range);
            return Err(e);
        }
        Ok(range)
    }

    /// Take the lowest free range.
    pub fn allocate(&self) -> Result<IdRange> {
        let mut used = self.lock();
        let index = (0..self.capacity())
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                Error::Runtime(format!(
                    "all {} sandbox id ranges are in use; remove sessions or lower [sandbox] id_base",
                    self.capacity()
                ))
            })?;
        used.insert(index);
        Ok(self.range(index))
    }

    /// Write a range into a sandbox directory.
    pub fn record(&self, dir: &Path, range: IdRange) -> Result<()> {
        std::fs::write(dir.join(FILE), format!("{}\n", range.index))
            .map_err(|e| Error::io(format!("recording the id range in {}", dir.display()), e))
    }

    /// The range recorded in a sandbox directory, if any.
    pub fn recorded(&self, dir: &Path) -> Option<IdRange> {
        read_index(dir).map(|index| self.range(index))
    }

    /// Give a range back (its sandbox is gone).
    pub fn release(&self, range: IdRange) {
        self.lock().remove(&range.index);
    }
}

/// Move a disk's files into `range` if its root belongs to another id (a
/// disk made before ranges existed, or with another base): ids relative to
/// the old root keep their offset. Symlinks are changed, never followed.
/// Runs only while the sandbox is stopped.
pub fn adopt(rootfs: &Path, range: IdRange) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::symlink_metadata(rootfs)
        .map_err(|e| Error::io(format!("reading {}", rootfs.display()), e))?;
    let (old_uid, old_gid) = (top.uid(), top.gid());
    if old_uid == range.root && old_gid == range.root {
        return Ok(());
    }
    tracing::info!(disk = %rootfs.display(), from = old_uid, to = range.root, "moving a disk into its id range");
    let shift = |id: u32, old: u32| {
        id.checked_sub(old)
            .filter(|offset| *offset < RANGE)
            .map(|offset| range.root + offset)
    };
    let mut pending = vec![rootfs.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let uid = shift(meta.uid(), old_uid);
        let gid = shift(meta.gid(), old_gid);
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)
                .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
        }
        if meta.file_type().is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

fn read_index(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_distinct_recorded_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ranges = IdRanges::load(DEFAULT_BASE, dir.path()).expect("load");
        let a = ranges.allocate().expect("a");
        let b = ranges.allocate().expect("b");
        assert_eq!(a.root, DEFAULT_BASE);
        assert_eq!(b.root, DEFAULT_BASE + RANGE);
        let box_a = dir.path().join("a");
        std::fs::create_dir(&box_a).expect("mkdir");
        ranges.record(&box_a, a).expect("record");
        // A new process sees the recorded range as taken.
        let again = IdRanges::load(DEFAULT_BASE, dir.path()).expect("load");
        assert_eq!(again.for_dir(&box_a).expect("for_dir"), a);
        assert_eq!(again.allocate().expect("next").index, 1);
        ranges.release(a);
        assert_eq!(ranges.allocate().expect("reused").index, 0);
    }

    #[test]
    fn adopt_moves_a_legacy_disk_into_its_range_without_following_links() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: adopting a disk needs root (chown)");
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(rootfs.join("home/user")).expect("mkdir");
        std::fs::write(&outside, b"host").expect("write");
        std::fs::write(rootfs.join("home/user/f"), b"x").expect("write");
        std::os::unix::fs::symlink(&outside, rootfs.join("link")).expect("symlink");
        let legacy = 900_000;
        for p in ["", "home", "link"] {
            std::os::unix::fs::lchown(rootfs.join(p), Some(legacy), Some(legacy)).expect("chown");
        }
        for p in ["home/user", "home/user/f"] {
            std::os::unix::fs::lchown(rootfs.join(p), Some(legacy + 33), Some(legacy + 33))
                .expect("chown");
        }
        let range = IdRange {
            index: 3,
            root: DEFAULT_BASE + 3 * RANGE,
        };
        adopt(&rootfs, range).expect("adopt");
        let owner = |p: &str| {
            let m = std::fs::symlink_metadata(rootfs.join(p)).expect("stat");
            (m.uid(), m.gid())
        };
        assert_eq!(owner(""), (range.root, range.root));
        assert_eq!(owner("link"), (range.root, range.root));
        assert_eq!(owner("home/user/f"), (range.root + 33, range.root + 33));
        let host = std::fs::metadata(&outside).expect("stat");
        assert_eq!(host.uid(), 0, "the link's target outside was not touched");
        // A second start changes nothing.
        adopt(&rootfs, range).expect("again");
        assert_eq!(owner("home/user/f"), (range.root + 33, range.root + 33));
    }

    #[test]
    fn capacity_and_exhaustion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = (LIMIT - 2 * u64::from(RANGE)) as u32;
        let ranges = IdRanges::load(base, dir.path()).expect("load");
        assert_eq!(ranges.capacity(), 2);
        ranges.allocate().expect("1");
        ranges.allocate().expect("2");
        let err = ranges.allocate().expect_err("full");
        assert!(err.to_string().contains("id ranges are in use"), "{err}");
        assert!(IdRanges::load(u32::MAX - 10, dir.path()).is_err());
    }
}
