//! Sessions: records and their in-memory slots, creation, start, stop,
//! removal, and recovery after a restart. A slot's activity count is what
//! the idle policy reads: every execution holds an `ActivityGuard`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::store::SessionRecord;
use super::{Manager, lock, names, now, now_ms};
use crate::error::{Error, Result};
use crate::runtime::SandboxSpec;
use crate::types::{OpenedSession, SessionInfo, SessionState};

/// Options of `open_session`.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub image: Option<String>,
    /// `Some(true)` makes the session warm (kept running), `Some(false)`
    /// makes it cold again, `None` keeps what it was.
    pub warm: Option<bool>,
    /// The size of a new session (CPU, memory, processes, disk, timeouts);
    /// the configured defaults for what it leaves out. Checked even when
    /// the session exists, which keeps its own (`set_resources` changes
    /// it).
    pub resources: super::ResourceRequest,
    /// Make the new session's disk a copy of another session's (or of one
    /// of its snapshots), with its image and settings. The name must be
    /// free.
    pub from: Option<super::CloneSource>,
    /// Egress policy of a new session; the configured default when `None`.
    pub network: Option<crate::network::NetworkPolicy>,
    /// SSH forwards a new session takes; the configured default when
    /// `None`.
    pub forwarding: Option<crate::types::ForwardingPolicy>,
}

/// In-memory state of one session.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(super) record: Mutex<SessionRecord>,
    /// Serializes start, stop and remove.
    pub(super) lifecycle: tokio::sync::Mutex<()>,
    pub(super) active: AtomicU32,
    /// Milliseconds since the epoch: second granularity would let the
    /// idle policy stop a session the moment a second boundary passes.
    pub(super) last_used: AtomicU64,
    pub(super) removed: std::sync::atomic::AtomicBool,
    /// Being moved away by a cluster router: it does not start before
    /// this time (milliseconds since the epoch; `fence`).
    pub(super) fenced_until: AtomicU64,
    /// Times its disk or settings may have changed since this process
    /// opened it: a start, a restore, a resize; a session made here starts
    /// at 1 (its disk is new), one recovered at 0 (`changes`).
    pub(super) changes: AtomicU64,
    /// Its egress proxy while the sandbox runs with a policy (egress.rs).
    pub(super) egress: Mutex<Option<super::egress::RunningEgress>>,
    pub(super) egress_stats: Arc<crate::network::EgressStats>,
}

/// The longest a fence holds unless renewed (`Manager::fence`).
pub const MAX_FENCE_SECS: u64 = 600;

/// Keeps a session from idling out while it lives: one per execution,
/// SSH channel or anything else that uses the session.
#[derive(Debug)]
pub struct ActivityGuard {
    slot: Arc<Slot>,
}

impl ActivityGuard {
    /// Count one more user of the session.
    pub(super) fn hold(slot: Arc<Slot>) -> Self {
        slot.active.fetch_add(1, Ordering::SeqCst);
        slot.last_used.store(now_ms(), Ordering::SeqCst);
        Self { slot }
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.slot.last_used.store(now_ms(), Ordering::SeqCst);
        self.slot.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Manager {
    /// Load records; the runtime removes every sandbox no record owns
    /// (ephemeral ones, and disks left by a crash between steps).
    pub(super) async fn recover(&self) -> Result<()> {
        let records = self.store.list()?;
        let owned: std::collections::HashSet<String> =
            records.iter().map(|r| r.box_id.clone()).collect();
        self.runtime.retain(&owned).await?;
        let mut slots = lock(&self.slots);
        for r in records {
            let last = r.last_used_at.saturating_mul(1000);
            let name = r.name.clone();
            let slot = new_slot(r, last);
            // Unchanged since this process opened it, as far as it knows.
            slot.changes.store(0, Ordering::SeqCst);
            slots.insert(name, Arc::new(slot));
        }
        Ok(())
    }

    pub(super) fn slot(&self, name: &str) -> Result<Arc<Slot>> {
        names::validate(name)?;
        lock(&self.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::SessionNotFound(name.into()))
    }

    fn info_of(&self, slot: &Slot) -> SessionInfo {
        let r = lock(&slot.record).clone();
        let rt = self.runtime.info();
        let egress = slot.egress_stats.snapshot();
        SessionInfo {
            resources: self.resources_of(&r),
            usage: crate::types::ResourceUsage {
                egress_bytes_sent: egress.bytes_sent,
                egress_bytes_received: egress.bytes_received,
                ..self.runtime.usage(&r.box_id)
            },
            disk: self.runtime.disk_usage(&r.box_id),
            network: crate::types::NetworkInfo {
                policy: r.network.clone(),
                egress: slot.egress_stats.snapshot(),
                forwarding: r.forwarding,
            },
            state: if self.runtime.is_running(&r.box_id) {
                SessionState::Running
            } else {
                SessionState::Stopped
            },
            name: r.name,
            box_id: r.box_id,
            image: r.image,
            warm: r.warm,
            runtime: rt.name,
            isolation: rt.isolation,
            created_at: r.created_at,
            last_used_at: slot.last_used.load(Ordering::SeqCst) / 1000,
            active_executions: slot.active.load(Ordering::SeqCst),
        }
    }

    pub(super) fn spec_of(&self, record: &SessionRecord) -> SandboxSpec {
        SandboxSpec {
            id: record.box_id.clone(),
            image: record.image.clone(),
            hostname: record.name.clone(),
            limits: record.limits.clone(),
        }
    }

    /// Open a session, creating it (and its disk) if missing.
    pub async fn open_session(&self, name: &str, options: OpenOptions) -> Result<OpenedSession> {
        names::validate(name)?;
        let limits = self.limits_for_new(&options.resources)?;
        if options.from.is_none() && self.slot(name).is_err() {
            // A pull can take minutes: not under the catalog lock.
            self.pull_if_missing(options.image.as_deref()).await?;
        }
        let _catalog = self.catalog.lock().await;
        if let Some(from) = &options.from {
            if self.slot(name).is_ok() {
                return Err(Error::SessionExists(name.into()));
            }
            drop(_catalog);
            return self.clone_session(name, from, options.warm).await;
        }
        if let Ok(slot) = self.slot(name) {
            if let Some(warm) = options.warm {
                let mut r = lock(&slot.record).clone();
                if r.warm != warm {
                    r.warm = warm;
                    self.store.save(&r)?;
                    *lock(&slot.record) = r;
                }
            }
            if lock(&slot.record).warm {
                drop(_catalog);
                self.ensure_running(name).await?;
            }
            return Ok(OpenedSession {
                session: self.info_of(&slot),
                created: false,
            });
        }
        let image = self.resolve_image(options.image.as_deref()).await?;
        let t = now();
        let record = SessionRecord {
            name: name.into(),
            box_id: format!("s-{}", uuid::Uuid::new_v4().simple()),
            image,
            warm: options.warm.unwrap_or(false),
            runtime: self.runtime.info().name,
            created_at: t,
            last_used_at: t,
            limits,
            network: match options.network {
                Some(n) => {
                    crate::network::validate(&n)?;
                    n
                }
                None => self.config.network.clone(),
            },
            run_timeout_secs: options.resources.run_timeout_secs,
            idle_timeout_secs: options.resources.idle_timeout_secs,
            forwarding: options.forwarding.unwrap_or(self.config.forwarding),
        };
        let spec = self.spec_of(&record);
        self.runtime.create(&spec).await?;
        if let Err(e) = self.store.save(&record) {
            let _ = self.runtime.remove(&spec.id).await;
            let _ = self.store.delete(name);
            return Err(e);
        }
        let slot = Arc::new(new_slot(record.clone(), t.saturating_mul(1000)));
        lock(&self.slots).insert(name.into(), slot.clone());
        drop(_catalog);
        if record.idle_timeout_secs.is_some() {
            self.idle_changed.notify_one();
        }
        tracing::info!(session = %name, box_id = %record.box_id, image = %record.image, "session created");
        if record.warm {
            self.ensure_running(name).await?;
        }
        Ok(OpenedSession {
            session: self.info_of(&slot),
            created: true,
        })
    }

    /// A new session `name` whose disk is a copy of `from`'s (its disk now,
    /// consistent, or one of its snapshots); unchanged image data stays
    /// shared.
    async fn clone_session(
        &self,
        name: &str,
        from: &super::CloneSource,
        warm: Option<bool>,
    ) -> Result<OpenedSession> {
        let source = self.slot(&from.session)?;
        // The source stays as it is (no stop, restore or removal) while
        // its disk is copied; the catalog is taken only after (removal
        // takes the catalog, then the session).
        let source_life = source.lifecycle.lock().await;
        if source.removed.load(Ordering::SeqCst) {
            return Err(Error::SessionNotFound(from.session.clone()));
        }
        let origin = lock(&source.record).clone();
        let t = now();
        let record = SessionRecord {
            name: name.into(),
            box_id: format!("s-{}", uuid::Uuid::new_v4().simple()),
            image: origin.image.clone(),
            warm: warm.unwrap_or(false),
            runtime: self.runtime.info().name,
            created_at: t,
            last_used_at: t,
            limits: origin.limits.clone(),
            network: origin.network.clone(),
            run_timeout_secs: origin.run_timeout_secs,
            idle_timeout_secs: origin.idle_timeout_secs,
            forwarding: origin.forwarding,
        };
        let spec = self.spec_of(&record);
        self.runtime
            .create_from(&spec, &origin.box_id, from.snapshot.as_deref())
            .await
            .map_err(|e| super::checkpoints::named(e, &from.session))?;
        drop(source_life);
        let _catalog = self.catalog.lock().await;
        if self.slot(name).is_ok() {
            // Made meanwhile by another request.
            let _ = self.runtime.remove(&spec.id).await;
            return Err(Error::SessionExists(name.into()));
        }
        if let Err(e) = self.store.save(&record) {
            let _ = self.runtime.remove(&spec.id).await;
            let _ = self.store.delete(name);
            return Err(e);
        }
        let slot = Arc::new(new_slot(record.clone(), t.saturating_mul(1000)));
        lock(&self.slots).insert(name.into(), slot.clone());
        drop(_catalog);
        tracing::info!(session = %name, from = %from.session, snapshot = from.snapshot.as_deref().unwrap_or(""), box_id = %record.box_id, "session cloned");
        if record.warm {
            self.ensure_running(name).await?;
        }
        Ok(OpenedSession {
            session: self.info_of(&slot),
            created: true,
        })
    }

    pub fn session_info(&self, name: &str) -> Result<SessionInfo> {
        let slot = self.slot(name)?;
        Ok(self.info_of(&slot))
    }

    pub fn list_sessions(&self) -> Vec<SessionInfo> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut out: Vec<SessionInfo> = slots.iter().map(|s| self.info_of(s)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Mark the session in use; it will not be stopped by the idle policy
    /// while the guard lives.
    pub fn hold(&self, name: &str) -> Result<ActivityGuard> {
        Ok(ActivityGuard::hold(self.slot(name)?))
    }

    /// Fence a session for `ttl` while a cluster router moves it away (the
    /// router renews it while the move runs; `None` lifts it): it does
    /// not start, so nothing reaches its disk after the router's stop and
    /// export (docs/SCALE.md). A router that dies mid-move leaves a fence
    /// that ends by itself. Kept in memory: a node that restarts has none.
    pub fn fence(&self, name: &str, ttl: Option<std::time::Duration>) -> Result<()> {
        if let Some(t) = ttl
            && (t.is_zero() || t > std::time::Duration::from_secs(MAX_FENCE_SECS))
        {
            return Err(Error::InvalidArgument(format!(
                "ttl_secs must be 1-{MAX_FENCE_SECS}, not {}",
                t.as_secs()
            )));
        }
        let until = ttl.map_or(0, |t| super::now_ms().saturating_add(t.as_millis() as u64));
        self.slot(name)?.fenced_until.store(until, Ordering::SeqCst);
        Ok(())
    }

    /// How many times session `name`'s disk or settings may have changed
    /// since this process opened it (starts, restores, resizes; 1 for a
    /// session made here). A cluster node exports a stopped cold session
    /// whose count grew since its last export (gateway `cluster/exports.rs`).
    pub fn changes(&self, name: &str) -> Result<u64> {
        Ok(self.slot(name)?.changes.load(Ordering::SeqCst))
    }

    /// Notified (one stored permit) after a session's sandbox was stopped,
    /// by a caller or the idle policy: the single waiter is the cluster
    /// node's exporter.
    pub fn stopped_signal(&self) -> Arc<tokio::sync::Notify> {
        self.stopped.clone()
    }

    /// Start the session's sandbox if it is not running.
    pub async fn ensure_running(&self, name: &str) -> Result<()> {
        let slot = self.slot(name)?;
        self.start_slot(&slot, name).await
    }

    /// Resolve a session for use: its name checked, its activity held
    /// (from before it starts, so the idle policy cannot stop it), its
    /// sandbox started if needed. Returns the slot and its record.
    pub(super) async fn hold_running(
        &self,
        name: &str,
    ) -> Result<(ActivityGuard, Arc<Slot>, SessionRecord)> {
        let slot = self.slot(name)?;
        let guard = ActivityGuard::hold(slot.clone());
        self.start_slot(&slot, name).await?;
        let record = lock(&slot.record).clone();
        Ok((guard, slot, record))
    }

    pub(super) async fn start_slot(&self, slot: &Slot, name: &str) -> Result<()> {
        let _life = slot.lifecycle.lock().await;
        if slot.removed.load(Ordering::SeqCst) {
            return Err(Error::SessionNotFound(name.into()));
        }
        if slot.fenced_until.load(Ordering::SeqCst) > super::now_ms() {
            return Err(Error::SessionMoving(name.into()));
        }
        let record = lock(&slot.record).clone();
        // Asked of the runtime: a sandbox that ended on its own is started
        // again rather than handed out dead.
        if !self.runtime.is_alive(&record.box_id).await {
            let started = std::time::Instant::now();
            // Counted before: a start that fails half-way may still have
            // touched the disk.
            slot.changes.fetch_add(1, Ordering::SeqCst);
            self.runtime.start(&self.spec_of(&record)).await?;
            crate::metrics::sandbox_started("session", started.elapsed());
        }
        self.ensure_egress(slot, &record).await
    }

    /// Stop a session's sandbox; its disk is kept. Refused while something
    /// runs in it unless `force`.
    pub async fn stop_session(&self, name: &str, force: bool) -> Result<SessionInfo> {
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        refuse_if_busy(&slot, name, force)?;
        let box_id = lock(&slot.record).box_id.clone();
        self.runtime.stop(&box_id).await?;
        drop(_life);
        self.stopped.notify_one();
        Ok(self.info_of(&slot))
    }

    /// Remove a session and its disk. Refused while something runs in it
    /// unless `force`.
    pub async fn remove_session(&self, name: &str, force: bool) -> Result<()> {
        let _catalog = self.catalog.lock().await;
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        refuse_if_busy(&slot, name, force)?;
        let box_id = lock(&slot.record).box_id.clone();
        // Record first: a crash after this leaves an orphan disk, which the
        // next start removes, never a record without a disk.
        self.store.delete(name)?;
        slot.removed.store(true, Ordering::SeqCst);
        lock(&self.slots).remove(name);
        lock(&self.spawns).retain(|_, s| s.session != name);
        self.runtime.remove(&box_id).await?;
        tracing::info!(session = %name, box_id = %box_id, "session removed");
        Ok(())
    }
}

/// Stop and remove are refused while something runs, unless forced.
pub(super) fn refuse_if_busy(slot: &Slot, name: &str, force: bool) -> Result<()> {
    let active = slot.active.load(Ordering::SeqCst);
    if active > 0 && !force {
        return Err(Error::SessionBusy {
            name: name.into(),
            reason: format!("{active} execution(s) running; stop them or use --force"),
        });
    }
    Ok(())
}

pub(super) fn new_slot(record: SessionRecord, last_used_ms: u64) -> Slot {
    Slot {
        record: Mutex::new(record),
        lifecycle: tokio::sync::Mutex::new(()),
        active: AtomicU32::new(0),
        last_used: AtomicU64::new(last_used_ms),
        removed: Default::default(),
        fenced_until: AtomicU64::new(0),
        changes: AtomicU64::new(1),
        egress: Mutex::default(),
        egress_stats: Arc::default(),
    }
}
