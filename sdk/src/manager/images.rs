//! Images as the manager sees them: pulled on demand when a session or run
//! names one the store lacks (concurrent requests share one pull), and
//! removed only when no session uses them.

use std::path::Path;

use super::Manager;
use crate::error::{Error, Result};
use crate::image::{ImageInfo, PruneReport, PullProgress, PullReport, Puller};

impl Manager {
    /// The puller of this manager's image store.
    pub fn puller(&self) -> &std::sync::Arc<Puller> {
        &self.puller
    }

    /// Pull an image (`blink-cli image pull`, `POST /api/images/pull`).
    pub async fn pull_image(
        &self,
        reference: &str,
        progress: Option<PullProgress>,
    ) -> Result<PullReport> {
        self.puller.pull(reference, progress).await
    }

    /// Pull `image` if a session or run names one the store lacks (and
    /// the `[images] pull` policy allows it). The default image is built
    /// locally instead, by `resolve_image`.
    pub(super) async fn pull_if_missing(&self, image: Option<&str>) -> Result<()> {
        let reference = image.unwrap_or(&self.config.default_image);
        self.puller.ensure(reference).await
    }

    /// Remove an image unless a session uses it (`force` removes it
    /// anyway).
    pub async fn remove_image(&self, reference: &str, force: bool) -> Result<ImageInfo> {
        let images = self.images.clone();
        let data = self.config.data_dir.clone();
        let reference = reference.to_owned();
        tokio::task::spawn_blocking(move || {
            let users = images_in_use(&data)?;
            images.remove_unless_used(&reference, &users, force)
        })
        .await
        .map_err(|e| Error::Runtime(format!("image task failed: {e}")))?
    }

    /// Delete blobs no image uses and downloads no pull is working on.
    pub async fn prune_images(&self) -> Result<PruneReport> {
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.prune())
            .await
            .map_err(|e| Error::Runtime(format!("image task failed: {e}")))?
    }
}

/// `(session, image)` for every session record under `data_dir`, read
/// without the data-dir lock (records are replaced atomically), so that
/// `blink-cli image rm` can check while a server runs.
pub fn images_in_use(data_dir: &Path) -> Result<Vec<(String, String)>> {
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
        image: String,
    }
    let dir = data_dir.join("sessions");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path().join("session.json");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match serde_json::from_slice::<Named>(&bytes) {
            Ok(r) => out.push((r.name, r.image)),
            Err(e) => {
                // Unknown is not unused: refuse rather than guess.
                return Err(Error::CorruptState {
                    path,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}
