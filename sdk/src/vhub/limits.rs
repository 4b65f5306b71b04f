//! What one hub, session and connection may hold (docs/VHUB.md, Limits).

use std::time::Duration;

/// The hub's limits. Every one bounds memory or work a client can cause.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Host connections at once.
    pub host_connections: usize,
    /// Sandbox connections at once, per session.
    pub sandbox_connections: usize,
    /// Open streams per connection.
    pub streams_per_connection: usize,
    /// Requests a connection may have waiting for an answer.
    pub pending_per_connection: usize,
    /// Methods a connection may register.
    pub methods_per_connection: usize,
    /// Subscriptions a host connection may hold.
    pub subscriptions_per_connection: usize,
    /// Events kept for a subscriber that reads slowly; older ones are
    /// dropped and counted in the next event's `dropped`.
    pub subscriber_queue: usize,
    /// Bytes a stream's sender may send before any credit.
    pub initial_window: u32,
    /// The most credit a stream's receiver may have outstanding.
    pub max_window: u32,
    /// Bytes queued to a connection past which requests to it are refused
    /// (`busy`) and its own reading pauses.
    pub queue_bytes: usize,
    /// Seconds a connection has to send `hello`.
    pub hello_timeout_secs: u64,
    /// Seconds a closing connection has to read what is queued to it (its
    /// error frame last) before the hub drops it unread: a peer that
    /// never reads cannot hold its connection open.
    pub close_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            host_connections: 64,
            sandbox_connections: 16,
            streams_per_connection: 64,
            pending_per_connection: 64,
            methods_per_connection: 32,
            subscriptions_per_connection: 32,
            subscriber_queue: 1024,
            initial_window: 256 * 1024,
            max_window: 1024 * 1024,
            queue_bytes: 4 * 1024 * 1024,
            hello_timeout_secs: 10,
            close_timeout_secs: 5,
        }
    }
}

impl Limits {
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_secs)
    }

    pub fn close_timeout(&self) -> Duration {
        Duration::from_secs(self.close_timeout_secs)
    }
}
