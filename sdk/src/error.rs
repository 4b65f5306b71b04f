//! One error type for the SDK. Every variant names the thing that went wrong
//! so that the CLI, REST and SSH surfaces can show it as it is; `code()` is
//! the stable machine-readable name and `kind()` the class a surface maps to
//! a status (HTTP status, exit code).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Broad class of an error, for surfaces that map errors to statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller asked for something malformed (HTTP 400).
    Invalid,
    /// The named thing does not exist (HTTP 404).
    NotFound,
    /// The thing exists or is in use (HTTP 409).
    Conflict,
    /// Too large (HTTP 413).
    TooLarge,
    /// Well-formed but cannot be processed (HTTP 422).
    Unprocessable,
    /// Refused by a rule of the server or of the caller's key (HTTP 403).
    Forbidden,
    /// A server Blink talks to failed or refused (a registry; HTTP 502).
    Upstream,
    /// Not available in this build or on this machine (HTTP 501).
    Unsupported,
    /// A fault on our side or in the sandbox runtime (HTTP 500).
    Internal,
    /// Not now, soon again: the session is moving (HTTP 503).
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid session name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("session {0:?} not found")]
    SessionNotFound(String),

    #[error("session {0:?} already exists")]
    SessionExists(String),

    #[error("session {name:?} is busy: {reason}")]
    SessionBusy { name: String, reason: String },

    #[error("session {0:?} is moving to another node; try again shortly")]
    SessionMoving(String),

    #[error("execution {0:?} not found")]
    ExecutionNotFound(String),

    #[error("session {session:?} has no snapshot {snapshot:?}")]
    SnapshotNotFound { session: String, snapshot: String },

    #[error("session {session:?} already has a snapshot {snapshot:?}")]
    SnapshotExists { session: String, snapshot: String },

    #[error("invalid session archive: {0}")]
    InvalidArchive(String),

    #[error("image {reference:?} not found: {hint}")]
    ImageNotFound { reference: String, hint: String },

    #[error("invalid image {what}: {reason}")]
    InvalidImage { what: String, reason: String },

    #[error("image {reference} is used by session(s) {sessions}; remove them first, or force it")]
    ImageInUse { reference: String, sessions: String },

    /// A registry could not be reached, refused, or broke the protocol;
    /// the reason says which (never with credentials in it).
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },

    #[error("script {} not found", .0.display())]
    ScriptNotFound(PathBuf),

    #[error("{0}")]
    InvalidArgument(String),

    #[error("path {path:?} is outside the sandbox: {reason}")]
    PathOutsideSandbox { path: String, reason: String },

    #[error("{what} is too large: {size} bytes, the limit is {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },

    #[error("sandbox {id} is dead: {reason}")]
    SandboxDead { id: String, reason: String },

    #[error("runtime {runtime} is not usable here: {reason}")]
    RuntimeUnavailable { runtime: String, reason: String },

    #[error("data dir {} is in use by another Blink process ({holder}); stop it or choose another --data-dir", path.display())]
    DataDirLocked { path: PathBuf, holder: String },

    /// A rule of the server or of the caller's key refuses the request
    /// (a forwarding destination, a key's `permitopen=`); the text says
    /// which.
    #[error("{0}")]
    NotPermitted(String),

    #[error("{0} is not supported by this runtime")]
    Unsupported(String),

    #[error("state file {} is corrupt: {reason}", path.display())]
    CorruptState { path: PathBuf, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("runtime error: {0}")]
    Runtime(String),
}

impl Error {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The message for a remote client (REST caller, SSH user). Internal
    /// faults are named by their code only: their text can carry host paths
    /// and the output of host tools. The full error belongs in the server's
    /// log, next to the same code.
    pub fn client_message(&self) -> String {
        match self {
            Self::Io { .. }
            | Self::Runtime(_)
            | Self::CorruptState { .. }
            | Self::DataDirLocked { .. }
            | Self::RuntimeUnavailable { .. } => format!(
                "internal error ({}); the server's log has the details",
                self.code()
            ),
            other => other.to_string(),
        }
    }

    /// Stable machine-readable code, used in JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } => "invalid_name",
            Self::SessionNotFound(_) => "session_not_found",
            Self::SessionExists(_) => "session_exists",
            Self::SessionBusy { .. } => "session_busy",
            Self::SessionMoving(_) => "session_moving",
            Self::ExecutionNotFound(_) => "execution_not_found",
            Self::SnapshotNotFound { .. } => "snapshot_not_found",
            Self::SnapshotExists { .. } => "snapshot_exists",
            Self::InvalidArchive(_) => "invalid_archive",
            Self::ImageNotFound { .. } => "image_not_found",
            Self::InvalidImage { .. } => "invalid_image",
            Self::ImageInUse { .. } => "image_in_use",
            Self::Registry { .. } => "registry_error",
            Self::ScriptNotFound(_) => "script_not_found",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::PathOutsideSandbox { .. } => "path_outside_sandbox",
            Self::TooLarge { .. } => "too_large",
            Self::SandboxDead { .. } => "sandbox_dead",
            Self::RuntimeUnavailable { .. } => "runtime_unavailable",
            Self::DataDirLocked { .. } => "data_dir_locked",
            Self::NotPermitted(_) => "not_permitted",
            Self::Unsupported(_) => "unsupported",
            Self::CorruptState { .. } => "corrupt_state",
            Self::Io { .. } => "io_error",
            Self::Runtime(_) => "runtime_error",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidName { .. } | Self::InvalidArgument(_) => ErrorKind::Invalid,
            Self::PathOutsideSandbox { .. } => ErrorKind::Invalid,
            Self::SessionNotFound(_)
            | Self::ExecutionNotFound(_)
            | Self::SnapshotNotFound { .. }
            | Self::ImageNotFound { .. }
            | Self::ScriptNotFound(_) => ErrorKind::NotFound,
            Self::SessionExists(_)
            | Self::SnapshotExists { .. }
            | Self::SessionBusy { .. }
            | Self::ImageInUse { .. }
            | Self::DataDirLocked { .. } => ErrorKind::Conflict,
            Self::TooLarge { .. } => ErrorKind::TooLarge,
            Self::InvalidImage { .. } | Self::InvalidArchive(_) => ErrorKind::Unprocessable,
            Self::NotPermitted(_) => ErrorKind::Forbidden,
            Self::Registry { .. } => ErrorKind::Upstream,
            Self::Unsupported(_) | Self::RuntimeUnavailable { .. } => ErrorKind::Unsupported,
            Self::SessionMoving(_) => ErrorKind::Unavailable,
            Self::SandboxDead { .. }
            | Self::CorruptState { .. }
            | Self::Io { .. }
            | Self::Runtime(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_carry_no_host_details_for_internal_faults() {
        let io = Error::io(
            "creating /var/lib/blink/sandboxes/s-1/rootfs",
            std::io::Error::other("no space"),
        );
        let runtime = Error::Runtime("bubblewrap: /usr/bin/nsenter failed".into());
        for e in [io, runtime] {
            let text = e.client_message();
            assert!(!text.contains('/'), "{text}");
            assert!(text.contains(e.code()), "{text}");
            assert!(e.to_string().contains('/'), "the log keeps the details");
        }
        // What the caller did wrong is still said in full.
        let bad = Error::InvalidArgument("environment variable name \"A=B\" is not allowed".into());
        assert_eq!(bad.client_message(), bad.to_string());
    }
}
