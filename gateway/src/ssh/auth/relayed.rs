//! Logins relayed by a cluster's router (docs/SCALE.md). The router
//! authenticates the user (the client proves it holds its key there), then
//! logs in here with a router key (`[cluster] router_keys`, trusted for
//! nothing else) under a user name carrying the session, the client's
//! address and the client's key or certificate. This node then decides on
//! that key exactly as on a direct login: its session keys, admin keys,
//! CAs, revocation lists, hook and key options, with the client's address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use blink_sdk::manager::keys;
use russh::keys::{Certificate, HashAlg, PublicKey};

/// What a relayed login names.
#[derive(Debug)]
pub(crate) struct Relayed {
    pub session: String,
    pub peer: IpAddr,
    pub identity: Identity,
}

/// The client's key or certificate, as the router saw it proven.
#[derive(Debug)]
pub(crate) enum Identity {
    Key(PublicKey),
    Cert(Box<Certificate>),
}

/// Longest relayed user name accepted (a certificate with an RSA key and
/// many principals fits).
const MAX_RELAYED: usize = 16 * 1024;

/// The user name a router logs in with: `SESSION`, the client's address
/// and its key (or certificate) in OpenSSH's one-line form, one per line.
pub(crate) fn encode(session: &str, peer: IpAddr, identity: &Identity) -> Option<String> {
    let line = match identity {
        Identity::Key(k) => PublicKey::new(k.key_data().clone(), "").to_openssh().ok()?,
        Identity::Cert(c) => c.to_openssh().ok()?,
    };
    Some(format!("{session}\n{peer}\n{line}"))
}

/// The relayed login a user name carries; `None` when it is not one.
pub(crate) fn decode(user: &str) -> Option<Relayed> {
    if user.len() > MAX_RELAYED {
        return None;
    }
    let mut lines = user.split('\n');
    let (session, peer, line) = (lines.next()?, lines.next()?, lines.next()?);
    if lines.next().is_some() {
        return None;
    }
    let peer: IpAddr = peer.parse().ok()?;
    let kind = line.split(' ').next()?;
    let identity = if kind.contains("-cert-v01@openssh.com") {
        Identity::Cert(Box::new(Certificate::from_openssh(line).ok()?))
    } else {
        Identity::Key(PublicKey::from_openssh(line).ok()?)
    };
    Some(Relayed {
        session: session.to_owned(),
        peer,
        identity,
    })
}

/// The routers' keys, read from their file at every check (a key removed
/// stops working at once).
pub(crate) struct RouterKeys {
    path: PathBuf,
}

impl RouterKeys {
    pub(crate) fn new(path: &Path) -> Self {
        Self { path: path.into() }
    }

    /// Whether `key` is a router's.
    pub(crate) fn holds(&self, key: &PublicKey) -> bool {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match keys::read_file(&self.path) {
            Ok(list) => list.iter().any(|k| k.fingerprint == fingerprint),
            Err(e) => {
                tracing::warn!(error = %e, "cluster router keys unreadable: relayed logins refused");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_user_name_round_trips_and_junk_is_not_one() {
        let seed: [u8; 32] = rand::random();
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed),
        );
        let public = key.public_key().clone();
        let peer: IpAddr = "192.0.2.7".parse().expect("ip");
        let user = encode("s1", peer, &Identity::Key(public.clone())).expect("encode");
        let back = decode(&user).expect("decode");
        assert_eq!(back.session, "s1");
        assert_eq!(back.peer, peer);
        match back.identity {
            Identity::Key(k) => assert_eq!(k.key_data(), public.key_data()),
            Identity::Cert(_) => panic!("a key came back as a certificate"),
        }
        for junk in [
            "s1",
            "s1\nnot-an-ip\nssh-ed25519 AAAA",
            "s1\n1.2.3.4\nssh-ed25519 !!",
            "a\n1.2.3.4\nx\ny",
        ] {
            assert!(decode(junk).is_none(), "{junk:?}");
        }
    }
}
