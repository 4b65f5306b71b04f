//! Property-based fuzzing of SSH public-key authorization (`ssh/auth.rs`,
//! over `blink_sdk::manager::keys`): hostile admin and session
//! authorized_keys files and hostile login names. A key is granted exactly
//! when a readable file lists it; a login name never makes a file outside
//! the session store count; nothing panics. Revocation lists (KRLs and
//! the text form) damaged anywhere are read or refused, never a panic.
//!
//! Why property-based (proptest) and not coverage-guided: see
//! `rest/fuzz_tests.rs`. The key-line parser itself is fuzzed in
//! `sdk/tests/fuzz/keys.rs`. A long run:
//! `PROPTEST_CASES=20000 cargo test -p blink-server auth::fuzz_tests`.

use base64::Engine as _;
use blink_sdk::manager::KeyStore;
use blink_sdk::manager::keys;
use blink_sdk::manager::store::Store;
use proptest::prelude::*;

use super::{Grant, KeyCheck};
use crate::rest::fuzz_tests::cases;

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn key_line(seed: u8, comment: &str) -> (String, String) {
    let mut blob = 11u32.to_be_bytes().to_vec();
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&[seed; 32]);
    let line = format!(
        "ssh-ed25519 {} {comment}",
        base64::engine::general_purpose::STANDARD.encode(&blob)
    );
    (line, keys::fingerprint(&blob))
}

fn garbage_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,60}",
        Just("ssh-ed25519".to_string()),
        Just("ssh-ed25519 !!!!".to_string()),
        Just("command=\"ssh-ed25519 x".to_string()),
        Just("# ssh-ed25519 AAAA".to_string()),
    ]
}

fn login() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("s1".to_string()),
        Just("../outside".to_string()),
        Just("..".to_string()),
        Just("s1/../../outside".to_string()),
        Just(String::new()),
        "[a-z0-9._-]{1,70}",
        "\\PC{0,40}",
    ]
}

proptest! {
    #![proptest_config(cases(120))]

    #[test]
    fn grants_follow_the_files(
        admin_garbage in prop::collection::vec(garbage_line(), 0..4),
        session_garbage in prop::collection::vec(garbage_line(), 0..4),
        admin_has in any::<bool>(),
        session_has in any::<bool>(),
        admin_file_exists in any::<bool>(),
        user in login(),
        probe in prop_oneof![Just(None), "\\PC{0,50}".prop_map(Some)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (admin_key, admin_fp) = key_line(1, "admin");
        let (session_key, session_fp) = key_line(2, "session");
        let (outside_key, outside_fp) = key_line(3, "outside");

        let mut admin_lines = admin_garbage.clone();
        if admin_has {
            admin_lines.push(admin_key);
        }
        let admin_path = dir.path().join("admin_keys");
        if admin_file_exists {
            std::fs::write(&admin_path, admin_lines.join("\n")).unwrap();
        }
        let mut session_lines = session_garbage.clone();
        if session_has {
            session_lines.push(session_key);
        }
        std::fs::create_dir_all(store.session_dir("s1")).unwrap();
        std::fs::write(store.session_dir("s1").join(keys::AUTHORIZED_KEYS), session_lines.join("\n")).unwrap();
        // A keys file a login name must never reach: beside the session store.
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside").join(keys::AUTHORIZED_KEYS), &outside_key).unwrap();
        std::fs::create_dir_all(dir.path().join("sessions/outside")).unwrap();

        let check = KeyCheck::new(KeyStore::open(dir.path()).unwrap(), Some(admin_path));
        let admin = admin_has && admin_file_exists;

        let g = check.grant(&user, &admin_fp, LOOPBACK).grant;
        prop_assert_eq!(g == Grant::Admin, admin, "admin key for {:?}: {:?}", user, g);

        let g = check.grant(&user, &session_fp, LOOPBACK).grant;
        let expect = if user == "s1" && session_has { Grant::Session } else { Grant::None };
        prop_assert_eq!(g, expect, "session key for {:?}", user);

        prop_assert_eq!(check.grant(&user, &outside_fp, LOOPBACK).grant, Grant::None, "outside key for {:?}", user);

        if let Some(p) = probe {
            let g = check.grant(&user, &p, LOOPBACK).grant;
            prop_assert!(g == Grant::None || p == admin_fp || p == session_fp);
        }
    }
}

/// A KRL with one section of each kind, as `krl.rs` reads them.
fn sample_krl() -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut k = b"SSHKRL\n\0".to_vec();
    k.extend_from_slice(&1u32.to_be_bytes());
    k.extend_from_slice(&[0; 24]);
    string(&mut k, b"");
    string(&mut k, b"");
    let mut certs = Vec::new();
    string(&mut certs, b"");
    string(&mut certs, b"");
    certs.push(0x21);
    string(
        &mut certs,
        &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9],
    );
    certs.push(0x22);
    string(&mut certs, &[0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 1, 5]);
    certs.push(0x23);
    let mut ids = Vec::new();
    string(&mut ids, b"alice");
    string(&mut certs, &ids);
    k.push(1);
    string(&mut k, &certs);
    let mut keys = Vec::new();
    string(&mut keys, b"some-key-blob");
    k.push(2);
    string(&mut k, &keys);
    let mut hashes = Vec::new();
    string(&mut hashes, &[7; 32]);
    k.push(5);
    string(&mut k, &hashes);
    k
}

proptest! {
    #![proptest_config(cases(300))]

    /// Revocation files (KRLs and the text form), damaged anywhere: read
    /// or refused, and what is read answers; never a panic.
    #[test]
    fn revocation_lists_read_whole_or_not_at_all(
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
        tail in prop::collection::vec(any::<u8>(), 0..40),
        text in "\\PC{0,200}",
        serial in any::<u64>(),
    ) {
        let mut k = sample_krl();
        let clean = super::revocation::RevocationList::parse(&k).unwrap();
        prop_assert!(clean.cert_revoked(b"ca", 5, "bob") && clean.cert_revoked(b"ca", 102, "x"));
        prop_assert!(!clean.cert_revoked(b"ca", 101, "x") && clean.cert_revoked(b"ca", 3, "alice"));
        for (at, byte) in &flips {
            let i = at % k.len();
            k[i] ^= byte;
        }
        k.truncate(cut % (k.len() + 1));
        k.extend_from_slice(&tail);
        if let Ok(list) = super::revocation::RevocationList::parse(&k) {
            let _ = list.cert_revoked(b"ca", serial, "bob");
            let _ = list.key_revoked(&k);
        }
        let _ = super::revocation::RevocationList::parse(text.as_bytes());
    }
}
