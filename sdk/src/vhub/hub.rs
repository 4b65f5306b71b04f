//! The hub: connections on both sides, and the routing between them.
//!
//! A connection's side and session come from the listener it arrived on
//! ([`Hub::serve_host`], [`Hub::serve_sandbox`]), never from what it sends.
//! A sandbox connection reaches only its own session's subscribers and the
//! methods host clients registered for that session; a host client names
//! the session it addresses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use tokio_util::codec::FramedRead;

use super::frame::{Frame, FrameCodec, Kind, VERSION};
use super::limits::Limits;
use super::messages::{
    self, ErrorBody, Event, Hello, Request, Response, Side, StreamOpen, Welcome, codes, methods,
};
use super::outbox::Outbox;
use super::streams::StreamLeg;

/// Stream channels the hub opens on a connection have this bit set; a
/// client's own have it clear, so the two never collide.
pub const HUB_STREAM_BIT: u32 = 1 << 31;

/// What the hub asks of the rest of Blink: whether a session exists, and
/// the host-provided methods a sandbox may call.
#[async_trait]
pub trait Services: Send + Sync + 'static {
    fn session_exists(&self, name: &str) -> bool;
    /// Whether the session's policy lets its sandbox checkpoint itself.
    fn checkpoint_allowed(&self, session: &str) -> bool;
    async fn checkpoint(&self, session: &str, snapshot: &str) -> Result<Value, ErrorBody>;
}

/// A failure answered on a request's channel (the connection stays), or
/// one that closes the connection.
pub(super) enum Failure {
    Answer(&'static str, String),
    Close(&'static str, String),
}

pub(super) type ConnId = u64;
pub(super) type Leg = (ConnId, u32);

pub(super) struct Conn {
    pub(super) side: Side,
    pub(super) session: Option<String>,
    pub(super) outbox: Outbox,
    /// Requests this connection made that wait for an answer.
    pending: usize,
    methods: usize,
    pub(super) streams: usize,
    /// Ids the hub picks for requests and streams it sends this connection.
    next_id: u32,
    subscriptions: HashMap<String, tokio::task::AbortHandle>,
}

impl Conn {
    pub(super) fn next_request_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1) & !HUB_STREAM_BIT;
        if self.next_id == 0 {
            self.next_id = 1;
        }
        self.next_id
    }
}

#[derive(Default)]
struct SessionRoutes {
    /// Methods sandbox connections registered (called by host clients).
    sandbox_methods: HashMap<String, ConnId>,
    /// Methods host clients registered for this session's sandbox.
    host_methods: HashMap<String, ConnId>,
    events: Option<broadcast::Sender<Arc<Event>>>,
    seq: u64,
    sandbox_connections: usize,
}

#[derive(Default)]
pub(super) struct Routes {
    pub(super) conns: HashMap<ConnId, Conn>,
    sessions: HashMap<String, SessionRoutes>,
    /// (callee, the hub's id on it) -> (caller, the caller's id).
    calls: HashMap<Leg, Leg>,
    pub(super) streams: HashMap<Leg, StreamLeg>,
    host_connections: usize,
}

/// Counters, as `hub.stats` and the benchmarks read them.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct HubStats {
    pub connections: usize,
    pub frames_in: u64,
    pub events: u64,
    pub stream_bytes: u64,
    /// The most bytes ever queued to one connection: the hub's buffering.
    pub peak_queued_bytes: usize,
    /// Connections closed for a protocol error.
    pub protocol_errors: u64,
}

pub(super) struct Inner {
    pub(super) limits: Limits,
    services: Arc<dyn Services>,
    pub(super) routes: Mutex<Routes>,
    next_conn: AtomicU64,
    pub(super) peak: AtomicUsize,
    frames_in: AtomicU64,
    events: AtomicU64,
    pub(super) stream_bytes: AtomicU64,
    protocol_errors: AtomicU64,
}

/// The V-Hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn lock(m: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a REST or in-process subscriber reads: a session's events, with
/// the number lost before each when it reads too slowly.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
}

impl Subscription {
    /// The next event; `None` when the hub is gone.
    pub async fn next(&mut self) -> Option<Event> {
        let mut dropped = 0u64;
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    let mut event = (*event).clone();
                    event.dropped = dropped;
                    return Some(event);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => dropped += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Hub {
    pub fn new(limits: Limits, services: Arc<dyn Services>) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                limits,
                services,
                routes: Mutex::new(Routes::default()),
                next_conn: AtomicU64::new(1),
                peak: AtomicUsize::new(0),
                frames_in: AtomicU64::new(0),
                events: AtomicU64::new(0),
                stream_bytes: AtomicU64::new(0),
                protocol_errors: AtomicU64::new(0),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn stats(&self) -> HubStats {
        let i = &self.inner;
        HubStats {
            connections: lock(&i.routes).conns.len(),
            frames_in: i.frames_in.load(Ordering::Relaxed),
            events: i.events.load(Ordering::Relaxed),
            stream_bytes: i.stream_bytes.load(Ordering::Relaxed),
            peak_queued_bytes: i.peak.load(Ordering::Relaxed),
            protocol_errors: i.protocol_errors.load(Ordering::Relaxed),
        }
    }

    /// A session's events from now on.
    pub fn subscribe(&self, session: &str) -> Subscription {
        let mut routes = lock(&self.inner.routes);
        Subscription {
            rx: self.events_of(&mut routes, session).subscribe(),
        }
    }

    fn events_of(&self, routes: &mut Routes, session: &str) -> broadcast::Sender<Arc<Event>> {
        let queue = self.inner.limits.subscriber_queue.max(1);
        routes
            .sessions
            .entry(session.to_owned())
            .or_default()
            .events
            .get_or_insert_with(|| broadcast::channel(queue).0)
            .clone()
    }

    /// Accept host clients on `listener` until the task is dropped.
    pub async fn serve_host(&self, listener: UnixListener) {
        self.accept(listener, Side::Host, None).await
    }

    /// Accept connections from `session`'s sandbox on `listener` (its
    /// endpoint) until the task is dropped.
    pub async fn serve_sandbox(&self, session: String, listener: UnixListener) {
        self.accept(listener, Side::Sandbox, Some(session)).await
    }

    async fn accept(&self, listener: UnixListener, side: Side, session: Option<String>) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let hub = self.clone();
                    let session = session.clone();
                    tokio::spawn(async move { hub.connection(stream, side, session).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "vhub accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serve one connection to its end.
    pub async fn connection<S>(&self, stream: S, side: Side, session: Option<String>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let (outbox, writer) = Outbox::start(write);
        let peak = &self.inner.peak;
        let mut frames = FramedRead::new(read, FrameCodec);

        // hello first, within the time limit.
        let hello = tokio::time::timeout(self.inner.limits.hello_timeout(), frames.next()).await;
        let hello = match hello {
            Err(_) => {
                outbox.fail(0, codes::HELLO_TIMEOUT, "no hello in time", peak);
                return self.finish(&outbox, writer).await;
            }
            Ok(None) => return self.finish(&outbox, writer).await,
            Ok(Some(Err(e))) => {
                self.count_error();
                outbox.fail(0, e.code(), e.to_string(), peak);
                return self.finish(&outbox, writer).await;
            }
            Ok(Some(Ok(f))) => f,
        };
        if hello.kind != Kind::Hello {
            self.count_error();
            outbox.fail(
                0,
                codes::UNEXPECTED_FRAME,
                "the first frame must be hello",
                peak,
            );
            return self.finish(&outbox, writer).await;
        }
        match serde_json::from_slice::<Hello>(&hello.payload) {
            Ok(h) if h.versions.contains(&VERSION) => {}
            Ok(h) => {
                outbox.fail(
                    0,
                    codes::VERSION,
                    format!("no common version: client {:?}, hub {VERSION}", h.versions),
                    peak,
                );
                return self.finish(&outbox, writer).await;
            }
            Err(e) => {
                self.count_error();
                outbox.fail(0, codes::BAD_JSON, format!("hello: {e}"), peak);
                return self.finish(&outbox, writer).await;
            }
        }
        let id = match self.register(side, session.clone(), outbox.clone()) {
            Ok(id) => id,
            Err(message) => {
                outbox.fail(0, codes::LIMIT, message, peak);
                return self.finish(&outbox, writer).await;
            }
        };
        let welcome = Welcome {
            version: VERSION,
            side,
            session: session.clone(),
            initial_window: self.inner.limits.initial_window,
            max_payload: super::frame::MAX_PAYLOAD as u32,
        };
        outbox.send(Frame::json(Kind::Welcome, 0, &welcome), peak);
        tracing::debug!(conn = id, ?side, session = ?session, "vhub connection");

        loop {
            // A connection that does not read its answers stops being read.
            outbox.wait_below(self.inner.limits.queue_bytes).await;
            let frame = match frames.next().await {
                None => break,
                Some(Err(e)) => {
                    self.count_error();
                    outbox.fail(0, e.code(), e.to_string(), peak);
                    break;
                }
                Some(Ok(frame)) => frame,
            };
            self.inner.frames_in.fetch_add(1, Ordering::Relaxed);
            if let Err((code, message)) = self.handle(id, frame) {
                self.count_error();
                tracing::debug!(conn = id, code, %message, "vhub connection closed");
                outbox.fail(0, code, message, peak);
                break;
            }
        }
        self.unregister(id);
        self.finish(&outbox, writer).await
    }

    /// Close a connection: what is queued goes out first, within
    /// `close_timeout_secs`; after that the writer is dropped unflushed.
    async fn finish(&self, outbox: &Outbox, mut writer: tokio::task::JoinHandle<()>) {
        outbox.close();
        let limit = self.inner.limits.close_timeout();
        if tokio::time::timeout(limit, &mut writer).await.is_err() {
            tracing::debug!("vhub connection dropped: its peer did not read its close");
            writer.abort();
        }
    }

    fn count_error(&self) {
        self.inner.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn register(
        &self,
        side: Side,
        session: Option<String>,
        outbox: Outbox,
    ) -> Result<ConnId, String> {
        let limits = &self.inner.limits;
        let mut routes = lock(&self.inner.routes);
        match (&side, &session) {
            (Side::Host, _) => {
                if routes.host_connections >= limits.host_connections {
                    return Err(format!(
                        "at most {} host connections",
                        limits.host_connections
                    ));
                }
                routes.host_connections += 1;
            }
            (Side::Sandbox, Some(s)) => {
                let entry = routes.sessions.entry(s.clone()).or_default();
                if entry.sandbox_connections >= limits.sandbox_connections {
                    return Err(format!(
                        "at most {} connections per session",
                        limits.sandbox_connections
                    ));
                }
                entry.sandbox_connections += 1;
            }
            (Side::Sandbox, None) => return Err("a sandbox connection without session".into()),
        }
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        routes.conns.insert(
            id,
            Conn {
                side,
                session,
                outbox,
                pending: 0,
                methods: 0,
                streams: 0,
                next_id: 0,
                subscriptions: HashMap::new(),
            },
        );
        Ok(id)
    }

    /// Forget a connection: its methods, subscriptions, the calls it
    /// answers (their callers get `peer_gone`), its streams (their peers
    /// get a close saying so).
    fn unregister(&self, id: ConnId) {
        let peak = &self.inner.peak;
        let mut routes = lock(&self.inner.routes);
        let Some(conn) = routes.conns.remove(&id) else {
            return;
        };
        for (_, task) in conn.subscriptions {
            task.abort();
        }
        match (&conn.side, &conn.session) {
            (Side::Host, _) => routes.host_connections -= 1,
            (Side::Sandbox, Some(s)) => {
                if let Some(r) = routes.sessions.get_mut(s) {
                    r.sandbox_connections -= 1;
                }
            }
            _ => {}
        }
        for r in routes.sessions.values_mut() {
            r.sandbox_methods.retain(|_, c| *c != id);
            r.host_methods.retain(|_, c| *c != id);
        }
        let calls: Vec<(Leg, Leg)> = routes
            .calls
            .iter()
            .filter(|(callee, caller)| callee.0 == id || caller.0 == id)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (callee, caller) in calls {
            routes.calls.remove(&callee);
            if callee.0 == id
                && let Some(c) = routes.conns.get_mut(&caller.0)
            {
                c.pending = c.pending.saturating_sub(1);
                let body = ErrorBody {
                    code: codes::PEER_GONE.into(),
                    message: "the method's provider disconnected".into(),
                };
                c.outbox
                    .send(Frame::json(Kind::Error, caller.1, &body), peak);
            }
        }
        let legs: Vec<Leg> = routes
            .streams
            .keys()
            .filter(|l| l.0 == id)
            .copied()
            .collect();
        for leg in legs {
            let Some(state) = routes.streams.remove(&leg) else {
                continue;
            };
            if let Some(peer) = state.peer
                && let Some(p) = routes.streams.get_mut(&peer)
            {
                p.peer = None;
                let peer_closed = p.closed;
                if peer_closed {
                    routes.streams.remove(&peer);
                }
                if let Some(c) = routes.conns.get_mut(&peer.0) {
                    if peer_closed {
                        c.streams = c.streams.saturating_sub(1);
                    }
                    if !state.closed {
                        let body = ErrorBody {
                            code: codes::PEER_GONE.into(),
                            message: "the other end disconnected".into(),
                        };
                        c.outbox
                            .send(Frame::json(Kind::StreamClose, peer.1, &body), peak);
                    }
                }
            }
        }
    }

    /// One frame from connection `id`. An error closes the connection.
    fn handle(&self, id: ConnId, frame: Frame) -> Result<(), (&'static str, String)> {
        let peak = &self.inner.peak;
        match frame.kind {
            Kind::Ping => {
                let routes = lock(&self.inner.routes);
                if let Some(c) = routes.conns.get(&id) {
                    c.outbox
                        .send(Frame::new(Kind::Pong, frame.channel, frame.payload), peak);
                }
                Ok(())
            }
            Kind::Pong => Ok(()),
            Kind::Request => {
                let request: Request = serde_json::from_slice(&frame.payload)
                    .map_err(|e| (codes::BAD_JSON, format!("request: {e}")))?;
                match self.request(id, frame.channel, request) {
                    Ok(()) => Ok(()),
                    Err(Failure::Close(code, message)) => Err((code, message)),
                    Err(Failure::Answer(code, message)) => {
                        if frame.channel != 0 {
                            self.answer_error(id, frame.channel, code, message);
                        }
                        Ok(())
                    }
                }
            }
            Kind::Response | Kind::Error => {
                if frame.channel == 0 {
                    // The client's own fatal error: it closes.
                    return Err((codes::UNEXPECTED_FRAME, "client error on channel 0".into()));
                }
                if frame.kind == Kind::Response {
                    serde_json::from_slice::<Response>(&frame.payload)
                        .map_err(|e| (codes::BAD_JSON, format!("response: {e}")))?;
                } else {
                    serde_json::from_slice::<ErrorBody>(&frame.payload)
                        .map_err(|e| (codes::BAD_JSON, format!("error: {e}")))?;
                }
                let mut routes = lock(&self.inner.routes);
                // An answer to a call whose caller left is dropped.
                if let Some(caller) = routes.calls.remove(&(id, frame.channel))
                    && let Some(c) = routes.conns.get_mut(&caller.0)
                {
                    c.pending = c.pending.saturating_sub(1);
                    c.outbox
                        .send(Frame::new(frame.kind, caller.1, frame.payload), peak);
                }
                Ok(())
            }
            Kind::StreamOpen => {
                if frame.channel == 0 || frame.channel & HUB_STREAM_BIT != 0 {
                    return Err((
                        codes::INVALID_ARGUMENT,
                        format!("stream channel {} is not a client's", frame.channel),
                    ));
                }
                let open: StreamOpen = serde_json::from_slice(&frame.payload)
                    .map_err(|e| (codes::BAD_JSON, format!("stream_open: {e}")))?;
                match self.open_stream(id, frame.channel, open) {
                    Ok(()) => Ok(()),
                    Err(Failure::Close(code, message)) => Err((code, message)),
                    Err(Failure::Answer(code, message)) => {
                        let routes = lock(&self.inner.routes);
                        if let Some(c) = routes.conns.get(&id) {
                            let body = ErrorBody {
                                code: code.into(),
                                message,
                            };
                            c.outbox
                                .send(Frame::json(Kind::StreamClose, frame.channel, &body), peak);
                        }
                        Ok(())
                    }
                }
            }
            Kind::StreamData => self.stream_data(id, frame),
            Kind::StreamCredit => self.stream_credit(id, frame),
            Kind::StreamClose => self.stream_close(id, frame),
            Kind::Hello | Kind::Welcome => Err((
                codes::UNEXPECTED_FRAME,
                format!("{:?} after the handshake", frame.kind),
            )),
        }
    }

    fn answer_error(&self, id: ConnId, channel: u32, code: &str, message: String) {
        let routes = lock(&self.inner.routes);
        if let Some(c) = routes.conns.get(&id) {
            let body = ErrorBody {
                code: code.into(),
                message,
            };
            c.outbox
                .send(Frame::json(Kind::Error, channel, &body), &self.inner.peak);
        }
    }

    fn answer(&self, id: ConnId, channel: u32, result: Value) {
        if channel == 0 {
            return;
        }
        let routes = lock(&self.inner.routes);
        if let Some(c) = routes.conns.get(&id) {
            c.outbox.send(
                Frame::json(Kind::Response, channel, &Response { result }),
                &self.inner.peak,
            );
        }
    }

    /// The session a request addresses: a sandbox's own (it may not name
    /// one), or the one a host client names.
    pub(super) fn target_session(
        &self,
        conn: (&Side, &Option<String>),
        named: Option<String>,
    ) -> Result<String, Failure> {
        match conn {
            (Side::Sandbox, own) => {
                if named.is_some() {
                    return Err(Failure::Answer(
                        codes::NOT_PERMITTED,
                        "a sandbox cannot name a session: it reaches only its own".into(),
                    ));
                }
                own.clone()
                    .ok_or(Failure::Close(codes::INVALID_ARGUMENT, "no session".into()))
            }
            (Side::Host, _) => {
                let name = named.ok_or(Failure::Answer(
                    codes::INVALID_ARGUMENT,
                    "session: a host request must name its session".into(),
                ))?;
                if !self.inner.services.session_exists(&name) {
                    return Err(Failure::Answer(
                        codes::SESSION_NOT_FOUND,
                        format!("session {name:?} not found"),
                    ));
                }
                Ok(name)
            }
        }
    }

    fn request(&self, id: ConnId, channel: u32, request: Request) -> Result<(), Failure> {
        messages::check_name("method", &request.method)
            .map_err(|m| Failure::Answer(codes::INVALID_ARGUMENT, m))?;
        let (side, own) = {
            let routes = lock(&self.inner.routes);
            let c = routes
                .conns
                .get(&id)
                .ok_or(Failure::Close(codes::PEER_GONE, "gone".into()))?;
            (c.side, c.session.clone())
        };
        let method = request.method.as_str();
        match (side, method) {
            (_, methods::HUB_STATS) => {
                let stats = serde_json::to_value(self.stats()).unwrap_or(Value::Null);
                self.answer(id, channel, stats);
                Ok(())
            }
            (Side::Sandbox, methods::EVENT_EMIT) => {
                let session = self.target_session((&side, &own), request.session)?;
                self.emit(id, channel, &session, request.params)
            }
            (_, methods::RPC_REGISTER | methods::RPC_UNREGISTER) => {
                let session = self.target_session((&side, &own), request.session)?;
                let name = request
                    .params
                    .get("method")
                    .and_then(Value::as_str)
                    .ok_or(Failure::Answer(
                        codes::INVALID_ARGUMENT,
                        "params.method: a string is required".into(),
                    ))?
                    .to_owned();
                messages::check_name("params.method", &name)
                    .map_err(|m| Failure::Answer(codes::INVALID_ARGUMENT, m))?;
                if method == methods::RPC_REGISTER {
                    self.register_method(id, side, &session, &name)?;
                } else {
                    let mut routes = lock(&self.inner.routes);
                    let r = routes.sessions.entry(session).or_default();
                    let table = match side {
                        Side::Sandbox => &mut r.sandbox_methods,
                        Side::Host => &mut r.host_methods,
                    };
                    if table.get(&name) == Some(&id) {
                        table.remove(&name);
                        if let Some(c) = routes.conns.get_mut(&id) {
                            c.methods -= 1;
                        }
                    }
                }
                self.answer(id, channel, json!({ "method": name }));
                Ok(())
            }
            (Side::Host, methods::SESSION_SUBSCRIBE | methods::SESSION_UNSUBSCRIBE) => {
                let name = request
                    .params
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or(Failure::Answer(
                        codes::INVALID_ARGUMENT,
                        "params.name: a session name is required".into(),
                    ))?
                    .to_owned();
                if method == methods::SESSION_SUBSCRIBE {
                    let name = self.target_session((&side, &own), Some(name))?;
                    self.subscribe_conn(id, &name)?;
                    self.answer(id, channel, json!({ "subscribed": name }));
                } else {
                    let mut routes = lock(&self.inner.routes);
                    if let Some(task) = routes
                        .conns
                        .get_mut(&id)
                        .and_then(|c| c.subscriptions.remove(&name))
                    {
                        task.abort();
                    }
                    drop(routes);
                    self.answer(id, channel, json!({ "unsubscribed": name }));
                }
                Ok(())
            }
            (Side::Sandbox, methods::SESSION_CHECKPOINT) => {
                let session = self.target_session((&side, &own), request.session)?;
                if !self.inner.services.checkpoint_allowed(&session) {
                    return Err(Failure::Answer(
                        codes::NOT_PERMITTED,
                        format!(
                            "session {session:?}'s policy does not allow checkpoints from inside"
                        ),
                    ));
                }
                let snapshot = request
                    .params
                    .get("snapshot")
                    .and_then(Value::as_str)
                    .ok_or(Failure::Answer(
                        codes::INVALID_ARGUMENT,
                        "params.snapshot: a snapshot name is required".into(),
                    ))?
                    .to_owned();
                let hub = self.clone();
                tokio::spawn(async move {
                    match hub.inner.services.checkpoint(&session, &snapshot).await {
                        Ok(v) => hub.answer(id, channel, v),
                        Err(e) => hub.answer_error(id, channel, &e.code, e.message),
                    }
                });
                Ok(())
            }
            _ => self.route_call(id, side, own, channel, request),
        }
    }

    fn emit(&self, id: ConnId, channel: u32, session: &str, params: Value) -> Result<(), Failure> {
        let topic = params
            .get("topic")
            .and_then(Value::as_str)
            .ok_or(Failure::Answer(
                codes::INVALID_ARGUMENT,
                "params.topic: a string is required".into(),
            ))?
            .to_owned();
        messages::check_name("params.topic", &topic)
            .map_err(|m| Failure::Answer(codes::INVALID_ARGUMENT, m))?;
        let data = params.get("data").cloned().unwrap_or(Value::Null);
        let (seq, receivers) = {
            let mut routes = lock(&self.inner.routes);
            let sender = self.events_of(&mut routes, session);
            let r = routes.sessions.entry(session.to_owned()).or_default();
            r.seq += 1;
            let seq = r.seq;
            let event = Event {
                session: session.to_owned(),
                seq,
                topic,
                data,
                dropped: 0,
            };
            (seq, sender.send(Arc::new(event)).unwrap_or(0))
        };
        self.inner.events.fetch_add(1, Ordering::Relaxed);
        self.answer(id, channel, json!({ "seq": seq, "subscribers": receivers }));
        Ok(())
    }

    fn register_method(
        &self,
        id: ConnId,
        side: Side,
        session: &str,
        name: &str,
    ) -> Result<(), Failure> {
        let mut routes = lock(&self.inner.routes);
        let max = self.inner.limits.methods_per_connection;
        let count = routes.conns.get(&id).map(|c| c.methods).unwrap_or(0);
        if count >= max {
            return Err(Failure::Answer(
                codes::LIMIT,
                format!("at most {max} methods per connection"),
            ));
        }
        let r = routes.sessions.entry(session.to_owned()).or_default();
        let table = match side {
            Side::Sandbox => &mut r.sandbox_methods,
            Side::Host => &mut r.host_methods,
        };
        if let Some(owner) = table.get(name) {
            if *owner == id {
                return Ok(());
            }
            return Err(Failure::Answer(
                codes::METHOD_TAKEN,
                format!("method {name:?} is registered by another connection"),
            ));
        }
        if side == Side::Sandbox
            && [
                methods::EVENT_EMIT,
                methods::RPC_REGISTER,
                methods::RPC_UNREGISTER,
                methods::SESSION_SUBSCRIBE,
                methods::SESSION_UNSUBSCRIBE,
                methods::HUB_STATS,
            ]
            .contains(&name)
        {
            return Err(Failure::Answer(
                codes::METHOD_TAKEN,
                format!("{name:?} is the hub's own method"),
            ));
        }
        table.insert(name.to_owned(), id);
        if let Some(c) = routes.conns.get_mut(&id) {
            c.methods += 1;
        }
        Ok(())
    }

    fn subscribe_conn(&self, id: ConnId, session: &str) -> Result<(), Failure> {
        let mut routes = lock(&self.inner.routes);
        let max = self.inner.limits.subscriptions_per_connection;
        let sender = self.events_of(&mut routes, session);
        let Some(conn) = routes.conns.get_mut(&id) else {
            return Ok(());
        };
        if conn.subscriptions.contains_key(session) {
            return Ok(());
        }
        if conn.subscriptions.len() >= max {
            return Err(Failure::Answer(
                codes::LIMIT,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let mut sub = Subscription {
            rx: sender.subscribe(),
        };
        let outbox = conn.outbox.clone();
        let hub = self.clone();
        let task = tokio::spawn(async move {
            let limit = hub.inner.limits.queue_bytes;
            // Lossy by design: while this connection's queue is full, the
            // broadcast queue keeps the newest events and counts the rest.
            loop {
                outbox.wait_below(limit).await;
                let Some(event) = sub.next().await else {
                    return;
                };
                let request = Request {
                    method: methods::EVENT.into(),
                    params: serde_json::to_value(&event).unwrap_or(Value::Null),
                    session: None,
                };
                if !outbox.send(Frame::json(Kind::Request, 0, &request), &hub.inner.peak) {
                    return;
                }
            }
        });
        conn.subscriptions
            .insert(session.to_owned(), task.abort_handle());
        Ok(())
    }

    /// Where a call or stream goes: the provider of `method` on the other
    /// side of `session`.
    pub(super) fn provider(
        routes: &Routes,
        caller_side: Side,
        session: &str,
        method: &str,
    ) -> Option<ConnId> {
        let r = routes.sessions.get(session)?;
        match caller_side {
            Side::Host => r.sandbox_methods.get(method).copied(),
            Side::Sandbox => r.host_methods.get(method).copied(),
        }
    }

    fn route_call(
        &self,
        id: ConnId,
        side: Side,
        own: Option<String>,
        channel: u32,
        request: Request,
    ) -> Result<(), Failure> {
        let session = self.target_session((&side, &own), request.session)?;
        let limits = &self.inner.limits;
        let mut routes = lock(&self.inner.routes);
        let target = Self::provider(&routes, side, &session, &request.method).ok_or_else(|| {
            Failure::Answer(
                codes::NO_SUCH_METHOD,
                format!(
                    "no {} of session {session:?} provides {:?}",
                    if side == Side::Host {
                        "sandbox"
                    } else {
                        "host client"
                    },
                    request.method
                ),
            )
        })?;
        if channel != 0 {
            let pending = routes.conns.get(&id).map(|c| c.pending).unwrap_or(0);
            if pending >= limits.pending_per_connection {
                return Err(Failure::Answer(
                    codes::LIMIT,
                    format!(
                        "at most {} requests may wait for an answer",
                        limits.pending_per_connection
                    ),
                ));
            }
        }
        let Some(callee) = routes.conns.get_mut(&target) else {
            return Err(Failure::Answer(codes::PEER_GONE, "provider gone".into()));
        };
        if callee.outbox.queued() > limits.queue_bytes {
            return Err(Failure::Answer(
                codes::BUSY,
                "the method's provider is not reading".into(),
            ));
        }
        let forwarded = Request {
            method: request.method,
            params: request.params,
            // A host provider learns which session calls; a sandbox knows.
            session: (callee.side == Side::Host).then(|| session.clone()),
        };
        let hub_id = if channel == 0 {
            0
        } else {
            callee.next_request_id()
        };
        callee.outbox.send(
            Frame::json(Kind::Request, hub_id, &forwarded),
            &self.inner.peak,
        );
        if channel != 0 {
            routes.calls.insert((target, hub_id), (id, channel));
            if let Some(c) = routes.conns.get_mut(&id) {
                c.pending += 1;
            }
        }
        Ok(())
    }
}
