//! Blink SDK: one session manager over a sandbox runtime layer.
//!
//! - [`manager`]: sessions, runs, spawns, warm/idle policy, persistent state.
//! - [`runtime`]: the sandbox runtime interface and the `local` runtime.
//! - [`image`]: OCI image layouts on disk, the default image, imports.
//! - [`fs`]: file access confined to a sandbox's root.
//! - [`escape`]: client text made safe for one log line.
//! - [`testing`]: an in-memory runtime (a test double) for policy tests.
//! - [`types`]: wire types (the `blinkvm-shared` crate).
//!
//! The free functions below are the brief's convenience API; they share one
//! process-wide manager on the default data dir.

pub mod archive;
pub mod error;
pub mod escape;
pub mod fs;
pub mod image;
pub mod manager;
pub mod metrics;
pub mod network;
pub mod runtime;
pub mod sftp_wire;
pub mod testing;
pub mod vhub;

use std::path::Path;
use std::sync::Arc;

pub use blink_shared as types;
pub use error::{Error, ErrorKind, Result};
pub use manager::{Manager, ManagerConfig, OpenOptions, Program, RunOptions};

static DEFAULT_MANAGER: tokio::sync::OnceCell<Arc<Manager>> = tokio::sync::OnceCell::const_new();

/// The process-wide manager on the default data dir, opened on first use.
pub async fn default_manager() -> Result<Arc<Manager>> {
    DEFAULT_MANAGER
        .get_or_try_init(|| Manager::open(ManagerConfig::new(manager::default_data_dir())))
        .await
        .cloned()
}

/// Run a host script or binary once in a fresh sandbox of the default image.
pub async fn run_agent_script_default(path: &Path) -> Result<types::RunResult> {
    default_manager()
        .await?
        .run_ephemeral(&Program::Script(path.to_path_buf()), RunOptions::default())
        .await
}

/// Open (create if missing) a named session; returns its box id and whether
/// this call created it.
pub async fn open_session(name: &str, image: &str) -> Result<(String, bool)> {
    let opened = default_manager()
        .await?
        .open_session(
            name,
            OpenOptions {
                image: Some(image.to_owned()),
                ..OpenOptions::default()
            },
        )
        .await?;
    Ok((opened.session.box_id, opened.created))
}

/// Run a host script or binary in a named session.
pub async fn run_in_session(name: &str, path: &Path) -> Result<types::RunResult> {
    default_manager()
        .await?
        .run_in_session(
            name,
            &Program::Script(path.to_path_buf()),
            RunOptions::default(),
        )
        .await
}
