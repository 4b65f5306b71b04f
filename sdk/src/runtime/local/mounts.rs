//! Disk images mounted by the host for its own reading and writing (export,
//! import, flattening layers, replaying a copied disk's journal): on a
//! thread of their own in a mount namespace of its own, so the mounts (and
//! their loop devices) go when the thread ends, whatever happens, and the
//! host's mount table never shows them.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::loopdev::{self, LoopDevice};
use crate::error::{Error, Result};

/// Run `work` on a new thread inside a private mount namespace.
pub fn in_private_mounts<T: Send + 'static>(
    work: impl FnOnce(&mut Mounts) -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::Builder::new()
        .name("blink-disk-io".into())
        .spawn(move || {
            // SAFETY: unshare and mount on this thread's own state.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_SLAVE,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(Error::io(
                        "a private mount namespace",
                        io::Error::last_os_error(),
                    ));
                }
            }
            let mut mounts = Mounts::default();
            let result = work(&mut mounts);
            mounts.release();
            result
        })
        .map_err(|e| Error::io("starting the disk thread", e))?
        .join()
        .map_err(|_| Error::Runtime("the disk thread panicked".into()))?
}

/// Disk images mounted on the current (private) thread.
#[derive(Default)]
pub struct Mounts {
    mounted: Vec<(CString, LoopDevice)>,
}

impl Mounts {
    /// Mount the ext4 of `image` at `at` (created), read-write; the upper
    /// layer's path. A journal left by a copy of a running disk is
    /// replayed.
    pub fn mount(&mut self, image: &Path, at: &Path) -> Result<PathBuf> {
        self.mount_with(image, at, false)
    }

    /// Mount the ext4 of a disk layer (layers.rs) at `at` (created),
    /// read-only on a read-only loop device, its journal not loaded (a
    /// layer's filesystem is clean); the upper layer's path.
    pub fn mount_read_only(&mut self, image: &Path, at: &Path) -> Result<PathBuf> {
        self.mount_with(image, at, true)
    }

    fn mount_with(&mut self, image: &Path, at: &Path, read_only: bool) -> Result<PathBuf> {
        let io = |what: &str, e: io::Error| Error::io(what.to_owned(), e);
        std::fs::create_dir_all(at).map_err(|e| io("making a mount point", e))?;
        let device = if read_only {
            loopdev::attach_read_only(image)
        } else {
            loopdev::attach(image)
        }
        .map_err(|e| io("attaching a disk", e))?;
        let dev = CString::new(device.path().as_os_str().as_bytes())
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let target =
            CString::new(at.as_os_str().as_bytes()).map_err(|e| Error::Runtime(e.to_string()))?;
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        let data = if read_only {
            c"noload".as_ptr()
        } else {
            std::ptr::null()
        };
        // SAFETY: mount with valid NUL-terminated strings.
        let mounted = unsafe {
            libc::mount(
                dev.as_ptr(),
                target.as_ptr(),
                c"ext4".as_ptr(),
                flags,
                data.cast(),
            )
        };
        if mounted != 0 {
            return Err(io("mounting a disk", io::Error::last_os_error()));
        }
        self.mounted.push((target, device));
        Ok(at.join("upper"))
    }

    fn release(&mut self) {
        for (target, device) in self.mounted.drain(..).rev() {
            // SAFETY: unmounting what we mounted.
            unsafe {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
            drop(device);
        }
    }
}
