//! A session's recordings (docs/RECORDING.md): list them, download one
//! (an asciicast v2 file, Range for resumed downloads), remove one; and
//! the session's own switch.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult, ErrorResponse};
use crate::recording::{RecordingError, RecordingInfo, SwitchInfo};

/// The media type of asciicast files.
const ASCIICAST: &str = "application/x-asciicast";

impl From<RecordingError> for ApiError {
    fn from(e: RecordingError) -> Self {
        match e {
            RecordingError::Sdk(e) => e.into(),
            RecordingError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "recording_not_found", e.to_string())
            }
            RecordingError::Active(_) => {
                ApiError::new(StatusCode::CONFLICT, "recording_active", e.to_string())
            }
            RecordingError::Disabled => {
                ApiError::new(StatusCode::CONFLICT, "recording_disabled", e.to_string())
            }
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingList {
    /// Oldest first.
    pub recordings: Vec<RecordingInfo>,
}

/// `PUT /api/sessions/{name}/recording`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// Record this session's new PTY sessions (SSH channels with a
    /// terminal, REST spawns with `tty: true`).
    pub enabled: bool,
}

/// A session's recordings. A removed session's recordings are listed
/// until retention removes them.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/recordings",
    tag = "recordings",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "Recordings, oldest first", body = RecordingList),
        (status = 400, description = "Bad name", body = ErrorResponse),
        (status = 404, description = "No such session, nor recordings of one", body = ErrorResponse),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<RecordingList>> {
    let recordings = state.recordings.list(&state.manager, &name)?;
    Ok(axum::Json(RecordingList { recordings }))
}

/// Download a recording: an asciicast v2 file (`asciinema play FILE`).
/// One still being written is served as far as it goes.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/recordings/{id}",
    tag = "recordings",
    params(
        ("name" = String, Path, description = "Session name"),
        ("id" = String, Path, description = "Recording id (`<unix-time>-<16 hex digits>`)"),
    ),
    responses(
        (status = 200, description = "The cast (application/x-asciicast)"),
        (status = 206, description = "Part of it (Range)"),
        (status = 400, description = "Not a session name or recording id", body = ErrorResponse),
        (status = 404, description = "No such recording", body = ErrorResponse),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    let path = state.recordings.cast(&name, &id)?;
    let file = tower_http::services::ServeFile::new_with_mime(
        &path,
        &ASCIICAST.parse().expect("a media type"),
    );
    let response = file
        .oneshot(request)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io_error", e.to_string()))?;
    Ok(response.into_response())
}

/// Remove a recording (not one still being written: 409).
#[utoipa::path(
    delete,
    path = "/api/sessions/{name}/recordings/{id}",
    tag = "recordings",
    params(
        ("name" = String, Path, description = "Session name"),
        ("id" = String, Path, description = "Recording id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a session name or recording id", body = ErrorResponse),
        (status = 404, description = "No such recording", body = ErrorResponse),
        (status = 409, description = "Still being written", body = ErrorResponse),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state.recordings.remove(&name, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether the session's new PTY sessions are recorded, and why.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/recording",
    tag = "recordings",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "`{enabled, session_switch, server_enabled, record_input}`", body = SwitchInfo),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn get_switch(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<SwitchInfo>> {
    Ok(axum::Json(state.recordings.switch(&state.manager, &name)?))
}

/// Turn recording on or off for this session, over what the config's
/// `[recording] sessions` says; kept across restarts. Programs already
/// running are not affected.
#[utoipa::path(
    put,
    path = "/api/sessions/{name}/recording",
    tag = "recordings",
    params(("name" = String, Path, description = "Session name")),
    request_body = SwitchRequest,
    responses(
        (status = 200, description = "The new state", body = SwitchInfo),
        (status = 400, description = "Bad body", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 409, description = "Recording is off on this server (`[recording] enabled`)", body = ErrorResponse),
    )
)]
pub async fn put_switch(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SwitchRequest>,
) -> ApiResult<axum::Json<SwitchInfo>> {
    let info = state
        .recordings
        .set_switch(&state.manager, &name, req.enabled)?;
    tracing::info!(session = %name, enabled = req.enabled, "recording switch set");
    Ok(axum::Json(info))
}
