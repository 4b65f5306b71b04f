//! The API on a unix socket in the data dir (`<data>/blink.sock`): how
//! `blink-cli` on this host reaches the server that owns the data dir.
//!
//! The socket is the server owner's, mode 0600, so whoever can connect is
//! that owner (or root) by file permission: its requests are marked
//! [`LocalSocket`] and need no bearer token. Everything else (Host/Origin
//! guard, body limits, metrics and audit) is the same as over TCP. It is
//! bound inside a private directory and renamed into place, so no other
//! user can connect in the moment before its mode is set; a socket left by
//! a killed server is replaced only when nothing answers on it; it is
//! removed at shutdown.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Marks a request that came in on the local socket.
#[derive(Debug, Clone, Copy)]
pub struct LocalSocket;

/// The bound socket's file, removed at shutdown if it is still ours.
pub struct SocketFile {
    pub path: PathBuf,
    /// Device, inode and change time: an inode number alone comes back
    /// for the next socket made there.
    id: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl SocketFile {
    pub fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind `<data>/blink.sock` with mode 0600.
pub fn bind(data_dir: &Path) -> anyhow::Result<(tokio::net::UnixListener, SocketFile)> {
    let path = blink_sdk::manager::api_socket(data_dir);
    clear_stale(&path)?;
    let staging = data_dir.join(format!(".blink-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    let result = (|| {
        let tmp = staging.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)
            .with_context(|| format!("binding the API socket {}", path.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .context("making the API socket private")?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("putting the API socket at {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(&path)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        Ok((
            listener,
            SocketFile {
                path: path.clone(),
                id: identity(&meta),
            },
        ))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Remove a socket nothing answers on; refuse to touch anything else.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    anyhow::ensure!(
        meta.file_type().is_socket(),
        "{} exists and is not a socket: move it away",
        path.display()
    );
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another process answers on {}: is a second server using this data dir?",
            path.display()
        );
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, file) = bind(dir.path()).unwrap();
        let mode = std::fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live socket is not taken over.
        let err = bind(dir.path()).err().unwrap().to_string();
        assert!(err.contains("answers"), "{err}");
        drop(listener);
        // Nothing answers now: replaced.
        let (_again, file2) = bind(dir.path()).unwrap();
        file.remove(); // not ours any more: stays
        assert!(file2.path.exists());
        file2.remove();
        assert!(!file2.path.exists());
        // A non-socket is never removed.
        std::fs::write(&file2.path, "x").unwrap();
        assert!(bind(dir.path()).is_err());
        assert!(file2.path.exists());
    }
}
