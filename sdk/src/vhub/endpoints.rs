//! The hub over a manager: the host socket, one endpoint per session (from
//! the session's runtime), and the host-provided methods.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::hub::{Hub, Services};
use super::limits::Limits;
use super::messages::ErrorBody;
use crate::error::{Error, Result};
use crate::manager::Manager;

/// How often the hub looks for new and removed sessions.
const RECONCILE: Duration = Duration::from_millis(200);

/// The `[vhub]` settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Run the hub at all.
    pub enabled: bool,
    /// The host socket; default `<data>/vhub.sock` (0600).
    pub socket: Option<PathBuf>,
    /// Whether a sandbox may ask for a checkpoint of its own session
    /// (`session.checkpoint`), unless the session is listed below.
    pub allow_checkpoint: bool,
    /// Sessions allowed `session.checkpoint` whatever the default.
    pub checkpoint_sessions: Vec<String>,
    pub limits: Limits,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            enabled: true,
            socket: None,
            allow_checkpoint: false,
            checkpoint_sessions: Vec::new(),
            limits: Limits::default(),
        }
    }
}

impl HubConfig {
    /// Every limit positive; the window at least the initial window.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let l = &self.limits;
        let positive = [
            ("host_connections", l.host_connections as u64),
            ("sandbox_connections", l.sandbox_connections as u64),
            ("streams_per_connection", l.streams_per_connection as u64),
            ("pending_per_connection", l.pending_per_connection as u64),
            ("methods_per_connection", l.methods_per_connection as u64),
            (
                "subscriptions_per_connection",
                l.subscriptions_per_connection as u64,
            ),
            ("subscriber_queue", l.subscriber_queue as u64),
            ("initial_window", u64::from(l.initial_window)),
            ("queue_bytes", l.queue_bytes as u64),
            ("hello_timeout_secs", l.hello_timeout_secs),
            ("close_timeout_secs", l.close_timeout_secs),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("vhub.limits.{name} must be positive"));
        }
        if l.max_window < l.initial_window {
            return Err("vhub.limits.max_window must be at least initial_window".into());
        }
        if l.subscriber_queue > 1 << 20 {
            return Err("vhub.limits.subscriber_queue must be at most 1048576".into());
        }
        for s in &self.checkpoint_sessions {
            crate::manager::names::validate(s)
                .map_err(|e| format!("vhub.checkpoint_sessions: {e}"))?;
        }
        Ok(())
    }

    pub fn socket_path(&self, data_dir: &std::path::Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| data_dir.join("vhub.sock"))
    }
}

/// The host-provided methods, answered by the manager.
pub struct ManagerServices {
    manager: Arc<Manager>,
    allow_checkpoint: bool,
    checkpoint_sessions: Vec<String>,
}

impl ManagerServices {
    pub fn new(manager: Arc<Manager>, config: &HubConfig) -> Self {
        ManagerServices {
            manager,
            allow_checkpoint: config.allow_checkpoint,
            checkpoint_sessions: config.checkpoint_sessions.clone(),
        }
    }
}

#[async_trait]
impl Services for ManagerServices {
    fn session_exists(&self, name: &str) -> bool {
        self.manager.has_session(name)
    }

    fn checkpoint_allowed(&self, session: &str) -> bool {
        self.allow_checkpoint || self.checkpoint_sessions.iter().any(|s| s == session)
    }

    async fn checkpoint(&self, session: &str, snapshot: &str) -> Result<Value, ErrorBody> {
        match self.manager.checkpoint(session, snapshot).await {
            Ok(info) => Ok(serde_json::to_value(info).unwrap_or(Value::Null)),
            Err(e) => Err(ErrorBody {
                code: e.code().into(),
                message: e.to_string(),
            }),
        }
    }
}

/// A hub serving a manager's sessions; dropped, it stops listening.
pub struct RunningHub {
    pub hub: Hub,
    pub socket: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl RunningHub {
    /// Bind the host socket (0600) and serve every session's endpoint.
    pub async fn start(
        manager: Arc<Manager>,
        config: &HubConfig,
        data_dir: &std::path::Path,
    ) -> Result<RunningHub> {
        use std::os::unix::fs::PermissionsExt;
        let services = Arc::new(ManagerServices::new(manager.clone(), config));
        let hub = Hub::new(config.limits.clone(), services);
        let socket = config.socket_path(data_dir);
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let _ = std::fs::remove_file(&socket);
        // Bound under a private umask so it is never briefly open to others.
        let listener = {
            let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
            let bound = tokio::net::UnixListener::bind(&socket);
            rustix::process::umask(old);
            bound.map_err(|e| Error::io(format!("binding {}", socket.display()), e))?
        };
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("setting the mode of {}", socket.display()), e))?;
        let host = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.serve_host(listener).await })
        };
        let sessions = {
            let hub = hub.clone();
            tokio::spawn(async move { reconcile(hub, manager).await })
        };
        tracing::info!(socket = %socket.display(), "vhub listening");
        Ok(RunningHub {
            hub,
            socket,
            tasks: vec![host, sessions],
        })
    }
}

/// Keep one endpoint task per running session's boot: a session that
/// starts gets its endpoint served, one that stops (or is removed) loses
/// it.
async fn reconcile(hub: Hub, manager: Arc<Manager>) {
    struct Serving {
        box_id: String,
        boot: u64,
        task: tokio::task::JoinHandle<()>,
    }
    let mut serving: HashMap<String, Serving> = HashMap::new();
    let mut failed: HashMap<String, String> = HashMap::new();
    loop {
        let live: HashMap<String, String> = manager.session_boxes().into_iter().collect();
        serving.retain(|name, s| {
            let keep = live.get(name) == Some(&s.box_id) && !s.task.is_finished();
            if !keep {
                s.task.abort();
            }
            keep
        });
        for (name, box_id) in live {
            match manager.vhub_listener(&name) {
                Ok(Some((boot, listener))) => {
                    failed.remove(&name);
                    if serving
                        .get(&name)
                        .is_some_and(|s| s.boot == boot && s.box_id == box_id)
                    {
                        continue;
                    }
                    let listener = match to_tokio(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(session = %name, error = %e, "vhub endpoint unavailable");
                            continue;
                        }
                    };
                    if let Some(old) = serving.remove(&name) {
                        old.task.abort();
                    }
                    let h = hub.clone();
                    let session = name.clone();
                    let task =
                        tokio::spawn(async move { h.serve_sandbox(session, listener).await });
                    serving.insert(name, Serving { box_id, boot, task });
                }
                Ok(None) => {
                    if let Some(old) = serving.remove(&name) {
                        old.task.abort();
                    }
                }
                Err(e) => {
                    // Logged once per session, tried again each round.
                    let message = e.to_string();
                    if failed.get(&name) != Some(&message) {
                        tracing::warn!(session = %name, error = %message, "vhub endpoint unavailable");
                        failed.insert(name, message);
                    }
                }
            }
        }
        tokio::time::sleep(RECONCILE).await;
    }
}

fn to_tokio(listener: std::os::unix::net::UnixListener) -> Result<tokio::net::UnixListener> {
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
        .map_err(|e| Error::io("serving a V-Hub endpoint", e))
}
