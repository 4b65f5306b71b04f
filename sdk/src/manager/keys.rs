//! Authorized SSH public keys: OpenSSH `authorized_keys` files, one per
//! session (`<data>/sessions/<name>/authorized_keys`) plus whatever admin
//! file a gateway is configured with.
//!
//! A line is `[options] type base64 [comment]`. Options (`from=`,
//! `command=`, `no-pty`, `restrict`, ...) are parsed and kept with the key
//! (see [`KeyOptions`]); a line with an option Blink cannot enforce is
//! refused, never used without it. Keys are named by
//! their OpenSSH SHA-256 fingerprint (`SHA256:...`). Edits are atomic and
//! need no manager, so `blink-cli` can change keys while a server runs.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::key_options::options_end;
pub use super::key_options::{
    CERT_FORCE_COMMAND, CERT_SOURCE_ADDRESS, FromList, INTERNAL_SFTP, KeyOption, KeyOptions,
};
use super::names;
use super::store::{Store, write_atomic};
use crate::error::{Error, Result};
use crate::escape::Escaped;

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
    /// Options in front of the key, in `authorized_keys` syntax (a string,
    /// empty when there are none).
    #[serde(default)]
    pub options: KeyOptions,
    /// Key type, e.g. `ssh-ed25519`.
    pub kind: String,
    /// The key blob in base64, as written in the file.
    pub blob: String,
    /// Free-form comment (often `user@host`).
    pub comment: String,
    /// `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// What [`add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// The key was not there.
    Added,
    /// The key was there with other options: they are replaced.
    OptionsChanged,
    /// The key was there, options and all.
    Unchanged,
}

impl AuthorizedKey {
    /// Parse one `authorized_keys` line. `Ok(None)` for blank lines and
    /// comments. As in OpenSSH, a line either starts with the key type or
    /// with options up to the first whitespace outside double quotes.
    pub fn parse(line: &str) -> Result<Option<Self>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        let first = line.split_whitespace().next().unwrap_or("");
        let (options, rest) = if KEY_TYPES.contains(&first) {
            ("", line)
        } else {
            let end = options_end(line)?;
            (&line[..end], line[end..].trim_start())
        };
        let mut tokens = rest.split_whitespace();
        let Some(kind) = tokens.next().filter(|t| KEY_TYPES.contains(t)) else {
            return Err(Error::InvalidArgument(
                "not an OpenSSH public key: expected ssh-ed25519, ecdsa-sha2-* or ssh-rsa".into(),
            ));
        };
        let Some(blob) = tokens.next() else {
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
        let comment = tokens.collect::<Vec<_>>().join(" ");
        // Options are checked once the line is known to hold a key.
        let options = KeyOptions::parse(options)?;
        Ok(Some(Self {
            options,
            kind: kind.to_string(),
            blob: blob.to_string(),
            comment,
            fingerprint: fingerprint(&bytes),
        }))
    }

    /// The line written to a file.
    pub fn to_line(&self) -> String {
        let mut line = String::new();
        if !self.options.is_empty() {
            line.push_str(&self.options.to_string());
            line.push(' ');
        }
        line.push_str(&self.kind);
        line.push(' ');
        line.push_str(&self.blob);
        if !self.comment.is_empty() {
            line.push(' ');
            line.push_str(&self.comment);
        }
        line
    }
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
                tracing::warn!(file = %origin.display(), line = n + 1, error = %Escaped(&e.to_string()), "skipping authorized_keys line")
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

/// The SSH public keys of sessions, kept beside their records: what the
/// CLI, REST and the SSH gateway's login use.
#[derive(Debug, Clone)]
pub struct KeyStore {
    store: Store,
}

impl KeyStore {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// The keys of a data dir, without a manager: keys can be changed
    /// while a server holds the data dir.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Store::open(data_dir).map(Self::new)
    }

    /// Whether a session of this name exists.
    pub fn session_exists(&self, name: &str) -> Result<bool> {
        names::validate(name)?;
        Ok(self.store.load(name)?.is_some())
    }

    /// The keys allowed into one session (none for an unknown one).
    pub fn list(&self, name: &str) -> Result<Vec<AuthorizedKey>> {
        read_file(&session_keys_path(&self.store, name)?)
    }

    /// Add a key to a session (the session must exist), with the options
    /// on its line; a key already there takes the new options. Returns the
    /// key as stored and what changed.
    pub fn add(&self, name: &str, line: &str) -> Result<(AuthorizedKey, KeyChange)> {
        add(&self.store, name, line)
    }

    /// Remove a key by fingerprint (`SHA256:...`, the prefix optional).
    /// Returns the removed key, or `None` when no key matched.
    pub fn remove(&self, name: &str, fingerprint: &str) -> Result<Option<AuthorizedKey>> {
        remove(&self.store, name, fingerprint)
    }
}

/// The keys file of one session (the name is validated first, so it can
/// never point outside the store).
fn session_keys_path(store: &Store, name: &str) -> Result<PathBuf> {
    names::validate(name)?;
    Ok(store.session_dir(name).join(AUTHORIZED_KEYS))
}

fn add(store: &Store, name: &str, line: &str) -> Result<(AuthorizedKey, KeyChange)> {
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
    let (stored, change) = match keys.iter_mut().find(|k| k.fingerprint == key.fingerprint) {
        Some(old) if old.options == key.options => return Ok((old.clone(), KeyChange::Unchanged)),
        Some(old) => {
            old.options = key.options;
            (old.clone(), KeyChange::OptionsChanged)
        }
        None => {
            keys.push(key.clone());
            (key, KeyChange::Added)
        }
    };
    write_keys(&path, &keys)?;
    Ok((stored, change))
}

fn remove(store: &Store, name: &str, fingerprint: &str) -> Result<Option<AuthorizedKey>> {
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
        assert!(k.options.is_empty());
        assert_eq!(k.to_line(), ED);
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
    fn options_are_kept_with_the_key() {
        let line = format!(r#"no-pty,command="echo \"a b\", c",from="127.0.0.1" {ED}"#);
        let k = AuthorizedKey::parse(&line).unwrap().unwrap();
        assert_eq!(
            k.fingerprint,
            "SHA256:lZS2BotsH4tVt5eZUIp8sZ0gCUYOdDikU9AZN7BtgaE"
        );
        assert_eq!(k.options.forced_command(), Some(r#"echo "a b", c"#));
        assert!(!k.options.pty_allowed());
        assert_eq!(k.comment, "test@host");
        assert_eq!(k.to_line(), line);
        assert_eq!(AuthorizedKey::parse(&k.to_line()).unwrap().unwrap(), k);
        // Serialized as the options string, and read back the same.
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(
            json["options"],
            r#"no-pty,command="echo \"a b\", c",from="127.0.0.1""#
        );
        let back: AuthorizedKey = serde_json::from_value(json).unwrap();
        assert_eq!(back, k);

        // A key type inside a quoted value is not the key.
        let tricky = format!(r#"command="ssh-ed25519 x" {ED}"#);
        let k = AuthorizedKey::parse(&tricky).unwrap().unwrap();
        assert_eq!(k.options.forced_command(), Some("ssh-ed25519 x"));

        let e = AuthorizedKey::parse(&format!("frobnicate {ED}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"frobnicate\""), "{e}");
        assert!(AuthorizedKey::parse(&format!(r#"command="x {ED}"#)).is_err());
        // Not a key at all: said so, whatever the first word is.
        let e = AuthorizedKey::parse("ssh-dss AAAA")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an OpenSSH public key"), "{e}");
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
        let (k, change) = add(&store, "s1", ED).unwrap();
        assert_eq!(change, KeyChange::Added);
        assert_eq!(add(&store, "s1", ED).unwrap().1, KeyChange::Unchanged);
        assert_eq!(
            KeyStore::new(store.clone()).list("s1").unwrap(),
            vec![k.clone()]
        );
        // The same key with options takes them; without, loses them.
        let (r, change) = add(&store, "s1", &format!("restrict {ED}")).unwrap();
        assert_eq!(change, KeyChange::OptionsChanged);
        assert_eq!(
            KeyStore::new(store.clone()).list("s1").unwrap(),
            vec![r.clone()]
        );
        assert!(
            !KeyStore::new(store.clone()).list("s1").unwrap()[0]
                .options
                .pty_allowed()
        );
        assert!(add(&store, "s1", &format!("tunnel=\"1\" {ED}")).is_err());
        assert_eq!(KeyStore::new(store.clone()).list("s1").unwrap(), vec![r]);
        assert_eq!(add(&store, "s1", ED).unwrap().1, KeyChange::OptionsChanged);
        assert_eq!(
            KeyStore::new(store.clone()).list("s1").unwrap(),
            vec![k.clone()]
        );
        assert!(remove(&store, "s1", "SHA256:nope").unwrap().is_none());
        let short = k.fingerprint.trim_start_matches("SHA256:");
        assert_eq!(remove(&store, "s1", short).unwrap(), Some(k));
        assert!(KeyStore::new(store.clone()).list("s1").unwrap().is_empty());
        assert!(KeyStore::new(store.clone()).list("../x").is_err());
    }
}
