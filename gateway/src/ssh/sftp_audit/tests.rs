//! The observer on synthetic SFTP conversations: what it logs and
//! counts, the same whatever the chunking and interleaving of the two
//! streams, and bounded under hostile input.

use proptest::prelude::*;

use super::*;

/// Packets as the wire has them.
fn packet(kind: u8, fields: &[u8]) -> Vec<u8> {
    let mut p = ((fields.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend_from_slice(fields);
    p
}

/// Fields written in order.
#[derive(Default, Clone)]
struct F(Vec<u8>);

impl F {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn s(mut self, v: &[u8]) -> Self {
        self = self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn id(id: u32) -> Self {
        F::default().u32(id)
    }
}

/// One message of a conversation: who sent it, and its bytes.
#[derive(Clone, Debug)]
struct Msg {
    side: Side,
    bytes: Vec<u8>,
}

fn c(kind: u8, f: F) -> Msg {
    Msg {
        side: Side::Client,
        bytes: packet(kind, &f.0),
    }
}

fn s(kind: u8, f: F) -> Msg {
    Msg {
        side: Side::Server,
        bytes: packet(kind, &f.0),
    }
}

fn status(id: u32, code: u32) -> Msg {
    s(FXP_STATUS, F::id(id).u32(code).s(b"message").s(b""))
}

fn hello() -> Vec<Msg> {
    vec![
        c(FXP_INIT, F::default().u32(3)),
        s(
            FXP_VERSION,
            F::default()
                .u32(3)
                .s(b"posix-rename@openssh.com")
                .s(b"1")
                .s(b"hardlink@openssh.com")
                .s(b"1"),
        ),
    ]
}

/// What OpenSSH's sftp does for `put`, `get`, `ls`, `rename`, `mkdir`,
/// `rmdir`, `rm`, `chmod`, `ln -s`, `ln`, `df`, and a few failures.
fn session() -> Vec<Msg> {
    let mut m = hello();
    let attrs_none = F::default().u32(0);
    // realpath ".", stat: counted only.
    m.push(c(FXP_REALPATH, F::id(1).s(b".")));
    m.push(s(FXP_NAME, F::id(1).u32(1).s(b"/root").s(b"/root").u32(0)));
    m.push(c(FXP_STAT, F::id(2).s(b"/root/up")));
    m.push(status(2, 2));
    // put: open, three pipelined writes, fsetstat, close.
    m.push(c(
        FXP_OPEN,
        F::id(3)
            .s(b"/root/up")
            .u32(FXF_WRITE | FXF_CREAT | FXF_TRUNC)
            .raw(&attrs_none.0),
    ));
    m.push(s(FXP_HANDLE, F::id(3).s(b"h1")));
    for (i, len) in [(4u32, 32768usize), (5, 32768), (6, 1000)] {
        m.push(c(
            FXP_WRITE,
            F::id(i)
                .s(b"h1")
                .u64(u64::from(i - 4) * 32768)
                .s(&vec![0xab; len]),
        ));
    }
    for i in 4..7 {
        m.push(status(i, FX_OK));
    }
    m.push(c(
        FXP_FSETSTAT,
        F::id(7).s(b"h1").u32(ATTR_PERMISSIONS).u32(0o644),
    ));
    m.push(status(7, FX_OK));
    m.push(c(FXP_CLOSE, F::id(8).s(b"h1")));
    m.push(status(8, FX_OK));
    // get: open, reads answered with data then EOF, close.
    m.push(c(
        FXP_OPEN,
        F::id(9).s(b"/root/up").u32(FXF_READ).raw(&attrs_none.0),
    ));
    m.push(s(FXP_HANDLE, F::id(9).s(b"h1")));
    m.push(c(FXP_FSTAT, F::id(10).s(b"h1")));
    m.push(s(105, F::id(10).u32(ATTR_SIZE).u64(66536)));
    for i in 11..14 {
        m.push(c(
            FXP_READ,
            F::id(i).s(b"h1").u64(u64::from(i - 11) * 32768).u32(32768),
        ));
    }
    m.push(s(FXP_DATA, F::id(11).s(&vec![1; 32768])));
    m.push(s(FXP_DATA, F::id(12).s(&vec![2; 32768])));
    m.push(s(FXP_DATA, F::id(13).s(&vec![3; 1000])));
    m.push(c(FXP_READ, F::id(14).s(b"h1").u64(66536).u32(32768)));
    m.push(status(14, FX_EOF));
    m.push(c(FXP_CLOSE, F::id(15).s(b"h1")));
    m.push(status(15, FX_OK));
    // ls: opendir, two batches, EOF, close.
    m.push(c(FXP_OPENDIR, F::id(16).s(b"/root")));
    m.push(s(FXP_HANDLE, F::id(16).s(b"d1")));
    m.push(c(FXP_READDIR, F::id(17).s(b"d1")));
    m.push(s(
        FXP_NAME,
        F::id(17)
            .u32(2)
            .s(b".")
            .s(b"long .")
            .u32(0)
            .s(b"up")
            .s(b"long up")
            .u32(0),
    ));
    m.push(c(FXP_READDIR, F::id(18).s(b"d1")));
    m.push(s(FXP_NAME, F::id(18).u32(1).s(b"..").s(b"long ..").u32(0)));
    m.push(c(FXP_READDIR, F::id(19).s(b"d1")));
    m.push(status(19, FX_EOF));
    m.push(c(FXP_CLOSE, F::id(20).s(b"d1")));
    m.push(status(20, FX_OK));
    // rename (posix-rename, then the plain one), mkdir, rmdir that
    // fails, rm of what is not there, chmod, ln -s, ln, df.
    m.push(c(
        FXP_EXTENDED,
        F::id(21)
            .s(b"posix-rename@openssh.com")
            .s(b"/root/up")
            .s(b"/root/moved"),
    ));
    m.push(status(21, FX_OK));
    m.push(c(FXP_RENAME, F::id(22).s(b"/root/moved").s(b"/root/again")));
    m.push(status(22, FX_OK));
    m.push(c(FXP_MKDIR, F::id(23).s(b"/root/dir").raw(&attrs_none.0)));
    m.push(status(23, FX_OK));
    m.push(c(FXP_RMDIR, F::id(24).s(b"/root/full")));
    m.push(status(24, 4));
    m.push(c(FXP_REMOVE, F::id(25).s(b"/root/none")));
    m.push(status(25, 2));
    m.push(c(
        FXP_SETSTAT,
        F::id(26).s(b"/root/again").u32(ATTR_PERMISSIONS).u32(0o600),
    ));
    m.push(status(26, FX_OK));
    // OpenSSH's order: target, then the link.
    m.push(c(FXP_SYMLINK, F::id(27).s(b"again").s(b"/root/link")));
    m.push(status(27, FX_OK));
    m.push(c(
        FXP_EXTENDED,
        F::id(28)
            .s(b"hardlink@openssh.com")
            .s(b"/root/again")
            .s(b"/root/hard"),
    ));
    m.push(status(28, FX_OK));
    m.push(c(
        FXP_EXTENDED,
        F::id(29).s(b"statvfs@openssh.com").s(b"/root"),
    ));
    m.push(s(201, F::id(29).u64(4096)));
    // A failed open, an unknown type, an extension nobody offers.
    m.push(c(
        FXP_OPEN,
        F::id(30).s(b"/nope/x").u32(FXF_READ).raw(&attrs_none.0),
    ));
    m.push(status(30, 2));
    m.push(c(99, F::id(31).s(b"?")));
    m.push(status(31, 8));
    m.push(c(FXP_EXTENDED, F::id(32).s(b"copy-data").s(b"h")));
    m.push(status(32, 8));
    // A path a log line must not take as it is.
    m.push(c(FXP_REMOVE, F::id(33).s(b"/root/a\nfake line\x1b[31m")));
    m.push(status(33, FX_OK));
    m
}

fn text(s: &str) -> Text {
    Text::new((s.as_bytes(), false))
}

fn path_line(op: Op, path: &str, to: Option<&str>, code: u32) -> Line {
    Line::Path {
        op,
        path: text(path),
        to: to.map(text),
        result: Outcome::Status(code),
    }
}

/// The audit lines of [`session`].
fn session_lines() -> Vec<Line> {
    vec![
        Line::Attrs {
            op: Op::Fsetstat,
            path: text("/root/up"),
            attrs: AttrFlags(ATTR_PERMISSIONS),
            result: Outcome::Status(0),
        },
        Line::File {
            path: text("/root/up"),
            flags: OpenFlags(Some(FXF_WRITE | FXF_CREAT | FXF_TRUNC)),
            bytes_read: 0,
            bytes_written: 66536,
            result: Outcome::Status(0),
        },
        Line::File {
            path: text("/root/up"),
            flags: OpenFlags(Some(FXF_READ)),
            bytes_read: 66536,
            bytes_written: 0,
            result: Outcome::Status(0),
        },
        Line::List {
            path: text("/root"),
            entries: 3,
            result: Outcome::Status(0),
        },
        path_line(Op::PosixRename, "/root/up", Some("/root/moved"), 0),
        path_line(Op::Rename, "/root/moved", Some("/root/again"), 0),
        path_line(Op::Mkdir, "/root/dir", None, 0),
        path_line(Op::Rmdir, "/root/full", None, 4),
        path_line(Op::Remove, "/root/none", None, 2),
        Line::Attrs {
            op: Op::Setstat,
            path: text("/root/again"),
            attrs: AttrFlags(ATTR_PERMISSIONS),
            result: Outcome::Status(0),
        },
        path_line(Op::Symlink, "/root/link", Some("again"), 0),
        path_line(Op::Hardlink, "/root/hard", Some("/root/again"), 0),
        Line::File {
            path: text("/nope/x"),
            flags: OpenFlags(Some(FXF_READ)),
            bytes_read: 0,
            bytes_written: 0,
            result: Outcome::Status(2),
        },
        path_line(Op::Remove, "/root/a\nfake line\x1b[31m", None, 0),
    ]
}

fn feed_whole(order: SymlinkOrder, msgs: &[Msg]) -> Observer<Vec<Event>> {
    let mut o = Observer::new(order, Vec::new());
    for m in msgs {
        match m.side {
            Side::Client => o.client(&m.bytes),
            Side::Server => o.server(&m.bytes),
        }
    }
    o
}

fn lines(events: &[Event]) -> Vec<Line> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Line(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

fn ops(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Request(op) => Some(op.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_gives_one_line_per_operation_and_counts_every_request() {
    let mut o = feed_whole(SymlinkOrder::OpenSsh, &session());
    o.finish();
    let events = o.sink();
    assert_eq!(lines(events), session_lines());
    assert_eq!(
        ops(events),
        [
            "init",
            "realpath",
            "stat",
            "open",
            "write",
            "write",
            "write",
            "fsetstat",
            "close",
            "open",
            "fstat",
            "read",
            "read",
            "read",
            "read",
            "close",
            "opendir",
            "readdir",
            "readdir",
            "readdir",
            "close",
            "posix-rename",
            "rename",
            "mkdir",
            "rmdir",
            "remove",
            "setstat",
            "symlink",
            "hardlink",
            "statvfs",
            "open",
            "unknown",
            "extended",
            "remove",
        ]
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Lost(_) | Event::Stopped { .. })),
        "{events:?}"
    );
    assert_eq!(o.sizes(), (0, 0, 0));
}

#[test]
fn lines_display_paths_escaped_flags_and_results_as_words() {
    let l = session_lines();
    let Line::Path { path, .. } = &l[13] else {
        panic!("{l:?}")
    };
    assert_eq!(path.to_string(), r"/root/a\nfake line\x1b[31m");
    assert_eq!(
        OpenFlags(Some(FXF_WRITE | FXF_CREAT | FXF_TRUNC)).to_string(),
        "write,create,truncate"
    );
    assert_eq!(OpenFlags(None).to_string(), "?");
    assert_eq!(AttrFlags(0xf).to_string(), "size,owner,mode,times");
    assert_eq!(Outcome::Status(0).name(), "ok");
    assert_eq!(Outcome::Status(3).name(), "permission_denied");
    assert_eq!(Outcome::Status(77).name(), "status_77");
    assert_eq!(Outcome::NotClosed.name(), "not_closed");
    // Long paths: 1024 bytes kept, the cut marked.
    let long = Text::new((&[b'a'; 5000], false));
    assert_eq!(long.to_string(), format!("{}…", "a".repeat(1024)));
    let cut = Text::new((b"abc", true));
    assert_eq!(cut.to_string(), "abc…");
    let bad = Text::new((b"\xff\xfe", false));
    assert_eq!(bad.to_string(), "\u{fffd}\u{fffd}");
}

#[test]
fn symlink_paths_follow_the_clients_order() {
    let mut m = hello();
    m.push(c(FXP_SYMLINK, F::id(1).s(b"/root/link").s(b"target")));
    m.push(status(1, FX_OK));
    let o = feed_whole(SymlinkOrder::Draft, &m);
    assert_eq!(
        lines(o.sink()),
        [path_line(Op::Symlink, "/root/link", Some("target"), 0)]
    );
}

#[test]
fn every_byte_boundary_gives_the_same_events() {
    let msgs = session();
    let whole = {
        let mut o = feed_whole(SymlinkOrder::OpenSsh, &msgs);
        o.finish();
        o.sink().clone()
    };
    // Each message cut in two at every point, and byte by byte.
    let longest = msgs.iter().map(|m| m.bytes.len()).max().unwrap_or(0);
    for at in (0..longest).chain([usize::MAX]) {
        let mut o = Observer::new(SymlinkOrder::OpenSsh, Vec::new());
        for m in &msgs {
            let parts: Vec<&[u8]> = if at == usize::MAX {
                m.bytes.chunks(1).collect()
            } else {
                let (a, b) = m.bytes.split_at(at.min(m.bytes.len()));
                vec![a, b]
            };
            for part in parts {
                match m.side {
                    Side::Client => o.client(part),
                    Side::Server => o.server(part),
                }
            }
        }
        o.finish();
        assert_eq!(o.sink(), &whole, "split at {at}");
    }
}

/// One side's bytes of a conversation, fed in pieces.
struct Stream {
    bytes: Vec<u8>,
    /// Each message's end, and how far the other side's stream must have
    /// gone before any of it may go (all the other side's messages
    /// before it in the conversation).
    ends: Vec<(usize, usize)>,
    /// Where pieces end.
    cuts: Vec<usize>,
    fed: usize,
}

impl Stream {
    /// How far this side may go, the other being at `other`.
    fn limit(&self, other: usize) -> usize {
        self.ends
            .iter()
            .take_while(|(_, need)| *need <= other)
            .last()
            .map_or(0, |(end, _)| *end)
    }
}

/// The two streams of a conversation fed in random pieces, interleaved at
/// random, as causality allows: nothing of a message before the other
/// side has sent all it sent before it (a reply before its request, a
/// handle used before it was given).
fn feed_chunked(msgs: &[Msg], cuts_c: &[usize], cuts_s: &[usize], turns: &[bool]) -> Vec<Event> {
    let mut sides = [Side::Client, Side::Server].map(|_| Stream {
        bytes: Vec::new(),
        ends: Vec::new(),
        cuts: Vec::new(),
        fed: 0,
    });
    for m in msgs {
        let (me, other) = match m.side {
            Side::Client => (0, 1),
            Side::Server => (1, 0),
        };
        let other_len = sides[other].bytes.len();
        sides[me].bytes.extend_from_slice(&m.bytes);
        let end = sides[me].bytes.len();
        sides[me].ends.push((end, other_len));
    }
    for (side, cuts) in sides.iter_mut().zip([cuts_c, cuts_s]) {
        let len = side.bytes.len();
        side.cuts = cuts.iter().map(|c| c % (len + 1)).collect();
        side.cuts.push(len);
        side.cuts.sort_unstable();
        side.cuts.dedup();
    }
    let mut turns = turns
        .iter()
        .copied()
        .chain([true, false].into_iter().cycle());
    let mut o = Observer::new(SymlinkOrder::OpenSsh, Vec::new());
    while sides.iter().any(|s| s.fed < s.bytes.len()) {
        let first = usize::from(turns.next().unwrap_or(true));
        for me in [first, 1 - first] {
            let other = sides[1 - me].fed;
            let side = &sides[me];
            let next_cut = side
                .cuts
                .iter()
                .copied()
                .find(|&c| c > side.fed)
                .unwrap_or(side.bytes.len());
            let to = next_cut.min(side.limit(other));
            if to > side.fed {
                let piece = &side.bytes[side.fed..to];
                if me == 0 {
                    o.client(piece);
                } else {
                    o.server(piece);
                }
                sides[me].fed = to;
                break;
            }
        }
    }
    o.finish();
    o.sink().clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_chunking_and_interleaving_gives_the_same_events(
        cuts_c in proptest::collection::vec(any::<usize>(), 0..200),
        cuts_s in proptest::collection::vec(any::<usize>(), 0..200),
        turns in proptest::collection::vec(any::<bool>(), 0..400),
    ) {
        let msgs = session();
        let mut whole = feed_whole(SymlinkOrder::OpenSsh, &msgs);
        whole.finish();
        let got = feed_chunked(&msgs, &cuts_c, &cuts_s, &turns);
        prop_assert_eq!(&got, whole.sink());
    }

    /// Any bytes on either side: no panic, tables within their bounds.
    #[test]
    fn any_bytes_keep_the_tables_bounded(
        prefix in any::<bool>(),
        parts in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..60),
    ) {
        let mut o = Observer::new(SymlinkOrder::OpenSsh, Vec::new());
        if prefix {
            for m in hello() {
                match m.side {
                    Side::Client => o.client(&m.bytes),
                    Side::Server => o.server(&m.bytes),
                }
            }
        }
        for (client, bytes) in &parts {
            if *client { o.client(bytes) } else { o.server(bytes) }
            let (pending, path_bytes, handles) = o.sizes();
            prop_assert!(pending <= MAX_PENDING);
            prop_assert!(path_bytes <= MAX_PENDING_PATH_BYTES);
            prop_assert!(handles <= MAX_HANDLES);
        }
        o.finish();
    }
}

/// Counts events without keeping them.
#[derive(Default)]
struct Count {
    requests: u64,
    lines: u64,
    lost_requests: u64,
    lost_handles: u64,
    untracked: u64,
    stopped: Vec<(Side, String)>,
}

impl Sink for Count {
    fn event(&mut self, event: Event) {
        match event {
            Event::Request(_) => self.requests += 1,
            Event::Line(line) => {
                self.lines += 1;
                let result = match line {
                    Line::File { result, .. }
                    | Line::List { result, .. }
                    | Line::Attrs { result, .. }
                    | Line::Path { result, .. } => result,
                };
                if result == Outcome::Untracked {
                    self.untracked += 1;
                }
            }
            Event::Lost(Lost::Request) => self.lost_requests += 1,
            Event::Lost(Lost::Handle) => self.lost_handles += 1,
            Event::Stopped { side, reason } => self.stopped.push((side, reason)),
        }
    }
}

fn counting() -> Observer<Count> {
    let mut o = Observer::new(SymlinkOrder::OpenSsh, Count::default());
    for m in hello() {
        match m.side {
            Side::Client => o.client(&m.bytes),
            Side::Server => o.server(&m.bytes),
        }
    }
    o
}

#[test]
fn a_million_outstanding_ids_keep_the_oldest_dropped_and_counted() {
    let mut o = counting();
    let total = 1_000_000u32;
    let mut batch = Vec::with_capacity(64 * 1024);
    for id in 0..total {
        batch.extend(packet(FXP_REMOVE, &F::id(id).s(b"/root/f").0));
        if batch.len() >= 60 * 1024 {
            o.client(&batch);
            batch.clear();
            let (pending, _, _) = o.sizes();
            assert!(pending <= MAX_PENDING);
        }
    }
    o.client(&batch);
    let (pending, _, _) = o.sizes();
    assert_eq!(pending, MAX_PENDING);
    let dropped = u64::from(total) - MAX_PENDING as u64;
    assert_eq!(o.sink().lost_requests, dropped);
    // Each dropped request still has its line, marked untracked.
    assert_eq!(o.sink().untracked, dropped);
    // The newest are still paired.
    o.server(&status(total - 1, FX_OK).bytes);
    o.finish();
    assert_eq!(o.sink().requests, u64::from(total) + 1);
    assert_eq!(o.sink().lines, u64::from(total));
    assert_eq!(o.sizes(), (0, 0, 0));
}

#[test]
fn long_paths_awaiting_replies_stay_within_their_byte_budget() {
    let mut o = counting();
    let long = vec![b'p'; 4000];
    for id in 0..2000 {
        o.client(&packet(FXP_RENAME, &F::id(id).s(&long).s(&long).0));
        let (_, bytes, _) = o.sizes();
        assert!(bytes <= MAX_PENDING_PATH_BYTES, "{bytes}");
    }
    assert!(o.sink().lost_requests > 0);
}

#[test]
fn handles_past_the_table_are_logged_early_and_counted() {
    let mut o = counting();
    for id in 0..1000u32 {
        o.client(&packet(
            FXP_OPEN,
            &F::id(id).s(b"/f").u32(FXF_READ).u32(0).0,
        ));
        o.server(&packet(FXP_HANDLE, &F::id(id).s(&id.to_be_bytes()).0));
    }
    assert_eq!(o.sizes().2, MAX_HANDLES);
    assert_eq!(o.sink().lost_handles, 1000 - MAX_HANDLES as u64);
    assert_eq!(o.sink().untracked, 1000 - MAX_HANDLES as u64);
    // A handle longer than the draft allows is not followed.
    o.client(&packet(
        FXP_OPEN,
        &F::id(5000).s(b"/g").u32(FXF_READ).u32(0).0,
    ));
    o.server(&packet(FXP_HANDLE, &F::id(5000).s(&[7; 300]).0));
    assert_eq!(o.sink().lost_handles, 1000 - MAX_HANDLES as u64 + 1);
    o.finish();
    assert_eq!(o.sink().lines, 1001);
    assert_eq!(o.sizes(), (0, 0, 0));
}

#[test]
fn a_huge_length_stops_the_observation_once_and_logs_what_was_open() {
    let mut m = hello();
    m.push(c(FXP_OPEN, F::id(1).s(b"/root/f").u32(FXF_WRITE).u32(0)));
    m.push(s(FXP_HANDLE, F::id(1).s(b"h")));
    let mut o = feed_whole(SymlinkOrder::OpenSsh, &m);
    o.client(&u32::MAX.to_be_bytes());
    o.client(&packet(FXP_REMOVE, &F::id(2).s(b"/x").0));
    o.server(&[0, 0, 0, 0]);
    o.finish();
    let events = o.sink();
    let stopped: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Stopped { .. }))
        .collect();
    assert_eq!(stopped.len(), 1, "{events:?}");
    assert!(
        matches!(stopped[0], Event::Stopped { side: Side::Client, reason } if reason.contains("4294967295")),
        "{stopped:?}"
    );
    assert_eq!(
        lines(events),
        [Line::File {
            path: text("/root/f"),
            flags: OpenFlags(Some(FXF_WRITE)),
            bytes_read: 0,
            bytes_written: 0,
            result: Outcome::Unobserved,
        }]
    );
    assert_eq!(o.sizes(), (0, 0, 0));
}

#[test]
fn streams_that_do_not_start_as_sftp_stop_at_once() {
    let mut o = Observer::new(SymlinkOrder::OpenSsh, Vec::new());
    o.client(b"SSH-2.0-not sftp\r\n");
    assert!(matches!(
        o.sink().as_slice(),
        [Event::Stopped {
            side: Side::Client,
            ..
        }]
    ));
    let mut o = Observer::new(SymlinkOrder::OpenSsh, Vec::new());
    o.client(&hello()[0].bytes);
    o.server(&status(0, 0).bytes);
    assert!(matches!(
        o.sink().last(),
        Some(Event::Stopped {
            side: Side::Server,
            ..
        })
    ));
}

#[test]
fn truncated_packets_and_unanswered_requests_end_as_such() {
    let mut m = hello();
    m.push(c(FXP_OPEN, F::id(1).s(b"/root/w").u32(FXF_WRITE).u32(0)));
    m.push(s(FXP_HANDLE, F::id(1).s(b"h")));
    m.push(c(FXP_WRITE, F::id(2).s(b"h").u64(0).s(&[9; 100])));
    m.push(c(FXP_MKDIR, F::id(3).s(b"/root/d").u32(0)));
    m.push(c(FXP_OPEN, F::id(4).s(b"/root/x").u32(FXF_READ).u32(0)));
    m.push(s(FXP_HANDLE, F::id(4).s(b"x")));
    m.push(c(FXP_CLOSE, F::id(5).s(b"x")));
    let mut o = feed_whole(SymlinkOrder::OpenSsh, &m);
    // A WRITE cut short: its head is whole (counted), its data is not.
    let write = packet(FXP_WRITE, &F::id(6).s(b"h").u64(100).s(&[1; 5000]).0);
    o.client(&write[..300]);
    // A reply cut inside its head.
    o.server(&status(3, FX_OK).bytes[..7]);
    o.finish();
    let got = lines(o.sink());
    assert_eq!(
        got,
        [
            Line::Path {
                op: Op::Mkdir,
                path: text("/root/d"),
                to: None,
                result: Outcome::NoReply
            },
            Line::File {
                path: text("/root/x"),
                flags: OpenFlags(Some(FXF_READ)),
                bytes_read: 0,
                bytes_written: 0,
                result: Outcome::NoReply,
            },
            Line::File {
                path: text("/root/w"),
                flags: OpenFlags(Some(FXF_WRITE)),
                bytes_read: 0,
                bytes_written: 5100,
                result: Outcome::NotClosed,
            },
        ]
    );
}

#[test]
fn cut_heads_keep_what_they_can() {
    // A rename whose first path fills the head: the second is cut.
    let mut m = hello();
    let first = vec![b'a'; 3000];
    let second = vec![b'b'; 3000];
    m.push(c(FXP_RENAME, F::id(1).s(&first).s(&second)));
    m.push(status(1, FX_OK));
    // An open whose path passes the head: its flags are unknown.
    m.push(c(FXP_OPEN, F::id(2).s(&[b'c'; 5000]).u32(FXF_READ).u32(0)));
    m.push(status(2, 2));
    let o = feed_whole(SymlinkOrder::OpenSsh, &m);
    let got = lines(o.sink());
    let Line::Path {
        path,
        to: Some(target),
        ..
    } = &got[0]
    else {
        panic!("{got:?}")
    };
    assert_eq!(path.to_string(), format!("{}…", "a".repeat(1024)));
    assert!(target.to_string().starts_with(&"b".repeat(1000)));
    assert!(target.to_string().ends_with('…'));
    let Line::File { flags, result, .. } = &got[1] else {
        panic!("{got:?}")
    };
    assert_eq!(*flags, OpenFlags(None));
    assert_eq!(*result, Outcome::Status(2));
}

#[test]
fn unknown_types_and_replies_are_skipped() {
    let mut m = hello();
    m.push(c(250, F::id(1).raw(&[0; 10000])));
    m.push(s(250, F::id(1).raw(&[0; 10000])));
    // A reply to nothing, a reply of the wrong kind.
    m.push(status(77, FX_OK));
    m.push(c(FXP_REMOVE, F::id(2).s(b"/r")));
    m.push(s(FXP_HANDLE, F::id(2).s(b"h")));
    let o = feed_whole(SymlinkOrder::OpenSsh, &m);
    assert_eq!(ops(o.sink()), ["init", "unknown", "remove"]);
    assert_eq!(
        lines(o.sink()),
        [Line::Path {
            op: Op::Remove,
            path: text("/r"),
            to: None,
            result: Outcome::BadReply
        }]
    );
}
