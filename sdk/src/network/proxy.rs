//! A session's egress proxy: HTTP (CONNECT and absolute-form requests) and
//! SOCKS5 on one port of the sandbox's own loopback, served by Blink on the
//! host side. Every destination is decided by the session's policy, by name
//! before any lookup and by address after; refusals are answered in the
//! protocol the program speaks (403, SOCKS5 "not allowed by ruleset"),
//! every connection is logged and counted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::dial::{DialError, Egress, Outbound};

/// The port the proxy listens on inside every sandbox with network access.
pub const PROXY_PORT: u16 = 3128;
/// Connections one session's proxy relays at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a program has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Each direction of a relayed connection copies through this much.
const RELAY_BUFFER: usize = 64 * 1024;
/// Largest HTTP request head.
const MAX_HEAD: usize = 16 * 1024;

/// Accept and relay until `stop` turns true (or the listener fails).
pub async fn serve(listener: TcpListener, egress: Egress, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else {
            return;
        };
        let egress = egress.clone();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = refuse_http(&mut stream, 503, "too many connections at once").await;
            });
            continue;
        };
        tokio::spawn(async move {
            handle(stream, &egress).await;
            drop(permit);
        });
    }
}

/// Where a program asked to go.
struct Target {
    host: String,
    port: u16,
}

/// HTTP or SOCKS5, by the first byte.
async fn handle(inbound: TcpStream, egress: &Egress) {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(REQUEST_TIMEOUT, inbound.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return;
    }
    if first[0] == 5 {
        socks5(inbound, egress).await;
    } else {
        http(inbound, egress).await;
    }
}

/// Connect to `target` through the session's egress, relay both ways,
/// count and log (dial.rs). `greet` answers the program and sends what it
/// wrote after its request; `fail` answers a refusal.
async fn relay(
    mut inbound: TcpStream,
    target: Target,
    egress: &Egress,
    greet: impl AsyncFnOnce(&mut TcpStream, &mut TcpStream) -> std::io::Result<u64>,
    fail: impl AsyncFnOnce(&mut TcpStream, &str, bool) -> std::io::Result<()>,
) {
    let Outbound {
        stream: mut outbound,
        log,
        ..
    } = match egress.dial(&target.host, target.port, "proxy").await {
        Ok(o) => o,
        Err(e) => {
            let denied = matches!(e, DialError::Denied(_));
            let _ = fail(&mut inbound, &e.to_string(), denied).await;
            return;
        }
    };
    let Ok(sent) = greet(&mut inbound, &mut outbound).await else {
        return;
    };
    // Large buffers: a bulk download moves in few, big reads and writes.
    let (up, down) = tokio::io::copy_bidirectional_with_sizes(
        &mut inbound,
        &mut outbound,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await
    .unwrap_or((0, 0));
    log.finish(up + sent, down);
}

// ---- HTTP -------------------------------------------------------------

async fn refuse_http(stream: &mut TcpStream, status: u16, why: &str) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        503 => "Service Unavailable",
        _ => "Bad Gateway",
    };
    let body = format!("blink egress: {why}\n");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Read the request head (and whatever came after it).
async fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        let n = tokio::time::timeout(left, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `host[:port]` with a default port; IPv6 in brackets.
fn split_host_port(authority: &str, default: u16) -> Option<Target> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), default),
        }
    };
    (!host.is_empty() && port != 0).then_some(Target { host, port })
}

async fn http(mut inbound: TcpStream, egress: &Egress) {
    let Some((head, rest)) = read_head(&mut inbound).await else {
        let _ = refuse_http(&mut inbound, 400, "no complete request head").await;
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        let _ = refuse_http(&mut inbound, 400, "bad request line").await;
        return;
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let Some(t) = split_host_port(target, 443) else {
            let _ = refuse_http(&mut inbound, 400, "bad CONNECT target").await;
            return;
        };
        relay(
            inbound,
            t,
            egress,
            async |inbound, outbound| {
                inbound
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await?;
                // What the program sent after its request, without waiting.
                outbound.write_all(&rest).await?;
                Ok(rest.len() as u64)
            },
            async |inbound, why, denied| {
                refuse_http(inbound, if denied { 403 } else { 502 }, why).await
            },
        )
        .await;
        return;
    }
    // Absolute form: http://host[:port]/path
    let Some(after) = target.strip_prefix("http://") else {
        let _ = refuse_http(
            &mut inbound,
            400,
            "only http:// URLs and CONNECT go through this proxy (https: use CONNECT)",
        )
        .await;
        return;
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let Some(t) = split_host_port(authority, 80) else {
        let _ = refuse_http(&mut inbound, 400, "bad URL").await;
        return;
    };
    // The request as the origin expects it: origin-form, no proxy headers,
    // one request per connection.
    let mut forwarded = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive"
        ) {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    relay(
        inbound,
        t,
        egress,
        async |_, outbound| {
            outbound.write_all(forwarded.as_bytes()).await?;
            outbound.write_all(&rest).await?;
            Ok((forwarded.len() + rest.len()) as u64)
        },
        async |inbound, why, denied| {
            refuse_http(inbound, if denied { 403 } else { 502 }, why).await
        },
    )
    .await;
}

// ---- SOCKS5 -----------------------------------------------------------

async fn socks5(mut inbound: TcpStream, egress: &Egress) {
    let request = tokio::time::timeout(REQUEST_TIMEOUT, socks5_request(&mut inbound)).await;
    let target = match request {
        Ok(Ok(t)) => t,
        Ok(Err(code)) => {
            let _ = socks5_reply(&mut inbound, code).await;
            return;
        }
        Err(_) => return,
    };
    relay(
        inbound,
        target,
        egress,
        async |inbound, _| socks5_reply(inbound, 0).await.map(|()| 0),
        async |inbound, _, denied| socks5_reply(inbound, if denied { 2 } else { 5 }).await,
    )
    .await;
}

/// The greeting and CONNECT request; an error is the reply code to send.
async fn socks5_request(s: &mut TcpStream) -> Result<Target, u8> {
    let io = |_| 1u8;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.map_err(io)?;
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&0) {
        let _ = s.write_all(&[5, 0xff]).await;
        return Err(1);
    }
    s.write_all(&[5, 0]).await.map_err(io)?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await.map_err(io)?;
    if req[0] != 5 {
        return Err(1);
    }
    if req[1] != 1 {
        return Err(7); // only CONNECT
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await.map_err(io)?;
            IpAddr::from(a).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await.map_err(io)?;
            format!("[{}]", IpAddr::from(a))
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(io)?;
            let mut name = vec![0u8; usize::from(len[0])];
            s.read_exact(&mut name).await.map_err(io)?;
            String::from_utf8(name).map_err(|_| 1u8)?
        }
        _ => return Err(8),
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await.map_err(io)?;
    Ok(Target {
        host,
        port: u16::from_be_bytes(port),
    })
}

async fn socks5_reply(s: &mut TcpStream, code: u8) -> std::io::Result<()> {
    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}
