//! Authorized SSH public keys: OpenSSH `authorized_keys` files, one per
//! session (`<data>/sessions/<name>/authorized_keys`) plus whatever admin
//! file a gateway is configured with.
//!
//! Only the key itself is understood (type, base64 blob, comment); a line's
//! leading options, if any, are skipped and not honoured. Keys are named by
//! their OpenSSH SHA-256 fingerprint (`SHA256:...`). Edits are atomic and
//! need no manager, so `blink-cli` can change keys while a server runs.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::names;
use super::store::{Store, write_atomic};
use crate::error::{Error, Result};

/// Key types accepted in authorized_keys files.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// The file name of a session's keys inside its session directory.
pub const AUTHORIZED_KEYS: &str = "authorized_keys";

/// One authorized public key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthorizedKey {
    /// Key type, e.g. `ssh-ed25519`.
    pub kind: String,
    /// The key blob in base64, as written in the file.
    pub blob: String,
    /// Free-form comment (often `user@host`).
    pub comment: String,
    /// `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

impl AuthorizedKey {
    /// Parse one `authorized_keys` line (options before the key type are
    /// skipped). `Ok(None)` for blank lines and comments.
    pub fn parse(line: &str) -> Result<Option<Self>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        // As OpenSSH reads a line: the key type first, or else one options
        // field (quoted values may hold spaces, even a key) and then it.
        let starts_with_type = line
            .split_whitespace()
            .next()
            .is_some_and(|t| KEY_TYPES.contains(&t));
        let rest = if starts_with_type {
            line
        } else {
            skip_options(line)?
        };
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        let Some(kind) = tokens.first().filter(|t| KEY_TYPES.contains(t)) else {
            return Err(Error::InvalidArgument(
                "not an OpenSSH public key: expected ssh-ed25519, ecdsa-sha2-* or ssh-rsa".into(),
            ));
        };
        let kind = kind.to_string();
        let Some(blob) = tokens.get(1) else {
            return Err(Error::InvalidArgument("public key has no key data".into()));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|_| Error::InvalidArgument("public key data is not base64".into()))?;
        if wire_type(&bytes) != Some(kind.as_bytes()) {
            return Err(Error::InvalidArgument(
                "public key data does not match its type".into(),
            ));
        }
        let comment = tokens.get(2..).map(|c| c.join(" ")).unwrap_or_default();
        Ok(Some(Self {
            kind,
            blob: (*blob).to_string(),
            comment,
            fingerprint: fingerprint(&bytes),
        }))
    }

    /// The line written to a file.
    pub fn to_line(&self) -> String {
        if self.comment.is_empty() {
            format!("{} {}", self.kind, self.blob)
        } else {
            format!("{} {} {}", self.kind, self.blob, self.comment)
        }
    }
}

/// The text after a leading options field (`no-pty,command="a b"`): it ends
/// at the first space or tab outside double quotes, and `\"` is a literal
/// quote (as OpenSSH's `sshkey_advance_past_options` reads it).
fn skip_options(line: &str) -> Result<&str> {
    let mut quoted = false;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|&(_, n)| n == '"') {
            chars.next();
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && (c == ' ' || c == '\t') {
            return Ok(&line[i..]);
        }
    }
    if quoted {
        return Err(Error::InvalidArgument(
            "public key options have an unterminated quote".into(),
        ));
    }
    Ok("")
}

/// The type name at the start of an SSH wire-format key blob.
fn wire_type(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4usize.checked_add(len)?)
}

/// OpenSSH SHA-256 fingerprint of a key blob (wire format).
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Parse a whole file's text; lines that are not keys are skipped with a
/// warning (a bad line must not lock everyone out).
pub fn parse_all(text: &str, origin: &Path) -> Vec<AuthorizedKey> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match AuthorizedKey::parse(line) {
            Ok(Some(k)) => out.push(k),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(file = %origin.display(), line = n + 1, error = %e, "skipping authorized_keys line")
            }
        }
    }
    out
}

/// Read an authorized_keys file; a missing file holds no keys.
pub fn read_file(path: &Path) -> Result<Vec<AuthorizedKey>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_all(&text, path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// The keys file of one session (the name is validated first, so it can
/// never point outside the store).
pub fn session_keys_path(store: &Store, name: &str) -> Result<PathBuf> {
    names::validate(name)?;
    Ok(store.session_dir(name).join(AUTHORIZED_KEYS))
}

/// The keys allowed into one session.
pub fn list(store: &Store, name: &str) -> Result<Vec<AuthorizedKey>> {
    read_file(&session_keys_path(store, name)?)
}

/// Add a key to a session (the session must exist). Returns the key and
/// whether it was new.
pub fn add(store: &Store, name: &str, line: &str) -> Result<(AuthorizedKey, bool)> {
    let key = AuthorizedKey::parse(line)?
        .ok_or_else(|| Error::InvalidArgument("no public key given".into()))?;
    if key.kind == "ssh-rsa" && key.blob.len() < 370 {
        // 370 base64 chars ~ a 2048-bit modulus.
        return Err(Error::InvalidArgument(
            "RSA keys must have at least 2048 bits".into(),
        ));
    }
    if store.load(name)?.is_none() {
        return Err(Error::SessionNotFound(name.into()));
    }
    let path = session_keys_path(store, name)?;
    let mut keys = read_file(&path)?;
    if keys.iter().any(|k| k.fingerprint == key.fingerprint) {
        return Ok((key, false));
    }
    keys.push(key.clone());
    write_keys(&path, &keys)?;
    Ok((key, true))
}

/// Remove a key by fingerprint (`SHA256:...`, the prefix optional).
/// Returns the removed key, or `None` when no key matched.
pub fn remove(store: &Store, name: &str, fingerprint: &str) -> Result<Option<AuthorizedKey>> {
    let wanted = if fingerprint.starts_with("SHA256:") {
        fingerprint.to_string()
    } else {
        format!("SHA256:{fingerprint}")
    };
    let path = session_keys_path(store, name)?;
    let mut keys = read_file(&path)?;
    let Some(pos) = keys.iter().position(|k| k.fingerprint == wanted) else {
        return Ok(None);
    };
    let removed = keys.remove(pos);
    write_keys(&path, &keys)?;
    Ok(Some(removed))
}

/// Where `blink-server` keeps its SSH host key unless configured otherwise.
pub fn default_host_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("gateway").join("ssh_host_ed25519_key")
}

/// The SHA-256 fingerprint of the public key stored in an unencrypted or
/// encrypted OpenSSH private key file (the public part is never encrypted).
pub fn private_key_file_fingerprint(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let bad =
        || Error::InvalidArgument(format!("{} is not an OpenSSH private key", path.display()));
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| bad())?;
    let rest = bytes.strip_prefix(b"openssh-key-v1\0").ok_or_else(bad)?;
    // cipher, kdf, kdf options, then the number of keys and the first key.
    let mut rest = rest;
    for _ in 0..3 {
        rest = skip_string(rest).ok_or_else(bad)?;
    }
    let rest = rest.get(4..).ok_or_else(bad)?;
    let blob = wire_type(rest)
        .map(|_| ())
        .and_then(|()| read_string(rest))
        .ok_or_else(bad)?;
    Ok(fingerprint(blob))
}

fn read_string(buf: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    buf.get(4..4usize.checked_add(len)?)
}

fn skip_string(buf: &[u8]) -> Option<&[u8]> {
    let len = read_string(buf)?.len();
    buf.get(4 + len..)
}

fn write_keys(path: &Path, keys: &[AuthorizedKey]) -> Result<()> {
    let mut text = String::new();
    for k in keys {
        text.push_str(&k.to_line());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // ssh-keygen -t ed25519 output (a throwaway key).
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAA3W05+gRBgnqvpB+K8edFacp+V8Zn7Q7fwonAWgFl test@host";

    #[test]
    fn parses_and_fingerprints() {
        let k = AuthorizedKey::parse(ED).unwrap().unwrap();
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment, "test@host");
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert_eq!(
            k.fingerprint,
            "SHA256:lZS2BotsH4tVt5eZUIp8sZ0gCUYOdDikU9AZN7BtgaE"
        );
        let with_options = format!("no-pty,command=\"x\" {ED}");
        assert_eq!(
            AuthorizedKey::parse(&with_options)
                .unwrap()
                .unwrap()
                .fingerprint,
            k.fingerprint
        );
        assert!(AuthorizedKey::parse("# c").unwrap().is_none());
        assert!(AuthorizedKey::parse("ssh-ed25519 !!!").is_err());
        assert!(
            AuthorizedKey::parse(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIFAA3W05+gRBgnqvpB+K8edFacp+V8Zn7Q7fwonAWgFl"
            )
            .is_err()
        );
    }

    #[test]
    fn private_key_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: ssh-keygen is not installed");
            return;
        }
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let expected = AuthorizedKey::parse(&public).unwrap().unwrap().fingerprint;
        assert_eq!(private_key_file_fingerprint(&path).unwrap(), expected);
        assert!(private_key_file_fingerprint(&path.with_extension("pub")).is_err());
    }

    #[test]
    fn add_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            add(&store, "s1", ED),
            Err(Error::SessionNotFound(_))
        ));
        std::fs::create_dir_all(store.session_dir("s1")).unwrap();
        std::fs::write(
            store.session_dir("s1").join("session.json"),
            r#"{"name":"s1","box_id":"b","image":"i","warm":false,"runtime":"local","created_at":0,"last_used_at":0}"#,
        )
        .unwrap();
        let (k, new) = add(&store, "s1", ED).unwrap();
        assert!(new);
        assert!(!add(&store, "s1", ED).unwrap().1);
        assert_eq!(list(&store, "s1").unwrap(), vec![k.clone()]);
        assert!(remove(&store, "s1", "SHA256:nope").unwrap().is_none());
        let short = k.fingerprint.trim_start_matches("SHA256:");
        assert_eq!(remove(&store, "s1", short).unwrap(), Some(k));
        assert!(list(&store, "s1").unwrap().is_empty());
        assert!(list(&store, "../x").is_err());
    }
}
