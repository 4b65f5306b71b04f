//! The algorithms the gateway offers: what ssh-audit passes without a
//! warning (no finite-field Diffie-Hellman, ETM MACs only, strict key
//! exchange against Terrapin, an ed25519 host key), most preferred first;
//! and compression only once authenticated, as OpenSSH's sshd.

use std::borrow::Cow;

use russh::keys::Algorithm;
use russh::{Preferred, cipher, kex, mac};

/// Key exchange: hybrid ML-KEM first (OpenSSH 9.9+), then X25519 for older
/// clients (Debian 12's OpenSSH 9.2 has no ML-KEM, and russh has no
/// sntrup761), then the markers for extension negotiation (RFC 8308) and
/// strict key exchange (CVE-2023-48795), which russh keeps in this list.
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// [`KEX`] without the classical exchanges.
const KEX_POST_QUANTUM: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// AEAD ciphers first; CTR modes (MAC'd with ETM) for the rest.
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// Encrypt-then-MAC only (ssh-audit warns on MAC-then-encrypt).
const MACS: &[mac::Name] = &[mac::HMAC_SHA256_ETM, mac::HMAC_SHA512_ETM];

/// The host key is ed25519 (`hostkey.rs`).
const HOST_KEYS: &[Algorithm] = &[Algorithm::Ed25519];

/// The server's preferences; `post_quantum_only` drops X25519.
pub(crate) fn preferred(post_quantum_only: bool) -> Preferred {
    Preferred {
        kex: Cow::Borrowed(if post_quantum_only {
            KEX_POST_QUANTUM
        } else {
            KEX
        }),
        key: Cow::Borrowed(HOST_KEYS),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(MACS),
        compression: Cow::Owned(
            Preferred::DEFAULT
                .compression
                .iter()
                .filter(|c| c.as_ref() != PRE_AUTH_ZLIB)
                .copied()
                .collect(),
        ),
    }
}

/// Compression from the first packet on: the server would inflate what an
/// unauthenticated client sends. `zlib@openssh.com` (after authentication)
/// and `none` stay.
const PRE_AUTH_ZLIB: &str = "zlib";

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: AsRef<str>>(list: &[T]) -> Vec<String> {
        list.iter().map(|n| n.as_ref().to_string()).collect()
    }

    #[test]
    fn no_finite_field_dh_no_mac_then_encrypt_strict_kex_on() {
        for pq in [false, true] {
            let p = preferred(pq);
            let kex = names(&p.kex);
            assert!(
                !kex.iter().any(|k| k.starts_with("diffie-hellman")),
                "{kex:?}"
            );
            assert!(!kex.iter().any(|k| k.starts_with("ecdh-sha2")), "{kex:?}");
            assert_eq!(kex[0], "mlkem768x25519-sha256");
            assert!(kex.contains(&"kex-strict-s-v00@openssh.com".to_string()));
            assert!(kex.contains(&"ext-info-s".to_string()));
            assert_eq!(kex.iter().any(|k| k.starts_with("curve25519")), !pq);
            let macs = names(&p.mac);
            assert!(
                macs.iter().all(|m| m.ends_with("-etm@openssh.com")),
                "{macs:?}"
            );
            let ciphers = names(&p.cipher);
            assert!(
                ciphers
                    .iter()
                    .all(|c| c.ends_with("-ctr") || c.contains("gcm") || c.contains("poly1305")),
                "{ciphers:?}"
            );
            assert_eq!(p.key.as_ref(), &[Algorithm::Ed25519]);
            let compression = names(&p.compression);
            assert!(compression.contains(&"none".to_string()), "{compression:?}");
            assert!(
                !compression.contains(&"zlib".to_string()),
                "{compression:?}"
            );
        }
    }
}
