//! Pipe-mode collection: read stdout and stderr apart into capped buffers,
//! feed stdin, enforce the timeout, and report how the process ended.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::Result;
use crate::runtime::Execution;
use crate::types::{CapturedOutput, ExitStatus};

/// After the process exits, how long to wait for its output pipes to close
/// (a background child may hold them open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Collected {
    pub status: ExitStatus,
    pub timed_out: bool,
    pub stdout: CapturedOutput,
    pub stderr: CapturedOutput,
    pub duration: Duration,
}

/// A buffer that keeps the first `cap` bytes and counts the rest.
struct Capped {
    data: Vec<u8>,
    cap: u64,
    total: u64,
}

impl Capped {
    fn output(&self) -> CapturedOutput {
        CapturedOutput::from_bytes(&self.data, self.total > self.cap, self.total)
    }
}

type Shared = std::sync::Arc<std::sync::Mutex<Capped>>;

/// Read a stream to its end into a shared capped buffer, so whatever was
/// read is kept even if the reader is abandoned (a background process
/// holding the pipe open).
async fn read_capped(reader: Option<crate::runtime::exec::ByteReader>, out: Shared) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut out = out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let room = out.cap.saturating_sub(out.data.len() as u64) as usize;
                out.data.extend_from_slice(&buf[..n.min(room)]);
                out.total += n as u64;
            }
        }
    }
}

/// Run an execution to its end, capturing output.
pub async fn collect(
    exec: &mut Execution,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    cap: u64,
) -> Result<Collected> {
    let started = Instant::now();
    let control = exec.control.clone();
    if let Some(mut writer) = exec.stdin.take() {
        tokio::spawn(async move {
            if let Some(data) = stdin {
                let _ = writer.write_all(&data).await;
            }
            let _ = writer.shutdown().await;
            // Dropping the writer closes the pipe: the process sees EOF.
        });
    }
    let buffer = || -> Shared {
        std::sync::Arc::new(std::sync::Mutex::new(Capped {
            data: Vec::new(),
            cap,
            total: 0,
        }))
    };
    let (out_buf, err_buf) = (buffer(), buffer());
    let stdout = tokio::spawn(read_capped(exec.stdout.take(), out_buf.clone()));
    let stderr = tokio::spawn(read_capped(exec.stderr.take(), err_buf.clone()));

    let (status, timed_out) = match tokio::time::timeout(timeout, control.wait()).await {
        Ok(status) => (status?, false),
        Err(_) => {
            control.kill()?;
            (control.wait().await?, true)
        }
    };
    let drain = |mut h: tokio::task::JoinHandle<()>, buf: Shared| async move {
        if tokio::time::timeout(DRAIN_GRACE, &mut h).await.is_err() {
            tracing::debug!("output pipe still open after exit; keeping what was read");
            h.abort();
        }
        let out = buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.output()
    };
    let stdout = drain(stdout, out_buf).await;
    let stderr = drain(stderr, err_buf).await;
    Ok(Collected {
        status,
        timed_out,
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}
