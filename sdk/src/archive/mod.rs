//! Session archives (`.boxlite`): one zstd-compressed tar holding what it
//! takes to make a session again elsewhere. The format is written up in
//! docs/ARCHIVE.md; in short, in this order:
//!
//! - `blink-archive.json`: the [`Header`] (format and version, the
//!   session's settings, its image's reference and digests, what is inside);
//! - `image.oci.tar` (unless left out): the image as an OCI archive, which
//!   the importer hands to the image store's hardened importer;
//! - `changes/...`: the session's changes over its image as an OCI layer
//!   (files, directories, symlinks, hard links; deletions as `.wh.NAME`,
//!   replaced directories as `.wh..wh..opq`), owners as the session sees
//!   them (root is 0);
//! - `snapshots/<name>/...` (if asked): each snapshot's changes, alike;
//! - `checksums.json`: SHA-256 of every regular file above, checked by the
//!   importer before anything it wrote is kept.
//!
//! Streamed both ways: nothing is held whole in memory.

pub mod merged;
mod read;
mod write;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use self::merged::ChangeLayer;
pub use self::read::{ImportLimits, ImportTargets, Imported, read_archive};
pub use self::write::{ExportSource, write_archive};

/// `format` in the header.
pub const FORMAT: &str = "blink-session";
/// The version this build writes and the only one it reads.
pub const VERSION: u32 = 1;

pub const HEADER: &str = "blink-archive.json";
pub const IMAGE: &str = "image.oci.tar";
pub const CHANGES: &str = "changes";
pub const SNAPSHOTS: &str = "snapshots";
pub const CHECKSUMS: &str = "checksums.json";

/// Largest header and checksum list read.
const MAX_JSON: u64 = 16 << 20;

/// What an archive says about itself and the session in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The Blink that wrote it.
    pub writer: String,
    pub session: SessionSettings,
    pub image: ImageRef,
    /// Snapshots inside, in the order they were made.
    #[serde(default)]
    pub snapshots: Vec<SnapshotEntry>,
    /// Whether `image.oci.tar` is inside.
    pub includes_image: bool,
}

/// The settings a session is made again with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSettings {
    pub name: String,
    pub warm: bool,
    pub limits: crate::runtime::Limits,
}

/// The image the changes apply to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub reference: String,
    /// `sha256:` digest of its manifest.
    pub digest: String,
    /// Its layers' digests, lowest first.
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub name: String,
    pub created_at: u64,
}

/// `checksums.json`: entry path to `sha256:` hex digest.
pub type Checksums = BTreeMap<String, String>;

/// Map a host id of the session's range to the id the session sees (its
/// root is 0), and back. Ids outside the range become `nobody`.
pub const NOBODY: u32 = 65534;

/// Whether a name is an overlayfs-free, tar-safe path component.
fn plain_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests;
