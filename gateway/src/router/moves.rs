//! Moves and restores, driven by a router (`cluster/moves.rs` has their
//! transactions): `POST /api/sessions/{name}/move` stops the session on
//! its node, exports it, imports it on the target, switches the route and
//! removes the source; `POST /api/sessions/{name}/backup` keeps an export
//! in the export store (`cluster/export_store.rs`); and a session whose
//! node is gone is restored on another node from that export when it is
//! next asked for (cold sessions; warm ones are reported lost).
//!
//! `settle` is what every routed request passes first: it finishes or
//! undoes what a crashed mover left (see `cluster/moves.rs`).
//!
//! `BLINK_TEST_CRASH_AT` (tests only): a step name (`after-mark`,
//! `after-export`, `after-import`, `after-switch`) at which the router
//! aborts, as a crash would, to test that every crash point leaves the
//! session in one place. `BLINK_TEST_PAUSE_AT` with
//! `BLINK_TEST_PAUSE_FILE` (tests only): at that step the router writes
//! `<file>.reached` and waits (at most 60 s) for `<file>`, so a test can
//! kill a node at that very step.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;

use super::proxy::forward;
use super::rest::RouterState;
use crate::cluster::export_store::{ExportStore, StoreError};
use crate::cluster::moves;
use crate::cluster::routing::{self, Read};
use crate::cluster::{ClusterError, NodeRecord, PlacementRequest, nodes, placement};
use crate::rest::error::ApiError;

/// The test-only crash switch (see the module's doc).
const CRASH_AT: &str = "BLINK_TEST_CRASH_AT";

fn crash_point(step: &str) {
    if std::env::var(CRASH_AT).is_ok_and(|v| v == step) {
        eprintln!("{CRASH_AT}={step}: aborting");
        std::process::abort();
    }
}

/// The test-only pause switch (see the module's doc).
const PAUSE_AT: &str = "BLINK_TEST_PAUSE_AT";
const PAUSE_FILE: &str = "BLINK_TEST_PAUSE_FILE";

async fn pause_point(step: &str) {
    let Some(file) = std::env::var_os(PAUSE_FILE) else {
        return;
    };
    if !std::env::var(PAUSE_AT).is_ok_and(|v| v == step) {
        return;
    }
    let file = PathBuf::from(file);
    let mut reached = file.clone().into_os_string();
    reached.push(".reached");
    let _ = tokio::fs::write(&reached, step).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !file.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a move, a restore or a settle failed, as an answer.
pub struct Refusal(pub Response);

impl From<ClusterError> for Refusal {
    fn from(e: ClusterError) -> Self {
        Refusal(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("the cluster's store did not answer: {e}"),
            )
            .into_response(),
        )
    }
}

fn refusal(status: StatusCode, code: &'static str, message: String) -> Refusal {
    Refusal(ApiError::new(status, code, message).into_response())
}

/// One call to a node's API with the cluster's token: status and body.
async fn call(
    state: &RouterState,
    node: &NodeRecord,
    method: Method,
    path: &str,
    content_type: Option<String>,
    body: Body,
) -> Response {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = match path.parse() {
        Ok(u) => u,
        Err(e) => return super::proxy::unreachable(&node.name, e),
    };
    if let Some(token) = state.token.as_deref()
        && let Ok(v) = format!("Bearer {token}").parse()
    {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    if let Some(ct) = content_type.and_then(|c| c.parse().ok()) {
        req.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    forward(&node.name, &node.rest, req).await
}

/// A node's answer read as JSON when it succeeded; else the answer itself.
async fn json_of(resp: Response) -> Result<serde_json::Value, Refusal> {
    if !resp.status().is_success() {
        return Err(Refusal(resp));
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .map_err(|e| refusal(StatusCode::BAD_GATEWAY, "node_unreachable", e.to_string()))?;
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| refusal(StatusCode::BAD_GATEWAY, "node_unreachable", e.to_string()))
}

/// Remove a node's copy of a session (a partial import, a leftover);
/// gone already is fine.
async fn remove_copy(state: &RouterState, node: &NodeRecord, name: &str) -> Result<(), Refusal> {
    let resp = call(
        state,
        node,
        Method::DELETE,
        &format!("/api/sessions/{name}?force=true"),
        None,
        Body::empty(),
    )
    .await;
    if resp.status() == StatusCode::NOT_FOUND {
        return Ok(());
    }
    json_of(resp).await.map(|_| ())
}

/// Fence (`on`) or free a session on `node`: fenced, it does not start
/// there (`503 session_moving`), so a request that read the route before
/// a move's mark cannot reach its disk after the export. Gone already is
/// fine.
async fn set_fence(
    state: &RouterState,
    node: &NodeRecord,
    name: &str,
    on: bool,
) -> Result<(), Refusal> {
    let (method, path) = if on {
        (
            Method::PUT,
            format!("/api/sessions/{name}/fence?ttl_secs={}", fence_ttl(state)),
        )
    } else {
        (Method::DELETE, format!("/api/sessions/{name}/fence"))
    };
    let resp = call(state, node, method, &path, None, Body::empty()).await;
    if resp.status() == StatusCode::NOT_FOUND {
        return Ok(());
    }
    json_of(resp).await.map(|_| ())
}

/// A fence's life: the move lock's lease, so a fence left by a router that
/// died ends with its lock.
fn fence_ttl(state: &RouterState) -> u64 {
    state.ttl.clamp(1, 600) as u64
}

/// Keep a fence up while a move runs (renewed at a third of its life);
/// dropped, it stops renewing.
fn keep_fenced(state: &RouterState, node: &NodeRecord, name: &str) -> tokio::task::JoinHandle<()> {
    let (state, node, name) = (state.clone(), node.clone(), name.to_owned());
    tokio::spawn(async move {
        let period = std::time::Duration::from_millis(fence_ttl(&state) * 1000 / 3);
        loop {
            tokio::time::sleep(period).await;
            if let Err(Refusal(resp)) = set_fence(&state, &node, &name, true).await {
                tracing::warn!(session = %name, node = %node.name, status = %resp.status(), "router: a fence not renewed");
            }
        }
    })
}

/// Free the session on `node` if it is live (a move given up); a node
/// that is away has no fences when it is back.
async fn lift_fence(state: &RouterState, node: &str, name: &str) {
    if let Ok(live) = nodes::live(&state.store).await
        && let Some(node) = live_named(&live, node)
        && let Err(Refusal(resp)) = set_fence(state, node, name, false).await
    {
        tracing::warn!(session = %name, node = %node.name, status = %resp.status(), "router: a fence not lifted");
    }
}

/// A move's own store when the routers share none: a private
/// directory, removed with it.
struct PrivateStore {
    store: ExportStore,
    dir: PathBuf,
}

impl PrivateStore {
    fn new() -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("blink-move-{}", uuid::Uuid::new_v4().simple()));
        let store = ExportStore::directory(&dir)?;
        Ok(Self { store, dir })
    }
}

impl Drop for PrivateStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::Body(..) => refusal(StatusCode::BAD_GATEWAY, "node_unreachable", e.to_string()),
        StoreError::Object { .. } => {
            refusal(StatusCode::INTERNAL_SERVER_ERROR, "io_error", e.to_string())
        }
    }
}

/// Stop the session on `node` and export it into `into` (written whole or
/// not at all); the bytes written.
async fn export_to(
    state: &RouterState,
    node: &NodeRecord,
    name: &str,
    into: &ExportStore,
) -> Result<u64, Refusal> {
    json_of(
        call(
            state,
            node,
            Method::POST,
            &format!("/api/sessions/{name}/stop?force=true"),
            Some("application/json".into()),
            Body::from("{}"),
        )
        .await,
    )
    .await?;
    let exported = json_of(
        call(
            state,
            node,
            Method::POST,
            &format!("/api/sessions/{name}/export"),
            None,
            Body::empty(),
        )
        .await,
    )
    .await?;
    let Some(filename) = exported["filename"].as_str() else {
        return Err(refusal(
            StatusCode::BAD_GATEWAY,
            "node_unreachable",
            format!("node {} answered an export without a filename", node.name),
        ));
    };
    let resp = call(
        state,
        node,
        Method::GET,
        &format!("/api/exports/{filename}"),
        None,
        Body::empty(),
    )
    .await;
    if !resp.status().is_success() {
        return Err(Refusal(resp));
    }
    into.write_stream(name, resp.into_body().into_data_stream())
        .await
        .map_err(store_refusal)
}

/// Import `name`'s export in `from` on `node` (replacing a partial copy
/// of an earlier attempt).
async fn import_from(
    state: &RouterState,
    node: &NodeRecord,
    name: &str,
    from: &ExportStore,
) -> Result<(), Refusal> {
    let Some(archive) = from.read(name).await.map_err(store_refusal)? else {
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_lost",
            format!("session {name} has no export in {}", from.describe()),
        ));
    };
    let boundary = format!("blink-{}", uuid::Uuid::new_v4().simple());
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"replace\"\r\n\r\ntrue\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"{name}.boxlite\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let stream = futures_util::stream::once(async move { Ok(bytes::Bytes::from(head)) })
        .chain(archive)
        .chain(futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(bytes::Bytes::from(tail))
        }));
    json_of(
        call(
            state,
            node,
            Method::POST,
            "/api/import",
            Some(format!("multipart/form-data; boundary={boundary}")),
            Body::from_stream(stream),
        )
        .await,
    )
    .await
    .map(|_| ())
}

/// A mover giving up: its mark undone (the target's copy a leftover),
/// then that leftover removed now if it can be (else by the next reader).
async fn undo(state: &RouterState, name: &str, marked: &Read) {
    let Ok(Some(back)) = moves::roll_back(&state.store, name, marked, true).await else {
        return;
    };
    lift_fence(state, &back.route.node, name).await;
    let Some(to) = back.route.leftover_on.clone() else {
        return;
    };
    if let Ok(live) = nodes::live(&state.store).await
        && let Some(node) = live_named(&live, &to)
        && remove_copy(state, node, name).await.is_ok()
    {
        let _ = moves::clear_leftover(&state.store, name, &back).await;
    }
}

fn live_named<'a>(live: &'a [NodeRecord], name: &str) -> Option<&'a NodeRecord> {
    live.iter().find(|n| n.name == name)
}

/// The route of `name` once whatever a crashed mover left is undone or
/// finished, and a session whose node is gone restored if it can be.
/// Errors: 503 `session_moving` while a live move runs, 503
/// `session_lost` for a session that cannot be restored.
pub async fn settle(state: &RouterState, name: &str, mut read: Read) -> Result<Read, Refusal> {
    for _ in 0..4 {
        let live = nodes::live(&state.store).await?;
        if let Some(to) = read.route.moving_to.clone() {
            if moves::locked(&state.store, name).await? {
                return Err(refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session_moving",
                    format!("session {name} is moving to node {to}; try again shortly"),
                ));
            }
            // Its mover is gone: undo the mark (the half-made copy becomes
            // a leftover, removed next round).
            if let Some(back) = moves::roll_back(&state.store, name, &read, false).await? {
                tracing::info!(session = %name, node = %back.route.node, abandoned_copy_on = %to, "router: an abandoned move rolled back");
                lift_fence(state, &back.route.node, name).await;
            }
        } else if let Some(old) = read.route.leftover_on.clone() {
            let Some(node) = live_named(&live, &old) else {
                // Its node is away: removed when it is back.
                return Ok(read);
            };
            remove_copy(state, node, name).await?;
            if let Some(done) = moves::clear_leftover(&state.store, name, &read).await? {
                return Ok(done);
            }
        } else if live_named(&live, &read.route.node).is_none() {
            restore(state, name, &read, &live).await?;
        } else {
            return Ok(read);
        }
        read = match routing::get(&state.store, name).await? {
            Some(r) => r,
            None => return Err(Refusal(blink_lost_none(name))),
        };
    }
    Ok(read)
}

fn blink_lost_none(name: &str) -> Response {
    ApiError::from(blink_sdk::Error::SessionNotFound(name.to_owned())).into_response()
}

/// A session whose node is gone: a cold one comes back on another node
/// from its last export in the shared directory (a move without its
/// source); a warm one, or one never exported, is reported lost.
async fn restore(
    state: &RouterState,
    name: &str,
    read: &Read,
    live: &[NodeRecord],
) -> Result<(), Refusal> {
    let lost = |why: String| {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_lost",
            format!(
                "session {name} was on node {}, which is gone: {why}",
                read.route.node
            ),
        )
    };
    if read.route.warm {
        return Err(lost(
            "it was warm, so its last export is stale; it is back when its node is".into(),
        ));
    }
    let Some(exports) = &state.exports else {
        return Err(lost("the routers share no export store".into()));
    };
    if !exports.exists(name).await.map_err(store_refusal)? {
        return Err(lost(format!("no export of it in {}", exports.describe())));
    }
    let routes = routing::list(&state.store).await?;
    let request = PlacementRequest {
        memory_mib: read.route.memory_mib,
        disk_mib: read.route.disk_mib,
        isolation: None,
    };
    let target = placement::choose(live, routes.iter().map(|(_, r)| &r.route), &request)
        .map_err(|e| lost(e.to_string()))?
        .clone();
    let lease = moves::lease(&state.store, state.ttl).await?;
    let Some(marked) = moves::mark(&state.store, name, read, &target.name, lease.id).await? else {
        // Someone else is at it; the caller reads the route again.
        return Ok(());
    };
    if let Err(e) = import_from(state, &target, name, exports).await {
        undo(state, name, &marked).await;
        return Err(e);
    }
    moves::switch(&state.store, name, &marked).await?;
    drop(lease);
    tracing::info!(session = %name, from = %read.route.node, to = %target.name, "router: session restored from its last export");
    Ok(())
}

/// `POST /api/sessions/{name}/move {"to": NODE}`.
pub async fn move_session(
    state: &RouterState,
    name: &str,
    read: Read,
    to: &str,
) -> Result<Read, Refusal> {
    let read = settle(state, name, read).await?;
    let live = nodes::live(&state.store).await?;
    let not_live = |n: &str| {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unavailable",
            format!("node {n} is not live in the cluster"),
        )
    };
    let target = live_named(&live, to).ok_or_else(|| not_live(to))?.clone();
    if read.route.node == to {
        return Ok(read);
    }
    let source = live_named(&live, &read.route.node)
        .ok_or_else(|| not_live(&read.route.node))?
        .clone();
    let lease = moves::lease(&state.store, state.ttl).await?;
    let Some(marked) = moves::mark(&state.store, name, &read, to, lease.id).await? else {
        return Err(refusal(
            StatusCode::CONFLICT,
            "session_moving",
            format!("session {name} changed or is being moved by someone else"),
        ));
    };
    crash_point("after-mark");
    // From the fence on the session does not start on the source: a
    // request routed before the mark is refused there (503), and what
    // already runs ends with the stop below.
    if let Err(e) = set_fence(state, &source, name, true).await {
        undo(state, name, &marked).await;
        return Err(e);
    }
    let renewing = AbortOnDrop(keep_fenced(state, &source, name));
    // The shared store keeps the move's export (a restore's source if the
    // target dies); without one, a private directory carries it.
    let private;
    let via = match &state.exports {
        Some(shared) => shared,
        None => {
            private = PrivateStore::new()
                .map_err(|e| refusal(StatusCode::INTERNAL_SERVER_ERROR, "io_error", e))?;
            &private.store
        }
    };
    let copied = async {
        export_to(state, &source, name, via).await?;
        crash_point("after-export");
        pause_point("after-export").await;
        import_from(state, &target, name, via).await
    }
    .await;
    if let Err(e) = copied {
        // The session stays where it was (stopped; it starts on its next
        // use, once the fence is lifted).
        drop(renewing);
        undo(state, name, &marked).await;
        return Err(e);
    }
    crash_point("after-import");
    let Some(switched) = moves::switch(&state.store, name, &marked).await? else {
        // Rolled back by someone else: the target's copy is their leftover.
        return Err(refusal(
            StatusCode::CONFLICT,
            "session_moving",
            format!("session {name}'s move was undone meanwhile"),
        ));
    };
    drop(lease);
    crash_point("after-switch");
    pause_point("after-switch").await;
    tracing::info!(session = %name, from = %source.name, to = %target.name, "router: session moved");
    match remove_copy(state, &source, name).await {
        Ok(()) => Ok(moves::clear_leftover(&state.store, name, &switched)
            .await?
            .unwrap_or(switched)),
        // Left for the next reader of the route to remove.
        Err(_) => Ok(switched),
    }
}

/// `POST /api/sessions/{name}/backup`: its export kept in the shared
/// directory, where a restore takes it from.
pub async fn backup(state: &RouterState, name: &str, read: Read) -> Result<u64, Refusal> {
    let read = settle(state, name, read).await?;
    let Some(exports) = &state.exports else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "backup: this router has no export store ([cluster] export_dir or export_s3)".into(),
        ));
    };
    let live = nodes::live(&state.store).await?;
    let node = live_named(&live, &read.route.node).ok_or_else(|| {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unavailable",
            format!("node {} is not live in the cluster", read.route.node),
        )
    })?;
    export_to(state, node, name, exports).await
}

/// A partial upload into a directory store this old is a dead writer's.
const STALE_UPLOAD: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often the sweep looks for them.
const STALE_UPLOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(600);

/// The routers' sweep: every `period`, routes left unsettled (a dead
/// node's sessions, a crashed mover's marks and leftovers) are settled
/// without waiting for a request, so a dead node's cold sessions come back
/// on their own and SSH logins (which do not settle) find them. Several
/// routers sweeping at once is safe: every change is a transaction.
pub async fn sweep(
    state: RouterState,
    period: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tidied = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if tidied.elapsed() >= STALE_UPLOAD_CHECK
            && let Some(exports) = state.exports.clone()
        {
            tidied = std::time::Instant::now();
            let removed =
                tokio::task::spawn_blocking(move || exports.remove_stale_uploads(STALE_UPLOAD))
                    .await
                    .unwrap_or(0);
            if removed > 0 {
                tracing::info!(removed, "router sweep: stale partial uploads removed");
            }
        }
        let (live, routes) =
            match tokio::try_join!(nodes::live(&state.store), routing::list(&state.store)) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "router sweep: cluster store");
                    continue;
                }
            };
        for (name, read) in routes {
            let r = &read.route;
            let unsettled = r.moving_to.is_some()
                || r.leftover_on
                    .as_deref()
                    .is_some_and(|n| live_named(&live, n).is_some())
                || (!r.warm && live_named(&live, &r.node).is_none());
            if !unsettled {
                continue;
            }
            if let Err(Refusal(resp)) = settle(&state, &name, read).await {
                tracing::debug!(session = %name, status = %resp.status(), "router sweep: not settled yet");
            }
        }
    }
}
