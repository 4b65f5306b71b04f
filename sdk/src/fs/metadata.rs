//! What `ConfinedRoot` reports about a file: a small, owned copy of `stat`.

use std::ffi::OsString;
use std::time::{Duration, SystemTime};

/// The type of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl FileType {
    pub(crate) fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Self::File,
            libc::S_IFDIR => Self::Dir,
            libc::S_IFLNK => Self::Symlink,
            libc::S_IFIFO => Self::Fifo,
            libc::S_IFSOCK => Self::Socket,
            libc::S_IFCHR => Self::CharDevice,
            libc::S_IFBLK => Self::BlockDevice,
            _ => Self::Unknown,
        }
    }
}

/// Metadata of a file inside a sandbox, as `stat`/`lstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub file_type: FileType,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    /// Seconds and nanoseconds since the Unix epoch.
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Metadata {
    // Field types of `struct stat` differ between architectures; the
    // conversions are no-ops on some of them.
    #[allow(clippy::useless_conversion)]
    pub(crate) fn from_stat(st: &rustix::fs::Stat) -> Self {
        let mode = u32::from(st.st_mode);
        Self {
            file_type: FileType::from_mode(mode),
            mode,
            size: u64::try_from(i64::from(st.st_size)).unwrap_or(0),
            uid: u32::from(st.st_uid),
            gid: u32::from(st.st_gid),
            nlink: u64::from(st.st_nlink),
            ino: u64::from(st.st_ino),
            dev: u64::from(st.st_dev),
            rdev: u64::from(st.st_rdev),
            atime: (
                i64::from(st.st_atime),
                u32::try_from(st.st_atime_nsec).unwrap_or(0),
            ),
            mtime: (
                i64::from(st.st_mtime),
                u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            ),
            ctime: (
                i64::from(st.st_ctime),
                u32::try_from(st.st_ctime_nsec).unwrap_or(0),
            ),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Dir
    }

    pub fn is_file(&self) -> bool {
        self.file_type == FileType::File
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type == FileType::Symlink
    }

    /// Permission bits, including setuid, setgid and sticky (`mode & 0o7777`).
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Modification time as a `SystemTime`.
    pub fn modified(&self) -> SystemTime {
        to_system_time(self.mtime)
    }

    /// Access time as a `SystemTime`.
    pub fn accessed(&self) -> SystemTime {
        to_system_time(self.atime)
    }
}

fn to_system_time((secs, nanos): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nanos))
    }
}

/// One entry of a directory listing: its name and its `lstat` metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub metadata: Metadata,
}
