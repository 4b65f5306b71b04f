//! Registry credentials, as Docker keeps them: a `config.json`-style file
//! (`{"auths": {"host": {"auth": base64("user:password")}}}`) and the same
//! JSON in `DOCKER_AUTH_CONFIG` (as CI systems pass it), which wins.
//! Credential helpers (`credsStore`, `credHelpers`) are external programs
//! and are not run.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use tracing::{debug, warn};

use super::config::PullConfig;
use crate::error::{Error, Result};
use crate::image::reference::DOCKER_HUB;

/// Largest credentials file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// Credentials by registry host.
#[derive(Debug, Default)]
pub(crate) struct CredentialStore {
    by_host: HashMap<String, Credentials>,
}

/// The host a `config.json` key names: `https://index.docker.io/v1/` is
/// Docker Hub, `https://host:port/...` is `host:port`.
fn host_of(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => host,
    }
}

impl CredentialStore {
    /// Read the credentials file the settings name (or Docker's usual
    /// places) and `DOCKER_AUTH_CONFIG`. A missing file is no credentials;
    /// an unreadable or malformed one is an error naming it.
    pub fn load(config: &PullConfig) -> Result<Self> {
        let mut store = Self::default();
        if let Some(path) = Self::file(config) {
            match std::fs::File::open(&path) {
                Ok(f) => {
                    let mut text = String::new();
                    f.take(MAX_FILE_BYTES)
                        .read_to_string(&mut text)
                        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                    store.add(&path.display().to_string(), &text)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    debug!(path = %path.display(), "no registry credentials file");
                }
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            }
        }
        if let Ok(text) = std::env::var("DOCKER_AUTH_CONFIG")
            && !text.trim().is_empty()
        {
            store.add("DOCKER_AUTH_CONFIG", &text)?;
        }
        Ok(store)
    }

    fn file(config: &PullConfig) -> Option<PathBuf> {
        if let Some(p) = &config.auth_file {
            return Some(p.clone());
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(p) = env("REGISTRY_AUTH_FILE") {
            return Some(p.into());
        }
        if let Some(dir) = env("DOCKER_CONFIG") {
            return Some(Path::new(&dir).join("config.json"));
        }
        env("HOME").map(|home| Path::new(&home).join(".docker").join("config.json"))
    }

    /// Add the entries of one `config.json` text; later sources win.
    pub fn add(&mut self, source: &str, text: &str) -> Result<()> {
        let malformed = |reason: String| Error::CorruptState {
            path: PathBuf::from(source),
            reason,
        };
        let parsed: DockerConfig = serde_json::from_str(text)
            .map_err(|e| malformed(format!("not Docker's config.json: {e}")))?;
        for (key, entry) in parsed.auths {
            let host = host_of(&key);
            let creds = match (&entry.auth, &entry.username, &entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| malformed(format!("the auth of {key:?} is not base64")))?;
                    let text = String::from_utf8(raw)
                        .map_err(|_| malformed(format!("the auth of {key:?} is not UTF-8")))?;
                    let (user, pass) = text.split_once(':').ok_or_else(|| {
                        malformed(format!("the auth of {key:?} is not user:password"))
                    })?;
                    Credentials {
                        username: user.to_owned(),
                        password: pass.to_owned(),
                    }
                }
                (_, Some(user), Some(pass)) => Credentials {
                    username: user.clone(),
                    password: pass.clone(),
                },
                _ => {
                    if entry.identity_token.is_some() {
                        warn!(registry = %host, source, "identity tokens are not supported; pulling anonymously");
                    }
                    continue;
                }
            };
            self.by_host.insert(host, creds);
        }
        for host in parsed.cred_helpers.keys() {
            warn!(registry = %host_of(host), source, "credential helpers are not run; add the credentials to auths");
        }
        if let Some(store) = parsed.creds_store {
            debug!(store, source, "credsStore is not run");
        }
        Ok(())
    }

    /// The credentials for `host` (`host[:port]`, `docker.io` for Hub).
    pub fn get(&self, host: &str) -> Option<&Credentials> {
        self.by_host.get(&host_of(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_docker_config_entries() {
        let mut s = CredentialStore::default();
        let text = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pw:with:colons")},
                "127.0.0.1:5000": {"username": "u", "password": "p"},
                "http://reg.example:443/v2/": {"auth": b64("r:s")},
                "token.example": {"identitytoken": "x"},
            },
            "credHelpers": {"gcr.io": "gcloud"},
        });
        s.add("test", &text.to_string()).unwrap();
        let hub = s.get("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "pw:with:colons")
        );
        assert_eq!(s.get("127.0.0.1:5000").unwrap().username, "u");
        assert_eq!(s.get("reg.example:443").unwrap().password, "s");
        assert!(s.get("token.example").is_none());
        assert!(s.get("127.0.0.1:5001").is_none());
        // Never printed.
        assert!(!format!("{hub:?}").contains("pw"));
    }

    #[test]
    fn malformed_files_are_named() {
        let mut s = CredentialStore::default();
        let e = s.add("/x/config.json", "{").unwrap_err().to_string();
        assert!(e.contains("/x/config.json"), "{e}");
        let e = s
            .add("f", r#"{"auths":{"h":{"auth":"%%%"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64"), "{e}");
    }
}
