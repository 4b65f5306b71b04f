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

/// How deep `adopt` follows directories (two descriptors per level).
const ADOPT_MAX_DEPTH: usize = 256;

/// Move a disk made before id ranges existed into `range`: ids relative to
/// the disk's old root owner keep their offset. Runs once per disk (what
/// triggers it is the missing `ids` record, which a sandbox cannot touch),
/// while the sandbox is stopped. Every step is relative to an open
/// directory, never a full path, and symlinks are changed, never followed,
/// so no tree a sandbox made can send it elsewhere or past PATH_MAX.
pub fn adopt(rootfs: &Path, range: IdRange) -> Result<()> {
    use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
    let io = |what: &str, e: rustix::io::Errno| Error::io(what.to_owned(), e.into());
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::open(rootfs, dir_flags, Mode::empty())
        .map_err(|e| io("opening a disk to move it into its id range", e))?;
    let top = rustix::fs::fstat(&root).map_err(|e| io("reading a disk's owner", e))?;
    let (old_uid, old_gid) = (top.st_uid, top.st_gid);
    if old_uid == range.root && old_gid == range.root {
        return Ok(());
    }
    tracing::info!(disk = %rootfs.display(), from = old_uid, to = range.root, "moving a disk into its id range");
    let shift = |id: u32, old: u32| {
        id.checked_sub(old)
            .filter(|offset| *offset < RANGE)
            .map(|offset| range.root + offset)
    };
    let owner = |uid: u32, gid: u32| {
        (
            shift(uid, old_uid).map(rustix::fs::Uid::from_raw),
            shift(gid, old_gid).map(rustix::fs::Gid::from_raw),
        )
    };
    let (uid, gid) = owner(top.st_uid, top.st_gid);
    rustix::fs::fchown(&root, uid, gid).map_err(|e| io("chown of a disk's root", e))?;
    let mut stack = vec![Dir::read_from(&root).map_err(|e| io("listing a disk", e))?];
    loop {
        let depth = stack.len();
        let Some(dir) = stack.last_mut() else {
            break;
        };
        let Some(entry) = dir.read() else {
            stack.pop();
            continue;
        };
        let entry = entry.map_err(|e| io("listing a disk", e))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let parent = dir.fd().map_err(|e| io("listing a disk", e))?;
        let meta = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("reading a file's owner on a disk", e))?;
        let (uid, gid) = owner(meta.st_uid, meta.st_gid);
        if uid.is_some() || gid.is_some() {
            rustix::fs::chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io("chown of a file on a disk", e))?;
        }
        if FileType::from_raw_mode(meta.st_mode) != FileType::Directory {
            continue;
        }
        if depth >= ADOPT_MAX_DEPTH {
            return Err(Error::Runtime(format!(
                "the disk has directories nested deeper than {ADOPT_MAX_DEPTH} levels; \
                 it cannot be moved into its id range"
            )));
        }
        let child = rustix::fs::openat(parent, name, dir_flags, Mode::empty())
            .map_err(|e| io("opening a directory on a disk", e))?;
        let child = Dir::new(child).map_err(|e| io("listing a disk", e))?;
        stack.push(child);
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
        assert_eq!(again.recorded(&box_a), Some(a));
        assert_eq!(again.allocate().expect("next").index, 1);
        ranges.release(a);
        assert_eq!(ranges.allocate().expect("reused").index, 0);
    }

    #[test]
    fn adopt_moves_a_legacy_disk_into_its_range_without_following_links() {
        use std::os::unix::fs::MetadataExt;
        if !crate::testing::require(
            rustix::process::geteuid().is_root(),
            "adopting a disk needs root (chown)",
        ) {
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

    /// A tree whose full paths are far past PATH_MAX is walked all the same
    /// (every step is relative to an open directory); one deeper than the
    /// limit is refused with a clear error, never half-done silently.
    #[test]
    fn adopt_walks_trees_deeper_than_path_max_and_bounds_depth() {
        use rustix::fs::{Mode, OFlags};
        if !crate::testing::require(
            rustix::process::geteuid().is_root(),
            "adopting a disk needs root (chown)",
        ) {
            return;
        }
        let nest = |root: &std::path::Path, levels: usize| {
            let name = "d".repeat(200);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let mut dir = rustix::fs::open(root, flags, Mode::empty()).expect("open");
            for _ in 0..levels {
                rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755))
                    .expect("mkdir");
                rustix::fs::chownat(
                    &dir,
                    name.as_str(),
                    Some(rustix::fs::Uid::from_raw(900_000)),
                    Some(rustix::fs::Gid::from_raw(900_000)),
                    rustix::fs::AtFlags::empty(),
                )
                .expect("chown");
                dir = rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty()).expect("cd");
            }
        };
        let range = IdRange {
            index: 5,
            root: DEFAULT_BASE + 5 * RANGE,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("deep");
        std::fs::create_dir(&deep).expect("mkdir");
        std::os::unix::fs::chown(&deep, Some(900_000), Some(900_000)).expect("chown");
        nest(&deep, 100); // about 20000 bytes of path
        adopt(&deep, range).expect("a tree past PATH_MAX is adopted");

        let too_deep = dir.path().join("too-deep");
        std::fs::create_dir(&too_deep).expect("mkdir");
        std::os::unix::fs::chown(&too_deep, Some(900_000), Some(900_000)).expect("chown");
        nest(&too_deep, ADOPT_MAX_DEPTH + 5);
        let err = adopt(&too_deep, range).expect_err("too deep");
        assert!(err.to_string().contains("nested deeper"), "{err}");
        // std's remove_dir_all works relative to open directories too.
        for tree in [deep, too_deep] {
            std::fs::remove_dir_all(&tree).expect("cleanup");
        }
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
