//! Checkpoints, export, download and import. The local runtime has no
//! snapshot support yet: every route answers 501 with a clear message, so
//! clients can tell "not here" from "no such route".

use axum::http::StatusCode;

use super::error::{ApiError, ErrorResponse};

fn not_yet(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        format!(
            "{what} is not available in this release of Blink (checkpoints, export and import are planned); GET /api/product lists what is"
        ),
    )
}

/// Create a snapshot (not available yet: 501).
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/checkpoints",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Session name")),
    responses((status = 501, description = "Not available in this release", body = ErrorResponse))
)]
pub async fn create() -> ApiError {
    not_yet("creating checkpoints")
}

/// List snapshots (not available yet: 501).
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/checkpoints",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Session name")),
    responses((status = 501, description = "Not available in this release", body = ErrorResponse))
)]
pub async fn list() -> ApiError {
    not_yet("listing checkpoints")
}

/// Restore a snapshot (not available yet: 501).
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/checkpoints/{snap}/restore",
    tag = "checkpoints",
    params(
        ("name" = String, Path, description = "Session name"),
        ("snap" = String, Path, description = "Checkpoint id"),
    ),
    responses((status = 501, description = "Not available in this release", body = ErrorResponse))
)]
pub async fn restore() -> ApiError {
    not_yet("restoring checkpoints")
}

/// Export a session to an archive (not available yet: 501).
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/export",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Session name")),
    responses((status = 501, description = "Not available in this release", body = ErrorResponse))
)]
pub async fn export() -> ApiError {
    not_yet("exporting sessions")
}

/// Download an export (not available yet: 501).
#[utoipa::path(
    get,
    path = "/api/exports/{filename}",
    tag = "checkpoints",
    params(("filename" = String, Path, description = "Export file name")),
    responses((status = 501, description = "Not available in this release", body = ErrorResponse))
)]
pub async fn download() -> ApiError {
    not_yet("downloading exports")
}

/// Import an exported session (not available yet: 501).
#[utoipa::path(
    post,
    path = "/api/import",
    tag = "checkpoints",
    responses((status = 501, description = "Not available in this release", body = ErrorResponse))
)]
pub async fn import() -> ApiError {
    not_yet("importing sessions")
}
