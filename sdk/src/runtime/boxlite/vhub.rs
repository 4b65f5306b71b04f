//! A box's V-Hub endpoint (docs/VHUB.md, "Relay"). BoxLite 0.10.8 bridges
//! no vsock port of ours to the host, so `blink-guest vhub relay` listens
//! at `/run/blink/vhub.sock` in the box and carries each connection over
//! the stdin and stdout of an ordinary execution (`vhub::relay`). Each
//! box's relay connects to a host listener of its own (`vhub/<boot>.sock`
//! under the runtime's root, in a 0700 directory), which is the box's
//! endpoint: the hub knows the session from the box the relay runs in.

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt;

use super::options::GUEST;
use crate::error::{Error, Result};
use crate::runtime::exec::{ExecSpec, Execution};
use crate::vhub::relay;

/// Where programs in the box find the hub (as in a local sandbox).
const BOX_SOCKET: &str = "/run/blink/vhub.sock";
/// Relayed connections a box may hold at once (the hub's own per-session
/// limit is lower; this bounds the relay's host half).
const MAX_CONNECTIONS: usize = 64;

/// The program a box's relay is.
pub(super) fn relay_spec() -> ExecSpec {
    ExecSpec {
        argv: vec![
            GUEST.into(),
            "vhub".into(),
            "relay".into(),
            BOX_SOCKET.into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: None,
        tty: None,
    }
}

struct Endpoint {
    boot: u64,
    listener: UnixListener,
    path: PathBuf,
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.relay.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The relayed endpoints of the boxes that run.
pub(super) struct Endpoints {
    dir: PathBuf,
    boots: AtomicU64,
    by_box: Mutex<HashMap<String, Endpoint>>,
}

impl Endpoints {
    pub(super) fn new(dir: PathBuf) -> Self {
        Endpoints {
            dir,
            boots: AtomicU64::new(1),
            by_box: Mutex::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Endpoint>> {
        self.by_box.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether box `id` has a relay that still runs.
    pub(super) fn live(&self, id: &str) -> bool {
        self.map().get(id).is_some_and(|e| !e.relay.is_finished())
    }

    /// A new descriptor of box `id`'s endpoint, with its boot number.
    pub(super) fn listener(&self, id: &str) -> Result<Option<(u64, UnixListener)>> {
        let map = self.map();
        let Some(e) = map.get(id).filter(|e| !e.relay.is_finished()) else {
            return Ok(None);
        };
        e.listener
            .try_clone()
            .map(|l| Some((e.boot, l)))
            .map_err(|err| Error::io("duplicating a V-Hub endpoint", err))
    }

    /// Make box `id`'s endpoint, relayed by `execution` (the relay
    /// program, just started in the box).
    pub(super) fn attach(&self, id: &str, mut execution: Execution) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .and_then(|()| {
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let boot = self.boots.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{boot}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
        let missing = |what: &str| Error::Runtime(format!("the V-Hub relay in {id} has no {what}"));
        let stdin = execution.stdin.take().ok_or_else(|| missing("stdin"))?;
        let stdout = execution.stdout.take().ok_or_else(|| missing("stdout"))?;
        let stderr = execution.stderr.take();
        let relay = {
            let (id, path) = (id.to_owned(), path.clone());
            if let Some(mut err) = stderr {
                // Its complaints, bounded, to the log; the rest drained.
                let id = id.clone();
                tokio::spawn(async move {
                    let mut text = Vec::new();
                    let _ = (&mut err).take(4096).read_to_end(&mut text).await;
                    let _ = tokio::io::copy(&mut err, &mut tokio::io::sink()).await;
                    if !text.is_empty() {
                        let text = String::from_utf8_lossy(&text);
                        tracing::warn!(sandbox = %id, stderr = %text.trim(), "V-Hub relay");
                    }
                });
            }
            tokio::spawn(async move {
                match relay::serve(stdout, stdin, path, MAX_CONNECTIONS).await {
                    Ok(()) => tracing::info!(sandbox = %id, "V-Hub relay ended"),
                    Err(e) => tracing::warn!(sandbox = %id, error = %e, "V-Hub relay ended"),
                }
                // Its stdin closed: the relay in the box ends.
                drop(execution);
            })
        };
        self.map().insert(
            id.to_owned(),
            Endpoint {
                boot,
                listener,
                path,
                relay,
            },
        );
        Ok(())
    }

    /// Box `id` stopped or went: its endpoint goes too.
    pub(super) fn detach(&self, id: &str) {
        self.map().remove(id);
    }
}
