//! Recordings on disk: `<dir>/<session>/<started>-<hex>.cast` (the cast)
//! beside `<started>-<hex>.json` (what the listing shows: who, when, how
//! complete), and `<dir>/<session>/switch.json` (the session's own
//! switch). Directories are 0700 and files 0600, all the server's own.
//!
//! Every path is built from a checked session name and a checked id
//! ([`check_id`]): a recording id is digits, a dash and 16 lowercase hex
//! digits, nothing else, so no id a client sends can name another file.

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use blink_sdk::{Error, Result};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A recording's metadata, as written beside its cast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Meta {
    pub id: String,
    pub session: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// When the recorded program ended; absent while it runs, and for a
    /// recording the server never finished (it was killed).
    pub ended_at: Option<u64>,
    /// `ssh` (a PTY channel) or `rest` (a spawn with `tty: true`).
    pub source: String,
    /// The SSH login name.
    pub login: Option<String>,
    /// The SSH client's address.
    pub peer: Option<String>,
    /// The REST spawn's execution id.
    pub execution: Option<String>,
    /// Terminal size at the start.
    pub cols: u16,
    pub rows: u16,
    /// Client input is in the cast (`"i"` events): `[recording]
    /// record_input`.
    pub input_recorded: bool,
    /// Everything from start to end is in the cast: the program ended,
    /// no event was dropped and the size cap was not reached.
    pub complete: bool,
    /// Events left out because the writer fell behind, the disk failed or
    /// the cap was reached.
    pub dropped_events: u64,
    /// The cast stopped at `max_bytes_per_recording`.
    pub truncated: bool,
}

/// A session's own switch, tied to the session it was set on (a session
/// removed and made again under the same name has a new `box_id`, and
/// starts from the config again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    pub box_id: String,
    pub enabled: bool,
}

const SWITCH_FILE: &str = "switch.json";

/// A recording id (`<started>-<16 hex>`), or an error naming the field.
pub fn check_id(id: &str) -> Result<&str> {
    let ok = id.split_once('-').is_some_and(|(stamp, hex)| {
        (1..=20).contains(&stamp.len())
            && stamp.bytes().all(|b| b.is_ascii_digit())
            && hex.len() == 16
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(id)
    } else {
        Err(Error::InvalidArgument(format!(
            "id: \"{}\" is not a recording id (<unix-time>-<16 hex digits>)",
            blink_sdk::escape::Escaped::limit(id, 64)
        )))
    }
}

/// A new id for a recording starting at `started` (seconds) and `micros`
/// into that second: the microseconds lead the hex part, so ids of one
/// second sort in the order they were made (then 8 random hex digits).
pub fn new_id(started: u64, micros: u32) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{started}-{:08x}{}", micros.min(999_999), &hex[..8])
}

/// The recordings directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A session's directory (the name checked first).
    pub fn session_dir(&self, session: &str) -> Result<PathBuf> {
        blink_sdk::manager::names::validate(session)?;
        Ok(self.root.join(session))
    }

    /// A session's directory, made (0700, with the root) if missing.
    pub fn make_session_dir(&self, session: &str) -> Result<PathBuf> {
        let dir = self.session_dir(session)?;
        blink_sdk::runtime::local::private_dir(&self.root)?;
        blink_sdk::runtime::local::private_dir(&dir)?;
        Ok(dir)
    }

    /// The cast and metadata paths of a recording (both checked).
    pub fn paths(&self, session: &str, id: &str) -> Result<(PathBuf, PathBuf)> {
        let dir = self.session_dir(session)?;
        let id = check_id(id)?;
        Ok((
            dir.join(format!("{id}.cast")),
            dir.join(format!("{id}.json")),
        ))
    }

    /// Write a recording's metadata (atomically: a temporary file renamed
    /// over it).
    pub fn write_meta(&self, meta: &Meta) -> Result<()> {
        let (_, path) = self.paths(&meta.session, &meta.id)?;
        let text = serde_json::to_vec_pretty(meta)
            .map_err(|e| Error::Runtime(format!("encoding recording metadata: {e}")))?;
        write_atomic(&path, &text)
    }

    pub fn read_meta(&self, session: &str, id: &str) -> Result<Option<Meta>> {
        let (_, path) = self.paths(session, id)?;
        read_json(&path)
    }

    /// The recordings of a session, oldest first, with the size of each
    /// cast.
    pub fn list(&self, session: &str) -> Result<Vec<(Meta, u64)>> {
        let dir = self.session_dir(session)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing recordings", e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if check_id(id).is_err() {
                continue;
            }
            let Ok(Some(meta)) = read_json::<Meta>(&entry.path()) else {
                continue;
            };
            if meta.id != id || meta.session != session {
                continue;
            }
            let bytes = std::fs::metadata(dir.join(format!("{id}.cast")))
                .map(|m| m.len())
                .unwrap_or(0);
            out.push((meta, bytes));
        }
        out.sort_by(|a, b| (a.0.started_at, &a.0.id).cmp(&(b.0.started_at, &b.0.id)));
        Ok(out)
    }

    /// Remove a recording's cast and metadata. False if it had neither.
    pub fn remove(&self, session: &str, id: &str) -> Result<bool> {
        let (cast, meta) = self.paths(session, id)?;
        let mut found = false;
        for path in [cast, meta] {
            match std::fs::remove_file(&path) {
                Ok(()) => found = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing a recording", e)),
            }
        }
        Ok(found)
    }

    pub fn read_switch(&self, session: &str) -> Result<Option<Switch>> {
        read_json(&self.session_dir(session)?.join(SWITCH_FILE))
    }

    pub fn write_switch(&self, session: &str, switch: &Switch) -> Result<()> {
        let dir = self.make_session_dir(session)?;
        let text = serde_json::to_vec(switch)
            .map_err(|e| Error::Runtime(format!("encoding a recording switch: {e}")))?;
        write_atomic(&dir.join(SWITCH_FILE), &text)
    }

    /// Apply the retention rules: recordings that ended more than
    /// `max_age_secs` ago go (0: no age limit), then the oldest until all
    /// casts together take at most `max_total_bytes`. Recordings being
    /// written (`is_active`, asked by id right before each removal) are
    /// left alone. Returns what was removed, as `(session, id)`.
    pub fn sweep(
        &self,
        now: u64,
        max_age_secs: u64,
        max_total_bytes: u64,
        is_active: impl Fn(&str) -> bool,
    ) -> Vec<(String, String)> {
        let Ok(sessions) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut all = Vec::new();
        for session in sessions.flatten() {
            let Some(name) = session.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if blink_sdk::manager::names::validate(&name).is_err() {
                continue;
            }
            for (id, started, ended, bytes) in self.sweep_candidates(&name) {
                all.push((started, id, name.clone(), ended, bytes));
            }
        }
        all.sort();
        let mut removed = Vec::new();
        let mut total: u64 = all.iter().map(|r| r.4).sum();
        for (_, id, session, ended, bytes) in &all {
            if is_active(id) {
                continue;
            }
            let expired = max_age_secs > 0 && now.saturating_sub(*ended) > max_age_secs;
            if (expired || total > max_total_bytes) && self.remove(session, id).unwrap_or(false) {
                total = total.saturating_sub(*bytes);
                removed.push((session.clone(), id.clone()));
            }
        }
        removed
    }

    /// Every recording of a session, with metadata or not (a cast whose
    /// metadata is gone still takes room): id, start, end (the cast's
    /// last change when the metadata has none) and bytes.
    fn sweep_candidates(&self, session: &str) -> Vec<(String, u64, u64, u64)> {
        let Ok(dir) = self.session_dir(session) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut ids = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let id = name
                .strip_suffix(".cast")
                .or_else(|| name.strip_suffix(".json"));
            if let Some(id) = id.filter(|id| check_id(id).is_ok()) {
                ids.insert(id.to_owned());
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let cast = std::fs::metadata(dir.join(format!("{id}.cast")));
            let bytes = cast.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = cast
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            let meta = self.read_meta(session, &id).ok().flatten();
            let started = meta.as_ref().map(|m| m.started_at).unwrap_or_else(|| {
                id.split_once('-')
                    .and_then(|(s, _)| s.parse().ok())
                    .unwrap_or(0)
            });
            let ended = meta
                .and_then(|m| m.ended_at)
                .or(modified)
                .unwrap_or(started);
            out.push((id, started, ended, bytes));
        }
        out
    }
}

/// Create a recording's cast: 0600, never over an existing file.
pub fn create_cast(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("creating a recording", e))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptState {
                path: path.into(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(session: &str, id: &str, started: u64, ended: Option<u64>) -> Meta {
        Meta {
            id: id.into(),
            session: session.into(),
            started_at: started,
            ended_at: ended,
            source: "ssh".into(),
            login: Some(session.into()),
            peer: None,
            execution: None,
            cols: 80,
            rows: 24,
            input_recorded: false,
            complete: true,
            dropped_events: 0,
            truncated: false,
        }
    }

    fn record(store: &Store, session: &str, started: u64, ended: u64, bytes: usize) -> String {
        store.make_session_dir(session).unwrap();
        let id = new_id(started, 0);
        let (cast, _) = store.paths(session, &id).unwrap();
        let mut f = create_cast(&cast).unwrap();
        f.write_all(&vec![b'x'; bytes]).unwrap();
        store
            .write_meta(&meta(session, &id, started, Some(ended)))
            .unwrap();
        id
    }

    #[test]
    fn ids_are_checked_strictly() {
        for good in ["1700000000-0123456789abcdef", "1-ffffffffffffffff"] {
            assert_eq!(check_id(good).unwrap(), good);
        }
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "1700000000-0123456789abcdef/../x",
            "1700000000-0123456789ABCDEF",
            "1700000000-0123456789abcde",
            "1700000000-0123456789abcdef0",
            "-0123456789abcdef",
            "1700000000_0123456789abcdef",
            "1700000000-0123456789abcdef.cast",
            "switch",
            "170000000000000000000-0123456789abcdef",
        ] {
            let e = check_id(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_argument", "{bad}");
            assert!(e.to_string().starts_with("id: "), "{e}");
        }
        assert!(check_id(&new_id(42, 999_999)).is_ok());
        // Made in order within a second, they sort in that order.
        let (a, b) = (new_id(7, 5), new_id(7, 40));
        assert!(a < b, "{a} {b}");
    }

    #[test]
    fn files_and_directories_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("recordings"));
        let id = record(&store, "s1", 10, 20, 5);
        let (cast, json) = store.paths("s1", &id).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.root()), 0o700);
        assert_eq!(mode(&store.session_dir("s1").unwrap()), 0o700);
        assert_eq!(mode(&cast), 0o600);
        assert_eq!(mode(&json), 0o600);
        // A cast is never made over another.
        assert!(create_cast(&cast).is_err());
        // Names are checked before any path is made.
        assert_eq!(
            store.session_dir("../x").unwrap_err().code(),
            "invalid_name"
        );
        let listed = store.list("s1").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1, 5);
        assert!(store.remove("s1", &id).unwrap());
        assert!(!store.remove("s1", &id).unwrap());
        assert!(store.list("s1").unwrap().is_empty());
    }

    #[test]
    fn sweep_removes_the_expired_then_the_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("recordings"));
        let old = record(&store, "s1", 100, 200, 10);
        let a = record(&store, "s1", 1000, 1100, 40);
        let b = record(&store, "s2", 2000, 2100, 40);
        let c = record(&store, "s1", 3000, 3100, 40);
        // Age: only `old` ended more than 1000 s before 1500.
        let removed = store.sweep(1500, 1000, u64::MAX, |_| false);
        assert_eq!(removed, vec![("s1".to_string(), old)]);
        // Size: 120 bytes, at most 90: the oldest (`a`) goes, and 80 fit.
        // At most 30: `b` is next but active, so `c` goes.
        let active = |id: &str| id == b;
        let removed = store.sweep(3200, 0, 90, active);
        assert_eq!(removed, vec![("s1".to_string(), a)]);
        let removed = store.sweep(3200, 0, 30, active);
        assert_eq!(removed, vec![("s1".to_string(), c)]);
        assert_eq!(store.list("s2").unwrap().len(), 1);
        assert!(store.list("s1").unwrap().is_empty());
    }
}
