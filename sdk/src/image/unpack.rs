//! Applying an image's layers to a directory.
//!
//! Every write goes through [`ConfinedRoot`], so a hostile layer (entries
//! with `..`, absolute paths, entries written through a symlink pointing at
//! `/` or `..`, hard links to host files) cannot touch anything outside the
//! destination: paths resolve as if chrooted into it.
//!
//! Tar ownership is never preserved: everything belongs to the caller, or to
//! `owner` when given. Setuid and setgid bits are dropped. Character and
//! block devices are skipped (the runtime provides `/dev`).

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use tar::EntryType;
use tracing::{debug, info};

use super::Progress;
use super::counted::Counted;
use super::oci::{Capped, Compression, GZIP_MAGIC, HashingReader, TOO_LARGE_MARK, ZSTD_MAGIC};
use super::store::{Layer, ResolvedImage};
use crate::error::{Error, Result};
use crate::fs::{ConfinedRoot, OpenFlags};

/// Limits for unpacking an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Most bytes of uncompressed layer data (all layers together).
    pub max_bytes: u64,
    /// Most tar entries (all layers together).
    pub max_entries: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Unpack `image` into `dest`, which should be an empty directory; the files
/// belong to `owner` when given, else to the caller. On error `dest` holds a
/// partial tree: the caller removes it.
pub fn unpack(image: &ResolvedImage, dest: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    unpack_with(image, dest, owner, &UnpackOptions::default(), None)
}

/// [`unpack`] with limits and a progress callback (`done`/`total` are
/// compressed layer bytes).
pub fn unpack_with(
    image: &ResolvedImage,
    dest: &Path,
    owner: Option<(u32, u32)>,
    opts: &UnpackOptions,
    progress: Option<&dyn Fn(Progress)>,
) -> Result<()> {
    let mut root = ConfinedRoot::open(dest)?;
    if let Some((uid, gid)) = owner {
        root = root.with_owner(uid, gid);
    }
    let total = image
        .layers
        .iter()
        .fold(0u64, |n, l| n.saturating_add(l.size));
    let mut state = State {
        root,
        opts: *opts,
        bytes: 0,
        entries: 0,
        dirs: BTreeMap::new(),
        layer_paths: HashSet::new(),
        progress,
        done_before: 0,
        total,
    };
    for (i, layer) in image.layers.iter().enumerate() {
        debug!(layer = %layer.digest, n = i + 1, of = image.layers.len(), "applying layer");
        state.apply_layer(layer)?;
        state.done_before += layer.size;
    }
    state.finish_dirs()?;
    if let Some(p) = progress {
        p(Progress::new("unpack", total, total));
    }
    info!(image = %image.reference, dest = %dest.display(), entries = state.entries, bytes = state.bytes, "unpacked image");
    Ok(())
}

struct State<'a> {
    root: ConfinedRoot,
    opts: UnpackOptions,
    bytes: u64,
    entries: u64,
    /// Directories to give their final mode and mtime once all is written.
    dirs: BTreeMap<PathBuf, (u32, u64)>,
    /// Paths written by the current layer (whiteouts spare them).
    layer_paths: HashSet<PathBuf>,
    progress: Option<&'a dyn Fn(Progress)>,
    done_before: u64,
    total: u64,
}

type Blob = HashingReader<BufReader<Counted>>;

/// A layer stream: decompressor over a hashing reader over the blob file.
enum Stream {
    Plain(Blob),
    Gzip(Box<flate2::read::MultiGzDecoder<Blob>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<Blob>>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
            Self::Zstd(r) => r.read(buf),
        }
    }
}

impl Stream {
    /// Drain everything and return the blob's digest and size.
    fn finish(self) -> io::Result<(String, u64)> {
        match self {
            Self::Plain(r) => r.finish(),
            Self::Gzip(mut r) => {
                io::copy(&mut r, &mut io::sink())?;
                r.into_inner().finish()
            }
            Self::Zstd(mut r) => {
                io::copy(&mut r, &mut io::sink())?;
                // Bytes the decoder's buffer read ahead were hashed on the
                // way in; the rest of the blob is read by `finish`.
                r.finish().into_inner().finish()
            }
        }
    }
}

/// Lexically clean a tar path into an absolute sandbox path: `.` dropped,
/// `..` clamped at `/`. `None` for the root itself.
pub(crate) fn clean_path(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for comp in Path::new(OsStr::from_bytes(raw)).components() {
        match comp {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    (out != Path::new("/")).then_some(out)
}

/// A header's mtime; one past what `SystemTime` holds (a hostile header can
/// say up to 2^64 - 1 seconds) is the epoch, as for regular files.
fn mtime(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

impl State<'_> {
    fn open_stream(&self, layer: &Layer, count: Rc<Cell<u64>>) -> Result<Stream> {
        let what = || format!("layer {}", layer.digest);
        let mut file = File::open(&layer.path)
            .map_err(|e| Error::io(format!("opening {}", layer.path.display()), e))?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic)
            .map_err(|e| Error::io(format!("reading {}", layer.path.display()), e))?;
        let head = &magic[..n];
        file.seek(io::SeekFrom::Start(0))
            .map_err(|e| Error::io(format!("reading {}", layer.path.display()), e))?;
        // Trust the bytes over the media type: some tools label gzip as tar.
        let compression = if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head == ZSTD_MAGIC {
            Compression::Zstd
        } else {
            layer.compression
        };
        let hashing =
            HashingReader::new(BufReader::with_capacity(1 << 16, Counted { file, count }));
        match compression {
            Compression::None => Ok(Stream::Plain(hashing)),
            Compression::Gzip => Ok(Stream::Gzip(Box::new(flate2::read::MultiGzDecoder::new(
                hashing,
            )))),
            Compression::Zstd => Ok(Stream::Zstd(Box::new(
                zstd::stream::read::Decoder::new(hashing).map_err(|e| Error::InvalidImage {
                    what: what(),
                    reason: format!("not a zstd stream: {e}"),
                })?,
            ))),
        }
    }

    fn apply_layer(&mut self, layer: &Layer) -> Result<()> {
        let what = format!("layer {}", layer.digest);
        let count = Rc::new(Cell::new(0u64));
        let stream = self.open_stream(layer, count.clone())?;
        self.layer_paths.clear();
        let cap = self.opts.max_bytes.saturating_sub(self.bytes);
        let mut archive = tar::Archive::new(Capped {
            inner: stream,
            left: cap,
        });
        let max_bytes = self.opts.max_bytes;
        let bad = |e: io::Error| {
            if e.to_string() == TOO_LARGE_MARK {
                Error::TooLarge {
                    what: "unpacked image".into(),
                    size: max_bytes.saturating_add(1),
                    limit: max_bytes,
                }
            } else {
                Error::InvalidImage {
                    what: what.clone(),
                    reason: format!("bad tar stream: {e}"),
                }
            }
        };
        let mut last_report = 0u64;
        {
            let entries = archive.entries().map_err(bad)?;
            for entry in entries {
                let mut entry = entry.map_err(bad)?;
                self.entries += 1;
                if self.entries > self.opts.max_entries {
                    return Err(Error::TooLarge {
                        what: "unpacked image (entries)".into(),
                        size: self.entries,
                        limit: self.opts.max_entries,
                    });
                }
                self.apply_entry(&mut entry, &what).map_err(|e| match e {
                    Error::Io { context, source } if source.to_string() == TOO_LARGE_MARK => {
                        let _ = context;
                        Error::TooLarge {
                            what: "unpacked image".into(),
                            size: self.opts.max_bytes.saturating_add(1),
                            limit: self.opts.max_bytes,
                        }
                    }
                    other => other,
                })?;
                if let Some(p) = self.progress {
                    let done = self.done_before + count.get();
                    if done >= last_report + (1 << 20) {
                        last_report = done;
                        p(Progress::new("unpack", done.min(self.total), self.total));
                    }
                }
            }
        }
        let stream = archive.into_inner().inner;
        let (digest, size) = stream.finish().map_err(bad)?;
        if digest != layer.digest {
            return Err(Error::InvalidImage {
                what,
                reason: format!("content has digest {digest} (corrupted blob?)"),
            });
        }
        if size != layer.size {
            return Err(Error::InvalidImage {
                what,
                reason: format!("blob is {size} bytes, the manifest says {}", layer.size),
            });
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, what: &str) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let Some(path) = clean_path(&raw) else {
            // The root itself ("./"): keep ours.
            return Ok(());
        };
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o1777;
        let mtime_secs = header.mtime().unwrap_or(0);
        let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();

        // Whiteouts.
        if name == b".wh..wh..opq" {
            let keep_base = parent.clone();
            let paths = &self.layer_paths;
            match self
                .root
                .remove_dir_contents(&parent, &|n| paths.contains(&keep_base.join(n)))
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            debug!(entry = %path.display(), "skipping aufs metadata");
            return Ok(());
        }
        if let Some(victim) = name.strip_prefix(b".wh.") {
            let target = parent.join(OsStr::from_bytes(victim));
            if !self.layer_paths.contains(&target) {
                match self.root.remove_dir_all(&target) {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }

        match kind {
            EntryType::Directory => {
                match self.root.symlink_metadata(&path) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => {
                        self.root.remove_dir_all(&path)?;
                        self.mkdir(&path)?;
                    }
                    Err(e) if is_not_found(&e) => self.mkdir(&path)?,
                    Err(e) => return Err(e),
                }
                self.dirs.insert(path.clone(), (mode, mtime_secs));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = header.size().unwrap_or(0);
                if self.bytes.saturating_add(size) > self.opts.max_bytes {
                    return Err(Error::TooLarge {
                        what: "unpacked image".into(),
                        size: self.bytes.saturating_add(size),
                        limit: self.opts.max_bytes,
                    });
                }
                self.clear(&path)?;
                let mut file = self.with_parent(&path, |root| {
                    root.open_file(
                        &path,
                        OpenFlags::create_new_file().follow_symlinks(false),
                        0o600,
                    )
                })?;
                let n = io::copy(entry, &mut file)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                self.bytes += n;
                rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(mode))
                    .map_err(|e| Error::io(format!("chmod {}", path.display()), e.into()))?;
                let t = rustix::fs::Timespec {
                    tv_sec: i64::try_from(mtime_secs).unwrap_or(0),
                    tv_nsec: 0,
                };
                rustix::fs::futimens(
                    &file,
                    &rustix::fs::Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                )
                .map_err(|e| Error::io(format!("utimes {}", path.display()), e.into()))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| Error::InvalidImage {
                        what: what.to_owned(),
                        reason: format!("symlink {} has no target", path.display()),
                    })?;
                self.clear(&path)?;
                let target = PathBuf::from(OsStr::from_bytes(&target));
                self.with_parent(&path, |root| root.symlink(&target, &path))?;
                let _ = self.root.set_symlink_times(
                    &path,
                    Some(mtime(mtime_secs)),
                    Some(mtime(mtime_secs)),
                );
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .and_then(|t| clean_path(&t))
                    .ok_or_else(|| Error::InvalidImage {
                        what: what.to_owned(),
                        reason: format!("hard link {} has no target", path.display()),
                    })?;
                if target == path {
                    return Ok(());
                }
                self.clear(&path)?;
                self.with_parent(&path, |root| root.hard_link(&target, &path))
                    .map_err(|e| Error::InvalidImage {
                        what: what.to_owned(),
                        reason: format!(
                            "hard link {} to {}: {e}",
                            path.display(),
                            target.display()
                        ),
                    })?;
            }
            EntryType::Fifo => {
                self.clear(&path)?;
                self.with_parent(&path, |root| root.mkfifo(&path, 0o600))?;
                self.root.set_permissions(&path, mode)?;
            }
            EntryType::Char | EntryType::Block => {
                debug!(entry = %path.display(), "skipping device node");
                return Ok(());
            }
            other => {
                debug!(entry = %path.display(), kind = ?other, "skipping unsupported tar entry");
                return Ok(());
            }
        }
        self.layer_paths.insert(path);
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> Result<()> {
        self.with_parent(path, |root| root.create_dir(path, 0o755))
    }

    /// Remove whatever is at `path` (not following a final symlink).
    fn clear(&self, path: &Path) -> Result<()> {
        match self.root.remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Run `op`; if the parent is missing, create it (like tar does for
    /// entries whose directories are not in the archive) and retry.
    fn with_parent<T>(&self, path: &Path, op: impl Fn(&ConfinedRoot) -> Result<T>) -> Result<T> {
        match op(&self.root) {
            Err(e) if is_not_found(&e) => {
                if let Some(parent) = path.parent() {
                    self.root.create_dir_all(parent, 0o755)?;
                }
                op(&self.root)
            }
            other => other,
        }
    }

    /// Give directories their modes and mtimes, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        for (path, (mode, secs)) in self.dirs.iter().rev() {
            match self.root.symlink_metadata(path) {
                Ok(md) if md.is_dir() => {}
                _ => continue,
            }
            self.root.set_permissions(path, *mode)?;
            let t = Some(mtime(*secs));
            self.root.set_times(path, t, t)?;
        }
        Ok(())
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
