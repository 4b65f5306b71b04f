//! A session's network: its egress policy and its SSH forwarding switches;
//! read them, change them (a running session's next connection or forward
//! follows the change at once). docs/NETWORK.md.

use axum::extract::State;
use blink_sdk::network::NetworkPolicy;
use blink_sdk::types::ForwardingPolicy;

use super::AppState;
use super::error::{ApiJson, ApiPath, ApiResult, ErrorResponse};

/// A session's egress policy and counters.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/network",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "`{policy, egress}`", body = serde_json::Value),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<blink_sdk::types::NetworkInfo>> {
    Ok(axum::Json(state.manager.session_info(&name)?.network))
}

/// Replace a session's egress policy: `{"mode": "none"}` or `{"mode":
/// "proxy", "allow": ["api.openai.com", "*.anthropic.com:443"], "deny": []}`.
#[utoipa::path(
    put,
    path = "/api/sessions/{name}/network",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    request_body(content = serde_json::Value, description = "The policy"),
    responses(
        (status = 200, description = "The new `{policy, egress}`", body = serde_json::Value),
        (status = 400, description = "A bad rule (named)", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(policy): ApiJson<NetworkPolicy>,
) -> ApiResult<axum::Json<blink_sdk::types::NetworkInfo>> {
    state.manager.set_network(&name, policy).await?;
    Ok(axum::Json(state.manager.session_info(&name)?.network))
}

/// A session's SSH forwarding switches (`{"local": true, "remote": true}`).
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/forwarding",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "`{local, remote}`", body = serde_json::Value),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn get_forwarding(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<ForwardingPolicy>> {
    Ok(axum::Json(
        state.manager.session_info(&name)?.network.forwarding,
    ))
}

/// Set which SSH forwards a session takes: `local` (`ssh -L`, `-D`, `-W`)
/// and `remote` (`ssh -R`); an absent field is on. The server's `[ssh]
/// allow_forwarding` and the login key's options may still refuse.
#[utoipa::path(
    put,
    path = "/api/sessions/{name}/forwarding",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    request_body(content = serde_json::Value, description = "`{local, remote}`"),
    responses(
        (status = 200, description = "The new `{local, remote}`", body = serde_json::Value),
        (status = 400, description = "A bad field (named)", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn put_forwarding(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(policy): ApiJson<ForwardingPolicy>,
) -> ApiResult<axum::Json<ForwardingPolicy>> {
    state.manager.set_forwarding(&name, policy).await?;
    Ok(axum::Json(
        state.manager.session_info(&name)?.network.forwarding,
    ))
}
