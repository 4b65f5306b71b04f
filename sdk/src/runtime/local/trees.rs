//! Image trees: each image unpacked once, in `<data>/image-trees/<digest>`,
//! and shared read-only by every layered disk made from it (the lower
//! layer of their overlays, seen through an id map; disk.rs). Files belong
//! to host root here, which each sandbox sees as its own root. A tree no
//! disk names is removed when the runtime starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::fs::ConfinedRoot;
use crate::image::{ImageStore, ResolvedImage};

/// The file in a sandbox directory naming its tree.
pub const FILE: &str = "image";

#[derive(Debug)]
pub struct Trees {
    dir: PathBuf,
    images: Arc<ImageStore>,
    /// One unpack at a time: two sessions of a new image wait for one tree.
    making: Mutex<()>,
}

impl Trees {
    pub fn new(dir: PathBuf, images: Arc<ImageStore>) -> Self {
        Self {
            dir,
            images,
            making: Mutex::new(()),
        }
    }

    /// A tree's name: the image's manifest digest, hex only.
    pub fn key(image: &ResolvedImage) -> String {
        image
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&image.digest)
            .to_owned()
    }

    /// The tree named `key`, if it exists.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        let valid = !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit());
        let path = self.dir.join(key);
        (valid && path.is_dir()).then_some(path)
    }

    /// The tree of `image`, unpacked now if it is not yet. Blocking.
    pub fn ensure(&self, image: &ResolvedImage) -> Result<PathBuf> {
        let key = Self::key(image);
        if let Some(path) = self.path(&key) {
            return Ok(path);
        }
        let _one = self
            .making
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(path) = self.path(&key) {
            return Ok(path);
        }
        super::private_dir(&self.dir)?;
        let staging = self.dir.join(format!(".{key}.partial"));
        let _ = crate::fs::remove_tree(&staging);
        let made = (|| {
            std::fs::create_dir(&staging)
                .map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
            self.images.unpack(image, &staging, None)?;
            // Blink's own places in every sandbox.
            let root = ConfinedRoot::open(&staging)?;
            root.create_dir_all("/.blink", 0o755)?;
            root.create_dir_all("/var/blink/memory", 0o755)?;
            let path = self.dir.join(&key);
            std::fs::rename(&staging, &path)
                .map_err(|e| Error::io(format!("committing the tree of {}", image.reference), e))?;
            Ok(path)
        })();
        if made.is_err() {
            let _ = crate::fs::remove_tree(&staging);
        }
        made
    }

    /// Remove every tree not in `used` (keys), and half-made ones.
    pub fn remove_unused(&self, used: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if used.contains(&name) {
                continue;
            }
            tracing::info!(tree = %name, "removing an image tree no disk uses");
            let _ = crate::fs::remove_tree(&entry.path());
        }
    }
}

/// The tree key a sandbox directory names, if it is a layered disk.
pub fn named_by(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
    let key = text.trim();
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| key.to_owned())
}
