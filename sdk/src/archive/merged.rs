//! A stack of overlay upper layers read as one change tree: what a layered
//! session disk (its own upper over read-only layers, docs/DISKS.md) holds
//! over its image, as overlayfs shows it, deletions and opaque directories
//! included. An export writes it as one `changes/` section; a chain of
//! layers too deep is flattened into one layer with it.
//!
//! The rules are overlayfs's own lookup (this host runs it with
//! `redirect_dir` and `metacopy` off, so no entry points elsewhere):
//! - a name's topmost entry decides what it is: a whiteout (deleted,
//!   whatever lies below), a file, a symlink, a FIFO or a directory;
//! - a directory merges the same directory of the layers below it, down to
//!   (and including) the first opaque one. A non-directory below (a file or
//!   a whiteout) ends the merge and makes the merged directory opaque: it
//!   hid everything under it, the image's entries included.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One layer of a stack: an overlay upper directory, and the host id its
/// owner ids count from (the id range of the sandbox that wrote it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLayer {
    pub upper: PathBuf,
    pub id_root: u32,
}

/// What a merged entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `opaque`: nothing under it comes from below the stack.
    Dir {
        opaque: bool,
    },
    File,
    Symlink,
    Fifo,
    /// Deleted: nothing of this name shows from below the stack.
    Whiteout,
    /// Sockets and device nodes: not carried.
    Other,
}

/// One entry of the merged tree.
#[derive(Debug)]
pub struct Change<'a> {
    /// Relative to the tree's root; empty for the root itself.
    pub path: &'a Path,
    /// The entry on the host, in the layer it comes from.
    pub host: &'a Path,
    pub meta: &'a Metadata,
    pub kind: Kind,
    /// The id root of the layer it comes from.
    pub id_root: u32,
}

/// Visit every entry of the merged tree of `layers` (topmost first), the
/// root first, then depth-first with names in byte order; a directory
/// before what it holds. Walked with an explicit stack: no tree is too
/// deep for ours.
pub fn walk(
    layers: &[ChangeLayer],
    visit: &mut dyn FnMut(&Change<'_>) -> Result<()>,
) -> Result<()> {
    let Some(top) = layers.first() else {
        return Err(Error::Runtime("an empty stack of layers".into()));
    };
    let meta = lstat(&top.upper)?.ok_or_else(|| {
        Error::io(
            format!("reading {}", top.upper.display()),
            io::ErrorKind::NotFound.into(),
        )
    })?;
    visit(&Change {
        path: Path::new(""),
        host: &top.upper,
        meta: &meta,
        kind: Kind::Dir { opaque: false },
        id_root: top.id_root,
    })?;
    // Each directory to list, with the layers (indexes, topmost first)
    // whose directory of that path it merges.
    let mut stack: Vec<(PathBuf, Vec<usize>)> = vec![(PathBuf::new(), (0..layers.len()).collect())];
    while let Some((dir, sources)) = stack.pop() {
        let mut names: BTreeSet<OsString> = BTreeSet::new();
        for &i in &sources {
            let path = layers[i].upper.join(&dir);
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                // A root that is no directory (never, in a disk) adds nothing.
                Err(e) if e.kind() == io::ErrorKind::NotFound && dir.as_os_str().is_empty() => {
                    continue;
                }
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            };
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                names.insert(entry.file_name());
            }
        }
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let mut found = None;
            for (at, &i) in sources.iter().enumerate() {
                if let Some(meta) = lstat(&layers[i].upper.join(&path))? {
                    found = Some((at, i, meta));
                    break;
                }
            }
            let Some((at, i, meta)) = found else {
                continue;
            };
            let host = layers[i].upper.join(&path);
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                let mut merged = vec![i];
                let mut opaque = is_opaque(&host);
                if !opaque {
                    for &j in &sources[at + 1..] {
                        let below = layers[j].upper.join(&path);
                        match lstat(&below)? {
                            None => continue,
                            Some(m) if m.is_dir() => {
                                merged.push(j);
                                if is_opaque(&below) {
                                    opaque = true;
                                    break;
                                }
                            }
                            Some(_) => {
                                opaque = true;
                                break;
                            }
                        }
                    }
                }
                subdirs.push((path.clone(), merged));
                Kind::Dir { opaque }
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_char_device() && meta.rdev() == 0 {
                Kind::Whiteout
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Other
            };
            visit(&Change {
                path: &path,
                host: &host,
                meta: &meta,
                kind,
                id_root: layers[i].id_root,
            })?;
        }
        // Reversed onto the stack, so directories come out in order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Whether overlayfs treats the directory as opaque.
pub fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut buf).is_ok_and(|n| &buf[..n] == b"y")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    }

    fn opaque(path: &Path) {
        rustix::fs::setxattr(
            path,
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }

    /// The merged tree of three layers is what overlayfs would show over an
    /// image: the topmost entry wins, deletions and opaque directories made
    /// in an older layer stay so above it, a directory over a deleted one
    /// is opaque. Whiteouts and trusted.* need root.
    #[test]
    fn a_stack_merges_as_overlayfs_looks_up() {
        if !rustix::process::geteuid().is_root() {
            crate::testing::skip("merged stacks: whiteouts and opaque directories need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let [top, mid, low] = ["top", "mid", "low"].map(|n| dir.path().join(n));
        for l in [&top, &mid, &low] {
            std::fs::create_dir(l).unwrap();
        }
        // low: files, a directory, one that mid replaces wholesale.
        std::fs::create_dir_all(low.join("d")).unwrap();
        std::fs::write(low.join("d/a"), b"low").unwrap();
        std::fs::write(low.join("d/b"), b"low").unwrap();
        std::fs::create_dir_all(low.join("o")).unwrap();
        std::fs::write(low.join("o/old"), b"low").unwrap();
        std::fs::write(low.join("gone"), b"low").unwrap();
        std::fs::create_dir_all(low.join("rm-dir/x")).unwrap();
        // mid: changes d/a, deletes gone (an image file too), makes o
        // opaque, deletes rm-dir.
        std::fs::create_dir_all(mid.join("d")).unwrap();
        std::fs::write(mid.join("d/a"), b"mid").unwrap();
        whiteout(&mid.join("gone"));
        whiteout(&mid.join("image-file"));
        std::fs::create_dir_all(mid.join("o")).unwrap();
        opaque(&mid.join("o"));
        std::fs::write(mid.join("o/new"), b"mid").unwrap();
        whiteout(&mid.join("rm-dir"));
        // top: a new file in d, a directory again where rm-dir was (not
        // marked opaque here: the whiteout below makes it so).
        std::fs::create_dir_all(top.join("d")).unwrap();
        std::fs::write(top.join("d/c"), b"top").unwrap();
        std::fs::create_dir_all(top.join("rm-dir")).unwrap();
        std::fs::write(top.join("rm-dir/y"), b"top").unwrap();

        let layers: Vec<ChangeLayer> = [&top, &mid, &low]
            .iter()
            .enumerate()
            .map(|(i, p)| ChangeLayer {
                upper: (*p).clone(),
                id_root: 1000 * i as u32,
            })
            .collect();
        let mut seen = Vec::new();
        walk(&layers, &mut |c| {
            let what = match c.kind {
                Kind::File => format!(
                    "file {}",
                    String::from_utf8_lossy(&std::fs::read(c.host).unwrap())
                ),
                Kind::Dir { opaque } => format!("dir{}", if opaque { " opaque" } else { "" }),
                Kind::Whiteout => "whiteout".into(),
                other => format!("{other:?}"),
            };
            seen.push(format!("{} {what} {}", c.path.display(), c.id_root));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                " dir 0",
                "d dir 0",
                "gone whiteout 1000",
                "image-file whiteout 1000",
                "o dir opaque 1000",
                "rm-dir dir opaque 0",
                "d/a file mid 1000",
                "d/b file low 2000",
                "d/c file top 0",
                "o/new file mid 1000",
                "rm-dir/y file top 0",
            ]
        );
    }
}
