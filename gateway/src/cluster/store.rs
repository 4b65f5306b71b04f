//! The etcd client and the key layout of a cluster:
//!
//! - `<prefix>/nodes/<node>`: a node's [`NodeRecord`](super::NodeRecord),
//!   attached to the node's lease (gone when it stops renewing);
//! - `<prefix>/sessions/<name>`: a session's [`Route`](super::Route), the
//!   node that owns it.
//!
//! Every call is bounded in time; a call that fails on the transport is
//! tried again a few times (another member answers), so one etcd member
//! going away changes nothing a caller sees.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

/// What the cluster's calls fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(Box<etcd_client::Error>),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("corrupt cluster record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    NoCapacity(String),
}

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Etcd(Box::new(e))
    }
}

/// Time one etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of a call whose transport failed.
const TRIES: u32 = 4;

/// A cluster's store: the client and the prefix.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl Store {
    /// Connect to the members at `endpoints`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| ClusterError::Timeout(CALL_TIMEOUT))??;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// A clone of the client, for one call (clones share the connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn node_key(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn session_key(&self, name: &str) -> String {
        format!("{}/sessions/{name}", self.prefix)
    }

    /// The lock a move holds (under its mover's lease) while it runs.
    pub fn move_key(&self, name: &str) -> String {
        format!("{}/moves/{name}", self.prefix)
    }

    pub fn sessions_prefix(&self) -> String {
        format!("{}/sessions/", self.prefix)
    }

    /// Run `call` with a fresh client clone, bounded in time, tried again
    /// when the transport failed (a member down, a leader election).
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match tokio::time::timeout(CALL_TIMEOUT, call(self.client())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if retryable(&e) => last = Some(e.into()),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => last = Some(ClusterError::Timeout(CALL_TIMEOUT)),
            }
        }
        Err(last.unwrap_or(ClusterError::Timeout(CALL_TIMEOUT)))
    }
}

/// Whether an error is the transport's (worth another try), not an answer.
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}
