//! The asciicast v2 format (what `asciinema play` and the asciinema web
//! player read): a JSON header line, then one JSON array per event,
//! `[seconds, code, data]`, where `code` is `"o"` (output), `"i"` (input)
//! or `"r"` (resize, data `"COLSxROWS"`).
//!
//! Event data is a JSON string, so it must be text: terminal output is cut
//! into reads anywhere, often in the middle of a multi-byte character.
//! [`Utf8Stream`] carries an incomplete sequence at the end of one read
//! over to the next, and replaces bytes that can never be UTF-8 with
//! U+FFFD, so every line of a cast is valid JSON whatever the program
//! wrote.

use std::collections::BTreeMap;

use serde::Serialize;

/// The first line of a cast.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub version: u8,
    /// Terminal columns at the start.
    pub width: u16,
    /// Terminal rows at the start.
    pub height: u16,
    /// Start, seconds since the Unix epoch.
    pub timestamp: u64,
    /// The command an exec ran (absent for a shell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub title: String,
    /// `TERM` and `SHELL`, as far as known.
    pub env: BTreeMap<String, String>,
}

impl Header {
    /// The header line, newline included.
    pub fn line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{\"version\":2}".into());
        line.push('\n');
        line
    }
}

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Output,
    Input,
    Resize,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::Output => "o",
            Code::Input => "i",
            Code::Resize => "r",
        }
    }
}

/// One event line, newline included. Times are kept to the microsecond,
/// as asciinema writes them.
pub fn event_line(seconds: f64, code: Code, data: &str) -> String {
    let time = (seconds.max(0.0) * 1e6).round() / 1e6;
    let mut line = serde_json::to_string(&(time, code.as_str(), data))
        .unwrap_or_else(|_| format!("[{time},\"{}\",\"\"]", code.as_str()));
    line.push('\n');
    line
}

/// The data of a resize event.
pub fn resize_data(cols: u16, rows: u16) -> String {
    format!("{cols}x{rows}")
}

/// Bytes to text across reads: a character split between two reads comes
/// out whole with the second; bytes that cannot start or continue a
/// character become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    /// The start of a character whose last bytes have not come yet (at
    /// most 3 bytes).
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `bytes` following what came before; a character still
    /// incomplete at the end is kept for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(bytes);
        let mut out = String::with_capacity(input.len());
        let mut rest = &input[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is UTF-8 up to the error, as the error says.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            // A valid start cut off by the end of the input.
                            self.carry = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What is left at the end of the stream: an unfinished character,
    /// as U+FFFD (empty if none).
    pub fn finish(&mut self) -> String {
        if self.carry.is_empty() {
            String::new()
        } else {
            self.carry.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_and_events_are_asciicast_v2() {
        let header = Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 1_700_000_000,
            command: None,
            title: "s1".into(),
            env: BTreeMap::from([("TERM".into(), "xterm".into())]),
        };
        let line = header.line();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["width"], 80);
        assert_eq!(v["env"]["TERM"], "xterm");
        assert!(v.get("command").is_none());

        let line = event_line(1.234_567_89, Code::Output, "a\u{1b}[0m\"\n");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v[0].as_f64(), Some(1.234_568));
        assert_eq!(v[1], "o");
        assert_eq!(v[2], "a\u{1b}[0m\"\n");
        let line = event_line(0.5, Code::Resize, &resize_data(100, 30));
        assert_eq!(line, "[0.5,\"r\",\"100x30\"]\n");
    }

    #[test]
    fn a_character_split_across_reads_comes_out_whole() {
        let text = "é✓😀";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut s = Utf8Stream::default();
            let mut out = s.push(&bytes[..cut]);
            out.push_str(&s.push(&bytes[cut..]));
            out.push_str(&s.finish());
            assert_eq!(out, text, "cut at {cut}");
        }
        // One byte at a time.
        let mut s = Utf8Stream::default();
        let out: String = bytes.iter().map(|b| s.push(&[*b])).collect();
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        // A lone continuation byte, an overlong encoding.
        assert_eq!(s.push(b"\x80\xc0\xafz"), "\u{fffd}\u{fffd}\u{fffd}z");
        // A start cut off and never finished: replaced when the next read
        // shows it cannot continue, or at the end.
        assert_eq!(s.push(b"\xe2\x9c"), "");
        assert_eq!(s.push(b"x"), "\u{fffd}x");
        assert_eq!(s.push(b"\xf0\x9f"), "");
        assert_eq!(s.finish(), "\u{fffd}");
        assert_eq!(s.finish(), "");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the bytes and however they are cut, the events are
        /// valid JSON lines, and valid UTF-8 comes through unchanged.
        #[test]
        fn any_bytes_any_cuts(bytes in prop::collection::vec(any::<u8>(), 0..256),
                              cuts in prop::collection::vec(0usize..256, 0..8)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut s = Utf8Stream::default();
            let mut out = String::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                let text = s.push(&bytes[from..cut]);
                let line = event_line(0.0, Code::Output, &text);
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                prop_assert_eq!(v[2].as_str(), Some(text.as_str()));
                out.push_str(&text);
                from = cut;
            }
            out.push_str(&s.finish());
            prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
}
