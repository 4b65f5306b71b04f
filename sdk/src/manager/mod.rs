//! The session manager: one per process. CLI, REST and SSH all go through
//! it. It owns session records, the warm/idle policy, ephemeral runs and
//! spawned executions; the runtime below it only knows sandboxes by id.
//!
//! One concept per file; this one only wires them:
//! - `config.rs`: settings and the default data dir.
//! - `sessions.rs`: records, slots, open/stop/remove, recovery.
//! - `idle.rs`: the warm/idle policy.
//! - `program.rs`: what runs (scripts, commands) and its environment;
//!   `policy.rs`: the rules for env, command lines, terminals, signals.
//! - `executions.rs`: one path from a target to a running execution.
//! - `spawns.rs` and `spawn.rs`: attachable executions and their registry.
//! - `keys.rs`, `key_options.rs`: SSH keys of sessions; `store.rs`: files.
//! - `images.rs`: pulls on demand, image removal that spares used images.
//! - `resources.rs`: a session's size (CPU, memory, processes, disk,
//!   timeouts), checked against the maxima, changed live, its usage.
//! - `forwarding.rs`: TCP connections to and listeners on a session's own
//!   loopback (SSH forwarding), and the rules for them.

mod archives;
mod checkpoints;
mod collect;
mod config;
mod egress;
mod executions;
pub mod forwarding;
mod idle;
mod images;
mod key_options;
pub mod keys;
pub mod names;
pub mod policy;
mod pool;
mod program;
mod resources;
mod sessions;
mod spawn;
mod spawns;
pub mod store;
mod vhub;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use self::archives::{ByteProgress, ExportOptions};
pub use self::checkpoints::CloneSource;
pub use self::collect::Collected;
pub use self::config::{MEMORY_DIR, ManagerConfig, api_socket, default_data_dir, gateway_dir};
pub use self::executions::{EphemeralBox, Lease, Sandbox, Started, Target};
pub use self::forwarding::{ForwardListener, ForwardRules, Forwarded};
pub use self::images::images_in_use;
pub use self::keys::KeyStore;
pub use self::program::{Program, RunOptions};
pub use self::resources::{
    MIN_CPUS, MIN_MEMORY_MIB, MIN_PIDS, ResourceMaxima, ResourceNumbers, ResourceRequest,
};
use self::sessions::Slot;
pub use self::sessions::{ActivityGuard, OpenOptions};
pub use self::spawn::{Attachment, Chunk, Observer, SpawnInfo, Spawned, Stream};
use self::store::{DataDirLock, Store};
use crate::error::{Error, Result};
use crate::image::{ImageStore, Puller};
use crate::runtime::local::{LocalOptions, LocalRuntime};
use crate::runtime::preflight;
use crate::runtime::selection::{Selection, select};
use crate::runtime::{Runtime, RuntimeKind};
use crate::types::RuntimeInfo;

pub struct Manager {
    config: ManagerConfig,
    runtime: Arc<dyn Runtime>,
    images: Arc<ImageStore>,
    /// Registry pulls into `images` (`[images]` settings).
    puller: Arc<Puller>,
    store: Store,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Serializes session creation and removal by name.
    catalog: tokio::sync::Mutex<()>,
    /// Names to addresses for the egress proxies.
    resolver: Arc<crate::network::Resolver>,
    /// Ephemeral sandboxes made ahead of time.
    pool: pool::Pool,
    /// Removals of used ephemeral sandboxes, done off the callers' path;
    /// `shutdown` waits for them.
    removals: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    spawns: Mutex<HashMap<String, Arc<Spawned>>>,
    /// Wakes the idle policy when a session's idle timeout is set (its
    /// tick follows the shortest).
    idle_changed: Arc<tokio::sync::Notify>,
    /// Notified after a session's sandbox stops (`stopped_signal`).
    stopped: Arc<tokio::sync::Notify>,
    /// Which runtime runs, and why (startup log, health, product, doctor).
    selection: Selection,
    _lock: DataDirLock,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Take the data dir, recover state left by a previous process, and
    /// start the idle policy, on the runtime the config names. Must run
    /// inside a tokio runtime.
    pub async fn open(config: ManagerConfig) -> Result<Arc<Self>> {
        let data = &config.data_dir;
        // The lock before the runtime: a runtime tidies its directory.
        let lock = lock_data_dir(data)?;
        let images = Arc::new(ImageStore::open(&data.join("images"))?);
        // The test boot blocks for seconds: off the async workers, and
        // only when its verdict can matter.
        let preflight = match config.runtime {
            crate::runtime::selection::RuntimeChoice::Local => preflight::boxlite_unbooted(),
            _ => tokio::task::spawn_blocking(preflight::boxlite)
                .await
                .map_err(|e| Error::Runtime(format!("the boxlite preflight: {e}")))?,
        };
        let (kind, selection) = select(config.runtime, &preflight)?;
        tracing::info!(
            runtime = %selection.runtime,
            requested = %selection.requested,
            reason = %selection.reason,
            "runtime selected"
        );
        let runtime: Arc<dyn Runtime> = match kind {
            RuntimeKind::Local => Arc::new(LocalRuntime::new(
                LocalOptions {
                    root: data.join("sandboxes"),
                    id_base: config.id_base,
                    seccomp: config.seccomp,
                },
                images.clone(),
            )?),
            #[cfg(feature = "boxlite")]
            RuntimeKind::Boxlite => Arc::new(
                crate::runtime::boxlite::BoxliteRuntime::open(
                    &data.join("boxlite"),
                    images.clone(),
                    config.boxlite_vhub_relay,
                    config.boxlite_boot_timeout,
                )
                .await?,
            ),
            // Selection never picks a runtime this build lacks (its
            // preflight fails on "built in").
            #[cfg(not(feature = "boxlite"))]
            RuntimeKind::Boxlite => {
                return Err(Error::RuntimeUnavailable {
                    runtime: "boxlite".into(),
                    reason: crate::runtime::preflight::NOT_BUILT_VERDICT.into(),
                });
            }
        };
        Self::assemble(config, runtime, images, lock, selection).await
    }

    /// A manager over any runtime: what `open` does once it has made the
    /// configured one. Tests of the manager's policies use the in-memory
    /// runtime of `crate::testing`.
    pub async fn with_runtime(
        config: ManagerConfig,
        runtime: Arc<dyn Runtime>,
        images: Arc<ImageStore>,
    ) -> Result<Arc<Self>> {
        let lock = lock_data_dir(&config.data_dir)?;
        let selection = Selection {
            requested: config.runtime,
            runtime: runtime.info().name,
            reason: "given by the caller (Manager::with_runtime)".into(),
        };
        Self::assemble(config, runtime, images, lock, selection).await
    }

    async fn assemble(
        config: ManagerConfig,
        runtime: Arc<dyn Runtime>,
        images: Arc<ImageStore>,
        lock: DataDirLock,
        selection: Selection,
    ) -> Result<Arc<Self>> {
        let store = Store::open(&config.data_dir)?;
        let puller = Arc::new(Puller::new(images.clone(), config.pull.clone())?);
        let resolver = Arc::new(crate::network::Resolver::new(config.resolve.clone()));
        let manager = Arc::new(Self {
            resolver,
            pool: Default::default(),
            removals: Mutex::default(),
            config,
            runtime,
            images,
            puller,
            store,
            slots: Mutex::default(),
            catalog: tokio::sync::Mutex::new(()),
            spawns: Mutex::default(),
            idle_changed: Arc::default(),
            stopped: Arc::default(),
            selection,
            _lock: lock,
        });
        manager.recover().await?;
        manager.start_policy();
        manager.start_pool();
        Ok(manager)
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn runtime_info(&self) -> RuntimeInfo {
        self.runtime.info()
    }

    /// Which runtime was selected at startup, and why.
    pub fn runtime_selection(&self) -> &Selection {
        &self.selection
    }

    /// Whether sessions here have snapshots and clones (local runtime:
    /// disk images, so a server running as root).
    pub fn snapshots_supported(&self) -> bool {
        self.runtime.snapshots_supported()
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// The SSH public keys of sessions.
    pub fn keys(&self) -> KeyStore {
        KeyStore::new(self.store.clone())
    }

    /// Stop every running sandbox (for an orderly shutdown), remove the
    /// pool's and wait for the removals of used ephemeral ones.
    pub async fn shutdown(&self) {
        for b in self.drain_pool() {
            let _ = b.release().await;
        }
        let removals: Vec<_> = std::mem::take(&mut *lock(&self.removals));
        for r in removals {
            let _ = r.await;
        }
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let box_id = lock(&slot.record).box_id.clone();
            if let Err(e) = self.runtime.stop(&box_id).await {
                tracing::warn!(box_id = %box_id, error = %e, "stopping sandbox at shutdown failed");
            }
            let mut r = lock(&slot.record).clone();
            r.last_used_at = slot.last_used.load(Ordering::SeqCst) / 1000;
            let _ = self.store.save(&r);
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now()
}

fn now() -> u64 {
    now_ms() / 1000
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Make the data dir if missing and take its lock; only then make it
/// private. A process refused here changes nothing: the holder has set
/// the modes its sandboxes need (the local runtime's data dir is 0711).
fn lock_data_dir(data: &std::path::Path) -> Result<DataDirLock> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .map_err(|e| Error::io(format!("creating {}", data.display()), e))?;
    let lock = DataDirLock::acquire(data)?;
    crate::runtime::local::private_dir(data)?;
    Ok(lock)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
