//! Snapshots of layered disks, kept beside the disk in
//! `<box>/snapshots/<name>.img` (a sparse copy of `disk.img`, data only)
//! with `<name>.json` (when it was made).
//!
//! A running sandbox is made consistent for the copy: its processes are
//! frozen (cgroup freezer), its filesystem is synced through its root
//! (syncfs reaches the disk's ext4 and, through the loop device, the image
//! file), the image is copied, and the processes are thawed; the freeze
//! lasts exactly as long as the copy of what the session has written. A
//! restore copies a snapshot back over the disk of a stopped sandbox
//! (through a temporary file and a rename: the disk is never half
//! restored). A clone copies a disk (or a snapshot) into a new sandbox and
//! moves its files into the new sandbox's id range in a mount namespace of
//! one thread's own.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::disk_image::{self, copy_sparse};
use super::ids::{self, IdRange};
use super::loopdev;
use crate::error::{Error, Result};
use crate::runtime::SnapshotInfo;

const DIR: &str = "snapshots";
/// Snapshots one sandbox may keep.
pub const MAX_PER_SANDBOX: usize = 64;

fn dir(sandbox: &Path) -> PathBuf {
    sandbox.join(DIR)
}

fn image(sandbox: &Path, name: &str) -> PathBuf {
    dir(sandbox).join(format!("{name}.img"))
}

fn meta(sandbox: &Path, name: &str) -> PathBuf {
    dir(sandbox).join(format!("{name}.json"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    created_at: u64,
    frozen_ms: u64,
}

/// Record when an imported snapshot was made (its image is in place).
pub fn record_imported(sandbox: &Path, name: &str, created_at: u64) -> Result<()> {
    let m = serde_json::to_vec(&Meta {
        created_at,
        frozen_ms: 0,
    })
    .map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::write(meta(sandbox, name), m).map_err(|e| Error::io("recording a snapshot", e))
}

/// Whether the snapshot exists.
pub fn exists(sandbox: &Path, name: &str) -> bool {
    image(sandbox, name).is_file()
}

/// The snapshots of a sandbox directory, oldest first.
pub fn list(sandbox: &Path) -> Vec<SnapshotInfo> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir(sandbox)) else {
        return Vec::new();
    };
    let mut all: Vec<SnapshotInfo> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".img")?.to_owned();
            if name.starts_with('.') {
                return None;
            }
            let m: Meta =
                serde_json::from_slice(&std::fs::read(meta(sandbox, &name)).ok()?).ok()?;
            Some(SnapshotInfo {
                size_bytes: e.metadata().ok()?.blocks() * 512,
                name,
                created_at: m.created_at,
                frozen_ms: m.frozen_ms,
            })
        })
        .collect();
    all.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    all
}

/// What keeps a running sandbox still while its disk is copied.
pub struct Freeze<'a> {
    pub cgroup: &'a super::limits::SandboxCgroup,
    /// The sandbox's root (O_PATH), to sync its filesystem through.
    pub root: &'a std::os::fd::OwnedFd,
}

/// Copy the disk of `sandbox` to `dest`, frozen and synced if `freeze` is
/// given; how long the processes were frozen, in ms. Blocking.
pub fn copy_disk(sandbox: &Path, dest: &Path, freeze: Option<Freeze<'_>>) -> Result<u64> {
    let disk = sandbox.join(disk_image::FILE);
    let Some(freeze) = freeze else {
        copy_sparse(&disk, dest).map_err(|e| Error::io("copying the disk", e))?;
        return Ok(0);
    };
    let started = Instant::now();
    let frozen = freeze
        .cgroup
        .freeze(true)
        .map_err(|e| Error::io("freezing the sandbox", e))?;
    if !frozen {
        return Err(Error::Unsupported(
            "a snapshot of a running session without a cgroup freezer on this host; stop the session first".into(),
        ));
    }
    let copied = (|| {
        // The root is O_PATH: syncfs needs a real descriptor of it.
        let root = rustix::fs::openat(
            freeze.root,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io("opening the sandbox's root", e.into()))?;
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(root.as_raw_fd()) } != 0 {
            return Err(Error::io("syncing the disk", io::Error::last_os_error()));
        }
        copy_sparse(&disk, dest).map_err(|e| Error::io("copying the disk", e))
    })();
    let thawed = freeze.cgroup.freeze(false);
    let frozen_ms = started.elapsed().as_millis() as u64;
    copied?;
    thawed.map_err(|e| Error::io("thawing the sandbox", e))?;
    Ok(frozen_ms)
}

/// Make snapshot `name` of `sandbox`. Blocking.
pub fn take(
    sandbox: &Path,
    session: &str,
    name: &str,
    freeze: Option<Freeze<'_>>,
) -> Result<SnapshotInfo> {
    if !sandbox.join(disk_image::FILE).is_file() {
        return Err(Error::Unsupported(
            "snapshots of this session: its disk is a directory (made by a server not running as root, or before disk images)".into(),
        ));
    }
    if exists(sandbox, name) {
        return Err(Error::SnapshotExists {
            session: session.into(),
            snapshot: name.into(),
        });
    }
    if list(sandbox).len() >= MAX_PER_SANDBOX {
        return Err(Error::InvalidArgument(format!(
            "session {session:?} has {MAX_PER_SANDBOX} snapshots, the most it may keep; remove one first"
        )));
    }
    super::private_dir(&dir(sandbox))?;
    let partial = dir(sandbox).join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let made = (|| {
        let frozen_ms = copy_disk(sandbox, &partial, freeze)?;
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let m = serde_json::to_vec(&Meta {
            created_at,
            frozen_ms,
        })
        .map_err(|e| Error::Runtime(e.to_string()))?;
        std::fs::write(meta(sandbox, name), m)
            .map_err(|e| Error::io("recording the snapshot", e))?;
        std::fs::rename(&partial, image(sandbox, name))
            .map_err(|e| Error::io("committing the snapshot", e))?;
        Ok(())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(meta(sandbox, name));
        return Err(e);
    }
    list(sandbox)
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Runtime(format!("snapshot {name} vanished")))
}

/// Put `sandbox`'s disk back as snapshot `name` was. The sandbox is
/// stopped. Blocking.
pub fn restore(sandbox: &Path, session: &str, name: &str) -> Result<()> {
    if !exists(sandbox, name) {
        return Err(not_found(session, name));
    }
    let restoring = sandbox.join(".disk.img.restoring");
    let _ = std::fs::remove_file(&restoring);
    let done = copy_sparse(&image(sandbox, name), &restoring)
        .and_then(|()| std::fs::rename(&restoring, sandbox.join(disk_image::FILE)));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&restoring);
        return Err(Error::io(format!("restoring snapshot {name}"), e));
    }
    Ok(())
}

/// Remove snapshot `name`.
pub fn remove(sandbox: &Path, session: &str, name: &str) -> Result<()> {
    if !exists(sandbox, name) {
        return Err(not_found(session, name));
    }
    std::fs::remove_file(image(sandbox, name))
        .map_err(|e| Error::io(format!("removing snapshot {name}"), e))?;
    let _ = std::fs::remove_file(meta(sandbox, name));
    Ok(())
}

fn not_found(session: &str, name: &str) -> Error {
    Error::SnapshotNotFound {
        session: session.into(),
        snapshot: name.into(),
    }
}

/// The image file of snapshot `name`, if it exists.
pub fn image_of(sandbox: &Path, name: &str) -> Option<PathBuf> {
    exists(sandbox, name).then(|| image(sandbox, name))
}

/// Move the files of the disk image `disk` (copied from another sandbox)
/// into `range`: mounted in a mount namespace of one thread's own, which
/// goes (and with it the mount and the loop device) when the thread ends.
/// Blocking.
pub fn move_into_range(disk: &Path, mount_point: &Path, range: IdRange) -> Result<()> {
    let disk = disk.to_path_buf();
    let mount_point = mount_point.to_path_buf();
    std::thread::Builder::new()
        .name("blink-disk-ids".into())
        .spawn(move || -> Result<()> {
            let io = |what: &str, e: io::Error| Error::io(what.to_owned(), e);
            std::fs::create_dir_all(&mount_point).map_err(|e| io("making a mount point", e))?;
            // SAFETY: unshare and mount on this thread's own state.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io("a private mount namespace", io::Error::last_os_error()));
                }
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io("a private mount namespace", io::Error::last_os_error()));
                }
            }
            let device = loopdev::attach(&disk).map_err(|e| io("attaching the disk", e))?;
            use std::os::unix::ffi::OsStrExt;
            let dev = std::ffi::CString::new(device.path().as_os_str().as_bytes())
                .map_err(|e| Error::Runtime(e.to_string()))?;
            let target = std::ffi::CString::new(mount_point.as_os_str().as_bytes())
                .map_err(|e| Error::Runtime(e.to_string()))?;
            // SAFETY: mount with valid NUL-terminated strings.
            let mounted = unsafe {
                libc::mount(
                    dev.as_ptr(),
                    target.as_ptr(),
                    c"ext4".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            };
            if mounted != 0 {
                return Err(io("mounting the disk", io::Error::last_os_error()));
            }
            let moved = ids::adopt(&mount_point.join("upper"), range);
            // SAFETY: unmounting what we mounted above.
            unsafe {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
            drop(device);
            moved
        })
        .map_err(|e| Error::io("starting the id mover", e))?
        .join()
        .map_err(|_| Error::Runtime("the id mover panicked".into()))?
}
