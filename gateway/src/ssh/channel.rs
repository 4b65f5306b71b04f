//! One session channel running a program (exec or shell) in the sandbox:
//! client data to stdin, stdout and stderr back as data and extended data,
//! then exit-status (or exit-signal), EOF and close, in that order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use blink_sdk::manager::Manager;
use blink_sdk::runtime::exec::{ByteReader, ByteWriter, ExecControl};
use blink_sdk::runtime::{ExecSpec, PtySize};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::ConnStats;

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
    /// as the logged-in user).
    Sftp,
}

impl What {
    /// The command of an exec request: UTF-8 without NUL, else refused.
    pub fn exec(command: &[u8]) -> Option<Self> {
        let command = std::str::from_utf8(command).ok()?;
        (!command.contains('\0')).then(|| What::Exec(command.to_string()))
    }

    /// The program and arguments, and the kind for the log line.
    fn argv(&self) -> (Vec<String>, &'static str) {
        match self {
            What::Shell => (vec!["/bin/sh".into(), "-l".into()], "shell"),
            What::Exec(c) => (vec!["/bin/sh".into(), "-c".into(), c.clone()], "exec"),
            What::Sftp => (
                vec![
                    blink_sdk::runtime::local::GUEST_PATH.into(),
                    "sftp-server".into(),
                ],
                "sftp",
            ),
        }
    }
}

pub fn pty_size(cols: u32, rows: u32) -> PtySize {
    let clamp = |v: u32, default: u16| {
        if v == 0 {
            default
        } else {
            u16::try_from(v.min(4096)).unwrap_or(default)
        }
    };
    PtySize {
        rows: clamp(rows, 24),
        cols: clamp(cols, 80),
    }
}

/// Exit code for Blink's own failures (the program never ran).
const EXIT_BLINK_ERROR: u32 = 125;

pub struct Job {
    pub manager: Arc<Manager>,
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

impl Job {
    pub async fn run(self, channel: Channel<Msg>) {
        let _slot = ChannelSlot(self.open_channels.clone());
        let started = Instant::now();
        let id = channel.id();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let bytes_out = Arc::new(AtomicU64::new(0));
        let command = match &self.what {
            What::Exec(c) => c.clone(),
            What::Shell | What::Sftp => String::new(),
        };
        let kind = self.what.argv().1;
        let outcome = self.drive(channel, &bytes_in, &bytes_out).await;
        let (status, signal, error) = match &outcome {
            Ok((code, sig)) => (Some(*code), sig.clone(), None),
            Err(e) => (None, None, Some(e.clone())),
        };
        let bin = bytes_in.load(Ordering::SeqCst);
        let bout = bytes_out.load(Ordering::SeqCst);
        self.stats.bytes_in.fetch_add(bin, Ordering::SeqCst);
        self.stats.bytes_out.fetch_add(bout, Ordering::SeqCst);
        tracing::info!(
            target: "blink::ssh::channel",
            peer = %self.login_peer,
            session = %self.session,
            channel = %id,
            kind,
            pty = self.pty.is_some(),
            command = %blink_sdk::escape::Escaped(&truncate(&command, 256)),
            bytes_in = bin,
            bytes_out = bout,
            exit_status = status.map(i64::from).unwrap_or(-1),
            exit_signal = signal.as_deref().unwrap_or(""),
            error = error.as_deref().unwrap_or(""),
            duration_ms = started.elapsed().as_millis() as u64,
            "ssh channel closed"
        );
    }

    /// Run the program and speak the channel protocol. Returns the exit
    /// status sent and the signal name, if any.
    async fn drive(
        &self,
        channel: Channel<Msg>,
        bytes_in: &Arc<AtomicU64>,
        bytes_out: &Arc<AtomicU64>,
    ) -> Result<(u32, Option<String>), String> {
        let id = channel.id();
        let (argv, _) = self.what.argv();
        let spec = ExecSpec {
            argv,
            env: self.env.clone(),
            cwd: None,
            tty: self.pty.as_ref().map(|p| p.size),
        };
        let (reader, writer) = channel.split();
        // Read the client's side from the start, before the program runs
        // (starting a stopped session takes a while): russh's connection
        // loop blocks on a full channel queue, stalling every channel.
        let link = Arc::new(ControlLink::default());
        let overflow = Arc::new(tokio::sync::Notify::new());
        let (stdin_tx, stdin_rx) = tokio::sync::mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let mut input = tokio::spawn(read_client(
            reader,
            stdin_tx,
            backlog.clone(),
            link.clone(),
            overflow.clone(),
            bytes_in.clone(),
        ));
        let mut started = match self.manager.exec(&self.session, spec).await {
            Ok(s) => s,
            Err(e) => {
                input.abort();
                let msg = format!("blink: {}\r\n", e.client_message());
                let mut err = writer.make_writer_ext(Some(1));
                let _ = err.write_all(msg.as_bytes()).await;
                let _ = err.flush().await;
                let _ = writer.exit_status(EXIT_BLINK_ERROR).await;
                let _ = writer.eof().await;
                let _ = writer.close().await;
                return Err(e.to_string());
            }
        };
        let control = started.execution.control.clone();
        let stdin = started.execution.stdin.take();
        let stdout = started.execution.stdout.take();
        let stderr = started.execution.stderr.take();
        link.attach(control.clone());
        let feeder = tokio::spawn(feed_stdin(stdin, stdin_rx, backlog));

        // Program -> client.
        let out_pump = stdout.map(|r| {
            tokio::spawn(pump(
                r,
                writer.make_writer(),
                bytes_out.clone(),
                self.stats.clone(),
            ))
        });
        let err_pump = stderr.map(|r| {
            tokio::spawn(pump(
                r,
                writer.make_writer_ext(Some(1)),
                bytes_out.clone(),
                self.stats.clone(),
            ))
        });

        let status = tokio::select! {
            status = control.wait() => status,
            _ = &mut input => {
                // The client went away: stop the program.
                let _ = control.kill();
                control.wait().await
            }
            _ = overflow.notified() => {
                tracing::warn!(session = %self.session, channel = %id, "ssh channel stdin backlog over limit: killing the program");
                let msg = format!(
                    "blink: more than {} MiB of input the program did not read; killed\r\n",
                    STDIN_BACKLOG_LIMIT >> 20
                );
                let mut err = writer.make_writer_ext(Some(1));
                let _ = err.write_all(msg.as_bytes()).await;
                let _ = err.flush().await;
                let _ = control.kill();
                control.wait().await
            }
        };
        feeder.abort();
        let status = status.map_err(|e| e.to_string());

        // All output first, then the status, EOF and close.
        if let Some(p) = out_pump {
            let _ = p.await;
        }
        if let Some(p) = err_pump {
            let _ = p.await;
        }
        input.abort();
        let result = match status {
            Ok(s) => {
                let code = u32::try_from(s.code).unwrap_or(EXIT_BLINK_ERROR);
                match s.signal.map(signal_of) {
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
            Err(e) => {
                let _ = writer.exit_status(EXIT_BLINK_ERROR).await;
                Err(e)
            }
        };
        let _ = writer.eof().await;
        let _ = writer.close().await;
        let _ = self.manager.finish(started).await;
        result
    }
}

/// Client input a program has not read yet, per channel, at most this many
/// bytes. russh 0.65 extends a channel's window as soon as data arrives, so
/// the gateway cannot hold one channel's client back without stalling the
/// whole connection; past this bound the program is killed instead.
pub const STDIN_BACKLOG_LIMIT: usize = 16 << 20;

/// Client data and EOF, in order, for the program's stdin.
enum Input {
    Data(Vec<u8>),
    Eof,
}

/// The running program's control, once it runs; a terminal size asked for
/// before that is applied when it starts.
#[derive(Default)]
struct ControlLink {
    inner: std::sync::Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    control: Option<Arc<dyn ExecControl>>,
    size: Option<PtySize>,
}

impl ControlLink {
    fn attach(&self, control: Arc<dyn ExecControl>) {
        if let Ok(mut state) = self.inner.lock() {
            if let Some(size) = state.size.take() {
                let _ = control.resize(size);
            }
            state.control = Some(control);
        }
    }

    fn control(&self) -> Option<Arc<dyn ExecControl>> {
        self.inner.lock().ok().and_then(|s| s.control.clone())
    }

    fn resize(&self, size: PtySize) {
        if let Ok(mut state) = self.inner.lock() {
            match &state.control {
                Some(c) => {
                    let _ = c.resize(size);
                }
                None => state.size = Some(size),
            }
        }
    }
}

/// Drain the client's side of a channel without ever waiting on the
/// program: data is queued (bounded by `STDIN_BACKLOG_LIMIT`), window
/// changes and signals act at once. Ends when the client closes the channel.
async fn read_client(
    mut reader: russh::ChannelReadHalf,
    stdin: tokio::sync::mpsc::UnboundedSender<Input>,
    backlog: Arc<AtomicUsize>,
    link: Arc<ControlLink>,
    overflow: Arc<tokio::sync::Notify>,
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
async fn feed_stdin(
    mut stdin: Option<ByteWriter>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Input>,
    backlog: Arc<AtomicUsize>,
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
            }
            Input::Eof => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
        }
    }
}

/// Copy a program stream to the channel until it ends.
async fn pump(
    mut from: ByteReader,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    counter: Arc<AtomicU64>,
    stats: Arc<ConnStats>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::SeqCst);
                stats.touch();
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

/// The SSH signal name of a signal number.
pub fn signal_of(n: i32) -> Sig {
    match n {
        libc::SIGABRT => Sig::ABRT,
        libc::SIGALRM => Sig::ALRM,
        libc::SIGFPE => Sig::FPE,
        libc::SIGHUP => Sig::HUP,
        libc::SIGILL => Sig::ILL,
        libc::SIGINT => Sig::INT,
        libc::SIGKILL => Sig::KILL,
        libc::SIGPIPE => Sig::PIPE,
        libc::SIGQUIT => Sig::QUIT,
        libc::SIGSEGV => Sig::SEGV,
        libc::SIGTERM => Sig::TERM,
        libc::SIGUSR1 => Sig::USR1,
        libc::SIGUSR2 => Sig::Custom("USR2".into()),
        other => Sig::Custom(format!("SIG{other}")),
    }
}

/// The signal number of an SSH signal name (unknown names are ignored).
pub fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) if name == "USR2" => libc::SIGUSR2,
        Sig::Custom(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip() {
        for n in [1, 2, 3, 6, 9, 13, 14, 15, 10, 12, 11, 8, 4] {
            assert_eq!(signal_number(&signal_of(n)), Some(n));
        }
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
