//! OpenSSH user certificates (`[ssh] trusted_user_ca_keys`): a certificate
//! signed by a trusted CA logs in to the session its principals name, as
//! sshd's `TrustedUserCAKeys` does for a user, so a control plane hands
//! out `ssh-keygen -s ca -I ID -n SESSION -V +5m` certificates and never
//! registers a key. A principal equal to `[ssh] wildcard_principal`
//! reaches every session, as an admin key does.
//!
//! Checked here, in this order, each refusal saying why (for the log; the
//! client sees the same refusal as for any other key): a user
//! certificate; its CA in the trusted file (read again when it changes);
//! a CA signature algorithm other than SHA-1 RSA; the validity window,
//! give or take `[ssh] certificate_clock_skew_secs`; the signature
//! (again, by ssh-key's `validate_at`, against the trusted CAs); a
//! principal naming the session; its critical options and extensions,
//! turned into key options by the SDK (which refuses a critical option it
//! cannot enforce), and their `source-address` against the client.
//! Revocation is `revocation.rs`'s, asked by `auth.rs` for keys and
//! certificates alike.

use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::keys::KeyOptions;
use russh::keys::ssh_key::Fingerprint;
use russh::keys::{Certificate, HashAlg, PublicKey};

use super::Grant;
use super::reloading::Reloading;

/// The CA keys in a `trusted_user_ca_keys` file.
pub struct TrustedCas {
    fingerprints: Vec<Fingerprint>,
}

impl TrustedCas {
    /// One OpenSSH public key a line; blank lines and `#` comments
    /// skipped. A line that is not a key is an error (the file is the
    /// operator's, and a CA silently dropped would surprise), and so is a
    /// file without any key.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let mut fingerprints = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line)
                .map_err(|_| format!("line {}: not an OpenSSH public key", n + 1))?;
            fingerprints.push(key.fingerprint(HashAlg::Sha256));
        }
        if fingerprints.is_empty() {
            return Err("holds no public key".into());
        }
        Ok(Self { fingerprints })
    }
}

/// The certificate rules of a gateway.
pub struct CertCheck {
    cas: Reloading<TrustedCas>,
    wildcard_principal: Option<String>,
    skew_secs: u64,
}

/// A certificate that passed: who it lets in and with which options.
pub struct CertGrant {
    pub grant: Grant,
    pub options: KeyOptions,
}

impl CertCheck {
    /// Read the trusted CA file now (a server does not start on one it
    /// cannot use).
    pub fn open(
        ca_file: &Path,
        wildcard_principal: Option<String>,
        skew_secs: u64,
    ) -> Result<Self, String> {
        Ok(Self {
            cas: Reloading::open(ca_file, "trusted user CA keys", TrustedCas::parse)?,
            wildcard_principal,
            skew_secs,
        })
    }

    /// Whether `cert` lets its holder into `session` from `peer` at `now`;
    /// the error says why not (for the log, never for the client).
    pub fn check(
        &self,
        cert: &Certificate,
        session: &str,
        peer: IpAddr,
        now: SystemTime,
    ) -> Result<CertGrant, String> {
        if !cert.cert_type().is_user() {
            return Err("a host certificate, not a user certificate".into());
        }
        let cas = self.cas.get()?;
        let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
        if !cas.fingerprints.contains(&ca) {
            return Err(format!("signed by {ca}, not a trusted CA"));
        }
        if !super::algorithm_allowed(&cert.signature().algorithm()) {
            return Err("signed with ssh-rsa (SHA-1), which is refused".into());
        }
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (after, before) = (cert.valid_after(), cert.valid_before());
        if now_secs.saturating_add(self.skew_secs) < after {
            return Err(format!(
                "not valid yet: from {after}, now {now_secs} (clock skew allowed {} s)",
                self.skew_secs
            ));
        }
        if now_secs >= before.saturating_add(self.skew_secs) {
            return Err(format!(
                "expired: valid before {before}, now {now_secs} (clock skew allowed {} s)",
                self.skew_secs
            ));
        }
        // Within the window give or take the skew: have ssh-key check the
        // signature and the CA at the nearest time inside it.
        let at = now_secs.clamp(after, before.saturating_sub(1).max(after));
        cert.validate_at(at, &cas.fingerprints)
            .map_err(|_| "the certificate does not verify against its CA".to_string())?;
        let principals = cert.valid_principals();
        if principals.is_empty() {
            return Err("no principals (a certificate must name its sessions)".into());
        }
        let wildcard = self
            .wildcard_principal
            .as_deref()
            .is_some_and(|w| principals.iter().any(|p| p == w));
        let grant = if wildcard {
            Grant::Admin
        } else if principals.iter().any(|p| p == session) {
            Grant::Session
        } else {
            let shown: Vec<String> = principals
                .iter()
                .take(8)
                .map(|p| Escaped::limit(p, 64).to_string())
                .collect();
            return Err(format!(
                "its principals [{}] do not name the session",
                shown.join(", ")
            ));
        };
        let options = KeyOptions::from_certificate(
            cert.critical_options()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            cert.extensions().keys().map(String::as_str),
        )
        .map_err(|e| e.to_string())?;
        options.check_login(peer, now)?;
        Ok(CertGrant { grant, options })
    }
}
