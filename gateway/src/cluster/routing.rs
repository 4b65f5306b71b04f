//! `<prefix>/sessions/<name>`: which node owns a session. Written only by
//! transactions: a name is placed when no record exists (so two front
//! doors racing on one name place it once), and removed only if the record
//! is still the one the caller read.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use super::store::{ClusterError, Store};

/// A session's routing record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The node that owns the session.
    pub node: String,
    /// MiB of memory limit counted against the node (0: not asked).
    #[serde(default)]
    pub memory_mib: u64,
    /// MiB of disk counted against the node (0: not asked).
    #[serde(default)]
    pub disk_mib: u64,
    /// A move to this node is under way (`moves.rs`): the session is
    /// unavailable until it ends, or is rolled back if its mover is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
    /// A copy left on this node by a move that switched but did not
    /// remove it yet: removed by the next one who reads the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leftover_on: Option<String>,
    /// Opened warm: after its node dies it is reported lost (its last
    /// export is older than its state), not restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
}

impl Route {
    /// A settled route to `node` with `like`'s size.
    pub fn settled(node: &str, like: &Route) -> Self {
        Self {
            node: node.to_owned(),
            memory_mib: like.memory_mib,
            disk_mib: like.disk_mib,
            moving_to: None,
            leftover_on: None,
            warm: like.warm,
        }
    }
}

/// A record as read, with the revision a later change compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub route: Route,
    pub mod_revision: i64,
}

/// What [`place`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// This call wrote the record.
    New(Read),
    /// A record was there already (another front door won, or the session
    /// existed): it stands.
    Existing(Read),
}

impl Placed {
    pub fn read(&self) -> &Read {
        match self {
            Placed::New(r) | Placed::Existing(r) => r,
        }
    }
}

pub(super) fn decode(key: &[u8], value: &[u8], mod_revision: i64) -> Result<Read, ClusterError> {
    let route = serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })?;
    Ok(Read {
        route,
        mod_revision,
    })
}

/// The session's record, if it has one.
pub async fn get(store: &Store, name: &str) -> Result<Option<Read>, ClusterError> {
    let key = store.session_key(name);
    let resp = store
        .call(|mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })
        .await?;
    resp.kvs()
        .first()
        .map(|kv| decode(kv.key(), kv.value(), kv.mod_revision()))
        .transpose()
}

/// Every record, by session name.
pub async fn list(store: &Store) -> Result<Vec<(String, Read)>, ClusterError> {
    let prefix = store.sessions_prefix();
    let resp = store
        .call(|mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
        out.push((name, decode(kv.key(), kv.value(), kv.mod_revision())?));
    }
    Ok(out)
}

/// Place `name` on `route.node` in one transaction: written if no record
/// exists, else the existing record is returned untouched.
pub async fn place(store: &Store, name: &str, route: &Route) -> Result<Placed, ClusterError> {
    let key = store.session_key(name);
    let value = serde_json::to_vec(route).map_err(|e| ClusterError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    let resp = store
        .call(|mut c| {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            async move { c.txn(txn).await }
        })
        .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    if resp.succeeded() {
        return Ok(Placed::New(Read {
            route: route.clone(),
            mod_revision: revision,
        }));
    }
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op
            && let Some(kv) = get.kvs().first()
        {
            return Ok(Placed::Existing(decode(
                kv.key(),
                kv.value(),
                kv.mod_revision(),
            )?));
        }
    }
    // Removed between the compare and the get cannot happen in one
    // transaction; an empty answer is etcd misbehaving.
    Err(ClusterError::Corrupt {
        key,
        reason: "transaction failed without a record".into(),
    })
}

/// Remove the record if it is still `seen` (same revision); false when it
/// changed or went meanwhile (a move or another removal won).
pub async fn remove_if(store: &Store, name: &str, seen: &Read) -> Result<bool, ClusterError> {
    let key = store.session_key(name);
    let revision = seen.mod_revision;
    let resp = store
        .call(|mut c| {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(key.clone(), None)]);
            async move { c.txn(txn).await }
        })
        .await?;
    Ok(resp.succeeded())
}
