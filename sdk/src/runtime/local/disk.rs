//! The sandbox's root as its processes see it. When Blink runs as root the
//! disk (`<box>/rootfs`) is the upper layer of an overlay mounted at
//! `<box>/merged`, over an empty lower layer, and that overlay is what
//! bubblewrap binds as `/`. The overlay is mounted with paths relative to
//! the sandbox's directory, so `/proc/self/mountinfo` inside shows
//! `lowerdir=lower,upperdir=rootfs,workdir=work` and no host path (a bind
//! mount of a directory would show its full path on the host's filesystem).
//! Without root, the disk is bound directly.
//!
//! The overlay is mounted by bubblewrap's own process, between fork and
//! exec, in a mount namespace of its own (a slave of the host's, so nothing
//! mounted there reaches the host). It exists only while the sandbox's
//! processes hold that namespace: when the sandbox ends, however it ends
//! (blink-server killed with SIGKILL included), the kernel takes the mount
//! away. Nothing is ever left mounted on the host.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const LOWER: &str = "lower";
const WORK: &str = "work";
const MERGED: &str = "merged";
const OPTIONS: &str = "lowerdir=lower,upperdir=rootfs,workdir=work";

/// Everything the forked child needs to mount a sandbox's overlay, made
/// before the fork (the child may not allocate).
#[derive(Debug)]
pub struct Overlay {
    dir: CString,
    source: CString,
    target: CString,
    options: CString,
    root: CString,
}

/// Make the overlay's directories in the sandbox directory `dir` (which
/// holds `rootfs`) and prepare its mount.
pub fn prepare(dir: &Path) -> io::Result<Overlay> {
    use std::os::unix::fs::DirBuilderExt;
    for (name, mode) in [(LOWER, 0o755), (WORK, 0o700), (MERGED, 0o755)] {
        match std::fs::DirBuilder::new().mode(mode).create(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Overlay {
        dir: CString::new(dir.as_os_str().as_bytes())?,
        source: CString::new("overlay")?,
        target: CString::new(MERGED)?,
        options: CString::new(OPTIONS)?,
        root: CString::new("/")?,
    })
}

impl Overlay {
    /// In a freshly forked child, as host root: enter a new mount
    /// namespace that receives the host's mounts but sends none back,
    /// mount the overlay there and return a descriptor (O_PATH) of it.
    /// The relative paths need the sandbox directory as working
    /// directory; the child's own, so this is safe.
    ///
    /// # Safety
    /// Only in a freshly forked child: raw syscalls on memory prepared
    /// before the fork.
    pub unsafe fn mount_in_child(&self) -> io::Result<i32> {
        let fail = || Err(io::Error::last_os_error());
        // SAFETY: as documented for the function.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    self.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                || libc::chdir(self.dir.as_ptr()) != 0
                || libc::mount(
                    self.source.as_ptr(),
                    self.target.as_ptr(),
                    self.source.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    self.options.as_ptr().cast(),
                ) != 0
            {
                return fail();
            }
            let fd = libc::open(
                self.target.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if fd < 0 || libc::chdir(self.root.as_ptr()) != 0 {
                return fail();
            }
            Ok(fd)
        }
    }
}

/// Detach an overlay of `dir` from the host's mount table: versions before
/// the private mount namespace mounted it there, and one killed left it.
/// Every one, should one be stacked on another.
pub fn unmount_legacy(dir: &Path) {
    let Ok(target) = CString::new(dir.join(MERGED).as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..16 {
        // SAFETY: umount2 on a path we own; EINVAL (nothing mounted) and
        // ENOENT end the loop.
        let detached =
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        if detached != 0 {
            break;
        }
    }
}
