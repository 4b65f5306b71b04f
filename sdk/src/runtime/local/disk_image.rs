//! A session's disk: a sparse file holding an ext4 filesystem, whose size is
//! the session's disk quota. A program that fills it gets ENOSPC inside
//! the sandbox; the host's filesystem and other sessions are unaffected.
//! The filesystem holds only the session's changes (`/upper`, the overlay's
//! upper layer, and `/work`, its work dir); the image is shared (disk.rs).
//!
//! Made by copying an empty template (one per size, made once with
//! mkfs.ext4 in `<data>/disk-templates`): a copy of the few hundred KiB the
//! template has allocated, far quicker than mkfs. The filesystem is made
//! with lazy inode-table and journal init and no resize inode, so an
//! untouched disk holds ~250 KiB of the host's disk, whatever its size; it
//! is mounted with `discard`, so space freed inside goes back to the host.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The disk image's name in a sandbox directory.
pub const FILE: &str = "disk.img";
/// Smallest disk: room for the journal and a little data.
pub const MIN_MIB: u64 = 64;
/// Largest disk (the file is sparse; this bounds a typo, not the host).
pub const MAX_MIB: u64 = 16 << 20;

/// Space a disk may hold and holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size_bytes: u64,
    /// Bytes of the host's disk the image takes (its allocated blocks).
    pub used_bytes: u64,
}

/// The disk image of a sandbox directory, if it has one.
pub fn usage(dir: &Path) -> Option<Usage> {
    let meta = std::fs::symlink_metadata(dir.join(FILE)).ok()?;
    Some(Usage {
        size_bytes: meta.len(),
        used_bytes: meta.blocks() * 512,
    })
}

/// Templates of empty disks, one per size.
#[derive(Debug)]
pub struct Templates {
    dir: PathBuf,
    /// One maker at a time (two sessions of a new size at once).
    making: std::sync::Mutex<()>,
}

impl Templates {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            making: std::sync::Mutex::new(()),
        }
    }

    /// Make `dest` an empty disk of `mib` MiB.
    pub fn make_disk(&self, mib: u64, dest: &Path) -> io::Result<()> {
        let template = self.template(mib)?;
        copy_sparse(&template, dest)
    }

    fn template(&self, mib: u64) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("ext4-{mib}m.img"));
        if path.is_file() {
            return Ok(path);
        }
        let _one = self
            .making
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if path.is_file() {
            return Ok(path);
        }
        super::private_dir(&self.dir).map_err(|e| io::Error::other(e.to_string()))?;
        let staging = self
            .dir
            .join(format!(".ext4-{mib}m.{}", std::process::id()));
        let skeleton = self.dir.join(format!(".skeleton.{}", std::process::id()));
        let made = make_template(mib, &staging, &skeleton);
        let _ = std::fs::remove_dir_all(&skeleton);
        match made.and_then(|()| std::fs::rename(&staging, &path)) {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                Err(e)
            }
        }
    }
}

/// mkfs.ext4 a sparse file of `mib` MiB whose root holds `upper` (0755)
/// and `work` (0700).
fn make_template(mib: u64, dest: &Path, skeleton: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::remove_dir_all(skeleton);
    std::fs::DirBuilder::new().mode(0o755).create(skeleton)?;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(skeleton.join("upper"))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(skeleton.join("work"))?;
    let file = std::fs::File::create(dest)?;
    file.set_len(mib << 20)?;
    drop(file);
    // A 16 MiB journal, 4 MiB below 1 GiB (the smallest ext4 allows).
    let journal = if mib >= 1024 { "16" } else { "4" };
    let out = Command::new(mkfs())
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", "blink-disk"])
        .args(["-O", "^resize_inode", "-J", &format!("size={journal}")])
        .args([
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
        ])
        .arg("-d")
        .arg(skeleton)
        .arg(dest)
        .env_clear()
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Grow a disk that is not in use to `mib` MiB: its file, then its
/// filesystem (checked first, as resize2fs wants). A disk never shrinks:
/// a size at or below its own leaves it as it is (false). On failure the
/// file is put back to its size, its filesystem untouched.
pub fn grow(image: &Path, mib: u64) -> io::Result<bool> {
    let len = std::fs::metadata(image)?.len();
    let want = mib.saturating_mul(1 << 20);
    if want <= len {
        return Ok(false);
    }
    let tool = |name: &str| super::which(name).unwrap_or_else(|| format!("/sbin/{name}").into());
    // -p: repair only what is safe without asking; 0 clean, 1 repaired.
    let check = Command::new(tool("e2fsck"))
        .args(["-f", "-p"])
        .arg(image)
        .env_clear()
        .output()?;
    if !matches!(check.status.code(), Some(0 | 1)) {
        return Err(io::Error::other(format!(
            "e2fsck before growing the disk failed: {}",
            String::from_utf8_lossy(&check.stdout).trim()
        )));
    }
    let file = std::fs::OpenOptions::new().write(true).open(image)?;
    file.set_len(want)?;
    let resized = Command::new(tool("resize2fs"))
        .arg(image)
        .env_clear()
        .output();
    match resized {
        Ok(out) if out.status.success() => Ok(true),
        outcome => {
            let _ = file.set_len(len);
            Err(match outcome {
                Ok(out) => io::Error::other(format!(
                    "resize2fs failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => e,
            })
        }
    }
}

fn mkfs() -> PathBuf {
    super::which("mkfs.ext4").unwrap_or_else(|| "/sbin/mkfs.ext4".into())
}

/// Whether disks can be made here (mkfs.ext4 is installed).
pub fn available() -> bool {
    super::which("mkfs.ext4").is_some()
}

/// Copy a sparse file, its data only: holes stay holes.
pub fn copy_sparse(src: &Path, dest: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let from = std::fs::File::open(src)?;
    let len = from.metadata()?.len();
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)?;
    to.set_len(len)?;
    let mut offset: i64 = 0;
    let end = len as i64;
    while offset < end {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(from.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data past offset
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut src_off, mut dst_off) = (data, data);
        while src_off < hole {
            let want = (hole - src_off) as usize;
            // SAFETY: two open descriptors and valid offset pointers.
            let n = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    &mut src_off,
                    to.as_raw_fd(),
                    &mut dst_off,
                    want,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
        }
        offset = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 8192], 40 << 20).unwrap();
        drop(f);
        let dest = dir.path().join("dest");
        copy_sparse(&src, &dest).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap());
        assert_eq!(a, b);
        let allocated = std::fs::metadata(&dest).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "holes were filled: {allocated} bytes");
        // The copy refuses to overwrite.
        assert!(copy_sparse(&src, &dest).is_err());
    }

    #[test]
    fn a_disk_grows_and_never_shrinks() {
        if !available() {
            crate::testing::skip("mkfs.ext4 is not installed (e2fsprogs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let templates = Templates::new(dir.path().join("templates"));
        let disk = dir.path().join(FILE);
        templates.make_disk(MIN_MIB, &disk).unwrap();
        assert!(!grow(&disk, MIN_MIB).unwrap());
        assert!(!grow(&disk, MIN_MIB / 2).unwrap());
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), MIN_MIB << 20);
        assert!(grow(&disk, 1024).unwrap());
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1024 << 20);
        // The filesystem fills the new size, and is whole.
        let out = Command::new(super::super::which("dumpe2fs").unwrap_or("/sbin/dumpe2fs".into()))
            .arg("-h")
            .arg(&disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap()
        };
        assert_eq!(field("Block count:") * field("Block size:"), 1024 << 20);
        let check = Command::new(super::super::which("e2fsck").unwrap_or("/sbin/e2fsck".into()))
            .args(["-f", "-n"])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
    }
}
