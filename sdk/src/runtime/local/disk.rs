//! The sandbox's root as its processes see it. When Blink runs as root the
//! disk (`<box>/rootfs`) is the upper layer of an overlay mounted at
//! `<box>/merged`, over an empty lower layer, and that overlay is what
//! bubblewrap binds as `/`. The overlay is mounted with paths relative to
//! the sandbox's directory, so `/proc/self/mountinfo` inside shows
//! `lowerdir=lower,upperdir=rootfs,workdir=work` and no host path (a bind
//! mount of a directory would show its full path on the host's filesystem).
//! Without root, the disk is bound directly.
//!
//! The overlay lives in the host's mount namespace while the sandbox runs
//! and is detached when it stops; one left by a crash is detached before
//! the next mount or removal.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const LOWER: &str = "lower";
const WORK: &str = "work";
const MERGED: &str = "merged";
const OPTIONS: &str = "lowerdir=lower,upperdir=rootfs,workdir=work";

/// Where the overlay of the sandbox directory `dir` is mounted.
pub fn merged(dir: &Path) -> PathBuf {
    dir.join(MERGED)
}

/// Mount the overlay of `dir` (a sandbox directory holding `rootfs`);
/// returns the path to bind as the sandbox's root.
pub fn mount(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for (name, mode) in [(LOWER, 0o755), (WORK, 0o700), (MERGED, 0o755)] {
        match std::fs::DirBuilder::new().mode(mode).create(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    unmount(dir);
    let dir_c = CString::new(dir.as_os_str().as_bytes())?;
    let source = CString::new("overlay")?;
    let target = CString::new(MERGED)?;
    let options = CString::new(OPTIONS)?;
    // The relative paths need the sandbox directory as working directory,
    // which is per process: a short-lived child does the mount.
    // SAFETY: the child makes only async-signal-safe syscalls on memory
    // prepared before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; in the child.
        unsafe {
            let code = if libc::chdir(dir_c.as_ptr()) != 0 {
                1
            } else if libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            ) != 0
            {
                *libc::__errno_location()
            } else {
                0
            };
            libc::_exit(code.clamp(0, 255));
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(merged(dir)),
        Some(1) => Err(io::Error::other("cannot enter the sandbox directory")),
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other("the mount helper died")),
    }
}

/// Detach the overlay of `dir`, if one is mounted.
pub fn unmount(dir: &Path) {
    if let Ok(target) = CString::new(merged(dir).as_os_str().as_bytes()) {
        // SAFETY: umount2 on a path we own; EINVAL (not mounted) and ENOENT
        // are expected and ignored.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW);
        }
    }
}
