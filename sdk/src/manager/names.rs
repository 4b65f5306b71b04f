//! Session names: they are SSH login names, URL path segments and directory
//! names at once, so they are kept to a small, safe alphabet.

use crate::error::{Error, Result};

pub const MAX_NAME_LEN: usize = 63;

/// Accept `[a-z0-9][a-z0-9._-]{0,62}`, not ending in `.lock`-like suffixes
/// that could be confused with our own files.
pub fn validate(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 63 characters");
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return invalid("it must start with a lowercase letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only a-z, 0-9, '.', '_' and '-' are allowed");
    }
    if name.contains("..") {
        return invalid("it must not contain '..'");
    }
    Ok(())
}

/// Snapshot names follow the same rules (they become file names too).
pub fn validate_snapshot(name: &str) -> Result<()> {
    validate(name).map_err(|e| match e {
        Error::InvalidName { name, reason } => {
            Error::InvalidArgument(format!("invalid snapshot name {name:?}: {reason}"))
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_good_names() {
        for n in ["my-agent", "a", "0", "agent.v2", "a_b-c.d", &"x".repeat(63)] {
            assert!(validate(n).is_ok(), "{n} should be valid");
        }
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        for (n, why) in [
            ("", "empty"),
            ("-x", "start"),
            (".hidden", "start"),
            ("Upper", "start"),
            ("a/b", "only"),
            ("a b", "only"),
            ("a..b", ".."),
            ("ünï", "start"),
            (&"x".repeat(64), "longer"),
        ] {
            let err = validate(n).unwrap_err().to_string();
            assert!(err.contains(why), "{n:?}: {err}");
        }
    }
}
