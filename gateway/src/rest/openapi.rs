//! The OpenAPI document, assembled from the handlers' own annotations as
//! they are routed (utoipa-axum), so it cannot drift from the router.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Blink API",
        description = "Sandboxes for AI agents: the execution plane a control plane drives over HTTP. See docs/XENSEMBLE.md, docs/STREAMING.md and docs/PTY.md."
    ),
    modifiers(&BearerToken),
    tags(
        (name = "product", description = "Health and feature flags"),
        (name = "runs", description = "Queued pipe-mode runs"),
        (name = "sessions", description = "Named sessions with a persistent disk"),
        (name = "executions", description = "Spawned processes and WebSocket attach"),
        (name = "keys", description = "Per-session SSH authorized keys"),
        (name = "images", description = "The image store: pulls from registries, removal, pruning"),
        (name = "checkpoints", description = "Snapshots, export and import (not in this release)"),
        (name = "recordings", description = "Recordings of PTY sessions (asciicast v2)"),
    )
)]
pub struct ApiDoc;

/// Declares the optional bearer token (`BLINK_API_TOKEN`).
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document served.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "product",
    responses((status = 200, description = "OpenAPI 3.1 document", body = serde_json::Value))
)]
pub async fn openapi_json(Extension(doc): Extension<Document>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_ref().clone(),
    )
}
