//! Queued pipe-mode runs: `POST /api/runs`, `POST /api/sessions/{name}/runs`
//! and `GET /api/runs/{id}`. The queue is a bounded registry in memory:
//! a few runs execute at once, the rest wait, and the oldest finished runs
//! are forgotten once more than the configured number are kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use blink_sdk::escape::Escaped;
use blink_sdk::manager::{Manager, Program, RunOptions, Target, policy};
use blink_sdk::types::{CapturedOutput, RunResult};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, watch};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorDetail, ErrorResponse};

/// A run to queue. Exactly one of `script` and `command`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Host path of a script or binary to copy into the sandbox and run.
    /// It must lie under one of the configured `rest.script_dirs`.
    pub script: Option<String>,
    /// A command line to run as is (argv; no shell unless you name one).
    pub command: Option<Vec<String>>,
    /// Session to run in. Absent: a fresh sandbox, removed afterwards. On
    /// `/api/sessions/{name}/runs` it may be omitted or must match `name`.
    pub session: Option<String>,
    /// Arguments appended after the script or command.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// Text fed to the program's stdin (closed afterwards).
    pub stdin: Option<String>,
    /// Kill the program after this many seconds (state `timed_out`);
    /// default 600, at most `rest.max_run_timeout_secs`.
    pub timeout_secs: Option<u64>,
    /// Image of an ephemeral run; not allowed with a session.
    pub image: Option<String>,
}

/// `?wait=true` answers when the run has finished instead of at once.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Answer 200 with the finished run rather than 202 with the queued one.
    pub wait: Option<bool>,
}

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
    fn finished(self) -> bool {
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
    fn submit(
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
    async fn wait(&self, id: &str, limit: Duration) {
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

/// Resolve a host script path, refusing anything that is not, after
/// resolving symlinks, inside one of the allowed (canonical) directories.
/// A missing file inside them is 404; anything outside is 403 whether it
/// exists or not, so the API cannot be used to probe the host.
pub fn resolve_script(allowed: &[PathBuf], raw: &str) -> ApiResult<PathBuf> {
    let path = Path::new(raw);
    if raw.is_empty() || !path.is_absolute() {
        return Err(ApiError::unprocessable(
            "script must be an absolute host path",
        ));
    }
    let refused = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "script_not_allowed",
            if allowed.is_empty() {
                "host scripts are disabled: no rest.script_dirs are configured".to_string()
            } else {
                format!("script {raw:?} is not inside an allowed script directory")
            },
        )
    };
    if allowed.is_empty() {
        return Err(refused());
    }
    match std::fs::canonicalize(path) {
        Ok(real) => {
            if allowed.iter().any(|d| real.starts_with(d) && real != *d) {
                Ok(real)
            } else {
                Err(refused())
            }
        }
        Err(_) => {
            let lexical_inside = !path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
                && allowed.iter().any(|d| path.starts_with(d));
            if lexical_inside {
                Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "script_not_found",
                    format!("script {raw:?} not found"),
                ))
            } else {
                Err(refused())
            }
        }
    }
}

/// Validate a request and turn it into what the manager takes.
fn prepare(
    state: &AppState,
    req: RunRequest,
    session: Option<String>,
) -> ApiResult<(Program, RunOptions)> {
    let program = match (req.script, req.command) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give either script or command, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::unprocessable("give a script or a command"));
        }
        (Some(script), None) => Program::Script(resolve_script(&state.script_dirs, &script)?),
        (None, Some(argv)) => Program::Command(argv),
    };
    if session.is_some() && req.image.is_some() {
        return Err(ApiError::unprocessable(
            "image applies to ephemeral runs only; a session keeps its own image",
        ));
    }
    let max = state.config.max_run_timeout_secs;
    if let Some(t) = req.timeout_secs
        && (t == 0 || t > max)
    {
        return Err(ApiError::unprocessable(format!(
            "timeout_secs must be between 1 and {max}"
        )));
    }
    // The SDK's rules, checked now: a queued run must not fail later for
    // what could be refused at once.
    let env: Vec<(String, String)> = req.env.into_iter().collect();
    let unprocessable = |e: blink_sdk::Error| ApiError::unprocessable(e.client_message());
    policy::check_env(&env).map_err(unprocessable)?;
    policy::check_args(&req.args).map_err(unprocessable)?;
    if let Program::Command(argv) = &program {
        policy::check_command(argv).map_err(unprocessable)?;
    }
    let options = RunOptions {
        // Absent: the manager's default run timeout.
        timeout: req.timeout_secs.map(Duration::from_secs),
        output_limit: None,
        env,
        cwd: req.cwd,
        stdin: req.stdin.map(String::into_bytes),
        image: req.image,
        args: req.args,
    };
    Ok((program, options))
}

async fn queue(
    state: AppState,
    req: RunRequest,
    session: Option<String>,
    wait: bool,
) -> ApiResult<Response> {
    if let Some(name) = &session {
        // Unknown sessions and bad names fail now, not in the queue.
        state.manager.session_info(name)?;
    }
    // Saturating: `timeout_secs` is not validated yet (prepare does that).
    let limit = Duration::from_secs(
        req.timeout_secs
            .unwrap_or(state.config.max_run_timeout_secs),
    )
    .saturating_add(Duration::from_secs(60));
    let (program, options) = prepare(&state, req, session.clone())?;
    let id = state
        .runs
        .submit(state.manager.clone(), session, program, options)?;
    let location = format!("/api/runs/{id}");
    if wait {
        state.runs.wait(&id, limit).await;
    }
    let view = state
        .runs
        .get(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "run_not_found", "run was dropped"))?;
    let status = if view.state.finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, [(header::LOCATION, location)], axum::Json(view)).into_response())
}

/// Queue a run in a fresh sandbox or (with `session`) in a session.
#[utoipa::path(
    post,
    path = "/api/runs",
    tag = "runs",
    params(WaitQuery),
    request_body = RunRequest,
    responses(
        (status = 202, description = "Queued", body = RunView),
        (status = 200, description = "Finished (with ?wait=true)", body = RunView),
        (status = 400, description = "Bad body", body = ErrorResponse),
        (status = 403, description = "Script outside the allowed directories", body = ErrorResponse),
        (status = 404, description = "No such session or script", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 422, description = "Unprocessable request", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
    )
)]
pub async fn create_run(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    ApiJson(req): ApiJson<RunRequest>,
) -> ApiResult<Response> {
    let session = req.session.clone();
    queue(state, req, session, q.wait.unwrap_or(false)).await
}

/// Queue a pipe-mode run in a session.
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/runs",
    tag = "runs",
    params(("name" = String, Path, description = "Session name"), WaitQuery),
    request_body = RunRequest,
    responses(
        (status = 202, description = "Queued", body = RunView),
        (status = 200, description = "Finished (with ?wait=true)", body = RunView),
        (status = 400, description = "Bad body or name", body = ErrorResponse),
        (status = 403, description = "Script outside the allowed directories", body = ErrorResponse),
        (status = 404, description = "No such session or script", body = ErrorResponse),
        (status = 422, description = "Unprocessable request", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
    )
)]
pub async fn session_run(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    ApiJson(req): ApiJson<RunRequest>,
) -> ApiResult<Response> {
    if req.session.as_ref().is_some_and(|s| *s != name) {
        return Err(ApiError::unprocessable(
            "session in the body does not match the path",
        ));
    }
    queue(state, req, Some(name), q.wait.unwrap_or(false)).await
}

/// A run's state and, once finished, its result.
#[utoipa::path(
    get,
    path = "/api/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id from POST")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 404, description = "No such run (or forgotten)", body = ErrorResponse),
    )
)]
pub async fn get_run(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<RunView>> {
    state.runs.get(&id).map(axum::Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!(
                "run {:?} not found",
                id.chars().take(80).collect::<String>()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_must_stay_inside_allowed_dirs() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("scripts");
        let other = root.path().join("other");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(allowed.join("ok.sh"), "#!/bin/sh\n").unwrap();
        std::fs::write(other.join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(other.join("secret"), allowed.join("link")).unwrap();
        let dirs = vec![std::fs::canonicalize(&allowed).unwrap()];
        let p = |s: &Path| s.to_str().unwrap().to_string();
        assert!(resolve_script(&dirs, &p(&allowed.join("ok.sh"))).is_ok());
        let status = |r: ApiResult<PathBuf>| r.err().map(|e| e.status);
        assert_eq!(
            status(resolve_script(&dirs, &p(&allowed.join("link")))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(resolve_script(&dirs, &p(&other.join("secret")))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(resolve_script(&dirs, &p(&allowed.join("../other/secret")))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(resolve_script(&dirs, &p(&allowed.join("missing")))),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            status(resolve_script(&dirs, &p(&allowed))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(resolve_script(&[], &p(&allowed.join("ok.sh")))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(resolve_script(&dirs, "relative.sh")),
            Some(StatusCode::UNPROCESSABLE_ENTITY)
        );
    }

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
