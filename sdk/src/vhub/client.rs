//! A small V-Hub client for Rust programs: host tools, tests, the
//! benchmarks. It speaks the protocol of docs/VHUB.md over any byte stream.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{Frame, FrameCodec, FrameError, Kind, VERSION};
use super::hub::HUB_STREAM_BIT;
use super::messages::{ErrorBody, Event, Hello, Request, Response, StreamOpen, Welcome, methods};

/// What went wrong for the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub (or the method's provider) answered with an error frame.
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
    #[error("connection closed")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Remote { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<ErrorBody> for ClientError {
    fn from(e: ErrorBody) -> Self {
        ClientError::Remote {
            code: e.code,
            message: e.message,
        }
    }
}

/// A call the hub forwarded to this client (a method it registered).
#[derive(Debug)]
pub struct IncomingCall {
    /// The channel to answer on; 0 for a notification.
    pub id: u32,
    pub method: String,
    pub params: Value,
    /// The calling session, when this client is on the host side.
    pub session: Option<String>,
}

/// What arrives unasked: calls, events, streams.
#[derive(Debug)]
pub enum Incoming {
    Call(IncomingCall),
    Event(Event),
    Stream(Stream, StreamOpen),
}

type Pending = HashMap<u32, oneshot::Sender<Result<Value, ClientError>>>;

struct StreamSlot {
    data: mpsc::UnboundedSender<StreamItem>,
    credit: Arc<Semaphore>,
}

enum StreamItem {
    Data(Bytes),
    Close(Option<ErrorBody>),
}

struct Shared {
    pending: Mutex<Pending>,
    streams: Mutex<HashMap<u32, StreamSlot>>,
    window: u32,
}

/// A connection to the hub.
pub struct Client {
    out: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    welcome: Welcome,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Client {
    /// Dropping the client closes its connection.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connect to a hub socket (the host socket, or a sandbox endpoint).
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        Client::handshake(stream).await
    }

    /// Say hello on an open byte stream.
    pub async fn handshake<S>(stream: S) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let mut frames = FramedRead::new(read, FrameCodec);
        let mut sink = FramedWrite::new(write, FrameCodec);
        let hello = Hello {
            versions: vec![VERSION],
            client: Some("blink-sdk".into()),
        };
        sink.send(Frame::json(Kind::Hello, 0, &hello)).await?;
        let first = frames.next().await.ok_or(ClientError::Closed)??;
        let welcome: Welcome = match first.kind {
            Kind::Welcome => serde_json::from_slice(&first.payload)
                .map_err(|e| ClientError::Protocol(format!("welcome: {e}")))?,
            Kind::Error => {
                return Err(serde_json::from_slice::<ErrorBody>(&first.payload)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?
                    .into());
            }
            other => return Err(ClientError::Protocol(format!("{other:?} before welcome"))),
        };
        let (out, mut out_rx) = mpsc::unbounded_channel::<Frame>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
        });
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            window: welcome.initial_window,
        });
        let (incoming_tx, incoming) = mpsc::channel(1024);
        let reader = tokio::spawn(read_loop(frames, shared.clone(), out.clone(), incoming_tx));
        Ok(Client {
            out,
            shared,
            next_id: AtomicU32::new(0),
            incoming: tokio::sync::Mutex::new(incoming),
            welcome,
            tasks: [writer.abort_handle(), reader.abort_handle()],
        })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    fn next_id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & !HUB_STREAM_BIT;
            if id != 0 {
                return id;
            }
        }
    }

    fn send(&self, frame: Frame) -> Result<(), ClientError> {
        self.out.send(frame).map_err(|_| ClientError::Closed)
    }

    /// Call `method` (in `session`, for a host client) and wait for its result.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, ClientError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, tx);
        let request = Request {
            method: method.into(),
            params,
            session: session.map(str::to_owned),
        };
        self.send(Frame::json(Kind::Request, id, &request))?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// A request that gets no answer.
    pub fn notify(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<(), ClientError> {
        let request = Request {
            method: method.into(),
            params,
            session: session.map(str::to_owned),
        };
        self.send(Frame::json(Kind::Request, 0, &request))
    }

    /// Sandbox side: emit an event to the session's subscribers.
    pub async fn emit(&self, topic: &str, data: Value) -> Result<Value, ClientError> {
        self.call(
            None,
            methods::EVENT_EMIT,
            json!({ "topic": topic, "data": data }),
        )
        .await
    }

    /// Host side: receive `session`'s events as [`Incoming::Event`].
    pub async fn subscribe(&self, session: &str) -> Result<(), ClientError> {
        self.call(None, methods::SESSION_SUBSCRIBE, json!({ "name": session }))
            .await
            .map(drop)
    }

    /// Provide `method` (to the other side of `session`; a sandbox client
    /// passes `None`).
    pub async fn register(&self, session: Option<&str>, method: &str) -> Result<(), ClientError> {
        self.call(session, methods::RPC_REGISTER, json!({ "method": method }))
            .await
            .map(drop)
    }

    /// The next call, event or stream for this client.
    pub async fn next(&self) -> Option<Incoming> {
        self.incoming.lock().await.recv().await
    }

    /// Answer a forwarded call.
    pub fn respond(&self, id: u32, result: Result<Value, ErrorBody>) -> Result<(), ClientError> {
        if id == 0 {
            return Ok(());
        }
        match result {
            Ok(result) => self.send(Frame::json(Kind::Response, id, &Response { result })),
            Err(e) => self.send(Frame::json(Kind::Error, id, &e)),
        }
    }

    /// Round-trip time of a ping.
    pub async fn ping(&self) -> Result<std::time::Duration, ClientError> {
        let started = std::time::Instant::now();
        self.call(None, methods::HUB_STATS, Value::Null).await?;
        Ok(started.elapsed())
    }

    /// Open a byte stream to whoever provides `method`.
    pub fn open_stream(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Stream, ClientError> {
        let id = self.next_id();
        let stream = Stream::new(id, self.out.clone(), &self.shared);
        let open = StreamOpen {
            method: method.into(),
            params,
            session: session.map(str::to_owned),
        };
        self.send(Frame::json(Kind::StreamOpen, id, &open))?;
        Ok(stream)
    }
}

/// One byte stream; both directions under credit.
#[derive(Debug)]
pub struct Stream {
    id: u32,
    /// The connection's streams, to leave when dropped.
    shared: std::sync::Weak<Shared>,
    out: mpsc::UnboundedSender<Frame>,
    rx: mpsc::UnboundedReceiver<StreamItem>,
    credit: Arc<Semaphore>,
    /// Bytes received and not yet given back as credit.
    unacked: u32,
    window: u32,
    closed: bool,
}

impl std::fmt::Debug for StreamItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamItem::Data(b) => write!(f, "Data({})", b.len()),
            StreamItem::Close(e) => write!(f, "Close({e:?})"),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.streams).remove(&self.id);
        }
    }
}

impl Stream {
    fn new(id: u32, out: mpsc::UnboundedSender<Frame>, shared: &Arc<Shared>) -> Stream {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(shared.window as usize));
        lock(&shared.streams).insert(
            id,
            StreamSlot {
                data: tx,
                credit: credit.clone(),
            },
        );
        Stream {
            id,
            shared: Arc::downgrade(shared),
            out,
            rx,
            credit,
            unacked: 0,
            window: shared.window,
            closed: false,
        }
    }

    /// Send bytes, waiting for credit as needed.
    pub async fn send(&mut self, mut data: &[u8]) -> Result<(), ClientError> {
        let chunk_max = (self.window / 4).clamp(1, super::frame::MAX_PAYLOAD as u32) as usize;
        while !data.is_empty() {
            let want = data.len().min(chunk_max);
            // Take what credit there is (at least one byte's worth).
            let permit = self
                .credit
                .acquire_many(1)
                .await
                .map_err(|_| ClientError::Closed)?;
            permit.forget();
            let mut n = 1usize;
            while n < want {
                match self.credit.try_acquire_many((want - n) as u32) {
                    Ok(p) => {
                        p.forget();
                        n = want;
                    }
                    Err(_) => {
                        let avail = self.credit.available_permits().min(want - n);
                        if avail == 0 {
                            break;
                        }
                        if let Ok(p) = self.credit.try_acquire_many(avail as u32) {
                            p.forget();
                            n += avail;
                        }
                    }
                }
            }
            let (now, rest) = data.split_at(n);
            self.out
                .send(Frame::new(
                    Kind::StreamData,
                    self.id,
                    Bytes::copy_from_slice(now),
                ))
                .map_err(|_| ClientError::Closed)?;
            data = rest;
        }
        Ok(())
    }

    /// The next bytes; `None` at the other side's close. An error close
    /// comes back as its error.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ClientError> {
        match self.rx.recv().await {
            Some(StreamItem::Data(bytes)) => {
                self.unacked += bytes.len() as u32;
                // Give credit back in batches of a quarter window.
                if self.unacked >= self.window / 4 {
                    let grant = std::mem::take(&mut self.unacked);
                    let _ = self.out.send(Frame::new(
                        Kind::StreamCredit,
                        self.id,
                        Bytes::copy_from_slice(&grant.to_be_bytes()),
                    ));
                }
                Ok(Some(bytes))
            }
            Some(StreamItem::Close(None)) => Ok(None),
            Some(StreamItem::Close(Some(e))) => Err(e.into()),
            None => Err(ClientError::Closed),
        }
    }

    /// Say this side sends no more.
    pub fn close(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.out
            .send(Frame::new(Kind::StreamClose, self.id, Bytes::new()))
            .map_err(|_| ClientError::Closed)
    }

    pub fn channel(&self) -> u32 {
        self.id
    }
}

async fn read_loop<R>(
    mut frames: FramedRead<R, FrameCodec>,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Frame>,
    incoming: mpsc::Sender<Incoming>,
) where
    R: AsyncRead + Unpin,
{
    while let Some(Ok(frame)) = frames.next().await {
        match frame.kind {
            Kind::Response | Kind::Error => {
                let waiter = lock(&shared.pending).remove(&frame.channel);
                let result = if frame.kind == Kind::Response {
                    serde_json::from_slice::<Response>(&frame.payload)
                        .map(|r| r.result)
                        .map_err(|e| ClientError::Protocol(e.to_string()))
                } else {
                    Err(serde_json::from_slice::<ErrorBody>(&frame.payload)
                        .map(ClientError::from)
                        .unwrap_or_else(|e| ClientError::Protocol(e.to_string())))
                };
                match waiter {
                    Some(w) => {
                        let _ = w.send(result);
                    }
                    // An error on channel 0: the hub closes us.
                    None if frame.channel == 0 => break,
                    None => {}
                }
            }
            Kind::Request => {
                let Ok(request) = serde_json::from_slice::<Request>(&frame.payload) else {
                    continue;
                };
                let item = if frame.channel == 0 && request.method == methods::EVENT {
                    match serde_json::from_value::<Event>(request.params) {
                        Ok(e) => Incoming::Event(e),
                        Err(_) => continue,
                    }
                } else {
                    Incoming::Call(IncomingCall {
                        id: frame.channel,
                        method: request.method,
                        params: request.params,
                        session: request.session,
                    })
                };
                if incoming.send(item).await.is_err() {
                    break;
                }
            }
            Kind::StreamOpen => {
                let Ok(open) = serde_json::from_slice::<StreamOpen>(&frame.payload) else {
                    continue;
                };
                let stream = Stream::new(frame.channel, out.clone(), &shared);
                if incoming.send(Incoming::Stream(stream, open)).await.is_err() {
                    break;
                }
            }
            Kind::StreamData => {
                if let Some(slot) = lock(&shared.streams).get(&frame.channel) {
                    let _ = slot.data.send(StreamItem::Data(frame.payload));
                }
            }
            Kind::StreamCredit => {
                if let (Some(slot), Ok(grant)) = (
                    lock(&shared.streams).get(&frame.channel),
                    <[u8; 4]>::try_from(&frame.payload[..]),
                ) {
                    slot.credit.add_permits(u32::from_be_bytes(grant) as usize);
                }
            }
            Kind::StreamClose => {
                let error = (!frame.payload.is_empty())
                    .then(|| serde_json::from_slice::<ErrorBody>(&frame.payload).ok())
                    .flatten();
                // The slot stays while this side may still send: credit
                // for it keeps coming after the other side's close.
                if let Some(slot) = lock(&shared.streams).get(&frame.channel) {
                    let _ = slot.data.send(StreamItem::Close(error));
                }
            }
            Kind::Ping => {
                let _ = out.send(Frame::new(Kind::Pong, frame.channel, frame.payload));
            }
            Kind::Pong | Kind::Hello | Kind::Welcome => {}
        }
    }
    // Every waiter learns the connection is gone.
    lock(&shared.pending).clear();
    lock(&shared.streams).clear();
}
