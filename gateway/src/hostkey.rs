//! The gateway's ed25519 host key: generated on first start, stored 0600,
//! the same on every later start.

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
    blink_sdk::manager::keys::default_host_key_path(data_dir)
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
/// fingerprint` cannot call it without linking the gateway and russh; it
/// reads the same file through the SDK's `private_key_file_fingerprint`,
/// and the test below keeps the two equal.
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
        assert_eq!(
            blink_sdk::manager::keys::private_key_file_fingerprint(&path).unwrap(),
            fingerprint(&a)
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_generate(&path).is_err());
    }
}
