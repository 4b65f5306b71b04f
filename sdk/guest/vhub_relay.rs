//! `blink-guest vhub relay SOCKET`: a session's V-Hub endpoint where the
//! host cannot bind one into the sandbox (a BoxLite micro-VM, whose
//! vsock ports BoxLite does not offer). It listens on SOCKET (`0666`, its
//! directory made) and carries each connection to the host over its own
//! stdin and stdout, which the host runs as an ordinary execution: relay
//! frames (docs/VHUB.md, "Relay") with a credit window per connection and
//! direction, so one connection that does not read never stalls another.
//!
//! The host side (`sdk/src/vhub/relay.rs`) connects each relayed
//! connection to the session's endpoint listener, so the hub knows the
//! session from where the relay runs, never from what it says.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

const OPEN: u8 = 1;
const DATA: u8 = 2;
const CREDIT: u8 = 3;
const CLOSE: u8 = 4;
/// Bytes one connection may have in flight each way before credit.
const WINDOW: u64 = 256 * 1024;
/// The largest data frame.
const MAX_DATA: usize = 64 * 1024;
/// Connections at once (the host takes no more); one more is closed.
const MAX_CONNECTIONS: usize = 64;

type Out = Arc<Mutex<std::io::Stdout>>;

fn send(out: &Out, kind: u8, conn: u32, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..5].copy_from_slice(&conn.to_be_bytes());
    head[5..9].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// Credit a connection's reader may still spend; `true` once it is over.
struct Credit {
    state: Mutex<(u64, bool)>,
    more: Condvar,
}

impl Credit {
    fn take(&self, most: usize) -> Option<usize> {
        let mut c = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while c.0 == 0 && !c.1 {
            c = self.more.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        if c.1 {
            return None;
        }
        let n = (c.0 as usize).min(most);
        c.0 -= n as u64;
        Some(n)
    }

    fn give(&self, n: u64, end: bool) {
        let mut c = self.state.lock().unwrap_or_else(|e| e.into_inner());
        c.0 += n;
        c.1 |= end;
        self.more.notify_all();
    }
}

/// A relayed connection as the stdin loop sees it.
struct Relayed {
    /// Data from the host, written by the connection's writer thread;
    /// dropped on the host's close.
    to_socket: Option<mpsc::Sender<Vec<u8>>>,
    credit: Arc<Credit>,
}

pub fn main(args: &[String]) -> ExitCode {
    let Some(path) = args.first() else {
        eprintln!("usage: blink-guest vhub relay SOCKET");
        return ExitCode::from(2);
    };
    match relay(path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blink-guest vhub relay: {e}");
            ExitCode::from(1)
        }
    }
}

fn listen(path: &str) -> Result<UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    // Any user of the sandbox may reach its own session's hub.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("setting the mode of {}: {e}", path.display()))?;
    Ok(listener)
}

fn relay(path: &str) -> Result<(), String> {
    let listener = listen(path)?;
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let conns: Arc<Mutex<HashMap<u32, Relayed>>> = Arc::default();
    {
        let out = out.clone();
        let conns = conns.clone();
        std::thread::spawn(move || accept(listener, out, conns));
    }
    // The host's frames. Its end (the host gone) ends the relay.
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut head = [0u8; 9];
        match stdin.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading the host's frames: {e}")),
        }
        let kind = head[0];
        let conn = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if len > MAX_DATA {
            return Err(format!("a frame of {len} bytes from the host"));
        }
        let mut payload = vec![0u8; len];
        stdin
            .read_exact(&mut payload)
            .map_err(|e| format!("reading the host's frames: {e}"))?;
        let mut table = conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(relayed) = table.get_mut(&conn) else {
            continue;
        };
        match kind {
            DATA => {
                if let Some(tx) = &relayed.to_socket {
                    let _ = tx.send(payload);
                }
            }
            CREDIT if len == 4 => {
                let grant = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                relayed.credit.give(u64::from(grant), false);
            }
            CLOSE => {
                // The host is done sending: what is queued is written,
                // then the socket's write side shut.
                relayed.to_socket = None;
            }
            _ => return Err(format!("frame kind {kind} from the host")),
        }
    }
}

fn accept(listener: UnixListener, out: Out, conns: Arc<Mutex<HashMap<u32, Relayed>>>) {
    let mut next = 0u32;
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            continue;
        };
        if conns.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_CONNECTIONS {
            continue;
        }
        next = next.wrapping_add(1);
        let id = next;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let credit = Arc::new(Credit {
            state: Mutex::new((WINDOW, false)),
            more: Condvar::new(),
        });
        conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Relayed {
                to_socket: Some(tx),
                credit: credit.clone(),
            },
        );
        if send(&out, OPEN, id, &[]).is_err() {
            return;
        }
        let Ok(writing) = stream.try_clone() else {
            continue;
        };
        let done = Arc::new(Mutex::new(0u8));
        {
            let (out, conns, done) = (out.clone(), conns.clone(), done.clone());
            std::thread::spawn(move || {
                write_socket(writing, rx, id, &out);
                finish(&conns, id, &done);
            });
        }
        {
            let (out, conns) = (out.clone(), conns.clone());
            std::thread::spawn(move || {
                read_socket(stream, &credit, id, &out);
                finish(&conns, id, &done);
            });
        }
    }
}

/// Forget a connection once both its threads are done.
fn finish(conns: &Mutex<HashMap<u32, Relayed>>, id: u32, done: &Mutex<u8>) {
    let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
    *d += 1;
    if *d == 2 {
        conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// The client's bytes to the host, within credit; its end is our close.
fn read_socket(mut stream: UnixStream, credit: &Credit, id: u32, out: &Out) {
    let mut buf = vec![0u8; MAX_DATA];
    while let Some(most) = credit.take(MAX_DATA) {
        match stream.read(&mut buf[..most]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Unspent credit goes back.
                credit.give((most - n) as u64, false);
                if send(out, DATA, id, &buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = send(out, CLOSE, id, &[]);
}

/// The host's bytes to the client; each write granted back as credit.
/// The host's close (the channel's end) shuts the socket's write side. A
/// client gone is shut both ways (its reader then sends our close), and
/// what still comes is granted back unwritten, so the host never waits.
fn write_socket(mut stream: UnixStream, rx: mpsc::Receiver<Vec<u8>>, id: u32, out: &Out) {
    let mut gone = false;
    for data in rx {
        if !gone && stream.write_all(&data).is_err() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            gone = true;
        }
        if send(out, CREDIT, id, &(data.len() as u32).to_be_bytes()).is_err() {
            return;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
