//! The store's `ingest/` directory: blobs on their way in from a registry.
//!
//! `HEX.partial` grows while a blob downloads and stays if the download
//! is cut (a crash, a dropped connection), so the next pull resumes it;
//! once its bytes match the digest it becomes `HEX`, until a commit moves
//! it into `blobs/`. `HEX.lock` is flock'ed by the one download of that
//! blob, in this process or another: a second pull of the same blob waits,
//! then finds it done. Every pull holds `.pulls` shared for its whole
//! life; `image prune` cleans the directory only when it can take it
//! exclusively (no pull running anywhere).

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// The ingest directory of a store.
#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    dir: PathBuf,
}

/// The lock of one blob's download; released when dropped.
pub(crate) struct BlobLock {
    _file: File,
    path: PathBuf,
}

impl BlobLock {
    /// Drop the lock file as well (the download is done): anyone who
    /// opened it meanwhile sees it is no longer the file at the path and
    /// opens the path again.
    pub(crate) fn release(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Held (shared) by a running pull.
pub(crate) struct PullGuard {
    _file: File,
}

impl Ingest {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn pulls_file(&self) -> std::io::Result<File> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".pulls"))
    }

    /// Mark a pull as running (blocks only while a prune cleans).
    pub(crate) fn pull_guard(&self) -> std::io::Result<PullGuard> {
        let file = self.pulls_file()?;
        rustix::fs::flock(&file, FlockOperation::LockShared)?;
        Ok(PullGuard { _file: file })
    }

    /// Where a blob lives once verified.
    pub(crate) fn done_path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    /// Where a blob grows while it downloads.
    pub(crate) fn partial_path(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("{hex}.partial"))
    }

    /// Take the blob's download lock if nobody holds it.
    pub(crate) fn try_lock(&self, hex: &str) -> std::io::Result<Option<BlobLock>> {
        let path = self.dir.join(format!("{hex}.lock"));
        for _ in 0..8 {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            // Still the file at the path? (Its holder may have released
            // and removed it between our open and our flock.)
            let held = file.metadata()?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(BlobLock { _file: file, path }));
                }
                _ => continue,
            }
        }
        Ok(None)
    }
}

/// Remove every download, whole or partial, if no pull is running.
/// Returns (blobs, bytes) removed.
pub(crate) fn clean(dir: &Path) -> (usize, u64) {
    let ingest = Ingest::new(dir.to_path_buf());
    let Ok(pulls) = ingest.pulls_file() else {
        return (0, 0);
    };
    if rustix::fs::flock(&pulls, FlockOperation::NonBlockingLockExclusive).is_err() {
        tracing::info!("pulls are running; their downloads are kept");
        return (0, 0);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut removed, mut bytes) = (0, 0u64);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let hex = name.split('.').next().unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(entry.path()).is_ok() && !name.ends_with(".lock") {
            removed += 1;
            bytes = bytes.saturating_add(size);
        }
    }
    (removed, bytes)
}
