//! Writing a session archive from mounted change trees (see mod.rs).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::merged::{self, Change, ChangeLayer, Kind};
use super::{CHANGES, CHECKSUMS, Checksums, HEADER, Header, IMAGE, NOBODY, SNAPSHOTS};
use crate::error::{Error, Result};

/// What goes into an archive besides its header.
#[derive(Debug)]
pub struct ExportSource {
    /// The session's changes: the upper layer of its disk (a private,
    /// still copy, mounted for the export) over the read-only layers of its
    /// chain, topmost first; written as one merged tree.
    pub changes: Vec<ChangeLayer>,
    /// Snapshots by name, each a stack like `changes`.
    pub snapshots: Vec<(String, Vec<ChangeLayer>)>,
    /// The image as an OCI archive, when it goes in.
    pub image_archive: Option<PathBuf>,
}

/// Write the archive to `out` (zstd over tar); `progress` gets the bytes of
/// file data written so far. Returns `out`.
pub fn write_archive<W: Write>(
    out: W,
    header: &Header,
    source: &ExportSource,
    progress: &dyn Fn(u64),
) -> Result<W> {
    let io = |e: io::Error| Error::io("writing the archive", e);
    let encoder = zstd::stream::write::Encoder::new(out, 3).map_err(io)?;
    let mut w = Writer {
        tar: tar::Builder::new(encoder),
        sums: Checksums::new(),
        written: 0,
        progress,
    };
    w.tar.mode(tar::HeaderMode::Complete);
    let json = serde_json::to_vec_pretty(header).map_err(|e| Error::Runtime(e.to_string()))?;
    w.bytes(HEADER, &json, false)?;
    if let Some(image) = &source.image_archive {
        let file = File::open(image).map_err(|e| Error::io("reading the image archive", e))?;
        let meta = file.metadata().map_err(io)?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.len());
        h.set_mode(0o644);
        w.file(IMAGE.into(), h, file)?;
    }
    w.tree(&source.changes, CHANGES)?;
    for (name, tree) in &source.snapshots {
        w.tree(tree, &format!("{SNAPSHOTS}/{name}"))?;
    }
    let sums = serde_json::to_vec_pretty(&w.sums).map_err(|e| Error::Runtime(e.to_string()))?;
    w.bytes(CHECKSUMS, &sums, false)?;
    let encoder = w.tar.into_inner().map_err(io)?;
    encoder.finish().map_err(io)
}

struct Writer<'a, W: Write> {
    tar: tar::Builder<zstd::stream::write::Encoder<'static, W>>,
    sums: Checksums,
    written: u64,
    progress: &'a dyn Fn(u64),
}

/// A reader that hashes what it reads and reports progress.
struct Hashing<'a, R> {
    inner: R,
    hash: Sha256,
    written: &'a mut u64,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        *self.written += n as u64;
        (self.progress)(*self.written);
        Ok(n)
    }
}

impl<W: Write> Writer<'_, W> {
    fn bytes(&mut self, path: &str, data: &[u8], summed: bool) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        if summed {
            self.sums.insert(
                path.into(),
                format!("sha256:{}", hex::encode(Sha256::digest(data))),
            );
        }
        self.tar
            .append_data(&mut h, path, data)
            .map_err(|e| Error::io(format!("writing {path} to the archive"), e))
    }

    /// A regular file entry, its data hashed into the checksums.
    fn file(&mut self, path: PathBuf, mut h: tar::Header, data: impl Read) -> Result<()> {
        let mut reader = Hashing {
            inner: data,
            hash: Sha256::new(),
            written: &mut self.written,
            progress: self.progress,
        };
        self.tar
            .append_data(&mut h, &path, &mut reader)
            .map_err(|e| Error::io(format!("writing {} to the archive", path.display()), e))?;
        let digest = format!("sha256:{}", hex::encode(reader.hash.finalize()));
        self.sums
            .insert(path.to_string_lossy().into_owned(), digest);
        Ok(())
    }

    fn id(host: u32, id_root: u32) -> u64 {
        u64::from(
            host.checked_sub(id_root)
                .filter(|id| *id < crate::runtime::local::ID_RANGE)
                .unwrap_or(NOBODY),
        )
    }

    fn header(&self, meta: &std::fs::Metadata, kind: tar::EntryType, id_root: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(Self::id(meta.uid(), id_root));
        h.set_gid(Self::id(meta.gid(), id_root));
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        h
    }

    /// The user extended attributes of `path`, as PAX records.
    fn xattrs(&mut self, path: &Path) -> Result<()> {
        let Ok(names) = xattr_names(path) else {
            return Ok(());
        };
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names.iter().filter(|n| n.starts_with("user.")) {
            if let Ok(value) = xattr_get(path, name) {
                records.push((format!("SCHILY.xattr.{name}"), value));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(|e| Error::io("writing extended attributes to the archive", e))
    }

    /// Every entry of the merged tree of `layers` (overlay upper layers,
    /// topmost first), as `prefix/...`.
    fn tree(&mut self, layers: &[ChangeLayer], prefix: &str) -> Result<()> {
        let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        merged::walk(layers, &mut |c| self.change(c, prefix, &mut links))
    }

    fn change(
        &mut self,
        c: &Change<'_>,
        prefix: &str,
        links: &mut HashMap<(u64, u64), PathBuf>,
    ) -> Result<()> {
        let err = |e: io::Error| Error::io("writing to the archive", e);
        let meta = c.meta;
        if c.path.as_os_str().is_empty() {
            let mut h = self.header(meta, tar::EntryType::Directory, c.id_root);
            return self
                .tar
                .append_data(&mut h, format!("{prefix}/"), io::empty())
                .map_err(err);
        }
        let inside = Path::new(prefix).join(c.path);
        match c.kind {
            Kind::Dir { opaque } => {
                self.xattrs(c.host)?;
                let mut h = self.header(meta, tar::EntryType::Directory, c.id_root);
                self.tar
                    .append_data(&mut h, &inside, io::empty())
                    .map_err(err)?;
                if opaque {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(0);
                    self.tar
                        .append_data(&mut h, inside.join(".wh..wh..opq"), io::empty())
                        .map_err(err)?;
                }
            }
            Kind::File => {
                let key = (meta.dev(), meta.ino());
                if meta.nlink() > 1
                    && let Some(first) = links.get(&key)
                {
                    let mut h = self.header(meta, tar::EntryType::Link, c.id_root);
                    return self.tar.append_link(&mut h, &inside, first).map_err(err);
                }
                if meta.nlink() > 1 {
                    links.insert(key, inside.clone());
                }
                self.xattrs(c.host)?;
                let mut h = self.header(meta, tar::EntryType::Regular, c.id_root);
                h.set_size(meta.len());
                let file = File::open(c.host)
                    .map_err(|e| Error::io(format!("reading {}", c.host.display()), e))?;
                // Exactly the size in the header, even if it changed.
                self.file(inside, h, file.take(meta.len()))?;
            }
            Kind::Symlink => {
                let target = std::fs::read_link(c.host)
                    .map_err(|e| Error::io(format!("reading {}", c.host.display()), e))?;
                let mut h = self.header(meta, tar::EntryType::Symlink, c.id_root);
                self.tar
                    .append_link(&mut h, &inside, &target)
                    .map_err(err)?;
            }
            Kind::Whiteout => {
                // An overlay whiteout: the lower layer's file is deleted.
                let mut marker = std::ffi::OsString::from(".wh.");
                marker.push(c.path.file_name().unwrap_or_default());
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                self.tar
                    .append_data(&mut h, inside.with_file_name(marker), io::empty())
                    .map_err(err)?;
            }
            Kind::Fifo => {
                let mut h = self.header(meta, tar::EntryType::Fifo, c.id_root);
                self.tar
                    .append_data(&mut h, &inside, io::empty())
                    .map_err(err)?;
            }
            Kind::Other => {
                // Sockets and device nodes are not carried.
                tracing::debug!(path = %inside.display(), "not exported (socket or device)");
            }
        }
        Ok(())
    }
}

fn xattr_names(path: &Path) -> io::Result<Vec<String>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path, &mut buf).map_err(io::Error::from)?;
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn xattr_get(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).map_err(io::Error::from)?;
    buf.truncate(n);
    Ok(buf)
}
