//! The transactions of a move (and of a restore after a node's death,
//! which is a move whose source is gone). Each state change is one etcd
//! transaction, so a crash between any two leaves the route naming one
//! node, and what the crash left behind is found and undone from the
//! route alone:
//!
//! 1. [`mark`]: the route gets `moving_to` and the move's lock
//!    (`<prefix>/moves/<name>`, under the mover's lease) is created; the
//!    session is unavailable from now on (routers answer 503).
//! 2. the mover stops and exports the session, imports it on the target;
//! 3. [`switch`]: the route names the target, with `leftover_on` the
//!    source; the lock goes.
//! 4. the mover removes the source's copy, then [`clear_leftover`].
//!
//! A mover that dies between 1 and 3 loses its lease, so its lock goes:
//! whoever reads the route next sees `moving_to` without a lock and
//! [`roll_back`]s (the session is where it was; the target's partial copy
//! becomes its `leftover_on`). Dying between 3 and 4 leaves `leftover_on`
//! too (the session is where it went). A leftover is removed by the next
//! reader of the route, then cleared. Nothing is ever removed before a
//! transaction has made it a leftover, so a reader that saw an old state
//! can never remove the copy in use.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::routing::{Read, Route};
use super::store::{ClusterError, Store};

fn encode(key: &str, route: &Route) -> Result<Vec<u8>, ClusterError> {
    serde_json::to_vec(route).map_err(|e| ClusterError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Run `txn`; the revision it wrote at, or None when its compares failed.
async fn commit(store: &Store, txn: Txn) -> Result<Option<i64>, ClusterError> {
    let resp = store
        .call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
}

/// Step 1: mark `seen` as moving to `to`, with the lock under `lease`.
/// None when the route changed or another move holds the lock.
pub async fn mark(
    store: &Store,
    name: &str,
    seen: &Read,
    to: &str,
    lease: i64,
) -> Result<Option<Read>, ClusterError> {
    let key = store.session_key(name);
    let lock = store.move_key(name);
    let mut route = seen.route.clone();
    route.moving_to = Some(to.to_owned());
    let txn = Txn::new()
        .when([
            Compare::mod_revision(key.clone(), CompareOp::Equal, seen.mod_revision),
            Compare::create_revision(lock.clone(), CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put(key.clone(), encode(&key, &route)?, None),
            TxnOp::put(
                lock,
                to.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
    Ok(commit(store, txn).await?.map(|mod_revision| Read {
        route,
        mod_revision,
    }))
}

/// Step 3: the route names the target, the source's copy is a leftover,
/// the lock goes. None when the route changed (the move was rolled back).
pub async fn switch(
    store: &Store,
    name: &str,
    marked: &Read,
) -> Result<Option<Read>, ClusterError> {
    let Some(to) = marked.route.moving_to.clone() else {
        return Ok(None);
    };
    let key = store.session_key(name);
    let mut route = Route::settled(&to, &marked.route);
    route.leftover_on = Some(marked.route.node.clone());
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            marked.mod_revision,
        )])
        .and_then([
            TxnOp::put(key.clone(), encode(&key, &route)?, None),
            TxnOp::delete(store.move_key(name), None),
        ]);
    Ok(commit(store, txn).await?.map(|mod_revision| Read {
        route,
        mod_revision,
    }))
}

/// Undo a mark: the route names the source again, with the target's
/// (partial) copy as its leftover, removed like any other. `own` is the
/// mover giving up (its lock goes too); otherwise the lock must be gone
/// (its mover is dead). None when the route changed meanwhile (the move
/// finished: nothing is undone, nothing removed).
pub async fn roll_back(
    store: &Store,
    name: &str,
    marked: &Read,
    own: bool,
) -> Result<Option<Read>, ClusterError> {
    let key = store.session_key(name);
    let lock = store.move_key(name);
    let mut route = Route::settled(&marked.route.node, &marked.route);
    route.leftover_on = marked.route.moving_to.clone();
    let mut compares = vec![Compare::mod_revision(
        key.clone(),
        CompareOp::Equal,
        marked.mod_revision,
    )];
    if !own {
        compares.push(Compare::create_revision(lock.clone(), CompareOp::Equal, 0));
    }
    let txn = Txn::new().when(compares).and_then([
        TxnOp::put(key.clone(), encode(&key, &route)?, None),
        TxnOp::delete(lock, None),
    ]);
    Ok(commit(store, txn).await?.map(|mod_revision| Read {
        route,
        mod_revision,
    }))
}

/// Step 4's end: the leftover copy is gone.
pub async fn clear_leftover(
    store: &Store,
    name: &str,
    seen: &Read,
) -> Result<Option<Read>, ClusterError> {
    let key = store.session_key(name);
    let mut route = seen.route.clone();
    route.leftover_on = None;
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            seen.mod_revision,
        )])
        .and_then([TxnOp::put(key.clone(), encode(&key, &route)?, None)]);
    Ok(commit(store, txn).await?.map(|mod_revision| Read {
        route,
        mod_revision,
    }))
}

/// Whether a live mover holds the session's move lock.
pub async fn locked(store: &Store, name: &str) -> Result<bool, ClusterError> {
    let lock = store.move_key(name);
    let resp = store
        .call(|mut c| {
            let lock = lock.clone();
            async move { c.get(lock, None).await }
        })
        .await?;
    Ok(!resp.kvs().is_empty())
}

/// A lease for a move's lock, renewed until the returned guard drops
/// (then revoked).
pub async fn lease(store: &Store, ttl_secs: i64) -> Result<MoveLease, ClusterError> {
    let grant = store
        .call(|mut c| async move { c.lease_grant(ttl_secs, None).await })
        .await?;
    let id = grant.id();
    let keeper_store = store.clone();
    let period = std::time::Duration::from_millis((ttl_secs.max(1) as u64 * 1000 / 3).max(200));
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let renewed = keeper_store
                .call(|mut c| async move {
                    let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "move lease renewal failed");
            }
        }
    });
    Ok(MoveLease {
        id,
        task,
        store: store.clone(),
    })
}

/// A move's lease; revoked when dropped.
pub struct MoveLease {
    pub id: i64,
    task: tokio::task::JoinHandle<()>,
    store: Store,
}

impl Drop for MoveLease {
    fn drop(&mut self) {
        self.task.abort();
        let (store, id) = (self.store.clone(), self.id);
        tokio::spawn(async move {
            let _ = store
                .call(|mut c| async move { c.lease_revoke(id).await })
                .await;
        });
    }
}
