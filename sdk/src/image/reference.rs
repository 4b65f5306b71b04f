//! Image references: `name[:tag]`, normalized to carry a tag.

use crate::error::{Error, Result};

use super::DEFAULT_IMAGE;

/// Longest reference accepted.
pub const MAX_REFERENCE_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

fn invalid(reference: &str, reason: &str) -> Error {
    Error::InvalidImage {
        what: format!("reference {reference:?}"),
        reason: reason.to_owned(),
    }
}

/// Normalize a reference: `default` is [`DEFAULT_IMAGE`], `name` is
/// `name:latest`. The name is lowercase path components (`[a-z0-9]` joined
/// by `.`, `_`, `__`, `-`), optionally after a registry host (`host[:port]/`);
/// the tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Digests (`@sha256:`) are
/// not references here.
pub fn normalize(reference: &str) -> Result<String> {
    let reference = reference.trim();
    if reference == "default" {
        return Ok(DEFAULT_IMAGE.to_owned());
    }
    if reference.is_empty() {
        return Err(invalid(reference, "it is empty"));
    }
    if reference.len() > MAX_REFERENCE_LEN {
        return Err(invalid(reference, "it is longer than 255 characters"));
    }
    if reference.contains('@') {
        return Err(invalid(
            reference,
            "digest references are not supported; use name:tag",
        ));
    }
    // The tag follows the last ':' if that ':' is after the last '/'.
    let (name, tag) = match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], Some(&reference[i + 1..])),
        _ => (reference, None),
    };
    validate_name(reference, name)?;
    let tag = tag.unwrap_or("latest");
    validate_tag(reference, tag)?;
    let normalized = format!("{name}:{tag}");
    // Checked again once the tag is added, so that a normalized reference
    // always normalizes to itself (stores look names up that way).
    if normalized.len() > MAX_REFERENCE_LEN {
        return Err(invalid(
            reference,
            "it is longer than 255 characters with its tag",
        ));
    }
    Ok(normalized)
}

fn validate_name(reference: &str, name: &str) -> Result<()> {
    let comps: Vec<&str> = name.split('/').collect();
    for (i, comp) in comps.iter().enumerate() {
        if comp.is_empty() {
            return Err(invalid(reference, "the name has an empty path component"));
        }
        // A registry host: first of several components, with '.' or ':' or
        // being "localhost".
        let is_host = i == 0
            && comps.len() > 1
            && (comp.contains('.') || comp.contains(':') || *comp == "localhost");
        if is_host {
            let (host, port) = match comp.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (*comp, None),
            };
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && !host.starts_with(['.', '-'])
                && !host.ends_with(['.', '-']);
            let port_ok = port.is_none_or(|p| {
                !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
            });
            if !host_ok || !port_ok {
                return Err(invalid(reference, "bad registry host"));
            }
            continue;
        }
        if !component_ok(comp) {
            return Err(invalid(
                reference,
                "name components must be lowercase letters and digits, separated by '.', '_', '__' or '-'",
            ));
        }
    }
    Ok(())
}

fn component_ok(comp: &str) -> bool {
    let b = comp.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.first().is_some_and(|&c| alnum(c)) || !b.last().is_some_and(|&c| alnum(c)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &comp[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn validate_tag(reference: &str, tag: &str) -> Result<()> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            reference,
            "the tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("default").unwrap(), DEFAULT_IMAGE);
        assert_eq!(normalize("alpine").unwrap(), "alpine:latest");
        assert_eq!(normalize("blink/default").unwrap(), "blink/default:latest");
        assert_eq!(normalize("alpine:3.19").unwrap(), "alpine:3.19");
        assert_eq!(
            normalize("localhost:5000/a/b_c:v1").unwrap(),
            "localhost:5000/a/b_c:v1"
        );
        assert_eq!(
            normalize("docker.io/library/debian:12-slim").unwrap(),
            "docker.io/library/debian:12-slim"
        );
    }

    #[test]
    fn rejects_bad() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "a:",
            "a:-x",
            "a b",
            "../x",
            "/x",
            "x/",
            "a@sha256:00",
            "a:b:c",
            "-a",
            "a..b",
            "a;rm",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize(&"a".repeat(300)).is_err());
    }
}
