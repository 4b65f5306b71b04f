//! The host half of the exec wire: an [`Execution`] whose bytes travel as
//! frames and lines through a wrapper process (`blink-guest wire`) the
//! runtime started. Memory is bounded whatever either side does: stdin goes
//! out only as the guest reports it taken ([`STDIN_WINDOW`]), and output is
//! acknowledged only once the reader of its pipe took it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};

use super::frames::{Event, Frame, LineSplitter, parse_line};
use crate::error::{Error, Result};
use crate::runtime::exec::{ExecControl, ExecSpec, Execution, PtySize};
use crate::types::ExitStatus;

/// Stdin bytes sent and not yet reported taken.
pub const STDIN_WINDOW: u64 = 256 * 1024;
/// Bytes held between the wire and a caller's end of each pipe.
const PIPE_BUFFER: usize = 64 * 1024;
/// Largest stdin frame.
const STDIN_CHUNK: usize = 32 * 1024;
/// Control requests (signals, resizes) waiting to go out.
const CONTROL_QUEUE: usize = 64;
/// Wire text received and not yet handled, at most. An honest guest stays
/// far below (its output window in base64, and short acknowledgements);
/// a guest that ignores the window is cut off here rather than let the
/// runtime's unbounded channel grow in the host.
pub const MAX_UNHANDLED_TEXT: usize = 4 << 20;

/// The guest wrapper's stdin.
#[async_trait]
pub trait WireInput: Send + 'static {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<()>;
}

/// One `blink-guest wire` process, as a runtime started it.
pub struct WireProcess {
    pub input: Box<dyn WireInput>,
    /// The wrapper's stdout, as text in chunks cut anywhere.
    pub output: Pin<Box<dyn Stream<Item = String> + Send>>,
    /// How the wrapper itself ended: the status when it ended without
    /// saying how the program did.
    pub ended: Pin<Box<dyn Future<Output = Result<ExitStatus>> + Send>>,
}

/// Arguments of `blink-guest wire` for `spec` (the program after `--`).
pub fn wire_args(spec: &ExecSpec) -> Vec<String> {
    let mut args = vec!["wire".to_owned()];
    if let Some(size) = spec.tty {
        args.push("--tty".into());
        args.push(format!("{}x{}", size.rows, size.cols));
    }
    if let Some(cwd) = &spec.cwd {
        args.push("--cwd".into());
        args.push(cwd.clone());
    }
    args.push("--".into());
    args.extend(spec.argv.iter().cloned());
    args
}

enum Message {
    Frame(Frame),
    StdinTaken(u64),
}

type Status = Option<std::result::Result<ExitStatus, String>>;

/// Start `spec` on `process`: the environment goes first, then the
/// program runs with its streams on the returned execution.
pub async fn start(mut process: WireProcess, spec: &ExecSpec) -> Result<Execution> {
    for (name, value) in &spec.env {
        process
            .input
            .send(Frame::Env(format!("{name}={value}")).encode())
            .await?;
    }
    process.input.send(Frame::Go.encode()).await?;

    let (messages_tx, messages_rx) = mpsc::channel::<Message>(CONTROL_QUEUE);
    let (status_tx, status_rx) = watch::channel::<Status>(None);
    let tty = spec.tty.is_some();

    let (stdin_caller, stdin_pump) = tokio::io::duplex(PIPE_BUFFER);
    let (stdout_caller, stdout_pump) = tokio::io::duplex(PIPE_BUFFER);
    let (stderr_caller, stderr_pump) = if tty {
        (None, None)
    } else {
        let (a, b) = tokio::io::duplex(PIPE_BUFFER);
        (Some(a), Some(b))
    };

    tokio::spawn(input_pump(
        process.input,
        stdin_pump,
        messages_rx,
        status_rx.clone(),
    ));
    tokio::spawn(output_pump(
        drain(process.output),
        process.ended,
        stdout_pump,
        stderr_pump,
        messages_tx.clone(),
        status_tx,
    ));

    let (_, stdin_writer) = tokio::io::split(stdin_caller);
    Ok(Execution {
        stdin: Some(Box::pin(stdin_writer)),
        stdout: Some(Box::pin(stdout_caller)),
        stderr: stderr_caller.map(|s| Box::pin(s) as crate::runtime::exec::ByteReader),
        control: Arc::new(WireControl {
            messages: messages_tx,
            status: status_rx,
        }),
        tty,
    })
}

/// Stdin and control out to the guest, stdin within its window.
async fn input_pump(
    mut input: Box<dyn WireInput>,
    mut stdin: DuplexStream,
    mut messages: mpsc::Receiver<Message>,
    mut status: watch::Receiver<Status>,
) {
    let mut in_flight: u64 = 0;
    let mut stdin_open = true;
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let room = STDIN_WINDOW.saturating_sub(in_flight) as usize;
        let want = room.min(buf.len());
        let frame = tokio::select! {
            message = messages.recv() => match message {
                Some(Message::Frame(frame)) => Some(frame),
                Some(Message::StdinTaken(n)) => {
                    in_flight = in_flight.saturating_sub(n);
                    None
                }
                None => break,
            },
            read = stdin.read(&mut buf[..want]), if stdin_open && want > 0 => match read {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    Some(Frame::CloseStdin)
                }
                Ok(n) => {
                    in_flight += n as u64;
                    Some(Frame::Stdin(buf[..n].to_vec()))
                }
            },
            changed = status.changed() => {
                if changed.is_err() || status.borrow().is_some() {
                    break;
                }
                None
            }
        };
        if let Some(frame) = frame
            && input.send(frame.encode()).await.is_err()
        {
            break;
        }
    }
    // Dropping the input ends the wrapper's stdin: a wrapper whose program
    // still runs kills it.
}

/// Text from the guest, drained as fast as it comes (so the runtime never
/// buffers it) into a queue that may hold at most [`MAX_UNHANDLED_TEXT`]
/// unhandled: past that the guest ignored its window, and the stream ends
/// with an error line the pump reports.
fn drain(mut output: Pin<Box<dyn Stream<Item = String> + Send>>) -> Drained {
    type Item = (
        std::result::Result<String, String>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    );
    let (tx, rx) = mpsc::unbounded_channel::<Item>();
    let budget = Arc::new(tokio::sync::Semaphore::new(MAX_UNHANDLED_TEXT));
    tokio::spawn(async move {
        while let Some(chunk) = output.next().await {
            let n = u32::try_from(chunk.len().max(1)).unwrap_or(u32::MAX);
            let Ok(permit) = budget.clone().try_acquire_many_owned(n) else {
                let _ = tx.send((
                    Err(format!(
                        "the guest sent over {MAX_UNHANDLED_TEXT} bytes beyond its window"
                    )),
                    None,
                ));
                // Dropping the runtime's stream stops its buffering.
                return;
            };
            if tx.send((Ok(chunk), Some(permit))).is_err() {
                return;
            }
        }
    });
    // The permit goes with the chunk and is given back once the pump
    // takes it: the queue holds at most the budget.
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|(chunk, permit)| {
            drop(permit);
            (chunk, rx)
        })
    }))
}

/// The guest's text as [`drain`] hands it on: a chunk, or why it stopped.
type Drained = Pin<Box<dyn Stream<Item = std::result::Result<String, String>> + Send>>;

/// Output in from the guest, acknowledged as the caller takes it, until
/// the program's end.
async fn output_pump(
    mut output: Drained,
    ended: Pin<Box<dyn Future<Output = Result<ExitStatus>> + Send>>,
    mut stdout: DuplexStream,
    mut stderr: Option<DuplexStream>,
    messages: mpsc::Sender<Message>,
    status: watch::Sender<Status>,
) {
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    // A caller that dropped its end of a pipe gets nothing more, and the
    // program is not held up by it.
    let mut stdout_open = true;
    let mut stderr_open = stderr.is_some();
    let outcome: Status = 'outer: loop {
        let chunk = match output.next().await {
            None => break None,
            Some(Err(e)) => break Some(Err(e)),
            Some(Ok(chunk)) => chunk,
        };
        if let Err(e) = splitter.push(&chunk, &mut lines) {
            break Some(Err(e));
        }
        for line in lines.drain(..) {
            let event = match parse_line(&line) {
                Ok(event) => event,
                Err(e) => break 'outer Some(Err(e)),
            };
            match event {
                Event::Stdout(data) | Event::Stderr(data) if data.is_empty() => {}
                Event::Stdout(data) => {
                    if stdout_open && stdout.write_all(&data).await.is_err() {
                        stdout_open = false;
                    }
                    let _ = messages.send(ack(data.len())).await;
                }
                Event::Stderr(data) => {
                    if stderr_open
                        && let Some(s) = stderr.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        stderr_open = false;
                    }
                    let _ = messages.send(ack(data.len())).await;
                }
                Event::StdinTaken(n) => {
                    let _ = messages.send(Message::StdinTaken(n)).await;
                }
                Event::Exited(code) => {
                    break 'outer Some(Ok(ExitStatus { code, signal: None }));
                }
                Event::Killed(signal) => {
                    break 'outer Some(Ok(ExitStatus {
                        code: 128 + signal,
                        signal: Some(signal),
                    }));
                }
                Event::Failed(text) => {
                    break 'outer Some(Err(format!("the guest refused: {text}")));
                }
            }
        }
    };
    let _ = stdout.shutdown().await;
    if let Some(s) = stderr.as_mut() {
        let _ = s.shutdown().await;
    }
    let outcome = match outcome {
        Some(outcome) => outcome,
        // The wrapper ended without a word on its program: it was killed,
        // or it is not a wire (a guest without `wire`).
        None => match ended.await {
            Ok(s) => Err(format!(
                "the execution's wrapper ended (status {}) without reporting its program's end",
                s.code
            )),
            Err(e) => Err(format!("the execution's wrapper failed: {e}")),
        },
    };
    if let Err(e) = &outcome {
        tracing::warn!(error = %e, "exec wire");
    }
    let _ = status.send(Some(outcome));
}

fn ack(n: usize) -> Message {
    Message::Frame(Frame::Ack(u32::try_from(n).unwrap_or(u32::MAX)))
}

struct WireControl {
    messages: mpsc::Sender<Message>,
    status: watch::Receiver<Status>,
}

impl WireControl {
    fn request(&self, frame: Frame) -> Result<()> {
        if self.status.borrow().is_some() {
            return Ok(());
        }
        self.messages
            .try_send(Message::Frame(frame))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Error::Runtime("too many signals and resizes pending for this execution".into())
                }
                // The execution ended meanwhile.
                mpsc::error::TrySendError::Closed(_) => {
                    Error::Runtime("the execution ended".into())
                }
            })
    }
}

#[async_trait]
impl ExecControl for WireControl {
    async fn wait(&self) -> Result<ExitStatus> {
        let mut status = self.status.clone();
        let outcome = status
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Runtime("the execution's wire went away".into()))?
            .clone();
        match outcome {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(Error::Runtime(e)),
            None => Err(Error::Runtime("the execution's wire went away".into())),
        }
    }

    fn try_status(&self) -> Option<ExitStatus> {
        self.status.borrow().as_ref().and_then(|s| s.clone().ok())
    }

    fn signal(&self, signal: i32) -> Result<()> {
        self.request(Frame::Signal(signal))
    }

    fn kill(&self) -> Result<()> {
        self.request(Frame::Kill)
    }

    fn resize(&self, size: PtySize) -> Result<()> {
        self.request(Frame::Resize {
            rows: size.rows,
            cols: size.cols,
        })
    }
}
