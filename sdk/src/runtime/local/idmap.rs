//! A user namespace that maps ids `0..65536` to a sandbox's host id range,
//! held as a descriptor: what an idmapped mount of a shared image tree
//! needs, so files the tree stores as root show as the sandbox's root.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::ids::{IdRange, RANGE};

/// Make the namespace: a child unshares a user namespace and waits; host
/// root writes its maps; the namespace is kept open and the child killed.
pub fn userns_for(range: IdRange) -> io::Result<OwnedFd> {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors we own.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: the child only makes async-signal-safe syscalls, then waits
    // to be killed.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: in the child, raw syscalls only.
        unsafe {
            let code: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                1
            };
            libc::write(tx.as_raw_fd(), (&code as *const u8).cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    drop(tx);
    let result = (|| {
        let mut code = [1u8];
        let n = rustix::io::read(&rx, &mut code).map_err(io::Error::from)?;
        if n != 1 || code[0] != 0 {
            return Err(io::Error::other(
                "could not make a user namespace for an id map",
            ));
        }
        let map = format!("0 {} {RANGE}\n", range.root);
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    // SAFETY: our own child; killed and reaped whatever happened.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result
}
