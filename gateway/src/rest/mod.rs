//! The REST API (see the README's REST table, docs/XENSEMBLE.md): the same
//! session manager as the SSH gateway, over HTTP and WebSocket.
//!
//! One file per resource; this one builds the router, holds the shared
//! state and runs the server with a graceful shutdown.

mod checkpoints;
pub mod config;
pub(crate) mod error;
mod events;
mod exports;
#[cfg(test)]
pub(crate) mod fuzz_tests;
mod guard;
mod images;
mod inline_scripts;
mod keys;
mod local_socket;
mod network;
mod observe;
mod openapi;
mod product;
mod recordings;
mod resources;
mod run_records;
mod run_registry;
mod runs;
mod sessions;
mod spawn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use blink_sdk::manager::Manager;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::config::RestConfig;
use self::error::ApiError;
use self::run_registry::RunRegistry;
use crate::recording::Recordings;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub runs: Arc<RunRegistry>,
    pub config: Arc<RestConfig>,
    /// `rest.script_dirs`, canonicalized at start.
    pub script_dirs: Arc<Vec<PathBuf>>,
    /// Becomes true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// One permit per open WebSocket attachment.
    pub attachments: Arc<tokio::sync::Semaphore>,
    /// PTY sessions' recordings (shared with the SSH gateway).
    pub recordings: Arc<Recordings>,
    /// The V-Hub, for sessions' event streams (`None`: disabled).
    pub vhub: Option<blink_sdk::vhub::Hub>,
}

/// The router and its OpenAPI document, built from the same route list.
fn router(state: AppState, guard: Arc<guard::Guard>) -> (Router, utoipa::openapi::OpenApi) {
    let (api, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(product::health))
        .routes(routes!(product::product))
        .routes(routes!(observe::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(runs::create_run))
        .routes(routes!(runs::get_run))
        .routes(routes!(sessions::list, sessions::open))
        .routes(routes!(sessions::info, sessions::remove))
        .routes(routes!(sessions::stop))
        .routes(routes!(sessions::fence, sessions::unfence))
        .routes(routes!(network::get, network::put))
        .routes(routes!(resources::get, resources::patch))
        .routes(routes!(resources::stats))
        .routes(routes!(network::get_forwarding, network::put_forwarding))
        .routes(routes!(runs::session_run))
        .routes(routes!(spawn::spawn))
        .routes(routes!(spawn::list))
        .routes(routes!(spawn::info))
        .routes(routes!(spawn::attach))
        .routes(routes!(keys::list, keys::add))
        .routes(routes!(keys::remove))
        .routes(routes!(checkpoints::create, checkpoints::list))
        .routes(routes!(checkpoints::restore))
        .routes(routes!(checkpoints::remove))
        .routes(routes!(exports::export))
        .routes(routes!(exports::download))
        .routes(routes!(exports::import))
        .routes(routes!(images::list, images::remove))
        .routes(routes!(images::pull))
        .routes(routes!(images::prune))
        .routes(routes!(events::events))
        .routes(routes!(recordings::list))
        .routes(routes!(recordings::download, recordings::remove))
        .routes(routes!(recordings::get_switch, recordings::put_switch))
        .with_state(state.clone())
        .split_for_parts();
    let json = doc.to_json().unwrap_or_else(|_| "{}".into());
    let app = api
        .fallback(not_found)
        .layer(Extension(openapi::Document(Arc::new(json))))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_body,
        ))
        .layer(axum::middleware::from_fn_with_state(state, require_token))
        // Before the token: a browser page is refused whatever it sends.
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the server hit a bug handling this request",
            )
            .into_response()
        }))
        // 5xx answers that are faults are logged where they arise; 501s
        // for features not in this release are not errors of the server.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        // Outermost: sees every answer as the client gets it.
        .layer(axum::middleware::from_fn(observe::observe));
    (app, doc)
}

/// Bodies are bounded by `rest.max_body_bytes`, uploads to `/api/import`
/// by `rest.max_import_bytes` (its handler streams them to disk).
async fn limit_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = if req.uri().path() == "/api/import" {
        usize::try_from(state.config.max_import_bytes).unwrap_or(usize::MAX)
    } else {
        state.config.max_body_bytes
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return error::body_too_large().into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The optional bearer token; `/api/health` stays open for probes.
/// Requests on the local socket are its owner's by file permission
/// (local_socket.rs) and need none.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.config.token.as_deref() else {
        return next.run(req).await;
    };
    let local = req
        .extensions()
        .get::<local_socket::LocalSocket>()
        .is_some();
    if local || req.uri().path() == "/api/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests, not the strings: equal lengths, so neither the
    // content nor the length of the token shows in the timing.
    let digest = |s: &str| sha2::Sha256::digest(s.as_bytes());
    if bool::from(digest(given).as_slice().ct_eq(digest(token).as_slice())) {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this server wants Authorization: Bearer <BLINK_API_TOKEN>",
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// A running REST server.
pub struct RestServer {
    pub local_addr: SocketAddr,
    /// The local socket, when it could be bound.
    socket: Option<local_socket::SocketFile>,
    shutdown: watch::Sender<bool>,
    runs: Arc<RunRegistry>,
    grace: Duration,
    task: tokio::task::JoinHandle<()>,
}

/// Bind and start serving. Prints `http listening on ADDR` on stdout once
/// bound (tests and supervisors read it). Spawns with a terminal are
/// recorded in `recordings` as its config says.
pub async fn start(
    manager: Arc<Manager>,
    config: RestConfig,
    recordings: Arc<Recordings>,
    vhub: Option<blink_sdk::vhub::Hub>,
) -> anyhow::Result<RestServer> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("config is invalid: {e}"))?;
    let mut script_dirs = Vec::new();
    for dir in &config.script_dirs {
        let real = std::fs::canonicalize(dir)
            .with_context(|| format!("rest.script_dirs: {}", dir.display()))?;
        anyhow::ensure!(
            real.is_dir(),
            "rest.script_dirs: {} is not a directory",
            dir.display()
        );
        script_dirs.push(real);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the HTTP API to {}", config.listen))?;
    let local_addr = listener.local_addr().context("HTTP listener address")?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    crate::metrics::handle();
    let records_dir = manager.config().data_dir.join("runs");
    let records = run_records::RunRecords::open(&records_dir)
        .with_context(|| format!("opening the run records in {}", records_dir.display()))?;
    let runs = Arc::new(
        RunRegistry::new(
            config.max_concurrent_runs,
            config.max_queued_runs,
            config.max_queued_runs_per_session,
            config.max_runs_kept,
        )
        .with_records(records, Duration::from_secs(config.run_retention_secs)),
    );
    let grace = config.shutdown_grace();
    if config.token.is_none() && !local_addr.ip().is_loopback() {
        tracing::warn!(addr = %local_addr, "the HTTP API has no token and listens beyond loopback: keep it on a private network");
    }
    let state = AppState {
        manager,
        runs: runs.clone(),
        attachments: Arc::new(tokio::sync::Semaphore::new(config.max_attachments)),
        config: Arc::new(config),
        script_dirs: Arc::new(script_dirs),
        shutdown: shutdown_rx.clone(),
        recordings,
        vhub,
    };
    inline_scripts::clean(&state.manager.config().data_dir);
    exports::clean_up(
        exports::dir(&state),
        Duration::from_secs(state.config.export_retention_secs),
        shutdown_rx.clone(),
    );
    let guard = Arc::new(guard::Guard::new(&state.config, local_addr));
    let data_dir = state.manager.config().data_dir.clone();
    let (app, _) = router(state, guard);
    // The same app on the local socket, its requests marked as such.
    let (unix, socket) = match local_socket::bind(&data_dir) {
        Ok((listener, file)) => (Some(listener), Some(file)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no local API socket: blink-cli on this host will not reach the server");
            (None, None)
        }
    };
    let unix_app = app.clone().layer(Extension(local_socket::LocalSocket));
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let (stop_tcp, stop_unix) = (shutdown_rx.clone(), shutdown_rx);
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let tcp = async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_tcp));
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        };
        let unix = async move {
            let Some(listener) = unix else { return };
            let serve = axum::serve(listener, unix_app.into_make_service())
                .with_graceful_shutdown(stopped(stop_unix));
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server on the local socket failed");
            }
        };
        tokio::join!(tcp, unix);
    });
    println!("http listening on {local_addr}");
    tracing::info!(addr = %local_addr, "HTTP API listening");
    if let Some(file) = &socket {
        tracing::info!(socket = %file.path.display(), "HTTP API on the local socket");
    }
    Ok(RestServer {
        local_addr,
        socket,
        shutdown,
        runs,
        grace,
        task,
    })
}

impl RestServer {
    /// Stop accepting connections and runs, let running runs finish up to
    /// the grace period, then close what is left.
    pub async fn shutdown(self) {
        tracing::info!(addr = %self.local_addr, "HTTP API shutting down");
        self.shutdown.send_replace(true);
        self.runs.drain(self.grace).await;
        let mut task = self.task;
        // Requests still open (a long ?wait=true) get a little longer.
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        if let Some(file) = &self.socket {
            file.remove();
        }
    }
}
