//! One forwarded TCP connection carried on one channel (`direct-tcpip` for
//! `ssh -L`/`-D`, `forwarded-tcpip` for `ssh -R`): bytes both ways under
//! the exec channels' flow control, each side's EOF passed on to the
//! other, and one log line.
//!
//! Flow control is the exec channels' (`channel.rs`): the client's data is
//! drained from the channel at once (so russh's connection loop never
//! blocks on this channel) and written to the socket by another task,
//! which reports each chunk consumed once written; only then does the
//! client get its window back (patches/russh). A socket whose reader is
//! slow thus holds the client back, at most a window buffered here. The
//! other way, the socket is read only as fast as the client's window lets
//! its data out, so a slow client holds back the program writing to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blink_sdk::escape::Escaped;
use blink_sdk::manager::Forwarded;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelReadHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

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
        } = connection;
        let end = carry(channel, stream, &self.handle, &self.stats, &traffic).await;
        drop(lease);
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

/// Client data and EOF, in order, for the socket.
enum Input {
    Data(Vec<u8>),
    Eof,
}

/// Why the client's side stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientEnd {
    Closed,
    /// More than `STDIN_BACKLOG_LIMIT` bytes queued: past the window.
    Overflow,
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
    let (queue, queued) = mpsc::unbounded_channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let mut from_client = tokio::spawn(read_client(
        reader,
        queue,
        backlog.clone(),
        traffic.bytes_in.clone(),
    ));
    let credit_to = handle.clone();
    let credit = move |bytes: usize| credit_to.consumed(id, bytes as u32);
    let mut to_sandbox = tokio::spawn(feed_socket(queued, to_socket, backlog, credit));
    let mut to_client = tokio::spawn(pump_socket(
        from_socket,
        writer.make_writer(),
        traffic.bytes_out.clone(),
        stats.clone(),
    ));
    let (mut sent_in, mut sent_out) = (false, false);
    let end = loop {
        tokio::select! {
            done = &mut to_sandbox, if !sent_in => match flatten(done) {
                Ok(()) => sent_in = true,
                Err(e) => break End::Failed(e),
            },
            done = &mut to_client, if !sent_out => match done {
                Ok(Ok(())) => {
                    let _ = writer.eof().await;
                    sent_out = true;
                }
                Ok(Err(Stop::ClientGone)) => break End::ClientClosed,
                Ok(Err(Stop::Failed(e))) => break End::Failed(e),
                Err(e) => break End::Failed(e.to_string()),
            },
            why = &mut from_client => match why {
                Ok(ClientEnd::Overflow) => {
                    tracing::warn!(channel = %id, "ssh client sent past its forwarded channel's window: closing it");
                    break End::Failed("the client sent past its channel window".into());
                }
                _ => {
                    // What the client sent before closing still goes to
                    // the socket, if it reads it soon.
                    if !sent_in {
                        let _ = tokio::time::timeout(DRAIN_WAIT, &mut to_sandbox).await;
                    }
                    break End::ClientClosed;
                }
            },
        }
        if sent_in && sent_out {
            break End::Done;
        }
    };
    from_client.abort();
    to_sandbox.abort();
    to_client.abort();
    let _ = writer.close().await;
    end
}

fn flatten(joined: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), String> {
    joined.map_err(|e| e.to_string()).and_then(|r| r)
}

/// Drain the client's side of the channel without ever waiting on the
/// socket: data is queued (at most a window of it, since the window is
/// renewed only as the socket takes it). Ends when the client closes the
/// channel, or sends past its window.
async fn read_client(
    mut reader: ChannelReadHalf,
    queue: mpsc::UnboundedSender<Input>,
    backlog: Arc<AtomicUsize>,
    bytes_in: Arc<AtomicU64>,
) -> ClientEnd {
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                bytes_in.fetch_add(data.len() as u64, Ordering::SeqCst);
                let queued = backlog.fetch_add(data.len(), Ordering::SeqCst) + data.len();
                if queued > STDIN_BACKLOG_LIMIT {
                    return ClientEnd::Overflow;
                }
                // A closed receiver means the socket is done: drop it.
                let _ = queue.send(Input::Data(data.to_vec()));
            }
            ChannelMsg::Eof => {
                let _ = queue.send(Input::Eof);
            }
            _ => {}
        }
    }
    ClientEnd::Closed
}

/// Most bytes written to the socket at once: chunks already queued are
/// joined up to this, so a fast client costs one write (and one credit)
/// per batch rather than one per packet.
const WRITE_BATCH: usize = 256 * 1024;

/// Write queued client data to the socket, each batch credited back to the
/// client's window once written; on the client's EOF, shut the socket's
/// writing side. Ends then, or when the queue ends (the client closed the
/// channel), or on a write error.
async fn feed_socket(
    mut queue: mpsc::UnboundedReceiver<Input>,
    mut socket: OwnedWriteHalf,
    backlog: Arc<AtomicUsize>,
    credit: impl Fn(usize),
) -> Result<(), String> {
    let mut eof = false;
    while !eof {
        let mut batch = match queue.recv().await {
            Some(Input::Data(data)) => data,
            Some(Input::Eof) => break,
            None => return Ok(()),
        };
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(Input::Data(data)) => batch.extend_from_slice(&data),
                Ok(Input::Eof) => eof = true,
                Err(_) => break,
            }
            if eof {
                break;
            }
        }
        let written = socket.write_all(&batch).await;
        backlog.fetch_sub(batch.len(), Ordering::SeqCst);
        credit(batch.len());
        written.map_err(|e| format!("writing to the forwarded connection: {e}"))?;
    }
    let _ = socket.shutdown().await;
    Ok(())
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
