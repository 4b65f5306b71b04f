//! `blink-guest sftp-server [--home DIR] [--symlink-order openssh|draft]`:
//! an SFTP server (protocol version 3, draft-ietf-secsh-filexfer-02, with
//! OpenSSH's extensions) speaking on stdin/stdout until EOF on stdin.
//!
//! It runs inside the sandbox as an ordinary process of it, like OpenSSH's
//! sftp-server runs as the logged-in user: the kernel alone decides what
//! it may touch, and it does no path confinement of its own. Behaviour
//! follows OpenSSH's sftp-server.c (errno mapping, v3 RENAME refusing to
//! replace, SYMLINK argument order, `ls -l` long names, extensions).
//!
//! The client is untrusted: every field is parsed with bounds checks,
//! packets over [`MAX_PACKET`] end the session, at most [`MAX_HANDLES`]
//! handles are open, reads and directory batches are bounded, so memory
//! stays bounded whatever arrives.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, c_char};
use std::fs::{File, Metadata, ReadDir};
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod upload;

unsafe extern "C" {
    fn open(path: *const c_char, flags: i32, ...) -> i32;
    fn truncate(path: *const c_char, length: i64) -> i32;
    fn utimensat(dirfd: i32, path: *const c_char, times: *const Timespec, flags: i32) -> i32;
    fn fchmodat(dirfd: i32, path: *const c_char, mode: u32, flags: i32) -> i32;
    fn renameat2(
        olddirfd: i32,
        oldpath: *const c_char,
        newdirfd: i32,
        newpath: *const c_char,
        flags: u32,
    ) -> i32;
    fn statvfs(path: *const c_char, buf: *mut StatVfs) -> i32;
    fn fstatvfs(fd: i32, buf: *mut StatVfs) -> i32;
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
    fn close(fd: i32) -> i32;
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// glibc's `struct statvfs` on x86_64 (112 bytes; the spare area is
/// oversized on purpose).
#[repr(C)]
#[derive(Default)]
struct StatVfs {
    f_bsize: u64,
    f_frsize: u64,
    f_blocks: u64,
    f_bfree: u64,
    f_bavail: u64,
    f_files: u64,
    f_ffree: u64,
    f_favail: u64,
    f_fsid: u64,
    f_flag: u64,
    f_namemax: u64,
    spare: [u64; 8],
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

// Linux x86_64 constants.
const O_WRONLY: i32 = 0o1;
const O_RDWR: i32 = 0o2;
const O_CREAT: i32 = 0o100;
const O_EXCL: i32 = 0o200;
const O_NOCTTY: i32 = 0o400;
const O_TRUNC: i32 = 0o1000;
const O_APPEND: i32 = 0o2000;
const O_CLOEXEC: i32 = 0o2000000;
const AT_FDCWD: i32 = -100;
const AT_SYMLINK_NOFOLLOW: i32 = 0x100;
const RENAME_NOREPLACE: u32 = 1;
const ST_RDONLY: u64 = 1;
const ST_NOSUID: u64 = 2;
const POLLIN: i16 = 1;
const POLLOUT: i16 = 4;
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EBADF: i32 = 9;
const EACCES: i32 = 13;
const EFAULT: i32 = 14;
const EEXIST: i32 = 17;
const EXDEV: i32 = 18;
const ENOTDIR: i32 = 20;
const EINVAL: i32 = 22;
const ENAMETOOLONG: i32 = 36;
const ENOSYS: i32 = 38;
const ELOOP: i32 = 40;
const EOPNOTSUPP: i32 = 95;
const PATH_MAX: usize = 4096;
const SYMLOOP_MAX: u32 = 32;

// The protocol's numbers: packet types, status codes, open and attribute
// flags, shared with the gateway's SFTP audit.
#[path = "../src/sftp_wire.rs"]
mod sftp_wire;
use sftp_wire::*;

/// Largest payload of a READ reply or a WRITE request.
const MAX_DATA: usize = 256 * 1024;
/// Largest packet accepted (length field excluded): a full WRITE plus
/// room for its header. Anything longer ends the session.
const MAX_PACKET: usize = MAX_DATA + 1024;
/// Size advertised as max-packet-length (limits@openssh.com).
const ADVERTISED_PACKET: u64 = 256 * 1024;
/// Read and write lengths advertised (limits@openssh.com). OpenSSH's client
/// sizes its requests by them and keeps 64 in flight: 64 KiB keeps that
/// under 4 MiB, well inside what the gateway queues for a channel's stdin.
/// Larger requests from other clients are still served, up to `MAX_DATA`.
const ADVERTISED_DATA: u64 = 64 * 1024;
/// Open file and directory handles at once.
const MAX_HANDLES: usize = 256;
/// Input buffer: room for two packets of the largest size.
const IN_CAP: usize = 2 * (4 + MAX_PACKET);
/// Buffered replies are written out once they reach this size.
const FLUSH_AT: usize = 256 * 1024;
/// Entries and bytes per READDIR reply.
const DIR_BATCH: usize = 100;
const DIR_BATCH_BYTES: usize = 64 * 1024;
/// Largest part of /etc/passwd or /etc/group read, and most names kept
/// from each, for long names.
const ACCOUNTS_MAX: u64 = 1 << 20;
const ACCOUNTS_ENTRIES: usize = 16 * 1024;

const EXTENSIONS: [(&str, &str); 8] = [
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fstatvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("lsetstat@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("expand-path@openssh.com", "1"),
];

const USAGE: &str = "usage: blink-guest sftp-server [--home DIR] [--symlink-order openssh|draft]";

pub fn main(args: &[String]) -> ExitCode {
    let mut home: Option<String> = None;
    let mut draft_symlink = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--home" => {
                i += 1;
                let Some(dir) = args.get(i) else {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                };
                home = Some(dir.clone());
            }
            "--symlink-order" => {
                i += 1;
                match args.get(i).map(String::as_str) {
                    Some("openssh") => draft_symlink = false,
                    Some("draft") => draft_symlink = true,
                    _ => {
                        eprintln!("{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
        i += 1;
    }
    let home = home.unwrap_or_else(|| {
        if Path::new("/root").is_dir() {
            "/root".into()
        } else {
            "/".into()
        }
    });
    // Relative paths are relative to the home directory, as OpenSSH's are
    // relative to its working directory.
    let home = match std::env::set_current_dir(&home) {
        Ok(()) => home,
        Err(err) => {
            eprintln!("blink-guest sftp-server: cannot change directory to {home}: {err}");
            let _ = std::env::set_current_dir("/");
            "/".into()
        }
    };
    let mut server = Server {
        out: Out {
            buf: Vec::with_capacity(FLUSH_AT + MAX_PACKET + 64),
            version: 3,
        },
        handles: Handles {
            slots: Vec::new(),
            open: 0,
        },
        accounts: Accounts::default(),
        home: home.into_bytes(),
        draft_symlink,
        initialized: false,
    };
    match serve(&mut server) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("blink-guest sftp-server: {msg}");
            ExitCode::from(1)
        }
    }
}

/// The request loop: take complete packets from the input buffer, answer
/// them into the output buffer, and write the replies out before waiting
/// for more input.
fn serve(server: &mut Server) -> Result<(), String> {
    // SAFETY: descriptors 0 and 1 are ours for the life of the process;
    // ManuallyDrop keeps them from being closed.
    let stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    let stdout = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut input = vec![0u8; IN_CAP];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        while end - start >= 4 {
            let head = [
                input[start],
                input[start + 1],
                input[start + 2],
                input[start + 3],
            ];
            let len = u32::from_be_bytes(head) as usize;
            if len > MAX_PACKET {
                let _ = flush(&stdout, &mut server.out.buf);
                return Err(format!("packet too long ({len} bytes)"));
            }
            if end - start < 4 + len {
                break;
            }
            let packet = &input[start + 4..start + 4 + len];
            if let Err(msg) = server.process(packet) {
                let _ = flush(&stdout, &mut server.out.buf);
                return Err(msg);
            }
            start += 4 + len;
            if server.out.buf.len() >= FLUSH_AT {
                flush(&stdout, &mut server.out.buf)?;
            }
        }
        flush(&stdout, &mut server.out.buf)?;
        if start == end {
            start = 0;
            end = 0;
        } else if start > 0 {
            input.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        match read_some(&stdin, &mut input[end..]) {
            Ok(0) => return Ok(()),
            Ok(n) => end += n,
            Err(err) => return Err(format!("reading input: {err}")),
        }
    }
}

fn read_some(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(file.as_raw_fd(), POLLIN),
            other => return other,
        }
    }
}

fn flush(mut file: &File, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return Err("output closed".into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(file.as_raw_fd(), POLLOUT),
            Err(e) => return Err(format!("writing output: {e}")),
        }
    }
    buf.clear();
    Ok(())
}

/// Wait until a non-blocking descriptor is ready.
fn wait_fd(fd: i32, events: i16) {
    let mut pfd = PollFd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        poll(&mut pfd, 1, -1);
    }
}

/// A cursor over one packet; every getter fails instead of reading past
/// its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A path: a string without NUL bytes.
    fn path(&mut self) -> Option<&'a [u8]> {
        let s = self.string()?;
        if s.contains(&0) { None } else { Some(s) }
    }

    fn attrs(&mut self) -> Option<Attrs> {
        let mut a = Attrs {
            flags: self.u32()?,
            ..Attrs::default()
        };
        if a.flags & ATTR_SIZE != 0 {
            a.size = self.u64()?;
        }
        if a.flags & ATTR_UIDGID != 0 {
            a.uid = self.u32()?;
            a.gid = self.u32()?;
        }
        if a.flags & ATTR_PERMISSIONS != 0 {
            a.perm = self.u32()?;
        }
        if a.flags & ATTR_ACMODTIME != 0 {
            a.atime = self.u32()?;
            a.mtime = self.u32()?;
        }
        if a.flags & ATTR_EXTENDED != 0 {
            let count = self.u32()?;
            for _ in 0..count {
                self.string()?;
                self.string()?;
            }
        }
        Some(a)
    }
}

#[derive(Default)]
struct Attrs {
    flags: u32,
    size: u64,
    uid: u32,
    gid: u32,
    perm: u32,
    atime: u32,
    mtime: u32,
}

fn os(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

/// Paths handed to libc directly. Callers have rejected NUL bytes.
fn cstr(path: &[u8]) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::from_raw_os_error(EINVAL))
}

/// Turn a libc return value into a result carrying errno.
fn check(ret: i32) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The replies waiting to be written, and how to compose them.
struct Out {
    buf: Vec<u8>,
    /// The client's protocol version: status messages exist from 3 on.
    version: u32,
}

impl Out {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn string(&mut self, s: &[u8]) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s);
    }

    fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// Start a reply; returns where it starts, for [`Out::end`].
    fn begin(&mut self, kind: u8, id: u32) -> usize {
        let start = self.buf.len();
        self.u32(0);
        self.u8(kind);
        self.u32(id);
        start
    }

    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start - 4) as u32;
        self.patch_u32(start, len);
    }

    fn status(&mut self, id: u32, code: u32, msg: &str) {
        let start = self.begin(FXP_STATUS, id);
        self.u32(code);
        if self.version >= 3 {
            self.string(msg.as_bytes());
            self.string(b"");
        }
        self.end(start);
    }

    fn ok(&mut self, id: u32) {
        self.status(id, FX_OK, "Success");
    }

    fn failure(&mut self, id: u32) {
        self.status(id, FX_FAILURE, "Failure");
    }

    /// A failed system call, mapped as OpenSSH maps errno, with the
    /// errno's text as message.
    fn error(&mut self, id: u32, err: &io::Error) {
        let code = match err.raw_os_error() {
            Some(ENOENT | ENOTDIR | EBADF | ELOOP) => FX_NO_SUCH_FILE,
            Some(EPERM | EACCES | EFAULT) => FX_PERMISSION_DENIED,
            Some(ENAMETOOLONG | EINVAL) => FX_BAD_MESSAGE,
            Some(ENOSYS) => FX_OP_UNSUPPORTED,
            Some(_) => FX_FAILURE,
            None if err.kind() == io::ErrorKind::InvalidInput => FX_BAD_MESSAGE,
            None if err.kind() == io::ErrorKind::NotFound => FX_NO_SUCH_FILE,
            None => FX_FAILURE,
        };
        let text = err.to_string();
        // std appends " (os error N)" to strerror's text.
        let text = match text.find(" (os error ") {
            Some(i) => &text[..i],
            None => &text,
        };
        self.status(id, code, text);
    }

    fn result(&mut self, id: u32, res: io::Result<()>) {
        match res {
            Ok(()) => self.ok(id),
            Err(e) => self.error(id, &e),
        }
    }

    fn attrs(&mut self, m: &Metadata) {
        self.u32(ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME);
        self.u64(m.size());
        self.u32(m.uid());
        self.u32(m.gid());
        self.u32(m.mode());
        self.u32(m.atime() as u32);
        self.u32(m.mtime() as u32);
    }

    /// A NAME reply with one name and no attributes (REALPATH, READLINK).
    fn single_name(&mut self, id: u32, name: &[u8]) {
        let start = self.begin(FXP_NAME, id);
        self.u32(1);
        self.string(name);
        self.string(name);
        self.u32(0);
        self.end(start);
    }

    /// One READDIR entry: name, `ls -l` style long name, attributes.
    fn dir_entry(&mut self, name: &[u8], m: &Metadata, accounts: &Accounts, now: i64) {
        self.string(name);
        let at = self.buf.len();
        self.u32(0);
        long_name(&mut self.buf, name, m, accounts, now);
        let len = (self.buf.len() - at - 4) as u32;
        self.patch_u32(at, len);
        self.attrs(m);
    }
}

enum Handle {
    File(File),
    /// A whole-file upload, published under its name by CLOSE (upload.rs).
    Upload(File, upload::Upload),
    Dir {
        entries: ReadDir,
        path: Vec<u8>,
        /// "." and ".." were sent (std's ReadDir leaves them out).
        dots_sent: bool,
    },
}

/// Open handles; a handle is its slot number as 4 big-endian bytes, as in
/// OpenSSH.
struct Handles {
    slots: Vec<Option<Handle>>,
    open: usize,
}

impl Handles {
    fn insert(&mut self, h: Handle) -> Option<u32> {
        if self.open >= MAX_HANDLES {
            return None;
        }
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[i] = Some(h);
        self.open += 1;
        Some(i as u32)
    }

    fn index(&self, raw: &[u8]) -> Option<usize> {
        let raw: [u8; 4] = raw.try_into().ok()?;
        let i = u32::from_be_bytes(raw) as usize;
        match self.slots.get(i) {
            Some(Some(_)) => Some(i),
            _ => None,
        }
    }

    fn get_mut(&mut self, raw: &[u8]) -> Option<&mut Handle> {
        let i = self.index(raw)?;
        self.slots[i].as_mut()
    }

    fn file(&self, raw: &[u8]) -> Option<&File> {
        match self.slots[self.index(raw)?].as_ref() {
            Some(Handle::File(f) | Handle::Upload(f, _)) => Some(f),
            _ => None,
        }
    }

    fn remove(&mut self, raw: &[u8]) -> Option<Handle> {
        let i = self.index(raw)?;
        self.open -= 1;
        self.slots[i].take()
    }
}

struct Server {
    out: Out,
    handles: Handles,
    accounts: Accounts,
    home: Vec<u8>,
    /// SYMLINK arguments in the draft's order (link path, then target)
    /// instead of OpenSSH's (target, then link path).
    draft_symlink: bool,
    initialized: bool,
}

impl Server {
    /// Answer one packet. An error ends the session.
    fn process(&mut self, packet: &[u8]) -> Result<(), String> {
        let mut r = Reader { buf: packet };
        let Some(kind) = r.u8() else {
            return Err("empty packet".into());
        };
        if kind == FXP_INIT {
            let Some(version) = r.u32() else {
                return Err("malformed INIT".into());
            };
            self.out.version = version;
            self.initialized = true;
            let start = self.out.begin(FXP_VERSION, 3);
            for (name, version) in EXTENSIONS {
                self.out.string(name.as_bytes());
                self.out.string(version.as_bytes());
            }
            self.out.end(start);
            return Ok(());
        }
        if !self.initialized {
            return Err(format!("request of type {kind} before INIT"));
        }
        let Some(id) = r.u32() else {
            return Err(format!("request of type {kind} without an id"));
        };
        // Handlers parse their whole request before replying, so a None
        // (malformed request) never follows a partial reply.
        let parsed = match kind {
            FXP_OPEN => self.open(id, &mut r),
            FXP_CLOSE => self.close(id, &mut r),
            FXP_READ => self.read(id, &mut r),
            FXP_WRITE => self.write(id, &mut r),
            FXP_LSTAT => self.stat(id, &mut r, false),
            FXP_STAT => self.stat(id, &mut r, true),
            FXP_FSTAT => self.fstat(id, &mut r),
            FXP_SETSTAT => self.setstat(id, &mut r),
            FXP_FSETSTAT => self.fsetstat(id, &mut r),
            FXP_OPENDIR => self.opendir(id, &mut r),
            FXP_READDIR => self.readdir(id, &mut r),
            FXP_REMOVE => self.path_op(id, &mut r, |p| std::fs::remove_file(os(p))),
            FXP_RMDIR => self.path_op(id, &mut r, |p| std::fs::remove_dir(os(p))),
            FXP_MKDIR => self.mkdir(id, &mut r),
            FXP_REALPATH => self.realpath(id, &mut r),
            FXP_RENAME => self.two_path_op(id, &mut r, rename_noreplace),
            FXP_READLINK => self.readlink(id, &mut r),
            FXP_SYMLINK => {
                let draft = self.draft_symlink;
                self.two_path_op(id, &mut r, |a, b| {
                    let (target, link) = if draft { (b, a) } else { (a, b) };
                    std::os::unix::fs::symlink(os(target), os(link))
                })
            }
            FXP_EXTENDED => self.extended(id, &mut r),
            _ => {
                self.out
                    .status(id, FX_OP_UNSUPPORTED, "Operation unsupported");
                Some(())
            }
        };
        if parsed.is_none() {
            self.out.status(id, FX_BAD_MESSAGE, "Bad message");
        }
        Ok(())
    }

    fn extended(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        match r.string()? {
            b"posix-rename@openssh.com" => {
                self.two_path_op(id, r, |a, b| std::fs::rename(os(a), os(b)))
            }
            b"hardlink@openssh.com" => {
                self.two_path_op(id, r, |a, b| std::fs::hard_link(os(a), os(b)))
            }
            b"statvfs@openssh.com" => {
                let path = r.path()?;
                let mut st = StatVfs::default();
                let res = cstr(path).and_then(|p| {
                    // SAFETY: a NUL-terminated path and a buffer at least
                    // as large as glibc's struct statvfs.
                    check(unsafe { statvfs(p.as_ptr(), &mut st) })
                });
                self.statvfs_reply(id, res.map(|()| st));
                Some(())
            }
            b"fstatvfs@openssh.com" => {
                let h = r.string()?;
                let Some(file) = self.handles.file(h) else {
                    self.out.failure(id);
                    return Some(());
                };
                let mut st = StatVfs::default();
                // SAFETY: an open descriptor and a large enough buffer.
                let res = check(unsafe { fstatvfs(file.as_raw_fd(), &mut st) });
                self.statvfs_reply(id, res.map(|()| st));
                Some(())
            }
            b"fsync@openssh.com" => {
                let h = r.string()?;
                match self.handles.file(h) {
                    Some(file) => {
                        let res = file.sync_all();
                        self.out.result(id, res);
                    }
                    None => self.out.status(id, FX_NO_SUCH_FILE, "No such file"),
                }
                Some(())
            }
            b"lsetstat@openssh.com" => {
                let path = r.path()?;
                let a = r.attrs()?;
                if a.flags & ATTR_SIZE != 0 {
                    // Nonsensical for links, as OpenSSH answers.
                    self.out.status(id, FX_BAD_MESSAGE, "Bad message");
                } else {
                    let res = set_path_attrs(path, &a, false);
                    self.out.result(id, res);
                }
                Some(())
            }
            b"limits@openssh.com" => {
                let start = self.out.begin(FXP_EXTENDED_REPLY, id);
                self.out.u64(ADVERTISED_PACKET);
                self.out.u64(ADVERTISED_DATA);
                self.out.u64(ADVERTISED_DATA);
                self.out.u64(MAX_HANDLES as u64);
                self.out.end(start);
                Some(())
            }
            b"expand-path@openssh.com" => {
                let path = r.path()?;
                let res = self.expand(path).and_then(|p| realpath(&p));
                match res {
                    Ok(p) => self.out.single_name(id, &p),
                    Err(e) => self.out.error(id, &e),
                }
                Some(())
            }
            _ => {
                self.out
                    .status(id, FX_OP_UNSUPPORTED, "Operation unsupported");
                Some(())
            }
        }
    }

    fn statvfs_reply(&mut self, id: u32, res: io::Result<StatVfs>) {
        match res {
            Ok(st) => {
                let start = self.out.begin(FXP_EXTENDED_REPLY, id);
                for v in [
                    st.f_bsize,
                    st.f_frsize,
                    st.f_blocks,
                    st.f_bfree,
                    st.f_bavail,
                    st.f_files,
                    st.f_ffree,
                    st.f_favail,
                    st.f_fsid,
                    st.f_flag & (ST_RDONLY | ST_NOSUID),
                    st.f_namemax,
                ] {
                    self.out.u64(v);
                }
                self.out.end(start);
            }
            Err(e) => self.out.error(id, &e),
        }
    }

    fn path_op(
        &mut self,
        id: u32,
        r: &mut Reader,
        op: impl FnOnce(&[u8]) -> io::Result<()>,
    ) -> Option<()> {
        let path = r.path()?;
        let res = op(path);
        self.out.result(id, res);
        Some(())
    }

    fn two_path_op(
        &mut self,
        id: u32,
        r: &mut Reader,
        op: impl FnOnce(&[u8], &[u8]) -> io::Result<()>,
    ) -> Option<()> {
        let first = r.path()?;
        let second = r.path()?;
        let res = op(first, second);
        self.out.result(id, res);
        Some(())
    }

    fn open(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let path = r.path()?;
        let pflags = r.u32()?;
        let a = r.attrs()?;
        let mut flags = match (pflags & FXF_READ != 0, pflags & FXF_WRITE != 0) {
            (true, true) => O_RDWR,
            (false, true) => O_WRONLY,
            _ => 0,
        };
        for (fx, o) in [
            (FXF_APPEND, O_APPEND),
            (FXF_CREAT, O_CREAT),
            (FXF_TRUNC, O_TRUNC),
            (FXF_EXCL, O_EXCL),
        ] {
            if pflags & fx != 0 {
                flags |= o;
            }
        }
        let mode = if a.flags & ATTR_PERMISSIONS != 0 {
            a.perm & 0o7777
        } else {
            0o666
        };
        let res = cstr(path).and_then(|p| match upload::plan(path, flags, mode)? {
            upload::Plan::Staged(file, target) => Ok(Handle::Upload(file, target)),
            upload::Plan::InPlace => {
                // SAFETY: a NUL-terminated path; the descriptor returned is
                // owned by the File made from it.
                let fd = unsafe { open(p.as_ptr(), flags | O_CLOEXEC | O_NOCTTY, mode) };
                check(fd).map(|()| Handle::File(unsafe { File::from_raw_fd(fd) }))
            }
        });
        match res {
            Ok(handle) => match self.handles.insert(handle) {
                Some(h) => self.send_handle(id, h),
                None => self.out.status(id, FX_FAILURE, "Too many open handles"),
            },
            Err(e) => self.out.error(id, &e),
        }
        Some(())
    }

    fn send_handle(&mut self, id: u32, h: u32) {
        let start = self.out.begin(FXP_HANDLE, id);
        self.out.string(&h.to_be_bytes());
        self.out.end(start);
    }

    fn close(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let h = r.string()?;
        match self.handles.remove(h) {
            Some(Handle::Upload(file, target)) => {
                // Published only whole; on failure the unnamed file goes
                // with its descriptor and the old file (if any) stays.
                let res = target.finish(&file);
                self.out.result(id, res);
            }
            Some(Handle::File(file)) => {
                // Report close(2)'s own error (e.g. from NFS or a full disk).
                let fd = ManuallyDrop::new(file).as_raw_fd();
                // SAFETY: we own fd and close it exactly once.
                let res = check(unsafe { close(fd) });
                self.out.result(id, res);
            }
            Some(Handle::Dir { .. }) => self.out.ok(id),
            None => self.out.status(id, FX_NO_SUCH_FILE, "No such file"),
        }
        Some(())
    }

    fn read(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let h = r.string()?;
        let offset = r.u64()?;
        let len = (r.u32()? as usize).min(MAX_DATA);
        let Some(file) = self.handles.file(h) else {
            self.out.failure(id);
            return Some(());
        };
        let out = &mut self.out;
        let start = out.begin(FXP_DATA, id);
        let len_at = out.buf.len();
        out.u32(0);
        let data_at = out.buf.len();
        out.buf.resize(data_at + len, 0);
        let res = loop {
            if len == 0 {
                break Ok(0);
            }
            match file.read_at(&mut out.buf[data_at..], offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match res {
            Ok(0) if len > 0 => {
                out.buf.truncate(start);
                out.status(id, FX_EOF, "End of file");
            }
            Ok(n) => {
                out.buf.truncate(data_at + n);
                out.patch_u32(len_at, n as u32);
                out.end(start);
            }
            Err(e) => {
                out.buf.truncate(start);
                out.error(id, &e);
            }
        }
        Some(())
    }

    fn write(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let h = r.string()?;
        let offset = r.u64()?;
        let data = r.string()?;
        match self.handles.file(h) {
            // With O_APPEND, Linux's pwrite appends whatever the offset.
            Some(file) => {
                let res = file.write_all_at(data, offset);
                self.out.result(id, res);
            }
            None => self.out.failure(id),
        }
        Some(())
    }

    fn stat(&mut self, id: u32, r: &mut Reader, follow: bool) -> Option<()> {
        let path = os(r.path()?);
        let res = if follow {
            std::fs::metadata(path)
        } else {
            std::fs::symlink_metadata(path)
        };
        self.attrs_reply(id, res);
        Some(())
    }

    fn fstat(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let h = r.string()?;
        match self.handles.file(h) {
            Some(file) => {
                let res = file.metadata();
                self.attrs_reply(id, res);
            }
            None => self.out.failure(id),
        }
        Some(())
    }

    fn attrs_reply(&mut self, id: u32, res: io::Result<Metadata>) {
        match res {
            Ok(m) => {
                let start = self.out.begin(FXP_ATTRS, id);
                self.out.attrs(&m);
                self.out.end(start);
            }
            Err(e) => self.out.error(id, &e),
        }
    }

    fn setstat(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let path = r.path()?;
        let a = r.attrs()?;
        let res = set_path_attrs(path, &a, true);
        self.out.result(id, res);
        Some(())
    }

    fn fsetstat(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let h = r.string()?;
        let a = r.attrs()?;
        let Some(file) = self.handles.file(h) else {
            self.out.failure(id);
            return Some(());
        };
        // Like OpenSSH: apply every attribute, report the last failure.
        let mut res = Ok(());
        if a.flags & ATTR_SIZE != 0 {
            keep_err(&mut res, file.set_len(a.size));
        }
        if a.flags & ATTR_PERMISSIONS != 0 {
            let perm = std::fs::Permissions::from_mode(a.perm & 0o7777);
            keep_err(&mut res, file.set_permissions(perm));
        }
        if a.flags & ATTR_ACMODTIME != 0 {
            let times = std::fs::FileTimes::new()
                .set_accessed(UNIX_EPOCH + Duration::from_secs(a.atime.into()))
                .set_modified(UNIX_EPOCH + Duration::from_secs(a.mtime.into()));
            keep_err(&mut res, file.set_times(times));
        }
        if a.flags & ATTR_UIDGID != 0 {
            keep_err(
                &mut res,
                std::os::unix::fs::fchown(file, Some(a.uid), Some(a.gid)),
            );
        }
        self.out.result(id, res);
        Some(())
    }

    fn opendir(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let path = r.path()?;
        match std::fs::read_dir(os(path)) {
            Ok(entries) => {
                let handle = Handle::Dir {
                    entries,
                    path: path.to_vec(),
                    dots_sent: false,
                };
                match self.handles.insert(handle) {
                    Some(h) => {
                        self.accounts.refresh();
                        self.send_handle(id, h);
                    }
                    None => self.out.status(id, FX_FAILURE, "Too many open handles"),
                }
            }
            Err(e) => self.out.error(id, &e),
        }
        Some(())
    }

    fn readdir(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let h = r.string()?;
        let Some(Handle::Dir {
            entries,
            path,
            dots_sent,
        }) = self.handles.get_mut(h)
        else {
            self.out.failure(id);
            return Some(());
        };
        let out = &mut self.out;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let start = out.begin(FXP_NAME, id);
        let count_at = out.buf.len();
        out.u32(0);
        let mut count = 0u32;
        let mut error = None;
        if !*dots_sent {
            *dots_sent = true;
            let mut parent = path.clone();
            parent.extend_from_slice(b"/..");
            for (name, p) in [(&b"."[..], &path[..]), (&b".."[..], &parent[..])] {
                if let Ok(m) = std::fs::symlink_metadata(os(p)) {
                    out.dir_entry(name, &m, &self.accounts, now);
                    count += 1;
                }
            }
        }
        while (count as usize) < DIR_BATCH && out.buf.len() - start < DIR_BATCH_BYTES {
            match entries.next() {
                None => break,
                Some(Err(e)) => {
                    error = Some(e);
                    break;
                }
                Some(Ok(entry)) => {
                    // Entries that vanished meanwhile are skipped.
                    let Ok(m) = entry.metadata() else { continue };
                    out.dir_entry(entry.file_name().as_bytes(), &m, &self.accounts, now);
                    count += 1;
                }
            }
        }
        if count > 0 {
            out.patch_u32(count_at, count);
            out.end(start);
        } else {
            out.buf.truncate(start);
            match error {
                Some(e) => out.error(id, &e),
                None => out.status(id, FX_EOF, "End of file"),
            }
        }
        Some(())
    }

    fn mkdir(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let path = r.path()?;
        let a = r.attrs()?;
        let mode = if a.flags & ATTR_PERMISSIONS != 0 {
            a.perm & 0o7777
        } else {
            0o777
        };
        let res = std::fs::DirBuilder::new().mode(mode).create(os(path));
        self.out.result(id, res);
        Some(())
    }

    fn realpath(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let path = r.path()?;
        let path = if path.is_empty() { b"." } else { path };
        match realpath(path) {
            Ok(p) => self.out.single_name(id, &p),
            Err(e) => self.out.error(id, &e),
        }
        Some(())
    }

    fn readlink(&mut self, id: u32, r: &mut Reader) -> Option<()> {
        let path = r.path()?;
        match std::fs::read_link(os(path)) {
            Ok(target) => self.out.single_name(id, target.as_os_str().as_bytes()),
            Err(e) => self.out.error(id, &e),
        }
        Some(())
    }

    /// expand-path@openssh.com before canonicalisation: "" is ".", "~" and
    /// "~/..." are in the home directory, "~user/..." in that user's.
    fn expand(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        if path.is_empty() {
            return Ok(b".".to_vec());
        }
        let Some(rest) = path.strip_prefix(b"~") else {
            return Ok(path.to_vec());
        };
        let (user, rest) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        let mut dir = if user.is_empty() {
            self.home.clone()
        } else {
            home_of(user).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such user"))?
        };
        if !rest.is_empty() {
            if !dir.ends_with(b"/") {
                dir.push(b'/');
            }
            dir.extend_from_slice(rest);
        }
        Ok(dir)
    }
}

/// SETSTAT and lsetstat: size, permissions, times, owner, in OpenSSH's
/// order; every attribute is applied and the last failure reported.
fn set_path_attrs(path: &[u8], a: &Attrs, follow: bool) -> io::Result<()> {
    let c = cstr(path)?;
    let nofollow = if follow { 0 } else { AT_SYMLINK_NOFOLLOW };
    let mut res = Ok(());
    if a.flags & ATTR_SIZE != 0 {
        // SAFETY: a NUL-terminated path.
        keep_err(
            &mut res,
            check(unsafe { truncate(c.as_ptr(), a.size as i64) }),
        );
    }
    if a.flags & ATTR_PERMISSIONS != 0 {
        // SAFETY: a NUL-terminated path.
        let r = check(unsafe { fchmodat(AT_FDCWD, c.as_ptr(), a.perm & 0o7777, nofollow) });
        keep_err(&mut res, r);
    }
    if a.flags & ATTR_ACMODTIME != 0 {
        let times = [
            Timespec {
                tv_sec: a.atime.into(),
                tv_nsec: 0,
            },
            Timespec {
                tv_sec: a.mtime.into(),
                tv_nsec: 0,
            },
        ];
        // SAFETY: a NUL-terminated path and two timespecs.
        let r = check(unsafe { utimensat(AT_FDCWD, c.as_ptr(), times.as_ptr(), nofollow) });
        keep_err(&mut res, r);
    }
    if a.flags & ATTR_UIDGID != 0 {
        let p = os(path);
        let r = if follow {
            std::os::unix::fs::chown(p, Some(a.uid), Some(a.gid))
        } else {
            std::os::unix::fs::lchown(p, Some(a.uid), Some(a.gid))
        };
        keep_err(&mut res, r);
    }
    res
}

/// Remember a failure, keeping the latest one.
fn keep_err(res: &mut io::Result<()>, r: io::Result<()>) {
    if r.is_err() {
        *res = r;
    }
}

/// Version 3 RENAME: never replaces an existing target. renameat2's
/// RENAME_NOREPLACE does it atomically; where the file system lacks it,
/// OpenSSH's way: link then unlink for regular files, check then rename
/// for the rest.
fn rename_noreplace(old: &[u8], new: &[u8]) -> io::Result<()> {
    let (o, n) = (cstr(old)?, cstr(new)?);
    // SAFETY: two NUL-terminated paths.
    let res =
        check(unsafe { renameat2(AT_FDCWD, o.as_ptr(), AT_FDCWD, n.as_ptr(), RENAME_NOREPLACE) });
    match res {
        Err(e) if matches!(e.raw_os_error(), Some(EINVAL | ENOSYS)) => {}
        other => return other,
    }
    let (old, new) = (os(old), os(new));
    let exists = os_err(EEXIST);
    if std::fs::symlink_metadata(old)?.is_file() {
        match std::fs::hard_link(old, new) {
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(old) {
                    let _ = std::fs::remove_file(new);
                    return Err(e);
                }
                Ok(())
            }
            Err(e) if matches!(e.raw_os_error(), Some(EOPNOTSUPP | ENOSYS | EXDEV | EPERM)) => {
                if std::fs::metadata(new).is_ok() {
                    return Err(exists);
                }
                std::fs::rename(old, new)
            }
            Err(e) => Err(e),
        }
    } else if std::fs::metadata(new).is_ok() {
        Err(exists)
    } else {
        std::fs::rename(old, new)
    }
}

fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// OpenSSH's sftp_realpath: resolve ".", ".." and symbolic links; the last
/// component need not exist.
fn realpath(path: &[u8]) -> io::Result<Vec<u8>> {
    if path.is_empty() {
        return Err(os_err(ENOENT));
    }
    let (mut resolved, mut left) = if path[0] == b'/' {
        (b"/".to_vec(), path[1..].to_vec())
    } else {
        let cwd = std::env::current_dir()?;
        (cwd.into_os_string().into_encoded_bytes(), path.to_vec())
    };
    if left.len() >= PATH_MAX || resolved.len() >= PATH_MAX {
        return Err(os_err(ENAMETOOLONG));
    }
    let mut pos = 0;
    let mut symlinks = 0;
    while pos < left.len() {
        let (token_end, more) = match left[pos..].iter().position(|&b| b == b'/') {
            Some(i) => (pos + i, true),
            None => (left.len(), false),
        };
        let token = left[pos..token_end].to_vec();
        pos = if more { token_end + 1 } else { token_end };
        if !resolved.ends_with(b"/") {
            resolved.push(b'/');
        }
        if token.is_empty() || token == b"." {
            continue;
        }
        if token == b".." {
            strip_last(&mut resolved);
            continue;
        }
        resolved.extend_from_slice(&token);
        if resolved.len() >= PATH_MAX {
            return Err(os_err(ENAMETOOLONG));
        }
        let meta = match std::fs::symlink_metadata(os(&resolved)) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(ENOENT) && !more => return Ok(resolved),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            symlinks += 1;
            if symlinks > SYMLOOP_MAX {
                return Err(os_err(ELOOP));
            }
            let target = std::fs::read_link(os(&resolved))?
                .into_os_string()
                .into_encoded_bytes();
            if target.first() == Some(&b'/') {
                resolved.truncate(1);
            } else {
                strip_last(&mut resolved);
            }
            let mut next = target;
            if more {
                if !next.ends_with(b"/") {
                    next.push(b'/');
                }
                next.extend_from_slice(&left[pos..]);
            }
            if next.len() >= PATH_MAX {
                return Err(os_err(ENAMETOOLONG));
            }
            left = next;
            pos = 0;
        }
    }
    if resolved.len() > 1 && resolved.ends_with(b"/") {
        resolved.pop();
    }
    Ok(resolved)
}

/// Drop the last component of an absolute path, keeping a trailing '/'
/// ("/a/b/" and "/a/b" become "/a/"; "/" stays).
fn strip_last(path: &mut Vec<u8>) {
    if path.len() > 1 {
        path.pop();
        let i = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        path.truncate(i + 1);
    }
}

/// User and group names for long names, from the sandbox's /etc/passwd
/// and /etc/group, read again when they change.
#[derive(Default)]
struct Accounts {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
    stamps: [Option<(i64, i64, u64, u64)>; 2],
}

impl Accounts {
    fn refresh(&mut self) {
        for (i, file) in ["/etc/passwd", "/etc/group"].into_iter().enumerate() {
            let stamp = std::fs::metadata(file)
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()));
            if stamp == self.stamps[i] {
                continue;
            }
            self.stamps[i] = stamp;
            let map = if i == 0 {
                &mut self.users
            } else {
                &mut self.groups
            };
            map.clear();
            let data = read_accounts(file);
            for line in data.split(|&b| b == b'\n') {
                if map.len() >= ACCOUNTS_ENTRIES {
                    break;
                }
                let (Some(name), Some(id)) = (field(line, 0), field(line, 2)) else {
                    continue;
                };
                let id = std::str::from_utf8(id).ok().and_then(|s| s.parse().ok());
                // The first entry of an id wins, as with getpwuid.
                if let Some(id) = id
                    && !name.is_empty()
                    && name.len() <= 64
                {
                    map.entry(id).or_insert_with(|| name.to_vec());
                }
            }
        }
    }
}

/// The start of an account file (/etc/passwd, /etc/group).
fn read_accounts(file: &str) -> Vec<u8> {
    let mut data = Vec::new();
    if let Ok(f) = File::open(file) {
        let _ = f.take(ACCOUNTS_MAX).read_to_end(&mut data);
    }
    data
}

/// Field `n` (from 0) of an account file line.
fn field(line: &[u8], n: usize) -> Option<&[u8]> {
    line.split(|&b| b == b':').nth(n)
}

/// A user's home directory from /etc/passwd.
fn home_of(user: &[u8]) -> Option<Vec<u8>> {
    let data = read_accounts("/etc/passwd");
    let line = data
        .split(|&b| b == b'\n')
        .find(|line| field(line, 0) == Some(user))?;
    field(line, 5).map(<[u8]>::to_vec)
}

/// `ls -l` style line as OpenSSH's ls_file writes it (times in UTC).
fn long_name(out: &mut Vec<u8>, name: &[u8], m: &Metadata, accounts: &Accounts, now: i64) {
    out.extend_from_slice(&mode_string(m.mode()));
    // strmode's trailing blank, then "%3s" of the link count.
    let _ = write!(out, "  {:>3} ", m.nlink());
    pad_name(out, accounts.users.get(&m.uid()), m.uid());
    out.push(b' ');
    pad_name(out, accounts.groups.get(&m.gid()), m.gid());
    let _ = write!(out, " {:>8} ", m.size());
    let mtime = m.mtime();
    let (year, month, day) = civil_from_days(mtime.div_euclid(86400));
    let secs = mtime.rem_euclid(86400);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = MONTHS[(month as usize).saturating_sub(1) % 12];
    if now - (365 * 24 * 60 * 60) / 2 < mtime && now >= mtime {
        let _ = write!(
            out,
            "{mon} {day:>2} {:02}:{:02} ",
            secs / 3600,
            secs % 3600 / 60
        );
    } else {
        let _ = write!(out, "{mon} {day:>2}  {year} ");
    }
    out.extend_from_slice(name);
}

/// A user or group name (or its number) left-aligned in 8 columns.
fn pad_name(out: &mut Vec<u8>, name: Option<&Vec<u8>>, id: u32) {
    let start = out.len();
    match name {
        Some(n) => out.extend_from_slice(n),
        None => {
            let _ = write!(out, "{id}");
        }
    }
    let width = out.len() - start;
    out.resize(out.len() + 8usize.saturating_sub(width), b' ');
}

fn mode_string(mode: u32) -> [u8; 10] {
    let kind = match mode & 0o170000 {
        0o040000 => b'd',
        0o020000 => b'c',
        0o060000 => b'b',
        0o100000 => b'-',
        0o120000 => b'l',
        0o140000 => b's',
        0o010000 => b'p',
        _ => b'?',
    };
    let bit = |m: u32, c: u8| if mode & m != 0 { c } else { b'-' };
    let special = |x: u32, s: u32, set: u8| match (mode & x != 0, mode & s != 0) {
        (true, true) => set,
        (false, true) => set.to_ascii_uppercase(),
        (true, false) => b'x',
        (false, false) => b'-',
    };
    [
        kind,
        bit(0o400, b'r'),
        bit(0o200, b'w'),
        special(0o100, 0o4000, b's'),
        bit(0o040, b'r'),
        bit(0o020, b'w'),
        special(0o010, 0o2000, b's'),
        bit(0o004, b'r'),
        bit(0o002, b'w'),
        special(0o001, 0o1000, b't'),
    ]
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
