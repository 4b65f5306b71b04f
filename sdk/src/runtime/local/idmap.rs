//! A user namespace that maps one range of 65536 ids to a sandbox's host id
//! range, held as a descriptor: what an idmapped mount needs. A shared
//! image tree stores its files as ids `0..65536` (host root's), which must
//! show as the sandbox's root and its users; a disk layer (layers.rs)
//! stores them in the host range of the sandbox that wrote it, which must
//! show as the same ids of the sandbox that mounts it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::ids::{IdRange, RANGE};

/// The namespace through which an image tree (ids from 0) shows in `range`.
pub fn userns_for(range: IdRange) -> io::Result<OwnedFd> {
    userns_mapping(0, range)
}

/// The namespace through which files stored with ids `from..from+65536`
/// show as the same ids of `range`.
///
/// Made so: a child unshares a user namespace and waits; host root writes
/// its maps; the namespace is kept open and the child let go.
/// The child waits on a pipe only we write to, so it ends when we are done
/// with it or gone, whichever comes first: it never outlives us (it holds
/// copies of our descriptors, the data dir's lock among them).
pub fn userns_mapping(from: u32, range: IdRange) -> io::Result<OwnedFd> {
    let (ready_rx, ready_tx) = pipe()?;
    let (hold_rx, hold_tx) = pipe()?;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the child only makes async-signal-safe syscalls, then exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: in the child, raw syscalls only.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            libc::close(hold_tx.as_raw_fd());
            let code: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                1
            };
            libc::write(ready_tx.as_raw_fd(), (&code as *const u8).cast(), 1);
            let mut byte = 0u8;
            while libc::read(hold_rx.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) > 0 {}
            libc::_exit(0);
        }
    }
    drop((ready_tx, hold_rx));
    let result = (|| {
        let mut code = [1u8];
        let n = rustix::io::read(&ready_rx, &mut code).map_err(io::Error::from)?;
        if n != 1 || code[0] != 0 {
            return Err(io::Error::other(
                "could not make a user namespace for an id map",
            ));
        }
        let map = format!("{from} {} {RANGE}\n", range.root);
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    // Let the child go, and reap it.
    drop(hold_tx);
    // SAFETY: waiting for our own child, which exits on EOF.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
