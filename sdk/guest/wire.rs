//! `blink-guest wire [--tty ROWSxCOLS] [--cwd DIR] -- PROG ARGS...`: one
//! execution carried over a text-only channel, byte-exact and with flow
//! control both ways.
//!
//! BoxLite 0.10.8 hands an execution's output to its host as `String`s
//! decoded lossily from UTF-8, and buffers stdin and output without bound.
//! So on the boxlite runtime Blink runs every program under this wrapper
//! (the layout is docs/BOXLITE.md's "exec wire"; the host half is
//! `sdk/src/runtime/wire/`):
//!
//! - host to guest (our stdin, bytes): frames `kind u8, length u32 BE,
//!   payload`: `E` one `NAME=VALUE` of the environment and `G` go (before
//!   the program starts), then `I` stdin data, `C` stdin closed, `A` u32
//!   output bytes the host delivered, `R` rows u16 cols u16, `S` signal
//!   i32, `K` kill the process group.
//! - guest to host (our stdout, ASCII lines): `o B64` and `e B64` output,
//!   `a N` stdin bytes the program took, `x CODE` or `k SIGNAL` the end,
//!   `f TEXT` a wire error.
//!
//! At most [`OUTPUT_WINDOW`] output bytes are unacknowledged, and the host
//! keeps at most its own window of stdin unacknowledged, so neither side's
//! buffers grow with a fast producer and a slow consumer. End of our stdin
//! means the host is gone: the program's process group is killed.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ExitCode, Stdio};
use std::sync::{Arc, Condvar, Mutex};

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// Output bytes the host may not have delivered yet.
const OUTPUT_WINDOW: u64 = 256 * 1024;
/// Largest frame payload the host may send.
const MAX_FRAME: u32 = 1 << 20;
/// Largest output chunk per line.
const CHUNK: usize = 32 * 1024;
const TIOCSWINSZ: u64 = 0x5414;
const TIOCSPTLCK: u64 = 0x4004_5431;
const TIOCGPTN: u64 = 0x8004_5430;
const SIGKILL: i32 = 9;

/// Lines to the host, one writer at a time.
type Lines = Arc<Mutex<std::io::Stdout>>;

/// Output bytes sent and not yet acknowledged.
#[derive(Default)]
struct Credit {
    in_flight: Mutex<u64>,
    changed: Condvar,
    /// The host is gone: nobody will acknowledge anything.
    closed: Mutex<bool>,
}

impl Credit {
    /// Wait until `n` more bytes fit in the window; false once the host is
    /// gone.
    fn take(&self, n: u64) -> bool {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
                return false;
            }
            if *in_flight < OUTPUT_WINDOW {
                *in_flight += n;
                return true;
            }
            in_flight = self
                .changed
                .wait(in_flight)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give(&self, n: u64) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *in_flight = in_flight.saturating_sub(n);
        self.changed.notify_all();
    }

    fn close(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        let _guard = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }
}

fn line(lines: &Lines, text: &str) {
    let mut out = lines.lock().unwrap_or_else(|e| e.into_inner());
    let _ = out.write_all(text.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn fatal(lines: &Lines, text: &str) -> ExitCode {
    line(lines, &format!("f {}", text.replace('\n', " ")));
    ExitCode::from(125)
}

pub fn main(args: &[String]) -> ExitCode {
    let lines: Lines = Arc::new(Mutex::new(std::io::stdout()));
    let mut tty: Option<(u16, u16)> = None;
    let mut cwd: Option<String> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--tty" => {
                i += 1;
                let size = args.get(i).and_then(|s| {
                    let (r, c) = s.split_once('x')?;
                    Some((r.parse().ok()?, c.parse().ok()?))
                });
                let Some(size) = size else {
                    return fatal(&lines, "--tty needs ROWSxCOLS");
                };
                tty = Some(size);
            }
            "--cwd" => {
                i += 1;
                cwd = args.get(i).cloned();
            }
            "--" => {
                i += 1;
                break;
            }
            other => return fatal(&lines, &format!("unknown option {other}")),
        }
        i += 1;
    }
    let Some(program) = args.get(i) else {
        return fatal(&lines, "no program given");
    };
    let mut input = std::io::stdin().lock();
    let mut env = Vec::new();
    loop {
        match read_frame(&mut input) {
            Ok(Some((b'E', payload))) => match String::from_utf8(payload) {
                Ok(record) => match record.split_once('=') {
                    Some((k, v)) => env.push((k.to_owned(), v.to_owned())),
                    None => return fatal(&lines, "an environment record without '='"),
                },
                Err(_) => return fatal(&lines, "an environment record that is not UTF-8"),
            },
            Ok(Some((b'G', _))) => break,
            Ok(Some((kind, _))) => {
                return fatal(&lines, &format!("frame {kind} before the program started"));
            }
            Ok(None) => return ExitCode::from(125),
            Err(err) => return fatal(&lines, &err),
        }
    }
    drop(input);

    let mut command = std::process::Command::new(program);
    command.args(&args[i + 1..]).env_clear().envs(env);
    if let Some(dir) = &cwd {
        command.current_dir(dir);
    }
    let pty = match tty {
        Some(size) => match open_pty(size) {
            Ok(pair) => Some(pair),
            Err(err) => return fatal(&lines, &format!("cannot open a terminal: {err}")),
        },
        None => None,
    };
    let is_tty = pty.is_some();
    let master = match pty {
        Some((master, slave)) => {
            let (a, b, c) = match (slave.try_clone(), slave.try_clone()) {
                (Ok(a), Ok(b)) => (a, b, slave),
                _ => return fatal(&lines, "cannot share the terminal"),
            };
            command
                .stdin(Stdio::from(a))
                .stdout(Stdio::from(b))
                .stderr(Stdio::from(c));
            Some(master)
        }
        None => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    // SAFETY: async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            crate::setsid();
            if is_tty && crate::ioctl(0, crate::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::drop_capabilities();
            Ok(())
        });
    }
    let mut child: Child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            line(
                &lines,
                &format!("e {}", base64(format!("blink-guest: cannot run {program}: {err}\n").as_bytes())),
            );
            line(&lines, &format!("x {code}"));
            return ExitCode::SUCCESS;
        }
    };
    let pid = child.id() as i32;
    let credit = Arc::new(Credit::default());

    // Output pumps.
    let mut pumps = Vec::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let sources: Vec<(char, Box<dyn Read + Send>)> = match &master {
        Some(master) => match master.try_clone() {
            Ok(m) => vec![('o', Box::new(m))],
            Err(err) => return fatal(&lines, &format!("cannot read the terminal: {err}")),
        },
        None => {
            let mut v: Vec<(char, Box<dyn Read + Send>)> = Vec::new();
            if let Some(out) = child.stdout.take() {
                v.push(('o', Box::new(out)));
            }
            if let Some(err) = child.stderr.take() {
                v.push(('e', Box::new(err)));
            }
            v
        }
    };
    for (tag, mut source) in sources {
        let lines = lines.clone();
        let credit = credit.clone();
        let done = done_tx.clone();
        pumps.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !credit.take(n as u64) {
                    break;
                }
                line(&lines, &format!("{tag} {}", base64(&buf[..n])));
            }
            let _ = done.send(());
        }));
    }
    drop(done_tx);

    // Control from the host.
    let stdin_sink: Option<Box<dyn Write + Send>> = match &master {
        Some(master) => master
            .try_clone()
            .ok()
            .map(|m| Box::new(m) as Box<dyn Write + Send>),
        None => child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>),
    };
    let control_master = master.as_ref().and_then(|m| m.try_clone().ok());
    {
        let lines = lines.clone();
        let credit = credit.clone();
        std::thread::spawn(move || control(stdin_sink, control_master, pid, &lines, &credit));
    }

    let status = child.wait();
    if is_tty {
        // Output written before the end is read; a background process that
        // keeps the terminal open does not hold the execution.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            match done_rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    } else {
        for pump in pumps {
            let _ = pump.join();
        }
    }
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => line(&lines, &format!("x {code}")),
            (None, Some(signal)) => line(&lines, &format!("k {signal}")),
            (None, None) => line(&lines, "x 255"),
        },
        Err(err) => return fatal(&lines, &format!("waiting for the program: {err}")),
    }
    ExitCode::SUCCESS
}

/// What the stdin writer does next.
enum Stdin {
    Data(Vec<u8>),
    Close,
}

/// The host's frames after the start: stdin, acknowledgements, resizes,
/// signals. Ends the program when the host goes away. Stdin is written by
/// a thread of its own, so a program that does not read cannot stop
/// acknowledgements (and with them its own output) from getting through.
fn control(
    sink: Option<Box<dyn Write + Send>>,
    master: Option<std::fs::File>,
    pid: i32,
    lines: &Lines,
    credit: &Credit,
) {
    // Bounded by the host's stdin window: it sends no more than it was
    // told was taken.
    let (to_writer, from_control) = std::sync::mpsc::channel::<Stdin>();
    {
        let lines = lines.clone();
        let tty = master.is_some();
        std::thread::spawn(move || {
            let mut sink = sink;
            for message in from_control {
                match message {
                    Stdin::Data(data) => {
                        if let Some(s) = sink.as_mut()
                            && s.write_all(&data).and_then(|()| s.flush()).is_err()
                        {
                            sink = None;
                        }
                        // Taken, or thrown away (the program closed its
                        // stdin): the host may send more either way.
                        line(&lines, &format!("a {}", data.len()));
                    }
                    Stdin::Close if !tty => sink = None,
                    Stdin::Close => {}
                }
            }
        });
    }
    let mut input = std::io::stdin().lock();
    loop {
        match read_frame(&mut input) {
            Ok(Some((b'I', data))) => {
                let _ = to_writer.send(Stdin::Data(data));
            }
            Ok(Some((b'C', _))) => {
                let _ = to_writer.send(Stdin::Close);
            }
            Ok(Some((b'A', data))) => match <[u8; 4]>::try_from(data.as_slice()) {
                Ok(n) => credit.give(u64::from(u32::from_be_bytes(n))),
                Err(_) => return bad(lines, pid, credit, "an A frame of the wrong size"),
            },
            Ok(Some((b'R', data))) => {
                let (Ok(rows), Ok(cols)) = (
                    <[u8; 2]>::try_from(data.get(0..2).unwrap_or_default()),
                    <[u8; 2]>::try_from(data.get(2..4).unwrap_or_default()),
                ) else {
                    return bad(lines, pid, credit, "an R frame of the wrong size");
                };
                if let Some(m) = &master {
                    set_size(m, (u16::from_be_bytes(rows), u16::from_be_bytes(cols)));
                }
            }
            Ok(Some((b'S', data))) => match <[u8; 4]>::try_from(data.as_slice()) {
                // SAFETY: kill(2) on our own child.
                Ok(s) => unsafe {
                    kill(pid, i32::from_be_bytes(s));
                },
                Err(_) => return bad(lines, pid, credit, "an S frame of the wrong size"),
            },
            Ok(Some((b'K', _))) => {
                // SAFETY: the child leads its own process group (setsid).
                unsafe {
                    kill(-pid, SIGKILL);
                }
            }
            Ok(Some((kind, _))) => {
                return bad(lines, pid, credit, &format!("unknown frame kind {kind}"));
            }
            Ok(None) => {
                // The host is gone: nobody reads what the program writes.
                // SAFETY: as above.
                unsafe {
                    kill(-pid, SIGKILL);
                }
                credit.close();
                return;
            }
            Err(err) => return bad(lines, pid, credit, &err),
        }
    }
}

fn bad(lines: &Lines, pid: i32, credit: &Credit, what: &str) {
    line(lines, &format!("f {what}"));
    // SAFETY: the child leads its own process group (setsid).
    unsafe {
        kill(-pid, SIGKILL);
    }
    credit.close();
}

/// One frame, `None` at a clean end of input.
fn read_frame(input: &mut impl Read) -> Result<Option<(u8, Vec<u8>)>, String> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("input ended inside a frame".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading frames: {e}")),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(format!("a frame of {len} bytes (at most {MAX_FRAME})"));
    }
    let mut payload = vec![0u8; len as usize];
    input
        .read_exact(&mut payload)
        .map_err(|e| format!("input ended inside a frame: {e}"))?;
    Ok(Some((head[0], payload)))
}

fn open_pty(size: (u16, u16)) -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    const O_NOCTTY: i32 = 0o400;
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOCTTY)
        .open("/dev/ptmx")?;
    let mut unlock: i32 = 0;
    let mut number: u32 = 0;
    // SAFETY: ioctls on a descriptor we own, with pointers to locals.
    unsafe {
        if crate::ioctl(master.as_raw_fd(), TIOCSPTLCK, &mut unlock as *mut i32) != 0
            || crate::ioctl(master.as_raw_fd(), TIOCGPTN, &mut number as *mut u32) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOCTTY)
        .open(format!("/dev/pts/{number}"))?;
    set_size(&master, size);
    Ok((master, slave))
}

fn set_size(master: &std::fs::File, (rows, cols): (u16, u16)) {
    use std::os::fd::AsRawFd;
    let winsize: [u16; 4] = [rows, cols, 0, 0];
    // SAFETY: TIOCSWINSZ reads a `struct winsize` we own.
    unsafe {
        crate::ioctl(master.as_raw_fd(), TIOCSWINSZ, winsize.as_ptr());
    }
}

/// Standard base64 with padding, written straight into a line buffer
/// (under emulation every instruction counts).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                ALPHABET[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
    // Only ASCII from the alphabet went in.
    String::from_utf8(out).unwrap_or_default()
}
