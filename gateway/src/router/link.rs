//! A router's internal link to a node: an SSH connection (russh client)
//! that checks the node's host key against its record in etcd and logs in
//! with the router key under a relayed user name
//! (`ssh/auth/relayed.rs`): the node decides on the client's key itself.
//! The `forwarded-tcpip` channels the node opens on it (connections to an
//! `ssh -R` listener) are handed to the connection owning the link
//! through a bounded queue (`remote_forward.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelOpenFailure;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::mpsc;

use super::remote_forward::{self, ForwardedOpen};

use crate::cluster::NodeRecord;
use crate::ssh::relayed::{self, Identity};

/// The link's key exchanges, in order (all among the node's).
const LINK_KEX: &[russh::kex::Name] = &[
    russh::kex::CURVE25519,
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

/// The link's ciphers, in order (all among the node's).
const LINK_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
];

/// Time to connect and log in to a node.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks the node's host key; hands the node's `forwarded-tcpip` opens
/// on.
struct NodeKey {
    node: String,
    fingerprint: String,
    forwarded: mpsc::Sender<ForwardedOpen>,
}

impl russh::client::Handler for NodeKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        if seen != self.fingerprint {
            tracing::warn!(node = %self.node, expected = %self.fingerprint, seen, "router: node host key differs from its record: link refused");
        }
        Ok(seen == self.fingerprint)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<russh::client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut russh::client::Session,
    ) -> Result<(), Self::Error> {
        let open = ForwardedOpen {
            channel,
            connected_address: connected_address.to_owned(),
            connected_port,
            originator_address: originator_address.to_owned(),
            originator_port,
            reply,
        };
        hand_on(&self.forwarded, open).await;
        Ok(())
    }
}

/// Queue a forwarded open for the connection owning the link, never
/// waiting (the link's loop runs this): refused when the queue is full or
/// the connection has gone.
async fn hand_on(queue: &mpsc::Sender<ForwardedOpen>, open: ForwardedOpen) {
    if let Err(e) = queue.try_send(open) {
        let why = match e {
            mpsc::error::TrySendError::Full(_) => ChannelOpenFailure::ResourceShortage,
            mpsc::error::TrySendError::Closed(_) => ChannelOpenFailure::ConnectFailed,
        };
        e.into_inner().reply.reject(why).await;
    }
}

/// A logged-in link to a node.
pub struct Link {
    handle: Arc<russh::client::Handle<NodeKey>>,
    /// The node's `forwarded-tcpip` opens, until the connection takes
    /// them (at its first `ssh -R` request).
    forwarded: Option<mpsc::Receiver<ForwardedOpen>>,
}

/// Credits the node's channels on a link: its data is granted window
/// again only once the client took it (`window_follows_consumption`).
/// Weak: the link ends with its connection (`Link` is dropped), whatever
/// relay tasks are still winding down.
#[derive(Clone)]
pub struct NodeCredit(std::sync::Weak<russh::client::Handle<NodeKey>>);

impl NodeCredit {
    /// `bytes` of channel `id`'s data were passed on to the client.
    pub async fn consumed(&self, id: russh::ChannelId, bytes: u32) {
        if let Some(handle) = self.0.upgrade() {
            let _ = handle.consumed(id, bytes).await;
        }
    }
}

impl Link {
    /// What credits the node's channels on this link.
    pub fn credit(&self) -> NodeCredit {
        NodeCredit(Arc::downgrade(&self.handle))
    }

    /// The node's `forwarded-tcpip` opens (once: `None` after).
    pub fn take_forwarded(&mut self) -> Option<mpsc::Receiver<ForwardedOpen>> {
        self.forwarded.take()
    }

    /// A `tcpip-forward` request to the node (`ssh -R`): the port it
    /// bound when `port` is 0, else 0. `Err(RequestDenied)` when the node
    /// refused.
    pub async fn tcpip_forward(&self, address: &str, port: u32) -> Result<u32, russh::Error> {
        self.handle.tcpip_forward(address, port).await
    }

    /// A `cancel-tcpip-forward` request to the node.
    pub async fn cancel_tcpip_forward(&self, address: &str, port: u32) -> Result<(), russh::Error> {
        self.handle.cancel_tcpip_forward(address, port).await
    }

    /// A session channel on the node.
    pub async fn open_session(&self) -> Result<russh::Channel<russh::client::Msg>, russh::Error> {
        self.handle.channel_open_session().await
    }

    /// A `direct-tcpip` channel on the node (`ssh -L`, `-D`, `-W`), which
    /// decides on it by its own rules.
    pub async fn open_direct_tcpip(
        &self,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
    ) -> Result<russh::Channel<russh::client::Msg>, russh::Error> {
        self.handle
            .channel_open_direct_tcpip(host, port, originator, originator_port)
            .await
    }
}

/// Open a link to `node` for `session`, relaying the client at `peer`
/// with `identity`. `Ok(None)`: the node refused the login.
pub async fn open(
    node: &NodeRecord,
    session: &str,
    peer: IpAddr,
    identity: &Identity,
    router_key: &Arc<PrivateKey>,
) -> Result<Option<Link>, String> {
    let user =
        relayed::encode(session, peer, identity).ok_or("the client's key cannot be encoded")?;
    let config = Arc::new(russh::client::Config {
        nodelay: true,
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 32768,
        // The node's data is granted window only once the client took it
        // (patches/russh): a client that does not read holds back its own
        // channel, not the link.
        window_follows_consumption: true,
        preferred: russh::Preferred {
            // Both ends are Blink's, on the operator's network: X25519
            // first (one link per login: its exchange is on every
            // connection's path), AES-GCM first (AES-NI where the CPU has
            // it, cheaper than ChaCha20-Poly1305 per byte relayed).
            kex: std::borrow::Cow::Borrowed(LINK_KEX),
            key: std::borrow::Cow::Borrowed(&[russh::keys::Algorithm::Ed25519]),
            cipher: std::borrow::Cow::Borrowed(LINK_CIPHERS),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    });
    let (forwarded, opens) = mpsc::channel(remote_forward::QUEUED_OPENS);
    let handler = NodeKey {
        node: node.name.clone(),
        fingerprint: node.host_key.clone(),
        forwarded,
    };
    let key = PrivateKeyWithHashAlg::new(router_key.clone(), None);
    let attempt = async {
        let mut handle = russh::client::connect(config, node.ssh.as_str(), handler)
            .await
            .map_err(|e| e.to_string())?;
        let auth = handle
            .authenticate_publickey(user, key)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(auth.success().then_some(Link {
            handle: Arc::new(handle),
            forwarded: Some(opens),
        }))
    };
    tokio::time::timeout(LINK_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no login within {LINK_TIMEOUT:?}"))?
}
