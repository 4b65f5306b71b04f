//! `GET /api/health` and `GET /api/product`.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: &'static str,
    pub version: &'static str,
    /// The sandbox runtime in use (`local`, `boxlite`).
    pub runtime: String,
    /// Why that runtime (`runtime = "auto"` says what it found).
    pub runtime_reason: String,
}

/// Liveness: answers without touching sandboxes (and without a token).
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "product",
    responses((status = 200, description = "Up", body = Health))
)]
pub async fn health(State(state): State<AppState>) -> axum::Json<Health> {
    let selection = state.manager.runtime_selection();
    axum::Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        runtime: selection.runtime.clone(),
        runtime_reason: selection.reason.clone(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Product {
    pub name: &'static str,
    pub version: &'static str,
    /// The sandbox runtime in use (`name`, `isolation`, `limits`,
    /// `details`).
    #[schema(value_type = Object)]
    pub runtime: blink_sdk::types::RuntimeInfo,
    /// What was asked for (`requested`: auto, boxlite, local), what runs
    /// (`runtime`) and why (`reason`).
    #[schema(value_type = Object)]
    pub runtime_selection: blink_sdk::runtime::selection::Selection,
    /// Per runtime (`local`, `boxlite`): compiled in, and which session
    /// operations it maps.
    #[schema(value_type = Object)]
    pub runtimes: BTreeMap<&'static str, blink_sdk::runtime::support::RuntimeSupport>,
    /// `namespace` (Linux namespaces) or `vm` (micro-VM).
    pub isolation: String,
    /// What this build and configuration can do.
    pub features: BTreeMap<&'static str, bool>,
    /// Limits a client should know about.
    pub limits: ProductLimits,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductLimits {
    pub max_body_bytes: usize,
    pub max_run_timeout_secs: u64,
    pub max_concurrent_runs: usize,
}

/// Feature flags, the runtime in use and its isolation class.
#[utoipa::path(
    get,
    path = "/api/product",
    tag = "product",
    responses((status = 200, description = "What this server offers", body = Product))
)]
pub async fn product(State(state): State<AppState>) -> axum::Json<Product> {
    let runtime = state.manager.runtime_info();
    let features = BTreeMap::from([
        ("runs", true),
        ("sessions", true),
        ("spawn", true),
        ("pty", true),
        ("websocket_attach", true),
        ("ssh", true),
        ("ssh_keys", true),
        ("host_scripts", !state.script_dirs.is_empty()),
        ("checkpoints", state.manager.snapshots_supported()),
        ("clone", state.manager.snapshots_supported()),
        ("export", state.manager.snapshots_supported()),
        ("import", state.manager.snapshots_supported()),
        ("api_token", state.config.token.is_some()),
        ("image_pull", true),
    ]);
    use blink_sdk::runtime::RuntimeKind;
    use blink_sdk::runtime::support::support;
    let mut local = support(RuntimeKind::Local);
    if !state.manager.snapshots_supported() {
        for op in ["snapshots", "clone", "export", "import"] {
            local.operations.insert(op.into(), false);
        }
        local.note =
            "snapshots, clone, export and import need disk images (a server running as root)"
                .into();
    }
    let runtimes = BTreeMap::from([("local", local), ("boxlite", support(RuntimeKind::Boxlite))]);
    axum::Json(Product {
        name: "blink",
        version: env!("CARGO_PKG_VERSION"),
        isolation: runtime.isolation.to_string(),
        runtime,
        runtime_selection: state.manager.runtime_selection().clone(),
        runtimes,
        features,
        limits: ProductLimits {
            max_body_bytes: state.config.max_body_bytes,
            max_run_timeout_secs: state.config.max_run_timeout_secs,
            max_concurrent_runs: state.config.max_concurrent_runs,
        },
    })
}
