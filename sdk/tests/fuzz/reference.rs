//! Image references (`image/reference.rs`) from arbitrary strings and from
//! a grammar of valid references, mutated.

use blink_sdk::image::DEFAULT_IMAGE;
use blink_sdk::image::reference::{MAX_REFERENCE_LEN, RemoteReference, normalize};
use proptest::prelude::*;

use crate::util::{cases, check_error};

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}"
}

fn valid_reference() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop_oneof![
            Just("localhost".to_string()),
            "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){1,3}",
            "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}:[0-9]{1,5}",
        ]),
        prop::collection::vec(component(), 1..4),
        prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}"),
    )
        .prop_map(|(host, comps, tag)| {
            let mut s = String::new();
            if let Some(h) = host {
                s.push_str(&h);
                s.push('/');
            } else if comps.len() > 1 && comps[0].contains('.') {
                // A first component with a '.' names a registry host.
                s.push_str("library/");
            }
            s.push_str(&comps.join("/"));
            if let Some(t) = tag {
                s.push(':');
                s.push_str(&t);
            }
            s
        })
}

/// Checks that hold for every input.
fn check(input: &str) -> Result<(), TestCaseError> {
    match normalize(input) {
        Ok(n) => {
            prop_assert!(n.len() <= MAX_REFERENCE_LEN, "normalized {n:?} is too long");
            // A digest pins it (64 lowercase hex); else it has a tag.
            let (name, digest) = match n.split_once('@') {
                Some((name, d)) => (name, Some(d)),
                None => (n.as_str(), None),
            };
            if let Some(d) = digest {
                let hex = d.strip_prefix("sha256:").unwrap_or_default();
                prop_assert!(
                    hex.len() == 64
                        && hex
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                    "bad digest in {n:?}"
                );
            } else {
                let last = name.rfind('/').map_or(0, |i| i + 1);
                prop_assert!(name[last..].contains(':'), "no tag in {n:?}");
            }
            prop_assert!(!name.contains(['@', ' ', '\n', '\0']));
            prop_assert!(!n.contains([' ', '\n', '\0']));
            // Docker's spelling of it normalizes to itself too.
            if let Ok(remote) = RemoteReference::parse(&n) {
                let canonical = remote.canonical();
                prop_assert_eq!(normalize(&canonical).ok(), Some(canonical.clone()));
            }
            // Normalizing is idempotent: a stored name can be looked up again.
            prop_assert_eq!(normalize(&n).ok(), Some(n.clone()));
            if input.trim() != "default" {
                prop_assert!(!n.starts_with('/') && !n.contains("//") && !n.contains("/../"));
            }
        }
        Err(e) => {
            check_error(&e)?;
            prop_assert_eq!(e.code(), "invalid_image");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn arbitrary_strings(s in "\\PC{0,300}") {
        check(&s)?;
    }

    #[test]
    fn arbitrary_bytes_as_lossy_strings(b in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&b))?;
    }

    #[test]
    fn valid_references_normalize(r in valid_reference()) {
        let n = normalize(&r);
        if r.len() + ":latest".len() <= MAX_REFERENCE_LEN {
            prop_assert!(n.is_ok(), "{r:?} rejected: {n:?}");
        }
        check(&r)?;
    }

    #[test]
    fn long_untagged_names(len in 240usize..270) {
        // Near the length limit, with and without a tag.
        let name = "a".repeat(len);
        check(&name)?;
        check(&format!("{name}:t"))?;
        check(&format!("x.io/{name}"))?;
    }

    #[test]
    fn mutated_valid_references(
        r in valid_reference(),
        at in any::<prop::sample::Index>(),
        insert in prop_oneof![
            Just("/".to_string()), Just(":".to_string()), Just("..".to_string()),
            Just("@sha256:".to_string()), Just("//".to_string()), Just("A".to_string()),
            Just(format!("@sha256:{}", "0a".repeat(32))),
            "\\PC{1,3}",
        ],
    ) {
        let mut chars: Vec<char> = r.chars().collect();
        let i = at.index(chars.len() + 1);
        for (k, c) in insert.chars().enumerate() {
            chars.insert(i + k, c);
        }
        check(&chars.into_iter().collect::<String>())?;
    }
}

#[test]
fn default_alias() {
    assert_eq!(normalize(" default ").unwrap(), DEFAULT_IMAGE);
}
