//! Checkpoints: snapshots of a session's disk (make, list, restore,
//! remove).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blink_sdk::runtime::SnapshotInfo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiQuery, ApiResult, ErrorResponse};
use super::sessions::ForceQuery;

/// `POST /api/sessions/{name}/checkpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// The snapshot's name: `[a-z0-9][a-z0-9._-]{0,62}`, unique in the
    /// session.
    pub snapshot: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointList {
    /// Snapshots, oldest first (`name`, `created_at`, `size_bytes`,
    /// `frozen_ms`).
    #[schema(value_type = Vec<Object>)]
    pub checkpoints: Vec<SnapshotInfo>,
}

/// Snapshot a session's disk; a running session is frozen for the copy.
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/checkpoints",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Session name")),
    request_body = CheckpointRequest,
    responses(
        (status = 201, description = "Made: `{name, created_at, size_bytes, frozen_ms}`", body = serde_json::Value),
        (status = 400, description = "Bad name or body", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 409, description = "A snapshot of that name exists", body = ErrorResponse),
        (status = 501, description = "This server's disks have no snapshots", body = ErrorResponse),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<CheckpointRequest>,
) -> ApiResult<Response> {
    let info = state.manager.checkpoint(&name, &req.snapshot).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

/// A session's snapshots.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/checkpoints",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "Snapshots", body = CheckpointList),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<CheckpointList>> {
    Ok(axum::Json(CheckpointList {
        checkpoints: state.manager.checkpoints(&name)?,
    }))
}

/// Put a session's disk back as a snapshot was. The session is stopped for
/// it and started again if it was running or is warm.
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/checkpoints/{snap}/restore",
    tag = "checkpoints",
    params(
        ("name" = String, Path, description = "Session name"),
        ("snap" = String, Path, description = "Snapshot name"),
        ForceQuery,
    ),
    responses(
        (status = 200, description = "Restored: the session", body = serde_json::Value),
        (status = 400, description = "Bad name", body = ErrorResponse),
        (status = 404, description = "No such session or snapshot", body = ErrorResponse),
        (status = 409, description = "Busy (use ?force=true)", body = ErrorResponse),
    )
)]
pub async fn restore(
    State(state): State<AppState>,
    ApiPath((name, snap)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<axum::Json<blink_sdk::types::SessionInfo>> {
    state
        .manager
        .restore_checkpoint(&name, &snap, q.force.unwrap_or(false))
        .await?;
    Ok(axum::Json(state.manager.session_info(&name)?))
}

/// Remove a snapshot.
#[utoipa::path(
    delete,
    path = "/api/sessions/{name}/checkpoints/{snap}",
    tag = "checkpoints",
    params(
        ("name" = String, Path, description = "Session name"),
        ("snap" = String, Path, description = "Snapshot name"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such session or snapshot", body = ErrorResponse),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath((name, snap)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state.manager.remove_checkpoint(&name, &snap).await?;
    Ok(StatusCode::NO_CONTENT)
}
