//! One request relayed to a node: the method, path, query, headers and
//! body as the client sent them (streamed both ways), `Host` set to the
//! node, and the node's answer back unchanged, errors included. A
//! WebSocket handshake (`Upgrade`) becomes a byte relay between the two
//! upgraded connections once the node answers 101.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use crate::rest::error::ApiError;

/// Time to reach a node and get its answer's head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers of one hop only, not passed on (RFC 9110 §7.6.1); `Upgrade`
/// and `Connection: upgrade` are kept for a WebSocket handshake.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The node could not be reached: 502, naming it.
pub fn unreachable(node: &str, why: impl std::fmt::Display) -> Response {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_unreachable",
        format!("node {node} did not answer: {why}"),
    )
    .into_response()
}

/// Relay `req` to the node at `addr` (`host:port`) and its answer back.
pub async fn forward(node: &str, addr: &str, mut req: Request) -> Response {
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    if !upgrade {
        parts.headers.remove(header::CONNECTION);
        parts.headers.remove(header::UPGRADE);
    }
    match HeaderValue::from_str(addr) {
        Ok(host) => {
            parts.headers.insert(header::HOST, host);
        }
        Err(e) => return unreachable(node, e),
    }
    // Origin-form target on the node's connection.
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    parts.uri = match target.parse() {
        Ok(uri) => uri,
        Err(e) => return unreachable(node, e),
    };
    let request = Request::from_parts(parts, body);
    let sent = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "router: node connection ended");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)
    })
    .await;
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return unreachable(node, e),
        Err(_) => return unreachable(node, format!("no answer within {CONNECT_TIMEOUT:?}")),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let node_upgrade = hyper::upgrade::on(&mut response);
        let node_name = node.to_owned();
        tokio::spawn(async move {
            let (client, node) = match tokio::join!(client_upgrade, node_upgrade) {
                (Ok(c), Ok(n)) => (c, n),
                (c, n) => {
                    tracing::debug!(node = %node_name, client_ok = c.is_ok(), node_ok = n.is_ok(), "router: upgrade failed");
                    return;
                }
            };
            let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
        });
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(body))
}
