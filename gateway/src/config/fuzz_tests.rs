//! Property-based fuzzing of the gateway config file (`config.rs`, with
//! the `[rest]` table of `rest/config.rs`): arbitrary TOML text, and real
//! keys given arbitrary values. Parsing and validation give clean errors,
//! never a panic, and a config that validates can be used: everything
//! `blink-server` builds from it at start and at shutdown (connection and
//! run semaphores, timeouts, the shutdown deadline) works.
//!
//! Why property-based (proptest) and not coverage-guided: see
//! `rest/fuzz_tests.rs` (stable toolchain, inside `cargo test`, and a
//! binary crate that no cargo-fuzz target can link). A long run:
//! `PROPTEST_CASES=20000 cargo test -p blink-server config::fuzz_tests`.

use std::path::Path;

use proptest::prelude::*;

use super::FileConfig;
use crate::rest::fuzz_tests::{cases, check_rest_config_usable};

/// Every key of the file, by table.
const KEYS: &[(&str, &[&str])] = &[
    ("", &["data_dir", "session_idle_timeout_secs"]),
    (
        "ssh",
        &[
            "listen",
            "host_key",
            "admin_authorized_keys",
            "admin_create_sessions",
            "env_allow",
            "post_quantum_only",
        ],
    ),
    (
        "ssh.limits",
        &[
            "max_auth_attempts",
            "handshake_timeout_secs",
            "auth_timeout_secs",
            "login_grace_time_secs",
            "max_startups",
            "per_source_max_startups",
            "per_source_net_block_size",
            "per_source_penalties",
            "penalty_authfail_secs",
            "penalty_noauth_secs",
            "penalty_grace_exceeded_secs",
            "penalty_min_secs",
            "penalty_max_secs",
            "penalty_max_sources",
            "penalty_exempt",
            "max_connections",
            "max_connections_per_session",
            "max_channels_per_connection",
            "idle_timeout_secs",
            "keepalive_interval_secs",
            "keepalive_max",
        ],
    ),
    (
        "rest",
        &[
            "listen",
            "script_dirs",
            "max_body_bytes",
            "max_concurrent_runs",
            "max_queued_runs",
            "max_runs_kept",
            "max_attachments",
            "max_run_timeout_secs",
            "shutdown_grace_secs",
            "token",
        ],
    ),
];

/// TOML values of every type, with the edges of the integer range.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => prop::sample::select(vec![
            "0", "1", "-1", "9223372036854775807", "-9223372036854775808", "2305843009213693951",
            "2305843009213693952", "18446744073709551615", "65535", "65536", "4294967296",
        ])
        .prop_map(str::to_string),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => Just("nan".to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        2 => "\\PC{0,24}".prop_map(|s| format!("{s:?}")),
        2 => prop::sample::select(vec![
            "\"127.0.0.1:0\"", "\"[::1]:65535\"", "\"0.0.0.0:99999\"", "\"localhost:22\"",
            "\"\"", "\"EDITOR\"", "\"A=B\"", "\"/tmp\"", "1979-05-27T07:32:00Z",
            "\"10:30:100\"", "\"0:1:1\"", "\"32:128\"", "\"0:0\"", "\"127.0.0.0/8\"",
            "[\"::1\", \"10.0.0.0/8\"]",
        ])
        .prop_map(str::to_string),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

/// A document: some real keys set to arbitrary values, maybe an unknown key.
fn document() -> impl Strategy<Value = String> {
    let entry = (0..KEYS.len(), any::<prop::sample::Index>(), value());
    (
        prop::collection::vec(entry, 0..10),
        prop::option::weighted(0.1, ("[a-z_]{1,10}", value())),
    )
        .prop_map(|(entries, unknown)| {
            let mut tables: Vec<(usize, Vec<String>)> = Vec::new();
            for (t, k, v) in entries {
                let key = KEYS[t].1[k.index(KEYS[t].1.len())];
                match tables.iter_mut().find(|(i, _)| *i == t) {
                    Some((_, lines))
                        if !lines.iter().any(|l| l.starts_with(&format!("{key} ="))) =>
                    {
                        lines.push(format!("{key} = {v}"))
                    }
                    Some(_) => {}
                    None => tables.push((t, vec![format!("{key} = {v}")])),
                }
            }
            tables.sort();
            let mut text = String::new();
            if let Some((k, v)) = unknown {
                text.push_str(&format!("{k} = {v}\n"));
            }
            for (t, lines) in tables {
                if !KEYS[t].0.is_empty() {
                    text.push_str(&format!("[{}]\n", KEYS[t].0));
                }
                for l in lines {
                    text.push_str(&l);
                    text.push('\n');
                }
            }
            text
        })
}

/// What `blink-server` does with a config that loaded.
fn check_usable(config: &FileConfig) -> Result<(), TestCaseError> {
    let limits = &config.ssh.limits;
    let _ = (limits.handshake_timeout(), limits.login_grace_time());
    // ssh::start: the admission state, and deadlines from now.
    let admission = crate::ssh::admission::Admission::new(limits);
    let now = tokio::time::Instant::now();
    let _ = (
        now + limits.login_grace_time(),
        now + limits.handshake_timeout(),
    );
    // A source penalized to the maximum, then refused or let in.
    let peer = std::net::IpAddr::from([192, 0, 2, 1]);
    if let Ok(startup) = admission.admit(peer) {
        let _ = startup.ended(crate::ssh::admission::Outcome::GraceExceeded);
    }
    let _ = admission.admit(peer);
    let _ = (limits.idle_timeout(), limits.keepalive_interval());
    // ssh::run: one permit per connection.
    let _ = tokio::sync::Semaphore::new(limits.max_connections);
    if let Some(secs) = config.session_idle_timeout_secs {
        let _ = std::time::Duration::from_secs(secs.max(1));
    }
    // Recordings: where they go.
    let _ = config.recording.dir(std::path::Path::new("/var/lib/blink"));
    // rest::start validates its table before it builds anything.
    match config.rest.validate() {
        Ok(()) => check_rest_config_usable(&config.rest),
        Err(e) => {
            prop_assert!(!e.trim().is_empty());
            Ok(())
        }
    }
}

fn check_text(text: &str) -> Result<(), TestCaseError> {
    match toml::from_str::<FileConfig>(text) {
        Ok(config) => match config.validate() {
            Ok(()) => check_usable(&config)?,
            Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
        },
        Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn arbitrary_text(text in "\\PC{0,200}") {
        check_text(&text)?;
    }

    #[test]
    fn real_keys_arbitrary_values(text in document()) {
        check_text(&text)?;
    }

    /// One real key at a time, so that most documents parse and the value
    /// reaches validation and use.
    #[test]
    fn one_key_arbitrary_value(t in 0..KEYS.len(), k in any::<prop::sample::Index>(), v in value()) {
        let (table, keys) = KEYS[t];
        let key = keys[k.index(keys.len())];
        let text = if table.is_empty() {
            format!("{key} = {v}\n")
        } else {
            format!("[{table}]\n{key} = {v}\n")
        };
        check_text(&text)?;
    }

    /// Mutations of the shipped example file.
    #[test]
    fn mutated_example(at in any::<prop::sample::Index>(), with in "\\PC{0,3}", cut in any::<bool>()) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/blink.example.toml");
        let mut text = std::fs::read_to_string(path).unwrap();
        let mut i = at.index(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        if cut {
            text.truncate(i);
        }
        text.insert_str(i, &with);
        check_text(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(200))]

    /// `FileConfig::load` from arbitrary bytes on disk (not even UTF-8).
    #[test]
    fn load_arbitrary_files(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blink.toml");
        std::fs::write(&path, &bytes).unwrap();
        match FileConfig::load(&path) {
            Ok(config) => check_usable(&config)?,
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("blink.toml") || msg.starts_with("config is invalid"), "{msg}");
            }
        }
    }
}

/// Every key with every integer edge, deterministically.
#[test]
fn integer_edges_of_every_key() {
    for (table, keys) in KEYS {
        for key in *keys {
            for v in ["0", "1", "-1", "9223372036854775807", "2305843009213693952"] {
                let text = if table.is_empty() {
                    format!("{key} = {v}\n")
                } else {
                    format!("[{table}]\n{key} = {v}\n")
                };
                if let Err(e) = check_text(&text) {
                    panic!("{text:?}: {e}");
                }
            }
        }
    }
}
