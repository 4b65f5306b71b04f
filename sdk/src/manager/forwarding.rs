//! Forwarding: TCP connections between a surface's client and a session's
//! own loopback, inside the sandbox's network namespace and never the
//! host's (SSH `-L`, `-D` and `-R`).
//!
//! The rules live here, once. [`ForwardRules`] decides, before anything is
//! made, whether a connection may go to `host:port`
//! ([`ForwardRules::connect`]) or a listener may take `host:port`
//! ([`ForwardRules::listen`]): the server's switch, the login key's options
//! (`no-port-forwarding`, `restrict`, `permitopen=`, `permitlisten=`), and
//! where. Only the session's own loopback is reached: `localhost`,
//! `127.0.0.1` and `::1` all mean 127.0.0.1 inside the sandbox. Any other
//! host is refused; reaching other hosts is the egress policy's business,
//! not forwarding's.
//!
//! The manager's calls take only what the rules let through
//! ([`ConnectTarget`], [`ListenTarget`]). They resolve the session, start
//! it if it is stopped, and hold it active ([`ActivityGuard`]) for as long
//! as the connection or the listener lives.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::Manager;
use super::keys::KeyOptions;
use super::sessions::{ActivityGuard, Slot};
use crate::error::{Error, Result};
use crate::escape::Escaped;

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

/// A port on a session's loopback that the rules let a client connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectTarget {
    port: u16,
}

impl ConnectTarget {
    pub fn port(&self) -> u16 {
        self.port
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
        if !is_loopback_host(host) {
            return Err(refused(format!(
                "{} is outside the session: forwarding reaches only the session's own loopback \
                 (localhost, 127.0.0.1, ::1)",
                shown(host)
            )));
        }
        Ok(ConnectTarget { port })
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

/// A TCP connection to or from a session's loopback. The session stays
/// active (the idle policy leaves it running) while `lease` lives.
#[derive(Debug)]
pub struct Forwarded {
    pub stream: TcpStream,
    /// The other end, inside the sandbox.
    pub peer: SocketAddr,
    pub lease: ActivityGuard,
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
        })
    }
}

impl Manager {
    /// A connection to a port on a session's own loopback. A stopped
    /// session is started for it.
    pub async fn forward_connect(&self, name: &str, target: ConnectTarget) -> Result<Forwarded> {
        let (lease, _, record) = self.hold_running(name).await?;
        let stream = self
            .runtime
            .connect_loopback(&record.box_id, target.port)
            .await?;
        let peer = stream
            .peer_addr()
            .map_err(|e| Error::io("a forwarded connection's address", e))?;
        Ok(Forwarded {
            stream,
            peer,
            lease,
        })
    }

    /// A listener on a port of a session's own loopback (what its programs
    /// connect to there reaches the caller). A stopped session is started
    /// for it.
    pub async fn forward_listen(
        &self,
        name: &str,
        target: ListenTarget,
    ) -> Result<ForwardListener> {
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
        for host in [
            "example.com",
            "127.0.0.2",
            "0.0.0.0",
            "10.0.0.1",
            "[::1]",
            "localhost.",
            "",
        ] {
            let e = rules(&key).connect(host, 80).unwrap_err();
            assert_eq!(e.code(), "not_permitted", "{host}");
            assert!(e.to_string().contains("outside the session"), "{e}");
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
        // permitopen cannot widen where forwarding reaches.
        let key = KeyOptions::parse(r#"permitopen="example.com:80""#).unwrap();
        let e = rules(&key).connect("example.com", 80).unwrap_err();
        assert!(e.to_string().contains("outside the session"), "{e}");
    }
}
