//! SFTP packets read as their bytes go by (draft-ietf-secsh-filexfer-02
//! §3: a uint32 length, then the packet: a type byte and its fields),
//! without holding them: of each packet only a head is kept (at most what
//! the caller's `head_cap` says for its type), the rest is skipped and
//! counted. Memory is the head's capacity, whatever the stream says.

/// Longest packet taken for SFTP. Both ends speak far less (the sandbox's
/// server ends the session past 257 KiB, OpenSSH's client past 256 KiB);
/// a longer length means the stream is not SFTP as either end reads it.
pub const MAX_PACKET: u32 = 1 << 20;

/// The most any head holds (`head_cap` is clamped to it).
pub const HEAD_MAX: usize = 4096;

/// One packet, as far as its head was kept.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub kind: u8,
    /// The fields after the type byte, as far as the head kept them.
    pub fields: &'a [u8],
    /// How long the fields are in the packet (`fields` is a prefix).
    pub len: u32,
}

/// Why a stream cannot be read as SFTP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a packet of length 0")]
    Empty,
    #[error("a packet of {0} bytes, over the {MAX_PACKET}-byte limit")]
    TooLong(u32),
}

/// One direction's packet boundaries.
pub struct Framer {
    state: State,
    head: Vec<u8>,
    /// How much of a packet of this type to keep.
    head_cap: fn(u8) -> usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading the length.
    Length { bytes: [u8; 4], have: usize },
    /// Keeping the head: `need` bytes (the type first, then as many as
    /// `head_cap` allows) of a packet of `len`.
    Head { len: u32, need: usize },
    /// Skipping the rest of a packet.
    Skip { left: u32 },
}

const START: State = State::Length {
    bytes: [0; 4],
    have: 0,
};

impl Framer {
    pub fn new(head_cap: fn(u8) -> usize) -> Self {
        Self {
            state: START,
            head: Vec::with_capacity(HEAD_MAX),
            head_cap,
        }
    }

    /// Read `bytes`, the stream's next, calling `each` for every packet
    /// whose head is complete (before the rest of it is read). After an
    /// error the framer must not be fed again.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut each: impl FnMut(Packet<'_>),
    ) -> Result<(), Malformed> {
        while !bytes.is_empty() {
            match self.state {
                State::Length {
                    bytes: mut got,
                    have,
                } => {
                    let take = (4 - have).min(bytes.len());
                    got[have..have + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let have = have + take;
                    self.state = if have < 4 {
                        State::Length { bytes: got, have }
                    } else {
                        let len = u32::from_be_bytes(got);
                        if len == 0 {
                            return Err(Malformed::Empty);
                        }
                        if len > MAX_PACKET {
                            return Err(Malformed::TooLong(len));
                        }
                        self.head.clear();
                        State::Head { len, need: 1 }
                    };
                }
                State::Head { len, mut need } => {
                    let take = (need - self.head.len()).min(bytes.len());
                    self.head.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if need == 1
                        && let Some(&kind) = self.head.first()
                    {
                        // The type says how much of the packet to keep.
                        need = (self.head_cap)(kind).clamp(1, HEAD_MAX).min(len as usize);
                    }
                    self.state = State::Head { len, need };
                    if self.head.len() == need
                        && let Some((&kind, fields)) = self.head.split_first()
                    {
                        each(Packet {
                            kind,
                            fields,
                            len: len - 1,
                        });
                        let left = len - need as u32;
                        self.state = if left == 0 {
                            START
                        } else {
                            State::Skip { left }
                        };
                    }
                }
                State::Skip { left } => {
                    let take = (left as usize).min(bytes.len());
                    bytes = &bytes[take..];
                    let left = left - take as u32;
                    self.state = if left == 0 {
                        START
                    } else {
                        State::Skip { left }
                    };
                }
            }
        }
        Ok(())
    }
}

/// The fields of a packet's head, read in order. A string that runs past
/// a cut head is taken as far as the head goes ([`Fields::text`]); one
/// that runs past a whole packet's end is malformed (`None`).
pub struct Fields<'a> {
    buf: &'a [u8],
    /// The head's fields, whole (`buf` is what is left of them).
    kept: usize,
    /// The packet's fields' length.
    len: u32,
}

impl<'a> Fields<'a> {
    pub fn new(packet: &Packet<'a>) -> Self {
        Self {
            buf: packet.fields,
            kept: packet.fields.len(),
            len: packet.len,
        }
    }

    /// Whether the packet goes on past the head.
    pub fn cut(&self) -> bool {
        (self.kept as u64) < u64::from(self.len)
    }

    pub fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.buf.split_first_chunk::<4>()?;
        self.buf = rest;
        Some(u32::from_be_bytes(*head))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.buf.split_first_chunk::<8>()?;
        self.buf = rest;
        Some(u64::from_be_bytes(*head))
    }

    /// A whole string (a handle, an extension's name).
    pub fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > self.buf.len() {
            return None;
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(s)
    }

    /// A string that may be cut by the head's end (a path): its bytes
    /// as far as they go, and whether it was cut. Past a cut head's end,
    /// an empty string, cut.
    pub fn text(&mut self) -> Option<(&'a [u8], bool)> {
        if self.cut() && self.buf.len() < 4 {
            self.buf = &[];
            return Some((&[], true));
        }
        let len = self.u32()? as usize;
        if len <= self.buf.len() {
            let (s, rest) = self.buf.split_at(len);
            self.buf = rest;
            return Some((s, false));
        }
        if !self.cut() {
            return None;
        }
        let s = self.buf;
        self.buf = &[];
        Some((s, true))
    }

    /// The length of a string whose bytes are not kept (WRITE's and
    /// DATA's data): what it declares, if that fits in the packet.
    pub fn skipped_len(&mut self) -> Option<u64> {
        let declared = u64::from(self.u32()?);
        let read = (self.kept - self.buf.len()) as u64;
        let room = u64::from(self.len).checked_sub(read)?;
        (declared <= room).then_some(declared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: &[u8]) -> Vec<u8> {
        let mut p = ((fields.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(fields);
        p
    }

    fn heads(cap: fn(u8) -> usize, stream: &[u8], chunk: usize) -> Vec<(u8, Vec<u8>, u32)> {
        let mut framer = Framer::new(cap);
        let mut seen = Vec::new();
        for part in stream.chunks(chunk) {
            framer
                .feed(part, |p| seen.push((p.kind, p.fields.to_vec(), p.len)))
                .expect("well-formed");
        }
        seen
    }

    #[test]
    fn heads_are_kept_up_to_the_cap_and_the_rest_skipped() {
        let mut stream = packet(6, &[1; 100]);
        stream.extend(packet(3, b"abc"));
        stream.extend(packet(9, &[]));
        for chunk in 1..stream.len() + 1 {
            let seen = heads(|kind| if kind == 6 { 10 } else { 4096 }, &stream, chunk);
            assert_eq!(
                seen,
                vec![
                    (6, vec![1; 9], 100),
                    (3, b"abc".to_vec(), 3),
                    (9, vec![], 0)
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn bad_lengths_are_malformed() {
        let mut framer = Framer::new(|_| 16);
        assert_eq!(framer.feed(&[0, 0, 0, 0], |_| {}), Err(Malformed::Empty));
        let mut framer = Framer::new(|_| 16);
        assert_eq!(
            framer.feed(&u32::MAX.to_be_bytes(), |_| {}),
            Err(Malformed::TooLong(u32::MAX))
        );
        // The longest allowed is skipped with no more memory than a head.
        let mut framer = Framer::new(|_| 16);
        framer
            .feed(&MAX_PACKET.to_be_bytes(), |_| panic!("no head yet"))
            .expect("allowed");
        let mut heads = 0;
        for _ in 0..MAX_PACKET as usize / 65536 {
            framer.feed(&[7; 65536], |_| heads += 1).expect("skipped");
        }
        assert_eq!(heads, 1);
        // And the next packet is read again.
        framer
            .feed(&packet(2, &[0, 0, 0, 3]), |p| {
                assert_eq!((p.kind, p.fields), (2, &[0, 0, 0, 3][..]));
                heads += 1;
            })
            .expect("next");
        assert_eq!(heads, 2);
        assert!(framer.head.capacity() <= HEAD_MAX);
    }

    #[test]
    fn fields_read_cut_texts_but_not_cut_handles() {
        let mut fields = 7u32.to_be_bytes().to_vec();
        fields.extend(100u32.to_be_bytes());
        fields.extend(b"abcdef");
        let cut = Packet {
            kind: 3,
            fields: &fields,
            len: 200,
        };
        let mut f = Fields::new(&cut);
        assert_eq!(f.u32(), Some(7));
        assert_eq!(f.text(), Some((&b"abcdef"[..], true)));
        assert_eq!(f.text(), Some((&b""[..], true)), "past the cut");
        assert_eq!(f.u32(), None);
        let mut f = Fields::new(&cut);
        f.u32();
        assert_eq!(f.string(), None);
        let whole = Packet {
            kind: 3,
            fields: &fields,
            len: fields.len() as u32,
        };
        let mut f = Fields::new(&whole);
        f.u32();
        assert_eq!(f.text(), None, "past a whole packet's end");

        // A skipped string's length counts only if the packet holds it.
        let mut fields = 9u32.to_be_bytes().to_vec();
        fields.extend(1000u32.to_be_bytes());
        for (len, want) in [(1008, Some(1000)), (1007, None)] {
            let p = Packet {
                kind: 103,
                fields: &fields,
                len,
            };
            let mut f = Fields::new(&p);
            f.u32();
            assert_eq!(f.skipped_len(), want, "{len}");
        }
    }
}
