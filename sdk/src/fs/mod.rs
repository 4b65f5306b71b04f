//! Confined filesystem access: a host directory opened as the root of a
//! sandbox filesystem.
//!
//! Every path given to a [`ConfinedRoot`] is a *sandbox path*: absolute or
//! relative, both mean "from the root". Paths are resolved by the kernel with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so `..`, absolute
//! paths and symlinks (absolute or relative) behave exactly as if the process
//! were chrooted into the root: nothing can reach outside it.
//!
//! Operations on a final component (create, remove, rename, link, `lstat`,
//! `lchown`, ...) resolve the *parent* directory that way and then act on the
//! single name with the `*at()` system calls, which never follow a symlink in
//! a name without a slash. Operations that follow a final symlink open the
//! target with `O_PATH` in the root first and act on that descriptor (through
//! `/proc/self/fd` where Linux has no descriptor-based call, for `chmod` and
//! `utimensat`; the procfs link names the already-opened inode, so it cannot
//! be redirected).
//!
//! Path syntax follows `std::path`: trailing slashes and interior `.` are
//! ignored, so `a/` and `a/.` name `a` itself.

mod flags;
mod metadata;
mod tree;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

pub use flags::OpenFlags;
pub use metadata::{DirEntry, FileType, Metadata};
pub use tree::remove_tree;

use crate::error::{Error, Result};

/// How often an `openat2` that failed with `EAGAIN` (a concurrent rename or
/// mount while resolving in root) is retried.
const EAGAIN_RETRIES: usize = 32;

/// A host directory opened as a sandbox root. All operations stay inside it.
#[derive(Debug)]
pub struct ConfinedRoot {
    root: OwnedFd,
    host_path: PathBuf,
    owner: Option<(u32, u32)>,
}

/// The last component of a sandbox path.
enum Last<'a> {
    /// The path names the root itself (`/`, `.`, empty).
    Root,
    /// The path ends in `..`.
    Parent,
    Name(&'a OsStr),
}

struct Split<'a> {
    /// The parent, relative to the root (`.` for the root).
    parent: PathBuf,
    last: Last<'a>,
}

fn split(path: &Path) -> Split<'_> {
    let mut comps: Vec<Component<'_>> = path
        .components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect();
    let last = match comps.pop() {
        None => Last::Root,
        Some(Component::ParentDir) => Last::Parent,
        Some(Component::Normal(name)) => Last::Name(name),
        Some(_) => Last::Root,
    };
    let mut parent = PathBuf::from(".");
    for c in comps {
        parent.push(c.as_os_str());
    }
    Split { parent, last }
}

/// The path relative to the root, for resolving the whole path in the root.
fn relative(path: &Path) -> PathBuf {
    let mut rel = PathBuf::from(".");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            other => rel.push(other.as_os_str()),
        }
    }
    rel
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn err(op: &str, path: &Path, e: Errno) -> Error {
    Error::io(format!("{op} {}", show(path)), errno_io(e))
}

fn bad_last(op: &str, path: &Path) -> Error {
    Error::InvalidArgument(format!(
        "{op} {}: the path must end in a file name, not '/', '.' or '..'",
        show(path)
    ))
}

fn to_timespec(t: Option<SystemTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            },
            Err(e) => {
                let d = e.duration();
                let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                let mut nanos = i64::from(d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timespec {
                    tv_sec: secs,
                    tv_nsec: nanos,
                }
            }
        },
    }
}

impl AsFd for ConfinedRoot {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

impl ConfinedRoot {
    /// Open `dir` (a host path, trusted) as a sandbox root.
    pub fn open(dir: &Path) -> Result<Self> {
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(format!("open sandbox root {}", dir.display()), errno_io(e)))?;
        Ok(Self {
            root,
            host_path: dir.to_path_buf(),
            owner: None,
        })
    }

    /// Make everything this root creates belong to `uid:gid` (files,
    /// directories, symlinks, fifos). Needs `CAP_CHOWN` unless it is the
    /// caller's own id.
    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    /// The owner given to created files, if any.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// The host directory this root was opened from (for logs; never resolve
    /// sandbox paths against it).
    pub fn host_path(&self) -> &Path {
        &self.host_path
    }

    // ---- resolution -----------------------------------------------------

    /// `openat2` in the root, retrying on `EAGAIN`.
    fn openat2(
        &self,
        rel: &Path,
        flags: OFlags,
        mode: Mode,
    ) -> std::result::Result<OwnedFd, Errno> {
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(&self.root, rel, flags | OFlags::CLOEXEC, mode, resolve) {
                Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
                other => return other,
            }
        }
    }

    /// Open the parent directory of `path` (`O_PATH`) and return the final name.
    fn parent<'a>(&self, op: &str, path: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
        let split = split(path);
        let name = match split.last {
            Last::Name(name) => name,
            Last::Root | Last::Parent => return Err(bad_last(op, path)),
        };
        let fd = self
            .openat2(
                &split.parent,
                OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| err(op, path, e))?;
        Ok((fd, name))
    }

    /// Open the whole path with `O_PATH`, following a final symlink in root.
    fn opath(&self, op: &str, path: &Path) -> Result<OwnedFd> {
        self.openat2(&relative(path), OFlags::PATH, Mode::empty())
            .map_err(|e| err(op, path, e))
    }

    /// Run a creating syscall; if the kernel refuses because host root owns
    /// nothing where it creates (EOVERFLOW: a running sandbox's own mounts,
    /// such as its tmpfs `/tmp`, belong to its user namespace, where host
    /// root is unmapped), run it again as the root's owner.
    fn creating<T>(
        &self,
        op: impl Fn() -> std::result::Result<T, Errno>,
    ) -> std::result::Result<T, Errno> {
        match op() {
            Err(Errno::OVERFLOW) if self.owner.is_some() => {
                let _as = self.creating_as_owner();
                op()
            }
            other => other,
        }
    }

    /// While the returned guard lives, this thread creates inodes as the
    /// root's owner (fsuid/fsgid). Only a synchronous syscall runs under the
    /// guard, so the per-thread switch cannot leak into other work.
    fn creating_as_owner(&self) -> FsIdentity {
        match self.owner {
            Some((uid, gid)) if rustix::process::geteuid().is_root() => {
                // SAFETY: setfsgid/setfsuid change only this thread's
                // filesystem ids; the guard restores them.
                let (prev_gid, prev_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
                FsIdentity {
                    prev: Some((prev_uid as u32, prev_gid as u32)),
                }
            }
            _ => FsIdentity { prev: None },
        }
    }

    fn chown_created(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        op: &str,
        path: &Path,
    ) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw_unchecked(uid)),
                Some(rustix::fs::Gid::from_raw_unchecked(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| err(&format!("{op}: chown"), path, e))?;
        }
        Ok(())
    }

    // ---- files ----------------------------------------------------------

    /// Open a file inside the sandbox. `mode` is used when the file is
    /// created (subject to the umask); with an owner set (see
    /// [`ConfinedRoot::with_owner`]) a created file is chowned to it.
    pub fn open_file(&self, path: impl AsRef<Path>, opts: OpenFlags, mode: u32) -> Result<File> {
        let path = path.as_ref();
        let rel = relative(path);
        let base = opts.base_flags()?;
        let mode = Mode::from_raw_mode(mode & 0o7777);
        let open = |flags: OFlags, mode: Mode| {
            self.openat2(&rel, flags, mode)
                .map_err(|e| err("open", path, e))
        };
        if !opts.creates() {
            return Ok(File::from(open(base, Mode::empty())?));
        }
        if opts.create_new || self.owner.is_some() {
            let created =
                self.creating(|| self.openat2(&rel, base | OFlags::CREATE | OFlags::EXCL, mode));
            match created {
                Ok(fd) => {
                    let file = File::from(fd);
                    self.fchown_new(&file, path)?;
                    return Ok(file);
                }
                Err(e) if opts.create_new || e != Errno::EXIST => {
                    return Err(err("create", path, e));
                }
                Err(_) => {}
            }
            // It exists (perhaps as a symlink, followed unless told not to).
            match self.openat2(&rel, base, Mode::empty()) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(err("open", path, e)),
            }
            // A dangling symlink (or a race): create through it, in root, and
            // chown the result if it is ours.
            let file = File::from(
                self.creating(|| self.openat2(&rel, base | OFlags::CREATE, mode))
                    .map_err(|e| err("open", path, e))?,
            );
            let st = rustix::fs::fstat(&file).map_err(|e| err("stat", path, e))?;
            if Metadata::from_stat(&st).uid == rustix::process::geteuid().as_raw() {
                self.fchown_new(&file, path)?;
            }
            return Ok(file);
        }
        Ok(File::from(
            self.creating(|| self.openat2(&rel, base | OFlags::CREATE, mode))
                .map_err(|e| err("open", path, e))?,
        ))
    }

    fn fchown_new(&self, file: &File, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(
                file,
                Some(rustix::fs::Uid::from_raw_unchecked(uid)),
                Some(rustix::fs::Gid::from_raw_unchecked(gid)),
            )
            .map_err(|e| err("chown", path, e))?;
        }
        Ok(())
    }

    /// Read a whole file.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        use std::io::Read as _;
        let path = path.as_ref();
        let mut file = self.open_file(path, OpenFlags::read_only(), 0)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {}", show(path)), e))?;
        Ok(buf)
    }

    /// Create or replace a file's contents. `mode` applies when it is created.
    pub fn write(&self, path: impl AsRef<Path>, data: &[u8], mode: u32) -> Result<()> {
        use std::io::Write as _;
        let path = path.as_ref();
        let mut file = self.open_file(path, OpenFlags::create_truncate(), mode)?;
        file.write_all(data)
            .map_err(|e| Error::io(format!("write {}", show(path)), e))
    }

    /// Make a FIFO.
    pub fn mkfifo(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent("mkfifo", path)?;
        self.creating(|| {
            rustix::fs::mknodat(
                &dir,
                name,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(mode & 0o7777),
                0,
            )
        })
        .map_err(|e| err("mkfifo", path, e))?;
        self.chown_created(dir.as_fd(), name, "mkfifo", path)
    }

    /// Make an overlayfs whiteout (a character device 0/0): in an
    /// overlay's upper layer it hides the lower layer's file of that name.
    pub fn whiteout(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent("whiteout", path)?;
        self.creating(|| {
            rustix::fs::mknodat(
                &dir,
                name,
                rustix::fs::FileType::CharacterDevice,
                Mode::empty(),
                0,
            )
        })
        .map_err(|e| err("whiteout", path, e))?;
        self.chown_created(dir.as_fd(), name, "whiteout", path)
    }

    /// Set an extended attribute, following symlinks inside the root
    /// (through a descriptor: never a path the kernel resolves again).
    pub fn set_xattr(&self, path: impl AsRef<Path>, name: &str, value: &[u8]) -> Result<()> {
        let path = path.as_ref();
        let fd = self.opath("setxattr", path)?;
        let proc = proc_fd_path(&fd);
        rustix::fs::setxattr(&proc, name, value, rustix::fs::XattrFlags::empty())
            .map_err(|e| err("setxattr", path, e))
    }

    // ---- directories ----------------------------------------------------

    /// Create one directory; its parent must exist.
    pub fn create_dir(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent("mkdir", path)?;
        self.creating(|| rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & 0o7777)))
            .map_err(|e| err("mkdir", path, e))?;
        self.chown_created(dir.as_fd(), name, "mkdir", path)
    }

    /// Create a directory and its missing parents. Existing components may be
    /// symlinks to directories (followed inside the root).
    pub fn create_dir_all(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        let path = path.as_ref();
        let mut prefix = PathBuf::from("/");
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
                Component::ParentDir => {
                    prefix.push("..");
                    continue;
                }
                Component::Normal(n) => prefix.push(n),
            }
            // Fast path: already a directory (following symlinks in root).
            if let Ok(fd) = self.openat2(
                &relative(&prefix),
                OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            ) {
                drop(fd);
                continue;
            }
            let (dir, name) = self.parent("mkdir", &prefix)?;
            let made = self
                .creating(|| rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & 0o7777)));
            match made {
                Ok(()) => self.chown_created(dir.as_fd(), name, "mkdir", &prefix)?,
                Err(Errno::EXIST) => {
                    // Raced with another creator, or a non-directory is there.
                    if !self.metadata(&prefix)?.is_dir() {
                        return Err(err("mkdir", &prefix, Errno::NOTDIR));
                    }
                }
                Err(e) => return Err(err("mkdir", &prefix, e)),
            }
        }
        Ok(())
    }

    /// List a directory (following a final symlink in root). Entries are
    /// sorted by name and carry their `lstat` metadata; `.` and `..` are left
    /// out.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        let path = path.as_ref();
        let fd = self
            .openat2(
                &relative(path),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| err("read dir", path, e))?;
        let mut out = list_dir(fd.as_fd()).map_err(|e| err("read dir", path, e))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    // ---- removal --------------------------------------------------------

    /// Remove a file, symlink, fifo or socket (never follows the last symlink).
    pub fn remove_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent("remove", path)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| err("remove", path, e))
    }

    /// Remove an empty directory.
    pub fn remove_dir(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent("rmdir", path)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(|e| err("rmdir", path, e))
    }

    /// Remove a directory tree, or a single non-directory (a final symlink is
    /// removed, not followed). The root itself cannot be removed; use
    /// [`ConfinedRoot::remove_dir_contents`] to empty it.
    pub fn remove_dir_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (dir, name) = self.parent("remove", path)?;
        remove_tree_at(dir.as_fd(), name).map_err(|e| err("remove", path, e))
    }

    /// Remove everything inside a directory (following a final symlink in
    /// root), keeping the directory. Entries for which `keep(name)` is true
    /// are left alone.
    pub fn remove_dir_contents(
        &self,
        path: impl AsRef<Path>,
        keep: &dyn Fn(&OsStr) -> bool,
    ) -> Result<()> {
        let path = path.as_ref();
        let fd = self
            .openat2(
                &relative(path),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| err("empty dir", path, e))?;
        let names = dir_names(fd.as_fd()).map_err(|e| err("empty dir", path, e))?;
        for name in names {
            if keep(&name) {
                continue;
            }
            match remove_tree_at(fd.as_fd(), &name) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(err("remove", &path.join(&name), e)),
            }
        }
        Ok(())
    }

    // ---- names ----------------------------------------------------------

    /// Rename `from` to `to`, replacing `to` if it exists (as `rename(2)`).
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        self.rename_with(from.as_ref(), to.as_ref(), RenameFlags::empty())
    }

    /// Rename `from` to `to`, failing if `to` exists (`RENAME_NOREPLACE`).
    pub fn rename_noreplace(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        self.rename_with(from.as_ref(), to.as_ref(), RenameFlags::NOREPLACE)
    }

    fn rename_with(&self, from: &Path, to: &Path, flags: RenameFlags) -> Result<()> {
        let (fdir, fname) = self.parent("rename", from)?;
        let (tdir, tname) = self.parent("rename", to)?;
        let ctx = || format!("rename {} to {}", show(from), show(to));
        if flags.is_empty() {
            rustix::fs::renameat(&fdir, fname, &tdir, tname)
        } else {
            rustix::fs::renameat_with(&fdir, fname, &tdir, tname, flags)
        }
        .map_err(|e| Error::io(ctx(), errno_io(e)))
    }

    /// Create a symlink at `link` whose target is stored verbatim. The target
    /// is interpreted later, inside the sandbox (or in root by this type).
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<()> {
        let link = link.as_ref();
        let target = target.as_ref();
        if target.as_os_str().is_empty() || target.as_os_str().as_bytes().contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "symlink {}: empty or invalid target",
                show(link)
            )));
        }
        let (dir, name) = self.parent("symlink", link)?;
        self.creating(|| rustix::fs::symlinkat(target, &dir, name))
            .map_err(|e| err("symlink", link, e))?;
        self.chown_created(dir.as_fd(), name, "symlink", link)
    }

    /// The target of a symlink, verbatim.
    pub fn read_link(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let path = path.as_ref();
        let (dir, name) = self.parent("readlink", path)?;
        let target =
            rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(|e| err("readlink", path, e))?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// Hard-link `existing` (not following a final symlink) as `new`; both
    /// are sandbox paths.
    pub fn hard_link(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> Result<()> {
        let (existing, new) = (existing.as_ref(), new.as_ref());
        let (edir, ename) = self.parent("link", existing)?;
        let (ndir, nname) = self.parent("link", new)?;
        rustix::fs::linkat(&edir, ename, &ndir, nname, AtFlags::empty()).map_err(|e| {
            Error::io(
                format!("link {} to {}", show(new), show(existing)),
                errno_io(e),
            )
        })
    }

    // ---- metadata -------------------------------------------------------

    /// `stat`, following symlinks inside the root.
    pub fn metadata(&self, path: impl AsRef<Path>) -> Result<Metadata> {
        let path = path.as_ref();
        let fd = self.opath("stat", path)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| err("stat", path, e))?;
        Ok(Metadata::from_stat(&st))
    }

    /// `lstat`: a final symlink is described, not followed.
    pub fn symlink_metadata(&self, path: impl AsRef<Path>) -> Result<Metadata> {
        let path = path.as_ref();
        match split(path).last {
            // `.`, `..` and the root are never symlinks.
            Last::Root | Last::Parent => self.metadata(path),
            Last::Name(_) => {
                let (dir, name) = self.parent("lstat", path)?;
                let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| err("lstat", path, e))?;
                Ok(Metadata::from_stat(&st))
            }
        }
    }

    /// Whether anything (even a dangling symlink) exists at `path`.
    pub fn exists(&self, path: impl AsRef<Path>) -> Result<bool> {
        match self.symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `chmod`, following symlinks inside the root (Linux cannot change a
    /// symlink's own mode).
    pub fn set_permissions(&self, path: impl AsRef<Path>, mode: u32) -> Result<()> {
        let path = path.as_ref();
        let fd = self.opath("chmod", path)?;
        let proc = proc_fd_path(&fd);
        rustix::fs::chmodat(
            rustix::fs::CWD,
            &proc,
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| err("chmod", path, e))
    }

    /// `chown`, following symlinks inside the root.
    pub fn chown(&self, path: impl AsRef<Path>, uid: u32, gid: u32) -> Result<()> {
        let path = path.as_ref();
        let fd = self.opath("chown", path)?;
        rustix::fs::chownat(
            &fd,
            "",
            Some(rustix::fs::Uid::from_raw_unchecked(uid)),
            Some(rustix::fs::Gid::from_raw_unchecked(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e| err("chown", path, e))
    }

    /// `lchown`: a final symlink is changed itself, not followed.
    pub fn lchown(&self, path: impl AsRef<Path>, uid: u32, gid: u32) -> Result<()> {
        let path = path.as_ref();
        if !matches!(split(path).last, Last::Name(_)) {
            return self.chown(path, uid, gid);
        }
        let (dir, name) = self.parent("lchown", path)?;
        rustix::fs::chownat(
            &dir,
            name,
            Some(rustix::fs::Uid::from_raw_unchecked(uid)),
            Some(rustix::fs::Gid::from_raw_unchecked(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err("lchown", path, e))
    }

    /// Set access and modification times (`None` leaves one unchanged),
    /// following symlinks inside the root.
    pub fn set_times(
        &self,
        path: impl AsRef<Path>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        let path = path.as_ref();
        let fd = self.opath("utimes", path)?;
        let times = Timestamps {
            last_access: to_timespec(atime),
            last_modification: to_timespec(mtime),
        };
        rustix::fs::utimensat(rustix::fs::CWD, proc_fd_path(&fd), &times, AtFlags::empty())
            .map_err(|e| err("utimes", path, e))
    }

    /// Set times of a symlink itself (or of anything, not following a final
    /// symlink).
    pub fn set_symlink_times(
        &self,
        path: impl AsRef<Path>,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        let path = path.as_ref();
        if !matches!(split(path).last, Last::Name(_)) {
            return self.set_times(path, atime, mtime);
        }
        let (dir, name) = self.parent("utimes", path)?;
        let times = Timestamps {
            last_access: to_timespec(atime),
            last_modification: to_timespec(mtime),
        };
        rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err("utimes", path, e))
    }

    /// The real path of `path` as seen inside the sandbox (absolute, all
    /// symlinks resolved in root). Never a host path.
    pub fn canonicalize(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let path = path.as_ref();
        let fd = self.opath("canonicalize", path)?;
        let host = read_proc_link(&fd).map_err(|e| err("canonicalize", path, e))?;
        let root = read_proc_link(&self.root).map_err(|e| err("canonicalize", path, e))?;
        sandbox_relative(&root, &host).ok_or_else(|| Error::PathOutsideSandbox {
            path: show(path),
            reason: "its real path could not be expressed inside the sandbox (moved or deleted?)"
                .into(),
        })
    }
}

/// `/proc/self/fd/N` for an open descriptor.
fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn read_proc_link(fd: &OwnedFd) -> std::result::Result<PathBuf, Errno> {
    let target = rustix::fs::readlinkat(rustix::fs::CWD, proc_fd_path(fd), Vec::new())?;
    Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
}

/// `host` expressed relative to `root`, as an absolute sandbox path.
fn sandbox_relative(root: &Path, host: &Path) -> Option<PathBuf> {
    let rest = host.strip_prefix(root).ok()?;
    Some(Path::new("/").join(rest))
}

/// Names in a directory, without `.` and `..`.
fn dir_names(dir: BorrowedFd<'_>) -> std::result::Result<Vec<OsString>, Errno> {
    let mut reader = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(bytes).to_os_string());
    }
    Ok(names)
}

fn list_dir(dir: BorrowedFd<'_>) -> std::result::Result<Vec<DirEntry>, Errno> {
    let mut out = Vec::new();
    for name in dir_names(dir)? {
        match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => out.push(DirEntry {
                name,
                metadata: Metadata::from_stat(&st),
            }),
            // Removed since it was listed.
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Remove `name` in `dir`: a tree if it is a directory (never following
/// symlinks), else the single entry.
///
/// Iterative, with one open directory per level on an explicit stack: a
/// recursive walk overflows the thread's stack on a deep tree (an image
/// layer can build thousands of levels), which aborts the process. A tree
/// deeper than the descriptor limit fails with `EMFILE` instead.
fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<(), Errno> {
    /// A directory being emptied: its descriptor, the names left in it and
    /// its own name in its parent.
    struct Level {
        fd: OwnedFd,
        names: Vec<OsString>,
        name: OsString,
    }
    // A single name without a slash, O_NOFOLLOW: cannot leave the parent.
    let open = |parent: BorrowedFd<'_>, name: &OsStr| {
        rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let is_dir = |parent: BorrowedFd<'_>, name: &OsStr| {
        rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| Metadata::from_stat(&st).file_type == FileType::Dir)
    };
    if !is_dir(dir, name)? {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let fd = open(dir, name)?;
    let names = dir_names(fd.as_fd())?;
    let mut stack = vec![Level {
        fd,
        names,
        name: name.to_os_string(),
    }];
    while let Some(top) = stack.last_mut() {
        if let Some(entry) = top.names.pop() {
            // Entries removed meanwhile (NOENT) are fine below the top.
            let parent = top.fd.as_fd();
            match is_dir(parent, &entry) {
                Ok(false) => match rustix::fs::unlinkat(parent, &entry, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                },
                Ok(true) => match open(parent, &entry) {
                    Ok(fd) => {
                        let names = dir_names(fd.as_fd())?;
                        stack.push(Level {
                            fd,
                            names,
                            name: entry,
                        });
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e),
                },
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let Some(done) = stack.pop() else { break };
        drop(done.fd);
        let parent = stack.last().map_or(dir, |l| l.fd.as_fd());
        match rustix::fs::unlinkat(parent, &done.name, AtFlags::REMOVEDIR) {
            Ok(()) => {}
            Err(Errno::NOENT) if !stack.is_empty() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Restores a thread's filesystem ids when dropped.
struct FsIdentity {
    prev: Option<(u32, u32)>,
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.prev {
            // SAFETY: restores this thread's previous filesystem ids.
            unsafe {
                libc::setfsuid(uid);
                libc::setfsgid(gid);
            }
        }
    }
}

#[cfg(test)]
mod tests;
