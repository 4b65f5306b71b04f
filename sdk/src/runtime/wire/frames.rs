//! The exec wire's two encodings (docs/BOXLITE.md, "exec wire"): binary
//! frames from the host to `blink-guest wire`, ASCII lines back.

use base64::Engine as _;

/// Largest frame payload the guest accepts.
pub const MAX_FRAME: usize = 1 << 20;
/// Longest line the guest writes: a 32 KiB chunk in base64 and its tag.
pub const MAX_LINE: usize = 64 * 1024;

/// A frame from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One `NAME=VALUE` of the program's environment (before `Go`).
    Env(String),
    /// Start the program.
    Go,
    /// Bytes for the program's stdin (at most [`MAX_FRAME`]).
    Stdin(Vec<u8>),
    /// The program's stdin is closed.
    CloseStdin,
    /// Output bytes the host delivered: the guest may send as many more.
    Ack(u32),
    Resize {
        rows: u16,
        cols: u16,
    },
    Signal(i32),
    /// Kill the program's process group.
    Kill,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Self::Env(record) => (b'E', record.as_bytes().to_vec()),
            Self::Go => (b'G', Vec::new()),
            Self::Stdin(data) => (b'I', data.clone()),
            Self::CloseStdin => (b'C', Vec::new()),
            Self::Ack(n) => (b'A', n.to_be_bytes().to_vec()),
            Self::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (b'R', p)
            }
            Self::Signal(s) => (b'S', s.to_be_bytes().to_vec()),
            Self::Kill => (b'K', Vec::new()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

/// A line from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Stdin bytes the program took: the host may send as many more.
    StdinTaken(u64),
    Exited(i32),
    Killed(i32),
    /// The guest refused the wire (a bug on one side, or a wrong guest).
    Failed(String),
}

/// Parse one line (without its newline).
pub fn parse_line(line: &str) -> Result<Event, String> {
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    let number = |what: &str| {
        rest.parse::<i64>()
            .map_err(|_| format!("{what} line with a bad number: {:.80}", line))
    };
    let bytes = || {
        base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|e| format!("output line that is not base64 ({e})"))
    };
    match tag {
        "o" => bytes().map(Event::Stdout),
        "e" => bytes().map(Event::Stderr),
        "a" => number("a")
            .and_then(|n| {
                u64::try_from(n).map_err(|_| "a negative stdin acknowledgement".to_owned())
            })
            .map(Event::StdinTaken),
        "x" => number("x").map(|n| Event::Exited(n as i32)),
        "k" => number("k").map(|n| Event::Killed(n as i32)),
        "f" => Ok(Event::Failed(rest.to_owned())),
        _ => Err(format!("unknown wire line: {:.80}", line)),
    }
}

/// Cuts the guest's text, delivered in chunks that split lines anywhere,
/// into lines; a line longer than [`MAX_LINE`] is an error, so a broken
/// guest cannot grow the buffer.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: String,
}

impl LineSplitter {
    /// Feed a chunk; complete lines go to `out`.
    pub fn push(&mut self, chunk: &str, out: &mut Vec<String>) -> Result<(), String> {
        let mut rest = chunk;
        while let Some(end) = rest.find('\n') {
            self.partial.push_str(&rest[..end]);
            out.push(std::mem::take(&mut self.partial));
            rest = &rest[end + 1..];
        }
        self.partial.push_str(rest);
        if self.partial.len() > MAX_LINE {
            return Err(format!("a wire line over {MAX_LINE} bytes"));
        }
        Ok(())
    }

    /// Whether a line was left unfinished.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_have_the_documented_layout() {
        assert_eq!(Frame::Go.encode(), b"G\0\0\0\0");
        assert_eq!(
            Frame::Ack(0x0102_0304).encode(),
            b"A\0\0\0\x04\x01\x02\x03\x04"
        );
        assert_eq!(
            Frame::Resize { rows: 24, cols: 80 }.encode(),
            b"R\0\0\0\x04\0\x18\0\x50"
        );
        assert_eq!(Frame::Signal(15).encode(), b"S\0\0\0\x04\0\0\0\x0f");
        assert_eq!(Frame::Env("A=b".into()).encode(), b"E\0\0\0\x03A=b");
    }

    #[test]
    fn lines_parse_and_bad_ones_are_named() {
        assert_eq!(parse_line("o aGk="), Ok(Event::Stdout(b"hi".to_vec())));
        assert_eq!(parse_line("x 3"), Ok(Event::Exited(3)));
        assert_eq!(parse_line("k 9"), Ok(Event::Killed(9)));
        assert_eq!(parse_line("a 10"), Ok(Event::StdinTaken(10)));
        assert!(parse_line("o ***").unwrap_err().contains("base64"));
        assert!(parse_line("a -1").unwrap_err().contains("negative"));
        assert!(parse_line("z").unwrap_err().contains("unknown wire line"));
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let chunk = "o".repeat(MAX_LINE / 2);
        s.push(&chunk, &mut out).unwrap();
        assert!(s.push(&chunk, &mut out).is_ok());
        assert!(s.push("AA", &mut out).unwrap_err().contains("over"));
    }

    proptest! {
        /// However the guest's text is cut into chunks, the same lines
        /// come out.
        #[test]
        fn lines_survive_any_chunking(
            lines in proptest::collection::vec("[a-z0-9+/= ]{0,40}", 0..20),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.push(text.len());
            cuts.sort_unstable();
            let mut s = LineSplitter::default();
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts {
                s.push(&text[at..c], &mut out).unwrap();
                at = c;
            }
            prop_assert_eq!(out, lines);
            prop_assert!(!s.has_partial());
        }
    }
}
