//! The registry of queued pipe-mode runs, in memory and bounded: a few
//! runs execute at once, the rest wait, and the oldest finished runs are
//! forgotten once more than the configured number are kept. On shutdown it
//! stops taking runs and lets running ones finish within a grace period.
//! The HTTP handlers (runs.rs) only parse requests into runs and present
//! what the registry holds.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::{Manager, Program, RunOptions, Target};
use blink_sdk::types::{CapturedOutput, RunResult};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};
use utoipa::ToSchema;

use axum::http::StatusCode;

use super::error::{ApiError, ApiResult, ErrorDetail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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
}

impl RunState {
    pub(super) fn finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// A run as `GET /api/runs/{id}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
    slots: Arc<Semaphore>,
    max_queued: usize,
    max_kept: usize,
    accepting: AtomicBool,
    closing: watch::Sender<bool>,
    running: AtomicUsize,
    idle: Notify,
}

impl RunRegistry {
    pub fn new(max_concurrent: usize, max_queued: usize, max_kept: usize) -> Self {
        Self {
            inner: Mutex::default(),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_queued,
            max_kept,
            accepting: AtomicBool::new(true),
            closing: watch::channel(false).0,
            running: AtomicUsize::new(0),
            idle: Notify::new(),
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

    fn update(&self, id: &str, f: impl FnOnce(&mut RunView)) {
        let mut inner = self.lock();
        if let Some(e) = inner.runs.get_mut(id) {
            f(&mut e.view);
            if e.view.state.finished() {
                e.done.send_replace(true);
            }
        }
    }

    /// Queue a run; returns its id.
    pub(super) fn submit(
        self: &Arc<Self>,
        manager: Arc<Manager>,
        session: Option<String>,
        program: Program,
        options: RunOptions,
    ) -> ApiResult<String> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
        let id = format!("r-{}", uuid::Uuid::new_v4().simple());
        {
            let mut inner = self.lock();
            let queued = inner
                .runs
                .values()
                .filter(|e| e.view.state == RunState::Queued)
                .count();
            if queued >= self.max_queued {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!("{queued} runs are already queued (rest.max_queued_runs); try later"),
                ));
            }
            inner.runs.insert(
                id.clone(),
                Entry {
                    view: RunView {
                        id: id.clone(),
                        state: RunState::Queued,
                        session: session.clone(),
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
                    },
                    done: watch::channel(false).0,
                },
            );
            inner.order.push_back(id.clone());
            self.prune(&mut inner);
        }
        let me = self.clone();
        let run_id = id.clone();
        tokio::spawn(async move { me.execute(manager, run_id, session, program, options).await });
        Ok(id)
    }

    /// Forget the oldest finished runs beyond the cap.
    fn prune(&self, inner: &mut Inner) {
        let mut excess = inner.runs.len().saturating_sub(self.max_kept);
        if excess == 0 {
            return;
        }
        let mut keep = VecDeque::with_capacity(inner.order.len());
        while let Some(id) = inner.order.pop_front() {
            let finished = inner.runs.get(&id).is_none_or(|e| e.view.state.finished());
            if excess > 0 && finished {
                inner.runs.remove(&id);
                excess -= 1;
            } else {
                keep.push_back(id);
            }
        }
        inner.order = keep;
    }

    async fn execute(
        self: Arc<Self>,
        manager: Arc<Manager>,
        id: String,
        session: Option<String>,
        program: Program,
        options: RunOptions,
    ) {
        let queued_at = Instant::now();
        let mut closing = self.closing.subscribe();
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            _ = closing.wait_for(|c| *c) => None,
        };
        let Some(permit) = permit.filter(|_| !*self.closing.borrow()) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_drops_oldest_finished_only() {
        let reg = RunRegistry::new(1, 10, 2);
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
                        id: id.clone(),
                        state: st,
                        session: None,
                        created_at_ms: 0,
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
}
