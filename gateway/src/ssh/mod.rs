//! The SSH gateway: the login name is the session name; public keys only;
//! exec and shell channels run in the session through the manager.
//!
//! - `server.rs`: [`start`] binds and accepts; [`SshServer::shutdown`]
//!   stops accepting and waits for every connection.
//! - `admission.rs`: who may connect before authenticating (MaxStartups,
//!   per-source limits, penalties), asked by the accept loop.
//! - `algorithms.rs`: the key exchanges, ciphers and MACs offered.
//! - `shutdown.rs`: the shutdown signal every task holds.
//! - `connection.rs`: one connection's life (login grace time, its
//!   source's penalty, timeouts, its part of a shutdown, its log line).
//! - `cuttable.rs`: a socket the login grace time cuts (nodes and routers).
//! - `handler.rs`: russh's callbacks, each turned into a call on `Conn`.
//! - `requests.rs`: `Conn` and what channel requests do; `auth.rs`: keys,
//!   certificates, revocation and the auth hook (`auth/`).
//! - `forwarding.rs`: `ssh -L`/`-D` channel opens and `ssh -R` listeners,
//!   checked by the SDK's rules; `tunnel.rs`: one forwarded connection on
//!   its channel.
//! - `channel.rs`: one channel running a program; `sftp_audit.rs`: what
//!   an sftp channel's client does, read from its bytes, for the audit log.
//! - `compat.rs`: what differs by client, keyed on its version string.

pub(crate) mod admission;
pub(crate) mod algorithms;
mod auth;
mod channel;
mod compat;
pub(crate) mod connection;
pub(crate) mod cuttable;
mod forwarding;
mod handler;
mod requests;
pub(crate) mod server;
mod sftp_audit;
mod shutdown;
mod tunnel;

pub(crate) use self::auth::hook::parse_url as parse_hook_url;
pub(crate) use self::auth::{algorithm_allowed, relayed};
pub use self::connection::SHUTDOWN_REASON;
pub use self::server::{SshServer, start};
