//! The gateway's ed25519 host key: generated on first start, stored 0600,
//! the same on every later start, with its public half beside it
//! (`<key>.pub`, as ssh-keygen writes it) for `blink-cli gateway
//! fingerprint` and for operators. All host-key code lives here.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{Algorithm, PrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

/// Where the host key lives when the config does not say.
pub fn default_path(data_dir: &Path) -> PathBuf {
    blink_sdk::manager::gateway_dir(data_dir).join("ssh_host_ed25519_key")
}

/// The public half's file: `<key>.pub`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Write `<key>.pub` unless it already holds this key.
fn write_public(path: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let public = public_path(path);
    let io = |source| HostKeyError::Io {
        path: public.clone(),
        source,
    };
    let line = key
        .public_key()
        .to_openssh()
        .map_err(|e| HostKeyError::Key {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let line = format!("{line} blink-server host key\n");
    if std::fs::read_to_string(&public).is_ok_and(|old| old == line) {
        return Ok(());
    }
    let tmp = public.with_extension(format!("pub.tmp{}", std::process::id()));
    std::fs::write(&tmp, &line).map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    std::fs::rename(&tmp, &public).map_err(io)
}

/// Load the host key (generating it if missing) and make sure its public
/// half is written beside it.
pub fn load(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let key = load_or_generate(path)?;
    write_public(path, &key)?;
    Ok(key)
}

/// Load the host key, generating it if the file does not exist.
pub fn load_or_generate(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let io = |source| HostKeyError::Io {
        path: path.into(),
        source,
    };
    let bad = |reason: String| HostKeyError::Key {
        path: path.into(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(bad(format!(
                    "permissions {:o} are too open; it must be 0600",
                    mode & 0o777
                )));
            }
            let key = PrivateKey::from_openssh(&bytes).map_err(|e| bad(e.to_string()))?;
            if key.algorithm() != Algorithm::Ed25519 {
                return Err(bad("it is not an ed25519 key".into()));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| bad(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            // Write to a private temp file, then link it into place so two
            // starts racing cannot both win.
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            drop(file);
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "generated a new ssh host key");
                    Ok(key)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_generate(path),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

/// `SHA256:...` as `ssh-keygen -l` prints it: the gateway's one host key
/// fingerprint (startup line, `--fingerprint`). `blink-cli gateway
/// fingerprint` reads the `.pub` file written beside the key; the SDK's
/// generic public-key fingerprint of that line is the same value (the
/// test below checks it).
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(dir.path());
        let a = load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_generate(&path).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(fingerprint(&a).starts_with("SHA256:"));
        load(&path).unwrap();
        let public = std::fs::read_to_string(public_path(&path)).unwrap();
        let parsed = blink_sdk::manager::keys::AuthorizedKey::parse(&public)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.fingerprint, fingerprint(&a));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_generate(&path).is_err());
    }
}
