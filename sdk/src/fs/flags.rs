//! Flags for `ConfinedRoot::open_file`, in the manner of `std::fs::OpenFlags`.

use rustix::fs::OFlags;

use crate::error::{Error, Result};

/// How to open a file inside a sandbox. Built by value:
/// `OpenFlags::new().write(true).create(true)`; the creation mode is a
/// separate argument of `open_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags {
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) append: bool,
    pub(crate) truncate: bool,
    pub(crate) create: bool,
    pub(crate) create_new: bool,
    pub(crate) follow: bool,
}

impl Default for OpenFlags {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenFlags {
    /// Nothing set; symlinks in the final component followed
    /// (inside the sandbox).
    pub fn new() -> Self {
        Self {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            follow: true,
        }
    }

    /// Read-only.
    pub fn read_only() -> Self {
        Self::new().read(true)
    }

    /// Read and write an existing file.
    pub fn read_write() -> Self {
        Self::new().read(true).write(true)
    }

    /// Write, create, truncate: what `std::fs::write` does.
    pub fn create_truncate() -> Self {
        Self::new().write(true).create(true).truncate(true)
    }

    /// Write at the end, creating the file if missing.
    pub fn create_append() -> Self {
        Self::new().append(true).create(true)
    }

    /// Write a new file; fail if anything exists at the path.
    pub fn create_new_file() -> Self {
        Self::new().write(true).create_new(true)
    }

    pub fn read(mut self, v: bool) -> Self {
        self.read = v;
        self
    }

    pub fn write(mut self, v: bool) -> Self {
        self.write = v;
        self
    }

    pub fn append(mut self, v: bool) -> Self {
        self.append = v;
        self
    }

    pub fn truncate(mut self, v: bool) -> Self {
        self.truncate = v;
        self
    }

    /// Create the file if it does not exist.
    pub fn create(mut self, v: bool) -> Self {
        self.create = v;
        self
    }

    /// Create the file; fail if anything (even a dangling symlink) exists.
    pub fn create_new(mut self, v: bool) -> Self {
        self.create_new = v;
        self
    }

    /// Whether a symlink as the final component is followed (inside the
    /// sandbox). With `false`, opening a symlink fails (`O_NOFOLLOW`).
    pub fn follow_symlinks(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    pub(crate) fn creates(&self) -> bool {
        self.create || self.create_new
    }

    /// Open flags, without `O_CREAT`/`O_EXCL`.
    pub(crate) fn base_flags(&self) -> Result<OFlags> {
        let writes = self.write || self.append;
        let mut flags = match (self.read, writes) {
            (true, true) => OFlags::RDWR,
            (false, true) => OFlags::WRONLY,
            (true, false) => OFlags::RDONLY,
            (false, false) => {
                return Err(Error::InvalidArgument(
                    "open: neither read nor write access requested".into(),
                ));
            }
        };
        if (self.truncate || self.creates()) && !writes {
            return Err(Error::InvalidArgument(
                "open: create or truncate needs write access".into(),
            ));
        }
        if self.append {
            flags |= OFlags::APPEND;
        }
        if self.truncate {
            flags |= OFlags::TRUNC;
        }
        if !self.follow {
            flags |= OFlags::NOFOLLOW;
        }
        Ok(flags | OFlags::CLOEXEC | OFlags::NOCTTY)
    }
}
