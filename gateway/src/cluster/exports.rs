//! Automatic exports (`[cluster] export_on_stop`): a node writes a cold
//! session's export to the shared export store (`export_store.rs`: a
//! directory or a bucket) whenever the session has stopped after a change, so a node that dies later loses nothing a stop
//! had settled: routers restore its cold sessions from these files
//! (docs/SCALE.md, "Failover").
//!
//! One export at a time, woken by the manager's stop signal and once a
//! minute (sandboxes that ended on their own, exports that failed). A
//! session is exported only while its route names this node and no move
//! is under way, checked before the export and again before the file is
//! put in place, so a copy being moved away does not overwrite the export
//! of its new node. A directory's file is written beside its final name
//! and renamed; for a bucket it is written in the node's data dir, then
//! uploaded and committed. A reader sees a whole export or the previous
//! one. At the node's shutdown, [`Exporter::finish`] stops its running
//! cold sessions and exports those changed before the node leaves
//! (docs/SCALE.md, "A node's shutdown").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blink_sdk::Manager;
use blink_sdk::manager::ExportOptions;
use blink_sdk::types::SessionState;
use tokio::sync::watch;

use super::export_store::ExportStore;
use super::{ClusterError, Store, routing};

/// A pass over the sessions also runs this often without a stop.
const TICK: Duration = Duration::from_secs(60);

/// The node's exporter; [`Exporter::finish`], at the node's shutdown,
/// ends it.
pub struct Exporter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<HashMap<String, Disk>>,
    manager: Arc<Manager>,
    store: Store,
    node: String,
    target: Arc<Target>,
}

/// What a node's last exports at its shutdown did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Running cold sessions stopped for them.
    pub stopped: usize,
    pub written: usize,
    /// Not this node's to write, failed, or not reached in time (each
    /// keeps its previous export).
    pub not_written: usize,
}

/// How one session's export went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// Its route names another node or a move: not this node's to write.
    NotOurs,
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::NotOurs => "not_owner",
            Self::Failed => "failed",
        }
    }
}

/// Where an exporter writes.
pub struct Target {
    pub exports: ExportStore,
    /// Where an export is written before its upload (a bucket store; a
    /// directory store is written in place).
    pub staging: PathBuf,
}

impl Target {
    /// The directory an export file is written to first.
    fn scratch(&self) -> &Path {
        self.exports.local_dir().unwrap_or(&self.staging)
    }
}

/// Start exporting node `node`'s stopped cold sessions to `target`.
pub fn start(manager: Arc<Manager>, store: Store, node: String, target: Target) -> Exporter {
    let (stop, stopped) = watch::channel(false);
    remove_own_partials(target.scratch(), &node);
    let target = Arc::new(target);
    let task = tokio::spawn(run(
        manager.clone(),
        store.clone(),
        node.clone(),
        target.clone(),
        stopped,
    ));
    Exporter {
        stop,
        task,
        manager,
        store,
        node,
        target,
    }
}

impl Exporter {
    /// The node's last exports, at its shutdown: once its connections
    /// have drained, and while its registration (draining) still holds its
    /// sessions' routes, so no router restores one elsewhere meanwhile.
    /// Every running cold session is stopped, then each changed since its
    /// last export is exported, all within `within`; one not reached by
    /// then keeps its previous export (its partial file removed). The
    /// loop is stopped first, between exports: one under way is dropped
    /// with its partial file and done again here.
    pub async fn finish(self, within: Duration) -> Finished {
        let _ = self.stop.send(true);
        let done = self.task.await.unwrap_or_default();
        let (manager, store, node, target) = (self.manager, self.store, self.node, self.target);
        let mut finished = Finished::default();
        let last = async {
            for s in manager.list_sessions() {
                if !s.warm && s.state != SessionState::Stopped {
                    match manager.stop_session(&s.name, true).await {
                        Ok(_) => finished.stopped += 1,
                        Err(e) => {
                            tracing::warn!(session = %s.name, error = %e, "stopping a session to export it at shutdown")
                        }
                    }
                }
            }
            for (name, _) in due(&manager, &done) {
                let outcome = export_one(&manager, &store, &node, &target, &name).await;
                metrics::counter!(crate::metrics::CLUSTER_EXPORTS_TOTAL, "result" => outcome.label())
                    .increment(1);
                if outcome == Outcome::Written {
                    finished.written += 1;
                    tracing::info!(session = %name, "automatic export at shutdown written");
                }
            }
        };
        if tokio::time::timeout(within, last).await.is_err() {
            tracing::warn!(
                within_secs = within.as_secs(),
                "automatic exports at shutdown: out of time; the rest keep their previous export"
            );
        }
        finished.not_written = due(&manager, &done).len().saturating_sub(finished.written);
        finished
    }
}

async fn run(
    manager: Arc<Manager>,
    store: Store,
    node: String,
    target: Arc<Target>,
    mut stopped: watch::Receiver<bool>,
) -> HashMap<String, Disk> {
    let wake = manager.stopped_signal();
    // Per session, its disk (a name made again is a new disk) and change
    // count when last exported or found not ours.
    let mut done: HashMap<String, Disk> = HashMap::new();
    loop {
        for (name, disk) in due(&manager, &done) {
            if *stopped.borrow() {
                return done;
            }
            let outcome = tokio::select! {
                _ = stopped.changed() => return done,
                outcome = export_one(&manager, &store, &node, &target, &name) => outcome,
            };
            metrics::counter!(crate::metrics::CLUSTER_EXPORTS_TOTAL, "result" => outcome.label())
                .increment(1);
            if outcome != Outcome::Failed {
                done.insert(name, disk);
            }
        }
        done.retain(|name, _| manager.changes(name).is_ok());
        tokio::select! {
            _ = stopped.changed() => return done,
            () = wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// A session's disk as of a moment: which one, and its change count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    box_id: String,
    changes: u64,
}

/// Stopped cold sessions changed since their last export, with their disk
/// as read now (a start during the export makes it due again).
fn due(manager: &Manager, done: &HashMap<String, Disk>) -> Vec<(String, Disk)> {
    manager
        .list_sessions()
        .into_iter()
        .filter(|s| !s.warm && s.state == SessionState::Stopped)
        .filter_map(|s| {
            let disk = Disk {
                changes: manager.changes(&s.name).ok()?,
                box_id: s.box_id,
            };
            (done.get(&s.name) != Some(&disk)).then_some((s.name, disk))
        })
        .collect()
}

/// Whether `name`'s route names this node with no move under way.
async fn ours(store: &Store, node: &str, name: &str) -> Result<bool, ClusterError> {
    Ok(routing::get(store, name)
        .await?
        .is_some_and(|read| read.route.node == node && read.route.moving_to.is_none()))
}

/// [`ours`], or how the export ends if not.
async fn still_ours(store: &Store, node: &str, name: &str) -> Result<(), Outcome> {
    match ours(store, node, name).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Outcome::NotOurs),
        Err(e) => {
            tracing::warn!(session = %name, error = %e, "automatic export: the route could not be read");
            Err(Outcome::Failed)
        }
    }
}

/// Export `name` to the store if it is this node's to write.
async fn export_one(
    manager: &Manager,
    store: &Store,
    node: &str,
    target: &Target,
    name: &str,
) -> Outcome {
    let started = Instant::now();
    if let Err(outcome) = still_ours(store, node, name).await {
        return outcome;
    }
    let partial = Partial(target.scratch().join(format!(
        ".{node}.{name}.{}.part",
        uuid::Uuid::new_v4().simple()
    )));
    let options = ExportOptions::default();
    let size = match manager
        .export_session(name, &partial.0, options, Arc::new(|_| {}))
        .await
    {
        Ok(size) => size,
        Err(e) => {
            tracing::warn!(session = %name, error = %e, "automatic export failed");
            return Outcome::Failed;
        }
    };
    if let Err(e) = sync(&partial.0).await {
        tracing::warn!(session = %name, error = %e, "automatic export: writing it out failed");
        return Outcome::Failed;
    }
    let written = match target.exports.local_dir() {
        Some(dir) => put_in_place(store, node, name, &partial.0, dir).await,
        None => upload(store, node, name, &partial.0, &target.exports).await,
    };
    if written == Outcome::Written {
        tracing::info!(session = %name, size, store = %target.exports.describe(), elapsed_ms = started.elapsed().as_millis() as u64, "automatic export written");
    }
    written
}

/// A directory store: the file renamed into place, if still ours.
async fn put_in_place(store: &Store, node: &str, name: &str, file: &Path, dir: &Path) -> Outcome {
    // Again before it replaces anything: a move may have begun meanwhile.
    if let Err(outcome) = still_ours(store, node, name).await {
        return outcome;
    }
    let dest = dir.join(format!("{name}.boxlite"));
    if let Err(e) = tokio::fs::rename(file, &dest).await {
        tracing::warn!(session = %name, error = %e, dest = %dest.display(), "automatic export: putting it in place failed");
        return Outcome::Failed;
    }
    let _ = sync(dir).await;
    Outcome::Written
}

/// A bucket store: the file uploaded, committed if still ours (an upload
/// not committed is aborted).
async fn upload(
    store: &Store,
    node: &str,
    name: &str,
    file: &Path,
    exports: &ExportStore,
) -> Outcome {
    let sent = exports.upload_file(name, file).await;
    let upload = match sent {
        Ok(upload) => upload,
        Err(e) => {
            tracing::warn!(session = %name, error = %e, "automatic export: the upload failed");
            return Outcome::Failed;
        }
    };
    // Again before it replaces anything: a move may have begun meanwhile.
    if let Err(outcome) = still_ours(store, node, name).await {
        upload.abort().await;
        return outcome;
    }
    match upload.commit().await {
        Ok(_) => Outcome::Written,
        Err(e) => {
            tracing::warn!(session = %name, error = %e, "automatic export: the upload failed");
            Outcome::Failed
        }
    }
}

/// A file's (or directory's) data on the disk.
async fn sync(path: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(path).await?.sync_all().await
}

/// A partial export, removed unless renamed into place.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Partial files this node left when it died mid-export (`.<node>.*.part`;
/// other nodes' are theirs, maybe still being written).
fn remove_own_partials(dir: &Path, node: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{node}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".part") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
