//! The `[cluster]` table: where etcd is, and what this node offers.

use serde::Deserialize;

/// `[cluster]`: absent on a single host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client URLs, e.g. `["http://10.0.0.1:2379", ...]`.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster's records (default `/blink`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This node's name, unique in the cluster (default: the host name).
    #[serde(default)]
    pub node_name: Option<String>,
    /// The host routers reach this node at; the port is the one bound
    /// (default `127.0.0.1`).
    #[serde(default = "default_advertise")]
    pub advertise_host: String,
    /// Seconds a node's record outlives its last renewal (default 10).
    #[serde(default = "default_ttl")]
    pub lease_ttl_secs: u64,
    /// What this node takes.
    #[serde(default)]
    pub capacity: super::Capacity,
    /// On a node: an authorized_keys file of the routers' keys. A login
    /// with one of them is relayed by a router for a user it authenticated
    /// (`ssh/auth/relayed.rs`); these keys reach nothing else.
    #[serde(default)]
    pub router_keys: Option<std::path::PathBuf>,
    /// On a router: its private key (OpenSSH format) for those logins.
    #[serde(default)]
    pub router_key: Option<std::path::PathBuf>,
    /// A directory shared by all routers (NFS, a volume) where sessions'
    /// last exports are kept (`<name>.boxlite`), written by moves and
    /// backups, read to restore a session whose node died. On a node, with
    /// `export_on_stop`, the same directory (mounted there too).
    #[serde(default)]
    pub export_dir: Option<std::path::PathBuf>,
    /// Instead of `export_dir`: an S3-compatible bucket for the exports.
    #[serde(default)]
    pub export_s3: Option<super::export_store::S3Config>,
    /// On a node: write a cold session's export to the export store
    /// whenever it stops after a change (`exports.rs`), so failover
    /// restores what its last stop left.
    #[serde(default)]
    pub export_on_stop: bool,
    /// On a node with `export_on_stop`: how long its shutdown may spend
    /// stopping its running cold sessions and exporting those changed
    /// (`exports.rs`, `Exporter::finish`), while its lease still holds
    /// them. Leave the process manager's stop timeout room for it.
    #[serde(default = "default_shutdown_export")]
    pub shutdown_export_secs: u64,
}

fn default_shutdown_export() -> u64 {
    60
}

fn default_prefix() -> String {
    "/blink".into()
}

fn default_advertise() -> String {
    "127.0.0.1".into()
}

fn default_ttl() -> u64 {
    10
}

impl ClusterConfig {
    /// Checks what serde cannot: endpoints given, a sane TTL, a prefix
    /// that is a path.
    pub fn validate(&self) -> Result<(), String> {
        if self.etcd_endpoints.is_empty() {
            return Err("[cluster] etcd_endpoints is empty".into());
        }
        if !(1..=3600).contains(&self.lease_ttl_secs) {
            return Err("[cluster] lease_ttl_secs must be 1..=3600".into());
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err("[cluster] prefix must start with / and not end with one".into());
        }
        if !(1..=3600).contains(&self.shutdown_export_secs) {
            return Err("[cluster] shutdown_export_secs must be 1..=3600".into());
        }
        if self.export_dir.is_some() && self.export_s3.is_some() {
            return Err("[cluster] export_dir and [cluster.export_s3]: choose one".into());
        }
        if self.export_on_stop && self.export_dir.is_none() && self.export_s3.is_none() {
            return Err("[cluster] export_on_stop needs export_dir or [cluster.export_s3]".into());
        }
        if let Some(s3) = &self.export_s3
            && s3.bucket.is_empty()
        {
            return Err("[cluster.export_s3] bucket is empty".into());
        }
        if let Some(name) = &self.node_name {
            blink_sdk::manager::names::validate(name)
                .map_err(|e| format!("[cluster] node_name: {e}"))?;
        }
        Ok(())
    }

    /// The shared export store, if one is configured.
    pub fn export_store(&self) -> Result<Option<super::export_store::ExportStore>, String> {
        use super::export_store::ExportStore;
        match (&self.export_dir, &self.export_s3) {
            (Some(dir), _) => ExportStore::directory(dir).map(Some),
            (None, Some(s3)) => ExportStore::s3(s3).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The node's name: configured, else the host's name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_ascii_lowercase())
                .unwrap_or_else(|_| "node".into())
        })
    }
}
