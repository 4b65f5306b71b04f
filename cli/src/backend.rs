//! Which way a command reaches Blink, chosen once per invocation, and the
//! operations the commands share, each done either way with the SDK's own
//! types coming back (the REST API answers with exactly these), so printing
//! is shared and the output is the same:
//!
//! - `--server URL` / `BLINK_API_URL`: that server's REST API;
//! - else the server that holds the data dir, when it answers on
//!   `<data>/blink.sock` (asked first, so the data dir is not touched; and
//!   again when the data dir turns out to be locked);
//! - else the manager on the data dir, as without a server; a data dir
//!   held by another process without a server is refused as before.

use std::path::Path;
use std::sync::Arc;

use blink_sdk::manager::keys::{AuthorizedKey, KeyChange};
use blink_sdk::manager::{CloneSource, KeyStore, ResourceRequest};
use blink_sdk::network::NetworkPolicy;
use blink_sdk::runtime::SnapshotInfo;
use blink_sdk::runtime::selection::RuntimeChoice;
use blink_sdk::types::{
    ForwardingPolicy, NetworkInfo, OpenedSession, ResourcesChanged, SessionInfo, SessionStats,
};
use blink_sdk::{Manager, ManagerConfig, OpenOptions};
use hyper::Method;
use serde::Deserialize;
use serde_json::json;

use crate::api_client::{ApiClient, Endpoint, segment};

/// How this invocation reaches Blink.
pub enum Backend {
    /// The session manager on the data dir, in this process.
    Direct(Arc<Manager>),
    /// The data dir's files only (keys, images), for commands that need no
    /// manager and so take no lock.
    Files,
    /// A running `blink-server`.
    Server(ApiClient),
}

/// What a command needs of the direct path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The session manager (and the data-dir lock).
    Manager,
    /// The data dir's files only.
    Files,
}

impl Backend {
    /// Choose: a named server; else the manager (or the files), or the
    /// local socket of the server that holds the data dir.
    pub async fn choose(
        data_dir: &Path,
        server: Option<&str>,
        runtime: RuntimeChoice,
        pull: &blink_sdk::image::PullConfig,
        need: Need,
    ) -> anyhow::Result<Self> {
        if let Some(url) = server {
            let token = std::env::var("BLINK_API_TOKEN").ok();
            return Ok(Self::Server(ApiClient::new(Endpoint::parse(url)?, token)));
        }
        let local = ApiClient::new(
            Endpoint::Unix(blink_sdk::manager::api_socket(data_dir)),
            None,
        );
        // A server that answers on the data dir's socket holds it: go
        // through it without touching the data dir (keys too, so that it
        // sees changes at once).
        if socket_present(data_dir) && local.answers().await {
            return Ok(Self::Server(local));
        }
        if need == Need::Files {
            return Ok(Self::Files);
        }
        let mut config = ManagerConfig::new(data_dir);
        config.runtime = runtime;
        config.pull = pull.clone();
        match Manager::open(config).await {
            Ok(m) => Ok(Self::Direct(m)),
            Err(e @ blink_sdk::Error::DataDirLocked { .. }) => {
                // A server that has just started holds it.
                if socket_present(data_dir) && local.answers().await {
                    tracing::debug!("data dir held by a server: using its local socket");
                    Ok(Self::Server(local))
                } else {
                    Err(e.into())
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The way `choose` would go, found without opening a manager (for
    /// `doctor`): `direct: <data dir>`, `server: unix:<socket>` or
    /// `server: http://…`.
    pub async fn describe(data_dir: &Path, server: Option<&str>) -> anyhow::Result<Route> {
        if let Some(url) = server {
            let endpoint = Endpoint::parse(url)?;
            let token = std::env::var("BLINK_API_TOKEN").ok();
            let answers = ApiClient::new(endpoint.clone(), token).answers().await;
            return Ok(Route::server(endpoint, answers));
        }
        let socket = blink_sdk::manager::api_socket(data_dir);
        let local = ApiClient::new(Endpoint::Unix(socket.clone()), None);
        if socket_present(data_dir) && local.answers().await {
            return Ok(Route::server(Endpoint::Unix(socket), true));
        }
        Ok(Route {
            kind: "direct",
            target: data_dir.display().to_string(),
            answers: None,
        })
    }

    /// The manager of the direct path.
    pub fn manager(&self) -> Option<&Arc<Manager>> {
        match self {
            Self::Direct(m) => Some(m),
            _ => None,
        }
    }

    fn server(&self) -> Option<&ApiClient> {
        match self {
            Self::Server(c) => Some(c),
            _ => None,
        }
    }

    /// The manager or the server; the files-only path has neither.
    fn either(&self) -> anyhow::Result<Either<'_>> {
        match self {
            Self::Direct(m) => Ok(Either::Manager(m)),
            Self::Server(c) => Ok(Either::Server(c)),
            Self::Files => anyhow::bail!(
                "this command needs the session manager (a bug of blink-cli: it chose the files-only path)"
            ),
        }
    }

    pub async fn list_sessions(&self) -> anyhow::Result<Vec<SessionInfo>> {
        match self.either()? {
            Either::Manager(m) => Ok(m.list_sessions()),
            Either::Server(c) => {
                #[derive(Deserialize)]
                struct List {
                    sessions: Vec<SessionInfo>,
                }
                let list: List = c.call(Method::GET, "/api/sessions", NO_BODY).await?;
                Ok(list.sessions)
            }
        }
    }

    pub async fn session_info(&self, name: &str) -> anyhow::Result<SessionInfo> {
        match self.either()? {
            Either::Manager(m) => Ok(m.session_info(name)?),
            Either::Server(c) => c.call(Method::GET, &session_path(name, ""), NO_BODY).await,
        }
    }

    pub async fn open_session(
        &self,
        name: &str,
        image: Option<String>,
        warm: bool,
        resources: ResourceRequest,
        from: Option<String>,
    ) -> anyhow::Result<OpenedSession> {
        match self.either()? {
            Either::Manager(m) => {
                let from = from.as_deref().map(CloneSource::parse).transpose()?;
                let options = OpenOptions {
                    image,
                    warm: warm.then_some(true),
                    resources,
                    from,
                    network: None,
                    forwarding: None,
                };
                Ok(m.open_session(name, options).await?)
            }
            Either::Server(c) => {
                let mut body = resource_fields(&resources);
                body["name"] = json!(name);
                if warm {
                    body["warm"] = json!(true);
                }
                if let Some(image) = image {
                    body["image"] = json!(image);
                }
                if let Some(from) = from {
                    body["from"] = json!(from);
                }
                c.call(Method::POST, "/api/sessions", Some(&body)).await
            }
        }
    }

    pub async fn stop_session(&self, name: &str, force: bool) -> anyhow::Result<SessionInfo> {
        match self.either()? {
            Either::Manager(m) => Ok(m.stop_session(name, force).await?),
            Either::Server(c) => {
                let path = format!("{}?force={force}", session_path(name, "/stop"));
                c.call(Method::POST, &path, NO_BODY).await
            }
        }
    }

    /// Move a session to node `to` of a cluster: only a cluster's router
    /// does that. Its answer (`{session, node}`).
    pub async fn move_session(&self, name: &str, to: &str) -> anyhow::Result<serde_json::Value> {
        match self.either()? {
            Either::Manager(_) => anyhow::bail!(
                "session move needs a cluster: point --server (BLINK_API_URL) at one of its routers"
            ),
            Either::Server(c) => {
                let body = serde_json::json!({ "to": to });
                c.call(Method::POST, &session_path(name, "/move"), Some(&body))
                    .await
            }
        }
    }

    /// Keep session `name`'s export in the cluster's export store: only a
    /// cluster's router does that. Its answer (`{session, size_bytes}`).
    pub async fn backup_session(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        match self.either()? {
            Either::Manager(_) => anyhow::bail!(
                "session backup needs a cluster: point --server (BLINK_API_URL) at one of its routers"
            ),
            Either::Server(c) => {
                c.call(Method::POST, &session_path(name, "/backup"), NO_BODY)
                    .await
            }
        }
    }

    /// A cluster's live nodes, as its router lists them (`{nodes: [...]}`).
    pub async fn cluster_nodes(&self) -> anyhow::Result<serde_json::Value> {
        match self {
            Self::Server(c) => c.call(Method::GET, "/api/cluster/nodes", NO_BODY).await,
            _ => anyhow::bail!(
                "cluster nodes needs a cluster: point --server (BLINK_API_URL) at one of its routers"
            ),
        }
    }

    pub async fn remove_session(&self, name: &str, force: bool) -> anyhow::Result<()> {
        match self.either()? {
            Either::Manager(m) => Ok(m.remove_session(name, force).await?),
            Either::Server(c) => {
                let path = format!("{}?force={force}", session_path(name, ""));
                c.call_empty(Method::DELETE, &path, NO_BODY).await
            }
        }
    }

    /// Change what is given of a session's forwarding switches and egress
    /// policy; the network as it is afterwards.
    pub async fn network(
        &self,
        name: &str,
        local_forwarding: Option<bool>,
        remote_forwarding: Option<bool>,
        policy: Option<NetworkPolicy>,
    ) -> anyhow::Result<NetworkInfo> {
        let switches = local_forwarding.is_some() || remote_forwarding.is_some();
        let merge = |mut p: ForwardingPolicy| {
            p.local = local_forwarding.unwrap_or(p.local);
            p.remote = remote_forwarding.unwrap_or(p.remote);
            p
        };
        match self.either()? {
            Either::Manager(m) => {
                if switches {
                    let policy = merge(m.session_info(name)?.network.forwarding);
                    m.set_forwarding(name, policy).await?;
                }
                if let Some(policy) = policy {
                    m.set_network(name, policy).await?;
                }
                Ok(m.session_info(name)?.network)
            }
            Either::Server(c) => {
                if switches {
                    let path = session_path(name, "/forwarding");
                    let now: ForwardingPolicy = c.call(Method::GET, &path, NO_BODY).await?;
                    let _: ForwardingPolicy = c.call(Method::PUT, &path, Some(&merge(now))).await?;
                }
                let path = session_path(name, "/network");
                match policy {
                    Some(policy) => c.call(Method::PUT, &path, Some(&policy)).await,
                    None => c.call(Method::GET, &path, NO_BODY).await,
                }
            }
        }
    }

    pub async fn session_stats(&self, name: &str) -> anyhow::Result<SessionStats> {
        match self.either()? {
            Either::Manager(m) => Ok(m.session_stats(name)?),
            Either::Server(c) => {
                c.call(Method::GET, &session_path(name, "/stats"), NO_BODY)
                    .await
            }
        }
    }

    pub async fn set_resources(
        &self,
        name: &str,
        request: ResourceRequest,
    ) -> anyhow::Result<ResourcesChanged> {
        match self.either()? {
            Either::Manager(m) => Ok(m.set_resources(name, request).await?),
            Either::Server(c) => {
                let body = resource_fields(&request);
                c.call(
                    Method::PATCH,
                    &session_path(name, "/resources"),
                    Some(&body),
                )
                .await
            }
        }
    }

    pub async fn checkpoint(&self, name: &str, snapshot: &str) -> anyhow::Result<SnapshotInfo> {
        match self.either()? {
            Either::Manager(m) => Ok(m.checkpoint(name, snapshot).await?),
            Either::Server(c) => {
                let body = json!({ "snapshot": snapshot });
                c.call(
                    Method::POST,
                    &session_path(name, "/checkpoints"),
                    Some(&body),
                )
                .await
            }
        }
    }

    pub async fn checkpoints(&self, name: &str) -> anyhow::Result<Vec<SnapshotInfo>> {
        match self.either()? {
            Either::Manager(m) => Ok(m.checkpoints(name)?),
            Either::Server(c) => {
                #[derive(Deserialize)]
                struct List {
                    checkpoints: Vec<SnapshotInfo>,
                }
                let path = session_path(name, "/checkpoints");
                let list: List = c.call(Method::GET, &path, NO_BODY).await?;
                Ok(list.checkpoints)
            }
        }
    }

    pub async fn remove_checkpoint(&self, name: &str, snapshot: &str) -> anyhow::Result<()> {
        match self.either()? {
            Either::Manager(m) => Ok(m.remove_checkpoint(name, snapshot).await?),
            Either::Server(c) => {
                let path = session_path(name, &format!("/checkpoints/{}", segment(snapshot)));
                c.call_empty(Method::DELETE, &path, NO_BODY).await
            }
        }
    }

    /// Restore a snapshot; the session as it is afterwards.
    pub async fn restore(
        &self,
        name: &str,
        snapshot: &str,
        force: bool,
    ) -> anyhow::Result<SessionInfo> {
        match self.either()? {
            Either::Manager(m) => {
                m.restore_checkpoint(name, snapshot, force).await?;
                Ok(m.session_info(name)?)
            }
            Either::Server(c) => {
                let path = format!(
                    "{}?force={force}",
                    session_path(name, &format!("/checkpoints/{}/restore", segment(snapshot)))
                );
                c.call(Method::POST, &path, NO_BODY).await
            }
        }
    }

    /// Authorize a key line for a session.
    pub async fn add_key(
        &self,
        data_dir: &Path,
        name: &str,
        line: &str,
    ) -> anyhow::Result<(AuthorizedKey, KeyChange)> {
        let Some(c) = self.server() else {
            return Ok(KeyStore::open(data_dir)?.add(name, line)?);
        };
        #[derive(Deserialize)]
        struct Added {
            key: KeyView,
            added: bool,
            options_changed: bool,
        }
        let body = json!({ "key": line });
        let added: Added = c
            .call(Method::POST, &session_path(name, "/keys"), Some(&body))
            .await?;
        let change = match (added.added, added.options_changed) {
            (true, _) => KeyChange::Added,
            (false, true) => KeyChange::OptionsChanged,
            (false, false) => KeyChange::Unchanged,
        };
        Ok((added.key.parse()?, change))
    }

    /// A session's keys.
    pub async fn keys(&self, data_dir: &Path, name: &str) -> anyhow::Result<Vec<AuthorizedKey>> {
        let Some(c) = self.server() else {
            let store = KeyStore::open(data_dir)?;
            if !store.session_exists(name)? {
                return Err(blink_sdk::Error::SessionNotFound(name.into()).into());
            }
            return Ok(store.list(name)?);
        };
        #[derive(Deserialize)]
        struct List {
            keys: Vec<KeyView>,
        }
        let list: List = c
            .call(Method::GET, &session_path(name, "/keys"), NO_BODY)
            .await?;
        list.keys.into_iter().map(|k| k.parse()).collect()
    }

    /// Remove a key by fingerprint: the key removed, or `None`.
    pub async fn remove_key(
        &self,
        data_dir: &Path,
        name: &str,
        fingerprint: &str,
    ) -> anyhow::Result<Option<AuthorizedKey>> {
        let Some(c) = self.server() else {
            return Ok(KeyStore::open(data_dir)?.remove(name, fingerprint)?);
        };
        // The server answers 204 without the key: find it first.
        let keys = self.keys(data_dir, name).await?;
        let wanted = fingerprint.strip_prefix("SHA256:").unwrap_or(fingerprint);
        let Some(key) = keys
            .into_iter()
            .find(|k| k.fingerprint.strip_prefix("SHA256:") == Some(wanted))
        else {
            return Ok(None);
        };
        let path = session_path(name, &format!("/keys/{}", segment(&key.fingerprint)));
        match c.call_empty(Method::DELETE, &path, NO_BODY).await {
            Ok(()) => Ok(Some(key)),
            Err(e) if is_code(&e, "key_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Where a command goes, as `doctor` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Route {
    /// `direct` or `server`.
    pub kind: &'static str,
    /// The data dir, `unix:<socket>` or `http://HOST:PORT`.
    pub target: String,
    /// For a server: whether it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<bool>,
}

impl Route {
    fn server(endpoint: Endpoint, answers: bool) -> Self {
        Self {
            kind: "server",
            target: endpoint.to_string(),
            answers: Some(answers),
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.target)?;
        if self.answers == Some(false) {
            f.write_str(" (not answering)")?;
        }
        Ok(())
    }
}

enum Either<'a> {
    Manager(&'a Arc<Manager>),
    Server(&'a ApiClient),
}

/// `None` as a body of no type.
const NO_BODY: Option<&()> = None;

/// Whether the socket file is there at all (no connection attempt then).
fn socket_present(data_dir: &Path) -> bool {
    std::fs::symlink_metadata(blink_sdk::manager::api_socket(data_dir)).is_ok()
}

/// `/api/sessions/{name}{rest}`.
pub fn session_path(name: &str, rest: &str) -> String {
    format!("/api/sessions/{}{rest}", segment(name))
}

/// Whether an error is the API's error with this code.
pub fn is_code(e: &anyhow::Error, code: &str) -> bool {
    e.downcast_ref::<crate::api_client::ApiError>()
        .is_some_and(|a| a.code == code)
}

/// The size fields of an open or resources request, as the API names them.
fn resource_fields(r: &ResourceRequest) -> serde_json::Value {
    let mut body = json!({});
    let mut set = |key: &str, value: Option<serde_json::Value>| {
        if let Some(v) = value {
            body[key] = v;
        }
    };
    set("cpus", r.cpus.map(|v| json!(v)));
    set("memory_mib", r.memory_mib.map(|v| json!(v)));
    set("pids", r.pids.map(|v| json!(v)));
    set("disk_mib", r.disk_mib.map(|v| json!(v)));
    set("run_timeout_secs", r.run_timeout_secs.map(|v| json!(v)));
    set("idle_timeout_secs", r.idle_timeout_secs.map(|v| json!(v)));
    body
}

/// A key as the REST API shows it; its stored line parses back into the
/// SDK's own type.
#[derive(Deserialize)]
struct KeyView {
    key: String,
}

impl KeyView {
    fn parse(self) -> anyhow::Result<AuthorizedKey> {
        AuthorizedKey::parse(&self.key)?
            .ok_or_else(|| anyhow::anyhow!("the server listed a key line that holds no key"))
    }
}
