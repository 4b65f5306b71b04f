//! Bytes handed to a sandbox's processes through in-memory files: the guest
//! helper's binary, the seccomp filter, an execution's environment. A
//! descriptor, unlike a path or an environment variable, reaches exactly
//! the process it is given to, and nothing of it lands on any disk.

use std::io::{Seek, Write};
use std::os::fd::OwnedFd;

use crate::error::{Error, Result};

/// An anonymous in-memory file (close-on-exec).
pub fn memfd(name: &str) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    Ok(std::fs::File::from(fd))
}

/// An in-memory file holding `bytes`, positioned at its start.
pub fn bytes(name: &str, bytes: &[u8]) -> Result<OwnedFd> {
    let mut file = memfd(name).map_err(|e| Error::io(format!("creating {name}"), e))?;
    file.write_all(bytes)
        .and_then(|()| file.rewind())
        .map_err(|e| Error::io(format!("writing {name}"), e))?;
    Ok(OwnedFd::from(file))
}
