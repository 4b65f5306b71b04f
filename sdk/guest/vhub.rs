//! `blink-guest vhub ...`: a V-Hub client for programs in the sandbox, on
//! the session's endpoint `/run/blink/vhub.sock` (docs/VHUB.md). It speaks
//! the BLIN frames of the SDK's `vhub::frame` with nothing but `std`.
//!
//! - `emit TOPIC [DATA] [--repeat N]`: an event (DATA is JSON; default null).
//! - `call METHOD [PARAMS] [--repeat N]`: call a method a host client (or
//!   the hub) provides; prints the result's JSON (with `--repeat`, the
//!   round trips' p50/p99 in microseconds instead).
//! - `serve METHOD [--count N] [-- PROG ARGS...]`: provide a method to host
//!   callers; each call's params go to PROG's stdin and its stdout (text)
//!   is the result, or without PROG the params are the result.
//! - `stream METHOD [PARAMS]`: a byte stream to the host provider of
//!   METHOD: stdin goes out, what comes back goes to stdout.
//! - `accept METHOD`: provide METHOD for streams from host clients; the
//!   first one opened is piped the same way (prints `ready` once
//!   registered).
//! - `relay SOCKET`: the session's endpoint, relayed to the host over
//!   stdin and stdout (`vhub_relay.rs`; run by the host, not by users).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const SOCKET: &str = "/run/blink/vhub.sock";
const MAGIC: &[u8; 4] = b"BLIN";
const VERSION: u8 = 1;
const MAX_PAYLOAD: usize = 1 << 20;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REQUEST: u8 = 3;
const RESPONSE: u8 = 4;
const ERROR: u8 = 5;
const STREAM_OPEN: u8 = 6;
const STREAM_DATA: u8 = 7;
const STREAM_CREDIT: u8 = 8;
const STREAM_CLOSE: u8 = 9;
const PING: u8 = 10;
const PONG: u8 = 11;

struct Frame {
    kind: u8,
    channel: u32,
    payload: Vec<u8>,
}

fn encode(kind: u8, channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, kind, 0, 0]);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 16];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    if &head[..4] != MAGIC || head[4] != VERSION {
        return Err(bad("not a BLIN frame".into()));
    }
    let len = u32::from_be_bytes([head[12], head[13], head[14], head[15]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(bad(format!("payload of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame {
        kind: head[5],
        channel: u32::from_be_bytes([head[8], head[9], head[10], head[11]]),
        payload,
    }))
}

/// A JSON string literal of `s`.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The raw text of `key`'s value in a JSON object (top level only).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let b = json.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) == Some(&b'}') {
            return None;
        }
        let key_end = value_end(b, i)?;
        let name = &json[i..key_end];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = value_end(b, i)?;
        if name.len() >= 2 && &name[1..name.len() - 1] == key {
            return Some(&json[i..end]);
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Where the JSON value starting at `i` ends.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = value_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The text of a JSON string value (escapes other than `\"`, `\\`, `\n`
/// kept as written).
fn unquote(raw: &str) -> String {
    let inner = raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(raw);
    inner.replace("\\n", "\n").replace("\\\"", "\"").replace("\\\\", "\\")
}

struct Conn {
    reader: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    window: u64,
}

impl Conn {
    fn open() -> Result<Conn, String> {
        let path = std::env::var("BLINK_VHUB_SOCKET").unwrap_or_else(|_| SOCKET.into());
        // The hub may not have taken the endpoint yet: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("connecting to {path}: {e}")),
            }
        };
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut conn = Conn {
            reader: stream,
            writer: Arc::new(Mutex::new(writer)),
            window: 0,
        };
        conn.send(HELLO, 0, br#"{"versions":[1],"client":"blink-guest"}"#)?;
        // Nobody may serve this endpoint (a sandbox of no session): say so
        // rather than wait forever.
        let _ = conn.reader.set_read_timeout(Some(Duration::from_secs(10)));
        let welcome = conn
            .recv()
            .map_err(|e| format!("no welcome from the hub (is this a session's sandbox?): {e}"))?
            .ok_or("the hub closed the connection")?;
        let _ = conn.reader.set_read_timeout(None);
        let text = String::from_utf8_lossy(&welcome.payload).into_owned();
        match welcome.kind {
            WELCOME => {}
            ERROR => return Err(error_text(&text)),
            k => return Err(format!("unexpected frame {k} before welcome")),
        }
        conn.window = field(&text, "initial_window")
            .and_then(|w| w.parse().ok())
            .unwrap_or(256 * 1024);
        Ok(conn)
    }

    fn send(&self, kind: u8, channel: u32, payload: &[u8]) -> Result<(), String> {
        let bytes = encode(kind, channel, payload);
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&bytes).map_err(|e| format!("writing to the hub: {e}"))
    }

    fn recv(&mut self) -> Result<Option<Frame>, String> {
        loop {
            match read_frame(&mut self.reader).map_err(|e| format!("reading from the hub: {e}"))? {
                Some(f) if f.kind == PING => self.send(PONG, f.channel, &f.payload)?,
                other => return Ok(other),
            }
        }
    }

    /// A request and its answer: the result's raw JSON, or the error's text.
    fn call(&mut self, id: u32, method: &str, params: &str) -> Result<String, String> {
        let body = format!(r#"{{"method":{},"params":{params}}}"#, json_string(method));
        self.send(REQUEST, id, body.as_bytes())?;
        loop {
            let f = self.recv()?.ok_or("the hub closed the connection")?;
            let text = String::from_utf8_lossy(&f.payload).into_owned();
            match f.kind {
                RESPONSE if f.channel == id => {
                    return Ok(field(&text, "result").unwrap_or("null").to_owned());
                }
                ERROR if f.channel == id || f.channel == 0 => return Err(error_text(&text)),
                _ => {}
            }
        }
    }
}

fn error_text(text: &str) -> String {
    match (field(text, "code"), field(text, "message")) {
        (Some(c), Some(m)) => format!("{}: {}", unquote(c), unquote(m)),
        _ => text.to_owned(),
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let result = match args.first().map(String::as_str) {
        Some("emit") if args.len() >= 2 => {
            let (rest, repeat) = repeat_flag(&args[2..]);
            let data = rest.first().map(String::as_str).unwrap_or("null");
            let params = format!(r#"{{"topic":{},"data":{data}}}"#, json_string(&args[1]));
            calls("event.emit", &params, repeat)
        }
        Some("call") if args.len() >= 2 => {
            let (rest, repeat) = repeat_flag(&args[2..]);
            let params = rest.first().map(String::as_str).unwrap_or("null");
            calls(&args[1], params, repeat)
        }
        Some("serve") if args.len() >= 2 => serve(&args[1], &args[2..]),
        Some("accept") if args.len() >= 2 => accept(&args[1]),
        Some("relay") => return super::vhub_relay::main(&args[1..]),
        Some("stream") if args.len() >= 2 => {
            stream(&args[1], args.get(2).map(String::as_str).unwrap_or("null"))
        }
        _ => Err("usage: blink-guest vhub emit TOPIC [DATA] [--repeat N] | call METHOD [PARAMS] [--repeat N] | serve METHOD [--count N] [-- PROG ARGS...] | stream METHOD [PARAMS] | accept METHOD | relay SOCKET".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blink-guest vhub: {e}");
            ExitCode::from(1)
        }
    }
}

fn repeat_flag(args: &[String]) -> (Vec<String>, Option<usize>) {
    let mut rest = Vec::new();
    let mut repeat = None;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--repeat" && i + 1 < args.len() {
            repeat = args[i + 1].parse().ok();
            i += 2;
        } else {
            rest.push(args[i].clone());
            i += 1;
        }
    }
    (rest, repeat)
}

/// One call printing its result, or N printing their latencies.
fn calls(method: &str, params: &str, repeat: Option<usize>) -> Result<(), String> {
    let mut conn = Conn::open()?;
    let Some(n) = repeat else {
        let result = conn.call(1, method, params)?;
        println!("{result}");
        return Ok(());
    };
    let mut micros = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        conn.call((i % 1_000_000) as u32 + 1, method, params)?;
        micros.push(t.elapsed().as_micros() as u64);
    }
    let total = started.elapsed().as_secs_f64();
    micros.sort_unstable();
    let at = |q: f64| micros.get(((micros.len() as f64 * q) as usize).min(micros.len().saturating_sub(1))).copied().unwrap_or(0);
    println!(
        r#"{{"calls":{n},"seconds":{total:.6},"per_second":{:.1},"p50_us":{},"p99_us":{}}}"#,
        n as f64 / total.max(1e-9),
        at(0.50),
        at(0.99)
    );
    Ok(())
}

fn serve(method: &str, args: &[String]) -> Result<(), String> {
    let mut count: Option<usize> = None;
    let mut prog: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--count" if i + 1 < args.len() => {
                count = args[i + 1].parse().ok();
                i += 2;
            }
            "--" => {
                prog = args[i + 1..].to_vec();
                break;
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let mut conn = Conn::open()?;
    conn.call(1, "rpc.register", &format!(r#"{{"method":{}}}"#, json_string(method)))?;
    // Registered: say so on stdout, so a caller knows when to call.
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut served = 0usize;
    while count.is_none_or(|c| served < c) {
        let Some(f) = conn.recv()? else {
            return Ok(());
        };
        if f.kind != REQUEST {
            continue;
        }
        let text = String::from_utf8_lossy(&f.payload).into_owned();
        let params = field(&text, "params").unwrap_or("null").to_owned();
        let answer = if prog.is_empty() {
            Ok(params)
        } else {
            run(&prog, &params)
        };
        if f.channel != 0 {
            match answer {
                Ok(result) => conn.send(RESPONSE, f.channel, format!(r#"{{"result":{result}}}"#).as_bytes())?,
                Err(e) => conn.send(
                    ERROR,
                    f.channel,
                    format!(r#"{{"code":"failed","message":{}}}"#, json_string(&e)).as_bytes(),
                )?,
            }
        }
        served += 1;
    }
    Ok(())
}

/// PROG with `params` on stdin; its stdout as a JSON string.
fn run(prog: &[String], params: &str) -> Result<String, String> {
    let mut child = std::process::Command::new(&prog[0])
        .args(&prog[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", prog[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(params.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", prog[0], out.status));
    }
    Ok(json_string(&String::from_utf8_lossy(&out.stdout)))
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

unsafe extern "C" {
    fn poll(fds: *mut PollFd, n: u64, timeout_ms: i32) -> i32;
}

/// Whether `sock` has something to read within `ms` milliseconds.
fn readable(sock: &UnixStream, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = PollFd {
        fd: sock.as_raw_fd(),
        events: 1, // POLLIN
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { poll(&mut fd, 1, ms) > 0 }
}

/// Credit this side may still spend.
struct Credit {
    bytes: Mutex<(u64, bool)>,
    more: Condvar,
}

fn stream(method: &str, params: &str) -> Result<(), String> {
    let conn = Conn::open()?;
    let channel = 1u32;
    let open = format!(r#"{{"method":{},"params":{params}}}"#, json_string(method));
    conn.send(STREAM_OPEN, channel, open.as_bytes())?;
    pipe(conn, channel)
}

/// Provide `method` for streams; take the first one opened and pipe it.
fn accept(method: &str) -> Result<(), String> {
    let mut conn = Conn::open()?;
    conn.call(1, "rpc.register", &format!(r#"{{"method":{}}}"#, json_string(method)))?;
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        let f = conn.recv()?.ok_or("the hub closed the connection")?;
        if f.kind == STREAM_OPEN {
            return pipe(conn, f.channel);
        }
    }
}

/// stdin into the stream on `channel`, the stream onto stdout.
fn pipe(mut conn: Conn, channel: u32) -> Result<(), String> {
    let credit = Arc::new(Credit {
        bytes: Mutex::new((conn.window, false)),
        more: Condvar::new(),
    });
    let window = conn.window;
    // stdin -> stream, within credit.
    let writer = conn.writer.clone();
    let sending = credit.clone();
    let pump = std::thread::spawn(move || -> Result<(), String> {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        let send = |kind: u8, payload: &[u8]| {
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(&encode(kind, channel, payload)).map_err(|e| e.to_string())
        };
        loop {
            let n = stdin.read(&mut buf).map_err(|e| format!("reading stdin: {e}"))?;
            if n == 0 {
                return send(STREAM_CLOSE, &[]);
            }
            let mut at = 0;
            while at < n {
                let take = {
                    let mut c = sending.bytes.lock().unwrap_or_else(|e| e.into_inner());
                    while c.0 == 0 && !c.1 {
                        c = sending.more.wait(c).unwrap_or_else(|e| e.into_inner());
                    }
                    if c.1 {
                        return Ok(());
                    }
                    let take = (c.0 as usize).min(n - at);
                    c.0 -= take as u64;
                    take
                };
                send(STREAM_DATA, &buf[at..at + take])?;
                at += take;
            }
        }
    });
    // stream -> stdout, granting credit as it is written.
    let mut stdout = std::io::stdout().lock();
    let mut unacked = 0u64;
    // After the other side's close, this side may still be sending: keep
    // taking its credit until stdin is done.
    let mut remote_closed = false;
    let result = loop {
        if remote_closed {
            if pump.is_finished() {
                break Ok(());
            }
            if !readable(&conn.reader, 100) {
                continue;
            }
        }
        let Some(f) = conn.recv()? else {
            if remote_closed {
                break Ok(());
            }
            break Err("the hub closed the connection".to_owned());
        };
        match (f.kind, f.channel) {
            (STREAM_DATA, c) if c == channel => {
                stdout.write_all(&f.payload).map_err(|e| e.to_string())?;
                unacked += f.payload.len() as u64;
                if unacked >= window / 4 {
                    stdout.flush().map_err(|e| e.to_string())?;
                    conn.send(STREAM_CREDIT, channel, &(unacked as u32).to_be_bytes())?;
                    unacked = 0;
                }
            }
            (STREAM_CREDIT, c) if c == channel && f.payload.len() == 4 => {
                let grant = u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
                let mut cr = credit.bytes.lock().unwrap_or_else(|e| e.into_inner());
                cr.0 += u64::from(grant);
                credit.more.notify_all();
            }
            (STREAM_CLOSE, c) if c == channel => {
                if !f.payload.is_empty() {
                    break Err(error_text(&String::from_utf8_lossy(&f.payload)));
                }
                stdout.flush().map_err(|e| e.to_string())?;
                remote_closed = true;
            }
            (ERROR, 0) => break Err(error_text(&String::from_utf8_lossy(&f.payload))),
            _ => {}
        }
    };
    stdout.flush().map_err(|e| e.to_string())?;
    // Whatever ended the loop, a pump waiting for credit stops waiting.
    {
        let mut c = credit.bytes.lock().unwrap_or_else(|e| e.into_inner());
        c.1 = true;
        credit.more.notify_all();
    }
    if result.is_ok() && pump.is_finished() {
        pump.join().map_err(|_| "the stdin pump failed".to_owned())??;
    }
    result
}
