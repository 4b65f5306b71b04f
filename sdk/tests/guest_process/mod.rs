//! The real `blink-guest` run as a host process under the exec wire's
//! host half, as the boxlite runtime runs it in a box: shared by the wire
//! and relay tests.

use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use blink_sdk::runtime::exec::{ExecSpec, Execution};
use blink_sdk::runtime::wire::{self, WireInput, WireProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};

struct Stdin(ChildStdin);

#[async_trait]
impl WireInput for Stdin {
    async fn send(&mut self, bytes: Vec<u8>) -> blink_sdk::error::Result<()> {
        self.0
            .write_all(&bytes)
            .await
            .map_err(|e| blink_sdk::error::Error::io("wire stdin", e))
    }
}

pub struct Guest {
    _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

pub fn guest() -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blink-guest");
    std::fs::write(&path, blink_sdk::runtime::local::GUEST_BINARY).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Guest { _dir: dir, path }
}

/// Start `argv` under the wire. `pulled` counts the text taken from the
/// wrapper's stdout: like BoxLite's channel, the adapter reads eagerly
/// and cuts chunks at odd sizes.
pub async fn run(guest: &Guest, spec: ExecSpec, pulled: Arc<AtomicU64>) -> Execution {
    // A test writing its own copy of the binary while another test forks
    // leaves a writable descriptor in that child until it execs: the exec
    // here may then fail with ETXTBSY for a moment (as cargo retries it).
    let mut tries = 0;
    let mut child = loop {
        let spawned = Command::new(&guest.path)
            .args(wire::wire_args(&spec))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            spawned => break spawned.unwrap(),
        }
    };
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut sizes = [7usize, 1, 4093, 65536, 333].into_iter().cycle();
        loop {
            let mut buf = vec![0u8; sizes.next().unwrap()];
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pulled.fetch_add(n as u64, Ordering::Relaxed);
                    if tx
                        .send(String::from_utf8(buf[..n].to_vec()).unwrap())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let output =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) });
    let ended = async move {
        let s = child
            .wait()
            .await
            .map_err(|e| blink_sdk::error::Error::io("wait", e))?;
        Ok(blink_sdk::types::ExitStatus {
            code: s.code().unwrap_or(255),
            signal: None,
        })
    };
    wire::start(
        WireProcess {
            input: Box::new(Stdin(stdin)),
            output: Box::pin(output),
            ended: Box::pin(ended) as Pin<Box<_>>,
        },
        &spec,
    )
    .await
    .unwrap()
}

/// `argv` with only a PATH, no terminal.
pub fn spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: None,
        tty: None,
    }
}
