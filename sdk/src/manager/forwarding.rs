//! Forwarding: TCP connections between a surface's client and a session's
//! own loopback, inside the sandbox's network namespace and never the
//! host's (SSH `-L`, `-D` and `-R`).
//!
//! The rules live here, once. [`ForwardRules`] decides, before anything is
//! made, whether a connection may go to `host:port`
//! ([`ForwardRules::connect`]) or a listener may take `host:port`
//! ([`ForwardRules::listen`]): the server's switch, the login key's options
//! (`no-port-forwarding`, `restrict`, `permitopen=`, `permitlisten=`), and
//! where. `localhost`, `127.0.0.1` and `::1` all mean the session's own
//! loopback (127.0.0.1 inside the sandbox), never the host's. Any other
//! host is a connection out of the session, and goes out only as its
//! egress policy allows, through the same decision as its proxy
//! (`network::dial`): by name before any lookup, by address after,
//! counted and logged as egress. Listeners are on the session's loopback
//! only.
//!
//! The manager's calls take only what the rules let through
//! ([`ConnectTarget`], [`ListenTarget`]), then ask the session's own
//! switches ([`ForwardingPolicy`]). They resolve the session, start it if
//! it is stopped (for its loopback), and hold it active ([`ActivityGuard`])
//! for as long as the connection or the listener lives.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::keys::KeyOptions;
use super::sessions::{ActivityGuard, Slot};
use super::{Manager, lock};
use crate::error::{Error, Result};
use crate::escape::Escaped;
use crate::network::{Compiled, DialError, Egress, EgressLog, Mode};
pub use crate::types::ForwardingPolicy;

/// Longest host name a client may ask to connect to (DNS's limit).
const MAX_HOST: usize = 253;

/// The names of the session's loopback a connection may go to: each is
/// 127.0.0.1 inside the sandbox (`localhost` in any case).
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The addresses a listener may ask for (`""` and `*` are OpenSSH's "all
/// addresses"): a sandbox has no interface but its loopback, so each is
/// 127.0.0.1 inside it, as OpenSSH's sshd listens on loopback whatever
/// the client asks while `GatewayPorts` is off.
pub const LISTEN_HOSTS: [&str; 5] = ["localhost", "127.0.0.1", "", "*", "0.0.0.0"];

/// What a forward is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ForwardRules<'a> {
    /// The server's switch (SSH: `[ssh] allow_forwarding`).
    pub enabled: bool,
    /// The options of the key the client logged in with.
    pub key: &'a KeyOptions,
}

/// Where the rules let a client connect: a port on the session's
/// loopback, or a host outside that the session's egress policy decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectTarget {
    Loopback { port: u16 },
    Outside { host: String, port: u16 },
}

impl ConnectTarget {
    pub fn port(&self) -> u16 {
        match self {
            Self::Loopback { port } | Self::Outside { port, .. } => *port,
        }
    }
}

/// A port on a session's loopback that the rules let a client listen on
/// (0: any free one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenTarget {
    port: u16,
}

impl ListenTarget {
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn refused(message: String) -> Error {
    Error::NotPermitted(message)
}

/// A host as a client named it, made safe for a message.
fn shown(host: &str) -> String {
    format!("\"{}\"", Escaped::limit(host, 64))
}

impl ForwardRules<'_> {
    /// The server's switch, then the key's `no-port-forwarding`/`restrict`.
    fn check_allowed(&self) -> Result<()> {
        if !self.enabled {
            return Err(refused(
                "port forwarding is turned off on this server".into(),
            ));
        }
        if !self.key.port_forwarding_allowed() {
            return Err(refused(
                "the login key does not allow port forwarding (no-port-forwarding or restrict)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether a connection may go to `host:port`, as the client named
    /// them: the port on the session's loopback it reaches.
    pub fn connect(&self, host: &str, port: u32) -> Result<ConnectTarget> {
        self.check_allowed()?;
        let port = match u16::try_from(port) {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "port {port} is not a TCP port (1-65535)"
                )));
            }
        };
        if !self.key.permits_open(host, port) {
            return Err(refused(format!(
                "{}:{port} is not in the login key's permitopen= list",
                shown(host)
            )));
        }
        if is_loopback_host(host) {
            return Ok(ConnectTarget::Loopback { port });
        }
        if host.is_empty() || host.len() > MAX_HOST || host.chars().any(|c| c.is_control()) {
            return Err(Error::InvalidArgument(format!(
                "{} is not a host name or address",
                shown(host)
            )));
        }
        Ok(ConnectTarget::Outside {
            host: host.to_owned(),
            port,
        })
    }

    /// Whether a listener may take `host:port` (port 0: any free one), as
    /// the client asked: the port on the session's loopback to listen on.
    pub fn listen(&self, host: &str, port: u32) -> Result<ListenTarget> {
        self.check_allowed()?;
        let Ok(port) = u16::try_from(port) else {
            return Err(Error::InvalidArgument(format!(
                "port {port} is not a TCP port (0-65535)"
            )));
        };
        if !self.key.permits_listen(host, port) {
            return Err(refused(format!(
                "{}:{port} is not in the login key's permitlisten= list",
                shown(host)
            )));
        }
        if !LISTEN_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(refused(format!(
                "cannot listen at {}: listeners are on the session's loopback, 127.0.0.1 \
                 (ask for localhost, 127.0.0.1 or no address)",
                shown(host)
            )));
        }
        Ok(ListenTarget { port })
    }
}

/// `localhost` (any case), `127.0.0.1` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    LOOPBACK_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// A forwarded TCP connection: to or from a session's loopback, or out of
/// it by its egress policy. The session stays active (the idle policy
/// leaves it running) while `lease` lives.
#[derive(Debug)]
pub struct Forwarded {
    pub stream: TcpStream,
    /// The other end: inside the sandbox, or the outside address.
    pub peer: SocketAddr,
    pub lease: ActivityGuard,
    /// For a connection out of the session: its egress log line, to be
    /// finished with the bytes carried.
    pub egress: Option<EgressLog>,
}

/// A listener on a session's loopback. The session stays active while it
/// lives, and each connection it accepts holds it active too.
#[derive(Debug)]
pub struct ForwardListener {
    listener: TcpListener,
    port: u16,
    slot: Arc<Slot>,
    _lease: ActivityGuard,
}

impl ForwardListener {
    /// The port it listens on (the one allocated when 0 was asked for).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next connection a program of the session makes to it.
    pub async fn accept(&self) -> Result<Forwarded> {
        let (stream, peer) = self
            .listener
            .accept()
            .await
            .map_err(|e| Error::io("accepting a forwarded connection", e))?;
        Ok(Forwarded {
            stream,
            peer,
            lease: ActivityGuard::hold(self.slot.clone()),
            egress: None,
        })
    }
}

impl Manager {
    /// Change which SSH forwards a session takes; applies to the next
    /// forward asked for (open ones are left alone, as a policy change
    /// leaves open egress connections).
    pub async fn set_forwarding(&self, name: &str, policy: ForwardingPolicy) -> Result<()> {
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        let mut record = lock(&slot.record).clone();
        record.forwarding = policy;
        self.store.save(&record)?;
        *lock(&slot.record) = record;
        tracing::info!(session = %name, local = policy.local, remote = policy.remote, "forwarding policy changed");
        Ok(())
    }

    /// A session's forwarding switches, checked before anything is made.
    fn forwarding_of(&self, name: &str) -> Result<(Arc<Slot>, ForwardingPolicy)> {
        let slot = self.slot(name)?;
        let policy = lock(&slot.record).forwarding;
        Ok((slot, policy))
    }

    /// A connection for a client: to a port on a session's own loopback (a
    /// stopped session is started for it), or to a host outside by the
    /// session's egress policy.
    pub async fn forward_connect(&self, name: &str, target: ConnectTarget) -> Result<Forwarded> {
        let (slot, policy) = self.forwarding_of(name)?;
        if !policy.local {
            return Err(refused(format!(
                "session {name} does not take local forwarding (its forwarding.local is off)"
            )));
        }
        let port = match target {
            ConnectTarget::Loopback { port } => port,
            ConnectTarget::Outside { host, port } => {
                return self.forward_out(name, slot, &host, port).await;
            }
        };
        let (lease, _, record) = self.hold_running(name).await?;
        let stream = self.runtime.connect_loopback(&record.box_id, port).await?;
        let peer = stream
            .peer_addr()
            .map_err(|e| Error::io("a forwarded connection's address", e))?;
        Ok(Forwarded {
            stream,
            peer,
            lease,
            egress: None,
        })
    }

    /// A connection out of the session to `host:port`, decided by its
    /// egress policy as its proxy decides (the sandbox need not run).
    async fn forward_out(
        &self,
        name: &str,
        slot: Arc<Slot>,
        host: &str,
        port: u16,
    ) -> Result<Forwarded> {
        let lease = ActivityGuard::hold(slot.clone());
        let network = lock(&slot.record).network.clone();
        if network.mode == Mode::None {
            return Err(refused(format!(
                "{} is outside the session, and its network policy is \"none\" (loopback only)",
                shown(host)
            )));
        }
        let (_, policy) = tokio::sync::watch::channel(Arc::new(Compiled::new(&network)?));
        let egress = Egress {
            session: name.to_owned(),
            policy,
            resolver: self.resolver.clone(),
            stats: slot.egress_stats.clone(),
        };
        match egress.dial(host, port, "ssh-forward").await {
            Ok(out) => Ok(Forwarded {
                stream: out.stream,
                peer: out.addr,
                lease,
                egress: Some(out.log),
            }),
            Err(e @ DialError::Denied(_)) => Err(refused(e.to_string())),
            Err(DialError::Unreachable(why)) => Err(Error::io(
                format!("forwarding to {}:{port}", shown(host)),
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why),
            )),
        }
    }

    /// A listener on a port of a session's own loopback (what its programs
    /// connect to there reaches the caller). A stopped session is started
    /// for it.
    pub async fn forward_listen(
        &self,
        name: &str,
        target: ListenTarget,
    ) -> Result<ForwardListener> {
        let (_, policy) = self.forwarding_of(name)?;
        if !policy.remote {
            return Err(refused(format!(
                "session {name} does not take remote forwarding (its forwarding.remote is off)"
            )));
        }
        let (lease, slot, record) = self.hold_running(name).await?;
        let listener = self
            .runtime
            .listen_loopback(&record.box_id, target.port)
            .await?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("a forwarding listener's address", e))?
            .port();
        Ok(ForwardListener {
            listener,
            port,
            slot,
            _lease: lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(key: &KeyOptions) -> ForwardRules<'_> {
        ForwardRules { enabled: true, key }
    }

    #[test]
    fn connections_reach_the_sessions_loopback_only() {
        let key = KeyOptions::default();
        for host in ["localhost", "LocalHost", "127.0.0.1", "::1"] {
            assert_eq!(rules(&key).connect(host, 8080).unwrap().port(), 8080);
        }
        // Every other host is outside: the egress policy decides it.
        for host in [
            "example.com",
            "127.0.0.2",
            "0.0.0.0",
            "10.0.0.1",
            "[::1]",
            "localhost.",
        ] {
            assert_eq!(
                rules(&key).connect(host, 80).unwrap(),
                ConnectTarget::Outside {
                    host: host.into(),
                    port: 80
                }
            );
        }
        for host in ["", "a\0b", &"a".repeat(254)] {
            let e = rules(&key).connect(host, 80).unwrap_err();
            assert_eq!(e.code(), "invalid_argument", "{host}");
        }
        for port in [0, 65536, u32::MAX] {
            assert_eq!(
                rules(&key).connect("localhost", port).unwrap_err().code(),
                "invalid_argument"
            );
        }
        // Client text in a message is escaped.
        let e = rules(&key).connect("a\nb", 1).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn listeners_take_the_sessions_loopback() {
        let key = KeyOptions::default();
        for host in ["localhost", "127.0.0.1", "", "*", "0.0.0.0"] {
            assert_eq!(rules(&key).listen(host, 0).unwrap().port(), 0);
        }
        for host in ["::1", "::", "10.0.0.1", "example.com"] {
            assert_eq!(
                rules(&key).listen(host, 80).unwrap_err().code(),
                "not_permitted"
            );
        }
        assert!(rules(&key).listen("localhost", 70000).is_err());
    }

    #[test]
    fn the_switch_and_the_keys_options_decide_first() {
        let key = KeyOptions::default();
        let off = ForwardRules {
            enabled: false,
            key: &key,
        };
        assert!(off.connect("localhost", 80).is_err());
        assert!(off.listen("localhost", 80).is_err());
        for options in ["no-port-forwarding", "restrict", "restrict,pty"] {
            let key = KeyOptions::parse(options).unwrap();
            let e = rules(&key).connect("localhost", 80).unwrap_err();
            assert!(e.to_string().contains("no-port-forwarding"), "{e}");
            assert!(rules(&key).listen("localhost", 80).is_err());
        }
        let key = KeyOptions::parse("restrict,port-forwarding").unwrap();
        assert!(rules(&key).connect("localhost", 80).is_ok());

        let key = KeyOptions::parse(r#"permitopen="localhost:8080",permitlisten="localhost:9000""#)
            .unwrap();
        assert!(rules(&key).connect("localhost", 8080).is_ok());
        let e = rules(&key).connect("127.0.0.1", 8080).unwrap_err();
        assert!(e.to_string().contains("permitopen"), "{e}");
        assert!(rules(&key).connect("localhost", 8081).is_err());
        assert!(rules(&key).listen("localhost", 9000).is_ok());
        assert!(rules(&key).listen("localhost", 0).is_err());
        // permitopen narrows; the egress policy still decides outside.
        let key = KeyOptions::parse(r#"permitopen="example.com:80""#).unwrap();
        assert!(matches!(
            rules(&key).connect("example.com", 80).unwrap(),
            ConnectTarget::Outside { .. }
        ));
        assert!(rules(&key).connect("localhost", 80).is_err());
    }
}
