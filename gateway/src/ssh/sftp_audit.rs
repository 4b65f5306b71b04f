//! The audit of SFTP: what a client does through the `sftp` subsystem,
//! read on the host from the bytes passing between the client and the
//! sandbox's sftp server (SFTP v3, draft-ietf-secsh-filexfer-02, with
//! OpenSSH's extensions), as they pass.
//!
//! The server runs inside the sandbox; the gateway only pipes its bytes.
//! [`tap`] puts an [`Observer`] on the two pipes: it reads each packet's
//! length and keeps at most a head (`frames.rs`), never a payload (WRITE
//! and DATA are counted), pairs requests with replies by id and handles
//! with the paths they were opened by, and says what happened as
//! [`Event`]s: one audit line (`blink::sftp`) per file opened (on its
//! CLOSE: path, flags, bytes read and written, result), per directory
//! listed, and per remove, rename, mkdir, rmdir, setstat, symlink and hard
//! link; and every request as `blink_sftp_operations_total{op}`. Stats,
//! realpath and readlink are counted, not logged.
//!
//! It never holds up or fails the channel: its tables are bounded (the
//! oldest dropped past them, counted), and a stream that is not SFTP as
//! expected ends the observation with one warning while the bytes go on.
//! Requests are what the client sent; results are what the sandbox's
//! server answered (the session's own process: trusted as far as the
//! session is).

mod frames;
mod tap;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;

use blink_sdk::escape::Escaped;
use blink_sdk::sftp_wire::*;
use russh::ChannelId;

use self::frames::{Fields, Framer, Packet};
use super::compat::SymlinkOrder;

pub use self::tap::tap;

/// Requests awaiting a reply, at most; past it the oldest is dropped.
pub const MAX_PENDING: usize = 1024;
/// Path bytes kept by requests awaiting a reply, at most; past it the
/// oldest is dropped.
pub const MAX_PENDING_PATH_BYTES: usize = 256 * 1024;
/// Open handles followed, at most (the sandbox's server allows 256);
/// past it the oldest is logged early and dropped.
pub const MAX_HANDLES: usize = 256;
/// Longest handle followed (the draft's limit).
const MAX_HANDLE_LEN: usize = 256;
/// Bytes of a path kept, and logged.
pub const PATH_LOGGED: usize = 1024;

/// How much of a client packet to keep: requests on a handle need the
/// handle (and WRITE its data's length), not the data; the rest need
/// their paths.
fn client_head(kind: u8) -> usize {
    match kind {
        FXP_WRITE | FXP_READ | FXP_CLOSE | FXP_READDIR | FXP_FSTAT => {
            1 + 4 + 4 + MAX_HANDLE_LEN + 8 + 4
        }
        _ => frames::HEAD_MAX,
    }
}

/// How much of a sandbox packet to keep: the id and a status code, a
/// data length or a name count; HANDLE's handle.
fn server_head(kind: u8) -> usize {
    match kind {
        FXP_HANDLE => 1 + 4 + 4 + MAX_HANDLE_LEN,
        _ => 1 + 4 + 4,
    }
}

/// A request's kind, as counted (`op` of `blink_sftp_operations_total`,
/// and of the audit lines of single operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Init,
    Open,
    Close,
    Read,
    Write,
    Lstat,
    Fstat,
    Setstat,
    Fsetstat,
    Opendir,
    Readdir,
    Remove,
    Mkdir,
    Rmdir,
    Realpath,
    Stat,
    Rename,
    Readlink,
    Symlink,
    PosixRename,
    Hardlink,
    Lsetstat,
    Statvfs,
    Fstatvfs,
    Fsync,
    Limits,
    ExpandPath,
    /// An extension the sandbox's server does not offer.
    Extended,
    /// A type SFTP v3 does not have.
    Unknown,
}

impl Op {
    fn of(kind: u8) -> Self {
        match kind {
            FXP_INIT => Op::Init,
            FXP_OPEN => Op::Open,
            FXP_CLOSE => Op::Close,
            FXP_READ => Op::Read,
            FXP_WRITE => Op::Write,
            FXP_LSTAT => Op::Lstat,
            FXP_FSTAT => Op::Fstat,
            FXP_SETSTAT => Op::Setstat,
            FXP_FSETSTAT => Op::Fsetstat,
            FXP_OPENDIR => Op::Opendir,
            FXP_READDIR => Op::Readdir,
            FXP_REMOVE => Op::Remove,
            FXP_MKDIR => Op::Mkdir,
            FXP_RMDIR => Op::Rmdir,
            FXP_REALPATH => Op::Realpath,
            FXP_STAT => Op::Stat,
            FXP_RENAME => Op::Rename,
            FXP_READLINK => Op::Readlink,
            FXP_SYMLINK => Op::Symlink,
            FXP_EXTENDED => Op::Extended,
            _ => Op::Unknown,
        }
    }

    fn extension(name: &[u8]) -> Self {
        match name {
            b"posix-rename@openssh.com" => Op::PosixRename,
            b"hardlink@openssh.com" => Op::Hardlink,
            b"lsetstat@openssh.com" => Op::Lsetstat,
            b"statvfs@openssh.com" => Op::Statvfs,
            b"fstatvfs@openssh.com" => Op::Fstatvfs,
            b"fsync@openssh.com" => Op::Fsync,
            b"limits@openssh.com" => Op::Limits,
            b"expand-path@openssh.com" => Op::ExpandPath,
            _ => Op::Extended,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Init => "init",
            Op::Open => "open",
            Op::Close => "close",
            Op::Read => "read",
            Op::Write => "write",
            Op::Lstat => "lstat",
            Op::Fstat => "fstat",
            Op::Setstat => "setstat",
            Op::Fsetstat => "fsetstat",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Remove => "remove",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Realpath => "realpath",
            Op::Stat => "stat",
            Op::Rename => "rename",
            Op::Readlink => "readlink",
            Op::Symlink => "symlink",
            Op::PosixRename => "posix-rename",
            Op::Hardlink => "hardlink",
            Op::Lsetstat => "lsetstat",
            Op::Statvfs => "statvfs",
            Op::Fstatvfs => "fstatvfs",
            Op::Fsync => "fsync",
            Op::Limits => "limits",
            Op::ExpandPath => "expand-path",
            Op::Extended => "extended",
            Op::Unknown => "unknown",
        }
    }
}

/// A path as the client sent it: at most [`PATH_LOGGED`] bytes of it,
/// and whether it was longer (or its packet's head was cut in it).
/// Displayed escaped, `…` marking a cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text {
    bytes: Vec<u8>,
    cut: bool,
}

impl Text {
    fn new((bytes, cut): (&[u8], bool)) -> Self {
        let kept = bytes.len().min(PATH_LOGGED);
        Self {
            bytes: bytes[..kept].to_vec(),
            cut: cut || kept < bytes.len(),
        }
    }

    fn weight(&self) -> usize {
        self.bytes.len()
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes);
        Escaped::limit(&text, PATH_LOGGED).fmt(f)?;
        if self.cut && text.len() <= PATH_LOGGED {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server's STATUS code.
    Status(u32),
    /// The server answered with something else than the request expects.
    BadReply,
    /// Dropped from a full table before its end (counted in
    /// `blink_sftp_audit_lost_total`): what is logged is what was seen.
    Untracked,
    /// The channel ended before the reply.
    NoReply,
    /// The channel ended with the handle open.
    NotClosed,
    /// The observation stopped (a malformed stream) before its end.
    Unobserved,
}

impl Outcome {
    /// The status code's name (filexfer-02 §7), or what else happened.
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Outcome::Status(0) => "ok",
            Outcome::Status(1) => "eof",
            Outcome::Status(2) => "no_such_file",
            Outcome::Status(3) => "permission_denied",
            Outcome::Status(4) => "failure",
            Outcome::Status(5) => "bad_message",
            Outcome::Status(6) => "no_connection",
            Outcome::Status(7) => "connection_lost",
            Outcome::Status(8) => "op_unsupported",
            Outcome::Status(code) => return Cow::Owned(format!("status_{code}")),
            Outcome::BadReply => "bad_reply",
            Outcome::Untracked => "untracked",
            Outcome::NoReply => "no_reply",
            Outcome::NotClosed => "not_closed",
            Outcome::Unobserved => "unobserved",
        })
    }
}

/// OPEN's flags, as words (`read,write,create,truncate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags(pub Option<u32>);

impl fmt::Display for OpenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(flags) = self.0 else {
            return f.write_str("?");
        };
        words(
            f,
            flags,
            &[
                (FXF_READ, "read"),
                (FXF_WRITE, "write"),
                (FXF_APPEND, "append"),
                (FXF_CREAT, "create"),
                (FXF_TRUNC, "truncate"),
                (FXF_EXCL, "excl"),
            ],
        )
    }
}

/// SETSTAT's attribute flags, as words (`size,owner,mode,times`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrFlags(pub u32);

impl fmt::Display for AttrFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        words(
            f,
            self.0,
            &[
                (ATTR_SIZE, "size"),
                (ATTR_UIDGID, "owner"),
                (ATTR_PERMISSIONS, "mode"),
                (ATTR_ACMODTIME, "times"),
                (ATTR_EXTENDED, "extended"),
            ],
        )
    }
}

fn words(f: &mut fmt::Formatter<'_>, flags: u32, names: &[(u32, &str)]) -> fmt::Result {
    let mut first = true;
    for (bit, name) in names {
        if flags & bit != 0 {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(name)?;
            first = false;
        }
    }
    Ok(())
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A file from OPEN to CLOSE. `result` is CLOSE's status, else the
    /// first failed READ or WRITE's, else ok.
    File {
        path: Text,
        flags: OpenFlags,
        bytes_read: u64,
        bytes_written: u64,
        result: Outcome,
    },
    /// A directory from OPENDIR to CLOSE, with the entries read.
    List {
        path: Text,
        entries: u64,
        result: Outcome,
    },
    /// SETSTAT, FSETSTAT (the handle's path) or lsetstat: what was set.
    Attrs {
        op: Op,
        path: Text,
        attrs: AttrFlags,
        result: Outcome,
    },
    /// REMOVE, MKDIR, RMDIR, RENAME and posix-rename (`to`: the new
    /// name), SYMLINK and hard links (`path` the link made, `to` what
    /// it points to).
    Path {
        op: Op,
        path: Text,
        to: Option<Text>,
        result: Outcome,
    },
}

/// Which end sent a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// What a bounded table dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// A request awaiting its reply.
    Request,
    /// An open handle.
    Handle,
}

impl Lost {
    pub fn as_str(self) -> &'static str {
        match self {
            Lost::Request => "request",
            Lost::Handle => "handle",
        }
    }
}

/// What the observer tells its [`Sink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request (for the metric).
    Request(Op),
    /// A line of the audit log.
    Line(Line),
    /// A table was full.
    Lost(Lost),
    /// The observation stopped: a stream is not SFTP as expected.
    Stopped { side: Side, reason: String },
}

/// Where events go: the log and metrics ([`Audit`]), or a test's list.
pub trait Sink {
    fn event(&mut self, event: Event);
}

impl Sink for Vec<Event> {
    fn event(&mut self, event: Event) {
        self.push(event);
    }
}

/// What a request is waiting for, from its reply.
#[derive(Debug)]
enum Awaiting {
    Open {
        path: Text,
        flags: OpenFlags,
    },
    Opendir {
        path: Text,
    },
    /// READ, WRITE, READDIR on a followed handle.
    OnHandle(u64),
    Close(u64),
    Attrs {
        op: Op,
        path: Text,
        attrs: AttrFlags,
    },
    Path {
        op: Op,
        path: Text,
        to: Option<Text>,
    },
}

impl Awaiting {
    /// The path bytes it holds.
    fn weight(&self) -> usize {
        match self {
            Awaiting::Open { path, .. }
            | Awaiting::Opendir { path }
            | Awaiting::Attrs { path, .. } => path.weight(),
            Awaiting::Path { path, to, .. } => path.weight() + to.as_ref().map_or(0, Text::weight),
            Awaiting::OnHandle(_) | Awaiting::Close(_) => 0,
        }
    }
}

/// Requests awaiting a reply, by id; the oldest dropped past
/// [`MAX_PENDING`] or [`MAX_PENDING_PATH_BYTES`].
#[derive(Default)]
struct Pending {
    by_id: HashMap<u32, (u64, Awaiting)>,
    /// Arrival order: sequence number → id.
    order: BTreeMap<u64, u32>,
    next: u64,
    path_bytes: usize,
}

impl Pending {
    /// Await `id`'s reply; what was dropped to make room (or an earlier
    /// request of the same id).
    fn insert(&mut self, id: u32, awaiting: Awaiting) -> Vec<Awaiting> {
        let mut dropped = Vec::new();
        if let Some(old) = self.take(id) {
            dropped.push(old);
        }
        self.path_bytes += awaiting.weight();
        self.by_id.insert(id, (self.next, awaiting));
        self.order.insert(self.next, id);
        self.next += 1;
        while self.by_id.len() > MAX_PENDING || self.path_bytes > MAX_PENDING_PATH_BYTES {
            let Some((_, oldest)) = self.order.first_key_value() else {
                break;
            };
            let oldest = *oldest;
            match self.take(oldest) {
                Some(old) => dropped.push(old),
                None => break,
            }
        }
        dropped
    }

    fn take(&mut self, id: u32) -> Option<Awaiting> {
        let (seq, awaiting) = self.by_id.remove(&id)?;
        self.order.remove(&seq);
        self.path_bytes -= awaiting.weight();
        Some(awaiting)
    }

    /// Everything, oldest first.
    fn drain(&mut self) -> Vec<Awaiting> {
        let order = std::mem::take(&mut self.order);
        let mut by_id = std::mem::take(&mut self.by_id);
        self.path_bytes = 0;
        order
            .into_values()
            .filter_map(|id| by_id.remove(&id).map(|(_, a)| a))
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// What a followed handle was opened as.
#[derive(Debug, Clone, Copy)]
enum Kind {
    File(OpenFlags),
    Dir,
}

/// An open handle and what went through it.
#[derive(Debug)]
struct Open {
    handle: Vec<u8>,
    kind: Kind,
    path: Text,
    bytes_read: u64,
    bytes_written: u64,
    entries: u64,
    /// The first failed READ, WRITE or READDIR (EOF is no failure).
    failure: Option<u32>,
}

impl Open {
    fn new(handle: &[u8], kind: Kind, path: Text) -> Self {
        Self {
            handle: handle.to_vec(),
            kind,
            path,
            bytes_read: 0,
            bytes_written: 0,
            entries: 0,
            failure: None,
        }
    }

    fn line(self, result: Outcome) -> Line {
        match self.kind {
            Kind::File(flags) => Line::File {
                path: self.path,
                flags,
                bytes_read: self.bytes_read,
                bytes_written: self.bytes_written,
                result,
            },
            Kind::Dir => Line::List {
                path: self.path,
                entries: self.entries,
                result,
            },
        }
    }
}

/// Open handles: by the handle's bytes while open, by a sequence number
/// (its slot) until CLOSE is answered. At most [`MAX_HANDLES`].
#[derive(Default)]
struct Handles {
    by_handle: HashMap<Vec<u8>, u64>,
    by_slot: BTreeMap<u64, Open>,
    next: u64,
}

impl Handles {
    /// Follow a handle; what was dropped to make room (the oldest, or
    /// one the server had given the same handle).
    fn insert(&mut self, open: Open) -> Option<Open> {
        let slot = self.next;
        self.next += 1;
        let replaced = self
            .by_handle
            .insert(open.handle.clone(), slot)
            .and_then(|old| self.by_slot.remove(&old));
        self.by_slot.insert(slot, open);
        if replaced.is_some() {
            return replaced;
        }
        if self.by_slot.len() <= MAX_HANDLES {
            return None;
        }
        let (_, oldest) = self.by_slot.pop_first()?;
        self.forget_handle(&oldest);
        Some(oldest)
    }

    /// Drop the handle's name if it still names this open (a closed
    /// handle's name may already name a newer one).
    fn forget_handle(&mut self, open: &Open) {
        let still_ours = self
            .by_handle
            .get(&open.handle)
            .is_some_and(|slot| !self.by_slot.contains_key(slot));
        if still_ours {
            self.by_handle.remove(&open.handle);
        }
    }

    fn slot(&self, handle: &[u8]) -> Option<u64> {
        self.by_handle.get(handle).copied()
    }

    /// The path a handle was opened by.
    fn path(&self, handle: &[u8]) -> Option<&Text> {
        let slot = self.by_handle.get(handle)?;
        self.by_slot.get(slot).map(|open| &open.path)
    }

    fn get_mut(&mut self, slot: u64) -> Option<&mut Open> {
        self.by_slot.get_mut(&slot)
    }

    /// CLOSE asked: the handle's name is free; the open stays until
    /// answered.
    fn closing(&mut self, handle: &[u8]) -> Option<u64> {
        self.by_handle.remove(handle)
    }

    fn remove(&mut self, slot: u64) -> Option<Open> {
        let open = self.by_slot.remove(&slot)?;
        self.forget_handle(&open);
        Some(open)
    }

    fn drain(&mut self) -> Vec<Open> {
        self.by_handle.clear();
        std::mem::take(&mut self.by_slot).into_values().collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_slot.len()
    }
}

/// A reply, as far as pairing needs it.
enum Reply<'a> {
    Status(u32),
    Handle(&'a [u8]),
    /// A handle longer than [`MAX_HANDLE_LEN`]: not followed.
    LongHandle,
    Data(u64),
    Name(u32),
    Other,
}

/// The observer of one sftp channel: fed the client's bytes
/// ([`Observer::client`]) and the sandbox's ([`Observer::server`]) in
/// the order they pass, told when the channel ends
/// ([`Observer::finish`]).
pub struct Observer<S: Sink> {
    client: Framer,
    server: Framer,
    state: State<S>,
}

/// What the observer knows, apart from where the packets end.
struct State<S: Sink> {
    order: SymlinkOrder,
    client_started: bool,
    server_started: bool,
    stopped: bool,
    pending: Pending,
    handles: Handles,
    sink: S,
}

impl<S: Sink> Observer<S> {
    /// `order`: how this client orders SYMLINK's paths (`compat.rs`).
    pub fn new(order: SymlinkOrder, sink: S) -> Self {
        Self {
            client: Framer::new(client_head),
            server: Framer::new(server_head),
            state: State {
                order,
                client_started: false,
                server_started: false,
                stopped: false,
                pending: Pending::default(),
                handles: Handles::default(),
                sink,
            },
        }
    }

    /// Bytes from the client, before the sandbox reads them.
    pub fn client(&mut self, bytes: &[u8]) {
        if self.state.stopped {
            return;
        }
        let state = &mut self.state;
        if let Err(e) = self.client.feed(bytes, |p| state.request(&p)) {
            state.stop(Side::Client, e.to_string());
        }
    }

    /// Bytes from the sandbox, as they are read.
    pub fn server(&mut self, bytes: &[u8]) {
        if self.state.stopped {
            return;
        }
        let state = &mut self.state;
        if let Err(e) = self.server.feed(bytes, |p| state.reply(&p)) {
            state.stop(Side::Server, e.to_string());
        }
    }

    /// The channel ended: what was still awaited or open is logged.
    pub fn finish(&mut self) {
        if !self.state.stopped {
            self.state.flush(Outcome::NoReply, Outcome::NotClosed);
            self.state.stopped = true;
        }
    }

    #[cfg(test)]
    pub fn sink(&self) -> &S {
        &self.state.sink
    }

    /// Requests awaited and handles followed (bounded, for tests).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize) {
        (
            self.state.pending.len(),
            self.state.pending.path_bytes,
            self.state.handles.len(),
        )
    }
}

impl<S: Sink> State<S> {
    fn stop(&mut self, side: Side, reason: String) {
        if self.stopped {
            return;
        }
        self.sink.event(Event::Stopped { side, reason });
        self.flush(Outcome::Unobserved, Outcome::Unobserved);
        self.stopped = true;
    }

    /// Log what is awaited (as `awaited`) and open (as `open`), forget all.
    fn flush(&mut self, awaited: Outcome, open: Outcome) {
        for request in self.pending.drain() {
            self.unanswered(request, awaited);
        }
        for handle in self.handles.drain() {
            self.sink.event(Event::Line(handle.line(open)));
        }
    }

    fn line(&mut self, line: Line) {
        self.sink.event(Event::Line(line));
    }

    /// A request whose reply will not be seen: its line, as far as known.
    fn unanswered(&mut self, request: Awaiting, result: Outcome) {
        match request {
            Awaiting::Close(slot) => {
                if let Some(open) = self.handles.remove(slot) {
                    self.line(open.line(result));
                }
            }
            Awaiting::OnHandle(_) => {}
            other => self.answered(other, result),
        }
    }

    /// A request's line, with its result.
    fn answered(&mut self, request: Awaiting, result: Outcome) {
        let line = match request {
            Awaiting::Open { path, flags } => Line::File {
                path,
                flags,
                bytes_read: 0,
                bytes_written: 0,
                result,
            },
            Awaiting::Opendir { path } => Line::List {
                path,
                entries: 0,
                result,
            },
            Awaiting::Attrs { op, path, attrs } => Line::Attrs {
                op,
                path,
                attrs,
                result,
            },
            Awaiting::Path { op, path, to } => Line::Path {
                op,
                path,
                to,
                result,
            },
            Awaiting::OnHandle(_) | Awaiting::Close(_) => return,
        };
        self.line(line);
    }

    fn request(&mut self, p: &Packet<'_>) {
        if self.stopped {
            return;
        }
        if !self.client_started {
            if p.kind != FXP_INIT {
                self.stop(
                    Side::Client,
                    format!("the first packet is of type {}, not INIT", p.kind),
                );
                return;
            }
            self.client_started = true;
        }
        let mut f = Fields::new(p);
        let mut op = Op::of(p.kind);
        if op == Op::Init {
            self.sink.event(Event::Request(op));
            return;
        }
        let Some(id) = f.u32() else {
            self.sink.event(Event::Request(op));
            return;
        };
        if op == Op::Extended
            && let Some(name) = f.string()
        {
            op = Op::extension(name);
        }
        self.sink.event(Event::Request(op));
        if let Some(awaiting) = self.awaiting(op, &mut f) {
            for dropped in self.pending.insert(id, awaiting) {
                self.sink.event(Event::Lost(Lost::Request));
                self.unanswered(dropped, Outcome::Untracked);
            }
        }
    }

    /// What a request's reply will tell, read from its fields; `None`
    /// for requests not logged (or malformed: the server refuses them).
    fn awaiting(&mut self, op: Op, f: &mut Fields<'_>) -> Option<Awaiting> {
        let cut = f.cut();
        let path = |f: &mut Fields<'_>| f.text().map(Text::new);
        Some(match op {
            Op::Open => {
                let path = path(f)?;
                let flags = f.u32();
                if flags.is_none() && !cut {
                    return None;
                }
                Awaiting::Open {
                    path,
                    flags: OpenFlags(flags),
                }
            }
            Op::Opendir => Awaiting::Opendir { path: path(f)? },
            Op::Read | Op::Readdir => Awaiting::OnHandle(self.handles.slot(f.string()?)?),
            Op::Write => {
                let slot = self.handles.slot(f.string()?)?;
                f.u64()?;
                let len = f.skipped_len()?;
                let open = self.handles.get_mut(slot)?;
                open.bytes_written = open.bytes_written.saturating_add(len);
                Awaiting::OnHandle(slot)
            }
            Op::Close => Awaiting::Close(self.handles.closing(f.string()?)?),
            Op::Setstat | Op::Lsetstat => {
                let path = path(f)?;
                let attrs = f.u32();
                if attrs.is_none() && !cut {
                    return None;
                }
                Awaiting::Attrs {
                    op,
                    path,
                    attrs: AttrFlags(attrs.unwrap_or(0)),
                }
            }
            Op::Fsetstat => {
                let handle = f.string()?;
                let attrs = AttrFlags(f.u32()?);
                let path = self.handles.path(handle).cloned().unwrap_or_default();
                Awaiting::Attrs { op, path, attrs }
            }
            Op::Remove | Op::Mkdir | Op::Rmdir => Awaiting::Path {
                op,
                path: path(f)?,
                to: None,
            },
            Op::Rename | Op::PosixRename => {
                let from = path(f)?;
                let to = path(f)?;
                Awaiting::Path {
                    op,
                    path: from,
                    to: Some(to),
                }
            }
            Op::Symlink => {
                let first = path(f)?;
                let second = path(f)?;
                let (target, link) = match self.order {
                    SymlinkOrder::OpenSsh => (first, second),
                    SymlinkOrder::Draft => (second, first),
                };
                Awaiting::Path {
                    op,
                    path: link,
                    to: Some(target),
                }
            }
            Op::Hardlink => {
                let existing = path(f)?;
                let link = path(f)?;
                Awaiting::Path {
                    op,
                    path: link,
                    to: Some(existing),
                }
            }
            _ => return None,
        })
    }

    fn reply(&mut self, p: &Packet<'_>) {
        if self.stopped {
            return;
        }
        if !self.server_started {
            if p.kind != FXP_VERSION {
                self.stop(
                    Side::Server,
                    format!("the first packet is of type {}, not VERSION", p.kind),
                );
                return;
            }
            self.server_started = true;
            return;
        }
        let mut f = Fields::new(p);
        let Some(id) = f.u32() else { return };
        let Some(request) = self.pending.take(id) else {
            return;
        };
        let reply = match p.kind {
            FXP_STATUS => f.u32().map(Reply::Status),
            // A handle longer than the head keeps is longer than allowed.
            FXP_HANDLE => Some(f.string().map_or(Reply::LongHandle, Reply::Handle)),
            FXP_DATA => f.skipped_len().map(Reply::Data),
            FXP_NAME => f.u32().map(Reply::Name),
            _ => None,
        }
        .unwrap_or(Reply::Other);
        self.pair(request, reply);
    }

    /// A request and its reply.
    fn pair(&mut self, request: Awaiting, reply: Reply<'_>) {
        match (request, reply) {
            (Awaiting::Open { path, flags }, Reply::Handle(handle)) => {
                self.follow(handle, Kind::File(flags), path);
            }
            (Awaiting::Opendir { path }, Reply::Handle(handle)) => {
                self.follow(handle, Kind::Dir, path);
            }
            (Awaiting::Open { path, flags }, Reply::LongHandle) => {
                self.unfollowed(Kind::File(flags), path);
            }
            (Awaiting::Opendir { path }, Reply::LongHandle) => {
                self.unfollowed(Kind::Dir, path);
            }
            (Awaiting::OnHandle(slot), reply) => {
                let Some(open) = self.handles.get_mut(slot) else {
                    return;
                };
                match reply {
                    Reply::Data(n) => open.bytes_read = open.bytes_read.saturating_add(n),
                    Reply::Name(n) => open.entries = open.entries.saturating_add(u64::from(n)),
                    Reply::Status(FX_OK | FX_EOF) => {}
                    Reply::Status(code) => {
                        open.failure.get_or_insert(code);
                    }
                    Reply::Handle(_) | Reply::LongHandle | Reply::Other => {}
                }
            }
            (Awaiting::Close(slot), reply) => {
                let Some(open) = self.handles.remove(slot) else {
                    return;
                };
                let result = match reply {
                    Reply::Status(FX_OK) => Outcome::Status(open.failure.unwrap_or(FX_OK)),
                    Reply::Status(code) => Outcome::Status(code),
                    _ => Outcome::BadReply,
                };
                self.line(open.line(result));
            }
            (request, Reply::Status(code)) => self.answered(request, Outcome::Status(code)),
            (request, _) => self.answered(request, Outcome::BadReply),
        }
    }

    /// An OPEN or OPENDIR answered with a handle: follow it.
    fn follow(&mut self, handle: &[u8], kind: Kind, path: Text) {
        let open = Open::new(handle, kind, path);
        if let Some(dropped) = self.handles.insert(open) {
            self.sink.event(Event::Lost(Lost::Handle));
            self.line(dropped.line(Outcome::Untracked));
        }
    }

    /// An OPEN or OPENDIR answered with a handle too long to follow: its
    /// line now.
    fn unfollowed(&mut self, kind: Kind, path: Text) {
        self.sink.event(Event::Lost(Lost::Handle));
        self.line(Open::new(&[], kind, path).line(Outcome::Untracked));
    }
}

/// Who a channel's lines are about.
#[derive(Debug, Clone)]
pub struct Context {
    pub session: String,
    pub peer: SocketAddr,
    pub channel: ChannelId,
}

/// The sink of a real channel: audit lines on `blink::sftp`, metrics.
pub struct Audit(pub Context);

impl Sink for Audit {
    fn event(&mut self, event: Event) {
        use crate::metrics::{SFTP_AUDIT_LOST_TOTAL, SFTP_OPERATIONS_TOTAL};
        let c = &self.0;
        match event {
            Event::Request(op) => {
                metrics::counter!(SFTP_OPERATIONS_TOTAL, "op" => op.as_str()).increment(1);
            }
            Event::Lost(what) => {
                metrics::counter!(SFTP_AUDIT_LOST_TOTAL, "what" => what.as_str()).increment(1);
            }
            Event::Stopped { side, reason } => {
                metrics::counter!(SFTP_AUDIT_LOST_TOTAL, "what" => "stream").increment(1);
                tracing::warn!(
                    target: "blink::sftp",
                    peer = %c.peer,
                    session = %c.session,
                    channel = %c.channel,
                    side = side.as_str(),
                    reason = %Escaped(&reason),
                    "sftp audit stopped: the stream is not SFTP as expected"
                );
            }
            Event::Line(Line::File {
                path,
                flags,
                bytes_read,
                bytes_written,
                result,
            }) => tracing::info!(
                target: "blink::sftp",
                peer = %c.peer,
                session = %c.session,
                channel = %c.channel,
                op = "file",
                path = %path,
                flags = %flags,
                bytes_read,
                bytes_written,
                result = %result.name(),
                "sftp file"
            ),
            Event::Line(Line::List {
                path,
                entries,
                result,
            }) => tracing::info!(
                target: "blink::sftp",
                peer = %c.peer,
                session = %c.session,
                channel = %c.channel,
                op = "list",
                path = %path,
                entries,
                result = %result.name(),
                "sftp list"
            ),
            Event::Line(Line::Attrs {
                op,
                path,
                attrs,
                result,
            }) => tracing::info!(
                target: "blink::sftp",
                peer = %c.peer,
                session = %c.session,
                channel = %c.channel,
                op = op.as_str(),
                path = %path,
                attrs = %attrs,
                result = %result.name(),
                "sftp setstat"
            ),
            Event::Line(Line::Path {
                op,
                path,
                to,
                result,
            }) => tracing::info!(
                target: "blink::sftp",
                peer = %c.peer,
                session = %c.session,
                channel = %c.channel,
                op = op.as_str(),
                path = %path,
                // (not `target`: the line's own field, the log target;
                // absent for one-path operations)
                to = to.as_ref().map(tracing::field::display),
                result = %result.name(),
                "sftp operation"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
