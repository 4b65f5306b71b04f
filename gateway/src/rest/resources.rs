//! A session's size and usage: `GET`/`PATCH /api/sessions/{name}/resources`
//! and `GET /api/sessions/{name}/stats` (docs/RESOURCES.md). The figures
//! are checked by the SDK; this only parses and presents.

use axum::extract::State;
use blink_sdk::manager::{ResourceNumbers, ResourceRequest};
use blink_sdk::types::{Resources, ResourcesChanged, SessionStats};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiResult, ErrorResponse};

/// `PATCH /api/sessions/{name}/resources`: the fields to change; absent
/// ones stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesPatch {
    /// CPU quota in cores (fractional, at least 0.01).
    pub cpus: Option<f64>,
    /// Memory limit in MiB (at least 16).
    pub memory_mib: Option<f64>,
    /// Processes and threads at once (at least 16).
    pub pids: Option<f64>,
    /// A larger disk in MiB, grown when the session next starts (a disk
    /// never shrinks).
    pub disk_mib: Option<f64>,
    /// Default time limit of the session's runs, in seconds.
    pub run_timeout_secs: Option<f64>,
    /// Stop the (cold) session after this many seconds with nothing
    /// running.
    pub idle_timeout_secs: Option<f64>,
}

/// A session's size.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/resources",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "`{cpus, memory_mib, pids, disk_mib, run_timeout_secs, idle_timeout_secs}`", body = serde_json::Value),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<Resources>> {
    Ok(axum::Json(state.manager.session_info(&name)?.resources))
}

/// Change a session's size. CPU, memory and processes change on the
/// running sandbox where the machine allows it (cgroups), else at its next
/// start; a disk grows at the next start; timeouts apply at once. The
/// answer says which per field: `{resources, applied: {"cpus": "live",
/// "disk_mib": "next_start"}}`.
#[utoipa::path(
    patch,
    path = "/api/sessions/{name}/resources",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    request_body = ResourcesPatch,
    responses(
        (status = 200, description = "`{resources, applied}`", body = serde_json::Value),
        (status = 400, description = "A bad figure (`invalid_argument`, naming the field)", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 501, description = "The disk cannot change here (a server not running as root)", body = ErrorResponse),
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ResourcesPatch>,
) -> ApiResult<axum::Json<ResourcesChanged>> {
    let request = ResourceRequest::from_numbers(ResourceNumbers {
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        pids: req.pids,
        disk_mib: req.disk_mib,
        run_timeout_secs: req.run_timeout_secs,
        idle_timeout_secs: req.idle_timeout_secs,
    })?;
    Ok(axum::Json(
        state.manager.set_resources(&name, request).await?,
    ))
}

/// One reading of a session's usage: memory now and at its peak, CPU time
/// and throttling, processes, OOM kills, disk, egress bytes.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/stats",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "`{name, state, taken_at_ms, resources, usage}`", body = serde_json::Value),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<SessionStats>> {
    Ok(axum::Json(state.manager.session_stats(&name)?))
}
