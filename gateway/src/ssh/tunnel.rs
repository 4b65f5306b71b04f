//! One forwarded TCP connection carried on one channel (`direct-tcpip` for
//! `ssh -L`/`-D`, `forwarded-tcpip` for `ssh -R`): bytes both ways under
//! the exec channels' flow control, each side's EOF passed on to the
//! other, and one log line.
//!
//! Flow control is the exec channels' (`channel.rs`): the client's data is
//! taken off the channel at once (so russh's connection loop never blocks
//! on this channel) and written to the socket, at once if it has room,
//! else in one write of all that came meanwhile; each write is reported
//! consumed once done, and only then does the client get its window back
//! (patches/russh). A socket whose reader is slow thus holds the client
//! back, at most a window waiting here. The other way, the socket is read
//! only as fast as the client's window lets its data out, so a slow client
//! holds back the program writing to it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::Forwarded;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelReadHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::OwnedSemaphorePermit;

use super::channel::STDIN_BACKLOG_LIMIT;
use super::connection::ConnStats;

/// Once the client has closed the channel, how long what it sent before
/// may take to reach the sandbox's socket.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Which way a forwarded connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Client to session (`ssh -L`, `ssh -D`: `direct-tcpip`).
    Local,
    /// Session to client (`ssh -R`: `forwarded-tcpip`).
    Remote,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Local => "local",
            Direction::Remote => "remote",
        }
    }
}

/// What a forwarded connection was asked for, for its log lines.
#[derive(Debug, Clone)]
pub(super) struct Forward {
    pub session: String,
    /// The SSH client's address.
    pub peer: SocketAddr,
    pub direction: Direction,
    /// The host and port as the client named them (local), or the
    /// listener's address and port (remote).
    pub host: String,
    pub port: u32,
    /// Where the connection came from: the originator the client named
    /// (local), or the program's address in the sandbox (remote).
    pub origin: String,
}

impl Forward {
    /// A forward the rules refused (nothing was made).
    pub fn refused(&self, reason: &str) {
        tracing::info!(
            target: "blink::ssh::forward",
            peer = %self.peer,
            session = %self.session,
            direction = self.direction.as_str(),
            host = %Escaped::limit(&self.host, 256),
            port = self.port,
            origin = %Escaped::limit(&self.origin, 256),
            allowed = false,
            reason = %Escaped(reason),
            "ssh forward refused"
        );
    }

    /// A forward allowed whose connection could not be made (the port is
    /// closed, the session could not start, the client refused it).
    pub fn failed(&self, error: &str) {
        tracing::info!(
            target: "blink::ssh::forward",
            peer = %self.peer,
            session = %self.session,
            direction = self.direction.as_str(),
            host = %Escaped::limit(&self.host, 256),
            port = self.port,
            origin = %Escaped::limit(&self.origin, 256),
            allowed = true,
            error = %Escaped(error),
            "ssh forward failed"
        );
    }
}

/// Why a `direct-tcpip` open failed, for the client: a refusal by the
/// rules is "administratively prohibited"; anything else (nothing listens
/// on the port, the session could not start) "connect failed", as
/// OpenSSH's sshd answers when its connect fails.
pub(super) fn open_failure(e: &blink_sdk::Error) -> ChannelOpenFailure {
    use blink_sdk::error::ErrorKind;
    match e.kind() {
        ErrorKind::Forbidden | ErrorKind::Invalid => ChannelOpenFailure::AdministrativelyProhibited,
        _ => ChannelOpenFailure::ConnectFailed,
    }
}

/// Why a `tcpip-forward` could not listen, for the client.
pub(super) fn listen_failure(e: &blink_sdk::Error, port: u32) -> String {
    match e {
        blink_sdk::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
            format!("port {port} is in use in the session")
        }
        e => format!("cannot listen on port {port}: {}", e.client_message()),
    }
}

/// One forwarded connection on its channel.
pub(super) struct Tunnel {
    pub forward: Forward,
    pub stats: Arc<ConnStats>,
    pub handle: Handle,
    /// The connection's place among its SSH connection's forwards.
    pub slot: OwnedSemaphorePermit,
}

/// How a tunnel ended.
enum End {
    /// Both sides sent their EOF.
    Done,
    /// The client closed the channel (or its connection ended).
    ClientClosed,
    Failed(String),
}

/// Bytes a tunnel carried, each way.
#[derive(Default)]
struct Traffic {
    /// Client to sandbox.
    bytes_in: Arc<AtomicU64>,
    /// Sandbox to client.
    bytes_out: Arc<AtomicU64>,
}

impl Tunnel {
    /// Carry the connection until it ends, then log it in one line. The
    /// session is held active until then.
    pub async fn run(self, channel: Channel<Msg>, connection: Forwarded) {
        let started = Instant::now();
        let id = channel.id();
        let traffic = Traffic::default();
        let Forwarded {
            stream,
            peer: _,
            lease,
            egress,
        } = connection;
        let end = carry(channel, stream, &self.handle, &self.stats, &traffic).await;
        drop(lease);
        if let Some(egress) = egress {
            egress.finish(
                traffic.bytes_in.load(Ordering::SeqCst),
                traffic.bytes_out.load(Ordering::SeqCst),
            );
        }
        self.log_closed(id, started, &traffic, &end);
        drop(self.slot);
    }

    fn log_closed(&self, id: ChannelId, started: Instant, traffic: &Traffic, end: &End) {
        let bytes_in = traffic.bytes_in.load(Ordering::SeqCst);
        let bytes_out = traffic.bytes_out.load(Ordering::SeqCst);
        self.stats.bytes_in.fetch_add(bytes_in, Ordering::SeqCst);
        self.stats.bytes_out.fetch_add(bytes_out, Ordering::SeqCst);
        let (ended, error) = match end {
            End::Done => ("eof", ""),
            End::ClientClosed => ("client closed", ""),
            End::Failed(e) => ("error", e.as_str()),
        };
        let f = &self.forward;
        tracing::info!(
            target: "blink::ssh::forward",
            peer = %f.peer,
            session = %f.session,
            channel = %id,
            direction = f.direction.as_str(),
            host = %Escaped::limit(&f.host, 256),
            port = f.port,
            origin = %Escaped::limit(&f.origin, 256),
            allowed = true,
            bytes_in,
            bytes_out,
            ended,
            error = %Escaped(error),
            duration_ms = started.elapsed().as_millis() as u64,
            "ssh forward closed"
        );
    }
}

/// How the client's side into the socket ended.
enum Inbound {
    /// The client's EOF reached the socket (its writing side is shut);
    /// the channel's read half, still watched for the client's close.
    Eof(ChannelReadHalf),
    /// The client closed the channel (or its connection ended); what it
    /// sent before was given [`DRAIN_WAIT`] to reach the socket.
    Closed,
    /// More than `STDIN_BACKLOG_LIMIT` bytes waiting: past the window.
    Overflow,
    Failed(String),
}

/// Both directions until both sides have sent their EOF, either fails, or
/// the client closes the channel; then the channel is closed.
async fn carry(
    channel: Channel<Msg>,
    stream: TcpStream,
    handle: &Handle,
    stats: &Arc<ConnStats>,
    traffic: &Traffic,
) -> End {
    let id = channel.id();
    let (reader, writer) = channel.split();
    let (from_socket, to_socket) = stream.into_split();
    let credit_to = handle.clone();
    let credit = move |bytes: usize| credit_to.consumed(id, bytes as u32);
    let mut inbound = tokio::spawn(client_to_socket(
        reader,
        to_socket,
        credit,
        traffic.bytes_in.clone(),
    ));
    let mut outbound = tokio::spawn(pump_socket(
        from_socket,
        writer.make_writer(),
        traffic.bytes_out.clone(),
        stats.clone(),
    ));
    // Once the client's EOF is through: its side, watched for its close.
    let mut after_eof: Option<ChannelReadHalf> = None;
    let (mut sent_in, mut sent_out) = (false, false);
    let end = loop {
        tokio::select! {
            done = &mut inbound, if !sent_in => match done {
                Ok(Inbound::Eof(reader)) => {
                    after_eof = Some(reader);
                    sent_in = true;
                }
                Ok(Inbound::Closed) => break End::ClientClosed,
                Ok(Inbound::Overflow) => {
                    tracing::warn!(channel = %id, "ssh client sent past its forwarded channel's window: closing it");
                    break End::Failed("the client sent past its channel window".into());
                }
                Ok(Inbound::Failed(e)) => break End::Failed(e),
                Err(e) => break End::Failed(e.to_string()),
            },
            done = &mut outbound, if !sent_out => match done {
                Ok(Ok(())) => {
                    let _ = writer.eof().await;
                    sent_out = true;
                }
                Ok(Err(Stop::ClientGone)) => break End::ClientClosed,
                Ok(Err(Stop::Failed(e))) => break End::Failed(e),
                Err(e) => break End::Failed(e.to_string()),
            },
            () = closed(&mut after_eof), if after_eof.is_some() => break End::ClientClosed,
        }
        if sent_in && sent_out {
            break End::Done;
        }
    };
    inbound.abort();
    outbound.abort();
    let _ = writer.close().await;
    end
}

/// Until the client closes the channel (anything it sends after its EOF
/// is dropped).
async fn closed(reader: &mut Option<ChannelReadHalf>) {
    match reader {
        Some(reader) => while reader.wait().await.is_some() {},
        None => std::future::pending().await,
    }
}

/// Most bytes taken off the channel for one write: what is already
/// waiting is joined, so a fast client costs one write (and one credit)
/// per batch rather than one per packet.
const WRITE_BATCH: usize = 256 * 1024;

/// Bytes written are credited back to the client's window in steps of at
/// least this much (256 KiB): each credit is a message to the
/// connection's loop, and russh grants window only once half of it is
/// free, so smaller steps buy nothing. Well under that half, so a client
/// that has used its whole window is never left waiting on a credit held
/// here.
const CREDIT_STEP: usize = super::server::CHANNEL_WINDOW as usize / 8;

/// Credits written bytes back to the client's window, in steps.
struct Credit<F: Fn(usize)> {
    send: F,
    held: usize,
}

impl<F: Fn(usize)> Credit<F> {
    fn written(&mut self, bytes: usize) {
        self.held += bytes;
        if self.held >= CREDIT_STEP {
            (self.send)(std::mem::take(&mut self.held));
        }
    }
}

/// What [`finished`] gives back: the socket, the bytes, how it went.
type Written = (OwnedWriteHalf, usize, std::io::Result<()>);

/// A write to the socket in flight; it hands the socket back.
type Write = Pin<Box<dyn Future<Output = Written> + Send>>;

/// The client's data into the socket, in one task. The channel is read at
/// once whatever the socket does (russh's connection loop must never wait
/// on a channel); at most a window waits here, since the window is renewed
/// only as the socket takes the data. What arrives is written at once if
/// the socket has room, else in one write of all that came meanwhile, and
/// credited back to the client's window once written ([`CREDIT_STEP`]).
/// On the client's EOF, once all is written, the socket's writing side is
/// shut.
async fn client_to_socket(
    mut reader: ChannelReadHalf,
    socket: OwnedWriteHalf,
    credit: impl Fn(usize),
    bytes_in: Arc<AtomicU64>,
) -> Inbound {
    let mut credit = Credit {
        send: credit,
        held: 0,
    };
    let mut idle = Some(socket);
    let mut writing: Option<Write> = None;
    let mut waiting: Vec<u8> = Vec::new();
    let mut in_flight = 0;
    let mut eof = false;
    loop {
        if let Some(mut socket) = idle.take() {
            if !waiting.is_empty() {
                match socket.try_write(&waiting) {
                    Ok(n) => {
                        waiting.drain(..n);
                        credit.written(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Inbound::Failed(write_error(&e)),
                }
            }
            if !waiting.is_empty() {
                let data = std::mem::take(&mut waiting);
                in_flight = data.len();
                writing = Some(Box::pin(async move {
                    let result = socket.write_all(&data).await;
                    (socket, data.len(), result)
                }));
            } else if eof {
                let _ = socket.shutdown().await;
                return Inbound::Eof(reader);
            } else {
                idle = Some(socket);
            }
        }
        let step = tokio::select! {
            done = finished(&mut writing), if writing.is_some() => {
                writing = None;
                in_flight = 0;
                match done {
                    (socket, n, Ok(())) => {
                        credit.written(n);
                        idle = Some(socket);
                        Step::Go
                    }
                    (_, _, Err(e)) => return Inbound::Failed(write_error(&e)),
                }
            },
            msg = reader.wait() => {
                let mut step = take(msg, &mut waiting, in_flight, &mut eof, &bytes_in);
                // Join what is already there into the next write.
                while step == Step::Go && waiting.len() < WRITE_BATCH {
                    match ready(&mut reader) {
                        Some(msg) => step = take(msg, &mut waiting, in_flight, &mut eof, &bytes_in),
                        None => break,
                    }
                }
                step
            },
        };
        match step {
            Step::Go => {}
            Step::Overflow => return Inbound::Overflow,
            Step::Closed => {
                // What the client sent before closing still goes to the
                // socket, if it takes it soon.
                let rest = async move {
                    let socket = match (writing, idle) {
                        (Some(write), _) => match write.await {
                            (socket, _, Ok(())) => socket,
                            (_, _, Err(_)) => return,
                        },
                        (None, Some(socket)) => socket,
                        (None, None) => return,
                    };
                    let mut socket = socket;
                    let _ = socket.write_all(&waiting).await;
                };
                let _ = tokio::time::timeout(DRAIN_WAIT, rest).await;
                return Inbound::Closed;
            }
        }
    }
}

fn write_error(e: &std::io::Error) -> String {
    format!("writing to the forwarded connection: {e}")
}

/// What one message from the client does to [`client_to_socket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Go,
    Closed,
    Overflow,
}

/// Take one message from the client: data joins what waits for the
/// socket (anything after its EOF is dropped), EOF is noted, the end of
/// the channel ends it.
fn take(
    msg: Option<ChannelMsg>,
    waiting: &mut Vec<u8>,
    in_flight: usize,
    eof: &mut bool,
    bytes_in: &AtomicU64,
) -> Step {
    match msg {
        Some(ChannelMsg::Data { data }) => {
            bytes_in.fetch_add(data.len() as u64, Ordering::SeqCst);
            if *eof {
                return Step::Go;
            }
            if waiting.len() + in_flight + data.len() > STDIN_BACKLOG_LIMIT {
                return Step::Overflow;
            }
            waiting.extend_from_slice(&data);
            Step::Go
        }
        Some(ChannelMsg::Eof) => {
            *eof = true;
            Step::Go
        }
        Some(_) => Step::Go,
        None => Step::Closed,
    }
}

/// The next message if one is already waiting on the channel; never waits.
fn ready(reader: &mut ChannelReadHalf) -> Option<Option<ChannelMsg>> {
    let mut next = std::pin::pin!(reader.wait());
    match next
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(msg) => Some(msg),
        Poll::Pending => None,
    }
}

/// The write in flight, once done (never, if there is none).
async fn finished(writing: &mut Option<Write>) -> Written {
    match writing {
        Some(write) => write.await,
        None => std::future::pending().await,
    }
}

/// Why copying to the channel stopped early.
enum Stop {
    /// The channel is closed: the client is gone.
    ClientGone,
    Failed(String),
}

/// Copy what the socket sends to the channel, as fast as the client's
/// window allows, until the socket's EOF.
async fn pump_socket(
    mut from: OwnedReadHalf,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    counter: Arc<AtomicU64>,
    stats: Arc<ConnStats>,
) -> Result<(), Stop> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| Stop::Failed(format!("reading the forwarded connection: {e}")))?;
        if n == 0 {
            break;
        }
        counter.fetch_add(n as u64, Ordering::SeqCst);
        stats.touch();
        to.write_all(&buf[..n])
            .await
            .map_err(|_| Stop::ClientGone)?;
    }
    to.flush().await.map_err(|_| Stop::ClientGone)
}
