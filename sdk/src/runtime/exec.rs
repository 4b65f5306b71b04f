//! An execution: a process started in a sandbox, with binary-safe byte
//! streams, exit status and exit signal, signals and (in PTY mode) resize.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::Result;
use crate::types::ExitStatus;

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

impl Default for PtySize {
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up on the sandbox PATH.
    pub argv: Vec<String>,
    /// The environment, complete: nothing of the host's leaks in.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// `Some` runs the process on a terminal of that size (PTY mode);
    /// `None` gives separate stdin, stdout and stderr pipes.
    pub tty: Option<PtySize>,
}

pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;
pub type ByteWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// Controls a running execution.
#[async_trait]
pub trait ExecControl: Send + Sync {
    /// Wait for the process to end. Safe to call from several tasks.
    async fn wait(&self) -> Result<ExitStatus>;
    /// The exit status if the process has ended.
    fn try_status(&self) -> Option<ExitStatus>;
    /// Send a signal to the process.
    fn signal(&self, signal: i32) -> Result<()>;
    /// Kill the process and everything in its process group.
    fn kill(&self) -> Result<()>;
    /// Resize the terminal (PTY mode only; a no-op in pipe mode).
    fn resize(&self, size: PtySize) -> Result<()>;
}

/// A started process. In PTY mode `stdout` carries the terminal stream and
/// `stderr` is `None`.
pub struct Execution {
    pub stdin: Option<ByteWriter>,
    pub stdout: Option<ByteReader>,
    pub stderr: Option<ByteReader>,
    pub control: Arc<dyn ExecControl>,
    pub tty: bool,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution")
            .field("tty", &self.tty)
            .finish_non_exhaustive()
    }
}
