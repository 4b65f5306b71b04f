//! The HTTP/1.1 client of a running `blink-server`: its local unix socket
//! (`<data>/blink.sock`, no token: the socket's permission is the check) or
//! `http://HOST:PORT` with the bearer token of `BLINK_API_TOKEN`. Error
//! answers (`{"error": {"code", "message"}}`) come back as [`ApiError`],
//! printed like the SDK's own errors.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the server is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The local socket of the server that owns a data dir.
    Unix(PathBuf),
    /// `http://HOST:PORT`: `authority` as the `Host` header names it.
    Http { authority: String },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Http { authority } => write!(f, "http://{authority}"),
        }
    }
}

impl Endpoint {
    /// `http://HOST[:PORT][/]` or `unix:PATH`. No TLS in this client:
    /// `https://` is refused with what to do instead.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url.trim();
        if let Some(path) = url.strip_prefix("unix:") {
            anyhow::ensure!(!path.is_empty(), "--server unix: needs a socket path");
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if url.starts_with("https://") {
            anyhow::bail!(
                "--server {url}: blink-cli speaks plain http:// only; reach a remote server through an SSH tunnel (ssh -L 8787:127.0.0.1:8787 HOST, then --server http://127.0.0.1:8787) or a TLS proxy on this host"
            );
        }
        let Some(rest) = url.strip_prefix("http://") else {
            anyhow::bail!("--server {url:?}: expected http://HOST:PORT (or unix:PATH)");
        };
        let authority = rest.trim_end_matches('/');
        let valid = !authority.is_empty()
            && !authority.contains(['/', '?', '#', '@', ' '])
            && authority.parse::<hyper::http::uri::Authority>().is_ok();
        anyhow::ensure!(
            valid,
            "--server {url:?}: expected http://HOST:PORT with no path"
        );
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !p.contains(']')
        }) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self::Http { authority })
    }
}

/// An error answer of the API, or a failure to reach it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status (0 when the server was not reached).
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// A connection to the server: either transport.
pub enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Body of a streamed upload.
pub type Upload = http_body_util::channel::Channel<Bytes, std::convert::Infallible>;

/// A client of one server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub endpoint: Endpoint,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        // The socket needs no token (and is never sent one).
        let token = match endpoint {
            Endpoint::Unix(_) => None,
            Endpoint::Http { .. } => token.filter(|t| !t.is_empty()),
        };
        Self { endpoint, token }
    }

    /// A new connection (one per request: the CLI makes few).
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let unreachable = |e: std::io::Error| ApiError {
            status: 0,
            code: "server_unreachable".into(),
            message: format!("cannot reach the Blink server at {}: {e}", self.endpoint),
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(path) => Conn::Unix(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?,
            ),
            Endpoint::Http { authority } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(unreachable)?;
                let _ = stream.set_nodelay(true);
                Conn::Tcp(stream)
            }
        })
    }

    /// `Host` as the server's guard expects it.
    pub fn authority(&self) -> &str {
        match &self.endpoint {
            Endpoint::Unix(_) => "localhost",
            Endpoint::Http { authority } => authority,
        }
    }

    /// `Authorization` for this server, if it takes a token.
    pub fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// A request to `path` with the headers every call carries.
    pub fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.authority())
            .header(header::USER_AGENT, "blink-cli");
        if let Some(bearer) = self.bearer() {
            builder = builder.header(header::AUTHORIZATION, bearer);
        }
        builder
    }

    /// Send a request on a fresh connection; the answer's head, its body
    /// still to read.
    pub async fn send<B>(
        &self,
        request: Request<B>,
    ) -> anyhow::Result<Response<hyper::body::Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = hyper_util::rt::TokioIo::new(self.connect().await?);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let response = sender.send_request(request).await.map_err(|e| ApiError {
            status: 0,
            code: "server_unreachable".into(),
            message: format!("the Blink server at {} did not answer: {e}", self.endpoint),
        })?;
        Ok(response)
    }

    /// Send, then fail with the server's error on a non-2xx answer.
    pub async fn send_ok<B>(
        &self,
        request: Request<B>,
    ) -> anyhow::Result<Response<hyper::body::Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = self.send(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Err(error_of(status, &body).into())
    }

    /// A JSON call; `body` is sent as JSON when given.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<T> {
        let bytes = self.call_bytes(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "the Blink server at {} answered {path} with JSON this blink-cli does not read ({e}): are both the same version?",
                self.endpoint
            )
        })
    }

    /// A call whose answer has no body to read (204).
    pub async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<()> {
        self.call_bytes(method, path, body).await.map(|_| ())
    }

    async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<Bytes> {
        let mut builder = self.request(method, path);
        let payload = match body {
            Some(b) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(payload))?;
        let response = self.send_ok(request).await?;
        Ok(response.into_body().collect().await?.to_bytes())
    }

    /// Whether a Blink server answers here (`/api/health`), within a
    /// couple of seconds.
    pub async fn answers(&self) -> bool {
        let probe = async {
            let request = self
                .request(Method::GET, "/api/health")
                .body(Full::new(Bytes::new()))
                .ok()?;
            let response = self.send(request).await.ok()?;
            Some(response.status() == StatusCode::OK)
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(3), probe).await,
            Ok(Some(true))
        )
    }
}

/// The error an answer carries: the API's body when it is one, else the
/// status.
fn error_of(status: StatusCode, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<blink_sdk::types::ErrorBody>(body) {
        Ok(b) => ApiError {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ApiError {
            status: status.as_u16(),
            code: "http_error".into(),
            message: format!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            ),
        },
    }
}

/// A path segment, percent-encoded (fingerprints carry `/` and `+`).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse_or_say_why_not() {
        let e = |u: &str| Endpoint::parse(u).map(|e| e.to_string());
        assert_eq!(e("http://127.0.0.1:8787").unwrap(), "http://127.0.0.1:8787");
        assert_eq!(
            e("http://127.0.0.1:8787/").unwrap(),
            "http://127.0.0.1:8787"
        );
        assert_eq!(
            e("http://blink.internal").unwrap(),
            "http://blink.internal:80"
        );
        assert_eq!(e("http://[::1]:9").unwrap(), "http://[::1]:9");
        assert_eq!(e("unix:/run/b.sock").unwrap(), "unix:/run/b.sock");
        assert!(
            e("https://x:1")
                .unwrap_err()
                .to_string()
                .contains("http:// only")
        );
        assert!(e("ftp://x").is_err());
        assert!(e("http://x:1/api").is_err());
        assert!(e("http://").is_err());
    }

    #[test]
    fn error_bodies_map_back() {
        let body = br#"{"error":{"code":"session_not_found","message":"session \"x\" not found"}}"#;
        let e = error_of(StatusCode::NOT_FOUND, body);
        assert_eq!(e.code, "session_not_found");
        assert_eq!(e.to_string(), "session \"x\" not found");
        let e = error_of(StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(e.code, "http_error");
        assert!(e.message.contains("502"));
        assert_eq!(segment("SHA256:a/b+c="), "SHA256:a%2Fb%2Bc%3D");
    }
}
