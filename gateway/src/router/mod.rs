//! The front door (`blink-server --role router`, docs/SCALE.md): stateless,
//! any number of replicas, the cluster's state read from etcd on every
//! request. `rest.rs` the REST API (session routes relayed, new sessions
//! placed, lists merged); `proxy.rs` one request relayed to a node;
//! `ssh.rs` the SSH server relaying each login's channels to the session's
//! node over `link.rs`, an internal SSH link logged in with the router key
//! (`relay.rs` one relayed channel, `remote_forward.rs` `ssh -R`).

mod link;
pub mod moves;
pub mod proxy;
mod relay;
mod remote_forward;
pub mod rest;
pub mod ssh;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::cluster::Store;

/// A running router.
pub struct RouterServer {
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Bind `listen` and serve. Prints `http listening on ADDR` on stdout once
/// bound, as a node does.
pub async fn start(
    store: Store,
    listen: SocketAddr,
    token: Option<String>,
    cluster: &crate::cluster::ClusterConfig,
) -> anyhow::Result<RouterServer> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the router's HTTP API to {listen}"))?;
    let local_addr = listener.local_addr().context("HTTP listener address")?;
    let state = rest::RouterState {
        store,
        token: token.map(Arc::from),
        ttl: i64::try_from(cluster.lease_ttl_secs).unwrap_or(10),
        exports: cluster
            .export_store()
            .map_err(anyhow::Error::msg)
            .context("the router's export store")?,
    };
    let app = rest::app(state.clone());
    let (shutdown, mut stop) = watch::channel(false);
    tokio::spawn(moves::sweep(
        state,
        std::time::Duration::from_secs(cluster.lease_ttl_secs.clamp(1, 10)),
        stop.clone(),
    ));
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "router HTTP server failed");
        }
    });
    println!("http listening on {local_addr}");
    tracing::info!(addr = %local_addr, "router HTTP API listening");
    Ok(RouterServer {
        local_addr,
        shutdown,
        task,
    })
}

impl RouterServer {
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = self.task.await;
    }
}
