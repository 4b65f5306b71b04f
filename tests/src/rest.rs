//! Helpers for the REST API tests: a small JSON client and WebSocket
//! attach, as methods of [`Server`] (started by [`crate::ServerBuilder`]).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::Server;

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// An HTTP answer: status and the body as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP request failed: {e}"),
    };
    let status = response.status();
    let location = response.header("location").map(str::to_owned);
    let text = response.into_string().expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    Answer {
        status,
        body,
        location,
    }
}

impl Server {
    /// Lines of `GET /api/sessions/{name}/events` (server-sent events)
    /// as they arrive.
    pub fn events(&self, session: &str) -> std::sync::mpsc::Receiver<String> {
        use std::io::BufRead as _;
        let mut req = ureq::get(&self.url(&format!("/api/sessions/{session}/events")));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let response = req.call().expect("event stream");
        assert_eq!(
            response.header("content-type"),
            Some("text/event-stream"),
            "not server-sent events"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(response.into_reader()).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        let req = agent.request(method, &self.url(path));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        answer(self.request("GET", path).call())
    }

    /// GET with extra headers, such as a forged `Host` or an `Origin`; the
    /// connection still goes to 127.0.0.1.
    /// GET raw bytes: status, `Content-Length`, body.
    pub fn get_bytes(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Option<u64>, Vec<u8>) {
        let mut req = self.request("GET", path);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        let response = match req.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let status = response.status();
        let length = response
            .header("Content-Length")
            .and_then(|v| v.parse().ok());
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("body");
        (status, length, body)
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.request("GET", path);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        answer(req.call())
    }

    pub fn delete(&self, path: &str) -> Answer {
        answer(self.request("DELETE", path).call())
    }

    pub fn put(&self, path: &str, body: Value) -> Answer {
        answer(self.request("PUT", path).send_json(body))
    }

    pub fn patch(&self, path: &str, body: Value) -> Answer {
        answer(self.request("PATCH", path).send_json(body))
    }

    pub fn post(&self, path: &str, body: Value) -> Answer {
        answer(self.request("POST", path).send_json(body))
    }

    /// POST raw bytes with a content type (`None`: no header).
    pub fn post_raw(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
        let req = self.request("POST", path);
        let req = match content_type {
            Some(ct) => req.set("Content-Type", ct),
            None => req,
        };
        answer(req.send_bytes(body))
    }

    /// POST JSON bytes with chunked transfer encoding (no length given).
    /// POST a multipart form: text fields and one file field.
    pub fn post_multipart(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        file: Option<(&str, &[u8])>,
    ) -> Answer {
        let boundary = format!("blink-{}", rand::random::<u64>());
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        if let Some((name, data)) = file {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"a.boxlite\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        self.post_raw(
            path,
            Some(&format!("multipart/form-data; boundary={boundary}")),
            &body,
        )
    }

    pub fn post_chunked(&self, path: &str, body: &[u8]) -> Answer {
        let req = self
            .request("POST", path)
            .set("Content-Type", "application/json");
        answer(req.send(std::io::Cursor::new(body.to_vec())))
    }

    /// A request without the token, whatever the server wants.
    pub fn get_anonymous(&self, path: &str) -> Answer {
        answer(ureq::get(&self.url(path)).call())
    }

    /// Create a session; its box id.
    pub fn open_session(&self, name: &str) -> String {
        let a = self.post("/api/sessions", serde_json::json!({"name": name}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        a.body["session"]["box_id"]
            .as_str()
            .expect("box id")
            .to_owned()
    }

    /// POST a run to `path` (`/api/runs`, `/api/sessions/NAME/runs`) with
    /// `?wait=true`; the finished run.
    pub fn run_wait(&self, path: &str, body: Value) -> Value {
        let a = self.post(&format!("{path}?wait=true"), body);
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.body
    }

    /// A shell command in a session that must succeed (exit 0); its stdout.
    pub fn sh(&self, session: &str, script: &str) -> String {
        let run = self.run_wait(
            &format!("/api/sessions/{session}/runs"),
            serde_json::json!({"command": ["sh", "-c", script]}),
        );
        assert_eq!(run["exit_code"], 0, "{script}: {run}");
        stdout(&run)
    }

    /// Poll a run until it has finished.
    pub fn wait_run(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let a = self.get(&format!("/api/runs/{id}"));
            assert_eq!(a.status, 200, "{:?}", a.body);
            let state = a.body["state"].as_str().unwrap_or("").to_string();
            if state != "queued" && state != "running" {
                return a.body;
            }
            assert!(Instant::now() < deadline, "run {id} never finished");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Open a WebSocket to a path.
    pub fn ws(&self, path: &str) -> Socket {
        self.try_ws(path, &[])
            .unwrap_or_else(|(status, body)| panic!("ws connect refused: {status} {body}"))
    }

    /// Open a WebSocket with extra handshake headers (`Origin`, a forged
    /// `Host`; the connection still goes to 127.0.0.1). A refused
    /// handshake gives its status and JSON body.
    pub fn try_ws(&self, path: &str, headers: &[(&str, &str)]) -> Result<Socket, (u16, Value)> {
        let url = format!("ws://127.0.0.1:{}{path}", self.http_port);
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
            .expect("ws request");
        if let Some(t) = &self.token {
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        for (name, value) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let mut socket = match tungstenite::connect(req) {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                return Err((response.status().as_u16(), body));
            }
            Err(e) => panic!("ws connect: {e}"),
        };
        if let MaybeTlsStream::Plain(s) = socket.get_mut() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
        }
        Ok(socket)
    }
}

/// A run's stdout as text.
/// The next `data:` line of a [`Server::events`] stream, as JSON (at
/// most 30 s away).
pub fn next_event(lines: &std::sync::mpsc::Receiver<String>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("no server-sent event");
        if let Some(data) = line.strip_prefix("data:") {
            return serde_json::from_str(data.trim()).expect("event JSON");
        }
    }
}

pub fn stdout(run: &Value) -> String {
    run["stdout"]["data"].as_str().unwrap_or("").to_owned()
}

/// What a WebSocket session received.
#[derive(Debug, Default)]
pub struct Received {
    /// Binary frames, concatenated.
    pub bytes: Vec<u8>,
    /// Text frames, parsed.
    pub events: Vec<Value>,
    pub closed: bool,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn exit(&self) -> Option<&Value> {
        self.events.iter().find(|e| e["type"] == "exit")
    }
}

/// Read frames until `done` says so, the socket closes, or `limit` passes.
pub fn read_until(
    socket: &mut Socket,
    into: &mut Received,
    limit: Duration,
    done: impl Fn(&Received) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done(into) {
            return true;
        }
        if into.closed || Instant::now() > deadline {
            return false;
        }
        match socket.read() {
            Ok(Message::Binary(b)) => into.bytes.extend_from_slice(&b),
            Ok(Message::Text(t)) => into
                .events
                .push(serde_json::from_str(t.as_str()).expect("JSON event")),
            Ok(Message::Close(_)) => into.closed = true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => into.closed = true,
        }
    }
}

/// Send terminal input.
pub fn send_bytes(socket: &mut Socket, bytes: &[u8]) {
    socket
        .send(Message::Binary(bytes.to_vec().into()))
        .expect("ws send");
}

/// Send a JSON control message.
pub fn send_control(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .expect("ws send");
}

/// Percent-encode a path segment.
pub fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
