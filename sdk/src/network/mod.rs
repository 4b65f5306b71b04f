//! Networking for agents (docs/NETWORK.md): a sandbox has no route out;
//! a session with a policy gets an egress proxy on its own loopback, run by
//! Blink on the host side, which decides every destination by the policy.
//!
//! - [`policy`]: rules, and the decision for a name or an address
//! - [`resolve`]: names to addresses (the operator's table, then the host)
//! - [`dial`]: one egress connection: decided, made, counted, logged
//! - [`proxy`]: the HTTP/SOCKS5 proxy inside every sandbox with a policy

pub mod dial;
pub mod policy;
pub mod proxy;
pub mod resolve;

pub use dial::{DialError, Egress, EgressLog, EgressStats, Outbound};
pub use policy::{Compiled, Mode, NetworkPolicy, validate};
pub use proxy::PROXY_PORT;
pub use resolve::Resolver;
