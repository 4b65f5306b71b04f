//! What every HTTP request leaves behind: its metrics (by route template,
//! method and status, never by raw path, so clients cannot grow the label
//! set) and, for requests that change something, one audit line
//! (`blink::rest::request`: caller, method, route, path, status, time).
//! `GET /metrics` renders the process's metrics.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blink_sdk::escape::Escaped;
use blink_sdk::types::SessionState;

use super::AppState;
use super::error::ApiError;
use crate::metrics;

/// Count and time the request; log it if it changes something.
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| {
            let unix = req
                .extensions()
                .get::<super::local_socket::LocalSocket>()
                .is_some();
            if unix { "unix" } else { "local" }.into()
        });
    let resp = next.run(req).await;
    let status = resp.status();
    let took = started.elapsed();
    let method_label = method_label(&method);
    ::metrics::counter!(
        metrics::HTTP_REQUESTS_TOTAL,
        "route" => route.clone(),
        "method" => method_label,
        "status" => status.as_u16().to_string(),
    )
    .increment(1);
    ::metrics::histogram!(
        metrics::HTTP_REQUEST_SECONDS,
        "route" => route.clone(),
        "method" => method_label,
    )
    .record(took.as_secs_f64());
    if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        tracing::info!(
            target: "blink::rest::request",
            peer = %peer,
            method = %method_label,
            route = %route,
            path = %Escaped::limit(&path, 256),
            status = status.as_u16(),
            duration_ms = took.as_millis() as u64,
            "rest request"
        );
    }
    resp
}

/// Known methods by name; anything else as one label.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Metrics in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "product",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "A token is set and was not given"),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = metrics::handle() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder owns this process",
        )
        .into_response();
    };
    // Gauges read at scrape time.
    let sessions = state.manager.list_sessions();
    let running = sessions
        .iter()
        .filter(|s| s.state == SessionState::Running)
        .count();
    ::metrics::gauge!(metrics::SESSIONS, "state" => "running").set(running as f64);
    ::metrics::gauge!(metrics::SESSIONS, "state" => "stopped")
        .set((sessions.len() - running) as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
