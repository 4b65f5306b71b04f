//! Downloading one blob into the store's ingest directory: resumed from
//! what an interrupted download left, capped at the size its descriptor
//! declares, and kept only if its bytes have its digest. A download the
//! registry got wrong (too long, too short, other bytes) is deleted; one
//! cut off (the connection, the process) is kept to resume.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info};

use super::source::{Asking, Source};
use super::{PullEvent, PullProgress};
use crate::error::{Error, Result};
use crate::image::ImageStore;
use crate::image::ingest::Ingest;
use crate::image::oci::{self, Descriptor};

/// A blob ready to commit.
#[derive(Debug)]
pub(super) struct Fetched {
    pub digest: String,
    pub path: PathBuf,
    /// Bytes that came over the network for it in this pull.
    pub fetched: u64,
    /// True when it was in the store (or downloaded by another pull).
    pub cached: bool,
}

/// How often a waiting pull looks whether another one's download of the
/// same blob is done.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Progress is reported at most this often per blob.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// What went wrong in one attempt.
enum Failed {
    /// The registry's bytes are wrong: the download is deleted. True when
    /// the attempt resumed an earlier download (whose bytes may be the
    /// wrong ones).
    Refused(Error, bool),
    /// Cut off: the download is kept to resume.
    Interrupted(Error),
}

/// Get one blob into the store's ingest directory (or find it there or in
/// the store).
pub(super) async fn fetch(
    src: &Source,
    store: &ImageStore,
    ingest: &Ingest,
    desc: &Descriptor,
    progress: Option<&PullProgress>,
) -> Result<Fetched> {
    let hex = oci::digest_hex("blob", &desc.digest)?.to_owned();
    let found = |path: PathBuf| Fetched {
        digest: desc.digest.clone(),
        path,
        fetched: 0,
        cached: true,
    };
    let in_store = store.blob_path(&desc.digest)?;
    if in_store.is_file() {
        return Ok(found(in_store));
    }
    // One download per blob, across pulls and processes.
    let lock = loop {
        match ingest.try_lock(&hex) {
            Ok(Some(lock)) => break lock,
            Ok(None) => tokio::time::sleep(LOCK_POLL).await,
            Err(e) => {
                return Err(Error::io(
                    format!("locking the download of {}", desc.digest),
                    e,
                ));
            }
        }
    };
    let done = ingest.done_path(&hex);
    if done.is_file() {
        lock.release();
        return Ok(found(done));
    }
    if in_store.is_file() {
        lock.release();
        return Ok(found(in_store));
    }
    let partial = ingest.partial_path(&hex);
    let mut fetched = 0;
    // Resume what is there; if the result is wrong, start over once.
    let mut resume = true;
    let result = loop {
        match attempt(src, desc, &partial, resume, progress, &mut fetched).await {
            Ok(()) => break Ok(()),
            Err(Failed::Refused(e, resumed)) => {
                let _ = tokio::fs::remove_file(&partial).await;
                if resumed {
                    debug!(blob = %desc.digest, error = %e, "resumed download is wrong; starting over");
                    resume = false;
                    continue;
                }
                break Err(e);
            }
            Err(Failed::Interrupted(e)) => break Err(e),
        }
    };
    if let Err(e) = result {
        lock.release();
        return Err(e);
    }
    std::fs::rename(&partial, &done)
        .map_err(|e| Error::io(format!("keeping the download of {}", desc.digest), e))?;
    lock.release();
    Ok(Fetched {
        digest: desc.digest.clone(),
        path: done,
        fetched,
        cached: false,
    })
}

/// One GET of the blob into `partial`, from where it stopped if `resume`.
async fn attempt(
    src: &Source,
    desc: &Descriptor,
    partial: &std::path::Path,
    resume: bool,
    progress: Option<&PullProgress>,
    fetched: &mut u64,
) -> std::result::Result<(), Failed> {
    let io = |what: &str, e: std::io::Error| {
        Failed::Interrupted(Error::io(format!("{what} {}", partial.display()), e))
    };
    let size = desc.size;
    // What an earlier download left, if it can be resumed.
    let mut have = match tokio::fs::metadata(partial).await {
        Ok(m) if resume && m.len() <= size => m.len(),
        _ => 0,
    };
    let mut hasher = Sha256::new();
    if have > 0 {
        // What is there was never checked: hash it again.
        let mut file = tokio::fs::File::open(partial)
            .await
            .map_err(|e| io("reading", e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        while left > 0 {
            let n = file.read(&mut buf).await.map_err(|e| io("reading", e))?;
            if n == 0 {
                break;
            }
            let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        have -= left;
        if have == size {
            // Whole already (cut off before it was kept): nothing to ask.
            return check_digest(desc, src, hasher, true);
        }
    }
    let path = format!("blobs/{}", desc.digest);
    let from = (have > 0).then_some(have);
    // Nothing is written before the registry answers.
    let resp = src
        .get(Asking::Blob, &path, None, from)
        .await
        .map_err(Failed::Interrupted)?;
    let mut at = have;
    if have > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
        // The registry sent it all: start over.
        debug!(blob = %desc.digest, "no range support; downloading it whole");
        hasher = Sha256::new();
        at = 0;
    } else if have > 0 {
        info!(blob = %desc.digest, from = have, of = size, "resuming a download");
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(partial)
        .await
        .map_err(|e| io("opening", e))?;
    file.set_len(at).await.map_err(|e| io("truncating", e))?;
    use std::io::SeekFrom;
    use tokio::io::AsyncSeekExt as _;
    file.seek(SeekFrom::Start(at))
        .await
        .map_err(|e| io("seeking", e))?;
    let what = || format!("blob {} from {}", desc.digest, src.label());
    let resumed = at > 0;
    let too_long = |n: u64| {
        Failed::Refused(
            Error::InvalidImage {
                what: what(),
                reason: format!(
                    "the registry sent more than the {size} bytes its manifest declares (at least {n})"
                ),
            },
            resumed,
        )
    };
    if let Some(n) = resp.content_length()
        && at.saturating_add(n) > size
    {
        return Err(too_long(at.saturating_add(n)));
    }
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut stream = resp.bytes_stream();
    let mut last_report = Instant::now();
    let report = |done: u64| {
        if let Some(p) = progress {
            p(&PullEvent::Blob {
                digest: desc.digest.clone(),
                done,
                total: size,
            });
        }
    };
    report(at);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = out.flush().await;
                return Err(Failed::Interrupted(src.error(format!(
                    "the download of blob {} was cut after {at} of {size} bytes ({}); pulling again resumes it",
                    desc.digest,
                    src.request_error(&e)
                ))));
            }
        };
        let n = chunk.len() as u64;
        if at.saturating_add(n) > size {
            return Err(too_long(at.saturating_add(n)));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(|e| io("writing", e))?;
        at += n;
        *fetched += n;
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            report(at);
        }
    }
    out.flush().await.map_err(|e| io("writing", e))?;
    let file = out.into_inner();
    file.sync_all().await.map_err(|e| io("syncing", e))?;
    report(at);
    if at < size {
        return Err(Failed::Refused(
            Error::InvalidImage {
                what: what(),
                reason: format!(
                    "truncated: the registry sent {at} of the {size} bytes its manifest declares"
                ),
            },
            resumed,
        ));
    }
    check_digest(desc, src, hasher, resumed)
}

/// The blob's bytes (all in `hasher`) have its digest, or it is refused.
fn check_digest(
    desc: &Descriptor,
    src: &Source,
    hasher: Sha256,
    resumed: bool,
) -> std::result::Result<(), Failed> {
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != desc.digest {
        return Err(Failed::Refused(
            Error::InvalidImage {
                what: format!("blob {} from {}", desc.digest, src.label()),
                reason: format!(
                    "digest mismatch: expected {}, the registry sent bytes with digest {got}",
                    desc.digest
                ),
            },
            resumed,
        ));
    }
    Ok(())
}
