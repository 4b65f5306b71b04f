//! Client text made safe for one log line.
//!
//! Log lines are lines: a newline in a login name or a command a client
//! sent would start a line of the client's choosing, and an escape
//! sequence would reach whoever reads the log on a terminal. Every field
//! that comes from a client is logged through [`Escaped`]:
//!
//! ```
//! use blink_sdk::escape::Escaped;
//! assert_eq!(Escaped("a\nb\x1b[31m").to_string(), r"a\nb\x1b[31m");
//! ```

use std::fmt;

/// Displays a string with control characters escaped: `\n`, `\r`, `\t`,
/// `\\`, `\x1b` for the other C0 controls and DEL, `\u{85}` for C1
/// controls and the Unicode line separators and bidi overrides. Anything
/// else is shown as it is.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl<'a> Escaped<'a> {
    /// At most `max` bytes of `s` (cut at a character boundary, `…`
    /// marks the cut), escaped.
    pub fn limit(s: &'a str, max: usize) -> Limited<'a> {
        if s.len() <= max {
            return Limited(s, false);
        }
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Limited(&s[..end], true)
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        // Copy runs of plain characters at once.
        while let Some(pos) = rest.find(needs_escape) {
            f.write_str(&rest[..pos])?;
            let c = rest[pos..].chars().next().unwrap_or_default();
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32)?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[pos + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// [`Escaped::limit`]: a prefix, escaped, and whether it was cut.
#[derive(Debug, Clone, Copy)]
pub struct Limited<'a>(&'a str, bool);

impl fmt::Display for Limited<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaped(self.0).fmt(f)?;
        if self.1 {
            f.write_str("…")?;
        }
        Ok(())
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control() // C0, DEL, C1
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_keeps_the_rest() {
        let cases = [
            ("plain text é ✓", "plain text é ✓"),
            ("a\nFAKE", r"a\nFAKE"),
            ("\r\t\\", r"\r\t\\"),
            ("\x1b[2J\x00\x7f", r"\x1b[2J\x00\x7f"),
            ("\u{85}\u{9b}", r"\u{85}\u{9b}"),
            ("x\u{2028}y\u{202e}z", r"x\u{2028}y\u{202e}z"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(Escaped(input).to_string(), want, "{input:?}");
        }
    }

    #[test]
    fn limit_cuts_at_a_boundary() {
        assert_eq!(Escaped::limit("abc", 3).to_string(), "abc");
        assert_eq!(Escaped::limit("abcd", 3).to_string(), "abc…");
        assert_eq!(Escaped::limit("aé", 2).to_string(), "a…");
        assert_eq!(Escaped::limit("a\nb", 2).to_string(), r"a\n…");
    }
}
