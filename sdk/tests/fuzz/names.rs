//! Session names (`manager/names.rs`): arbitrary strings against the
//! documented grammar, and names as directory components.

use blink_sdk::manager::names::{MAX_NAME_LEN, validate};
use proptest::prelude::*;

use crate::util::{cases, check_error};

/// The documented rule, written independently of the implementation.
fn spec(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
        && !name.contains("..")
}

fn check(name: &str) -> Result<(), TestCaseError> {
    match validate(name) {
        Ok(()) => {
            prop_assert!(spec(name), "{name:?} accepted");
            // A valid name is exactly one normal path component.
            let p = std::path::Path::new("/data/sessions").join(name);
            prop_assert_eq!(p.parent(), Some(std::path::Path::new("/data/sessions")));
            prop_assert_eq!(p.file_name().and_then(|n| n.to_str()), Some(name));
        }
        Err(e) => {
            prop_assert!(!spec(name), "{name:?} rejected: {e}");
            check_error(&e)?;
            prop_assert_eq!(e.code(), "invalid_name");
            // The error quotes at most 80 characters of the name.
            prop_assert!(e.to_string().chars().count() < 80 * 10 + 200);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn arbitrary_strings(s in "\\PC{0,80}") {
        check(&s)?;
    }

    #[test]
    fn near_valid(s in "[a-z0-9._/A-Z -]{0,70}") {
        check(&s)?;
    }

    #[test]
    fn huge(n in 0usize..100_000, c in any::<char>()) {
        check(&c.to_string().repeat(n))?;
    }
}
