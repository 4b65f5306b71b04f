//! The image store: an OCI image layout on disk.
//!
//! ```text
//! DIR/oci-layout          {"imageLayoutVersion": "1.0.0"}
//! DIR/index.json          one manifest descriptor per image, named by the
//!                         `org.opencontainers.image.ref.name` annotation
//!                         (the full reference, e.g. `blink/default:latest`)
//! DIR/blobs/sha256/HEX    manifests, configs, layers
//! DIR/.lock               flock(2) taken while the index or blobs change
//! DIR/.staging-*          imports and builds in progress (removed after)
//! DIR/ingest/HEX[.partial] blobs being pulled from a registry: `.partial`
//!                         while downloading (kept to resume), `HEX` once
//!                         verified against its digest, until committed;
//!                         `HEX.lock` is held (flock) by the one download
//! ```
//!
//! Changes are staged in a temporary directory inside `DIR` and committed
//! under the lock: blobs are renamed into place, then `index.json` is
//! replaced atomically (write temp + rename), then unreferenced blobs are
//! removed. A crash leaves at worst unreferenced blobs or a stale staging
//! directory, never a half-written index.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use blink_shared::ImageInfo;
use tracing::{debug, info, warn};

use super::oci::{
    self, ANNOTATION_REF_NAME, Compression, Descriptor, ImageConfig, Index, MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES, Manifest,
};
use super::{DEFAULT_IMAGE, reference};
use crate::error::{Error, Result};

/// What `ImageNotFound` says about getting an image.
pub const NOT_FOUND_HINT: &str = "it is not in the image store; pull it with 'blink-cli image pull REF' or import it with 'blink-cli image import FILE' (an OCI archive or a 'docker save' tarball)";

/// Where pulls keep blobs until they are committed (see the module doc).
pub(crate) const INGEST_DIR: &str = "ingest";

/// A staging directory this old is left over from a process that died.
const STALE_STAGING_SECS: u64 = 24 * 3600;

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneReport {
    /// Blobs no image uses.
    pub blobs: usize,
    /// Bytes freed, blobs and downloads together.
    pub bytes: u64,
    /// Downloads (whole or partial) no pull was working on.
    pub downloads: usize,
    /// Staging directories of imports that died.
    pub staging_dirs: usize,
}

/// An OCI image layout holding Blink's images.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    /// `sha256:` digest of the blob as stored (compressed).
    pub digest: String,
    pub size: u64,
    pub compression: Compression,
    /// Host path of the blob in the store.
    pub path: PathBuf,
}

/// An image found in the store, with what the runtime needs to create and
/// run a sandbox from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The normalized reference it was found under (the digest when resolved
    /// by digest).
    pub reference: String,
    /// `sha256:` digest of the manifest.
    pub digest: String,
    pub manifest_media_type: String,
    pub config_digest: String,
    /// Layers, lowest first.
    pub layers: Vec<Layer>,
    /// `KEY=value` pairs from the image config.
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    /// The whole parsed config.
    pub config: ImageConfig,
}

impl ResolvedImage {
    /// The wire description of this image.
    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            reference: self.reference.clone(),
            digest: self.digest.clone(),
            size: self
                .layers
                .iter()
                .fold(0u64, |n, l| n.saturating_add(l.size)),
            layers: self.layers.len(),
        }
    }

    /// The value of `key` in the config's environment, if set.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.iter().find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
    }
}

/// Held while the store changes (flock on `DIR/.lock`).
pub(crate) struct StoreLock {
    _file: File,
}

/// Blobs written into a staging directory inside the store, waiting to be
/// committed. Dropping it removes them.
pub(crate) struct Staging {
    pub(crate) dir: tempfile::TempDir,
    blobs: BTreeMap<String, PathBuf>,
    counter: u64,
}

impl Staging {
    /// A fresh file path inside the staging dir.
    pub(crate) fn scratch_path(&mut self, prefix: &str) -> PathBuf {
        self.counter += 1;
        self.dir.path().join(format!("{prefix}-{}", self.counter))
    }

    /// Stage bytes as a blob; returns its digest.
    pub(crate) fn add_bytes(&mut self, data: &[u8]) -> Result<String> {
        let digest = oci::sha256_digest(data);
        if self.blobs.contains_key(&digest) {
            return Ok(digest);
        }
        let path = self.scratch_path("blob");
        let mut f =
            File::create(&path).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        self.blobs.insert(digest.clone(), path);
        Ok(digest)
    }

    /// Stage a file already inside the staging dir whose digest the caller
    /// computed from its bytes.
    pub(crate) fn add_file(&mut self, digest: String, path: PathBuf) {
        self.blobs.entry(digest).or_insert(path);
    }
}

fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidImage {
        what: what.into(),
        reason: reason.into(),
    }
}

impl ImageStore {
    /// Open (creating if missing) the OCI image layout at `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let blobs = dir.join("blobs").join("sha256");
        for d in [&blobs, &dir.join(INGEST_DIR)] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating image store {}", d.display()), e))?;
        }
        let store = Self {
            dir: dir.to_path_buf(),
        };
        let layout = dir.join("oci-layout");
        match std::fs::read(&layout) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                        path: layout.clone(),
                        reason: e.to_string(),
                    })?;
                if v.get("imageLayoutVersion")
                    .and_then(|v| v.as_str())
                    .is_none()
                {
                    return Err(Error::CorruptState {
                        path: layout,
                        reason: "no imageLayoutVersion".into(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _lock = store.lock()?;
                store.write_atomic("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            }
            Err(e) => return Err(Error::io(format!("reading {}", layout.display()), e)),
        }
        if !dir.join("index.json").exists() {
            let _lock = store.lock()?;
            if !dir.join("index.json").exists() {
                store.write_index(&Index::default())?;
            }
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Host path of a blob (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = oci::digest_hex("blob", digest)?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    pub(crate) fn lock(&self) -> Result<StoreLock> {
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e.into()))?;
        Ok(StoreLock { _file: file })
    }

    pub(crate) fn staging(&self) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.dir)
            .map_err(|e| {
                Error::io(
                    format!("creating a staging dir in {}", self.dir.display()),
                    e,
                )
            })?;
        Ok(Staging {
            dir,
            blobs: BTreeMap::new(),
            counter: 0,
        })
    }

    /// Replace `DIR/name` atomically.
    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        let target = self.dir.join(name);
        let ctx = || format!("writing {}", target.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(ctx(), e))?;
        tmp.write_all(data)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io(ctx(), e))?;
        tmp.persist(&target)
            .map_err(|e| Error::io(ctx(), e.error))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub(crate) fn read_index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
            path,
            reason: e.to_string(),
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(index)
            .map_err(|e| Error::Runtime(format!("serializing index.json: {e}")))?;
        data.push(b'\n');
        self.write_atomic("index.json", &data)
    }

    /// Read a blob fully, checking its size limit and digest.
    pub(crate) fn read_blob(&self, what: &str, digest: &str, limit: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                corrupt(what, format!("blob {digest} is missing from the store"))
            } else {
                Error::io(format!("reading {}", path.display()), e)
            }
        })?;
        let mut data = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if data.len() as u64 > limit {
            return Err(Error::TooLarge {
                what: format!("{what} {digest}"),
                size: data.len() as u64,
                limit,
            });
        }
        if oci::sha256_digest(&data) != digest {
            return Err(corrupt(
                what,
                format!("blob {digest} does not match its digest (corrupted store?)"),
            ));
        }
        Ok(data)
    }

    fn read_manifest(&self, digest: &str) -> Result<Manifest> {
        let data = self.read_blob("manifest", digest, MAX_MANIFEST_BYTES)?;
        serde_json::from_slice(&data)
            .map_err(|e| corrupt(format!("manifest {digest}"), e.to_string()))
    }

    /// All named images, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for desc in &index.manifests {
            let Some(name) = desc.ref_name() else {
                continue;
            };
            match self.info_for(name, desc) {
                Ok(info) => out.push(info),
                Err(e) => warn!(reference = name, error = %e, "skipping unreadable image"),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    fn info_for(&self, name: &str, desc: &Descriptor) -> Result<ImageInfo> {
        let manifest = self.read_manifest(&desc.digest)?;
        Ok(ImageInfo {
            reference: name.to_owned(),
            digest: desc.digest.clone(),
            size: manifest
                .layers
                .iter()
                .fold(0u64, |n, l| n.saturating_add(l.size)),
            layers: manifest.layers.len(),
        })
    }

    /// Whether a reference names an image in the store.
    pub fn contains(&self, reference: &str) -> Result<bool> {
        let index = self.read_index()?;
        Ok(Self::find(&index, reference)?.is_some())
    }

    /// The entry a reference names: its name as given (tag added), else
    /// as Docker spells it (`alpine` is `docker.io/library/alpine:latest`).
    fn find<'a>(index: &'a Index, reference: &str) -> Result<Option<&'a Descriptor>> {
        for name in reference::candidates(reference)? {
            if let Some(d) = index
                .manifests
                .iter()
                .find(|d| d.ref_name() == Some(name.as_str()))
            {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// Find an image by reference (`name[:tag]`, `default`) or by full
    /// manifest digest (`sha256:...`).
    ///
    /// The default image ([`DEFAULT_IMAGE`]) is built from the host's static
    /// busybox when it is missing (see [`ImageStore::ensure_default`]).
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let index = self.read_index()?;
        let (name, desc) = if reference.starts_with("sha256:") {
            oci::digest_hex("reference", reference)?;
            let desc = index.manifests.iter().find(|d| d.digest == reference);
            (reference.to_owned(), desc.cloned())
        } else {
            match Self::find(&index, reference)? {
                Some(d) => (d.ref_name().unwrap_or_default().to_owned(), Some(d.clone())),
                None => (reference::normalize(reference)?, None),
            }
        };
        let desc = match desc {
            Some(d) => d,
            None if name == DEFAULT_IMAGE => {
                info!("default image missing; building it from the host's busybox");
                self.ensure_default()?;
                return self.resolve(DEFAULT_IMAGE);
            }
            None => {
                return Err(Error::ImageNotFound {
                    reference: name,
                    hint: NOT_FOUND_HINT.into(),
                });
            }
        };
        self.resolve_descriptor(&name, &desc)
    }

    fn resolve_descriptor(&self, name: &str, desc: &Descriptor) -> Result<ResolvedImage> {
        if !desc.media_type.is_empty() && !oci::is_manifest(&desc.media_type) {
            return Err(corrupt(
                format!("image {name}"),
                format!(
                    "index entry has media type {}, not an image manifest",
                    desc.media_type
                ),
            ));
        }
        let manifest = self.read_manifest(&desc.digest)?;
        let config_bytes =
            self.read_blob("image config", &manifest.config.digest, MAX_CONFIG_BYTES)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| corrupt(format!("config of {name}"), e.to_string()))?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for l in &manifest.layers {
            let compression = oci::layer_compression(&l.media_type).ok_or_else(|| {
                corrupt(
                    format!("layer {} of {name}", l.digest),
                    format!("unsupported layer media type {:?}", l.media_type),
                )
            })?;
            let path = self.blob_path(&l.digest)?;
            if !path.is_file() {
                return Err(corrupt(
                    format!("image {name}"),
                    format!("layer blob {} is missing from the store", l.digest),
                ));
            }
            layers.push(Layer {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
                compression,
                path,
            });
        }
        let run = config.config.clone().unwrap_or_default();
        Ok(ResolvedImage {
            reference: name.to_owned(),
            digest: desc.digest.clone(),
            manifest_media_type: manifest
                .media_type
                .clone()
                .unwrap_or_else(|| desc.media_type.clone()),
            config_digest: manifest.config.digest.clone(),
            layers,
            env: run.env.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            config,
        })
    }

    /// Remove an image's name; blobs no other image uses are deleted.
    pub fn remove(&self, reference: &str) -> Result<ImageInfo> {
        self.remove_unless_used(reference, &[], true)
    }

    /// Remove an image's name unless a session uses it: `in_use` lists
    /// `(session, image reference)` pairs; the image counts as used when
    /// a session names it or its digest. `force` removes it anyway (the
    /// session keeps its unpacked tree; its record still names the image).
    pub fn remove_unless_used(
        &self,
        reference: &str,
        in_use: &[(String, String)],
        force: bool,
    ) -> Result<ImageInfo> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let Some(found) = Self::find(&index, reference)? else {
            return Err(Error::ImageNotFound {
                reference: reference::normalize(reference)?,
                hint: "it is not in the image store ('blink-cli image ls' shows what is)".into(),
            });
        };
        let name = found.ref_name().unwrap_or_default().to_owned();
        let digest = found.digest.clone();
        let users: Vec<&str> = in_use
            .iter()
            .filter(|(_, image)| *image == name || *image == digest)
            .map(|(session, _)| session.as_str())
            .collect();
        if !users.is_empty() && !force {
            return Err(Error::ImageInUse {
                reference: name,
                sessions: users.join(", "),
            });
        }
        let pos = index
            .manifests
            .iter()
            .position(|d| d.ref_name() == Some(name.as_str()))
            .ok_or_else(|| Error::Runtime(format!("image {name} vanished from the index")))?;
        let desc = index.manifests.remove(pos);
        let info = self.info_for(&name, &desc).unwrap_or(ImageInfo {
            reference: name.clone(),
            digest: desc.digest.clone(),
            size: 0,
            layers: 0,
        });
        self.write_index(&index)?;
        self.gc_locked(&index)?;
        if !users.is_empty() {
            warn!(reference = %name, sessions = %users.join(", "), "removed an image sessions use (forced)");
        }
        info!(reference = %name, digest = %desc.digest, "removed image");
        Ok(info)
    }

    /// Delete blobs no image references. Returns how many were deleted.
    pub fn gc(&self) -> Result<usize> {
        let _lock = self.lock()?;
        let index = self.read_index()?;
        Ok(self.gc_locked(&index)?.0)
    }

    /// Delete blobs no image references, downloads no pull is working on
    /// (kept to resume an interrupted pull), and staging directories an
    /// import or build left a day ago or more.
    pub fn prune(&self) -> Result<PruneReport> {
        let _lock = self.lock()?;
        let index = self.read_index()?;
        let (blobs, bytes) = self.gc_locked(&index)?;
        let (downloads, download_bytes) = super::ingest::clean(&self.dir.join(INGEST_DIR));
        let mut staging_dirs = 0;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() >= STALE_STAGING_SECS);
                if name.to_string_lossy().starts_with(".staging-")
                    && stale
                    && crate::fs::remove_tree(&entry.path()).is_ok()
                {
                    staging_dirs += 1;
                }
            }
        }
        let report = PruneReport {
            blobs,
            bytes: bytes.saturating_add(download_bytes),
            downloads,
            staging_dirs,
        };
        info!(?report, "pruned the image store");
        Ok(report)
    }

    /// Returns (blobs deleted, their bytes).
    fn gc_locked(&self, index: &Index) -> Result<(usize, u64)> {
        let mut keep = BTreeSet::new();
        let mut todo: Vec<Descriptor> = index.manifests.clone();
        while let Some(desc) = todo.pop() {
            if !keep.insert(desc.digest.clone()) {
                continue;
            }
            let is_index = oci::is_index(&desc.media_type);
            let is_manifest = oci::is_manifest(&desc.media_type) || desc.media_type.is_empty();
            if !is_index && !is_manifest {
                continue;
            }
            let Ok(data) = self.read_blob("manifest", &desc.digest, MAX_MANIFEST_BYTES) else {
                // Keep what we cannot read rather than guess.
                warn!(digest = %desc.digest, "gc: unreadable manifest; keeping blobs it may use");
                continue;
            };
            if is_index {
                if let Ok(i) = serde_json::from_slice::<Index>(&data) {
                    todo.extend(i.manifests);
                }
            } else if let Ok(m) = serde_json::from_slice::<Manifest>(&data) {
                keep.insert(m.config.digest);
                keep.extend(m.layers.into_iter().map(|l| l.digest));
            }
        }
        let blobs = self.dir.join("blobs").join("sha256");
        let entries = std::fs::read_dir(&blobs)
            .map_err(|e| Error::io(format!("listing {}", blobs.display()), e))?;
        let (mut removed, mut bytes) = (0, 0u64);
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", blobs.display()), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.len() != 64 || keep.contains(&format!("sha256:{name}")) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    removed += 1;
                    bytes = bytes.saturating_add(size);
                    debug!(blob = %name, "gc: removed blob");
                }
                Err(e) => warn!(blob = %name, error = %e, "gc: cannot remove blob"),
            }
        }
        Ok((removed, bytes))
    }

    /// Move staged blobs into the store and name manifests, under the lock.
    /// Each `(reference, descriptor)` replaces any image of that name.
    pub(crate) fn commit(
        &self,
        staging: Staging,
        names: Vec<(String, Descriptor)>,
    ) -> Result<Vec<ImageInfo>> {
        let _lock = self.lock()?;
        for (digest, path) in &staging.blobs {
            let target = self.blob_path(digest)?;
            if target.exists() {
                continue;
            }
            std::fs::rename(path, &target).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // A pull's blob another pull committed, then an image
                    // removal collected, between the two commits.
                    corrupt(
                        format!("blob {digest}"),
                        "it vanished before it was committed; pull again",
                    )
                } else {
                    Error::io(format!("moving blob {digest} into {}", target.display()), e)
                }
            })?;
        }
        // Everything named must now be in the store.
        let mut index = self.read_index()?;
        let mut infos = Vec::new();
        for (name, mut desc) in names {
            let name = reference::normalize(&name)?;
            if !self.blob_path(&desc.digest)?.is_file() {
                return Err(corrupt(
                    format!("image {name}"),
                    format!("manifest {} was not stored", desc.digest),
                ));
            }
            let manifest = self.read_manifest(&desc.digest)?;
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                if !self.blob_path(&blob.digest)?.is_file() {
                    return Err(corrupt(
                        format!("image {name}"),
                        format!("blob {} was not stored", blob.digest),
                    ));
                }
            }
            index
                .manifests
                .retain(|d| d.ref_name() != Some(name.as_str()));
            desc.annotations
                .insert(ANNOTATION_REF_NAME.into(), name.clone());
            infos.push(self.info_for(&name, &desc)?);
            index.manifests.push(desc);
        }
        index
            .manifests
            .sort_by(|a, b| a.ref_name().cmp(&b.ref_name()));
        self.write_index(&index)?;
        self.gc_locked(&index)?;
        drop(staging);
        Ok(infos)
    }
}
