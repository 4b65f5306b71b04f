//! Image references.
//!
//! Two spellings of one name meet here. The store names images as given,
//! with a tag added ([`normalize`]: `mini` is `mini:latest`, the default
//! image `blink/default:latest`); registries know them the way Docker
//! spells them ([`RemoteReference`]: `alpine:3.20` is
//! `docker.io/library/alpine:3.20`). A lookup tries both ([`candidates`]),
//! so an imported `alpine:3.20` and a pulled one are found by the same
//! words.

use crate::error::{Error, Result};

use super::DEFAULT_IMAGE;
use super::oci;

/// Longest reference accepted.
pub const MAX_REFERENCE_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// The registry Docker assumes for names without a host.
pub const DOCKER_HUB: &str = "docker.io";

fn invalid(reference: &str, reason: &str) -> Error {
    Error::InvalidImage {
        what: format!("reference {reference:?}"),
        reason: reason.to_owned(),
    }
}

/// Normalize a reference: `default` is [`DEFAULT_IMAGE`], `name` is
/// `name:latest`. The name is lowercase path components (`[a-z0-9]` joined
/// by `.`, `_`, `__`, `-`), optionally after a registry host (`host[:port]/`);
/// the tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. A digest
/// (`name[:tag]@sha256:<64 hex>`) pins the content: no tag is added then.
pub fn normalize(reference: &str) -> Result<String> {
    let reference = reference.trim();
    if reference == "default" {
        return Ok(DEFAULT_IMAGE.to_owned());
    }
    let parts = split(reference)?;
    let tag = match (&parts.tag, &parts.digest) {
        (Some(t), _) => Some(t.as_str()),
        (None, Some(_)) => None,
        (None, None) => Some("latest"),
    };
    let normalized = assemble(parts.name, tag, parts.digest.as_deref());
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

/// A reference's parts, checked.
struct Parts<'a> {
    name: &'a str,
    tag: Option<String>,
    digest: Option<String>,
}

fn split(reference: &str) -> Result<Parts<'_>> {
    if reference.is_empty() {
        return Err(invalid(reference, "it is empty"));
    }
    if reference.len() > MAX_REFERENCE_LEN {
        return Err(invalid(reference, "it is longer than 255 characters"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            oci::digest_hex(&format!("reference {reference:?}"), digest)?;
            (rest, Some(digest.to_owned()))
        }
        None => (reference, None),
    };
    // The tag follows the last ':' if that ':' is after the last '/'.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    validate_name(reference, name)?;
    if let Some(tag) = tag {
        validate_tag(reference, tag)?;
    }
    Ok(Parts {
        name,
        tag: tag.map(str::to_owned),
        digest,
    })
}

fn assemble(name: &str, tag: Option<&str>, digest: Option<&str>) -> String {
    let mut s = name.to_owned();
    if let Some(t) = tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

/// An image as a registry knows it, named the way Docker names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReference {
    /// `host[:port]`; `docker.io` for names without a host.
    pub registry: String,
    /// The path inside the registry (`library/alpine`).
    pub repository: String,
    /// The tag, if one was given (`latest` when neither a tag nor a digest
    /// was).
    pub tag: Option<String>,
    /// `sha256:...`, if the reference pins one.
    pub digest: Option<String>,
}

impl RemoteReference {
    /// Parse as Docker does: the first component is a registry when it has
    /// a `.` or a `:` or is `localhost`; otherwise the registry is
    /// `docker.io`, where a one-component name is under `library/`.
    pub fn parse(reference: &str) -> Result<Self> {
        let reference = reference.trim();
        let parts = split(reference)?;
        let (registry, repository) = match parts.name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), parts.name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (parts.tag, &parts.digest) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        let remote = Self {
            registry,
            repository,
            tag,
            digest: parts.digest,
        };
        if remote.canonical().len() > MAX_REFERENCE_LEN {
            return Err(invalid(
                reference,
                "it is longer than 255 characters with its registry and tag",
            ));
        }
        Ok(remote)
    }

    /// `registry/repository[:tag][@digest]`: the name a pulled image is
    /// stored under.
    pub fn canonical(&self) -> String {
        assemble(
            &format!("{}/{}", self.registry, self.repository),
            self.tag.as_deref(),
            self.digest.as_deref(),
        )
    }

    /// What the registry is asked for: the digest if pinned, else the tag.
    pub fn version(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// The names a reference may be stored under, in the order a lookup tries
/// them: as given (tag added), then as Docker spells it.
pub fn candidates(reference: &str) -> Result<Vec<String>> {
    let local = normalize(reference)?;
    let mut out = vec![local.clone()];
    if local != DEFAULT_IMAGE
        && let Ok(remote) = RemoteReference::parse(reference)
    {
        let canonical = remote.canonical();
        if canonical != local {
            out.push(canonical);
        }
    }
    Ok(out)
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
            "a@md5:0123",
            "a@",
            "a:b:c",
            "-a",
            "a..b",
            "a;rm",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize(&"a".repeat(300)).is_err());
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_pin_without_a_tag() {
        assert_eq!(
            normalize(&format!("alpine@{D}")).unwrap(),
            format!("alpine@{D}")
        );
        assert_eq!(
            normalize(&format!("alpine:3.20@{D}")).unwrap(),
            format!("alpine:3.20@{D}")
        );
    }

    #[test]
    fn remote_names_follow_docker() {
        let cases = [
            ("alpine:3.20", "docker.io/library/alpine:3.20"),
            ("alpine", "docker.io/library/alpine:latest"),
            ("user/app:1", "docker.io/user/app:1"),
            ("docker.io/alpine", "docker.io/library/alpine:latest"),
            (
                "index.docker.io/library/alpine:3",
                "docker.io/library/alpine:3",
            ),
            ("localhost/a", "localhost/a:latest"),
            ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t"),
            ("ghcr.io/o/r", "ghcr.io/o/r:latest"),
        ];
        for (given, want) in cases {
            assert_eq!(
                RemoteReference::parse(given).unwrap().canonical(),
                want,
                "{given}"
            );
        }
        let pinned = RemoteReference::parse(&format!("alpine@{D}")).unwrap();
        assert_eq!(pinned.canonical(), format!("docker.io/library/alpine@{D}"));
        assert_eq!(pinned.version(), D);
        assert_eq!(pinned.tag, None);
        assert_eq!(RemoteReference::parse("a.io/x:v2").unwrap().version(), "v2");
    }

    #[test]
    fn lookups_try_the_given_name_then_dockers() {
        assert_eq!(
            candidates("alpine:3.20").unwrap(),
            vec!["alpine:3.20", "docker.io/library/alpine:3.20"]
        );
        assert_eq!(
            candidates("docker.io/library/alpine:3.20").unwrap(),
            vec!["docker.io/library/alpine:3.20"]
        );
        assert_eq!(candidates("default").unwrap(), vec![DEFAULT_IMAGE]);
        assert_eq!(candidates(DEFAULT_IMAGE).unwrap(), vec![DEFAULT_IMAGE]);
    }
}
