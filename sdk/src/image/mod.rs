//! OCI image store: images kept as an OCI image layout, imported from
//! archives (OCI archives, `docker save` tarballs) or built locally (the
//! busybox default image, debootstrap), and unpacked into sandbox root
//! filesystems.
//!
//! - [`store`]: the layout on disk, names, resolve, remove, garbage collection
//! - [`reference`]: reference syntax and normalization
//! - [`unpack`]: applying layers safely into a directory
//! - [`import`]: importing archives
//! - [`default_image`]: building the default image and debootstrap images
//! - [`oci`]: OCI JSON types and digest helpers
//! - [`registry`]: pulling from registries (and their mirrors)
//! - `ingest`: blobs on their way in from a registry

mod counted;
pub mod default_image;
mod export;
pub mod import;
mod ingest;
mod layer;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use import::ImportOptions;
pub use reference::normalize as normalize_reference;
pub use registry::{PullConfig, PullEvent, PullPolicy, PullProgress, PullReport, Puller};
pub use store::{ImageStore, Layer, NOT_FOUND_HINT, PruneReport, ResolvedImage};
pub use unpack::{UnpackOptions, unpack, unpack_with};

pub use blink_shared::ImageInfo;

use crate::error::Result;

/// The image sessions use unless told otherwise (alias `default`).
pub const DEFAULT_IMAGE: &str = "blink/default:latest";

/// Progress of a long operation, for drawing a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is happening: `import`, `unpack`, `build`, `debootstrap`, `pack`.
    pub phase: &'static str,
    /// Bytes done so far.
    pub done: u64,
    /// Bytes in total; 0 when unknown.
    pub total: u64,
}

impl Progress {
    pub fn new(phase: &'static str, done: u64, total: u64) -> Self {
        Self { phase, done, total }
    }
}

/// A progress callback: `Some(&|p| bar.set(p.done))`.
pub type ProgressFn<'a> = Option<&'a dyn Fn(Progress)>;

impl ImageStore {
    /// Unpack `image` into `dest` (a fresh, empty directory), owned by
    /// `owner` if given. On error the caller removes `dest`.
    pub fn unpack(
        &self,
        image: &ResolvedImage,
        dest: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        unpack::unpack(image, dest, owner)
    }

    /// [`ImageStore::unpack`] with limits and progress.
    pub fn unpack_with(
        &self,
        image: &ResolvedImage,
        dest: &Path,
        owner: Option<(u32, u32)>,
        opts: &UnpackOptions,
        progress: ProgressFn<'_>,
    ) -> Result<()> {
        unpack::unpack_with(image, dest, owner, opts, progress)
    }
}
