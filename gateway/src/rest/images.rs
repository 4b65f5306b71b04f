//! Images: list, pull from a registry, remove, prune (docs/IMAGES.md).

use axum::extract::State;
use blink_sdk::image::{ImageInfo, PruneReport, PullReport};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorResponse};

/// `POST /api/images/pull`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// A Docker-style reference: `alpine:3.20` (Docker Hub,
    /// `docker.io/library/alpine:3.20`), `ghcr.io/o/r:tag`,
    /// `host:port/repo@sha256:...`.
    pub reference: String,
}

/// One image in the store.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageView {
    /// The name it is stored under (`docker.io/library/alpine:3.20`).
    pub reference: String,
    /// `sha256:` digest of its manifest (this host's platform).
    pub digest: String,
    /// Bytes of its layers as stored (compressed).
    pub size: u64,
    pub layers: usize,
}

impl From<ImageInfo> for ImageView {
    fn from(i: ImageInfo) -> Self {
        Self {
            reference: i.reference,
            digest: i.digest,
            size: i.size,
            layers: i.layers,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<ImageView>,
}

/// What a pull did: the image as stored, and how it got there.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pulled {
    #[serde(flatten)]
    pub image: ImageView,
    /// The digest the reference named at the registry (an index's for a
    /// multi-platform image).
    pub resolved_digest: String,
    /// `registry HOST` or `mirror HOST`.
    pub source: String,
    pub fetched_blobs: usize,
    pub fetched_bytes: u64,
    /// Blobs the store already had (shared with other images).
    pub cached_blobs: usize,
}

impl From<PullReport> for Pulled {
    fn from(r: PullReport) -> Self {
        Self {
            image: r.image.into(),
            resolved_digest: r.resolved_digest,
            source: r.source,
            fetched_blobs: r.fetched_blobs,
            fetched_bytes: r.fetched_bytes,
            cached_blobs: r.cached_blobs,
        }
    }
}

/// `DELETE /api/images?reference=...&force=true`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// The image (`alpine:3.20` finds `docker.io/library/alpine:3.20`).
    pub reference: String,
    /// Remove it even if sessions use it (they keep their unpacked tree).
    pub force: Option<bool>,
}

/// What `POST /api/images/prune` removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pruned {
    /// Blobs no image uses.
    pub blobs: usize,
    /// Bytes freed.
    pub bytes: u64,
    /// Downloads left by interrupted pulls.
    pub downloads: usize,
    pub staging_dirs: usize,
}

impl From<PruneReport> for Pruned {
    fn from(r: PruneReport) -> Self {
        Self {
            blobs: r.blobs,
            bytes: r.bytes,
            downloads: r.downloads,
            staging_dirs: r.staging_dirs,
        }
    }
}

/// Largest reference accepted (the SDK's own limit is lower).
const MAX_REFERENCE: usize = 1024;

fn check_reference(field: &str, reference: &str) -> ApiResult<()> {
    if reference.trim().is_empty() {
        return Err(ApiError::bad_request(
            "invalid_argument",
            format!("{field} is empty"),
        ));
    }
    if reference.len() > MAX_REFERENCE {
        return Err(ApiError::bad_request(
            "invalid_argument",
            format!("{field} is longer than {MAX_REFERENCE} bytes"),
        ));
    }
    Ok(())
}

/// Images in the store.
#[utoipa::path(
    get,
    path = "/api/images",
    tag = "images",
    responses((status = 200, description = "Images by reference", body = ImageList))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<axum::Json<ImageList>> {
    let images = state.manager.images().clone();
    let list = tokio::task::spawn_blocking(move || images.list())
        .await
        .map_err(|e| blink_sdk::Error::Runtime(format!("image task failed: {e}")))??;
    Ok(axum::Json(ImageList {
        images: list.into_iter().map(ImageView::from).collect(),
    }))
}

/// Pull an image from its registry (or a configured mirror). Answers when
/// the image is stored; concurrent pulls of one image share the work.
#[utoipa::path(
    post,
    path = "/api/images/pull",
    tag = "images",
    request_body = PullRequest,
    responses(
        (status = 200, description = "Pulled", body = Pulled),
        (status = 400, description = "No reference", body = ErrorResponse),
        (status = 403, description = "The registry is not in [images] allowed_registries", body = ErrorResponse),
        (status = 404, description = "The registry has no such image", body = ErrorResponse),
        (status = 413, description = "Over a limit of [images]", body = ErrorResponse),
        (status = 422, description = "Not a valid reference, or the registry sent a broken image (a digest mismatch, a truncated blob)", body = ErrorResponse),
        (status = 502, description = "The registry could not be reached or refused (401 without credentials, a redirect loop)", body = ErrorResponse),
    )
)]
pub async fn pull(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PullRequest>,
) -> ApiResult<axum::Json<Pulled>> {
    check_reference("reference", &req.reference)?;
    let report = state.manager.pull_image(&req.reference, None).await?;
    Ok(axum::Json(report.into()))
}

/// Remove an image; refused (409) while a session uses it unless forced.
#[utoipa::path(
    delete,
    path = "/api/images",
    tag = "images",
    params(RemoveQuery),
    responses(
        (status = 200, description = "Removed", body = ImageView),
        (status = 404, description = "No such image", body = ErrorResponse),
        (status = 409, description = "Sessions use it", body = ErrorResponse),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> ApiResult<axum::Json<ImageView>> {
    check_reference("reference", &q.reference)?;
    let removed = state
        .manager
        .remove_image(&q.reference, q.force.unwrap_or(false))
        .await?;
    Ok(axum::Json(removed.into()))
}

/// Delete blobs no image uses and downloads left by interrupted pulls.
#[utoipa::path(
    post,
    path = "/api/images/prune",
    tag = "images",
    responses((status = 200, description = "What was removed", body = Pruned))
)]
pub async fn prune(State(state): State<AppState>) -> ApiResult<axum::Json<Pruned>> {
    Ok(axum::Json(state.manager.prune_images().await?.into()))
}
