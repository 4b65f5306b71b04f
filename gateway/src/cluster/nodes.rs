//! A node's record in etcd, under a lease the node keeps alive: a node
//! that stops renewing (crashed, cut off) drops out when the lease expires,
//! and routers stop placing sessions on it.

use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::store::{ClusterError, Store};

/// What a node takes. Zero means "no limit" for memory and disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Sessions placed on it at most.
    pub sessions: u64,
    /// MiB of session memory limits placed on it at most (0: no limit).
    pub memory_mib: u64,
    /// MiB of session disks placed on it at most (0: no limit).
    pub disk_mib: u64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            sessions: 100,
            memory_mib: 0,
            disk_mib: 0,
        }
    }
}

/// `<prefix>/nodes/<name>`: how to reach a node and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// `host:port` of its REST API.
    pub rest: String,
    /// `host:port` of its SSH server.
    pub ssh: String,
    /// Its SSH host key's `SHA256:` fingerprint: routers check it on
    /// their links (etcd is the cluster's root of trust).
    #[serde(default)]
    pub host_key: String,
    /// The runtime it runs sessions in (`local`, `boxlite`).
    pub runtime: String,
    /// `vm` (a micro-VM per session) or `namespace` (bubblewrap).
    pub isolation: String,
    pub capacity: Capacity,
    /// Shutting down: no new sessions are placed here, while its lease
    /// still holds its sessions until it has exported them and left.
    #[serde(default)]
    pub draining: bool,
}

impl NodeRecord {
    /// The isolation class of a runtime.
    pub fn isolation_of(runtime: &str) -> &'static str {
        if runtime == "boxlite" {
            "vm"
        } else {
            "namespace"
        }
    }
}

/// Every live node (whose lease holds), by name.
pub async fn live(store: &Store) -> Result<Vec<NodeRecord>, ClusterError> {
    let prefix = store.nodes_prefix();
    let resp = store
        .call(|mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let mut nodes = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let node: NodeRecord =
            serde_json::from_slice(kv.value()).map_err(|e| ClusterError::Corrupt {
                key,
                reason: e.to_string(),
            })?;
        nodes.push(node);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// A node's registration: its record renewed until [`Registration::leave`].
pub struct Registration {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

/// What the registration's task is asked to do.
enum Command {
    /// Mark the record draining; answered once it is written (or failed).
    Drain(oneshot::Sender<()>),
    Leave,
}

/// Register `record` under a lease of `ttl` and keep it alive. When the
/// lease is lost anyway (etcd unreachable longer than the TTL), the record
/// is written again under a new lease once etcd answers.
pub async fn register(
    store: Store,
    record: NodeRecord,
    ttl: Duration,
) -> Result<Registration, ClusterError> {
    let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(10);
    let mut record = record;
    let mut value = encode(&record)?;
    let key = store.node_key(&record.name);
    let lease = put_under_new_lease(&store, &key, &value, ttl_secs).await?;
    tracing::info!(node = %record.name, lease, ttl_secs, "cluster node registered");
    let (commands, mut asked) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        let mut lease = lease;
        let period = Duration::from_millis((ttl_secs as u64 * 1000 / 3).max(200));
        loop {
            tokio::select! {
                command = asked.recv() => match command {
                    Some(Command::Drain(done)) => {
                        record.draining = true;
                        match encode(&record) {
                            Ok(v) => value = v,
                            Err(e) => tracing::warn!(error = %e, "cluster: draining record"),
                        }
                        match put(&store, &key, &value, lease).await {
                            Ok(()) => tracing::info!(node = %record.name, "cluster node draining: no new sessions placed here"),
                            Err(e) => tracing::warn!(error = %e, "cluster: marking the node draining failed"),
                        }
                        let _ = done.send(());
                        continue;
                    }
                    Some(Command::Leave) | None => break,
                },
                _ = tokio::time::sleep(period) => {}
            }
            match renew(&store, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(node = %record.name, "cluster lease expired; registering again");
                    match put_under_new_lease(&store, &key, &value, ttl_secs).await {
                        Ok(l) => lease = l,
                        Err(e) => tracing::warn!(error = %e, "cluster registration failed"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cluster lease renewal failed"),
            }
        }
        // Leaving on purpose: the record goes now, not at expiry.
        let _ = store
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await;
        tracing::info!(node = %record.name, "cluster node left");
    });
    Ok(Registration { commands, task })
}

impl Registration {
    /// Mark the node draining (placement passes it over) while its lease,
    /// and so its sessions' routes, still hold: the node can then stop and
    /// export its sessions before anyone restores them elsewhere.
    pub async fn drain(&self) {
        let (done, written) = oneshot::channel();
        if self.commands.send(Command::Drain(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Stop renewing and remove the record.
    pub async fn leave(self) {
        let _ = self.commands.send(Command::Leave).await;
        let _ = self.task.await;
    }
}

fn encode(record: &NodeRecord) -> Result<Vec<u8>, ClusterError> {
    serde_json::to_vec(record).map_err(|e| ClusterError::Corrupt {
        key: record.name.clone(),
        reason: e.to_string(),
    })
}

/// Write `value` at `key` under `lease`.
async fn put(store: &Store, key: &str, value: &[u8], lease: i64) -> Result<(), ClusterError> {
    store
        .call(|mut c| {
            let (key, value) = (key.to_owned(), value.to_vec());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
    Ok(())
}

async fn put_under_new_lease(
    store: &Store,
    key: &str,
    value: &[u8],
    ttl_secs: i64,
) -> Result<i64, ClusterError> {
    let grant = store
        .call(|mut c| async move { c.lease_grant(ttl_secs, None).await })
        .await?;
    let lease = grant.id();
    put(store, key, value, lease).await?;
    Ok(lease)
}

/// One keep-alive round trip; false when etcd says the lease is gone.
async fn renew(store: &Store, lease: i64) -> Result<bool, ClusterError> {
    store
        .call(|mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(resp) => Ok(resp.ttl() > 0),
                None => Ok(false),
            }
        })
        .await
}
