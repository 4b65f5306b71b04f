//! The audit log: one scripted SSH + REST session, then one JSON line in
//! `<data>/audit/audit.jsonl` for each thing it did: a refused login with
//! its reason, the login, the exec with its command and exit status and
//! bytes, the connection, a forward, REST changes, never a secret. A full
//! audit disk (a tiny rotation with one file kept) rotates, and the
//! session goes on.

use std::time::{Duration, Instant};

use blink_e2e::ssh::{Client, SshFixture};
use blink_e2e::{run, texts};
use serde_json::{Value, json};

/// Every audit line so far, parsed (each must be JSON).
fn audit_lines(f: &SshFixture) -> Vec<Value> {
    let path = f.blink.data_dir.path().join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Wait (20 s at most) for an audit line with these field values.
fn wait_line(f: &SshFixture, fields: &[(&str, Value)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = audit_lines(f);
        if let Some(l) = lines
            .iter()
            .find(|l| fields.iter().all(|(k, v)| &l[*k] == v))
        {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no audit line with {fields:?} in:\n{}",
            lines
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_line_for_every_action() {
    let Some(f) = SshFixture::new() else { return };
    // A refused login: a key nobody registered.
    let stranger = Client::new();
    let out = run(stranger.ssh(&f.server, "id", "s1").arg("true"), b"");
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    let refused = wait_line(
        &f,
        &[
            ("target", json!("blink::ssh::auth")),
            ("message", json!("ssh auth rejected")),
        ],
    );
    assert_eq!(refused["login"], "s1");
    assert!(refused["reason"].as_str().is_some_and(|r| !r.is_empty()));

    // A login and an exec.
    let out = f.ssh(&["echo audited; exit 3"], b"");
    assert_eq!(out.status.code(), Some(3));
    let login = wait_line(
        &f,
        &[
            ("target", json!("blink::ssh::auth")),
            ("message", json!("ssh login")),
        ],
    );
    assert!(
        login["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("SHA256:"))
    );
    let exec = wait_line(
        &f,
        &[
            ("target", json!("blink::ssh::channel")),
            ("command", json!("echo audited; exit 3")),
        ],
    );
    assert_eq!(exec["kind"], "exec");
    assert_eq!(exec["exit_status"], 3);
    assert_eq!(exec["bytes_out"], 8);
    assert_eq!(exec["session"], "s1");
    wait_line(
        &f,
        &[
            ("target", json!("blink::ssh::connection")),
            ("message", json!("ssh connection closed")),
            ("authenticated", json!(true)),
        ],
    );

    // A forward (refused: nothing outside the session is allowed).
    let out = run(f.ssh_command().args(["-W", "example.invalid:80"]), b"");
    assert_eq!(out.status.code(), Some(255));
    let forward = wait_line(
        &f,
        &[
            ("target", json!("blink::ssh::forward")),
            ("host", json!("example.invalid")),
        ],
    );
    assert_eq!(forward["allowed"], false);

    // REST changes are lines; reads are not.
    let a = f.server.put(
        "/api/sessions/s1/network",
        json!({"mode": "proxy", "allow": ["pypi.org"]}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(f.server.get("/api/sessions/s1").status, 200);
    let rest = wait_line(
        &f,
        &[
            ("target", json!("blink::rest::request")),
            ("method", json!("PUT")),
        ],
    );
    assert_eq!(rest["route"], "/api/sessions/{name}/network");
    assert_eq!(rest["path"], "/api/sessions/s1/network");
    assert_eq!(rest["status"], 200);
    assert!(
        !audit_lines(&f)
            .iter()
            .any(|l| l["target"] == "blink::rest::request" && l["method"] == "GET"),
        "reads are not audited"
    );
    // Nothing secret: no key material, no private key text.
    let all = std::fs::read_to_string(f.blink.data_dir.path().join("audit/audit.jsonl"))
        .expect("audit log");
    let public = std::fs::read_to_string(f.client.path("id.pub")).expect("key");
    let blob = public.split_whitespace().nth(1).expect("key blob");
    assert!(!all.contains(blob), "a public key blob in the audit log");
    assert!(!all.contains("PRIVATE KEY"));
    // Mode 0600 in a 0700 directory.
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(f.blink.data_dir.path().join(p))
                .expect("stat")
                .permissions(),
        ) & 0o777
    };
    assert_eq!((mode("audit"), mode("audit/audit.jsonl")), (0o700, 0o600));
}

#[test]
fn the_log_rotates_by_size_and_keeps_whole_lines() {
    let Some(f) = SshFixture::with(|s| s.config("[audit]\nmax_bytes = 4096\nkeep = 2\n")) else {
        return;
    };
    for i in 0..40 {
        let a = f.server.post(
            "/api/sessions",
            json!({"name": format!("r{i}"), "warm": false}),
        );
        assert_eq!(a.status, 201, "{:?}", a.body);
    }
    let dir = f.blink.data_dir.path().join("audit");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("audit.jsonl.2").exists() {
        assert!(Instant::now() < deadline, "never rotated twice");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.join("audit.jsonl.3").exists(), "keep = 2");
    for name in ["audit.jsonl.1", "audit.jsonl.2"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("rotated file");
        assert!(text.len() < 4096 + 1024, "{name}: {} bytes", text.len());
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
        }
    }
    // And the server works on.
    assert_eq!(f.sh("echo fine"), "fine\n");
}
