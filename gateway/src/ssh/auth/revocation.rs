//! Revoked keys and certificates (`[ssh] revoked_keys`), as OpenSSH's
//! `RevokedKeys`: a binary KRL (`ssh-keygen -k`, read by `krl.rs`) or a
//! text file. A revoked key is refused whether it logs in by itself
//! (authorized_keys) or inside a certificate; a certificate is refused
//! when its serial or key id is revoked, or its CA key is.
//!
//! The text form takes the lines of an `ssh-keygen -k` specification, and
//! plain public keys:
//!
//! ```text
//! # comments and blank lines are skipped
//! ssh-ed25519 AAAA... lost-laptop     a public key (also "key:", "sha1:" or
//!                                     "sha256:" and the key, as ssh-keygen)
//! hash: SHA256:lZS2BotsH4t...         a key by its fingerprint
//! serial: 42                          certificates by serial, of any trusted CA
//! serial: 100-199                     a range of serials
//! id: alice@example.com               certificates by key id, of any trusted CA
//! ```
//!
//! A line that is none of these makes the whole file invalid, so a typo
//! can never un-revoke anything; an invalid or unreadable list refuses
//! every login, as sshd does.

use std::collections::HashSet;

use base64::Engine as _;
use russh::keys::ssh_encoding::Encode as _;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Certificate, PublicKey};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use super::krl;

/// Certificates revoked under one CA (or every CA).
#[derive(Debug, Clone, Default)]
pub struct CertRule {
    /// The CA key's wire blob; `None`: any CA.
    pub ca: Option<Vec<u8>>,
    pub serials: Vec<Serials>,
    pub ids: HashSet<String>,
}

/// Revoked serial numbers.
#[derive(Debug, Clone)]
pub enum Serials {
    /// From the first to the second, both included.
    Range(u64, u64),
    /// Bit N (counted from the least significant end of `bits`, a
    /// big-endian number) revokes serial `offset + N`.
    Bitmap { offset: u64, bits: Vec<u8> },
}

impl Serials {
    fn contains(&self, serial: u64) -> bool {
        match self {
            Self::Range(lo, hi) => (*lo..=*hi).contains(&serial),
            Self::Bitmap { offset, bits } => {
                let Some(n) = serial.checked_sub(*offset) else {
                    return false;
                };
                let byte = usize::try_from(n / 8).ok();
                byte.filter(|b| *b < bits.len())
                    .is_some_and(|b| bits[bits.len() - 1 - b] & (1 << (n % 8)) != 0)
            }
        }
    }
}

/// What is revoked.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    pub certs: Vec<CertRule>,
    /// Plain keys' wire blobs.
    pub keys: HashSet<Vec<u8>>,
    /// SHA-1 and SHA-256 hashes of plain keys' wire blobs.
    pub sha1: HashSet<Vec<u8>>,
    pub sha256: HashSet<Vec<u8>>,
}

/// A key's wire blob (what fingerprints hash).
pub fn blob(key: &KeyData) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = key.encode(&mut out);
    out
}

impl RevocationList {
    /// Read a revocation file: a KRL if it starts with the KRL magic,
    /// else the text form.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.starts_with(krl::MAGIC) {
            return krl::parse(bytes).map_err(|e| e.to_string());
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| "neither a KRL nor UTF-8 text".to_string())?;
        let mut list = Self::default();
        let mut any_ca = CertRule::default();
        for (n, line) in text.lines().enumerate() {
            list.text_line(line.trim(), &mut any_ca)
                .map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        if !any_ca.serials.is_empty() || !any_ca.ids.is_empty() {
            list.certs.push(any_ca);
        }
        Ok(list)
    }

    fn text_line(&mut self, line: &str, any_ca: &mut CertRule) -> Result<(), String> {
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let (tag, value) = match line.split_once(':') {
            Some((tag, value)) if !tag.contains(char::is_whitespace) => (tag, value.trim()),
            _ => ("key", line),
        };
        match tag.to_ascii_lowercase().as_str() {
            "serial" => {
                let (lo, hi) = match value.split_once('-') {
                    Some((lo, hi)) => (serial(lo)?, serial(hi)?),
                    None => (serial(value)?, serial(value)?),
                };
                if lo > hi {
                    return Err(format!("serial range {value:?} is backwards"));
                }
                any_ca.serials.push(Serials::Range(lo, hi));
            }
            "id" => {
                if value.is_empty() {
                    return Err("an empty key id".into());
                }
                any_ca.ids.insert(value.to_string());
            }
            "hash" => {
                let b64 = value.strip_prefix("SHA256:").unwrap_or(value);
                let hash = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b64.trim_end_matches('='))
                    .ok()
                    .filter(|h| h.len() == 32)
                    .ok_or_else(|| format!("{value:?} is not a SHA256:... fingerprint"))?;
                self.sha256.insert(hash);
            }
            // ssh-keygen's sha1: and sha256: put the key's hash in the KRL
            // it writes; here the key itself is as good.
            "key" | "sha1" | "sha256" => {
                let key = PublicKey::from_openssh(value).map_err(|_| {
                    "not an OpenSSH public key, nor serial:, id: or hash:".to_string()
                })?;
                self.keys.insert(blob(key.key_data()));
            }
            other => return Err(format!("unknown entry {other:?}")),
        }
        Ok(())
    }

    /// Whether a plain key (by its wire blob) is revoked.
    pub fn key_revoked(&self, blob: &[u8]) -> bool {
        self.keys.contains(blob)
            || (!self.sha256.is_empty() && self.sha256.contains(Sha256::digest(blob).as_slice()))
            || (!self.sha1.is_empty() && self.sha1.contains(Sha1::digest(blob).as_slice()))
    }

    /// Whether a certificate of this CA (its key's blob), serial and key
    /// id is revoked by serial or id. Serial 0 (a CA that numbers
    /// nothing) is never revoked by serial, as in OpenSSH.
    pub fn cert_revoked(&self, ca: &[u8], serial: u64, key_id: &str) -> bool {
        self.certs
            .iter()
            .filter(|rule| rule.ca.as_deref().is_none_or(|c| c == ca))
            .any(|rule| {
                rule.ids.contains(key_id)
                    || (serial != 0 && rule.serials.iter().any(|s| s.contains(serial)))
            })
    }

    /// Why a login with this key (and the certificate holding it, if
    /// any) is refused; `None` when nothing in it is revoked.
    pub fn refuses(&self, key: &KeyData, cert: Option<&Certificate>) -> Option<&'static str> {
        if self.key_revoked(&blob(key)) {
            return Some("the key is revoked");
        }
        let cert = cert?;
        let ca = blob(cert.signature_key());
        if self.key_revoked(&ca) {
            return Some("the certificate's CA key is revoked");
        }
        self.cert_revoked(&ca, cert.serial(), cert.key_id())
            .then_some("the certificate is revoked (serial or key id)")
    }
}

/// A serial number: decimal, or hexadecimal with `0x`.
fn serial(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a serial number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAA3W05+gRBgnqvpB+K8edFacp+V8Zn7Q7fwonAWgFl test@host";
    const FP: &str = "SHA256:lZS2BotsH4tVt5eZUIp8sZ0gCUYOdDikU9AZN7BtgaE";

    fn key_blob() -> Vec<u8> {
        blob(PublicKey::from_openssh(KEY).unwrap().key_data())
    }

    #[test]
    fn text_form() {
        let list = RevocationList::parse(
            format!("# revoked\n\n{KEY}\nserial: 7\nserial: 0x10-0x12\nid: alice\n").as_bytes(),
        )
        .unwrap();
        assert!(list.key_revoked(&key_blob()));
        assert!(!list.key_revoked(b"other"));
        for (serial, revoked) in [(7, true), (8, false), (16, true), (18, true), (19, false)] {
            assert_eq!(list.cert_revoked(b"ca", serial, "bob"), revoked, "{serial}");
        }
        assert!(list.cert_revoked(b"any ca", 1, "alice"));
        assert!(!list.cert_revoked(b"any ca", 0, "bob"));

        let by_fp = RevocationList::parse(format!("hash: {FP}\n").as_bytes()).unwrap();
        assert!(by_fp.key_revoked(&key_blob()));
        for tag in ["key", "sha1", "sha256"] {
            let by_key = RevocationList::parse(format!("{tag}: {KEY}").as_bytes()).unwrap();
            assert!(by_key.key_revoked(&key_blob()), "{tag}");
        }

        for bad in [
            "serial: x",
            "serial: 9-3",
            "id:",
            "hash: SHA256:short",
            "sha256: SHA256:lZS2BotsH4tVt5eZUIp8sZ0gCUYOdDikU9AZN7BtgaE",
            "ssh-ed25519 AAAA",
            "frob: 1",
            "serial 7",
        ] {
            let e = RevocationList::parse(bad.as_bytes()).unwrap_err();
            assert!(e.starts_with("line 1:"), "{bad}: {e}");
        }
        assert!(RevocationList::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn serial_zero_is_never_revoked_by_serial() {
        let list = RevocationList::parse(b"serial: 0-10\n").unwrap();
        assert!(!list.cert_revoked(b"ca", 0, "x"));
        assert!(list.cert_revoked(b"ca", 10, "x"));
    }
}
