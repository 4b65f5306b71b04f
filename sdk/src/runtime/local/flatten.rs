//! Flattening disk layers: the content of a new layer and the top of a full
//! chain under it (layers.rs) merged into one new layer, as overlayfs shows
//! them (crate::archive::merged), deletions and opaque directories
//! included, so the merged layer over the rest of the chain shows exactly
//! what the whole chain did.
//!
//! Everything is read from read-only mounts and written into a fresh
//! filesystem no sandbox has seen, in a mount namespace of one thread's
//! own; every write goes through `ConfinedRoot`, no symlink is followed.
//! Owners move into the new layer's id range. Kept: contents, modes
//! (set-id bits too), owners, times, symlinks, hard links, FIFOs, `user.*`
//! extended attributes and file capabilities (their root id moved too).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::disk_image::Templates;
use super::ids::RANGE;
use super::layers::Layer;
use crate::archive::ChangeLayer;
use crate::archive::merged::{self, Change, Kind};
use crate::error::{Error, Result};
use crate::fs::{ConfinedRoot, OpenFlags};

/// The id files outside a layer's range show as (`nobody`).
const NOBODY: u32 = 65534;

/// Merge `content` (a disk image whose files have `content_root`'s ids)
/// over `below` (topmost first) into a new disk image `dest` of `mib` MiB
/// whose files get `id_root`'s ids. `work` is a scratch directory for
/// mount points. Blocking.
pub fn flatten(
    content: &Path,
    content_root: u32,
    below: &[Layer],
    dest: &Path,
    work: &Path,
    templates: &Templates,
    mib: u64,
) -> Result<()> {
    templates
        .make_disk(mib, dest)
        .map_err(|e| Error::io("making a disk image", e))?;
    let content = content.to_path_buf();
    let below = below.to_vec();
    let (dest, work) = (dest.to_path_buf(), work.to_path_buf());
    super::mounts::in_private_mounts(move |mounts| {
        let mut stack = vec![ChangeLayer {
            upper: mounts.mount_read_only(&content, &work.join("new"))?,
            id_root: content_root,
        }];
        for (i, layer) in below.iter().enumerate() {
            stack.push(ChangeLayer {
                upper: mounts.mount_read_only(&layer.image, &work.join(i.to_string()))?,
                id_root: layer.id_root,
            });
        }
        let target = mounts.mount(&dest, &work.join("into"))?;
        write_merged(&stack, &target, content_root)
    })
}

/// Write the merged tree of `stack` into the directory `target`, ids moved
/// into `id_root`'s range.
pub fn write_merged(stack: &[ChangeLayer], target: &Path, id_root: u32) -> Result<()> {
    let root = ConfinedRoot::open(target)?;
    let mut writer = Writer {
        root,
        id_root,
        links: HashMap::new(),
        dirs: Vec::new(),
    };
    merged::walk(stack, &mut |c| writer.change(c))?;
    // Directories get their times last: writing into them changed them.
    for (path, mtime) in writer.dirs.iter().rev() {
        writer.root.set_times(path, Some(*mtime), Some(*mtime))?;
    }
    Ok(())
}

struct Writer {
    root: ConfinedRoot,
    id_root: u32,
    /// Files with more than one name: the first name written, by source.
    links: HashMap<(u64, u64), PathBuf>,
    dirs: Vec<(PathBuf, std::time::SystemTime)>,
}

impl Writer {
    fn id(&self, host: u32, from: u32) -> u32 {
        self.id_root
            + host
                .checked_sub(from)
                .filter(|id| *id < RANGE)
                .unwrap_or(NOBODY)
    }

    fn owner(&self, c: &Change<'_>) -> (u32, u32) {
        (
            self.id(c.meta.uid(), c.id_root),
            self.id(c.meta.gid(), c.id_root),
        )
    }

    fn change(&mut self, c: &Change<'_>) -> Result<()> {
        let inside = Path::new("/").join(c.path);
        let mode = c.meta.mode() & 0o7777;
        let (uid, gid) = self.owner(c);
        let mtime = UNIX_EPOCH
            + Duration::new(
                c.meta.mtime().max(0) as u64,
                c.meta.mtime_nsec().clamp(0, 999_999_999) as u32,
            );
        match c.kind {
            Kind::Dir { opaque } => {
                if !c.path.as_os_str().is_empty() {
                    self.root.create_dir(&inside, 0o700)?;
                }
                self.root.lchown(&inside, uid, gid)?;
                self.root.set_permissions(&inside, mode)?;
                if opaque {
                    self.root
                        .set_xattr(&inside, "trusted.overlay.opaque", b"y")?;
                }
                self.xattrs(c, &inside)?;
                self.dirs.push((inside, mtime));
            }
            Kind::File => {
                let key = (c.meta.dev(), c.meta.ino());
                if c.meta.nlink() > 1 {
                    if let Some(first) = self.links.get(&key) {
                        return self.root.hard_link(first, &inside);
                    }
                    self.links.insert(key, inside.clone());
                }
                let mut from = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(c.host)
                    .map_err(|e| Error::io(format!("reading {}", c.host.display()), e))?;
                let mut to = self
                    .root
                    .open_file(&inside, OpenFlags::create_new_file(), 0o600)?;
                io::copy(&mut from, &mut to).map_err(|e| {
                    let full = e.raw_os_error() == Some(libc::ENOSPC);
                    Error::io(
                        if full {
                            "flattening disk layers: their files do not fit in one layer".into()
                        } else {
                            format!("copying {}", inside.display())
                        },
                        e,
                    )
                })?;
                drop(to);
                self.root.lchown(&inside, uid, gid)?;
                self.root.set_permissions(&inside, mode)?;
                self.xattrs(c, &inside)?;
                self.capabilities(c, &inside)?;
                self.root.set_times(&inside, Some(mtime), Some(mtime))?;
            }
            Kind::Symlink => {
                let target = std::fs::read_link(c.host)
                    .map_err(|e| Error::io(format!("reading {}", c.host.display()), e))?;
                self.root.symlink(&target, &inside)?;
                self.root.lchown(&inside, uid, gid)?;
            }
            Kind::Fifo => {
                self.root.mkfifo(&inside, mode)?;
                self.root.lchown(&inside, uid, gid)?;
            }
            Kind::Whiteout => self.root.whiteout(&inside)?,
            Kind::Other => {
                tracing::debug!(path = %inside.display(), "not flattened (socket or device)");
            }
        }
        Ok(())
    }

    /// The `user.*` extended attributes of the source.
    fn xattrs(&self, c: &Change<'_>, inside: &Path) -> Result<()> {
        for (name, value) in xattrs(c.host, |n| n.starts_with("user.")) {
            self.root.set_xattr(inside, &name, &value)?;
        }
        Ok(())
    }

    /// File capabilities, after the owner (a chown clears them). A
    /// namespaced (v3) set names the host id of its namespace's root: moved
    /// like the owners.
    fn capabilities(&self, c: &Change<'_>, inside: &Path) -> Result<()> {
        for (name, mut value) in xattrs(c.host, |n| n == "security.capability") {
            if value.len() == 24 && value[3] == 3 {
                let rootid = u32::from_le_bytes([value[20], value[21], value[22], value[23]]);
                value[20..24].copy_from_slice(&self.id(rootid, c.id_root).to_le_bytes());
            }
            self.root.set_xattr(inside, &name, &value)?;
        }
        Ok(())
    }
}

/// The extended attributes of `path` (not followed) whose names `keep`.
fn xattrs(path: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    names[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|raw| {
            let name = String::from_utf8_lossy(raw).into_owned();
            if !keep(&name) {
                return None;
            }
            let mut value = vec![0u8; 64 * 1024];
            let n = rustix::fs::lgetxattr(path, name.as_str(), &mut value).ok()?;
            value.truncate(n);
            Some((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A merged stack written into one directory reads as the stack did:
    /// the topmost file, deletions and opaque directories kept as overlay
    /// markers, owners moved into the new range, hard links kept.
    #[test]
    fn a_stack_is_written_as_one_layer() {
        use std::os::unix::fs::FileTypeExt;
        if !rustix::process::geteuid().is_root() {
            crate::testing::skip("flattening: owners, whiteouts and trusted xattrs need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (top, low, out) = (
            dir.path().join("top"),
            dir.path().join("low"),
            dir.path().join("out"),
        );
        for d in [&top, &low, &out] {
            std::fs::create_dir(d).unwrap();
        }
        let (top_root, low_root, out_root) = (0x7100_0000u32, 0x7200_0000u32, 0x7300_0000u32);
        std::fs::create_dir(low.join("d")).unwrap();
        std::fs::write(low.join("d/f"), b"low").unwrap();
        std::fs::hard_link(low.join("d/f"), low.join("d/g")).unwrap();
        std::os::unix::fs::lchown(
            low.join("d/f"),
            Some(low_root + 1000),
            Some(low_root + 1000),
        )
        .unwrap();
        std::fs::write(low.join("gone"), b"x").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("gone").as_path(),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        std::os::unix::fs::symlink("d/f", top.join("link")).unwrap();
        std::os::unix::fs::lchown(top.join("link"), Some(top_root + 5), Some(top_root + 5))
            .unwrap();
        let stack = [
            ChangeLayer {
                upper: top.clone(),
                id_root: top_root,
            },
            ChangeLayer {
                upper: low.clone(),
                id_root: low_root,
            },
        ];
        write_merged(&stack, &out, out_root).unwrap();
        let meta = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap();
        assert_eq!(std::fs::read(out.join("d/f")).unwrap(), b"low");
        assert_eq!(meta("d/f").uid(), out_root + 1000);
        assert_eq!(meta("d/g").ino(), meta("d/f").ino(), "hard link kept");
        assert_eq!(meta("link").uid(), out_root + 5);
        let gone = meta("gone");
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    }
}
