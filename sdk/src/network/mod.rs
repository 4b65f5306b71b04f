//! Networking for agents (docs/NETWORK.md): a sandbox has no route out;
//! a session with a policy gets an egress proxy on its own loopback, run by
//! Blink on the host side, which decides every destination by the policy.
//!
//! - [`policy`]: rules, and the decision for a name or an address
//! - [`resolve`]: names to addresses (the operator's table, then the host)
//! - [`proxy`]: the HTTP/SOCKS5 proxy and its counters

pub mod policy;
pub mod proxy;
pub mod resolve;

pub use policy::{Compiled, Mode, NetworkPolicy, validate};
pub use proxy::{Egress, EgressStats, PROXY_PORT};
pub use resolve::Resolver;
