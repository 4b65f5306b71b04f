//! The front door's REST API: session-scoped routes relayed to the node
//! that owns the session (its routing record in etcd), new sessions placed
//! by a transaction then relayed, lists merged from every live node.
//! Answers from nodes, errors included, reach the client unchanged.

// A handler's early answer is a whole `Response` (a node's, relayed), not
// a small error value: boxing it at every `?` would only add noise.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::moves;
use super::proxy::{forward, unreachable};
use crate::cluster::routing::{self, Placed, Read};
use crate::cluster::{ClusterError, NodeRecord, PlacementRequest, Route, Store, nodes, placement};
use crate::rest::error::ApiError;

/// Largest request body the router reads itself (session opens, runs);
/// other bodies stream through.
const MAX_READ_BODY: usize = 1 << 20;
/// Largest answer of one node the router reads to merge a list.
const MAX_LIST_BYTES: usize = 64 << 20;

/// What every handler sees.
#[derive(Clone)]
pub struct RouterState {
    pub store: Store,
    /// The API token clients must send (the nodes' own, passed on).
    pub token: Option<Arc<str>>,
    /// Lease TTL of a move's lock, in seconds.
    pub ttl: i64,
    /// Sessions' last exports, shared by routers (`export_dir` or
    /// `[cluster.export_s3]`).
    pub exports: Option<crate::cluster::export_store::ExportStore>,
}

pub fn app(state: RouterState) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/cluster/nodes", get(list_nodes))
        .route("/api/sessions", get(list_sessions).post(open_session))
        .route("/api/sessions/{name}/move", post(move_session))
        .route("/api/sessions/{name}/backup", post(backup_session))
        .route("/api/sessions/{name}", any(session_scoped))
        .route("/api/sessions/{name}/{*rest}", any(session_scoped_rest))
        .route("/api/runs", post(create_run))
        .route("/api/runs/{id}", get(find_run))
        .fallback(not_routed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::map_response(
            crate::rest::error::json_errors,
        ))
        .with_state(state)
}

fn cluster_error(e: ClusterError) -> Response {
    match e {
        ClusterError::NoCapacity(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", why).into_response()
        }
        e => {
            tracing::warn!(error = %e, "router: cluster store");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("the cluster's store did not answer: {e}"),
            )
            .into_response()
        }
    }
}

fn api(e: impl Into<ApiError>) -> Response {
    e.into().into_response()
}

fn invalid(message: impl Into<String>) -> Response {
    ApiError::bad_request("invalid_argument", message).into_response()
}

/// The same bearer token as a node's (constant-time compare of digests);
/// `/api/health` stays open for probes.
async fn require_token(State(state): State<RouterState>, req: Request, next: Next) -> Response {
    let Some(token) = state.token.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/api/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
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

async fn not_routed(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_routed",
        format!(
            "the router does not route {} {}; ask a node",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

async fn health(State(state): State<RouterState>) -> Response {
    match nodes::live(&state.store).await {
        Ok(nodes) => axum::Json(json!({
            "status": "ok",
            "role": "router",
            "nodes": nodes.len(),
        }))
        .into_response(),
        Err(e) => cluster_error(e),
    }
}

/// Live nodes, each with the sessions routed to it.
async fn list_nodes(State(state): State<RouterState>) -> Response {
    let (nodes, routes) =
        match tokio::try_join!(nodes::live(&state.store), routing::list(&state.store)) {
            Ok(v) => v,
            Err(e) => return cluster_error(e),
        };
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|n| {
            let sessions = routes
                .iter()
                .filter(|(_, r)| r.route.node == n.name)
                .count();
            let mut v = serde_json::to_value(&n).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("sessions".into(), sessions.into());
            }
            v
        })
        .collect();
    axum::Json(json!({ "nodes": nodes })).into_response()
}

/// The live record of `name`, or the answer saying why there is none.
async fn live_node(store: &Store, name: &str) -> Result<NodeRecord, Response> {
    let nodes = nodes::live(store).await.map_err(cluster_error)?;
    nodes.into_iter().find(|n| n.name == name).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unavailable",
            format!("node {name} is not live in the cluster"),
        )
        .into_response()
    })
}

/// A session's route, settled (`moves::settle`), or 404
/// `session_not_found` as a node would answer.
async fn route_of(state: &RouterState, name: &str) -> Result<Read, Response> {
    blink_sdk::manager::names::validate(name).map_err(api)?;
    match routing::get(&state.store, name).await {
        Ok(Some(read)) => moves::settle(state, name, read).await.map_err(|r| r.0),
        Ok(None) => Err(api(blink_sdk::Error::SessionNotFound(name.to_owned()))),
        Err(e) => Err(cluster_error(e)),
    }
}

/// `POST /api/sessions/{name}/move {"to": NODE}`: the session stopped,
/// exported, imported on NODE, its route switched, its old copy removed;
/// unavailable (503 `session_moving`) only meanwhile.
async fn move_session(
    State(state): State<RouterState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let (_, body) = match json_object(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let Some(to) = body.get("to").and_then(Value::as_str) else {
        return invalid("to: required, a node name");
    };
    if body.keys().any(|k| k != "to") {
        return invalid("unknown field (only \"to\")");
    }
    let read = match route_of(&state, &name).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match moves::move_session(&state, &name, read, to).await {
        Ok(done) => axum::Json(json!({"session": name, "node": done.route.node})).into_response(),
        Err(r) => r.0,
    }
}

/// `POST /api/sessions/{name}/backup`: its export kept in the shared
/// directory, from which it is restored if its node dies.
async fn backup_session(State(state): State<RouterState>, Path(name): Path<String>) -> Response {
    let read = match route_of(&state, &name).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match moves::backup(&state, &name, read).await {
        Ok(size) => axum::Json(json!({"session": name, "size_bytes": size})).into_response(),
        Err(r) => r.0,
    }
}

async fn session_scoped(
    State(state): State<RouterState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    relay_session(&state, &name, req).await
}

async fn session_scoped_rest(
    State(state): State<RouterState>,
    Path((name, _rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    relay_session(&state, &name, req).await
}

/// Relay to the owning node; a session removed there loses its route and
/// its export (a removed session's disk is not kept anywhere).
async fn relay_session(state: &RouterState, name: &str, req: Request) -> Response {
    let read = match route_of(state, name).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let node = match live_node(&state.store, &read.route.node).await {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let removal =
        req.method() == Method::DELETE && req.uri().path() == format!("/api/sessions/{name}");
    let resp = forward(&node.name, &node.rest, req).await;
    if removal && resp.status().is_success() {
        match routing::remove_if(&state.store, name, &read).await {
            Ok(true) => {
                if let Some(exports) = &state.exports
                    && let Err(e) = exports.remove(name).await
                {
                    tracing::warn!(session = %name, error = %e, "router: removing the export of a removed session");
                }
            }
            Ok(false) => tracing::info!(session = %name, "router: route changed meanwhile; kept"),
            Err(e) => tracing::warn!(session = %name, error = %e, "router: removing the route"),
        }
    }
    resp
}

/// Read a bounded JSON object body.
async fn json_object(
    req: Request,
) -> Result<(axum::http::request::Parts, Map<String, Value>), Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_READ_BODY)
        .await
        .map_err(|_| {
            invalid(format!(
                "body: more than {MAX_READ_BODY} bytes, or unreadable"
            ))
        })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => Ok((parts, o)),
        Ok(_) => Err(invalid("body: must be a JSON object")),
        Err(e) => Err(invalid(format!("body: not JSON: {e}"))),
    }
}

/// `parts` with `body` as a JSON body.
fn rebuild(mut parts: axum::http::request::Parts, body: &Map<String, Value>) -> Request {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    parts
        .headers
        .insert(header::CONTENT_LENGTH, bytes.len().into());
    parts.headers.remove(header::TRANSFER_ENCODING);
    Request::from_parts(parts, Body::from(bytes))
}

/// MiB a body field asks for (absent: 0); 400 naming it when not a number.
fn mib(body: &Map<String, Value>, field: &str) -> Result<u64, Response> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| n.ceil() as u64)
            .ok_or_else(|| invalid(format!("{field}: must be a non-negative number"))),
    }
}

/// `POST /api/sessions`: an existing session's node opens it; a new one is
/// placed (a transaction; the loser of a race relays to the winner's node)
/// and opened there. A node that refuses a new session takes its route
/// with it. `isolation` (`"vm"`, `"namespace"`) is the router's field: only
/// nodes of that class take the session.
async fn open_session(State(state): State<RouterState>, req: Request) -> Response {
    let (parts, mut body) = match json_object(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_owned) else {
        return invalid("name: required, a string");
    };
    if let Err(e) = blink_sdk::manager::names::validate(&name) {
        return api(e);
    }
    let isolation = match body.remove("isolation") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "vm" || s == "namespace" => Some(s),
        Some(_) => return invalid("isolation: must be \"vm\" or \"namespace\""),
    };
    let request = match (mib(&body, "memory_mib"), mib(&body, "disk_mib")) {
        (Ok(memory_mib), Ok(disk_mib)) => PlacementRequest {
            memory_mib,
            disk_mib,
            isolation,
        },
        (Err(resp), _) | (_, Err(resp)) => return resp,
    };
    let warm = body.get("warm").and_then(Value::as_bool).unwrap_or(false);
    let placed = match place(&state.store, &name, &request, warm).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let read = match &placed {
        Placed::New(r) => r.clone(),
        Placed::Existing(r) => match moves::settle(&state, &name, r.clone()).await {
            Ok(r) => r,
            Err(refused) => return refused.0,
        },
    };
    let node = match live_node(&state.store, &read.route.node).await {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let resp = forward(&node.name, &node.rest, rebuild(parts, &body)).await;
    if let Placed::New(read) = &placed
        && !resp.status().is_success()
    {
        // The node refused (bad image, bad size...): nothing was made, so
        // no route stays behind.
        if let Err(e) = routing::remove_if(&state.store, &name, read).await {
            tracing::warn!(session = %name, error = %e, "router: removing a refused route");
        }
    }
    resp
}

/// The session's route, placing it when it has none.
async fn place(
    store: &Store,
    name: &str,
    request: &PlacementRequest,
    warm: bool,
) -> Result<Placed, Response> {
    if let Some(read) = routing::get(store, name).await.map_err(cluster_error)? {
        return Ok(Placed::Existing(read));
    }
    let (live, routes) =
        tokio::try_join!(nodes::live(store), routing::list(store)).map_err(cluster_error)?;
    let node = placement::choose(&live, routes.iter().map(|(_, r)| &r.route), request)
        .map_err(cluster_error)?;
    let route = Route {
        node: node.name.clone(),
        memory_mib: request.memory_mib,
        disk_mib: request.disk_mib,
        moving_to: None,
        leftover_on: None,
        warm,
    };
    let placed = routing::place(store, name, &route)
        .await
        .map_err(cluster_error)?;
    if let Placed::New(_) = &placed {
        tracing::info!(session = %name, node = %route.node, "router: session placed");
    }
    Ok(placed)
}

/// A GET of `path` on every live node, with the client's headers; each
/// node's answer as JSON, or the first failing answer unchanged.
async fn each_node(
    store: &Store,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Vec<(NodeRecord, Value)>, Response> {
    let live = nodes::live(store).await.map_err(cluster_error)?;
    let calls = live.into_iter().map(|node| {
        let headers = headers.clone();
        async move {
            let mut req = Request::new(Body::empty());
            *req.uri_mut() = path.parse().map_err(|e| unreachable(&node.name, e))?;
            *req.headers_mut() = headers;
            req.headers_mut().remove(header::CONTENT_LENGTH);
            let resp = forward(&node.name, &node.rest, req).await;
            if !resp.status().is_success() {
                return Err(resp);
            }
            let bytes = axum::body::to_bytes(resp.into_body(), MAX_LIST_BYTES)
                .await
                .map_err(|e| unreachable(&node.name, e))?;
            let value = serde_json::from_slice(&bytes).map_err(|e| unreachable(&node.name, e))?;
            Ok((node, value))
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

/// `GET /api/sessions`: every node's sessions, each with its `node`.
async fn list_sessions(State(state): State<RouterState>, req: Request) -> Response {
    let answers = match each_node(&state.store, "/api/sessions", req.headers()).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let mut sessions = Vec::new();
    for (node, mut answer) in answers {
        if let Some(Value::Array(list)) = answer.get_mut("sessions").map(Value::take) {
            for mut s in list {
                if let Value::Object(o) = &mut s {
                    o.insert("node".into(), Value::String(node.name.clone()));
                }
                sessions.push(s);
            }
        }
    }
    sessions.sort_by(|a, b| {
        let name = |v: &Value| {
            v.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        name(a).cmp(&name(b))
    });
    axum::Json(json!({ "sessions": sessions })).into_response()
}

/// `POST /api/runs`: a run in a session goes to its node; an ephemeral run
/// to the least loaded live node.
async fn create_run(State(state): State<RouterState>, req: Request) -> Response {
    let (parts, body) = match json_object(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let node = match body.get("session").and_then(Value::as_str) {
        Some(name) => match route_of(&state, name).await {
            Ok(read) => live_node(&state.store, &read.route.node).await,
            Err(resp) => Err(resp),
        },
        None => {
            let found = async {
                let (live, routes) =
                    tokio::try_join!(nodes::live(&state.store), routing::list(&state.store))?;
                placement::choose(
                    &live,
                    routes.iter().map(|(_, r)| &r.route),
                    &PlacementRequest::default(),
                )
                .cloned()
            };
            found.await.map_err(cluster_error)
        }
    };
    match node {
        Ok(node) => forward(&node.name, &node.rest, rebuild(parts, &body)).await,
        Err(resp) => resp,
    }
}

/// `GET /api/runs/{id}`: run ids are unique per node, not routed; the node
/// that knows the run answers (asked in turn).
async fn find_run(
    State(state): State<RouterState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let live = match nodes::live(&state.store).await {
        Ok(n) => n,
        Err(e) => return cluster_error(e),
    };
    let mut last = None;
    for node in live {
        let mut r = Request::new(Body::empty());
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        let resp = forward(&node.name, &node.rest, r).await;
        if resp.status() != StatusCode::NOT_FOUND {
            return resp;
        }
        last = Some(resp);
    }
    last.unwrap_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("no node knows run {id:?}"),
        )
        .into_response()
    })
}
