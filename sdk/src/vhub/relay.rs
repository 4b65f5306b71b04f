//! The host half of a relayed endpoint (docs/VHUB.md, "Relay"): where a
//! runtime cannot bind the session's endpoint into the sandbox (BoxLite),
//! `blink-guest vhub relay` listens there and carries each connection over
//! its stdin and stdout. Here each relayed connection becomes a connection
//! to the session's endpoint listener on the host, so the hub takes the
//! session from the listener, as for a bound endpoint.
//!
//! The relay's output is the sandbox's to write: frames are checked
//! (kind, size, credit, connection count) and a violation ends the relay.
//! Each connection has a credit window per direction, so one that does
//! not read never stalls the others.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

pub const OPEN: u8 = 1;
pub const DATA: u8 = 2;
pub const CREDIT: u8 = 3;
pub const CLOSE: u8 = 4;
/// Bytes one connection may have in flight each way before credit.
pub const WINDOW: u64 = 256 * 1024;
/// The largest data frame.
pub const MAX_DATA: usize = 64 * 1024;
/// Connections refused (over the limit) that the relay has not closed
/// yet; more is a relay that does not close what it is told to.
const MAX_REFUSED: usize = 256;

/// Why a relay ended other than by its output's end.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading the relay: {0}")]
    Io(#[from] std::io::Error),
    #[error("the relay broke its protocol: {0}")]
    Protocol(String),
}

/// One relay frame's bytes.
pub fn encode(kind: u8, conn: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.push(kind);
    out.extend_from_slice(&conn.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Credit a connection's host reader may still spend.
#[derive(Default)]
struct Credit {
    bytes: Mutex<u64>,
    more: Notify,
}

impl Credit {
    async fn take(&self, most: usize) -> usize {
        loop {
            let more = self.more.notified();
            {
                let mut c = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
                if *c > 0 {
                    let n = (*c).min(most as u64);
                    *c -= n;
                    return n as usize;
                }
            }
            more.await;
        }
    }

    fn give(&self, n: u64) {
        *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) += n;
        self.more.notify_waiters();
    }
}

struct Relayed {
    /// The guest's bytes for the host socket; `None` after its close.
    to_socket: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// The guest's bytes not yet written (at most `WINDOW`).
    unacked: Arc<AtomicU64>,
    credit: Arc<Credit>,
}

type Table = Arc<Mutex<HashMap<u32, Relayed>>>;

fn table(t: &Table) -> std::sync::MutexGuard<'_, HashMap<u32, Relayed>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serve a relay to its end: `from_guest` is its output, `to_guest` its
/// input; each connection it opens is connected to `endpoint`. At most
/// `max_connections` at once: one more is closed at once.
pub async fn serve<R, W>(
    mut from_guest: R,
    to_guest: W,
    endpoint: PathBuf,
    max_connections: usize,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, mut outgoing) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        let mut to_guest = to_guest;
        while let Some(bytes) = outgoing.recv().await {
            if to_guest.write_all(&bytes).await.is_err() || to_guest.flush().await.is_err() {
                break;
            }
        }
    });
    let conns: Table = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let result = read_frames(
        &mut from_guest,
        &out,
        &conns,
        &endpoint,
        max_connections,
        &mut tasks,
    )
    .await;
    // The relay is over, and with it every relayed connection.
    tasks.abort_all();
    table(&conns).clear();
    writer.abort();
    result
}

async fn read_frames<R: AsyncRead + Unpin>(
    from_guest: &mut R,
    out: &mpsc::Sender<Vec<u8>>,
    conns: &Table,
    endpoint: &std::path::Path,
    max_connections: usize,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), RelayError> {
    let bad = |m: String| Err(RelayError::Protocol(m));
    // Refused connections until the relay's close: their data is dropped.
    let mut refused = std::collections::HashSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let mut head = [0u8; 9];
        match from_guest.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let kind = head[0];
        let id = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if len > MAX_DATA {
            return bad(format!("a frame of {len} bytes (at most {MAX_DATA})"));
        }
        let mut payload = vec![0u8; len];
        from_guest.read_exact(&mut payload).await?;
        match kind {
            OPEN => {
                let opened = {
                    let mut t = table(conns);
                    if t.contains_key(&id) || refused.contains(&id) {
                        return bad(format!("connection {id} opened twice"));
                    }
                    (t.len() < max_connections).then(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let relayed = Relayed {
                            to_socket: Some(tx),
                            unacked: Arc::default(),
                            credit: Arc::new(Credit::default()),
                        };
                        relayed.credit.give(WINDOW);
                        let opened = (rx, relayed.unacked.clone(), relayed.credit.clone());
                        t.insert(id, relayed);
                        opened
                    })
                };
                let Some((rx, unacked, credit)) = opened else {
                    tracing::debug!(conn = id, "relayed connection refused: too many");
                    if refused.len() >= MAX_REFUSED {
                        return bad(format!("{MAX_REFUSED} refused connections left open"));
                    }
                    refused.insert(id);
                    let _ = out.send(encode(CLOSE, id, &[])).await;
                    continue;
                };
                tasks.spawn(connection(
                    id,
                    endpoint.to_path_buf(),
                    rx,
                    unacked,
                    credit,
                    out.clone(),
                    conns.clone(),
                ));
            }
            DATA if refused.contains(&id) => {}
            DATA => {
                let t = table(conns);
                let Some(relayed) = t.get(&id) else {
                    return bad(format!("data on connection {id}, which is not open"));
                };
                let Some(tx) = &relayed.to_socket else {
                    return bad(format!("data on connection {id} after its close"));
                };
                let unacked = relayed.unacked.fetch_add(len as u64, Ordering::AcqRel) + len as u64;
                if unacked > WINDOW {
                    return bad(format!(
                        "{unacked} bytes on connection {id} over its window of {WINDOW}"
                    ));
                }
                let _ = tx.send(payload);
            }
            CREDIT => {
                let Ok(grant) = <[u8; 4]>::try_from(&payload[..]) else {
                    return bad("a credit frame carries 4 bytes".into());
                };
                let grant = u64::from(u32::from_be_bytes(grant));
                // Credit for a connection just ended crosses its end.
                if let Some(relayed) = table(conns).get(&id) {
                    let had = *relayed
                        .credit
                        .bytes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if had + grant > WINDOW {
                        return bad(format!("credit on connection {id} over the window"));
                    }
                    relayed.credit.give(grant);
                }
            }
            CLOSE if refused.remove(&id) => {}
            CLOSE => {
                if let Some(relayed) = table(conns).get_mut(&id) {
                    relayed.to_socket = None;
                }
            }
            other => return bad(format!("frame kind {other}")),
        }
    }
}

/// One relayed connection: the host socket both ways, until both sides
/// closed; then it is forgotten.
async fn connection(
    id: u32,
    endpoint: PathBuf,
    mut from_guest: mpsc::UnboundedReceiver<Vec<u8>>,
    unacked: Arc<AtomicU64>,
    credit: Arc<Credit>,
    out: mpsc::Sender<Vec<u8>>,
    conns: Table,
) {
    let done = AtomicU8::new(0);
    let finish = || {
        if done.fetch_add(1, Ordering::AcqRel) == 1 {
            table(&conns).remove(&id);
        }
    };
    let stream = match tokio::net::UnixStream::connect(&endpoint).await {
        Ok(s) => Some(s.into_split()),
        Err(e) => {
            tracing::warn!(endpoint = %endpoint.display(), error = %e, "relayed connection refused");
            None
        }
    };
    let (mut read, mut write) = match stream {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    // Host socket -> guest, within credit; its end is our close.
    let to_guest = async {
        let mut buf = vec![0u8; MAX_DATA];
        if let Some(read) = read.as_mut() {
            loop {
                let most = credit.take(MAX_DATA).await;
                match read.read(&mut buf[..most]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        credit.give((most - n) as u64);
                        if out.send(encode(DATA, id, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        let _ = out.send(encode(CLOSE, id, &[])).await;
        finish();
    };
    // Guest -> host socket, each write granted back. A socket gone is
    // shut and what still comes is granted unwritten, so the guest never
    // waits on it.
    let to_host = async {
        while let Some(data) = from_guest.recv().await {
            if let Some(w) = write.as_mut()
                && w.write_all(&data).await.is_err()
            {
                write = None;
            }
            unacked.fetch_sub(data.len() as u64, Ordering::AcqRel);
            if out
                .send(encode(CREDIT, id, &(data.len() as u32).to_be_bytes()))
                .await
                .is_err()
            {
                break;
            }
        }
        if let Some(mut w) = write {
            let _ = w.shutdown().await;
        }
        finish();
    };
    tokio::join!(to_guest, to_host);
}
