//! What each runtime can do, per session operation, so `/api/product`
//! says it instead of a runtime silently ignoring a request.

use std::collections::BTreeMap;

use super::RuntimeKind;

/// The session operations a runtime maps (docs/BOXLITE.md keeps the
/// boxlite column).
pub const OPERATIONS: &[&str] = &[
    "sessions",
    "start_stop_keep_disk",
    "exec",
    "pty",
    "signals",
    "byte_exact_io",
    "file_copy",
    "resources",
    "snapshots",
    "clone",
    "export",
    "import",
    "network_policy",
    // The V-Hub endpoint inside the sandbox (docs/VHUB.md).
    "vhub",
];

/// One runtime in this build: whether it is compiled in and which
/// operations it maps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeSupport {
    /// Compiled into this binary.
    pub built: bool,
    pub operations: BTreeMap<String, bool>,
    /// What is missing, in a sentence (empty when nothing is).
    pub note: String,
}

/// What `kind` offers in this build. The local runtime's snapshot family
/// also needs disk images (a server running as root): the manager's
/// `snapshots_supported` says so for the running runtime.
pub fn support(kind: RuntimeKind) -> RuntimeSupport {
    let all = |on: bool| OPERATIONS.iter().map(|o| ((*o).to_owned(), on)).collect();
    match kind {
        RuntimeKind::Local => RuntimeSupport {
            built: true,
            operations: all(true),
            note: String::new(),
        },
        RuntimeKind::Boxlite => RuntimeSupport {
            built: cfg!(feature = "boxlite"),
            operations: OPERATIONS
                .iter()
                .map(|o| ((*o).to_owned(), !BOXLITE_UNMAPPED.contains(o)))
                .collect(),
            note: BOXLITE_NOTE.into(),
        },
    }
}

/// What the boxlite runtime does not map (docs/BOXLITE.md says why).
pub const BOXLITE_UNMAPPED: &[&str] = &["resources", "export", "import", "network_policy"];

const BOXLITE_NOTE: &str = "boxlite: a box's CPUs, memory and disk are fixed when it is made (no live or later resize); export and import are not mapped (BoxLite's .boxlite archive is its own format); a box has no network, so egress policies other than none, and SSH forwarding into it, are refused; snapshots and clones need the box stopped, and clones are of its current disk, not of a snapshot; a box's V-Hub endpoint is relayed over an execution, only with [sandbox] boxlite_vhub_relay = true (docs/VHUB.md)";
