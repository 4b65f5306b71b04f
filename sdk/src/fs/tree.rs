//! Removing a whole directory tree however deep it is: a sandbox can nest
//! directories far past PATH_MAX and past any descriptor or stack limit, and
//! removing its disk must neither crash the server (a recursive walk
//! overflows the stack) nor fail (a descriptor per level runs out).
//!
//! One directory is open at a time; going back up is `openat(dir, "..")`,
//! checked against the device and inode remembered on the way down. That is
//! sound only for a tree nothing else changes meanwhile, which is what it is
//! for: a stopped sandbox's disk, already renamed out of the way.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Remove `path` and everything below it, never following a symlink.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => {
            return Err(std::io::Error::other(format!(
                "refusing to remove {}",
                path.display()
            )));
        }
    };
    let parent_path = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parent = rustix::fs::open(parent_path, dir_flags(), Mode::empty())?;
    match remove_at(parent, name) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// One level on the way down: the directory's name in its parent and the
/// identity its parent must have when we come back up.
struct Level {
    name: OsString,
    parent_id: (u64, u64),
}

fn identity(fd: impl AsFd) -> Result<(u64, u64), Errno> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn is_dir(dir: impl AsFd, name: &OsStr) -> Result<bool, Errno> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

/// Names read from a directory at once (memory stays bounded for a
/// directory of millions of entries).
const BATCH: usize = 4096;

/// Up to `BATCH` entries of a directory, other than `.` and `..`.
fn entries(dir: impl AsFd) -> Result<Vec<OsString>, Errno> {
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while names.len() < BATCH
        && let Some(entry) = reader.read()
    {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(OsStr::from_bytes(bytes).to_os_string());
        }
    }
    Ok(names)
}

fn remove_at(parent: OwnedFd, name: &OsStr) -> Result<(), Errno> {
    if !is_dir(&parent, name)? {
        return rustix::fs::unlinkat(&parent, name, AtFlags::empty());
    }
    let top_id = identity(&parent)?;
    let mut current = rustix::fs::openat(&parent, name, dir_flags(), Mode::empty())?;
    drop(parent);
    let mut path = vec![Level {
        name: name.to_os_string(),
        parent_id: top_id,
    }];
    'levels: while !path.is_empty() {
        let batch = entries(&current)?;
        for entry in &batch {
            if is_dir(&current, entry)? {
                let id = identity(&current)?;
                current =
                    rustix::fs::openat(&current, entry.as_os_str(), dir_flags(), Mode::empty())?;
                path.push(Level {
                    name: entry.clone(),
                    parent_id: id,
                });
                continue 'levels;
            }
            rustix::fs::unlinkat(&current, entry.as_os_str(), AtFlags::empty())?;
        }
        if !batch.is_empty() {
            continue;
        }
        // Empty: go up and remove it.
        let Some(level) = path.pop() else { break };
        let up = rustix::fs::openat(&current, "..", dir_flags(), Mode::empty())?;
        if identity(&up)? != level.parent_id {
            return Err(Errno::STALE);
        }
        rustix::fs::unlinkat(&up, level.name.as_os_str(), AtFlags::REMOVEDIR)?;
        current = up;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_trees_deeper_than_any_stack_or_descriptor_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").expect("write");
        let root = dir.path().join("tree");
        std::fs::create_dir(&root).expect("mkdir");
        // 5000 levels of 100-byte names (~500 KB of path), with files and
        // a symlink pointing out on the way.
        let name = "n".repeat(100);
        let mut fd = rustix::fs::open(&root, dir_flags(), Mode::empty()).expect("open");
        for i in 0..5000 {
            if i % 1000 == 0 {
                let f = rustix::fs::openat(
                    &fd,
                    "file",
                    OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .expect("file");
                drop(f);
                rustix::fs::symlinkat(&outside, &fd, "link").expect("symlink");
            }
            rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o755)).expect("mkdir");
            fd = rustix::fs::openat(&fd, name.as_str(), dir_flags(), Mode::empty()).expect("cd");
        }
        // A wide directory too: more entries than one batch.
        for i in 0..(BATCH + 100) {
            let f = rustix::fs::openat(
                &fd,
                format!("f{i}").as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .expect("file");
            drop(f);
        }
        drop(fd);
        remove_tree(&root).expect("removed");
        assert!(!root.exists());
        assert_eq!(std::fs::read(&outside).expect("kept"), b"keep");
        // Missing is fine; a plain file goes too.
        remove_tree(&root).expect("already gone");
        remove_tree(&outside).expect("a file");
        assert!(!outside.exists());
    }
}
