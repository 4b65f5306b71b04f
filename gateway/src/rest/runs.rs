//! Queued pipe-mode runs over HTTP: `POST /api/runs`,
//! `POST /api/sessions/{name}/runs` and `GET /api/runs/{id}`. Requests are
//! parsed and checked here; the queue itself is run_registry.rs.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use blink_sdk::manager::{Program, RunOptions, policy};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorResponse};
use super::inline_scripts::{self, InlineScript};
use super::run_registry::RunView;

/// A run to queue. Exactly one of `script`, `script_base64` and `command`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Host path of a script or binary to copy into the sandbox and run.
    /// It must lie under one of the configured `rest.script_dirs`.
    pub script: Option<String>,
    /// A script or binary sent in the request, base64 (standard, padded),
    /// at most `[sandbox]`'s script size limit and within the body limit
    /// (`rest.max_body_bytes`): how a client elsewhere runs its own file.
    pub script_base64: Option<String>,
    /// The file name `script_base64` runs as (default `script`).
    pub script_name: Option<String>,
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
    /// Bytes fed to the program's stdin, base64; instead of `stdin`.
    pub stdin_base64: Option<String>,
    /// Kill the program after this many seconds (state `timed_out`);
    /// default: the session's run timeout (`[sandbox] run_timeout_secs`
    /// for ephemeral runs), at most `rest.max_run_timeout_secs`.
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
) -> ApiResult<(Program, RunOptions, Option<InlineScript>)> {
    if req.script_name.is_some() && req.script_base64.is_none() {
        return Err(ApiError::unprocessable("script_name needs script_base64"));
    }
    let mut inline = None;
    let program = match (req.script, req.script_base64, req.command) {
        (Some(script), None, None) => Program::Script(resolve_script(&state.script_dirs, &script)?),
        (None, Some(encoded), None) => {
            let config = state.manager.config();
            let script = inline_scripts::store(
                &config.data_dir,
                config.max_script_bytes,
                &encoded,
                req.script_name.as_deref(),
            )?;
            let program = Program::Script(script.path.clone());
            inline = Some(script);
            program
        }
        (None, None, Some(argv)) => Program::Command(argv),
        (None, None, None) => {
            return Err(ApiError::unprocessable(
                "give a script, a script_base64 or a command",
            ));
        }
        _ => {
            return Err(ApiError::unprocessable(
                "give one of script, script_base64 and command, not several",
            ));
        }
    };
    let stdin = match (req.stdin, req.stdin_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give stdin or stdin_base64, not both",
            ));
        }
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(encoded)) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_argument",
                        format!("stdin_base64 is not base64: {e}"),
                    )
                })?,
        ),
        (None, None) => None,
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
        stdin,
        image: req.image,
        args: req.args,
    };
    Ok((program, options, inline))
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
    let (program, options, inline) = prepare(&state, req, session.clone())?;
    let id = state
        .runs
        .submit(state.manager.clone(), session, program, options, inline)?;
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
}
