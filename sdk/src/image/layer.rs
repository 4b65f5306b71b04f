//! Writing image layers: a deterministic gzip'd tar written into a staging
//! directory, with its blob digest and its uncompressed `diff_id`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use tracing::debug;

use super::Progress;
use super::oci::HashingWriter;
use crate::error::{Error, Result};

type Inner = HashingWriter<GzEncoder<HashingWriter<BufWriter<File>>>>;

/// A layer being written.
pub(crate) struct LayerWriter {
    builder: tar::Builder<Inner>,
    path: PathBuf,
    mtime: u64,
}

/// A finished layer blob.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlob {
    pub path: PathBuf,
    /// Digest of the gzip'd blob.
    pub digest: String,
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::io(format!("writing layer {}", path.display()), e)
}

impl LayerWriter {
    /// Start a layer at `path`; every entry gets `mtime`, uid/gid 0.
    pub(crate) fn create(path: PathBuf, mtime: u64) -> Result<Self> {
        let file = File::create(&path).map_err(|e| io_err(&path, e))?;
        let gz = flate2::GzBuilder::new().mtime(0).write(
            HashingWriter::new(BufWriter::new(file)),
            flate2::Compression::default(),
        );
        let mut builder = tar::Builder::new(HashingWriter::new(gz));
        builder.mode(tar::HeaderMode::Deterministic);
        builder.follow_symlinks(false);
        Ok(Self {
            builder,
            path,
            mtime,
        })
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    /// `path` is relative to the layer root (`bin/sh`).
    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut h = self.header(tar::EntryType::Directory, mode, 0);
        let name = format!("{}/", path.trim_end_matches('/'));
        self.builder
            .append_data(&mut h, name, io::empty())
            .map_err(|e| io_err(&self.path, e))
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, size: u64, data: impl Read) -> Result<()> {
        let mut h = self.header(tar::EntryType::Regular, mode, size);
        self.builder
            .append_data(&mut h, path, data)
            .map_err(|e| io_err(&self.path, e))
    }

    /// The target is stored verbatim: `append_link` rewrites a short one
    /// component by component (`/etc/x` as `//etc/x`, `./x` as `x`, `d/`
    /// as `d`); a long one (GNU long link) it keeps as is.
    pub(crate) fn symlink(&mut self, path: &str, target: &Path) -> Result<()> {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
        let bytes = target.as_os_str().as_bytes();
        let result = if bytes.len() <= 100 {
            h.set_link_name_literal(bytes)
                .and_then(|()| self.builder.append_data(&mut h, path, io::empty()))
        } else {
            self.builder.append_link(&mut h, path, target)
        };
        result.map_err(|e| io_err(&self.path, e))
    }

    pub(crate) fn hard_link(&mut self, path: &str, target: &str) -> Result<()> {
        let mut h = self.header(tar::EntryType::Link, 0o644, 0);
        self.builder
            .append_link(&mut h, path, target)
            .map_err(|e| io_err(&self.path, e))
    }

    pub(crate) fn finish(self) -> Result<LayerBlob> {
        let path = self.path;
        let tar_hash = self.builder.into_inner().map_err(|e| io_err(&path, e))?;
        let (gz, diff_id, _) = tar_hash.finish();
        let blob_hash = gz.finish().map_err(|e| io_err(&path, e))?;
        let (buf, digest, size) = blob_hash.finish();
        let file = buf
            .into_inner()
            .map_err(|e| io_err(&path, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(&path, e))?;
        Ok(LayerBlob {
            path,
            digest,
            size,
            diff_id,
        })
    }
}

/// Pack the host directory `src` into `layer` (sorted, deterministic apart
/// from file contents and modes). Devices, sockets and the contents of
/// `proc`, `sys` and `dev` are left out; hard links are kept.
pub(crate) fn pack_dir(
    layer: &mut LayerWriter,
    src: &Path,
    progress: Option<&dyn Fn(Progress)>,
) -> Result<()> {
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut done = 0u64;
    let mut stack: Vec<(PathBuf, String)> = vec![(src.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let Some(name_str) = name.to_str() else {
                debug!(dir = %dir.display(), "skipping a non-UTF-8 name");
                continue;
            };
            let host = dir.join(&name);
            let path = if rel.is_empty() {
                name_str.to_owned()
            } else {
                format!("{rel}/{name_str}")
            };
            let md = std::fs::symlink_metadata(&host)
                .map_err(|e| Error::io(format!("stat {}", host.display()), e))?;
            let ft = md.file_type();
            let mode = md.mode() & 0o7777;
            if ft.is_dir() {
                layer.dir(&path, mode)?;
                if !matches!(path.as_str(), "proc" | "sys" | "dev") {
                    subdirs.push((host, path));
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host)
                    .map_err(|e| Error::io(format!("readlink {}", host.display()), e))?;
                layer.symlink(&path, &target)?;
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    let key = (md.dev(), md.ino());
                    if let Some(first) = links.get(&key) {
                        layer.hard_link(&path, first)?;
                        continue;
                    }
                    links.insert(key, path.clone());
                }
                let f = File::open(&host)
                    .map_err(|e| Error::io(format!("reading {}", host.display()), e))?;
                layer.file(&path, mode, md.len(), f)?;
                done += md.len();
                if let Some(p) = progress {
                    p(Progress::new("pack", done, 0));
                }
            } else if ft.is_fifo() {
                let mut h = layer.header(tar::EntryType::Fifo, mode, 0);
                layer
                    .builder
                    .append_data(&mut h, &path, io::empty())
                    .map_err(|e| io_err(&layer.path, e))?;
            } else {
                debug!(path = %path, "skipping device or socket");
            }
        }
        // Depth-first in sorted order: push in reverse.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}
