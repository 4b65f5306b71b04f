//! Recordings of PTY sessions as asciicast v2 files (docs/RECORDING.md):
//! what the program drew on the terminal, its size changes, and (only if
//! configured) what the client typed, replayable with `asciinema play`.
//!
//! Both surfaces record through one [`Recordings`]: an SSH channel with a
//! PTY (`ssh/channel.rs` feeds the program's output as it pumps it to the
//! client, and window changes as they come) and a REST spawn with `tty:
//! true` (followed here, [`Recordings::record_spawn`], from the spawn's own
//! output stream, so the recording does not depend on who is attached;
//! `rest/spawn.rs` passes on resizes and input from the WebSocket).
//!
//! - `config.rs`: the `[recording]` table.
//! - `cast.rs`: the asciicast v2 lines, and text cut only between
//!   characters.
//! - `recorder.rs`: the never-blocking handle and the task writing a cast.
//! - `store.rs`: files, ids, metadata, the sessions' switches, retention.

mod cast;
pub mod config;
mod recorder;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use blink_sdk::manager::{Manager, Observer};
use blink_sdk::runtime::PtySize;
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

pub use self::config::RecordingConfig;
pub use self::recorder::Recorder;
pub use self::store::Meta;
use self::store::{Store, Switch};

/// The log target of recordings started, finished and removed (an audit
/// target, `audit.rs`).
const AUDIT: &str = "blink::recording";

/// How often retention runs besides after each recording.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Longest command kept in a cast's header.
const MAX_HEADER_COMMAND: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error(transparent)]
    Sdk(#[from] blink_sdk::Error),
    #[error("session {session:?} has no recording {id:?}")]
    NotFound { session: String, id: String },
    #[error("recording {0:?} is still being written")]
    Active(String),
    #[error("recording is off on this server ([recording] enabled = false)")]
    Disabled,
}

/// Who is being recorded, and through what.
#[derive(Debug, Clone)]
pub enum Source {
    /// A PTY channel of an SSH connection.
    Ssh { login: String, peer: SocketAddr },
    /// A REST spawn with `tty: true`.
    Rest { execution: String },
}

/// A recording about to start.
#[derive(Debug, Clone)]
pub struct Begin<'a> {
    pub session: &'a str,
    /// The session's box id, to which its own switch is tied.
    pub box_id: &'a str,
    pub size: PtySize,
    pub term: Option<&'a str>,
    pub shell: Option<&'a str>,
    pub command: Option<&'a str>,
    pub source: Source,
}

/// A recording as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordingInfo {
    #[serde(flatten)]
    pub meta: Meta,
    /// Size of the cast.
    pub bytes: u64,
    /// Still being written (its program runs).
    pub active: bool,
}

/// Whether a session is recorded, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SwitchInfo {
    /// New PTY sessions (SSH channels, REST spawns) are recorded.
    pub enabled: bool,
    /// The session's own switch, if one was set; otherwise the config's
    /// `[recording] sessions` decides.
    pub session_switch: Option<bool>,
    /// `[recording] enabled`: off, nothing is recorded.
    pub server_enabled: bool,
    /// `[recording] record_input`: what clients type is recorded too.
    pub record_input: bool,
}

/// The server's recordings: one for SSH and REST alike.
pub struct Recordings {
    config: RecordingConfig,
    store: Store,
    /// Ids of the recordings being written (retention and DELETE leave
    /// them alone).
    active: Arc<Mutex<HashSet<String>>>,
    /// Recordings of REST spawns, by execution id: resizes and input come
    /// from the WebSocket side.
    spawns: Mutex<HashMap<String, Weak<Recorder>>>,
    writers: TaskTracker,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Recordings {
    /// Recordings for a server on `data_dir`. Nothing is made on disk
    /// until something is recorded.
    pub fn new(config: RecordingConfig, data_dir: &Path) -> Arc<Self> {
        let store = Store::new(config.dir(data_dir));
        Arc::new(Self {
            config,
            store,
            active: Arc::default(),
            spawns: Mutex::default(),
            writers: TaskTracker::new(),
            sweeper: Mutex::default(),
        })
    }

    pub fn config(&self) -> &RecordingConfig {
        &self.config
    }

    /// Where recordings are kept.
    pub fn dir(&self) -> &Path {
        self.store.root()
    }

    /// Apply retention now and every minute until [`Recordings::shutdown`].
    pub fn start_retention(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                let Some(recordings) = this.upgrade() else {
                    return;
                };
                recordings.sweep().await;
                drop(recordings);
                tokio::time::sleep(SWEEP_INTERVAL).await;
            }
        });
        if let Some(old) = lock(&self.sweeper).replace(task) {
            old.abort();
        }
    }

    /// Stop retention and let the recordings still open finish writing
    /// (their programs have ended by now; at most `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        if let Some(task) = lock(&self.sweeper).take() {
            task.abort();
        }
        self.writers.close();
        if tokio::time::timeout(grace, self.writers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.writers.len(),
                "recordings still being written at shutdown; they stay incomplete"
            );
        }
    }

    /// Whether a new PTY session of `session` is recorded.
    pub fn records(&self, session: &str, box_id: &str) -> bool {
        self.config.enabled
            && match self.own_switch(session, box_id) {
                Some(on) => on,
                None => self.config.lists(session),
            }
    }

    /// The session's own switch, if set on this session (not on an
    /// earlier one of the same name).
    fn own_switch(&self, session: &str, box_id: &str) -> Option<bool> {
        match self.store.read_switch(session) {
            Ok(Some(Switch {
                box_id: owner,
                enabled,
            })) if owner == box_id => Some(enabled),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(session, error = %e, "recording switch unreadable; the config decides");
                None
            }
        }
    }

    /// Start recording, if this session is recorded. `None` when it is
    /// not, or when the recording cannot be made (logged): a session is
    /// never refused for want of a recording.
    pub async fn begin(self: &Arc<Self>, begin: Begin<'_>) -> Option<Arc<Recorder>> {
        if !self.records(begin.session, begin.box_id) {
            return None;
        }
        let session = begin.session.to_owned();
        let (meta, header) = self.describe(&begin);
        let this = self.clone();
        let made = tokio::task::spawn_blocking(move || this.create(meta, header)).await;
        match made {
            Ok(Ok(recorder)) => Some(recorder),
            Ok(Err(e)) => {
                tracing::warn!(session, error = %e, "recording not started");
                None
            }
            Err(e) => {
                tracing::warn!(session, error = %e, "recording not started");
                None
            }
        }
    }

    /// A new recording's metadata and cast header.
    fn describe(&self, b: &Begin<'_>) -> (Meta, cast::Header) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let started = now.as_secs();
        let id = store::new_id(started, now.subsec_micros());
        let (login, peer, execution, source, title) = match &b.source {
            Source::Ssh { login, peer } => (
                Some(login.clone()),
                Some(peer.to_string()),
                None,
                "ssh",
                format!("{} (ssh {login} from {peer})", b.session),
            ),
            Source::Rest { execution } => (
                None,
                None,
                Some(execution.clone()),
                "rest",
                format!("{} (rest spawn {execution})", b.session),
            ),
        };
        let mut env = BTreeMap::new();
        if let Some(term) = b.term {
            env.insert("TERM".to_owned(), term.to_owned());
        }
        if let Some(shell) = b.shell {
            env.insert("SHELL".to_owned(), shell.to_owned());
        }
        let command = b.command.map(|c| {
            let mut end = c.len().min(MAX_HEADER_COMMAND);
            while !c.is_char_boundary(end) {
                end -= 1;
            }
            c[..end].to_owned()
        });
        let header = cast::Header {
            version: 2,
            width: b.size.cols,
            height: b.size.rows,
            timestamp: started,
            command,
            title,
            env,
        };
        let meta = Meta {
            id,
            session: b.session.to_owned(),
            started_at: started,
            ended_at: None,
            source: source.into(),
            login,
            peer,
            execution,
            cols: b.size.cols,
            rows: b.size.rows,
            input_recorded: self.config.record_input,
            complete: false,
            dropped_events: 0,
            truncated: false,
        };
        (meta, header)
    }

    /// Make the cast (header written) and its metadata, and start its
    /// writer. Blocking: file system calls.
    fn create(
        self: &Arc<Self>,
        meta: Meta,
        header: cast::Header,
    ) -> blink_sdk::Result<Arc<Recorder>> {
        self.store.make_session_dir(&meta.session)?;
        let (cast_path, _) = self.store.paths(&meta.session, &meta.id)?;
        // Active before its files exist, so retention never takes it.
        lock(&self.active).insert(meta.id.clone());
        let made = (|| {
            let mut file = store::create_cast(&cast_path)?;
            let header = header.line();
            file.write_all(header.as_bytes())
                .map_err(|e| blink_sdk::Error::io("writing a recording", e))?;
            self.store.write_meta(&meta)?;
            Ok::<_, blink_sdk::Error>((file, header.len() as u64))
        })();
        let (file, written) = match made {
            Ok(made) => made,
            Err(e) => {
                let _ = self.store.remove(&meta.session, &meta.id);
                lock(&self.active).remove(&meta.id);
                return Err(e);
            }
        };
        let (recorder, queue) = recorder::Recorder::new(meta.id.clone(), self.config.record_input);
        tracing::info!(target: AUDIT, session = %meta.session, recording = %meta.id, source = %meta.source, "recording started");
        let writer = recorder::Writer {
            store: self.store.clone(),
            meta,
            file: tokio::fs::File::from_std(file),
            written,
            cap: self.config.max_bytes_per_recording,
        };
        let this = self.clone();
        self.writers.spawn(async move {
            let meta = writer.run(queue).await;
            this.finished(&meta).await;
        });
        Ok(Arc::new(recorder))
    }

    async fn finished(&self, meta: &Meta) {
        lock(&self.active).remove(&meta.id);
        tracing::info!(
            target: AUDIT,
            session = %meta.session,
            recording = %meta.id,
            complete = meta.complete,
            dropped_events = meta.dropped_events,
            truncated = meta.truncated,
            "recording finished"
        );
        self.sweep().await;
    }

    /// Apply retention (`retention_secs`, `max_total_bytes`) once.
    pub async fn sweep(&self) {
        let store = self.store.clone();
        let active = self.active.clone();
        let (age, total) = (self.config.retention_secs, self.config.max_total_bytes);
        let removed = tokio::task::spawn_blocking(move || {
            let now = blink_sdk::manager::now_secs();
            store.sweep(now, age, total, |id| lock(&active).contains(id))
        })
        .await
        .unwrap_or_default();
        for (session, id) in removed {
            tracing::info!(target: AUDIT, session, recording = %id, "recording removed by retention");
        }
    }

    /// Record a REST spawn with a terminal, from its own output stream
    /// (whoever is attached, or nobody), until it ends.
    pub async fn record_spawn(
        self: &Arc<Self>,
        manager: &Manager,
        session: &str,
        execution: &str,
        size: PtySize,
        term: &str,
    ) {
        if !self.config.enabled {
            return;
        }
        let Ok(info) = manager.session_info(session) else {
            return;
        };
        let begin = Begin {
            session,
            box_id: &info.box_id,
            size,
            term: Some(term),
            shell: None,
            command: None,
            source: Source::Rest {
                execution: execution.to_owned(),
            },
        };
        let Some(recorder) = self.begin(begin).await else {
            return;
        };
        let observer = match manager.observe_spawn(session, execution) {
            Ok(observer) => observer,
            Err(e) => {
                tracing::warn!(session, execution, error = %e, "spawn not recorded");
                return;
            }
        };
        lock(&self.spawns).insert(execution.to_owned(), Arc::downgrade(&recorder));
        let this = self.clone();
        let execution = execution.to_owned();
        tokio::spawn(async move {
            follow(observer, &recorder).await;
            lock(&this.spawns).remove(&execution);
        });
    }

    /// A recorded spawn's terminal was resized.
    pub fn spawn_resized(&self, execution: &str, size: PtySize) {
        if let Some(recorder) = self.spawn_recorder(execution) {
            recorder.resize(size);
        }
    }

    /// Input sent to a recorded spawn (kept only with `record_input`).
    pub fn spawn_input(&self, execution: &str, bytes: &[u8]) {
        if let Some(recorder) = self.spawn_recorder(execution) {
            recorder.input(bytes);
        }
    }

    fn spawn_recorder(&self, execution: &str) -> Option<Arc<Recorder>> {
        lock(&self.spawns).get(execution).and_then(Weak::upgrade)
    }

    /// A session's recordings, oldest first. The session may be gone
    /// (recordings outlive it until retention removes them); a name with
    /// neither a session nor recordings is not found.
    pub fn list(
        &self,
        manager: &Manager,
        session: &str,
    ) -> Result<Vec<RecordingInfo>, RecordingError> {
        let listed = self.store.list(session)?;
        if listed.is_empty() {
            manager.session_info(session)?;
        }
        let active = lock(&self.active).clone();
        Ok(listed
            .into_iter()
            .map(|(meta, bytes)| RecordingInfo {
                active: active.contains(&meta.id),
                meta,
                bytes,
            })
            .collect())
    }

    /// The cast of a recording, to download.
    pub fn cast(&self, session: &str, id: &str) -> Result<PathBuf, RecordingError> {
        let (cast, _) = self.store.paths(session, id)?;
        if cast.is_file() {
            Ok(cast)
        } else {
            Err(RecordingError::NotFound {
                session: session.into(),
                id: id.into(),
            })
        }
    }

    /// Remove a recording that is not being written.
    pub fn remove(&self, session: &str, id: &str) -> Result<(), RecordingError> {
        store::check_id(id)?;
        self.store.session_dir(session)?;
        if lock(&self.active).contains(id) {
            return Err(RecordingError::Active(id.into()));
        }
        if self.store.remove(session, id)? {
            tracing::info!(target: AUDIT, session, recording = %id, "recording removed");
            Ok(())
        } else {
            Err(RecordingError::NotFound {
                session: session.into(),
                id: id.into(),
            })
        }
    }

    /// Whether a session is recorded.
    pub fn switch(&self, manager: &Manager, session: &str) -> Result<SwitchInfo, RecordingError> {
        let info = manager.session_info(session)?;
        Ok(SwitchInfo {
            enabled: self.records(session, &info.box_id),
            session_switch: self.own_switch(session, &info.box_id),
            server_enabled: self.config.enabled,
            record_input: self.config.record_input,
        })
    }

    /// Set a session's own switch (kept across restarts, until the
    /// session is removed). Turning it on needs `[recording] enabled`.
    pub fn set_switch(
        &self,
        manager: &Manager,
        session: &str,
        enabled: bool,
    ) -> Result<SwitchInfo, RecordingError> {
        let info = manager.session_info(session)?;
        if enabled && !self.config.enabled {
            return Err(RecordingError::Disabled);
        }
        self.store.write_switch(
            session,
            &Switch {
                box_id: info.box_id.clone(),
                enabled,
            },
        )?;
        self.switch(manager, session)
    }
}

/// Feed a spawn's output to its recording until the spawn ends: what was
/// kept before, then everything new (chunks the recording missed are
/// counted as lost).
async fn follow(mut observer: Observer, recorder: &Recorder) {
    if observer.dropped > 0 {
        recorder.lost(1);
    }
    for chunk in std::mem::take(&mut observer.replay) {
        recorder.output(&chunk.data);
    }
    loop {
        if observer.exit.borrow().is_some() {
            break;
        }
        tokio::select! {
            r = observer.live.recv() => match r {
                Ok(chunk) => recorder.output(&chunk.data),
                Err(RecvError::Lagged(n)) => recorder.lost(n),
                Err(RecvError::Closed) => return,
            },
            changed = observer.exit.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    // All output was published before the exit status.
    loop {
        match observer.live.try_recv() {
            Ok(chunk) => recorder.output(&chunk.data),
            Err(TryRecvError::Lagged(n)) => recorder.lost(n),
            Err(_) => break,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recordings(dir: &Path, config: RecordingConfig) -> Arc<Recordings> {
        Recordings::new(config, dir)
    }

    #[test]
    fn the_config_then_the_sessions_own_switch_decide() {
        let tmp = tempfile::tempdir().unwrap();
        let on_for_s1 = RecordingConfig {
            enabled: true,
            sessions: vec!["s1".into()],
            ..RecordingConfig::default()
        };
        let r = recordings(tmp.path(), on_for_s1.clone());
        assert!(r.records("s1", "b-1"));
        assert!(!r.records("s2", "b-2"));
        // Nothing is made on disk by asking.
        assert!(!r.dir().exists());
        // A switch of s2's, then of s1's.
        let set = |session: &str, box_id: &str, enabled: bool| {
            r.store
                .write_switch(
                    session,
                    &Switch {
                        box_id: box_id.into(),
                        enabled,
                    },
                )
                .unwrap();
        };
        set("s2", "b-2", true);
        set("s1", "b-1", false);
        assert!(r.records("s2", "b-2"));
        assert!(!r.records("s1", "b-1"));
        // A session made again under the same name (a new box id) starts
        // from the config again.
        assert!(r.records("s1", "b-1-again"));
        assert!(!r.records("s2", "b-2-again"));
        // Off on the server: nothing, whatever the switches say.
        let off = recordings(
            tmp.path(),
            RecordingConfig {
                enabled: false,
                ..on_for_s1
            },
        );
        assert!(!off.records("s2", "b-2"));
    }

    #[tokio::test]
    async fn a_recording_is_active_until_its_last_handle_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let r = recordings(
            tmp.path(),
            RecordingConfig {
                enabled: true,
                ..RecordingConfig::default()
            },
        );
        let begin = Begin {
            session: "s1",
            box_id: "b-1",
            size: PtySize { rows: 24, cols: 80 },
            term: Some("xterm"),
            shell: Some("/bin/sh"),
            command: Some("echo hi"),
            source: Source::Rest {
                execution: "x-1".into(),
            },
        };
        let recorder = r.begin(begin).await.expect("recorded");
        let id = recorder.id().to_owned();
        assert!(matches!(
            r.remove("s1", &id),
            Err(RecordingError::Active(_))
        ));
        recorder.output(b"hi\r\n");
        let other = recorder.clone();
        drop(recorder);
        assert!(lock(&r.active).contains(&id));
        drop(other);
        r.shutdown(Duration::from_secs(10)).await;
        assert!(lock(&r.active).is_empty());
        let (meta, bytes) = r.store.list("s1").unwrap().remove(0);
        assert!(meta.complete && meta.ended_at.is_some(), "{meta:?}");
        assert_eq!(meta.execution.as_deref(), Some("x-1"));
        let text = std::fs::read_to_string(r.cast("s1", &id).unwrap()).unwrap();
        assert_eq!(bytes, text.len() as u64);
        let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(header["command"], "echo hi");
        assert_eq!(header["env"]["SHELL"], "/bin/sh");
        assert!(text.ends_with("\"o\",\"hi\\r\\n\"]\n"), "{text}");
        r.remove("s1", &id).unwrap();
        assert!(matches!(
            r.remove("s1", &id),
            Err(RecordingError::NotFound { .. })
        ));
    }
}
