//! Session archives over HTTP: export a session to a file in
//! `<data>/exports`, download it (Content-Length, Range for resumed
//! downloads), import an upload (multipart, streamed to disk). Exports are
//! removed after `rest.export_retention_secs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blink_sdk::manager::ExportOptions;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, ErrorResponse};

/// Where exports and uploads live.
pub fn dir(state: &AppState) -> PathBuf {
    state.manager.config().data_dir.join("exports")
}

/// `?image=false` leaves the image's layers out; `?snapshots=true` puts
/// the session's snapshots in.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    pub image: Option<bool>,
    pub snapshots: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Exported {
    /// Name to download it by: `GET /api/exports/{filename}`.
    pub filename: String,
    pub size_bytes: u64,
    /// Seconds it is kept.
    pub expires_in_secs: u64,
}

/// Export a session to a `.boxlite` archive (docs/ARCHIVE.md).
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/export",
    tag = "checkpoints",
    params(("name" = String, Path, description = "Session name"), ExportQuery),
    responses(
        (status = 201, description = "Written: `{filename, size_bytes, expires_in_secs}`", body = Exported),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 501, description = "This server's disks cannot be exported", body = ErrorResponse),
    )
)]
pub async fn export(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    blink_sdk::manager::names::validate(&name)?;
    let dir = dir(&state);
    blink_sdk::runtime::local::private_dir(&dir)?;
    let stamp = blink_sdk::manager::now_secs();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let filename = format!("{name}-{stamp}-{suffix}.boxlite");
    let dest = dir.join(&filename);
    let options = ExportOptions {
        include_image: q.image.unwrap_or(true),
        include_snapshots: q.snapshots.unwrap_or(false),
    };
    let size = state
        .manager
        .export_session(&name, &dest, options, Arc::new(|_| {}))
        .await?;
    let body = Exported {
        filename,
        size_bytes: size,
        expires_in_secs: state.config.export_retention_secs,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// An export file's name: what `export` makes, nothing else.
fn export_name(filename: &str) -> Option<&str> {
    let ok = filename.len() <= 128
        && filename.ends_with(".boxlite")
        && !filename.starts_with('.')
        && filename.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    ok.then_some(filename)
}

/// Download an export (Range requests resume a download).
#[utoipa::path(
    get,
    path = "/api/exports/{filename}",
    tag = "checkpoints",
    params(("filename" = String, Path, description = "Export file name")),
    responses(
        (status = 200, description = "The archive (application/octet-stream)"),
        (status = 206, description = "Part of it (Range)"),
        (status = 404, description = "No such export", body = ErrorResponse),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    ApiPath(filename): ApiPath<String>,
    request: Request,
) -> ApiResult<Response> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "export_not_found",
            format!("no export {filename:?}"),
        )
    };
    let name = export_name(&filename).ok_or_else(missing)?;
    let path = dir(&state).join(name);
    if !path.is_file() {
        return Err(missing());
    }
    let file = tower_http::services::ServeFile::new_with_mime(
        &path,
        &"application/octet-stream".parse().expect("mime"),
    );
    let response = file
        .oneshot(request)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io_error", e.to_string()))?;
    Ok(response.into_response())
}

/// Import an uploaded archive as a new session: multipart fields `archive`
/// (the file), `name` (optional; the archive's own otherwise) and `replace`
/// (optional, `true` to replace a session of that name).
#[utoipa::path(
    post,
    path = "/api/import",
    tag = "checkpoints",
    responses(
        (status = 201, description = "Imported: `{session, created: true}`", body = serde_json::Value),
        (status = 400, description = "Bad form or name", body = ErrorResponse),
        (status = 409, description = "A session of that name exists", body = ErrorResponse),
        (status = 413, description = "Larger than rest.max_import_bytes", body = ErrorResponse),
        (status = 422, description = "Not a valid archive (named problem)", body = ErrorResponse),
    )
)]
pub async fn import(State(state): State<AppState>, mut form: Multipart) -> ApiResult<Response> {
    let dir = dir(&state);
    blink_sdk::runtime::local::private_dir(&dir)?;
    let upload = Upload(dir.join(format!(".upload-{}.boxlite", uuid::Uuid::new_v4().simple())));
    let bad = |m: String| ApiError::bad_request("invalid_form", m);
    let (mut name, mut replace, mut got) = (None, false, false);
    while let Some(mut field) = form.next_field().await.map_err(|e| form_error(e, &state))? {
        match field.name().unwrap_or("") {
            "archive" => {
                let mut out = tokio::fs::File::create(&upload.0)
                    .await
                    .map_err(|e| blink_sdk::Error::io("storing the upload", e))?;
                let mut size: u64 = 0;
                while let Some(chunk) = field.chunk().await.map_err(|e| form_error(e, &state))? {
                    size += chunk.len() as u64;
                    if size > state.config.max_import_bytes {
                        return Err(blink_sdk::Error::TooLarge {
                            what: "the upload".into(),
                            size,
                            limit: state.config.max_import_bytes,
                        }
                        .into());
                    }
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| blink_sdk::Error::io("storing the upload", e))?;
                }
                out.flush()
                    .await
                    .map_err(|e| blink_sdk::Error::io("storing the upload", e))?;
                got = true;
            }
            "name" => {
                let text = field.text().await.map_err(|e| form_error(e, &state))?;
                blink_sdk::manager::names::validate(text.trim())?;
                name = Some(text.trim().to_owned());
            }
            "replace" => {
                let text = field.text().await.map_err(|e| form_error(e, &state))?;
                replace = text.trim() == "true";
            }
            other => {
                return Err(bad(format!(
                    "unknown form field {other:?} (archive, name, replace)"
                )));
            }
        }
    }
    if !got {
        return Err(bad("the form has no `archive` field".into()));
    }
    let opened = state
        .manager
        .import_session(&upload.0, name.as_deref(), replace, Arc::new(|_| {}))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(opened)).into_response())
}

/// An upload removed when the request ends, however it ends.
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn form_error(e: axum::extract::multipart::MultipartError, state: &AppState) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return blink_sdk::Error::TooLarge {
            what: "the upload".into(),
            size: state.config.max_import_bytes.saturating_add(1),
            limit: state.config.max_import_bytes,
        }
        .into();
    }
    ApiError::bad_request(
        "invalid_form",
        format!("bad multipart form: {}", e.body_text()),
    )
}

/// Remove exports (and stray uploads) older than the retention, every
/// minute, until `shutdown`.
pub fn clean_up(
    dir: PathBuf,
    retention: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        loop {
            remove_older(&dir, retention);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
}

fn remove_older(dir: &Path, retention: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > retention);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed an expired export");
        }
    }
}
