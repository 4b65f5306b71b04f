//! SSH public keys and authorized_keys lines (`manager/keys.rs`):
//! arbitrary lines, mutated valid keys, leading options strings, and key
//! files read from disk.

use base64::Engine as _;
use blink_sdk::manager::keys::{self, AuthorizedKey, KEY_TYPES};
use proptest::prelude::*;

use crate::util::{cases, check_error};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A wire-format key blob: string type, then some bytes.
fn blob(kind: &str, body: &[u8]) -> Vec<u8> {
    let mut b = (kind.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(kind.as_bytes());
    b.extend_from_slice(body);
    b
}

fn valid_key() -> impl Strategy<Value = (String, Vec<u8>, String)> {
    (
        prop::sample::select(KEY_TYPES.to_vec()),
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec("[!-~]{1,10}", 0..3),
    )
        .prop_map(|(kind, body, comment)| (kind.to_string(), blob(kind, &body), comment.join(" ")))
}

fn line_of(kind: &str, blob: &[u8], comment: &str) -> String {
    let mut s = format!("{kind} {}", B64.encode(blob));
    if !comment.is_empty() {
        s.push(' ');
        s.push_str(comment);
    }
    s
}

/// OpenSSH options: comma-separated, values in double quotes may hold
/// spaces, commas and (escaped) quotes.
fn options() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[a-z/ ,.=-]{0,20}",
        prop::sample::select(KEY_TYPES.to_vec()).prop_map(|k| format!("echo {k} hi")),
        Just("a \\\" b".to_string()),
        Just(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAA3W05+gRBgnqvpB+K8edFacp+V8Zn7Q7fwonAWgFl"
                .to_string()
        ),
    ];
    let opt = prop_oneof![
        prop::sample::select(vec![
            "no-pty",
            "restrict",
            "no-port-forwarding",
            "cert-authority"
        ])
        .prop_map(str::to_string),
        (
            prop::sample::select(vec!["command", "from", "environment", "permitopen"]),
            value
        )
            .prop_map(|(k, v)| format!("{k}=\"{v}\"")),
    ];
    prop::collection::vec(opt, 1..4).prop_map(|o| o.join(","))
}

fn check(line: &str) -> Result<Option<AuthorizedKey>, TestCaseError> {
    match AuthorizedKey::parse(line) {
        Ok(Some(k)) => {
            prop_assert!(KEY_TYPES.contains(&k.kind.as_str()));
            prop_assert!(k.fingerprint.starts_with("SHA256:"));
            prop_assert_eq!(k.fingerprint.len(), "SHA256:".len() + 43);
            prop_assert!(!k.comment.contains(['\n', '\r']));
            let bytes = B64.decode(&k.blob).unwrap();
            prop_assert_eq!(&k.fingerprint, &keys::fingerprint(&bytes));
            // What is written back parses to the same key.
            let again = AuthorizedKey::parse(&k.to_line()).unwrap();
            prop_assert_eq!(again.as_ref(), Some(&k));
            Ok(Some(k))
        }
        Ok(None) => {
            let t = line.trim();
            prop_assert!(t.is_empty() || t.starts_with('#'));
            Ok(None)
        }
        Err(e) => {
            check_error(&e)?;
            prop_assert_eq!(e.code(), "invalid_argument");
            Ok(None)
        }
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn arbitrary_lines(s in "\\PC{0,200}") {
        check(&s)?;
    }

    #[test]
    fn type_then_arbitrary_base64(kind in prop::sample::select(KEY_TYPES.to_vec()),
                                  raw in prop::collection::vec(any::<u8>(), 0..120),
                                  tail in "\\PC{0,30}") {
        check(&format!("{kind} {} {tail}", B64.encode(&raw)))?;
    }

    #[test]
    fn valid_keys_parse((kind, blob, comment) in valid_key()) {
        let k = check(&line_of(&kind, &blob, &comment))?;
        let k = k.expect("a valid key line is a key");
        prop_assert_eq!(&k.kind, &kind);
        prop_assert_eq!(&k.comment, &comment);
        prop_assert_eq!(k.fingerprint, keys::fingerprint(&blob));
    }

    /// Options before the key never change which key the line holds,
    /// whatever their quoted values contain (as OpenSSH reads them): the
    /// line is either that key (with options Blink can enforce) or refused
    /// as a whole (options it cannot enforce, or malformed ones).
    #[test]
    fn options_never_change_the_key((kind, blob, comment) in valid_key(), opts in options()) {
        let plain = line_of(&kind, &blob, &comment);
        let with = format!("{opts} {plain}");
        if let Some(k) = check(&with)? {
            prop_assert_eq!(k.fingerprint, keys::fingerprint(&blob), "line {:?}", with);
        }
    }

    #[test]
    fn mutated_valid_keys((kind, blob, comment) in valid_key(),
                          at in any::<prop::sample::Index>(),
                          with in any::<char>()) {
        let mut chars: Vec<char> = line_of(&kind, &blob, &comment).chars().collect();
        let i = at.index(chars.len());
        chars[i] = with;
        check(&chars.into_iter().collect::<String>())?;
    }

}

proptest! {
    #![proptest_config(cases(300))]

    /// Whole files: every line is either a key or skipped.
    #[test]
    fn files(lines in prop::collection::vec(
        prop_oneof![
            valid_key().prop_map(|(k, b, c)| line_of(&k, &b, &c)),
            "\\PC{0,60}",
        ], 0..10)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let keys = keys::read_file(&path).unwrap();
        prop_assert!(keys.len() <= lines.len());
    }
}

#[test]
fn huge_line_is_quick() {
    let start = std::time::Instant::now();
    let line = format!("ssh-ed25519 {}", "A".repeat(1 << 20));
    assert!(AuthorizedKey::parse(&line).is_err());
    let opts = format!("command=\"{}\" ssh-ed25519 AAAA", "x ".repeat(1 << 19));
    let _ = AuthorizedKey::parse(&opts);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}
