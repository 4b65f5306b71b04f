//! One place an image is pulled from (a registry or one of its mirrors):
//! where it is, how to authorize, and GET requests whose answers are
//! bounded (an error body is read up to a few KiB, a body the caller
//! streams is capped by the caller).
//!
//! The token dance (the registry's `WWW-Authenticate: Bearer` challenge,
//! a token from its realm, with Basic credentials if there are some) is
//! `oci-client`'s. The GETs are ours: `oci-client` reads manifests and
//! error bodies whole, with no limit, and a hostile registry would then
//! decide how much memory a pull takes.

use std::time::Duration;

use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::RegistryOperation;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RANGE};
use tracing::debug;

use super::auth::Credentials;
use crate::error::{Error, Result};
use crate::image::reference::RemoteReference;

/// How much of an error answer is read for its message.
const MAX_ERROR_BODY: usize = 4096;

/// A registry or mirror a pull talks to.
pub(super) struct Source {
    /// `host[:port]` as configured (`docker.io` for Docker Hub).
    pub host: String,
    /// True for a mirror (messages say so).
    pub mirror: bool,
    scheme: &'static str,
    reference: Reference,
    creds: Option<Credentials>,
    authorization: tokio::sync::Mutex<Option<HeaderValue>>,
    http: reqwest::Client,
    oci: oci_client::Client,
}

/// What a refused or failed request is about, for its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asking {
    Manifest,
    Blob,
}

impl Source {
    pub(super) fn new(
        host: &str,
        mirror: bool,
        insecure: bool,
        remote: &RemoteReference,
        creds: Option<Credentials>,
        http: reqwest::Client,
        oci: oci_client::Client,
    ) -> Self {
        // oci-client contacts Docker Hub as index.docker.io; so do we.
        let reference = Reference::with_tag(
            host.to_owned(),
            remote.repository.clone(),
            "latest".to_owned(),
        );
        Self {
            host: host.to_owned(),
            mirror,
            scheme: if insecure { "http" } else { "https" },
            reference,
            creds,
            authorization: tokio::sync::Mutex::new(None),
            http,
            oci,
        }
    }

    /// `registry HOST` or `mirror HOST`, for messages.
    pub(super) fn label(&self) -> String {
        format!(
            "{} {}",
            if self.mirror { "mirror" } else { "registry" },
            self.host
        )
    }

    pub(super) fn error(&self, reason: impl Into<String>) -> Error {
        Error::Registry {
            registry: if self.mirror {
                format!("{} (mirror)", self.host)
            } else {
                self.host.clone()
            },
            reason: reason.into(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}://{}/v2/{}/{path}",
            self.scheme,
            self.reference.resolve_registry(),
            self.reference.repository()
        )
    }

    /// Get a token (or decide on Basic, or nothing) for pulling.
    pub(super) async fn authorize(&self) -> Result<()> {
        let auth = match &self.creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let token = self
            .oci
            .auth(&self.reference, &auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.oci_error(e))?;
        let header = match (token, &self.creds) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(c)) => {
                use base64::Engine as _;
                let pair = format!("{}:{}", c.username, c.password);
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
        };
        let mut value = header
            .map(|h| HeaderValue::from_str(&h))
            .transpose()
            .map_err(|_| self.error("the registry's token is not a valid header value"))?;
        if let Some(v) = value.as_mut() {
            v.set_sensitive(true);
        }
        *self.authorization.lock().await = value;
        Ok(())
    }

    fn oci_error(&self, e: oci_client::errors::OciDistributionError) -> Error {
        use oci_client::errors::OciDistributionError as E;
        match e {
            E::RequestError(e) => self.request_error(&e),
            E::AuthenticationFailure(body) => self.error(format!(
                "its token service refused {}: {}",
                self.who(),
                first_line(&body)
            )),
            other => self.error(format!("authorizing: {other}")),
        }
    }

    fn who(&self) -> String {
        match &self.creds {
            Some(c) => format!("the credentials of {:?}", c.username),
            None => "an anonymous pull".into(),
        }
    }

    pub(super) fn request_error(&self, e: &reqwest::Error) -> Error {
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        let reason = if e.is_redirect() {
            format!("too many redirects (a redirect loop?): {chain}")
        } else if e.is_timeout() {
            format!("timed out: {chain}")
        } else if e.is_connect() {
            format!("cannot connect: {chain}")
        } else {
            chain
        };
        self.error(reason)
    }

    /// GET `/v2/<repository>/<path>`. A success (200, or 206 for a range)
    /// is returned for the caller to stream; anything else is an error
    /// naming what the registry said.
    pub(super) async fn get(
        &self,
        asking: Asking,
        path: &str,
        accept: Option<&str>,
        from: Option<u64>,
    ) -> Result<reqwest::Response> {
        let mut retried = false;
        loop {
            let mut req = self.http.get(self.url(path));
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(offset) = from {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            let auth = self.authorization.lock().await.clone();
            let had_auth = auth.is_some();
            if let Some(v) = auth {
                req = req.header(AUTHORIZATION, v);
            }
            let resp = req.send().await.map_err(|e| self.request_error(&e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == StatusCode::UNAUTHORIZED && had_auth && !retried {
                // A token can expire in a long pull: get another, once.
                debug!(source = %self.label(), "401 with a token; authorizing again");
                retried = true;
                self.authorize().await?;
                continue;
            }
            let body = bounded_text(resp).await;
            return Err(self.refusal(asking, path, status, &body));
        }
    }

    fn refusal(&self, asking: Asking, path: &str, status: StatusCode, body: &str) -> Error {
        let message = registry_message(body);
        let said = if message.is_empty() {
            String::new()
        } else {
            format!(" ({message})")
        };
        let what = match asking {
            Asking::Manifest => format!("manifest {}", path.trim_start_matches("manifests/")),
            Asking::Blob => format!("blob {}", path.trim_start_matches("blobs/")),
        };
        let repo = self.reference.repository();
        match status {
            StatusCode::UNAUTHORIZED => self.error(match &self.creds {
                None => format!(
                    "401 Unauthorized for {repo}{said}: it wants credentials and none are configured for {} (add them to a Docker config.json or DOCKER_AUTH_CONFIG; docs/IMAGES.md)",
                    self.host
                ),
                Some(c) => format!(
                    "401 Unauthorized for {repo}{said}: it refused the credentials of {:?}",
                    c.username
                ),
            }),
            StatusCode::FORBIDDEN => self.error(format!(
                "403 Forbidden: {} may not pull {repo}{said}",
                self.who()
            )),
            StatusCode::NOT_FOUND if asking == Asking::Manifest => Error::ImageNotFound {
                reference: format!("{}/{repo}:{}", self.host, path.trim_start_matches("manifests/"))
                    .replace(":sha256:", "@sha256:"),
                hint: if message.is_empty() {
                    format!("{} has no such image (404)", self.label())
                } else {
                    format!("{} has no such image (404: {message})", self.label())
                },
            },
            StatusCode::TOO_MANY_REQUESTS => {
                self.error(format!("429 Too Many Requests: rate limited{said}"))
            }
            s => self.error(format!("HTTP {s} for {what}{said}")),
        }
    }
}

/// The first line of a message from a registry, shortened, its control
/// characters (terminal escapes included) shown as `?`: it ends up in
/// logs and terminals.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    let mut out: String = line
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if line.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// An error answer's body, up to [`MAX_ERROR_BODY`] bytes.
async fn bounded_text(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = MAX_ERROR_BODY - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    };
    // An error body that trickles is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of an OCI error envelope (`{"errors":[{"code","message"}]}`),
/// else the body's first line.
fn registry_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_str::<Envelope>(body) {
        Ok(env) => env
            .errors
            .iter()
            .map(|e| first_line(&format!("{} {}", e.code, e.message)))
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => first_line(body),
    }
}

/// The source names for a registry: its mirrors in order, then itself
/// unless the settings say mirrors only.
pub(super) fn hosts_for(config: &super::PullConfig, registry: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = config
        .mirrors
        .get(registry)
        .into_iter()
        .flatten()
        .map(|m| (m.clone(), true))
        .collect();
    if out.is_empty() || config.mirror_fallback {
        out.push((registry.to_owned(), false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_short_messages() {
        let env =
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(registry_message(env), "MANIFEST_UNKNOWN manifest unknown");
        assert_eq!(registry_message("oops\nmore"), "oops");
        assert_eq!(first_line(&"x".repeat(300)).chars().count(), 201);
        assert_eq!(first_line("a\x1b[31mb\r"), "a?[31mb");
    }

    #[test]
    fn mirrors_come_first_then_the_registry_unless_told() {
        let mut c = super::super::PullConfig {
            mirrors: [("docker.io".into(), vec!["a:1".into(), "b".into()])].into(),
            ..Default::default()
        };
        assert_eq!(
            hosts_for(&c, "docker.io"),
            vec![
                ("a:1".into(), true),
                ("b".into(), true),
                ("docker.io".into(), false)
            ]
        );
        c.mirror_fallback = false;
        assert_eq!(hosts_for(&c, "docker.io").len(), 2);
        assert_eq!(hosts_for(&c, "ghcr.io"), vec![("ghcr.io".into(), false)]);
    }
}
