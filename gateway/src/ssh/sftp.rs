//! The `sftp` subsystem (SFTP v3, as OpenSSH's `sftp` and `scp` speak it)
//! over the session's `ConfinedRoot`: every path is resolved inside the
//! sandbox root by the kernel, so `..`, absolute paths and symlinks cannot
//! leave it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use blink_sdk::fs::{ConfinedRoot, DirEntry, Metadata, OpenFlags as FsFlags};
use blink_sdk::manager::ActivityGuard;
use russh_sftp::protocol::{
    Attrs, Data, File as SftpFile, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode,
    Version,
};
use russh_sftp::server::StatusReply;

use super::ConnStats;

/// Open handles per sftp channel.
const MAX_HANDLES: usize = 256;
/// Largest read answered at once.
const MAX_READ: u32 = 256 * 1024;
/// Directory entries per READDIR reply.
const DIR_BATCH: usize = 128;

enum Open {
    File { file: Arc<File>, path: String },
    Dir { entries: Vec<DirEntry> },
}

pub struct Sftp {
    root: Arc<ConfinedRoot>,
    home: String,
    handles: HashMap<String, Open>,
    next_handle: u64,
    // What the channel log line reports when the handler is dropped.
    session: String,
    peer: std::net::SocketAddr,
    started: Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    stats: Arc<ConnStats>,
    _guard: ActivityGuard,
    _slot: super::channel::ChannelSlot,
}

impl Sftp {
    pub fn new(
        root: ConfinedRoot,
        session: String,
        peer: std::net::SocketAddr,
        stats: Arc<ConnStats>,
        guard: ActivityGuard,
        slot: super::channel::ChannelSlot,
    ) -> Self {
        let home = match root.metadata("/root") {
            Ok(m) if m.is_dir() => "/root".to_string(),
            _ => "/".to_string(),
        };
        Self {
            root: Arc::new(root),
            home,
            handles: HashMap::new(),
            next_handle: 0,
            session,
            peer,
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            stats,
            _guard: guard,
            _slot: slot,
        }
    }

    /// A client path as a sandbox path: relative paths are from home.
    fn path(&self, p: &str) -> Result<PathBuf, StatusReply> {
        if p.contains('\0') {
            return Err(StatusCode::BadMessage.into());
        }
        if p.starts_with('/') {
            Ok(PathBuf::from(p))
        } else {
            Ok(Path::new(&self.home).join(p))
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ConfinedRoot) -> blink_sdk::Result<T> + Send + 'static,
    ) -> Result<T, StatusReply> {
        let root = self.root.clone();
        match tokio::task::spawn_blocking(move || f(&root)).await {
            Ok(r) => r.map_err(status_of),
            Err(_) => Err(StatusCode::Failure.into()),
        }
    }

    fn add_handle(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        self.next_handle += 1;
        let h = self.next_handle.to_string();
        self.handles.insert(h.clone(), open);
        Ok(h)
    }

    fn file(&self, handle: &str) -> Result<(Arc<File>, String), StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File { file, path }) => Ok((file.clone(), path.clone())),
            _ => Err(StatusCode::Failure.with_message("invalid handle")),
        }
    }
}

impl Drop for Sftp {
    fn drop(&mut self) {
        let bin = self.bytes_in.load(Ordering::SeqCst);
        let bout = self.bytes_out.load(Ordering::SeqCst);
        self.stats.bytes_in.fetch_add(bin, Ordering::SeqCst);
        self.stats.bytes_out.fetch_add(bout, Ordering::SeqCst);
        tracing::info!(
            target: "blink::ssh::channel",
            peer = %self.peer,
            session = %self.session,
            kind = "subsystem",
            subsystem = "sftp",
            bytes_in = bin,
            bytes_out = bout,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "ssh channel closed"
        );
    }
}

/// Run the SFTP server on a channel. The protocol runs over an in-memory
/// pipe so that this task sees it end: then all replies are sent before
/// exit-status 0, EOF and close (scp checks the exit status).
pub async fn serve(channel: russh::Channel<russh::server::Msg>, handler: Sftp) {
    use tokio::io::AsyncWriteExt;
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    russh_sftp::server::run(theirs, handler).await;
    let (mut from_server, mut to_server) = tokio::io::split(ours);
    let (mut reader, writer) = channel.split();
    let input = async move {
        while let Some(msg) = reader.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } if to_server.write_all(&data).await.is_err() => {
                    break;
                }
                russh::ChannelMsg::Eof => break,
                _ => {}
            }
        }
        let _ = to_server.shutdown().await;
    };
    let mut out = writer.make_writer();
    let output = async {
        let _ = tokio::io::copy(&mut from_server, &mut out).await;
        let _ = out.flush().await;
    };
    tokio::join!(input, output);
    let _ = writer.exit_status(0).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// An SDK error as an SFTP status; messages carry sandbox paths only.
fn status_of(e: blink_sdk::Error) -> StatusReply {
    let code = match &e {
        blink_sdk::Error::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            _ => StatusCode::Failure,
        },
        blink_sdk::Error::PathOutsideSandbox { .. } => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

fn attrs_of(m: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(m.size),
        uid: Some(m.uid),
        user: None,
        gid: Some(m.gid),
        group: None,
        permissions: Some(m.mode),
        atime: Some(u32::try_from(m.atime.0).unwrap_or(0)),
        mtime: Some(u32::try_from(m.mtime.0).unwrap_or(0)),
    }
}

/// `ls -l`-style line, which OpenSSH's `sftp ls -l` prints as is.
fn longname(name: &str, m: &Metadata) -> String {
    let kind = match m.file_type {
        blink_sdk::fs::FileType::Dir => 'd',
        blink_sdk::fs::FileType::Symlink => 'l',
        blink_sdk::fs::FileType::Fifo => 'p',
        blink_sdk::fs::FileType::Socket => 's',
        blink_sdk::fs::FileType::CharDevice => 'c',
        blink_sdk::fs::FileType::BlockDevice => 'b',
        _ => '-',
    };
    let mut perms = String::with_capacity(9);
    for shift in [6u32, 3, 0] {
        let bits = (m.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    format!(
        "{kind}{perms} {:>3} {:<8} {:<8} {:>10} {} {name}",
        m.nlink, m.uid, m.gid, m.size, m.mtime.0
    )
}

fn time_of(secs: Option<u32>) -> Option<SystemTime> {
    secs.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(s)))
}

/// Lexical normalization of an absolute path (for paths that do not
/// exist yet): `.` dropped, `..` pops, never above `/`.
fn normalize(p: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let mut out = String::new();
    for part in parts {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(part.as_bytes()));
    }
    if out.is_empty() { "/".into() } else { out }
}

async fn set_attrs(
    sftp: &Sftp,
    path: PathBuf,
    file: Option<Arc<File>>,
    attrs: FileAttributes,
) -> Result<(), StatusReply> {
    if attrs.uid.is_some() || attrs.gid.is_some() {
        return Err(StatusCode::OpUnsupported.with_message("changing owners is not supported"));
    }
    sftp.blocking(move |root| {
        if let Some(size) = attrs.size {
            match &file {
                Some(f) => f
                    .set_len(size)
                    .map_err(|e| blink_sdk::Error::io("truncate", e))?,
                None => root
                    .open_file(&path, FsFlags::new().write(true), 0)?
                    .set_len(size)
                    .map_err(|e| blink_sdk::Error::io("truncate", e))?,
            }
        }
        if let Some(mode) = attrs.permissions {
            root.set_permissions(&path, mode & 0o7777)?;
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            root.set_times(&path, time_of(attrs.atime), time_of(attrs.mtime))?;
        }
        Ok(())
    })
    .await
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename)?;
        let flags = FsFlags::new()
            .read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND))
            .append(pflags.contains(OpenFlags::APPEND))
            .create(pflags.contains(OpenFlags::CREATE))
            .truncate(pflags.contains(OpenFlags::TRUNCATE))
            .create_new(pflags.contains(OpenFlags::CREATE) && pflags.contains(OpenFlags::EXCLUDE));
        let mode = attrs.permissions.unwrap_or(0o644) & 0o7777;
        let p = path.clone();
        let file = self
            .blocking(move |root| {
                let file = root.open_file(&p, flags, mode)?;
                let meta = file
                    .metadata()
                    .map_err(|e| blink_sdk::Error::io("stat", e))?;
                if meta.is_dir() {
                    return Err(blink_sdk::Error::io(
                        "open",
                        std::io::Error::from_raw_os_error(libc::EISDIR),
                    ));
                }
                Ok(file)
            })
            .await?;
        let handle = self.add_handle(Open::File {
            file: Arc::new(file),
            path: path.to_string_lossy().into_owned(),
        })?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure.with_message("invalid handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let (file, _) = self.file(&handle)?;
        let len = len.min(MAX_READ) as usize;
        let data = self
            .blocking(move |_| {
                let mut buf = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(blink_sdk::Error::io("read", e)),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            })
            .await?;
        if data.is_empty() && len > 0 {
            return Err(StatusCode::Eof.into());
        }
        self.bytes_out
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let (file, _) = self.file(&handle)?;
        let n = data.len() as u64;
        self.blocking(move |_| {
            file.write_all_at(&data, offset)
                .map_err(|e| blink_sdk::Error::io("write", e))
        })
        .await?;
        self.bytes_in.fetch_add(n, Ordering::SeqCst);
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.path(&path)?;
        let m = self.blocking(move |r| r.symlink_metadata(&p)).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&m),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = self.path(&path)?;
        let m = self.blocking(move |r| r.metadata(&p)).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&m),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let (file, _) = self.file(&handle)?;
        let size = self
            .blocking(move |_| {
                file.metadata()
                    .map_err(|e| blink_sdk::Error::io("fstat", e))
            })
            .await?;
        use std::os::unix::fs::MetadataExt;
        Ok(Attrs {
            id,
            attrs: FileAttributes {
                size: Some(size.len()),
                uid: Some(size.uid()),
                user: None,
                gid: Some(size.gid()),
                group: None,
                permissions: Some(size.mode()),
                atime: Some(u32::try_from(size.atime()).unwrap_or(0)),
                mtime: Some(u32::try_from(size.mtime()).unwrap_or(0)),
            },
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.path(&path)?;
        set_attrs(self, p, None, attrs).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let (file, path) = self.file(&handle)?;
        set_attrs(self, PathBuf::from(path), Some(file), attrs).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let p = self.path(&path)?;
        let mut entries = self.blocking(move |r| r.read_dir(&p)).await?;
        entries.sort_by(|a, b| b.name.cmp(&a.name));
        let handle = self.add_handle(Open::Dir { entries })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { entries }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("invalid handle"));
        };
        if entries.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let take = entries.len().min(DIR_BATCH);
        let batch = entries.split_off(entries.len() - take);
        let files = batch
            .iter()
            .rev()
            .map(|e| {
                let name = String::from_utf8_lossy(e.name.as_bytes()).into_owned();
                SftpFile {
                    longname: longname(&name, &e.metadata),
                    filename: name,
                    attrs: attrs_of(&e.metadata),
                }
            })
            .collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let p = self.path(&filename)?;
        self.blocking(move |r| r.remove_file(&p)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.path(&path)?;
        let mode = attrs.permissions.unwrap_or(0o755) & 0o7777;
        self.blocking(move |r| r.create_dir(&p, mode)).await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let p = self.path(&path)?;
        self.blocking(move |r| r.remove_dir(&p)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path(&path)?;
        let q = p.clone();
        let real = match self.blocking(move |r| r.canonicalize(&q)).await {
            Ok(real) => real.to_string_lossy().into_owned(),
            Err(_) => normalize(&p),
        };
        Ok(Name {
            id,
            files: vec![SftpFile::dummy(real)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let from = self.path(&oldpath)?;
        let to = self.path(&newpath)?;
        // SFTP v3 rename does not replace an existing target.
        self.blocking(move |r| r.rename_noreplace(&from, &to))
            .await?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path(&path)?;
        let target = self.blocking(move |r| r.read_link(&p)).await?;
        Ok(Name {
            id,
            files: vec![SftpFile::dummy(target.to_string_lossy().into_owned())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        // OpenSSH sends (target, link), the reverse of the draft's order;
        // like OpenSSH's server, take them in the order OpenSSH sends.
        let target = linkpath;
        if target.contains('\0') {
            return Err(StatusCode::BadMessage.into());
        }
        let link = self.path(&targetpath)?;
        self.blocking(move |r| r.symlink(&target, &link)).await?;
        Ok(ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), "/a/c");
        assert_eq!(normalize(Path::new("/../../etc")), "/etc");
        assert_eq!(normalize(Path::new("/")), "/");
    }
}
