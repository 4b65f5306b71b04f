//! V-Hub: the BLIN protocol and the relay between sandboxes and host
//! clients (docs/VHUB.md).
//!
//! - [`frame`]: the byte layout and its codec.
//! - [`messages`]: the JSON bodies, method names and error codes.
//! - [`limits`]: what a hub, session and connection may hold.
//! - [`hub`]: connections and the routing between them.
//! - [`endpoints`]: the hub over a manager: host socket, sessions' endpoints.
//! - [`relay`]: the host half of an endpoint relayed over a program's
//!   stdin and stdout (BoxLite).
//! - [`client`]: a Rust client.

pub mod client;
pub mod endpoints;
pub mod frame;
pub mod hub;
pub mod limits;
pub mod messages;
mod outbox;
pub mod relay;
mod streams;

pub use client::{Client, ClientError, Incoming};
pub use endpoints::{HubConfig, ManagerServices, RunningHub};
pub use frame::{Frame, FrameCodec, FrameError, Kind};
pub use hub::{Hub, HubStats, Services, Subscription};
pub use limits::Limits;

#[cfg(test)]
mod hub_tests;
