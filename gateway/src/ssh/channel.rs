//! One session channel running a program (exec or shell) in the sandbox:
//! client data to stdin, stdout and stderr back as data and extended data,
//! then exit-status (or exit-signal), EOF and close, in that order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use blink_sdk::manager::{Manager, Started, policy};
use blink_sdk::runtime::exec::{ByteReader, ByteWriter, ExecControl, Execution};
use blink_sdk::runtime::{ExecSpec, PtySize};
use blink_sdk::types::ExitStatus;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::compat::SymlinkOrder;
use super::connection::ConnStats;
use super::sftp_audit;
use crate::recording::{Begin, Recorder, Recordings, Source};

/// What a pty-req asked for.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    pub term: String,
    pub size: PtySize,
}

/// What the channel runs.
#[derive(Debug, Clone)]
pub enum What {
    Shell,
    Exec(String),
    /// The `sftp` subsystem: an SFTP server inside the sandbox, run as one
    /// of its processes, speaking SFTP on the channel's data. It has the
    /// sandbox's privileges and nothing more (as OpenSSH runs sftp-server
    /// as the logged-in user). It reads SYMLINK's paths in the client's
    /// order (`compat.rs`).
    Sftp(SymlinkOrder),
}

impl What {
    /// The command of an exec request: UTF-8 without NUL, else refused.
    pub fn exec(command: &[u8]) -> Option<Self> {
        let command = std::str::from_utf8(command).ok()?;
        (!command.contains('\0')).then(|| What::Exec(command.to_string()))
    }

    /// The kind, for log lines and metrics.
    pub fn kind(&self) -> &'static str {
        self.argv().1
    }

    /// The program and arguments, and the kind for the log line.
    fn argv(&self) -> (Vec<String>, &'static str) {
        match self {
            What::Shell => (vec!["/bin/sh".into(), "-l".into()], "shell"),
            What::Exec(c) => (vec!["/bin/sh".into(), "-c".into(), c.clone()], "exec"),
            What::Sftp(order) => (
                vec![
                    blink_sdk::runtime::local::GUEST_PATH.into(),
                    "sftp-server".into(),
                    "--symlink-order".into(),
                    order.flag().into(),
                ],
                "sftp",
            ),
        }
    }
}

/// A terminal size from pty-req or window-change (which cannot be refused):
/// the SDK's bounds, clamped.
pub fn pty_size(cols: u32, rows: u32) -> PtySize {
    policy::terminal_size_clamped(rows, cols)
}

/// Exit code for Blink's own failures (the program never ran).
const EXIT_BLINK_ERROR: u32 = 125;

/// One channel's program: what runs, where, and how it was asked for.
pub struct Job {
    pub manager: Arc<Manager>,
    /// Where a PTY channel is recorded, if its session is.
    pub recordings: Arc<Recordings>,
    pub session: String,
    pub login_peer: SocketAddr,
    pub what: What,
    pub pty: Option<PtyRequest>,
    pub env: Vec<(String, String)>,
    pub stats: Arc<ConnStats>,
    pub open_channels: Arc<AtomicUsize>,
    pub handle: Handle,
}

/// Decrements the connection's open-channel count however the task ends.
pub struct ChannelSlot(pub Arc<AtomicUsize>);

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a channel ended: the exit status sent and the signal's name, if
/// the program died of one; or what failed (the client got
/// `EXIT_BLINK_ERROR`).
type Outcome = Result<(u32, Option<String>), String>;

/// Bytes a channel carried, each way.
#[derive(Default)]
struct Traffic {
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

impl Job {
    /// Run the channel to its end, then log it in one line.
    pub async fn run(self, channel: Channel<Msg>) {
        let _slot = ChannelSlot(self.open_channels.clone());
        let started = Instant::now();
        let id = channel.id();
        let traffic = Traffic::default();
        let outcome = self.drive(channel, &traffic).await;
        self.log_closed(id, started, &traffic, &outcome);
    }

    /// The channel's life: read the client's side at once; start the
    /// program (or tell the client why it cannot run); feed it the
    /// client's input and pump its output until it ends; then the rest of
    /// its output, its exit status (or signal), EOF and close, in that
    /// order.
    async fn drive(&self, channel: Channel<Msg>, traffic: &Traffic) -> Outcome {
        let id = channel.id();
        let (reader, writer) = channel.split();
        // Read the client's side from the start, before the program runs
        // (starting a stopped session takes a while): russh's connection
        // loop blocks on a full channel queue, stalling every channel.
        let mut input = ClientInput::spawn(reader, traffic.bytes_in.clone());
        let mut started = match self.start_program().await {
            Ok(started) => started,
            Err(e) => {
                input.stop();
                send_message(&writer, &e.client_message()).await;
                let _ = writer.exit_status(EXIT_BLINK_ERROR).await;
                close(&writer).await;
                return Err(e.to_string());
            }
        };
        if let What::Sftp(order) = self.what {
            // Every SFTP operation in the audit log, read as bytes cross.
            let context = sftp_audit::Context {
                session: self.session.clone(),
                peer: self.login_peer,
                channel: id,
            };
            sftp_audit::tap(&mut started.execution, order, context);
        }
        let recorder = self.begin_recording().await;
        let control = started.execution.control.clone();
        let handle = self.handle.clone();
        let credit = move |bytes: usize| handle.consumed(id, bytes as u32);
        input.attach(
            control.clone(),
            started.execution.stdin.take(),
            credit,
            recorder.clone(),
        );
        let output = self.pump_output(
            &mut started.execution,
            &writer,
            &traffic.bytes_out,
            recorder,
        );
        let status = self.wait_program(&control, &mut input, &writer, id).await;
        input.stop_feeding();
        // All output first, then the status, EOF and close.
        output.finish().await;
        input.stop();
        let outcome = self.send_exit(&writer, id, status).await;
        close(&writer).await;
        let _ = self.manager.finish(started).await;
        outcome
    }

    /// Start the program in the session (starting the session if needed).
    async fn start_program(&self) -> blink_sdk::Result<Started> {
        let (argv, _) = self.what.argv();
        let spec = ExecSpec {
            argv,
            env: self.env.clone(),
            cwd: None,
            tty: self.pty.as_ref().map(|p| p.size),
        };
        self.manager.exec(&self.session, spec).await
    }

    /// A recording of this channel, if it has a terminal and its session
    /// is recorded (`recording/`).
    async fn begin_recording(&self) -> Option<Arc<Recorder>> {
        let pty = self.pty.as_ref()?;
        if !self.recordings.config().enabled {
            return None;
        }
        let command = match &self.what {
            What::Shell => None,
            What::Exec(command) => Some(command.as_str()),
            What::Sftp(_) => return None,
        };
        let info = self.manager.session_info(&self.session).ok()?;
        let begin = Begin {
            session: &self.session,
            box_id: &info.box_id,
            size: pty.size,
            term: Some(&pty.term),
            shell: Some("/bin/sh"),
            command,
            source: Source::Ssh {
                login: self.session.clone(),
                peer: self.login_peer,
            },
        };
        self.recordings.begin(begin).await
    }

    /// Copy the program's stdout and stderr to the channel, as data and as
    /// extended data 1, each in a task of its own; the terminal's output
    /// (stdout in PTY mode) to the recording too.
    fn pump_output(
        &self,
        execution: &mut Execution,
        writer: &ChannelWriteHalf<Msg>,
        bytes_out: &Arc<AtomicU64>,
        recorder: Option<Arc<Recorder>>,
    ) -> OutputPumps {
        let stdout = execution.stdout.take().map(|r| {
            tokio::spawn(pump(
                r,
                writer.make_writer(),
                bytes_out.clone(),
                self.stats.clone(),
                recorder,
            ))
        });
        let stderr = execution.stderr.take().map(|r| {
            tokio::spawn(pump(
                r,
                writer.make_writer_ext(Some(1)),
                bytes_out.clone(),
                self.stats.clone(),
                None,
            ))
        });
        OutputPumps([stdout, stderr])
    }

    /// Wait for the program to end. It is killed if the client goes away
    /// or sends past its window (`STDIN_BACKLOG_LIMIT`).
    async fn wait_program(
        &self,
        control: &Arc<dyn ExecControl>,
        input: &mut ClientInput,
        writer: &ChannelWriteHalf<Msg>,
        id: ChannelId,
    ) -> Result<ExitStatus, String> {
        let status = tokio::select! {
            status = control.wait() => status,
            stop = input.must_stop() => {
                if stop == Stop::Overflow {
                    tracing::warn!(session = %self.session, channel = %id, "ssh client sent past its channel window: stopping the program");
                    send_message(
                        writer,
                        "the client sent more than its channel window allows; stopped",
                    )
                    .await;
                }
                let _ = control.kill();
                control.wait().await
            }
        };
        status.map_err(|e| e.to_string())
    }

    /// Tell the client how the program ended: exit-signal if a signal
    /// killed it, else exit-status (`EXIT_BLINK_ERROR` if waiting failed).
    async fn send_exit(
        &self,
        writer: &ChannelWriteHalf<Msg>,
        id: ChannelId,
        status: Result<ExitStatus, String>,
    ) -> Outcome {
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                let _ = writer.exit_status(EXIT_BLINK_ERROR).await;
                return Err(e);
            }
        };
        let code = u32::try_from(status.code).unwrap_or(EXIT_BLINK_ERROR);
        match status.signal.map(signal_of) {
            Some(sig) => {
                let name = match &sig {
                    Sig::Custom(n) => n.clone(),
                    other => format!("{other:?}"),
                };
                let _ = self
                    .handle
                    .exit_signal_request(id, sig, false, String::new(), String::new())
                    .await;
                Ok((code, Some(name)))
            }
            None => {
                let _ = writer.exit_status(code).await;
                Ok((code, None))
            }
        }
    }

    /// The channel's one log line; its bytes join the connection's.
    fn log_closed(&self, id: ChannelId, started: Instant, traffic: &Traffic, outcome: &Outcome) {
        let (status, signal, error) = match outcome {
            Ok((code, sig)) => (Some(*code), sig.as_deref(), None),
            Err(e) => (None, None, Some(e.as_str())),
        };
        let bytes_in = traffic.bytes_in.load(Ordering::SeqCst);
        let bytes_out = traffic.bytes_out.load(Ordering::SeqCst);
        self.stats.bytes_in.fetch_add(bytes_in, Ordering::SeqCst);
        self.stats.bytes_out.fetch_add(bytes_out, Ordering::SeqCst);
        let command = match &self.what {
            What::Exec(c) => c.as_str(),
            What::Shell | What::Sftp(_) => "",
        };
        tracing::info!(
            target: "blink::ssh::channel",
            peer = %self.login_peer,
            session = %self.session,
            channel = %id,
            kind = self.what.argv().1,
            pty = self.pty.is_some(),
            command = %blink_sdk::escape::Escaped(&truncate(command, 256)),
            bytes_in,
            bytes_out,
            exit_status = status.map(i64::from).unwrap_or(-1),
            exit_signal = signal.unwrap_or(""),
            error = error.unwrap_or(""),
            duration_ms = started.elapsed().as_millis() as u64,
            "ssh channel closed"
        );
    }
}

/// A line from Blink itself on the channel's stderr (`blink: ...`).
async fn send_message(writer: &ChannelWriteHalf<Msg>, message: &str) {
    let mut err = writer.make_writer_ext(Some(1));
    let _ = err
        .write_all(format!("blink: {message}\r\n").as_bytes())
        .await;
    let _ = err.flush().await;
}

/// EOF and close: the last the channel says.
async fn close(writer: &ChannelWriteHalf<Msg>) {
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// The tasks copying the program's stdout and stderr.
struct OutputPumps([Option<JoinHandle<()>>; 2]);

impl OutputPumps {
    /// Wait until both streams have ended and been written out.
    async fn finish(self) {
        for pump in self.0.into_iter().flatten() {
            let _ = pump.await;
        }
    }
}

/// Client input a program has not read yet, per channel. A client that
/// keeps to its window (`CHANNEL_WINDOW`, renewed only as the program
/// consumes, see patches/russh) never comes near it; past it the client has
/// broken the protocol, and the program is stopped rather than the queue
/// growing.
pub const STDIN_BACKLOG_LIMIT: usize = 4 * super::server::CHANNEL_WINDOW as usize;

/// Client data and EOF, in order, for the program's stdin.
enum Input {
    Data(Vec<u8>),
    Eof,
}

/// The running program's control (and its recording), once it runs; a
/// terminal size asked for before that is applied when it starts.
#[derive(Default)]
struct ControlLink {
    inner: std::sync::Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    control: Option<Arc<dyn ExecControl>>,
    size: Option<PtySize>,
    recorder: Option<Arc<Recorder>>,
}

impl ControlLink {
    fn attach(&self, control: Arc<dyn ExecControl>, recorder: Option<Arc<Recorder>>) {
        if let Ok(mut state) = self.inner.lock() {
            if let Some(size) = state.size.take() {
                let _ = control.resize(size);
                if let Some(r) = &recorder {
                    r.resize(size);
                }
            }
            state.control = Some(control);
            state.recorder = recorder;
        }
    }

    fn control(&self) -> Option<Arc<dyn ExecControl>> {
        self.inner.lock().ok().and_then(|s| s.control.clone())
    }

    /// A window change: recorded before the program sees it, so its
    /// output at the new size comes after it in the cast.
    fn resize(&self, size: PtySize) {
        if let Ok(mut state) = self.inner.lock() {
            match &state.control {
                Some(c) => {
                    if let Some(r) = &state.recorder {
                        r.resize(size);
                    }
                    let _ = c.resize(size);
                }
                None => state.size = Some(size),
            }
        }
    }

    /// Client input, for a recording that keeps it.
    fn record_input(&self, data: &[u8]) {
        if let Ok(state) = self.inner.lock()
            && let Some(r) = &state.recorder
        {
            r.input(data);
        }
    }
}

/// Why the client's side wants the program stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The client closed the channel (or its connection ended).
    ClientGone,
    /// More than `STDIN_BACKLOG_LIMIT` bytes queued: past the window.
    Overflow,
}

/// The client's side of a channel: a task reading it from the start
/// (`read_client`), and once the program runs, a task feeding its stdin
/// (`feed_stdin`).
struct ClientInput {
    reader: JoinHandle<()>,
    feeder: Option<JoinHandle<()>>,
    /// Client data waiting for the program, until the feeder takes it.
    queue: Option<mpsc::UnboundedReceiver<Input>>,
    backlog: Arc<AtomicUsize>,
    link: Arc<ControlLink>,
    overflow: Arc<Notify>,
}

impl ClientInput {
    fn spawn(reader: ChannelReadHalf, bytes_in: Arc<AtomicU64>) -> Self {
        let link = Arc::new(ControlLink::default());
        let overflow = Arc::new(Notify::new());
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let reader = tokio::spawn(read_client(
            reader,
            stdin_tx,
            backlog.clone(),
            link.clone(),
            overflow.clone(),
            bytes_in,
        ));
        Self {
            reader,
            feeder: None,
            queue: Some(stdin_rx),
            backlog,
            link,
            overflow,
        }
    }

    /// The program runs: window changes and signals reach it from now on,
    /// and the client's data goes to its stdin; `credit` reports each
    /// chunk consumed, which is what lets the client send more.
    fn attach(
        &mut self,
        control: Arc<dyn ExecControl>,
        stdin: Option<ByteWriter>,
        credit: impl Fn(usize) + Send + 'static,
        recorder: Option<Arc<Recorder>>,
    ) {
        self.link.attach(control, recorder);
        if let Some(queue) = self.queue.take() {
            self.feeder = Some(tokio::spawn(feed_stdin(
                stdin,
                queue,
                self.backlog.clone(),
                credit,
            )));
        }
    }

    /// Wait until the client's side wants the program stopped.
    async fn must_stop(&mut self) -> Stop {
        tokio::select! {
            _ = &mut self.reader => Stop::ClientGone,
            () = self.overflow.notified() => Stop::Overflow,
        }
    }

    /// Stop writing to the program's stdin.
    fn stop_feeding(&mut self) {
        if let Some(feeder) = self.feeder.take() {
            feeder.abort();
        }
    }

    /// Stop reading the client's side.
    fn stop(mut self) {
        self.stop_feeding();
        self.reader.abort();
    }
}

/// Drain the client's side of a channel without ever waiting on the
/// program: data is queued (at most a window of it, since the window is
/// renewed only as the program consumes), window changes and signals act
/// at once. Ends when the client closes the channel.
async fn read_client(
    mut reader: ChannelReadHalf,
    stdin: mpsc::UnboundedSender<Input>,
    backlog: Arc<AtomicUsize>,
    link: Arc<ControlLink>,
    overflow: Arc<Notify>,
    bytes_in: Arc<AtomicU64>,
) {
    let mut overflowed = false;
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                bytes_in.fetch_add(data.len() as u64, Ordering::SeqCst);
                if overflowed {
                    continue;
                }
                let queued = backlog.fetch_add(data.len(), Ordering::SeqCst) + data.len();
                if queued > STDIN_BACKLOG_LIMIT {
                    overflowed = true;
                    overflow.notify_one();
                    continue;
                }
                link.record_input(&data);
                // A closed receiver means the program is gone: drop it.
                let _ = stdin.send(Input::Data(data.to_vec()));
            }
            ChannelMsg::Eof => {
                let _ = stdin.send(Input::Eof);
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => link.resize(pty_size(col_width, row_height)),
            ChannelMsg::Signal { signal } => match (signal_number(&signal), link.control()) {
                (Some(n), Some(control)) => {
                    let _ = control.signal(n);
                }
                _ => tracing::debug!(?signal, "ssh signal ignored"),
            },
            _ => {}
        }
    }
}

/// Write queued client data to the program's stdin, then close it on EOF.
/// Each chunk is credited back to the client's window once written (or
/// dropped, when the program has closed its stdin).
async fn feed_stdin(
    mut stdin: Option<ByteWriter>,
    mut queue: mpsc::UnboundedReceiver<Input>,
    backlog: Arc<AtomicUsize>,
    credit: impl Fn(usize),
) {
    while let Some(input) = queue.recv().await {
        match input {
            Input::Data(data) => {
                if let Some(w) = stdin.as_mut()
                    && w.write_all(&data).await.is_err()
                {
                    // The program closed its stdin: drop the rest.
                    stdin = None;
                }
                backlog.fetch_sub(data.len(), Ordering::SeqCst);
                credit(data.len());
            }
            Input::Eof => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
        }
    }
}

/// Copy a program stream to the channel until it ends, and to its
/// recording (which never waits) as it is read.
async fn pump(
    mut from: ByteReader,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    counter: Arc<AtomicU64>,
    stats: Arc<ConnStats>,
    recorder: Option<Arc<Recorder>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::SeqCst);
                stats.touch();
                if let Some(r) = &recorder {
                    r.output(&buf[..n]);
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            // A PTY reports EIO once the terminal's last holder is gone.
            Err(_) => break,
        }
    }
    let _ = to.flush().await;
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// The SSH signal of a signal number (RFC 4254 names are Linux's without
/// `SIG`; the SDK's table has them all).
pub fn signal_of(n: i32) -> Sig {
    let Some(name) = policy::signal_name(n) else {
        return Sig::Custom(format!("SIG{n}"));
    };
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.into()),
    }
}

/// The signal number of an SSH signal (names the SDK does not know are
/// ignored).
pub fn signal_number(sig: &Sig) -> Option<i32> {
    let name = match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    };
    policy::signal_number(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sftp_runs_with_the_clients_symlink_order() {
        for (order, flag) in [
            (SymlinkOrder::OpenSsh, "openssh"),
            (SymlinkOrder::Draft, "draft"),
        ] {
            let (argv, kind) = What::Sftp(order).argv();
            assert_eq!(kind, "sftp");
            assert_eq!(argv[1..], ["sftp-server", "--symlink-order", flag]);
        }
    }

    #[test]
    fn signals_round_trip() {
        for n in 1..=31 {
            assert_eq!(signal_number(&signal_of(n)), Some(n), "{n}");
        }
        assert_eq!(
            signal_number(&Sig::Custom("WINCH".into())),
            Some(libc::SIGWINCH)
        );
        assert_eq!(signal_number(&Sig::Custom("NOPE".into())), None);
        assert_eq!(pty_size(0, 0), PtySize { rows: 24, cols: 80 });
        assert_eq!(
            pty_size(100, 40),
            PtySize {
                rows: 40,
                cols: 100
            }
        );
    }
}
