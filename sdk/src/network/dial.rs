//! One egress connection of a session: its destination decided by the
//! session's policy (by name before any lookup, by address after),
//! connected from the host side, counted, and logged in one line when it
//! ends. The proxy (`proxy.rs`) and SSH forwarding to other hosts
//! (`manager/forwarding.rs`) both go out through here, so a destination
//! is decided the same way whichever door a program or a client uses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::policy::{Compiled, Refusal};
use super::resolve::Resolver;
use crate::escape::Escaped;

/// How long a connection to an allowed destination may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of one session's egress, reported in session info.
#[derive(Debug, Default)]
pub struct EgressStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

impl EgressStats {
    pub fn snapshot(&self) -> crate::types::EgressCounters {
        crate::types::EgressCounters {
            allowed_connections: self.allowed.load(Ordering::Relaxed),
            denied_connections: self.denied.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// What one session's egress needs.
#[derive(Debug, Clone)]
pub struct Egress {
    pub session: String,
    /// The current policy: a change applies to the next connection.
    pub policy: watch::Receiver<Arc<Compiled>>,
    pub resolver: Arc<Resolver>,
    pub stats: Arc<EgressStats>,
}

/// Why no connection was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// The policy refuses the destination (nothing was looked up or sent
    /// for a refused name).
    Denied(Refusal),
    /// Allowed, but the destination did not answer.
    Unreachable(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Denied(why) => write!(f, "denied by the session's network policy: {why}"),
            Self::Unreachable(why) => f.write_str(why),
        }
    }
}

/// An open egress connection and its log line.
#[derive(Debug)]
pub struct Outbound {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub log: EgressLog,
}

/// The one log line of an allowed connection, with its bytes: written by
/// [`EgressLog::finish`], or on drop with none counted.
#[derive(Debug)]
pub struct EgressLog {
    line: Line,
    stats: Arc<EgressStats>,
    done: bool,
}

impl EgressLog {
    /// The connection ended having carried these bytes (to the
    /// destination, from it): count them and write the line.
    pub fn finish(mut self, sent: u64, received: u64) {
        self.stats.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.stats
            .bytes_received
            .fetch_add(received, Ordering::Relaxed);
        self.line.write(true, "", sent, received);
        self.done = true;
    }
}

impl Drop for EgressLog {
    fn drop(&mut self) {
        if !self.done {
            self.line
                .write(true, "ended before any byte was counted", 0, 0);
        }
    }
}

/// What every egress log line names.
#[derive(Debug)]
struct Line {
    session: String,
    /// Which door: `proxy` or `ssh-forward`.
    via: &'static str,
    host: String,
    port: u16,
    addr: Option<SocketAddr>,
    started: Instant,
}

impl Line {
    fn write(&self, allowed: bool, reason: &str, sent: u64, received: u64) {
        tracing::info!(
            target: "blink::egress",
            session = %self.session,
            via = %self.via,
            dest = %Escaped::limit(&self.host, 256),
            port = self.port,
            addr = %self.addr.map(|a| a.ip().to_string()).unwrap_or_default(),
            allowed,
            reason = %Escaped(reason),
            bytes_sent = sent,
            bytes_received = received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "egress connection"
        );
    }
}

impl Egress {
    /// Decide `host:port` (a name, an address, or `[v6]`) by the current
    /// policy and connect to it; `via` names the door for the log.
    pub async fn dial(
        &self,
        host: &str,
        port: u16,
        via: &'static str,
    ) -> Result<Outbound, DialError> {
        let mut line = Line {
            session: self.session.clone(),
            via,
            host: host.to_owned(),
            port,
            addr: None,
            started: Instant::now(),
        };
        let addr = match self.decide(host, port).await {
            Ok(addr) => addr,
            Err(why) => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                crate::metrics::egress(via, "denied");
                line.write(false, &why, 0, 0);
                return Err(DialError::Denied(why));
            }
        };
        line.addr = Some(addr);
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        let why = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                crate::metrics::egress(via, "allowed");
                return Ok(Outbound {
                    stream,
                    addr,
                    log: EgressLog {
                        line,
                        stats: self.stats.clone(),
                        done: false,
                    },
                });
            }
            Ok(Err(e)) => format!("cannot reach {addr}: {e}"),
            Err(_) => format!("cannot reach {addr}: timed out"),
        };
        crate::metrics::egress(via, "unreachable");
        line.write(true, &why, 0, 0);
        Err(DialError::Unreachable(why))
    }

    /// The name first (no lookup for a refused one), then the address.
    async fn decide(&self, host: &str, port: u16) -> Result<SocketAddr, Refusal> {
        let policy = self.policy.borrow().clone();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host_addrs = self.resolver.host_addrs();
        if let Ok(ip) = host.parse::<IpAddr>() {
            policy.check_addr(ip, port, false, false, host_addrs)?;
            return Ok(SocketAddr::new(ip, port));
        }
        policy.check_name(host, port)?;
        let (ip, trusted) = self.resolver.resolve(host, port).await?;
        policy.check_addr(ip, port, true, trusted, host_addrs)?;
        Ok(SocketAddr::new(ip, port))
    }
}
