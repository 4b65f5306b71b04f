//! Importing image archives into the store.
//!
//! Accepted: an OCI archive (a tar, optionally gzip'd, of an OCI image
//! layout: `oci-layout`, `index.json`, `blobs/`), and a `docker save`
//! tarball (legacy `manifest.json` with `Config`, `RepoTags`, `Layers`;
//! newer docker saves also hold an OCI layout, which is preferred).
//!
//! The outer tar is never extracted by path: each regular file is streamed
//! into a numbered file in a staging directory inside the store while its
//! sha256 is computed, and looked up by its normalized archive path. Entries
//! with absolute paths or `..`, symlinks leaving the archive, devices,
//! missing blobs, digest or size mismatches and oversized archives are
//! rejected with an error naming the problem; the store is unchanged until
//! everything checks out, then blobs and names are committed under the lock.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek as _};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use blink_shared::ImageInfo;
use serde::Deserialize;
use tar::EntryType;
use tracing::{debug, info, warn};

use super::counted::Counted;
use super::oci::{
    self, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Capped, Compression, Descriptor,
    GZIP_MAGIC, HashingWriter, ImageConfig, Index, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_TAR, MT_OCI_LAYER_ZSTD, MT_OCI_MANIFEST, Manifest, ZSTD_MAGIC,
};
use super::store::Staging;
use super::{ImageStore, Progress, ProgressFn, reference};
use crate::error::{Error, Result};

/// Limits for importing an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Most bytes of (uncompressed) archive content.
    pub max_bytes: u64,
    /// Most entries in the archive.
    pub max_entries: u64,
    /// Largest JSON file (index, manifest, config) read from the archive.
    pub max_json: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 30,
            max_entries: 100_000,
            max_json: 16 << 20,
        }
    }
}

/// A regular file of the archive, staged.
#[derive(Debug, Clone)]
struct Staged {
    path: PathBuf,
    digest: String,
    size: u64,
}

/// The archive's files by normalized path.
#[derive(Default)]
struct Contents {
    files: HashMap<String, Staged>,
    symlinks: HashMap<String, String>,
}

fn invalid(what: &str, reason: impl Into<String>) -> Error {
    Error::InvalidImage {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// Normalize an archive entry path: no absolute paths, no `..`.
fn archive_key(what: &str, raw: &[u8]) -> Result<Option<String>> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        invalid(
            what,
            format!(
                "entry {:?} has a non-UTF-8 name",
                String::from_utf8_lossy(raw)
            ),
        )
    })?;
    if s.starts_with('/') {
        return Err(invalid(what, format!("entry {s:?} has an absolute path")));
    }
    let mut parts = Vec::new();
    for comp in s.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(invalid(
                    what,
                    format!("entry {s:?} escapes the archive with '..'"),
                ));
            }
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

impl Contents {
    /// Find a file, following in-archive symlinks (lexically).
    fn lookup(&self, what: &str, key: &str) -> Result<&Staged> {
        let mut key = key.trim_start_matches("./").to_owned();
        for _ in 0..16 {
            if let Some(f) = self.files.get(&key) {
                return Ok(f);
            }
            let Some(target) = self.symlinks.get(&key) else {
                return Err(invalid(what, format!("{key} is missing from the archive")));
            };
            if target.starts_with('/') {
                return Err(invalid(
                    what,
                    format!("symlink {key} points outside the archive ({target})"),
                ));
            }
            let mut parts: Vec<&str> = key.split('/').collect();
            parts.pop();
            for comp in target.split('/') {
                match comp {
                    "" | "." => {}
                    ".." => {
                        if parts.pop().is_none() {
                            return Err(invalid(
                                what,
                                format!("symlink {key} points outside the archive ({target})"),
                            ));
                        }
                    }
                    c => parts.push(c),
                }
            }
            key = parts.join("/");
        }
        Err(invalid(
            what,
            format!("too many levels of symlinks at {key}"),
        ))
    }

    /// A blob of an OCI layout, checked against its descriptor.
    fn blob(&self, what: &str, desc: &Descriptor) -> Result<&Staged> {
        let hex = oci::digest_hex(what, &desc.digest)?;
        let staged = self.lookup(what, &format!("blobs/sha256/{hex}"))?;
        if staged.digest != desc.digest {
            return Err(invalid(
                what,
                format!(
                    "digest mismatch: blob {} has content {}",
                    desc.digest, staged.digest
                ),
            ));
        }
        if staged.size != desc.size {
            return Err(invalid(
                what,
                format!(
                    "size mismatch: blob {} is {} bytes, its descriptor says {}",
                    desc.digest, staged.size, desc.size
                ),
            ));
        }
        Ok(staged)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(what: &str, staged: &Staged, limit: u64) -> Result<T> {
    if staged.size > limit {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size: staged.size,
            limit,
        });
    }
    let data = std::fs::read(&staged.path)
        .map_err(|e| Error::io(format!("reading staged {}", staged.path.display()), e))?;
    serde_json::from_slice(&data).map_err(|e| invalid(what, format!("bad JSON: {e}")))
}

/// The compression of a staged file, by its first bytes.
fn sniff(path: &Path) -> Result<Compression> {
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    Ok(if head[..n].starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head[..n] == ZSTD_MAGIC {
        Compression::Zstd
    } else {
        Compression::None
    })
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// An image found in the archive: its manifest descriptor and names.
struct Found {
    desc: Descriptor,
    names: Vec<String>,
}

impl ImageStore {
    /// Import an OCI archive or `docker save` tarball. Images are named by
    /// the archive (`org.opencontainers.image.ref.name`,
    /// `io.containerd.image.name`, `RepoTags`); `name`, if given, names the
    /// archive's single image instead (required when it has no name).
    pub fn import_archive(&self, file: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>> {
        self.import_archive_with(file, name, &ImportOptions::default(), None)
    }

    /// [`ImageStore::import_archive`] with limits and progress (`done` and
    /// `total` are bytes of the archive file).
    pub fn import_archive_with(
        &self,
        file: &Path,
        name: Option<&str>,
        opts: &ImportOptions,
        progress: ProgressFn<'_>,
    ) -> Result<Vec<ImageInfo>> {
        let what = format!("archive {}", file.display());
        let name = name.map(reference::normalize).transpose()?;
        let mut staging = self.staging()?;
        let contents = self.stage_archive(file, &what, &mut staging, opts, progress)?;

        let found = if contents.files.contains_key("index.json") {
            debug!(archive = %file.display(), "importing as an OCI layout");
            oci_layout(&contents, &what, &mut staging, opts)?
        } else if contents.files.contains_key("manifest.json") {
            debug!(archive = %file.display(), "importing as a docker save tarball");
            docker_save(&contents, &what, &mut staging, opts)?
        } else {
            return Err(invalid(
                &what,
                "not an OCI archive or a 'docker save' tarball (no index.json or manifest.json)",
            ));
        };

        // One entry per manifest, names merged.
        let mut by_digest: BTreeMap<String, Found> = BTreeMap::new();
        for f in found {
            match by_digest.get_mut(&f.desc.digest) {
                Some(existing) => existing.names.extend(f.names),
                None => {
                    by_digest.insert(f.desc.digest.clone(), f);
                }
            }
        }
        if by_digest.is_empty() {
            return Err(invalid(&what, "the archive holds no image"));
        }
        let mut named = Vec::new();
        if let Some(name) = name {
            if by_digest.len() > 1 {
                return Err(invalid(
                    &what,
                    format!(
                        "it holds {} images; a name can only be given to an archive of one",
                        by_digest.len()
                    ),
                ));
            }
            if let Some((_, f)) = by_digest.into_iter().next() {
                named.push((name, f.desc));
            }
        } else {
            for (digest, f) in by_digest {
                let mut names: Vec<String> = Vec::new();
                for n in &f.names {
                    match reference::normalize(n) {
                        Ok(n) if !names.contains(&n) => names.push(n),
                        Ok(_) => {}
                        Err(e) => {
                            warn!(name = %n, error = %e, "ignoring an unusable image name in the archive")
                        }
                    }
                }
                if names.is_empty() {
                    return Err(invalid(
                        &what,
                        format!(
                            "image {digest} has no name; give one (blink-cli image import FILE --name NAME)"
                        ),
                    ));
                }
                for n in names {
                    named.push((n, f.desc.clone()));
                }
            }
        }
        let infos = self.commit(staging, named)?;
        for i in &infos {
            info!(reference = %i.reference, digest = %i.digest, "imported image");
        }
        Ok(infos)
    }

    /// Stream the archive's regular files into the staging directory.
    fn stage_archive(
        &self,
        file: &Path,
        what: &str,
        staging: &mut Staging,
        opts: &ImportOptions,
        progress: ProgressFn<'_>,
    ) -> Result<Contents> {
        let mut f =
            File::open(file).map_err(|e| Error::io(format!("opening {}", file.display()), e))?;
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let compression = sniff(file)?;
        f.seek(io::SeekFrom::Start(0))
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        let count = Rc::new(Cell::new(0u64));
        let raw = BufReader::with_capacity(
            1 << 16,
            Counted {
                file: f,
                count: count.clone(),
            },
        );
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(raw),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(raw)
                    .map_err(|e| invalid(what, format!("not a zstd stream: {e}")))?,
            ),
        };
        let mut archive = tar::Archive::new(Capped {
            inner: reader,
            left: opts.max_bytes,
        });
        let bad = |e: io::Error| {
            if oci::is_too_large(&e) {
                Error::TooLarge {
                    what: what.to_owned(),
                    size: opts.max_bytes.saturating_add(1),
                    limit: opts.max_bytes,
                }
            } else {
                invalid(what, format!("bad tar stream: {e}"))
            }
        };
        let mut contents = Contents::default();
        let mut n_entries = 0u64;
        let mut last = 0u64;
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            n_entries += 1;
            if n_entries > opts.max_entries {
                return Err(Error::TooLarge {
                    what: format!("{what} (entries)"),
                    size: n_entries,
                    limit: opts.max_entries,
                });
            }
            let kind = entry.header().entry_type();
            let Some(key) = archive_key(what, &entry.path_bytes())? else {
                continue;
            };
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    let path = staging.scratch_path("in");
                    let out = File::create(&path)
                        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                    let mut w = HashingWriter::new(io::BufWriter::new(out));
                    io::copy(&mut entry, &mut w).map_err(bad)?;
                    let (buf, digest, size) = w.finish();
                    buf.into_inner().map_err(|e| {
                        Error::io(format!("writing {}", path.display()), e.into_error())
                    })?;
                    contents.symlinks.remove(&key);
                    contents.files.insert(key, Staged { path, digest, size });
                }
                EntryType::Directory => {}
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .and_then(|t| String::from_utf8(t.into_owned()).ok())
                        .ok_or_else(|| invalid(what, format!("symlink {key} has a bad target")))?;
                    contents.files.remove(&key);
                    contents.symlinks.insert(key, target);
                }
                EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| archive_key(what, &t))
                        .transpose()?
                        .flatten()
                        .ok_or_else(|| invalid(what, format!("hard link {key} has no target")))?;
                    let staged = contents.lookup(what, &target)?.clone();
                    contents.symlinks.remove(&key);
                    contents.files.insert(key, staged);
                }
                EntryType::XGlobalHeader => {}
                other => {
                    return Err(invalid(
                        what,
                        format!("entry {key} has unsupported type {other:?}"),
                    ));
                }
            }
            if let Some(p) = progress {
                let done = count.get();
                if done >= last + (1 << 20) {
                    last = done;
                    p(Progress::new("import", done.min(total), total));
                }
            }
        }
        if let Some(p) = progress {
            p(Progress::new("import", total, total));
        }
        Ok(contents)
    }
}

/// Images of an OCI layout archive.
fn oci_layout(
    contents: &Contents,
    what: &str,
    staging: &mut Staging,
    opts: &ImportOptions,
) -> Result<Vec<Found>> {
    let index_file = contents.lookup(what, "index.json")?;
    let index: Index = read_json(&format!("{what}: index.json"), index_file, opts.max_json)?;
    let mut found = Vec::new();
    for desc in &index.manifests {
        let mut names = Vec::new();
        for key in [ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME] {
            if let Some(n) = desc.annotations.get(key) {
                names.push(n.clone());
            }
        }
        // Prefer the fuller name when both are there.
        names.truncate(1);
        let manifest_desc = pick_manifest(contents, what, desc, opts, 0)?;
        stage_manifest(contents, what, &manifest_desc, staging, opts)?;
        found.push(Found {
            desc: Descriptor::new(
                if manifest_desc.media_type.is_empty() {
                    MT_OCI_MANIFEST
                } else {
                    &manifest_desc.media_type
                },
                manifest_desc.digest.clone(),
                manifest_desc.size,
            ),
            names,
        });
    }
    Ok(found)
}

/// Follow nested indexes down to the manifest for this host's platform.
fn pick_manifest(
    contents: &Contents,
    what: &str,
    desc: &Descriptor,
    opts: &ImportOptions,
    depth: usize,
) -> Result<Descriptor> {
    if !oci::is_index(&desc.media_type) {
        // Stored as is in the index, where only manifests resolve.
        if !desc.media_type.is_empty() && !oci::is_manifest(&desc.media_type) {
            return Err(invalid(
                what,
                format!(
                    "{} has media type {:?}, not an image manifest or index",
                    desc.digest, desc.media_type
                ),
            ));
        }
        return Ok(desc.clone());
    }
    if depth > 4 {
        return Err(invalid(what, "indexes nested too deeply"));
    }
    let staged = contents.blob(what, desc)?;
    let nested: Index = read_json(
        &format!("index {}", desc.digest),
        staged,
        opts.max_json.min(oci::MAX_MANIFEST_BYTES),
    )?;
    let chosen = oci::pick_platform(&nested).ok_or_else(|| {
        invalid(
            what,
            format!(
                "index {} has no linux/{} image",
                desc.digest,
                oci::host_architecture()
            ),
        )
    })?;
    pick_manifest(contents, what, chosen, opts, depth + 1)
}

/// Check a manifest and its config and layers, and stage them.
fn stage_manifest(
    contents: &Contents,
    what: &str,
    desc: &Descriptor,
    staging: &mut Staging,
    opts: &ImportOptions,
) -> Result<()> {
    let mwhat = format!("{what}: manifest {}", desc.digest);
    let staged = contents.blob(&mwhat, desc)?;
    let manifest: Manifest = read_json(&mwhat, staged, opts.max_json.min(oci::MAX_MANIFEST_BYTES))?;
    if let Some(mt) = manifest.media_type.as_deref()
        && !oci::is_manifest(mt)
    {
        return Err(invalid(
            &mwhat,
            format!("unsupported manifest media type {mt}"),
        ));
    }
    staging.add_file(desc.digest.clone(), staged.path.clone());
    let config = contents.blob(&mwhat, &manifest.config)?;
    let _: ImageConfig = read_json(&format!("{mwhat}: config"), config, opts.max_json)?;
    staging.add_file(manifest.config.digest.clone(), config.path.clone());
    for layer in &manifest.layers {
        if oci::layer_compression(&layer.media_type).is_none() {
            return Err(invalid(
                &mwhat,
                format!(
                    "layer {} has unsupported media type {:?}",
                    layer.digest, layer.media_type
                ),
            ));
        }
        let staged = contents.blob(&mwhat, layer)?;
        staging.add_file(layer.digest.clone(), staged.path.clone());
    }
    Ok(())
}

/// Images of a legacy `docker save` tarball, converted to OCI manifests.
fn docker_save(
    contents: &Contents,
    what: &str,
    staging: &mut Staging,
    opts: &ImportOptions,
) -> Result<Vec<Found>> {
    let mf = contents.lookup(what, "manifest.json")?;
    let entries: Vec<DockerManifest> =
        read_json(&format!("{what}: manifest.json"), mf, opts.max_json)?;
    let mut found = Vec::new();
    for entry in entries {
        let config = contents.lookup(what, &entry.config)?.clone();
        let parsed: ImageConfig =
            read_json(&format!("{what}: {}", entry.config), &config, opts.max_json)?;
        if !parsed.rootfs.diff_ids.is_empty() && parsed.rootfs.diff_ids.len() != entry.layers.len()
        {
            return Err(invalid(
                what,
                format!(
                    "{} lists {} layers but its config has {} diff_ids",
                    entry.config,
                    entry.layers.len(),
                    parsed.rootfs.diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (i, path) in entry.layers.iter().enumerate() {
            let staged = contents.lookup(what, path)?.clone();
            let media_type = match sniff(&staged.path)? {
                Compression::Gzip => MT_OCI_LAYER_GZIP,
                Compression::None => {
                    if let Some(diff_id) = parsed.rootfs.diff_ids.get(i)
                        && *diff_id != staged.digest
                    {
                        return Err(invalid(
                            what,
                            format!(
                                "layer {path} has digest {} but the config says {diff_id}",
                                staged.digest
                            ),
                        ));
                    }
                    MT_OCI_LAYER_TAR
                }
                Compression::Zstd => MT_OCI_LAYER_ZSTD,
            };
            staging.add_file(staged.digest.clone(), staged.path.clone());
            layers.push(Descriptor::new(media_type, staged.digest, staged.size));
        }
        staging.add_file(config.digest.clone(), config.path.clone());
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            config: Descriptor::new(MT_OCI_CONFIG, config.digest.clone(), config.size),
            layers,
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::Runtime(format!("serializing manifest: {e}")))?;
        let digest = staging.add_bytes(&bytes)?;
        found.push(Found {
            desc: Descriptor::new(MT_OCI_MANIFEST, digest, bytes.len() as u64),
            names: entry.repo_tags.unwrap_or_default(),
        });
    }
    Ok(found)
}
