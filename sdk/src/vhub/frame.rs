//! BLIN frames: the byte layout of docs/VHUB.md and its tokio codec.
//!
//! ```text
//! 0      4    5     6     7     8          12         16
//! +------+----+-----+-----+-----+----------+----------+---------------+
//! | BLIN | ver| kind|flags| rsv | channel  | length   | payload ...   |
//! +------+----+-----+-----+-----+----------+----------+---------------+
//! ```
//! Integers are big-endian; `flags` and `rsv` are zero in version 1;
//! `length` is at most [`MAX_PAYLOAD`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"BLIN";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 16;
/// The largest payload a frame may carry (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame is. The numbers are the wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Request = 3,
    Response = 4,
    Error = 5,
    StreamOpen = 6,
    StreamData = 7,
    StreamCredit = 8,
    StreamClose = 9,
    Ping = 10,
    Pong = 11,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Request,
        Kind::Response,
        Kind::Error,
        Kind::StreamOpen,
        Kind::StreamData,
        Kind::StreamCredit,
        Kind::StreamClose,
        Kind::Ping,
        Kind::Pong,
    ];

    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub channel: u32,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(kind: Kind, channel: u32, payload: impl Into<Bytes>) -> Self {
        Frame {
            kind,
            channel,
            payload: payload.into(),
        }
    }

    /// A frame whose payload is `body` as JSON.
    pub fn json<T: serde::Serialize>(kind: Kind, channel: u32, body: &T) -> Self {
        // Serializing our own message types cannot fail (no maps with
        // non-string keys, no failing Serialize impls).
        let payload = serde_json::to_vec(body).unwrap_or_default();
        Frame::new(kind, channel, payload)
    }

    /// The frame's bytes on the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = BytesMut::new();
        FrameCodec.encode(self.clone(), &mut out)?;
        Ok(out.to_vec())
    }

    /// The number of bytes this frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Why bytes are not a frame. Each is fatal for the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:02x?}: not a BLIN frame")]
    BadMagic([u8; 4]),
    #[error("unsupported frame version {0} (this hub speaks {VERSION})")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header bits set (flags {flags:#04x}, reserved {reserved:#04x})")]
    Reserved { flags: u8, reserved: u8 },
    #[error("payload of {0} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The stable error code sent in the error frame before closing.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::BadMagic(_) => "bad_magic",
            FrameError::BadVersion(_) => "bad_version",
            FrameError::UnknownKind(_) => "unknown_kind",
            FrameError::Reserved { .. } => "bad_header",
            FrameError::TooLarge(_) => "too_large",
            FrameError::Io(_) => "io_error",
        }
    }
}

/// Encoder and decoder of [`Frame`]s for `tokio_util::codec::Framed`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // Check what has arrived as early as it can be checked, so garbage
        // is refused without waiting for a full header.
        let have = src.len().min(4);
        if src[..have] != MAGIC[..have] {
            let mut got = [0u8; 4];
            got[..have].copy_from_slice(&src[..have]);
            return Err(FrameError::BadMagic(got));
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let version = src[4];
        if version != VERSION {
            return Err(FrameError::BadVersion(version));
        }
        let kind = Kind::from_u8(src[5]).ok_or(FrameError::UnknownKind(src[5]))?;
        if src[6] != 0 || src[7] != 0 {
            return Err(FrameError::Reserved {
                flags: src[6],
                reserved: src[7],
            });
        }
        let channel = u32::from_be_bytes([src[8], src[9], src[10], src[11]]);
        let len = u32::from_be_bytes([src[12], src[13], src[14], src[15]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        Ok(Some(Frame {
            kind,
            channel,
            payload,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(frame.payload.len()));
        }
        dst.reserve(HEADER_LEN + frame.payload.len());
        dst.put_slice(&MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(frame.kind as u8);
        dst.put_u8(0);
        dst.put_u8(0);
        dst.put_u32(frame.channel);
        dst.put_u32(frame.payload.len() as u32);
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        proptest::sample::select(Kind::ALL.to_vec())
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (
            kind(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..2048),
        )
            .prop_map(|(kind, channel, payload)| Frame::new(kind, channel, payload))
    }

    #[test]
    fn layout_is_the_documented_one() {
        let bytes = Frame::new(Kind::Request, 0x0102_0304, &b"{}"[..])
            .to_bytes()
            .unwrap();
        assert_eq!(
            bytes,
            [
                b'B', b'L', b'I', b'N', 1, 3, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2, b'{', b'}'
            ]
        );
    }

    #[test]
    fn each_bad_header_is_named() {
        let good = Frame::new(Kind::Ping, 1, &b"x"[..]).to_bytes().unwrap();
        let cases: [(usize, u8, &str); 5] = [
            (0, b'X', "bad_magic"),
            (4, 2, "bad_version"),
            (5, 99, "unknown_kind"),
            (6, 1, "bad_header"),
            (7, 1, "bad_header"),
        ];
        for (at, value, code) in cases {
            let mut bytes = good.clone();
            bytes[at] = value;
            let err = FrameCodec
                .decode(&mut BytesMut::from(&bytes[..]))
                .unwrap_err();
            assert_eq!(err.code(), code, "byte {at}");
        }
        let mut oversize = good.clone();
        oversize[12..16].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        let err = FrameCodec
            .decode(&mut BytesMut::from(&oversize[..]))
            .unwrap_err();
        assert_eq!(err.code(), "too_large");
        // An oversize payload is refused before it is read or buffered.
        assert!(
            FrameCodec
                .decode(&mut BytesMut::from(&oversize[..16]))
                .is_err()
        );
    }

    #[test]
    fn encoder_refuses_oversize_payloads() {
        let frame = Frame::new(Kind::StreamData, 1, vec![0u8; MAX_PAYLOAD + 1]);
        assert!(matches!(frame.to_bytes(), Err(FrameError::TooLarge(_))));
        let frame = Frame::new(Kind::StreamData, 1, vec![0u8; MAX_PAYLOAD]);
        assert_eq!(frame.to_bytes().unwrap().len(), HEADER_LEN + MAX_PAYLOAD);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn frames_round_trip_whatever_the_split(
            frames in proptest::collection::vec(frame(), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(f.to_bytes().unwrap());
            }
            // Bytes arrive in two pieces at any point; the decoder waits.
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = FrameCodec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = FrameCodec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            prop_assert_eq!(got, frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = FrameCodec.decode(&mut buf) {}
        }

        #[test]
        fn a_decoded_frame_encodes_to_the_same_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(frame)) = FrameCodec.decode(&mut buf) {
                let used = bytes.len() - buf.len();
                prop_assert_eq!(frame.to_bytes().unwrap(), bytes[..used].to_vec());
            }
        }
    }
}
