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
        stream: impl futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<u64, StoreError> {
        self.upload_from(name, stream).await?.commit().await
    }

    /// Upload `stream` as `name`'s export, left to commit (or drop) by the
    /// caller; aborted if the stream or the store fails.
    async fn upload_from<E: std::fmt::Display>(
        &self,
        name: &str,
        mut stream: impl futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<Upload, StoreError> {
        let mut upload = self.upload(name).await?;
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(chunk) => upload.write(chunk).await,
                Err(e) => Err(StoreError::Body(e.to_string(), self.describe())),
            };
            if let Err(e) = written {
                upload.abort().await;
                return Err(e);
            }
        }
        Ok(upload)
    }

    /// Remove what uploads into a directory store left when their writer
    /// died before commit or abort (`<name>.boxlite#<id>` staging files),
    /// once older than `age`; the count removed. A bucket's incomplete
    /// multipart uploads are its lifecycle rules' (docs/SCALE.md).
    pub fn remove_stale_uploads(&self, age: std::time::Duration) -> usize {
        let Some(dir) = &self.local else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let staging = name.to_string_lossy().contains(".boxlite#");
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age));
            if staging && old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Upload the file at `path` as `name`'s export, left to commit (or
    /// drop) by the caller.
    pub async fn upload_file(&self, name: &str, path: &Path) -> Result<Upload, StoreError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::Body(e.to_string(), self.describe()))?;
        self.upload_from(
            name,
            tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
        )
        .await
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

    /// Drop what was written; the old export stays.
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.abort().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_directory_store_commits_whole_aborts_on_drop_and_sweeps_stale_uploads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ExportStore::directory(dir.path()).expect("store");
        assert!(!store.exists("s1").await.expect("exists"));
        assert!(store.read("s1").await.expect("read").is_none());
        let body = vec![7u8; 3 << 20];
        let chunks = futures_util::stream::iter(
            body.chunks(1 << 20)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            store.write_stream("s1", chunks).await.expect("write"),
            body.len() as u64
        );
        assert!(store.exists("s1").await.expect("exists"));
        assert_eq!(
            std::fs::read(dir.path().join("s1.boxlite")).expect("file"),
            body
        );

        // An upload dropped before its commit leaves the export as it was.
        let mut upload = store.upload("s1").await.expect("upload");
        upload
            .write(Bytes::from_static(b"half"))
            .await
            .expect("write");
        drop(upload);
        for _ in 0..100 {
            if names(dir.path()) == ["s1.boxlite"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(names(dir.path()), ["s1.boxlite"]);
        assert_eq!(
            std::fs::read(dir.path().join("s1.boxlite")).expect("file"),
            body
        );

        // A stream that fails commits nothing.
        let failing = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"start")),
            Err("the node went away"),
        ]);
        let refused = store.write_stream("s1", failing).await.expect_err("failed");
        assert!(
            refused.to_string().contains("the node went away"),
            "{refused}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("s1.boxlite")).expect("file"),
            body
        );

        // What a dead writer left is swept once old, and only that.
        let stale = dir.path().join("s2.boxlite#7");
        let fresh = dir.path().join("s3.boxlite#8");
        std::fs::write(&stale, b"x").expect("stale");
        std::fs::write(&fresh, b"x").expect("fresh");
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .expect("open")
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .expect("mtime");
        assert_eq!(store.remove_stale_uploads(Duration::from_secs(3600)), 1);
        assert_eq!(names(dir.path()), ["s1.boxlite", "s3.boxlite#8"]);
        store.remove("s1").await.expect("remove");
        store.remove("s1").await.expect("absent is fine");
        assert!(!store.exists("s1").await.expect("exists"));
    }

    #[test]
    fn bucket_keys_sit_under_the_prefix() {
        let store = ExportStore::s3(&S3Config {
            bucket: "b".into(),
            prefix: "/cluster-a/".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            allow_http: true,
        })
        .expect("store");
        assert_eq!(store.key("s1").as_ref(), "cluster-a/s1.boxlite");
        assert!(store.local_dir().is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let local = ExportStore::directory(dir.path()).expect("store");
        assert_eq!(local.key("s1").as_ref(), "s1.boxlite");
    }
}
