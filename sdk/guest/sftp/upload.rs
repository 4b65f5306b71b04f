//! Whole-file uploads are atomic: a file opened to be written from scratch
//! (WRITE with TRUNC, or CREAT of a name that does not exist yet) is
//! written into an unnamed file (`O_TMPFILE`) in the target's directory and
//! put in place by CLOSE. Until then the path shows the old file (or
//! nothing), and if the upload ends any other way (the client disconnects,
//! the gateway or the sandbox is killed) the unnamed file vanishes with the
//! last descriptor: an uploaded file is complete or absent, never short.
//! SFTPGo's "atomic" upload mode and FTP servers' hidden stores do the same.
//!
//! Everything else is written in place, as OpenSSH's sftp-server does:
//! appends and resumed uploads (no TRUNC), targets that are not plain files
//! or are symbolic links, files with several hard links (replacing would
//! split them), and directories where an unnamed file cannot be made (no
//! O_TMPFILE support, or no write permission on the directory while the
//! file itself is writable).
//!
//! A replaced file keeps its owner and mode; its other attributes (extended
//! attributes, ACLs) are not carried over.

use std::ffi::{CString, c_char};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{
    AT_FDCWD, EEXIST, EINVAL, ENOENT, O_CLOEXEC, O_NOCTTY, O_RDWR, O_WRONLY, check, cstr, open,
    os, os_err,
};

unsafe extern "C" {
    fn openat(dirfd: i32, path: *const c_char, flags: i32, ...) -> i32;
    fn linkat(
        olddirfd: i32,
        oldpath: *const c_char,
        newdirfd: i32,
        newpath: *const c_char,
        flags: i32,
    ) -> i32;
    fn renameat(olddirfd: i32, oldpath: *const c_char, newdirfd: i32, newpath: *const c_char)
    -> i32;
    fn unlinkat(dirfd: i32, path: *const c_char, flags: i32) -> i32;
    fn fchmod(fd: i32, mode: u32) -> i32;
    fn fchown(fd: i32, uid: u32, gid: u32) -> i32;
}

// Linux x86_64 constants.
const O_DIRECTORY: i32 = 0o200000;
const O_PATH: i32 = 0o10000000;
const O_TMPFILE: i32 = 0o20000000 | O_DIRECTORY;
const AT_SYMLINK_FOLLOW: i32 = 0x400;
const AT_EMPTY_PATH: i32 = 0x1000;

/// Where an upload goes when it is closed.
pub struct Upload {
    /// The target's directory, held open so the file lands where that
    /// directory is at CLOSE even if it was renamed meanwhile.
    dir: File,
    name: CString,
    /// Put in place with rename(2) over an existing file, or linked under
    /// a name that must still be free (EXCL, or a new file).
    replace: bool,
}

/// What OPEN should do with a request to write `path`.
pub enum Plan {
    /// Open the path itself, as asked.
    InPlace,
    /// Write into this unnamed file; [`Upload::finish`] publishes it.
    Staged(File, Upload),
}

/// Decide how to open `path` for an OPEN with these open(2) flags and
/// creation mode, and make the unnamed file if it is staged. Errors are
/// what opening the path in place would have reported.
pub fn plan(path: &[u8], flags: i32, mode: u32) -> io::Result<Plan> {
    use super::{O_APPEND, O_CREAT, O_EXCL, O_TRUNC};
    let writes = flags & (O_WRONLY | O_RDWR) != 0;
    if !writes || flags & O_APPEND != 0 || flags & (O_TRUNC | O_CREAT) == 0 {
        return Ok(Plan::InPlace);
    }
    let Some((dir, name)) = split(path) else {
        return Ok(Plan::InPlace);
    };
    let existing = match std::fs::symlink_metadata(os(path)) {
        Ok(m) => Some(m),
        Err(e) if e.raw_os_error() == Some(ENOENT) => None,
        // ENOTDIR, EACCES, ELOOP, ...: let open report them.
        Err(_) => return Ok(Plan::InPlace),
    };
    let replace = match &existing {
        None if flags & O_CREAT == 0 => return Ok(Plan::InPlace),
        None => false,
        Some(_) if flags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL => return Err(os_err(EEXIST)),
        Some(m) if !m.file_type().is_file() || m.nlink() > 1 || flags & O_TRUNC == 0 => {
            return Ok(Plan::InPlace);
        }
        Some(_) => {
            // Writing must be allowed on the file itself, as it would be
            // in place: a read-only file in a writable directory stays
            // read-only.
            let probe = cstr(path)?;
            // SAFETY: a NUL-terminated path; the descriptor is closed
            // right away by File's drop.
            let fd = unsafe { open(probe.as_ptr(), O_WRONLY | O_CLOEXEC | O_NOCTTY) };
            check(fd)?;
            // SAFETY: fd was just opened and is owned here.
            drop(unsafe { File::from_raw_fd(fd) });
            true
        }
    };
    let dir_c = cstr(dir)?;
    // SAFETY: a NUL-terminated path; the descriptor is owned by the File.
    let dir_fd = unsafe { open(dir_c.as_ptr(), O_PATH | O_DIRECTORY | O_CLOEXEC) };
    if dir_fd < 0 {
        return Ok(Plan::InPlace);
    }
    // SAFETY: just opened, owned here.
    let dir = unsafe { File::from_raw_fd(dir_fd) };
    let access = if flags & O_RDWR != 0 { O_RDWR } else { O_WRONLY };
    let initial = if replace { 0o600 } else { mode & 0o7777 };
    let dot = c".";
    // SAFETY: a directory descriptor and a NUL-terminated path.
    let fd = unsafe { openat(dir.as_raw_fd(), dot.as_ptr(), O_TMPFILE | access | O_CLOEXEC, initial) };
    if fd < 0 {
        // No O_TMPFILE here, or no right to add a file to the directory.
        return Ok(Plan::InPlace);
    }
    // SAFETY: just opened, owned here.
    let file = unsafe { File::from_raw_fd(fd) };
    if let Some(m) = existing.filter(|_| replace) {
        // Owner first: chown clears set-id bits, which the mode restores.
        // Where the replacement cannot have the file's owner (only root
        // may give a file away), the file is written in place instead.
        // SAFETY: an open descriptor.
        if unsafe { fchown(file.as_raw_fd(), m.uid(), m.gid()) } != 0 {
            return Ok(Plan::InPlace);
        }
        // SAFETY: an open descriptor.
        check(unsafe { fchmod(file.as_raw_fd(), m.mode() & 0o7777) })?;
    }
    Ok(Plan::Staged(
        file,
        Upload {
            dir,
            name: CString::new(name).map_err(|_| os_err(EINVAL))?,
            replace,
        },
    ))
}

impl Upload {
    /// Put the uploaded file in place under its name.
    pub fn finish(&self, file: &File) -> io::Result<()> {
        if !self.replace {
            return match self.link(file, &self.name) {
                // Made meanwhile by someone else: an EXCL open must fail,
                // as it would have had the file existed at OPEN; a plain
                // CREAT|TRUNC would have truncated it, so replace it.
                Err(e) if e.raw_os_error() == Some(EEXIST) => self.replace_with(file),
                other => other,
            };
        }
        self.replace_with(file)
    }

    fn replace_with(&self, file: &File) -> io::Result<()> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mut last = os_err(EEXIST);
        for _ in 0..16 {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let mut tmp = b".".to_vec();
            tmp.extend_from_slice(self.name.as_bytes());
            tmp.extend_from_slice(format!(".sftp-{}-{n}", std::process::id()).as_bytes());
            let tmp = CString::new(tmp).map_err(|_| os_err(EINVAL))?;
            match self.link(file, &tmp) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(EEXIST) => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let dir = self.dir.as_raw_fd();
            // SAFETY: a directory descriptor and NUL-terminated names.
            let renamed = check(unsafe { renameat(dir, tmp.as_ptr(), dir, self.name.as_ptr()) });
            if renamed.is_err() {
                // SAFETY: as above; the name we just linked.
                unsafe { unlinkat(dir, tmp.as_ptr(), 0) };
            }
            return renamed;
        }
        Err(last)
    }

    /// Give the unnamed file a name in the target's directory. Through
    /// /proc/self/fd as linkat(2) suggests for unprivileged callers;
    /// AT_EMPTY_PATH where /proc is not mounted.
    fn link(&self, file: &File, name: &CString) -> io::Result<()> {
        let dir = self.dir.as_raw_fd();
        let proc_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| os_err(EINVAL))?;
        // SAFETY: NUL-terminated paths and open descriptors.
        let res = check(unsafe {
            linkat(AT_FDCWD, proc_path.as_ptr(), dir, name.as_ptr(), AT_SYMLINK_FOLLOW)
        });
        match res {
            Err(e) if e.raw_os_error() == Some(ENOENT) => {
                // SAFETY: as above.
                check(unsafe {
                    linkat(file.as_raw_fd(), c"".as_ptr(), dir, name.as_ptr(), AT_EMPTY_PATH)
                })
            }
            other => other,
        }
    }
}

/// Split a path into its directory and last component; `None` where the
/// last component is not a plain name ("", ".", "..", a trailing slash).
fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (&b"/"[..], &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b"."[..], path),
    };
    (!name.is_empty() && name != b"." && name != b"..").then_some((dir, name))
}
