//! Many hosts behind one front door (docs/SCALE.md): the cluster's state
//! in etcd. `config.rs` the `[cluster]` table; `store.rs` the etcd client
//! and the key layout; `nodes.rs` a node's record under its lease (and the
//! task keeping it alive); `placement.rs` which node takes a new session;
//! `routing.rs` the `session → node` records, written by one transaction
//! each so two front doors never place one name twice; `moves.rs` a move's
//! transactions; `export_store.rs` where exports are kept (a directory or
//! an S3-compatible bucket); `exports.rs` a node's automatic exports on
//! stop.
//!
//! Nothing here runs when no `[cluster]` is configured: a single host needs
//! no etcd.

pub mod config;
pub mod export_store;
pub mod exports;
pub mod moves;
pub mod nodes;
pub mod placement;
pub mod routing;
pub mod store;

pub use config::ClusterConfig;
pub use nodes::{Capacity, NodeRecord};
pub use placement::PlacementRequest;
pub use routing::Route;
pub use store::{ClusterError, Store};

/// Join the cluster as a node: connect to etcd and register this node's
/// record (the REST and SSH addresses bound, advertised under
/// `advertise_host`) under a lease kept alive until `leave`.
pub async fn join(
    config: &ClusterConfig,
    rest: std::net::SocketAddr,
    ssh: std::net::SocketAddr,
    host_key: &str,
    runtime: &str,
) -> Result<nodes::Registration, ClusterError> {
    let store = Store::connect(&config.etcd_endpoints, &config.prefix).await?;
    let host = &config.advertise_host;
    let record = NodeRecord {
        name: config.node_name(),
        rest: format!("{host}:{}", rest.port()),
        ssh: format!("{host}:{}", ssh.port()),
        host_key: host_key.to_owned(),
        runtime: runtime.to_owned(),
        isolation: NodeRecord::isolation_of(runtime).to_owned(),
        capacity: config.capacity,
        draining: false,
    };
    nodes::register(
        store,
        record,
        std::time::Duration::from_secs(config.lease_ttl_secs),
    )
    .await
}
