//! The archive's path rules, without a sandbox (the round trip and the
//! hostile archives are tested end to end: tests/tests/archives.rs).

use std::path::Path;

use super::read::{clean, link_stays_inside};

#[test]
fn entry_paths_stay_relative_and_plain() {
    assert_eq!(clean(b"changes/a/./b").unwrap(), Path::new("changes/a/b"));
    for bad in [
        &b"../x"[..],
        b"changes/../../x",
        b"/etc/passwd",
        b"",
        b"a\0b",
    ] {
        assert!(clean(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let long = vec![b'a'; 256];
    assert!(clean(&long).is_err());
}

#[test]
fn symlinks_may_not_climb_above_the_root() {
    let at = |link: &str, target: &str| link_stays_inside(Path::new(link), Path::new(target));
    assert!(at("root/l", "d/f"));
    assert!(at("root/l", "../etc/passwd"));
    assert!(
        at("root/l", "/etc/passwd"),
        "absolute targets resolve in the sandbox"
    );
    assert!(!at("root/l", "../../etc"));
    assert!(!at("l", ".."));
    assert!(at("a/b/c", "../../x"));
    assert!(!at("a/b/c", "../../../x"));
}
