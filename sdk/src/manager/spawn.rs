//! Spawned executions: processes that outlive the request that started
//! them. Output goes to a bounded replay buffer and to every attached
//! client; clients attach, detach and re-attach while the process runs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};

use super::ActivityGuard;
use crate::runtime::Execution;
use crate::runtime::exec::{ByteReader, ExecControl};
use crate::types::ExitStatus;

/// Bytes of input queued for one spawn's stdin at most. A writer waits for
/// room while the program is not reading, and the client behind it is
/// held back (a WebSocket stops being read): backpressure, never a drop.
pub const INPUT_BUDGET: usize = 4 << 20;

/// The way into a spawn's stdin, for as many writers as are attached.
#[derive(Clone)]
pub struct Input {
    queue: mpsc::Sender<(Vec<u8>, OwnedSemaphorePermit)>,
    /// Permits are bytes: taken by a write, given back once the program
    /// has read them.
    budget: Arc<Semaphore>,
}

impl Input {
    /// Queue bytes for the program's stdin (an empty write closes it),
    /// waiting while [`INPUT_BUDGET`] bytes are already queued. False once
    /// stdin is closed.
    pub async fn write(&self, data: Vec<u8>) -> bool {
        let bytes = data.len().min(INPUT_BUDGET) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(bytes).await else {
            return false;
        };
        self.queue.send((data, permit)).await.is_ok()
    }
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// stdout, or the terminal in PTY mode.
    Stdout,
    Stderr,
}

/// A piece of output, numbered so a client can tell replay from live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// A spawn as listed to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnInfo {
    pub id: String,
    pub session: String,
    pub argv: Vec<String>,
    pub tty: bool,
    pub started_at: u64,
    pub exit: Option<ExitStatus>,
    pub attached: usize,
}

struct Replay {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    limit: usize,
    next_seq: u64,
    /// Bytes dropped from the front because the buffer was full.
    dropped: u64,
}

impl Replay {
    fn push(&mut self, stream: Stream, data: Vec<u8>) -> Chunk {
        let chunk = Chunk {
            seq: self.next_seq,
            stream,
            data,
        };
        self.next_seq += 1;
        self.bytes += chunk.data.len();
        self.chunks.push_back(chunk.clone());
        while self.bytes > self.limit {
            match self.chunks.pop_front() {
                Some(old) => {
                    self.bytes -= old.data.len();
                    self.dropped += old.data.len() as u64;
                }
                None => break,
            }
        }
        chunk
    }
}

/// One spawned process.
pub struct Spawned {
    pub id: String,
    pub session: String,
    pub argv: Vec<String>,
    pub tty: bool,
    pub started_at: u64,
    pub control: Arc<dyn ExecControl>,
    input: Input,
    replay: Mutex<Replay>,
    live: broadcast::Sender<Chunk>,
    exit: watch::Receiver<Option<ExitStatus>>,
    attached: std::sync::atomic::AtomicUsize,
    /// Seconds since the epoch when the process ended (0 while running).
    finished_at: std::sync::atomic::AtomicU64,
}

/// A client's view of a spawn. Dropping it detaches.
pub struct Attachment {
    pub spawn: Arc<Spawned>,
    /// Output kept while no one (or someone else) was attached.
    pub replay: Vec<Chunk>,
    /// Bytes lost from the front of the replay because it was full.
    pub dropped: u64,
    pub live: broadcast::Receiver<Chunk>,
    pub exit: watch::Receiver<Option<ExitStatus>>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("spawn", &self.spawn.id)
            .field("replay", &self.replay.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.spawn
            .attached
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The server's own view of a spawn's output (a recording of it): the
/// same cut as an [`Attachment`], but no client, so it does not count in
/// `attached`.
pub struct Observer {
    /// Output kept so far.
    pub replay: Vec<Chunk>,
    /// Bytes lost from the front of the replay because it was full.
    pub dropped: u64,
    pub live: broadcast::Receiver<Chunk>,
    pub exit: watch::Receiver<Option<ExitStatus>>,
}

impl Attachment {
    /// Send bytes to the process's stdin (or terminal); see [`Input::write`].
    pub async fn write(&self, data: Vec<u8>) -> bool {
        self.spawn.input.write(data).await
    }

    /// The process's stdin, to write to while also reading its output.
    pub fn input(&self) -> Input {
        self.spawn.input.clone()
    }
}

impl Spawned {
    /// Start pumping an execution's streams. `guard` keeps the session
    /// from idling out until the process ends.
    pub fn start(
        id: String,
        session: String,
        argv: Vec<String>,
        mut exec: Execution,
        replay_limit: usize,
        guard: ActivityGuard,
    ) -> Arc<Self> {
        // The budget bounds the bytes; the queue only the number of
        // writes (tiny ones included).
        let (queue, mut input_rx) = mpsc::channel(1024);
        let input = Input {
            queue,
            budget: Arc::new(Semaphore::new(INPUT_BUDGET)),
        };
        let (live, _) = broadcast::channel(1024);
        let (exit_tx, exit) = watch::channel(None);
        let spawned = Arc::new(Self {
            id,
            session,
            argv,
            tty: exec.tty,
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            control: exec.control.clone(),
            input,
            replay: Mutex::new(Replay {
                chunks: VecDeque::new(),
                bytes: 0,
                limit: replay_limit,
                next_seq: 0,
                dropped: 0,
            }),
            live,
            exit,
            attached: Default::default(),
            finished_at: Default::default(),
        });
        if let Some(mut stdin) = exec.stdin.take() {
            tokio::spawn(async move {
                // Each write's permit goes back once the program read it.
                while let Some((data, _permit)) = input_rx.recv().await {
                    if data.is_empty() {
                        break; // an empty write means EOF
                    }
                    if stdin.write_all(&data).await.is_err() {
                        break;
                    }
                }
                let _ = stdin.shutdown().await;
            });
        }
        let out = exec
            .stdout
            .take()
            .map(|r| tokio::spawn(pump(spawned.clone(), r, Stream::Stdout)));
        let err = exec
            .stderr
            .take()
            .map(|r| tokio::spawn(pump(spawned.clone(), r, Stream::Stderr)));
        let me = spawned.clone();
        tokio::spawn(async move {
            let status = me.control.wait().await.ok();
            for h in [out, err].into_iter().flatten() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), h).await;
            }
            me.finished_at.store(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs().max(1)),
                std::sync::atomic::Ordering::SeqCst,
            );
            let _ = exit_tx.send(Some(status.unwrap_or(ExitStatus {
                code: -1,
                signal: None,
            })));
            drop(guard);
        });
        spawned
    }

    pub fn info(&self) -> SpawnInfo {
        SpawnInfo {
            id: self.id.clone(),
            session: self.session.clone(),
            argv: self.argv.clone(),
            tty: self.tty,
            started_at: self.started_at,
            exit: *self.exit.borrow(),
            attached: self.attached.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// When the process ended (seconds since the epoch), if it has.
    pub fn finished_at(&self) -> Option<u64> {
        match self.finished_at.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Attach: everything kept so far, then everything new, without gaps
    /// or repeats.
    pub fn attach(self: &Arc<Self>) -> Attachment {
        let (replay, dropped, live) = self.subscribe();
        self.attached
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Attachment {
            spawn: self.clone(),
            replay,
            dropped,
            live,
            exit: self.exit.clone(),
        }
    }

    /// Watch the output as an attachment would, without attaching.
    pub fn observe(&self) -> Observer {
        let (replay, dropped, live) = self.subscribe();
        Observer {
            replay,
            dropped,
            live,
            exit: self.exit.clone(),
        }
    }

    /// The replay, the bytes it lost and a live subscription, taken under
    /// the replay lock so that nothing falls between them.
    fn subscribe(&self) -> (Vec<Chunk>, u64, broadcast::Receiver<Chunk>) {
        let replay = self
            .replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let live = self.live.subscribe();
        (
            replay.chunks.iter().cloned().collect(),
            replay.dropped,
            live,
        )
    }
}

async fn pump(spawned: Arc<Spawned>, mut reader: ByteReader, stream: Stream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut replay = spawned
                    .replay
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let chunk = replay.push(stream, buf[..n].to_vec());
                // Sent under the lock so attach() sees a consistent cut.
                let _ = spawned.live.send(chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_the_newest_bytes_within_its_limit() {
        let mut r = Replay {
            chunks: VecDeque::new(),
            bytes: 0,
            limit: 10,
            next_seq: 0,
            dropped: 0,
        };
        r.push(Stream::Stdout, b"12345".to_vec());
        r.push(Stream::Stdout, b"67890".to_vec());
        r.push(Stream::Stderr, b"abc".to_vec());
        assert_eq!(r.bytes, 8);
        assert_eq!(r.dropped, 5);
        let seqs: Vec<u64> = r.chunks.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
    }
}
