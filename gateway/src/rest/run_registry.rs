//! The registry of queued pipe-mode runs, bounded: a few runs execute at
//! once, the rest wait, and the oldest finished runs are forgotten once
//! more than the configured number are kept or their retention has passed.
//! Every change of a run is also written to its record on disk
//! (run_records.rs), so results outlive a restart. On shutdown it stops
//! taking runs and lets running ones finish within a grace period.
//! The HTTP handlers (runs.rs) only parse requests into runs and present
//! what the registry holds.
//!
//! Waiting runs are queued per session (ephemeral runs share one queue of
//! their own), and a free slot goes to the queue with the fewest runs
//! running, then to the one served least recently ([`FairSlots`]): one
//! session's burst of runs delays another session's run by at most the
//! runs already running, never by the burst.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::{Manager, Program, RunOptions, Target};
use blink_sdk::types::{CapturedOutput, RunResult};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot, watch};
use utoipa::ToSchema;

use axum::http::StatusCode;

use super::error::{ApiError, ApiResult, ErrorDetail};
use super::inline_scripts::InlineScript;
use super::run_records::RunRecords;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed by a signal, or could not run (`error`).
    Failed,
    /// Killed because it ran past its timeout.
    TimedOut,
    /// The server stopped (or was killed) while it was queued or running:
    /// its result is unknown (`error` says which).
    Lost,
}

impl RunState {
    pub(super) fn finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// As the API spells it (and metrics label it).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
        }
    }
}

/// A run as `GET /api/runs/{id}` shows it (and its record keeps it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub state: RunState,
    /// The session it runs in; `null` for an ephemeral run.
    pub session: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Time spent waiting in the queue.
    pub queued_ms: Option<u64>,
    /// Time the program ran.
    pub duration_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// stdout, captured apart from stderr (`data`, `encoding`, `truncated`,
    /// `total_bytes`).
    #[schema(value_type = Option<Object>)]
    pub stdout: Option<CapturedOutput>,
    #[schema(value_type = Option<Object>)]
    pub stderr: Option<CapturedOutput>,
    pub box_id: Option<String>,
    /// `namespace` or `vm`.
    pub isolation: Option<String>,
    /// Why the run could not run at all.
    pub error: Option<ErrorDetail>,
}

impl RunView {
    /// A run just queued: nothing known yet but its id and session.
    pub(super) fn queued(id: String, session: Option<String>) -> Self {
        Self {
            id,
            state: RunState::Queued,
            session,
            created_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            queued_ms: None,
            duration_ms: None,
            exit_code: None,
            signal: None,
            stdout: None,
            stderr: None,
            box_id: None,
            isolation: None,
            error: None,
        }
    }
}

struct Entry {
    view: RunView,
    done: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, Entry>,
    /// Ids in creation order, for forgetting the oldest.
    order: VecDeque<String>,
}

/// The registry of runs.
pub struct RunRegistry {
    inner: Mutex<Inner>,
    slots: Arc<FairSlots>,
    max_queued: usize,
    max_queued_per_session: usize,
    max_kept: usize,
    /// How long a finished run is kept.
    retention: Duration,
    records: Option<RunRecords>,
    accepting: AtomicBool,
    closing: watch::Sender<bool>,
    running: AtomicUsize,
    idle: Notify,
}

impl RunRegistry {
    /// `max_queued` runs may wait in all, `max_queued_per_session` of
    /// them for one session (so one session's burst cannot take every
    /// place); ephemeral runs share the global bound only.
    pub fn new(
        max_concurrent: usize,
        max_queued: usize,
        max_queued_per_session: usize,
        max_kept: usize,
    ) -> Self {
        Self {
            inner: Mutex::default(),
            slots: FairSlots::new(max_concurrent),
            max_queued,
            max_queued_per_session,
            max_kept,
            retention: Duration::MAX,
            records: None,
            accepting: AtomicBool::new(true),
            closing: watch::channel(false).0,
            running: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Keep every run's record in `records`, finished runs for
    /// `retention`; the records a previous server left are taken in
    /// (runs it left unfinished as lost).
    pub fn with_records(mut self, records: RunRecords, retention: Duration) -> Self {
        let kept = records.load(self.max_kept, retention, now_ms());
        if !kept.is_empty() {
            tracing::info!(runs = kept.len(), "run records read back");
        }
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for view in kept {
            inner.order.push_back(view.id.clone());
            inner.runs.insert(
                view.id.clone(),
                Entry {
                    view,
                    done: watch::channel(true).0,
                },
            );
        }
        self.retention = retention;
        self.records = Some(records);
        self
    }

    fn save(&self, view: Option<RunView>) {
        if let (Some(records), Some(view)) = (&self.records, view) {
            records.save(&view);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, id: &str) -> Option<RunView> {
        self.lock().runs.get(id).map(|e| e.view.clone())
    }

    /// Change a run, then write its record (a run's changes all come
    /// from its one task, in order, so records are never written out of
    /// order).
    fn update(&self, id: &str, f: impl FnOnce(&mut RunView)) {
        let view = {
            let mut inner = self.lock();
            inner.runs.get_mut(id).map(|e| {
                f(&mut e.view);
                if e.view.state.finished() {
                    e.done.send_replace(true);
                }
                e.view.clone()
            })
        };
        self.save(view);
    }

    /// Queue a run; returns its id.
    pub(super) fn submit(
        self: &Arc<Self>,
        manager: Arc<Manager>,
        session: Option<String>,
        program: Program,
        options: RunOptions,
        inline: Option<InlineScript>,
    ) -> ApiResult<String> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
        let id = format!("r-{}", uuid::Uuid::new_v4().simple());
        let (queued_view, forgotten) = {
            let mut inner = self.lock();
            let queued = || {
                inner
                    .runs
                    .values()
                    .filter(|e| e.view.state == RunState::Queued)
            };
            let total = queued().count();
            if total >= self.max_queued {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!("{total} runs are already queued (rest.max_queued_runs); try later"),
                ));
            }
            if let Some(name) = &session {
                let mine = queued()
                    .filter(|e| e.view.session.as_deref() == Some(name.as_str()))
                    .count();
                if mine >= self.max_queued_per_session {
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "session_queue_full",
                        format!(
                            "{mine} runs of session {} are already queued (rest.max_queued_runs_per_session); try later",
                            Escaped(name)
                        ),
                    ));
                }
            }
            let view = RunView::queued(id.clone(), session.clone());
            inner.runs.insert(
                id.clone(),
                Entry {
                    view: view.clone(),
                    done: watch::channel(false).0,
                },
            );
            inner.order.push_back(id.clone());
            (view, self.prune(&mut inner))
        };
        // On disk before the id is answered: a restart cannot lose it.
        self.save(Some(queued_view));
        metrics::gauge!(crate::metrics::RUNS_QUEUED).increment(1.0);
        if let Some(records) = &self.records {
            for id in &forgotten {
                records.remove(id);
            }
        }
        // Queued here, in submission order, not when the task first runs.
        let class = match &session {
            Some(name) => Class::Session(name.clone()),
            None => Class::Ephemeral,
        };
        let ticket = self.slots.enqueue(class);
        let me = self.clone();
        let run_id = id.clone();
        tokio::spawn(async move {
            me.execute(manager, run_id, session, program, options, ticket)
                .await;
            // A script sent with the request goes with its run.
            drop(inline);
        });
        Ok(id)
    }

    /// Forget finished runs past their retention, then the oldest
    /// finished runs beyond the cap; returns the ids forgotten.
    fn prune(&self, inner: &mut Inner) -> Vec<String> {
        let cutoff =
            now_ms().saturating_sub(self.retention.as_millis().min(u64::MAX.into()) as u64);
        let expired = |v: &RunView| v.finished_at_ms.is_some_and(|t| t < cutoff);
        let mut excess = inner.runs.len().saturating_sub(self.max_kept);
        let oldest_expired = inner
            .order
            .front()
            .and_then(|id| inner.runs.get(id))
            .is_some_and(|e| expired(&e.view));
        if excess == 0 && !oldest_expired {
            return Vec::new();
        }
        let mut forgotten = Vec::new();
        let mut keep = VecDeque::with_capacity(inner.order.len());
        while let Some(id) = inner.order.pop_front() {
            let view = inner.runs.get(&id).map(|e| &e.view);
            let finished = view.is_none_or(|v| v.state.finished());
            if finished && (excess > 0 || view.is_some_and(expired)) {
                inner.runs.remove(&id);
                excess = excess.saturating_sub(1);
                forgotten.push(id);
            } else {
                keep.push_back(id);
            }
        }
        inner.order = keep;
        forgotten
    }

    async fn execute(
        self: Arc<Self>,
        manager: Arc<Manager>,
        id: String,
        session: Option<String>,
        program: Program,
        options: RunOptions,
        ticket: Ticket,
    ) {
        let queued_at = Instant::now();
        let mut closing = self.closing.subscribe();
        // A slot handed over while the shutdown wins this race is given
        // back when the ticket is dropped.
        let permit = tokio::select! {
            slot = ticket.ready() => slot,
            _ = closing.wait_for(|c| *c) => None,
        };
        metrics::gauge!(crate::metrics::RUNS_QUEUED).decrement(1.0);
        let Some(permit) = permit.filter(|_| !*self.closing.borrow()) else {
            metrics::counter!(crate::metrics::RUNS_TOTAL, "state" => "failed").increment(1);
            self.update(&id, |v| {
                v.state = RunState::Failed;
                v.finished_at_ms = Some(now_ms());
                v.error = Some(ErrorDetail {
                    code: "shutting_down".into(),
                    message: "the server shut down before the run started".into(),
                });
            });
            return;
        };
        self.running.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::RUNS_RUNNING).increment(1.0);
        metrics::histogram!(crate::metrics::RUN_QUEUE_SECONDS)
            .record(queued_at.elapsed().as_secs_f64());
        let queued_ms = queued_at.elapsed().as_millis() as u64;
        self.update(&id, |v| {
            v.state = RunState::Running;
            v.started_at_ms = Some(now_ms());
            v.queued_ms = Some(queued_ms);
        });
        let started = Instant::now();
        let target = match &session {
            Some(name) => Target::Session(name),
            None => Target::Ephemeral,
        };
        let result = manager.run(target, &program, options).await;
        let elapsed = started.elapsed().as_millis() as u64;
        match result {
            Ok(r) => {
                tracing::info!(run = %id, exit_code = r.exit_code, timed_out = r.timed_out, "run finished");
                self.update(&id, |v| finish_ok(v, r));
            }
            Err(e) => {
                let e = ApiError::from(e);
                tracing::info!(run = %id, code = e.code, error = %Escaped(&e.message), "run failed");
                self.update(&id, |v| {
                    v.state = RunState::Failed;
                    v.finished_at_ms = Some(now_ms());
                    v.duration_ms = Some(elapsed);
                    v.error = Some(e.detail());
                });
            }
        }
        let state = self.get(&id).map_or("failed", |v| v.state.as_str());
        metrics::counter!(crate::metrics::RUNS_TOTAL, "state" => state).increment(1);
        metrics::histogram!(crate::metrics::RUN_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::gauge!(crate::metrics::RUNS_RUNNING).decrement(1.0);
        drop(permit);
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Wait until a run has finished, or `limit` passed.
    pub(super) async fn wait(&self, id: &str, limit: Duration) {
        let rx = self.lock().runs.get(id).map(|e| e.done.subscribe());
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(limit, rx.wait_for(|d| *d)).await;
        }
    }

    /// Stop taking runs, fail the queued ones, and wait up to `grace` for
    /// the running ones.
    pub async fn drain(&self, grace: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        self.closing.send_replace(true);
        // A grace past what an Instant holds (rest.shutdown_grace_secs is
        // any u64) waits as if for ever.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(grace)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86400));
        loop {
            let idle = self.idle.notified();
            let running = self.running.load(Ordering::SeqCst);
            if running == 0 {
                return;
            }
            tracing::info!(running, "waiting for runs to finish");
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    running = self.running.load(Ordering::SeqCst),
                    "runs still running at the shutdown deadline"
                );
                return;
            }
        }
    }
}

fn finish_ok(v: &mut RunView, r: RunResult) {
    v.state = if r.timed_out {
        RunState::TimedOut
    } else if r.exit_code == 0 && r.signal.is_none() {
        RunState::Succeeded
    } else {
        RunState::Failed
    };
    v.finished_at_ms = Some(now_ms());
    v.duration_ms = Some(r.duration_ms);
    v.exit_code = Some(r.exit_code);
    v.signal = r.signal;
    v.stdout = Some(r.stdout);
    v.stderr = Some(r.stderr);
    v.box_id = Some(r.box_id);
    v.isolation = Some(r.isolation.to_string());
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which queue a run waits in: its session's, or the one all ephemeral
/// runs share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Class {
    Session(String),
    Ephemeral,
}

/// One class's runs: those waiting (each with its arrival number), how
/// many run, and when it was last given a slot.
#[derive(Default)]
struct ClassState {
    waiting: VecDeque<(u64, oneshot::Sender<Slot>)>,
    running: usize,
    served: u64,
}

#[derive(Default)]
struct SlotsState {
    free: usize,
    /// Counts arrivals and grants: orders waiters and `served`.
    tick: u64,
    /// Classes with runs waiting or running; others are forgotten.
    classes: HashMap<Class, ClassState>,
}

/// A fixed number of run slots shared fairly between classes. A run gets
/// a slot at once if one is free (then no run is waiting); else it waits
/// in its class's queue, first in first out. A slot given back goes to the
/// class with the fewest runs running, then the one served least recently,
/// then the one whose next run came first: round-robin between sessions
/// when slots are scarce, each session's runs in their own order. Every
/// step costs at most one pass over the classes, which are bounded by the
/// queue's bound.
struct FairSlots {
    state: Mutex<SlotsState>,
}

/// A slot held by a running run, given back when dropped.
struct Slot {
    slots: Arc<FairSlots>,
    /// `None` once disarmed (a slot that never reached its run).
    class: Option<Class>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(class) = self.class.take() {
            self.slots.release(&class);
        }
    }
}

/// A run's place: a slot now, or its turn in its queue.
enum Ticket {
    Ready(Slot),
    Waiting(oneshot::Receiver<Slot>),
}

impl Ticket {
    /// Wait for the slot. Dropping a ticket gives up its place, or the
    /// slot already handed to it.
    async fn ready(self) -> Option<Slot> {
        match self {
            Ticket::Ready(slot) => Some(slot),
            Ticket::Waiting(rx) => rx.await.ok(),
        }
    }
}

impl FairSlots {
    fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotsState {
                free: slots,
                ..SlotsState::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take a slot for a run of `class`, or a place in its queue.
    fn enqueue(self: &Arc<Self>, class: Class) -> Ticket {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        if state.free > 0 {
            state.free -= 1;
            let class_state = state.classes.entry(class.clone()).or_default();
            class_state.running += 1;
            class_state.served = tick;
            return Ticket::Ready(Slot {
                slots: self.clone(),
                class: Some(class),
            });
        }
        let (tx, rx) = oneshot::channel();
        state
            .classes
            .entry(class)
            .or_default()
            .waiting
            .push_back((tick, tx));
        Ticket::Waiting(rx)
    }

    /// A run of `class` gave its slot back: hand it on.
    fn release(self: &Arc<Self>, class: &Class) {
        let mut state = self.lock();
        state.free += 1;
        if let Some(c) = state.classes.get_mut(class) {
            c.running = c.running.saturating_sub(1);
        }
        self.dispatch(&mut state);
    }

    /// Give free slots to waiting runs, fairest class first. Waiters that
    /// gave up (their receiver is gone) are skipped.
    fn dispatch(self: &Arc<Self>, state: &mut SlotsState) {
        while state.free > 0 {
            let mut next: Option<(&Class, (usize, u64, u64))> = None;
            for (class, c) in state.classes.iter_mut() {
                while c.waiting.front().is_some_and(|(_, tx)| tx.is_closed()) {
                    c.waiting.pop_front();
                }
                let Some((arrived, _)) = c.waiting.front() else {
                    continue;
                };
                let key = (c.running, c.served, *arrived);
                if next.as_ref().is_none_or(|(_, best)| key < *best) {
                    next = Some((class, key));
                }
            }
            let Some(class) = next.map(|(class, _)| class.clone()) else {
                break;
            };
            state.tick += 1;
            let tick = state.tick;
            let Some(c) = state.classes.get_mut(&class) else {
                break;
            };
            let Some((_, tx)) = c.waiting.pop_front() else {
                break;
            };
            let slot = Slot {
                slots: self.clone(),
                class: Some(class),
            };
            if let Err(mut slot) = tx.send(slot) {
                // Gave up since the check above: the slot stays free.
                slot.class = None;
                continue;
            }
            c.running += 1;
            c.served = tick;
            state.free -= 1;
        }
        state
            .classes
            .retain(|_, c| c.running > 0 || !c.waiting.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_drops_oldest_finished_only() {
        let reg = RunRegistry::new(1, 10, 10, 2);
        let mut inner = reg.lock();
        for (i, st) in [RunState::Running, RunState::Succeeded, RunState::Failed]
            .into_iter()
            .enumerate()
        {
            let id = format!("r{i}");
            inner.runs.insert(
                id.clone(),
                Entry {
                    view: RunView {
                        state: st,
                        ..RunView::queued(id.clone(), None)
                    },
                    done: watch::channel(false).0,
                },
            );
            inner.order.push_back(id);
        }
        reg.prune(&mut inner);
        let mut left: Vec<_> = inner.runs.keys().cloned().collect();
        left.sort();
        assert_eq!(left, vec!["r0", "r2"]);
    }

    /// Start every ticket as a task that records its name once it holds a
    /// slot and holds it until told to finish; returns the start order.
    async fn start_order(tickets: Vec<(String, Ticket)>, hold: usize) -> Vec<String> {
        let order = Arc::new(Mutex::new(Vec::new()));
        let n = tickets.len();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (name, ticket) in tickets {
            let order = order.clone();
            let done_tx = done_tx.clone();
            tasks.push(tokio::spawn(async move {
                let slot = ticket.ready().await.expect("a slot");
                order.lock().unwrap().push(name);
                // Hold the slot until the test lets it go.
                let (tx, rx) = oneshot::channel::<()>();
                let _ = done_tx.send(tx);
                let _ = rx.await;
                drop(slot);
            }));
        }
        // Let `hold` runs hold their slots at once, then finish them one by
        // one, oldest first.
        let mut holding = VecDeque::new();
        for _ in 0..n {
            let tx = done_rx.recv().await.expect("a run started");
            holding.push_back(tx);
            if holding.len() >= hold {
                let _ = holding.pop_front().expect("held").send(());
            }
        }
        for tx in holding {
            let _ = tx.send(());
        }
        for task in tasks {
            task.await.expect("run task");
        }
        order.lock().unwrap().clone()
    }

    fn session(name: &str) -> Class {
        Class::Session(name.to_string())
    }

    #[tokio::test]
    async fn a_burst_of_one_session_does_not_starve_another() {
        let slots = FairSlots::new(1);
        let mut tickets = Vec::new();
        for i in 0..50 {
            tickets.push((format!("a{i}"), slots.enqueue(session("a"))));
        }
        tickets.push(("b0".to_string(), slots.enqueue(session("b"))));
        let order = start_order(tickets, 1).await;
        assert_eq!(order.len(), 51);
        // B's run starts second, right after A's first; A's keep their order.
        assert_eq!(&order[..3], ["a0", "b0", "a1"]);
        let rest: Vec<String> = (1..50).map(|i| format!("a{i}")).collect();
        assert_eq!(order[2..], rest[..]);
        assert!(slots.lock().classes.is_empty());
        assert_eq!(slots.lock().free, 1);
    }

    #[tokio::test]
    async fn sessions_and_ephemeral_runs_take_turns() {
        let slots = FairSlots::new(2);
        let mut tickets = Vec::new();
        for i in 0..4 {
            tickets.push((format!("a{i}"), slots.enqueue(session("a"))));
        }
        for i in 0..2 {
            tickets.push((format!("e{i}"), slots.enqueue(Class::Ephemeral)));
        }
        for i in 0..2 {
            tickets.push((format!("b{i}"), slots.enqueue(session("b"))));
        }
        let order = start_order(tickets, 2).await;
        // a0 and a1 take both slots; then the classes with nothing running
        // go first (in arrival order), and turns alternate.
        assert_eq!(order, ["a0", "a1", "e0", "b0", "a2", "e1", "b1", "a3"]);
        assert_eq!(slots.lock().free, 2);
    }

    #[tokio::test]
    async fn a_run_that_gives_up_its_place_loses_no_slot() {
        let slots = FairSlots::new(1);
        let first = slots.enqueue(session("a"));
        let gone = slots.enqueue(session("b"));
        let next = slots.enqueue(session("c"));
        // b gives up while waiting: skipped.
        drop(gone);
        drop(first.ready().await.expect("slot"));
        // c was handed the slot but gives up before taking it: given back.
        drop(next);
        assert_eq!(slots.lock().free, 1);
        assert!(slots.lock().classes.is_empty());
        assert!(matches!(slots.enqueue(session("d")), Ticket::Ready(_)));
    }
}
