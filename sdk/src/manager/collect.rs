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

async fn read_capped(reader: Option<crate::runtime::exec::ByteReader>, cap: u64) -> Capped {
    let mut out = Capped {
        data: Vec::new(),
        cap,
        total: 0,
    };
    let Some(mut reader) = reader else { return out };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(out.data.len() as u64) as usize;
                out.data.extend_from_slice(&buf[..n.min(room)]);
                out.total += n as u64;
            }
        }
    }
    out
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
    let stdout = tokio::spawn(read_capped(exec.stdout.take(), cap));
    let stderr = tokio::spawn(read_capped(exec.stderr.take(), cap));

    let (status, timed_out) = match tokio::time::timeout(timeout, control.wait()).await {
        Ok(status) => (status?, false),
        Err(_) => {
            control.kill()?;
            (control.wait().await?, true)
        }
    };
    let drain = |h: tokio::task::JoinHandle<Capped>| async move {
        match tokio::time::timeout(DRAIN_GRACE, h).await {
            Ok(Ok(c)) => c.output(),
            _ => CapturedOutput::from_bytes(b"", false, 0),
        }
    };
    let stdout = drain(stdout).await;
    let stderr = drain(stderr).await;
    Ok(Collected {
        status,
        timed_out,
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}
