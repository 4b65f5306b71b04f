//! The `[images]` settings: when to pull, where from, with what limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::oci;

/// Whether a session or run that names an image the store lacks pulls it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull what is missing (the default).
    #[default]
    Missing,
    /// Never pull on demand; `blink-cli image pull` still does.
    Never,
}

/// How images are pulled from registries (`[images]` in the server's
/// config, `--config` of the CLI). docs/IMAGES.md explains each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullConfig {
    pub pull: PullPolicy,
    /// Mirrors by registry (`"docker.io" = ["mirror.example:5000"]`),
    /// tried in order before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Try the registry itself once its mirrors failed.
    pub mirror_fallback: bool,
    /// Registries (`host[:port]`, mirrors included) spoken to over plain
    /// HTTP. Never implied: everything else is HTTPS.
    pub insecure_registries: Vec<String>,
    /// The registries a reference may name (`host[:port]`); empty: any.
    pub allowed_registries: Vec<String>,
    /// A Docker `config.json`-style credentials file; by default
    /// `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, then
    /// `~/.docker/config.json`.
    pub auth_file: Option<PathBuf>,
    /// Largest manifest or index accepted.
    pub max_manifest_bytes: u64,
    /// Largest image config accepted.
    pub max_config_bytes: u64,
    /// Most layers in an image.
    pub max_layers: usize,
    /// Most bytes of blobs (compressed layers and config) in an image.
    pub max_image_bytes: u64,
    /// Layers downloaded at once by one pull.
    pub concurrent_downloads: usize,
    pub connect_timeout_secs: u64,
    /// A response that sends nothing for this long is abandoned.
    pub read_timeout_secs: u64,
    /// A whole pull may take this long.
    pub pull_timeout_secs: u64,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            pull: PullPolicy::Missing,
            mirrors: BTreeMap::new(),
            mirror_fallback: true,
            insecure_registries: Vec::new(),
            allowed_registries: Vec::new(),
            auth_file: None,
            max_manifest_bytes: oci::MAX_MANIFEST_BYTES,
            max_config_bytes: oci::MAX_CONFIG_BYTES,
            max_layers: 128,
            max_image_bytes: 32 << 30,
            concurrent_downloads: 4,
            connect_timeout_secs: 30,
            read_timeout_secs: 60,
            pull_timeout_secs: 3600,
        }
    }
}

/// A registry's `host[:port]` as written in settings and references.
pub(crate) fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !name.starts_with(['.', '-'])
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok())
}

impl PullConfig {
    /// Check the settings; the error names the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(format!("[images] {what}")));
        let hosts = self
            .mirrors
            .iter()
            .flat_map(|(k, v)| std::iter::once(k).chain(v))
            .map(|h| ("mirrors", h))
            .chain(
                self.insecure_registries
                    .iter()
                    .map(|h| ("insecure_registries", h)),
            )
            .chain(
                self.allowed_registries
                    .iter()
                    .map(|h| ("allowed_registries", h)),
            );
        for (setting, host) in hosts {
            if !valid_host(host) {
                return bad(format!(
                    "{setting}: {host:?} is not a registry host[:port] (no scheme, no path)"
                ));
            }
        }
        for (name, value) in [
            ("max_manifest_bytes", self.max_manifest_bytes),
            ("max_config_bytes", self.max_config_bytes),
            ("max_image_bytes", self.max_image_bytes),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("read_timeout_secs", self.read_timeout_secs),
            ("pull_timeout_secs", self.pull_timeout_secs),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.max_layers == 0 || self.concurrent_downloads == 0 {
            return bad("max_layers and concurrent_downloads must be at least 1".into());
        }
        if self.concurrent_downloads > 32 {
            return bad("concurrent_downloads may be at most 32".into());
        }
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub(crate) fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }

    pub(crate) fn pull_timeout(&self) -> Duration {
        Duration::from_secs(self.pull_timeout_secs)
    }

    /// Whether a reference may name this registry.
    pub(crate) fn allows(&self, registry: &str) -> bool {
        self.allowed_registries.is_empty() || self.allowed_registries.iter().any(|r| r == registry)
    }

    /// Whether this host is spoken to over plain HTTP.
    pub(crate) fn is_insecure(&self, host: &str) -> bool {
        self.insecure_registries.iter().any(|h| h == host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_pull_over_https_only() {
        let c = PullConfig::default();
        c.validate().unwrap();
        assert!(!c.is_insecure("docker.io"));
        assert!(c.allows("docker.io"));
    }

    #[test]
    fn hosts_are_checked() {
        for bad in ["http://x", "x/y", "", "x:", "x:99999", "-x", "a b"] {
            let c = PullConfig {
                insecure_registries: vec![bad.into()],
                ..Default::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("insecure_registries"), "{e}");
        }
        let c = PullConfig {
            mirrors: [("docker.io".into(), vec!["127.0.0.1:5000".into()])].into(),
            allowed_registries: vec!["localhost".into(), "ghcr.io".into()],
            ..Default::default()
        };
        c.validate().unwrap();
        assert!(!c.allows("docker.io"));
    }

    #[test]
    fn parses_from_toml_names() {
        let c: PullConfig = serde_json::from_value(serde_json::json!({
            "pull": "never",
            "mirrors": {"docker.io": ["m:1"]},
            "mirror_fallback": false,
        }))
        .unwrap();
        assert_eq!(c.pull, PullPolicy::Never);
        assert!(!c.mirror_fallback);
        assert!(serde_json::from_value::<PullConfig>(serde_json::json!({"mirrorz": {}})).is_err());
    }
}
