//! Persistent state: one JSON record per session, written atomically
//! (temp file, fsync, rename, fsync dir), and the data-dir lock that keeps a
//! second process off the same state.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::Limits;

/// What is kept about a session across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub name: String,
    pub box_id: String,
    pub image: String,
    pub warm: bool,
    pub runtime: String,
    pub created_at: u64,
    pub last_used_at: u64,
    #[serde(default)]
    pub limits: Limits,
    /// Its egress policy (loopback only when absent).
    #[serde(default)]
    pub network: crate::network::NetworkPolicy,
    /// Its own default run timeout and idle timeout; absent: the
    /// manager's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Which SSH forwards it takes (all when absent).
    #[serde(default)]
    pub forwarding: crate::types::ForwardingPolicy,
}

/// The session records under `<data>/sessions/<name>/session.json`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("sessions");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    /// Directory for one session's files (record, keys).
    pub fn session_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.session_dir(name).join("session.json")
    }

    pub fn load(&self, name: &str) -> Result<Option<SessionRecord>> {
        let path = self.record_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::CorruptState {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    pub fn save(&self, record: &SessionRecord) -> Result<()> {
        let dir = self.session_dir(&record.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Runtime(e.to_string()))?;
        write_atomic(&self.record_path(&record.name), &bytes)
    }

    /// Remove a session's record and files.
    pub fn delete(&self, name: &str) -> Result<()> {
        let dir = self.session_dir(name);
        let doomed = self.dir.join(format!(".{name}.removing"));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("removing {}", dir.display()), e)),
        }
        std::fs::remove_dir_all(&doomed)
            .map_err(|e| Error::io(format!("removing {}", doomed.display()), e))
    }

    /// Every record, skipping (and logging) ones that cannot be read.
    pub fn list(&self) -> Result<Vec<SessionRecord>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io("listing sessions", e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A delete that crashed half-way: finish it.
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            match self.load(&name) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(session = %name, error = %e, "skipping unreadable session record")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Replace `path` with `bytes` so that a crash leaves either the old or the
/// new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("replacing {}", path.display()), e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive lock on a data dir, held for the life of a manager.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("blink.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let try_lock = || {
            rustix::fs::flock(
                file.as_fd(),
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            )
            .is_ok()
        };
        let mut locked = try_lock();
        // A holder that has exited can leave the lock for a moment to a
        // child it forked (one between fork and exec when it was killed):
        // wait for that to pass, a few seconds at most.
        for _ in 0..120 {
            if locked || holder_alive(&path) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            locked = try_lock();
        }
        if !locked {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(Error::DataDirLocked {
                path: data_dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown holder".into()
                } else {
                    holder.to_owned()
                },
            });
        }
        let me = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "blink".into());
        file.set_len(0)
            .map_err(|e| Error::io("truncating lock file", e))?;
        let _ = write!(file, "pid {} ({me})", std::process::id());
        Ok(Self { _file: file })
    }
}

/// Whether the process the lock file names still runs.
fn holder_alive(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let pid = text
        .strip_prefix("pid ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        // Unknown: assume it runs (refuse rather than wait).
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> SessionRecord {
        SessionRecord {
            name: name.into(),
            box_id: format!("s-{name}"),
            image: "blink/default:latest".into(),
            warm: false,
            runtime: "local".into(),
            created_at: 1,
            last_used_at: 2,
            limits: Limits::default(),
            network: Default::default(),
            run_timeout_secs: None,
            idle_timeout_secs: Some(60),
            forwarding: Default::default(),
        }
    }

    #[test]
    fn records_round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load("a").unwrap(), None);
        store.save(&record("a")).unwrap();
        store.save(&record("b")).unwrap();
        assert_eq!(store.load("a").unwrap(), Some(record("a")));
        assert_eq!(store.list().unwrap().len(), 2);
        store.delete("a").unwrap();
        assert_eq!(store.load("a").unwrap(), None);
        assert_eq!(store.list().unwrap(), vec![record("b")]);
    }

    #[test]
    fn corrupt_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::create_dir_all(store.session_dir("x")).unwrap();
        std::fs::write(store.session_dir("x").join("session.json"), b"{not json").unwrap();
        let err = store.load("x").unwrap_err();
        assert_eq!(err.code(), "corrupt_state");
        assert!(err.to_string().contains("session.json"));
        // list() skips it instead of failing every other session.
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn second_lock_on_a_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(err.code(), "data_dir_locked");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }
}
