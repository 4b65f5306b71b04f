//! The JSON bodies of BLIN frames (docs/VHUB.md).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `hello`, the client's first frame: the versions it speaks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub versions: Vec<u8>,
    /// What the client is, for logs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// Which side of the hub a connection is on, decided by the endpoint it
/// arrived on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Host,
    Sandbox,
}

/// `welcome`, the hub's answer to `hello`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Welcome {
    pub version: u8,
    pub side: Side,
    /// The session a sandbox connection belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Bytes either side of a stream may send before any credit.
    pub initial_window: u32,
    pub max_payload: u32,
}

/// `request` (and a notification on channel 0, which gets no answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    #[serde(default)]
    pub params: Value,
    /// The session a host client addresses; absent on sandbox connections
    /// (the hub knows their session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// `response`: the result of the request on the same channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub result: Value,
}

/// `error`: on a request's channel, that request failed; on channel 0,
/// the connection is closed after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// `stream_open`: a byte stream to the side that registered `method`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamOpen {
    pub method: String,
    #[serde(default)]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// An event as subscribers get it (the `event` notification, and one
/// server-sent event on REST).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub session: String,
    /// The session's event number, from 1, counted by the hub.
    pub seq: u64,
    pub topic: String,
    pub data: Value,
    /// Events this subscriber lost just before this one (it read too
    /// slowly); 0 normally.
    #[serde(default)]
    pub dropped: u64,
}

/// The names of the hub's own methods.
pub mod methods {
    /// Sandbox: emit an event to the session's subscribers.
    pub const EVENT_EMIT: &str = "event.emit";
    /// Both: register a method (sandbox: for host callers of its session;
    /// host: for the named session's sandbox).
    pub const RPC_REGISTER: &str = "rpc.register";
    pub const RPC_UNREGISTER: &str = "rpc.unregister";
    /// Host: receive a session's events as `event` notifications.
    pub const SESSION_SUBSCRIBE: &str = "session.subscribe";
    pub const SESSION_UNSUBSCRIBE: &str = "session.unsubscribe";
    /// Sandbox: snapshot its own session (when the session's policy allows).
    pub const SESSION_CHECKPOINT: &str = "session.checkpoint";
    /// Host: the hub's counters.
    pub const HUB_STATS: &str = "hub.stats";
    /// The notification carrying an [`super::Event`] to a subscriber.
    pub const EVENT: &str = "event";
}

/// Stable error codes of error frames.
pub mod codes {
    pub const INVALID_ARGUMENT: &str = "invalid_argument";
    pub const BAD_JSON: &str = "bad_json";
    pub const UNEXPECTED_FRAME: &str = "unexpected_frame";
    pub const NO_SUCH_METHOD: &str = "no_such_method";
    pub const METHOD_TAKEN: &str = "method_taken";
    pub const NOT_PERMITTED: &str = "not_permitted";
    pub const LIMIT: &str = "limit_exceeded";
    pub const FLOW_CONTROL: &str = "flow_control";
    pub const PEER_GONE: &str = "peer_gone";
    pub const BUSY: &str = "busy";
    pub const SESSION_NOT_FOUND: &str = "session_not_found";
    pub const HELLO_TIMEOUT: &str = "hello_timeout";
    pub const VERSION: &str = "unsupported_version";
}

/// Method and topic names: short, printable, no spaces.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("{what} must be 1 to 128 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
    {
        return Err(format!("{what} {name:?} may hold only [A-Za-z0-9._/:-]"));
    }
    Ok(())
}
