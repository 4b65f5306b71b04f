//! A connection's outgoing frames: a queue whose bytes are counted, so the
//! hub can refuse work for a connection that does not read, and pause the
//! reading of one that floods itself with answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::FramedWrite;

use super::frame::{Frame, FrameCodec, Kind};
use super::messages::ErrorBody;

enum Out {
    Frame(Frame),
    /// Flush what is queued, then shut the connection's write side.
    Close,
}

/// The sending half: cheap to clone, never waits.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    state: Arc<State>,
}

struct State {
    queued: AtomicUsize,
    drained: Notify,
    closed: AtomicBool,
}

impl Outbox {
    /// Start the writer task on `writer`.
    pub fn start<W: AsyncWrite + Unpin + Send + 'static>(
        writer: W,
    ) -> (Outbox, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let outbox = Outbox {
            tx,
            state: state.clone(),
        };
        let task = tokio::spawn(async move {
            let mut sink = FramedWrite::new(writer, FrameCodec);
            while let Some(out) = rx.recv().await {
                match out {
                    Out::Frame(frame) => {
                        let len = frame.wire_len();
                        let sent = sink.send(frame).await;
                        state.queued.fetch_sub(len, Ordering::AcqRel);
                        state.drained.notify_waiters();
                        if sent.is_err() {
                            break;
                        }
                    }
                    Out::Close => break,
                }
            }
            state.closed.store(true, Ordering::Release);
            state.drained.notify_waiters();
            let _ = SinkExt::<Frame>::close(&mut sink).await;
        });
        (outbox, task)
    }

    /// Queue a frame. Returns false when the connection is gone.
    pub fn send(&self, frame: Frame, peak: &AtomicUsize) -> bool {
        let len = frame.wire_len();
        let now = self.state.queued.fetch_add(len, Ordering::AcqRel) + len;
        peak.fetch_max(now, Ordering::Relaxed);
        if self.tx.send(Out::Frame(frame)).is_err() {
            self.state.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Send an error frame, then close.
    pub fn fail(&self, channel: u32, code: &str, message: impl Into<String>, peak: &AtomicUsize) {
        let body = ErrorBody {
            code: code.into(),
            message: message.into(),
        };
        self.send(Frame::json(Kind::Error, channel, &body), peak);
        self.close();
    }

    pub fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.state.queued.load(Ordering::Acquire)
    }

    /// Wait until at most `limit` bytes are queued (or the connection is
    /// gone).
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let notified = self.state.drained.notified();
            if self.queued() <= limit || self.state.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}
