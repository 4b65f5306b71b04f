//! Sessions: list, open, describe, stop, remove.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blink_sdk::OpenOptions;
use blink_sdk::manager::{CloneSource, ResourceNumbers, ResourceRequest, names};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiQuery, ApiResult, ErrorResponse};

/// `POST /api/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// `[a-z0-9][a-z0-9._-]{0,62}`.
    pub name: String,
    /// Keep the sandbox running between uses. Absent: unchanged for an
    /// existing session, cold for a new one.
    pub warm: Option<bool>,
    /// Image of a new session (default image when absent).
    pub image: Option<String>,
    /// Disk size of a new session in MiB: its disk quota (a program that
    /// writes past it gets ENOSPC). Default: `[sandbox] disk_size_mib`.
    pub disk_mib: Option<f64>,
    /// CPU quota of a new session in cores (fractional). Default: `[sandbox]
    /// cpus` (none). docs/RESOURCES.md, as the size fields below.
    pub cpus: Option<f64>,
    /// Memory limit of a new session in MiB. Default: `[sandbox] memory_mib`.
    pub memory_mib: Option<f64>,
    /// Processes (and threads) at once. Default: `[sandbox] pids`.
    pub pids: Option<f64>,
    /// Default time limit of the session's runs. Default: `[sandbox]
    /// run_timeout_secs`.
    pub run_timeout_secs: Option<f64>,
    /// Stop the (cold) session after this long with nothing running.
    /// Default: `session_idle_timeout_secs`.
    pub idle_timeout_secs: Option<f64>,
    /// Make the new session a copy of session `A` as it is now (consistent)
    /// or of its snapshot `A@S`, with its image and settings; the name must
    /// be free (409 otherwise).
    pub from: Option<String>,
    /// Egress policy of a new session (`{"mode": "proxy", "allow": [...],
    /// "deny": [...]}`; docs/NETWORK.md). Default: `[network]` in the
    /// config (loopback only).
    #[schema(value_type = Object)]
    pub network: Option<blink_sdk::network::NetworkPolicy>,
    /// SSH forwards a new session takes (`{"local": true, "remote":
    /// false}`). Default: `[network.forwarding]` in the config (both on).
    #[schema(value_type = Object)]
    pub forwarding: Option<blink_sdk::types::ForwardingPolicy>,
    /// Answer 409 instead of opening a session that already exists.
    #[serde(default)]
    pub exclusive: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Sessions by name (`name`, `box_id`, `image`, `warm`, `state`,
    /// `runtime`, `isolation`, `created_at`, `last_used_at`,
    /// `active_executions`, `disk`, `network`, `resources`, `usage`).
    #[schema(value_type = Vec<Object>)]
    pub sessions: Vec<blink_sdk::types::SessionInfo>,
}

/// `?force=true` stops or removes a session even while something runs.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    pub force: Option<bool>,
}

/// Every session.
#[utoipa::path(
    get,
    path = "/api/sessions",
    tag = "sessions",
    responses((status = 200, description = "Sessions", body = SessionList))
)]
pub async fn list(State(state): State<AppState>) -> axum::Json<SessionList> {
    axum::Json(SessionList {
        sessions: state.manager.list_sessions(),
    })
}

/// Open a session, creating it if missing.
#[utoipa::path(
    post,
    path = "/api/sessions",
    tag = "sessions",
    request_body = OpenRequest,
    responses(
        (status = 201, description = "Created: `{session, created: true}`", body = serde_json::Value),
        (status = 200, description = "Existed: `{session, created: false}`", body = serde_json::Value),
        (status = 400, description = "Bad body or name", body = ErrorResponse),
        (status = 404, description = "No such image", body = ErrorResponse),
        (status = 409, description = "Exists (with exclusive)", body = ErrorResponse),
    )
)]
pub async fn open(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<OpenRequest>,
) -> ApiResult<Response> {
    names::validate(&req.name)?;
    let resources = ResourceRequest::from_numbers(ResourceNumbers {
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        pids: req.pids,
        disk_mib: req.disk_mib,
        run_timeout_secs: req.run_timeout_secs,
        idle_timeout_secs: req.idle_timeout_secs,
    })?;
    if req.exclusive && state.manager.session_info(&req.name).is_ok() {
        return Err(blink_sdk::Error::SessionExists(req.name).into());
    }
    let opened = state
        .manager
        .open_session(
            &req.name,
            OpenOptions {
                image: req.image,
                warm: req.warm,
                resources,
                from: req.from.as_deref().map(CloneSource::parse).transpose()?,
                network: req.network,
                forwarding: req.forwarding,
            },
        )
        .await?;
    if req.exclusive && !opened.created {
        // Lost a race with another open of the same name.
        return Err(blink_sdk::Error::SessionExists(req.name).into());
    }
    let status = if opened.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(opened)).into_response())
}

/// One session.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "The session", body = serde_json::Value),
        (status = 400, description = "Bad name", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn info(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<blink_sdk::types::SessionInfo>> {
    Ok(axum::Json(state.manager.session_info(&name)?))
}

/// Stop a session's sandbox; its disk stays.
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/stop",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name"), ForceQuery),
    responses(
        (status = 200, description = "Stopped", body = serde_json::Value),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 409, description = "Busy (use ?force=true)", body = ErrorResponse),
    )
)]
pub async fn stop(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<axum::Json<blink_sdk::types::SessionInfo>> {
    let info = state
        .manager
        .stop_session(&name, q.force.unwrap_or(false))
        .await?;
    Ok(axum::Json(info))
}

/// `?ttl_secs=` of a fence.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FenceQuery {
    /// How long the fence holds unless renewed (1-600).
    pub ttl_secs: u64,
}

/// Fence a session while a cluster router moves it away: for `ttl_secs`
/// (renewed by the router while the move runs) it does not start (`503
/// session_moving`), so nothing reaches its disk after the move's export
/// (docs/SCALE.md).
#[utoipa::path(
    put,
    path = "/api/sessions/{name}/fence",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name"), FenceQuery),
    responses(
        (status = 204, description = "Fenced"),
        (status = 400, description = "Bad ttl_secs", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn fence(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<FenceQuery>,
) -> ApiResult<StatusCode> {
    state
        .manager
        .fence(&name, Some(std::time::Duration::from_secs(q.ttl_secs)))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lift a session's fence (a move given up).
#[utoipa::path(
    delete,
    path = "/api/sessions/{name}/fence",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 204, description = "Not fenced"),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn unfence(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.manager.fence(&name, None)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a session and its disk.
#[utoipa::path(
    delete,
    path = "/api/sessions/{name}",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name"), ForceQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 409, description = "Busy (use ?force=true)", body = ErrorResponse),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<StatusCode> {
    state
        .manager
        .remove_session(&name, q.force.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
