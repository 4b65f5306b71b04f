//! Where sessions' last exports are kept, shared by routers (and nodes
//! with `export_on_stop`): a directory (`[cluster] export_dir`, NFS or a
//! volume) or an S3-compatible bucket (`[cluster.export_s3]`: AWS, MinIO,
//! Ceph, Garage...), both behind `object_store` (Apache Arrow's).
//!
//! An export is `<name>.boxlite` (under the bucket's `prefix`). Writes
//! are uploads committed whole: a directory's file is written beside its
//! name and renamed, a bucket's object is a multipart upload completed at
//! the end, so a reader sees the previous export or the new one, never a
//! part. An upload dropped before its commit is aborted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt as _, WriteMultipart};
use serde::Deserialize;

/// `[cluster.export_s3]`: a bucket for exports. Credentials come from the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
/// `AWS_SESSION_TOKEN` if any), never from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix of the exports (`<prefix>/<name>.boxlite`; default none).
    #[serde(default)]
    pub prefix: String,
    /// The service's URL (MinIO, Ceph, Garage...); default AWS's for the
    /// region.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Plain HTTP to `endpoint` (a loopback or trusted network only).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// What an export store fails with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("export store {store}: {source}")]
    Object {
        store: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("export store {store}: reading the export: {0}", store = .1)]
    Body(String, String),
}

/// Parts in flight at once during an upload (each up to 10 MiB).
const UPLOAD_CONCURRENCY: usize = 4;

/// A directory or a bucket of exports.
#[derive(Clone)]
pub struct ExportStore {
    objects: Arc<dyn ObjectStore>,
    prefix: String,
    /// The directory, for a directory store (a node writes it in place).
    local: Option<PathBuf>,
}

impl std::fmt::Debug for ExportStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ExportStore {
    /// A directory store (made if missing).
    pub fn directory(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("export_dir {}: {e}", dir.display()))?;
        let objects = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| format!("export_dir {}: {e}", dir.display()))?;
        Ok(Self {
            objects: Arc::new(objects),
            prefix: String::new(),
            local: Some(dir.to_path_buf()),
        })
    }

    /// A bucket store; credentials from the environment.
    pub fn s3(config: &S3Config) -> Result<Self, String> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let objects = builder
            .build()
            .map_err(|e| format!("[cluster.export_s3]: {e}"))?;
        Ok(Self {
            objects: Arc::new(objects),
            prefix: config.prefix.trim_matches('/').to_owned(),
            local: None,
        })
    }

    /// Where it is, for logs and errors (no credentials).
    pub fn describe(&self) -> String {
        match &self.local {
            Some(dir) => dir.display().to_string(),
            None => format!("{} (prefix {:?})", self.objects, self.prefix),
        }
    }

    /// The directory of a directory store.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    fn key(&self, name: &str) -> Key {
        let file = format!("{name}.boxlite");
        if self.prefix.is_empty() {
            Key::from(file)
        } else {
            Key::from(format!("{}/{file}", self.prefix))
        }
    }

    fn error(&self, e: object_store::Error) -> StoreError {
        StoreError::Object {
            store: self.describe(),
            source: Box::new(e),
        }
    }

    /// Whether `name` has an export here.
    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        match self.objects.head(&self.key(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// `name`'s export as a stream, or `None` if it has none.
    pub async fn read(
        &self,
        name: &str,
    ) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>, StoreError> {
        match self.objects.get(&self.key(name)).await {
            Ok(got) => Ok(Some(
                got.into_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other))
                    .boxed(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Remove `name`'s export (absent is fine).
    pub async fn remove(&self, name: &str) -> Result<(), StoreError> {
        match self.objects.delete(&self.key(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Start writing `name`'s export; it replaces the old one only at
    /// [`Upload::commit`].
    pub async fn upload(&self, name: &str) -> Result<Upload, StoreError> {
        let upload = self
            .objects
            .put_multipart(&self.key(name))
            .await
            .map_err(|e| self.error(e))?;
        Ok(Upload {
            writer: Some(WriteMultipart::new(upload)),
            size: 0,
            store: self.clone(),
        })
    }

    /// Write `name`'s export from `stream`, committed once it ended
    /// without error; the bytes written.
    pub async fn write_stream<E: std::fmt::Display>(
        &self,
        name: &str,
        mut stream: impl futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<u64, StoreError> {
        let mut upload = self.upload(name).await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StoreError::Body(e.to_string(), self.describe()))?;
            upload.write(chunk).await?;
        }
        upload.commit().await
    }

    /// Upload the file at `path` as `name`'s export, left to commit (or
    /// drop) by the caller.
    pub async fn upload_file(&self, name: &str, path: &Path) -> Result<Upload, StoreError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::Body(e.to_string(), self.describe()))?;
        let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let mut upload = self.upload(name).await?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| StoreError::Body(e.to_string(), self.describe()))?;
            upload.write(chunk).await?;
        }
        Ok(upload)
    }
}

/// An export being written; aborted unless committed.
pub struct Upload {
    writer: Option<WriteMultipart>,
    size: u64,
    store: ExportStore,
}

impl Upload {
    /// Add `bytes`, waiting while enough parts are in flight.
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        writer
            .wait_for_capacity(UPLOAD_CONCURRENCY)
            .await
            .map_err(|e| self.store.error(e))?;
        self.size += bytes.len() as u64;
        writer.put(bytes);
        Ok(())
    }

    /// Put it in place of the old export; the bytes written.
    pub async fn commit(mut self) -> Result<u64, StoreError> {
        let Some(writer) = self.writer.take() else {
            return Ok(self.size);
        };
        writer.finish().await.map_err(|e| self.store.error(e))?;
        Ok(self.size)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The parts written so far go (a staging file, a multipart
            // upload): the old export stays as it was.
            runtime.spawn(async move {
                let _ = writer.abort().await;
            });
        }
    }
}
