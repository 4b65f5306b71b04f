//! A file the gateway reads again when it changes, without a restart: the
//! trusted CA keys and the revocation list. Each use costs one `stat`; the
//! file is read and parsed again only when its identity, size, mtime or
//! ctime changed, or when it had been modified less than [`RACY`] before
//! it was read: file times tick coarsely (a few ms), so a second write in
//! the same tick, of the same size, would otherwise go unseen (git's
//! "racy clean" problem). What went wrong is logged once per change of
//! the file, not at every login.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most a reloaded file may hold.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// A file modified less than this before it was read is read again at
/// its next use, whatever its stamp says.
pub const RACY: Duration = Duration::from_secs(2);

/// What tells one version of a file from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

type Parse<T> = fn(&[u8]) -> Result<T, String>;

/// A parsed file, current as of the last [`Reloading::get`].
pub struct Reloading<T> {
    path: PathBuf,
    /// What the file is, for log lines and errors ("trusted CA keys").
    what: &'static str,
    parse: Parse<T>,
    last: Mutex<Option<Seen<T>>>,
}

/// The file as last read.
struct Seen<T> {
    /// `None`: the file could not be stat'ed.
    stamp: Option<Stamp>,
    /// Modified within [`RACY`] of being read: not to be trusted.
    racy: bool,
    result: Result<Arc<T>, String>,
}

impl<T> Reloading<T> {
    /// Read the file now; an error says what is wrong with it (so a
    /// server does not start on a file it cannot use).
    pub fn open(path: &Path, what: &'static str, parse: Parse<T>) -> Result<Self, String> {
        let this = Self {
            path: path.to_owned(),
            what,
            parse,
            last: Mutex::new(None),
        };
        this.get().map(|_| this)
    }

    /// The file as it is now: read again if it changed since the last
    /// call. An error (unreadable, too large, invalid) says why; callers
    /// refuse what depends on it.
    pub fn get(&self) -> Result<Arc<T>, String> {
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        });
        let Ok(mut last) = self.last.lock() else {
            return Err(format!("{}: state lost", self.what));
        };
        if let Some(seen) = last.as_ref()
            && stamp.is_some()
            && seen.stamp == stamp
            && !seen.racy
        {
            return seen.result.clone();
        }
        let result = self.load().map(Arc::new);
        let changed = last
            .as_ref()
            .is_none_or(|seen| seen.result.as_ref().err() != result.as_ref().err());
        match &result {
            // Not for a racy file read again unchanged.
            Ok(_) if last.as_ref().is_some_and(|seen| seen.stamp != stamp) => {
                tracing::info!(file = %self.path.display(), what = self.what, "reloaded")
            }
            Ok(_) => {}
            Err(e) if changed => {
                tracing::warn!(file = %self.path.display(), what = self.what, error = %e, "unusable: refusing what depends on it")
            }
            Err(_) => {}
        }
        let racy = stamp.is_none_or(|s| {
            let modified = UNIX_EPOCH
                + Duration::new(
                    u64::try_from(s.mtime.0).unwrap_or(0),
                    u32::try_from(s.mtime.1).unwrap_or(0),
                );
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age < RACY)
                || modified > SystemTime::now()
        });
        *last = Some(Seen {
            stamp,
            racy,
            result: result.clone(),
        });
        result
    }

    fn load(&self) -> Result<T, String> {
        let file = std::fs::File::open(&self.path)
            .map_err(|e| format!("{} {}: {e}", self.what, self.path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{} {}: {e}", self.what, self.path.display()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "{} {}: larger than {MAX_FILE_BYTES} bytes",
                self.what,
                self.path.display()
            ));
        }
        (self.parse)(&bytes).map_err(|e| format!("{} {}: {e}", self.what, self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Result<usize, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        if text.contains("bad") {
            return Err("a bad line".into());
        }
        Ok(text.lines().count())
    }

    #[test]
    fn reads_again_only_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(Reloading::open(&path, "test file", lines).is_err());
        std::fs::write(&path, "a\n").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        let set_old = || {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap()
        };
        set_old();
        let r = Reloading::open(&path, "test file", lines).unwrap();
        let first = r.get().unwrap();
        assert_eq!(*first, 1);
        // Unchanged: the same parse, not a new one.
        assert!(Arc::ptr_eq(&first, &r.get().unwrap()));
        // Same size, same times (as a write within one tick of the file
        // times would leave them): a fresh file is read again anyway.
        std::fs::write(&path, "b\n").unwrap();
        let again = r.get().unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        // Modified just now: read again at each use, changed or not.
        assert!(!Arc::ptr_eq(&again, &r.get().unwrap()));
        set_old();
        let settled = r.get().unwrap();
        assert!(Arc::ptr_eq(&settled, &r.get().unwrap()));
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(*r.get().unwrap(), 3);
        // Broken, then gone: errors naming the file; then back.
        std::fs::write(&path, "bad\n").unwrap();
        let e = r.get().unwrap_err();
        assert!(e.contains("test file") && e.contains("a bad line"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(r.get().is_err());
        // Replaced by rename (as editors and config managers do).
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, "x\ny\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(*r.get().unwrap(), 2);
    }
}
