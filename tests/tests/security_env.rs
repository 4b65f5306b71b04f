//! The abuse suite, as a REST caller and an SSH user: what a caller sends
//! (its environment) is applied only inside the sandbox, and what the
//! server holds (its own environment, the host paths of its data dir)
//! never reaches a sandbox or a client.

use std::time::Duration;

use blink_e2e::abuse::{Marker, Probe, assert_no_host_path, hex, line, unavailable, wait_for};
use blink_e2e::rest::{Received, read_until, stdout};
use blink_e2e::ssh::Client;
use blink_e2e::{Blink, Server, local_runtime_available, run, server_fixture, texts};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Authorize the client's `id` key for a session, over REST.
fn add_key(server: &Server, client: &Client, session: &str) {
    let a = server.post(
        &format!("/api/sessions/{session}/keys"),
        json!({"key": client.public_key("id")}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
}

/// A spawn, attached until it exits: (exit code, everything it wrote).
fn spawn_and_collect(server: &Server, session: &str, body: Value) -> (i64, String) {
    let a = server.post(&format!("/api/sessions/{session}/spawn"), body);
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["id"].as_str().expect("id").to_owned();
    let mut ws = server.ws(&format!("/api/sessions/{session}/executions/{id}/attach"));
    let mut got = Received::default();
    assert!(
        read_until(&mut ws, &mut got, WAIT, |r| r.exit().is_some()),
        "spawn {id} never exited: {got:?}"
    );
    let code = got.exit().and_then(|e| e["code"].as_i64()).unwrap_or(-1);
    (code, got.text())
}

/// What the sandbox says about its LD_PRELOAD: it arrived, and the host
/// path it names does not exist inside.
const CHECK_PRELOAD: &str = "echo ran; if test -e \"$LD_PRELOAD\"; then echo visible; \
                             else echo absent; fi; echo \"preload=$LD_PRELOAD\"";

#[test]
fn a_callers_ld_preload_is_applied_only_inside_the_sandbox() {
    if !local_runtime_available() {
        return;
    }
    let Some(marker) = Marker::build() else {
        return;
    };
    let lib = marker.lib_arg();
    let expected = format!("ran\nabsent\npreload={lib}\n");
    let blink = Blink::new();
    let client = Client::new();
    let server = blink
        .server()
        .config("[ssh]\nenv_allow = [\"LD_PRELOAD\"]\n")
        .start();
    let env = json!({"LD_PRELOAD": lib});
    let command = json!(["sh", "-c", CHECK_PRELOAD]);

    // POST /api/runs (an ephemeral sandbox).
    let r = server.run_wait("/api/runs", json!({"command": command, "env": env}));
    assert_eq!(stdout(&r), expected, "{r}");
    marker.assert_none("POST /api/runs");

    // POST /api/sessions/{name}/runs.
    server.open_session("s1");
    let r = server.run_wait(
        "/api/sessions/s1/runs",
        json!({"command": command, "env": env}),
    );
    assert_eq!(stdout(&r), expected, "{r}");
    marker.assert_none("POST /api/sessions/s1/runs");

    // POST /api/sessions/{name}/spawn, pipe mode and terminal mode.
    for tty in [false, true] {
        let (code, text) = spawn_and_collect(
            &server,
            "s1",
            json!({"command": command, "env": env, "tty": tty}),
        );
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains("absent") && text.contains(&format!("preload={lib}")),
            "spawn (tty {tty}): {text:?}"
        );
        marker.assert_none(&format!("POST /api/sessions/s1/spawn (tty {tty})"));
    }

    // SSH, with LD_PRELOAD allowed by the server's env_allow.
    add_key(&server, &client, "s1");
    let set_env = format!("SetEnv=LD_PRELOAD={lib}");
    let mut ssh = client.ssh(&server, "id", "s1");
    ssh.args(["-o", &set_env, CHECK_PRELOAD]);
    let out = run(&mut ssh, b"");
    let (text, err) = texts(&out);
    assert_eq!(text, expected, "{err}");
    marker.assert_none("ssh -o SetEnv=LD_PRELOAD");
    // The sftp subsystem is an execution too.
    let out = client.sftp(&server, &["-o", &set_env], "s1", "pwd\n");
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    marker.assert_none("sftp -o SetEnv=LD_PRELOAD");
}

#[test]
fn the_servers_environment_never_reaches_a_session() {
    if !local_runtime_available() {
        return;
    }
    let Some(probe) = Probe::build() else { return };
    let token = format!("s3cret-token-{:016x}", rand::random::<u64>());
    let other = format!("other-secret-{:016x}", rand::random::<u64>());
    let blink = Blink::new();
    let server = blink
        .server()
        .token(&token)
        .env("BLINK_E2E_OTHER_SECRET", &other)
        .start();
    let script = probe.copy_to(&blink.scripts_dir());
    let box_id = server.open_session("s1");
    let session_run = |body: Value| server.run_wait("/api/sessions/s1/runs", body);
    let r = session_run(json!({"script": script, "args": ["install", "/root/probe"]}));
    assert_eq!(r["state"], "succeeded", "{r}");

    let looks = [
        (
            "cat /proc/*/environ",
            json!(["sh", "-c", "cat /proc/*/environ; true"]),
        ),
        ("env", json!(["env"])),
    ];
    for (what, command) in &looks {
        let r = session_run(json!({"command": command}));
        let out = stdout(&r);
        assert!(!out.is_empty() || *what != "env", "{what}: {r}");
        for secret in [&token, &other] {
            assert!(
                !out.contains(secret.as_str()),
                "{what} shows {secret}: {out}"
            );
        }
    }
    for secret in [&token, &other] {
        let r = session_run(json!({"command": ["/root/probe", "procgrep", hex(secret)]}));
        let out = stdout(&r);
        assert!(
            line(&out, "procgrep").is_some_and(|l| l.starts_with("clean files=")),
            "a recursive search of /proc finds the server's secret: {out}"
        );
        let r = session_run(json!({"command": ["/root/probe", "envscan", hex(secret)]}));
        assert_eq!(line(&stdout(&r), "envscan"), Some("clean"), "{r}");
    }
    let r = session_run(json!({"command": ["cat", "/proc/1/environ"]}));
    assert!(
        r["exit_code"] != 0 || stdout(&r).is_empty(),
        "the sandbox's init shows an environment: {r}"
    );

    // The same over SSH.
    let client = Client::new();
    add_key(&server, &client, "s1");
    let mut ssh = client.ssh(&server, "id", "s1");
    ssh.arg("cat /proc/*/environ; env; cat /proc/1/environ");
    let out = run(&mut ssh, b"");
    let (text, err) = texts(&out);
    for secret in [&token, &other] {
        assert!(
            !text.contains(secret.as_str()) && !err.contains(secret.as_str()),
            "ssh sees {secret}: {text}"
        );
    }

    // A process shows its environment from the moment it enters the
    // sandbox until it execs: watch /proc without pause while many
    // executions start (each with a large environment of the caller's, so
    // the helper that applies it takes a while), over REST and SSH.
    let watcher = server.post(
        "/api/sessions/s1/runs",
        json!({"command": ["/root/probe", "envwatch", hex(&token), "90", "/root/envwatch.flag"]}),
    );
    assert_eq!(watcher.status, 202, "{:?}", watcher.body);
    let watcher = watcher.body["id"].as_str().expect("id").to_owned();
    assert!(
        wait_for(
            &blink.disk_path(&box_id, "/root/envwatch.flag"),
            Duration::from_secs(60)
        ),
        "the watcher never started"
    );
    let big: serde_json::Map<String, Value> = (0..6)
        .map(|i| (format!("BIG_{i}"), json!("x".repeat(100_000))))
        .collect();
    for i in 0..40 {
        let r = session_run(json!({"command": ["true"], "env": big}));
        assert_eq!(r["state"], "succeeded", "trigger {i}: {r}");
    }
    for _ in 0..5 {
        let out = run(client.ssh(&server, "id", "s1").arg("true"), b"");
        assert_eq!(out.status.code(), Some(0));
    }
    session_run(json!({"command": ["touch", "/root/envwatch.flag.stop"]}));
    let done = server.wait_run(&watcher);
    let out = stdout(&done);
    assert!(
        line(&out, "envwatch").is_some_and(|l| l.starts_with("clean")),
        "a process in the sandbox showed the server's environment: {done}"
    );
}

/// Texts a client sees: error bodies, run output, SSH and sftp messages.
#[test]
fn errors_seen_by_clients_name_no_host_paths() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("s1");
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, v: &Value| seen.push((what.to_owned(), v.to_string()));

    let r = server.run_wait("/api/runs", json!({"command": ["/no/such/program"]}));
    keep("run of a missing program", &r);
    let r = server.run_wait(
        "/api/sessions/s1/runs",
        json!({"command": ["true"], "cwd": "/no/such/dir"}),
    );
    keep("run in a missing directory", &r);
    let r = server.run_wait(
        "/api/sessions/s1/runs",
        json!({"command": ["sh", "-c", "cat /nonexistent; ls /proc/1/root"]}),
    );
    keep("run with failing commands", &r);
    let r = server.run_wait(
        "/api/runs",
        json!({"command": ["true"], "image": "no/such:image"}),
    );
    assert_eq!(r["state"], "failed", "{r}");
    keep("run in a missing image", &r);
    for (path, body) in [
        (
            "/api/sessions",
            json!({"name": "img", "image": "no/such:image"}),
        ),
        ("/api/runs", json!({"script": "/etc/passwd"})),
        ("/api/sessions/s1/spawn", json!({"command": [""]})),
        (
            "/api/sessions/s1/runs",
            json!({"command": ["true"], "env": {"A=B": "c"}}),
        ),
    ] {
        let a = server.post(path, body.clone());
        assert!(
            a.status >= 400,
            "POST {path} {body} did not fail: {:?}",
            a.body
        );
        keep(&format!("POST {path} {body}"), &a.body);
    }
    let (code, text) = spawn_and_collect(&server, "s1", json!({"command": ["/no/such/program"]}));
    assert_ne!(code, 0);
    keep("spawn of a missing program", &json!(text));
    for path in [
        "/api/product",
        "/api/sessions",
        "/api/sessions/s1",
        "/api/sessions/s1/executions",
        "/api/sessions/nope",
    ] {
        let a = server.get(path);
        keep(&format!("GET {path}"), &a.body);
    }

    let client = Client::new();
    add_key(&server, &client, "s1");
    for command in [
        "cd /no/such/dir",
        "/no/such/program",
        "exec 3</proc/1/environ",
    ] {
        let out = run(client.ssh(&server, "id", "s1").arg(command), b"");
        keep(&format!("ssh {command}"), &json!(texts(&out)));
    }
    let out = run(client.ssh(&server, "id", "nope").arg("true"), b"");
    keep("ssh to a missing session", &json!(texts(&out)));
    for batch in [
        "get /no/such/file /dev/null\n",
        "ls /no/such/dir\n",
        "put /etc/hostname /proc/sys/kernel/hostname\n",
        "rename /proc /x\n",
    ] {
        let out = client.sftp(&server, &[], "s1", batch);
        keep(&format!("sftp {batch}"), &json!(texts(&out)));
    }

    for (what, text) in &seen {
        assert_no_host_path(&blink, what, text);
    }
}

/// A session may do what it likes with its own disk; afterwards it still
/// starts, and nothing it did makes a client see where the disk is on the
/// host. (Found by this test: changing the owner of its `/` used to make the
/// next start re-own the whole disk by full host paths, and a directory
/// chain past PATH_MAX then bricked the session with a host path in the
/// error. Disks are now moved into an id range only when they have no range
/// record, which a sandbox cannot touch, and relative to open directories.)
#[test]
fn a_session_cannot_brick_its_disk_or_learn_host_paths() {
    if !local_runtime_available() {
        return;
    }
    let Some(probe) = Probe::build() else { return };
    if !blink_e2e::abuse::is_root() {
        unavailable("disks are re-owned only when blink runs as root");
        return;
    }
    let blink = Blink::new();
    let server = blink.server().start();
    let script = probe.copy_to(&blink.scripts_dir());
    server.open_session("s1");
    let r = server.run_wait(
        "/api/sessions/s1/runs",
        json!({"script": script, "args": ["deepdir", "/root", "2200"]}),
    );
    assert_eq!(line(&stdout(&r), "deepdir"), Some("made depth=2200"), "{r}");
    let r = server.run_wait(
        "/api/sessions/s1/runs",
        json!({"command": ["chown", "1000:1000", "/"]}),
    );
    assert_eq!(r["state"], "succeeded", "{r}");
    let a = server.post("/api/sessions/s1/stop", json!({}));
    assert_eq!(a.status, 200, "{:?}", a.body);

    let a = server.post(
        "/api/sessions/s1/runs?wait=true",
        json!({"command": ["echo", "alive"]}),
    );
    assert_no_host_path(&blink, "the next run", &a.body.to_string());
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(stdout(&a.body), "alive\n", "{:?}", a.body);

    // Removing the session removes its deep tree too, and the server lives
    // on (a recursive removal would overflow its stack at such depths).
    let sandboxes = blink.data_dir.path().join("sandboxes");
    let disks = || std::fs::read_dir(&sandboxes).map_or(0, |d| d.count());
    assert_eq!(disks(), 1);
    let a = server.delete("/api/sessions/s1?force=true");
    assert!(a.status == 200 || a.status == 204, "{:?}", a.body);
    assert_eq!(disks(), 0, "the disk is gone");
    assert_eq!(server.get("/api/health").status, 200);
}

/// The disk is seen through an overlay mounted with relative paths: what a
/// session reads about its mounts (`/proc/*/mountinfo`, `/proc/mounts`)
/// names no host path (a bind mount of the disk's directory would show its
/// full path on the host's filesystem).
#[test]
fn mount_tables_inside_name_no_host_path() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    if !blink_e2e::abuse::is_root() {
        unavailable("the disk overlay is mounted only when blink runs as root");
        return;
    }
    server.open_session("s1");
    let r = server.run_wait(
        "/api/sessions/s1/runs",
        json!({"command": ["sh", "-c", "cat /proc/self/mountinfo /proc/1/mountinfo /proc/mounts"]}),
    );
    assert_eq!(r["state"], "succeeded", "{r}");
    let text = stdout(&r);
    assert!(text.contains(" / "), "the root mount is listed: {text}");
    assert_no_host_path(&blink, "the sandbox's mount table", &text);
}
