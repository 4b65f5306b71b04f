//! End-to-end tests of the REST API: the real `blink-server`, a real HTTP
//! client, real sandboxes.

use std::time::Duration;

use blink_e2e::rest::{Received, encode, read_until, send_bytes, send_control};
use blink_e2e::ssh::Client;
use blink_e2e::{Blink, Server, run, server_fixture};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn health_product_and_openapi() {
    let blink = Blink::new();
    let server = blink.server().start();
    let health = server.get("/api/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");

    let product = server.get("/api/product");
    assert_eq!(product.status, 200);
    assert_eq!(product.body["runtime"]["name"], "local");
    assert_eq!(product.body["isolation"], "namespace");
    assert_eq!(product.body["features"]["runs"], true);
    // Disk features come together: all where disks are images (root).
    let disks = &product.body["features"]["checkpoints"];
    assert!(disks.is_boolean(), "{:?}", product.body);
    for feature in ["clone", "export", "import"] {
        assert_eq!(&product.body["features"][feature], disks, "{feature}");
    }

    let doc = server.get("/api/openapi.json");
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap_or("").starts_with("3."));
    let paths = doc.body["paths"].as_object().expect("paths");
    let expected: &[(&str, &[&str])] = &[
        ("/api/health", &["get"]),
        ("/api/product", &["get"]),
        ("/api/openapi.json", &["get"]),
        ("/api/runs", &["post"]),
        ("/api/runs/{id}", &["get"]),
        ("/api/sessions", &["get", "post"]),
        ("/api/sessions/{name}", &["get", "delete"]),
        ("/api/sessions/{name}/runs", &["post"]),
        ("/api/sessions/{name}/spawn", &["post"]),
        ("/api/sessions/{name}/events", &["get"]),
        ("/api/sessions/{name}/executions", &["get"]),
        ("/api/sessions/{name}/executions/{id}", &["get"]),
        ("/api/sessions/{name}/executions/{id}/attach", &["get"]),
        ("/api/sessions/{name}/checkpoints", &["get", "post"]),
        ("/api/sessions/{name}/checkpoints/{snap}/restore", &["post"]),
        ("/api/sessions/{name}/checkpoints/{snap}", &["delete"]),
        ("/api/sessions/{name}/export", &["post"]),
        ("/api/exports/{filename}", &["get"]),
        ("/api/import", &["post"]),
        ("/api/sessions/{name}/stop", &["post"]),
        ("/api/sessions/{name}/fence", &["delete", "put"]),
        ("/api/sessions/{name}/network", &["get", "put"]),
        ("/api/sessions/{name}/resources", &["get", "patch"]),
        ("/api/sessions/{name}/stats", &["get"]),
        ("/api/sessions/{name}/forwarding", &["get", "put"]),
        ("/api/sessions/{name}/keys", &["get", "post"]),
        ("/api/sessions/{name}/keys/{fingerprint}", &["delete"]),
        ("/api/sessions/{name}/recordings", &["get"]),
        ("/api/sessions/{name}/recordings/{id}", &["get", "delete"]),
        ("/api/sessions/{name}/recording", &["get", "put"]),
        ("/api/images", &["get", "delete"]),
        ("/api/images/pull", &["post"]),
        ("/api/images/prune", &["post"]),
        ("/metrics", &["get"]),
    ];
    for (path, methods) in expected {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for m in *methods {
            assert!(item.get(*m).is_some(), "{m} {path} missing");
        }
    }
    assert_eq!(paths.len(), expected.len(), "{:?}", paths.keys());

    // Checkpoint and archive routes are here: an unknown session or
    // export is theirs to name, and a body that is not a form is refused.
    for (method, path, code) in [
        ("POST", "/api/sessions/s1/checkpoints", "session_not_found"),
        ("GET", "/api/sessions/s1/checkpoints", "session_not_found"),
        (
            "POST",
            "/api/sessions/s1/checkpoints/c1/restore",
            "session_not_found",
        ),
        ("POST", "/api/sessions/s1/export", "session_not_found"),
        ("GET", "/api/exports/x.boxlite", "export_not_found"),
        ("GET", "/api/sessions/s1/network", "session_not_found"),
        ("GET", "/api/sessions/s1/recordings", "session_not_found"),
        ("GET", "/api/sessions/s1/recording", "session_not_found"),
        (
            "GET",
            "/api/sessions/s1/recordings/1-0123456789abcdef",
            "recording_not_found",
        ),
    ] {
        let a = match method {
            "GET" => server.get(path),
            _ if path.ends_with("checkpoints") => server.post(path, json!({"snapshot": "c1"})),
            _ => server.post_raw(path, None, b""),
        };
        assert_eq!(
            (a.status, a.code()),
            (404, code),
            "{method} {path}: {:?}",
            a.body
        );
    }
    let a = server.post("/api/import", json!({}));
    assert!(matches!(a.status, 400 | 415), "{:?}", a.body);
}

#[test]
fn bad_requests_get_json_errors() {
    let blink = Blink::new();
    // A small body limit, so an oversized body fits in socket buffers and
    // the early 413 is read rather than cut off by a broken pipe.
    let server = blink
        .server()
        .config("[rest]\nmax_body_bytes = 4096\n")
        .start();
    let json_ct = Some("application/json");

    let a = server.post_raw("/api/sessions", json_ct, b"{not json");
    assert_eq!((a.status, a.code()), (400, "invalid_json"));

    let a = server.post("/api/sessions", json!({"name": "s1", "color": "red"}));
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("color")
    );

    let a = server.post("/api/runs", json!({"command": "ls", "bogus": true}));
    assert_eq!(a.status, 400);

    let a = server.post_raw("/api/sessions", None, br#"{"name":"s1"}"#);
    assert_eq!((a.status, a.code()), (415, "unsupported_media_type"));

    let big = format!(r#"{{"name":"s1","image":"{}"}}"#, "x".repeat(8192));
    let a = server.post_raw("/api/sessions", json_ct, big.as_bytes());
    assert_eq!((a.status, a.code()), (413, "body_too_large"));
    let a = server.post_chunked("/api/sessions", big.as_bytes());
    assert_eq!((a.status, a.code()), (413, "body_too_large"));

    for bad in ["Bad", "a..b", "-x", &"a".repeat(64)] {
        let a = server.post("/api/sessions", json!({"name": bad}));
        assert_eq!((a.status, a.code()), (400, "invalid_name"), "{bad}");
        let a = server.get(&format!("/api/sessions/{}", encode(bad)));
        assert_eq!((a.status, a.code()), (400, "invalid_name"), "{bad}");
    }

    let a = server.get("/api/sessions/nope");
    assert_eq!((a.status, a.code()), (404, "session_not_found"));
    let a = server.post("/api/sessions/nope/runs", json!({"command": ["true"]}));
    assert_eq!((a.status, a.code()), (404, "session_not_found"));
    let a = server.post("/api/sessions/nope/spawn", json!({"command": ["sh"]}));
    assert_eq!((a.status, a.code()), (404, "session_not_found"));
    let a = server.get("/api/sessions/nope/keys");
    assert_eq!((a.status, a.code()), (404, "session_not_found"));
    let a = server.delete("/api/sessions/nope");
    assert_eq!((a.status, a.code()), (404, "session_not_found"));
    let a = server.post("/api/sessions/nope/stop", json!({}));
    assert_eq!((a.status, a.code()), (404, "session_not_found"));
    let a = server.get("/api/runs/r-missing");
    assert_eq!((a.status, a.code()), (404, "run_not_found"));
    let a = server.get("/api/nowhere");
    assert_eq!((a.status, a.code()), (404, "not_found"));
    let a = server.delete("/api/health");
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));

    // Unprocessable: neither or both of script and command, empty argv.
    let a = server.post("/api/runs", json!({}));
    assert_eq!(a.status, 422);
    let a = server.post("/api/runs", json!({"command": []}));
    assert_eq!(a.status, 422);
    let a = server.post(
        "/api/runs",
        json!({"command": ["true"], "script": "/bin/true"}),
    );
    assert_eq!(a.status, 422);
    let a = server.post("/api/runs", json!({"command": ["true"], "timeout_secs": 0}));
    assert_eq!(a.status, 422);

    // Hostile bytes anywhere never bring the server down.
    for body in [
        &b"\xff\xfe\x00"[..],
        b"[]",
        b"null",
        b"{\"name\":null}",
        b"{\"name\":1e999}",
    ] {
        let a = server.post_raw("/api/sessions", json_ct, body);
        assert_eq!(a.status, 400, "{body:?}");
    }
    assert_eq!(server.get("/api/health").status, 200);
}

#[test]
fn runs_are_queued_and_report_results() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };

    let a = server.post(
        "/api/runs",
        json!({"command": ["sh", "-c", "echo out; echo err >&2; cat"], "stdin": "fed\n"}),
    );
    assert_eq!(a.status, 202, "{:?}", a.body);
    let id = a.body["id"].as_str().expect("id").to_string();
    assert!(["queued", "running"].contains(&a.body["state"].as_str().unwrap()));
    assert_eq!(
        a.location.as_deref(),
        Some(format!("/api/runs/{id}").as_str())
    );
    let run = server.wait_run(&id);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["stdout"]["data"], "out\nfed\n");
    assert_eq!(run["stderr"]["data"], "err\n");
    assert!(run["duration_ms"].is_u64());
    assert!(run["queued_ms"].is_u64());
    assert_eq!(run["isolation"], "namespace");

    let a = server.post(
        "/api/runs",
        json!({"command": ["sh", "-c", "echo bad >&2; exit 3"]}),
    );
    let run = server.wait_run(a.body["id"].as_str().unwrap());
    assert_eq!(run["state"], "failed");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["stderr"]["data"], "bad\n");

    let a = server.post(
        "/api/runs",
        json!({"command": ["sleep", "30"], "timeout_secs": 1}),
    );
    let run = server.wait_run(a.body["id"].as_str().unwrap());
    assert_eq!(run["state"], "timed_out", "{run}");

    let a = server.post("/api/runs", json!({"command": ["no-such-program"]}));
    let run = server.wait_run(a.body["id"].as_str().unwrap());
    assert_eq!(run["state"], "failed");
    assert_eq!(run["exit_code"], 127, "{run}");

    // A script from the allowed directory, with arguments; ?wait=true.
    let script = blink.script("hello.sh", "#!/bin/sh\necho \"script says $1\"\n");
    let a = server.post(
        "/api/runs?wait=true",
        json!({"script": script.to_str().unwrap(), "args": ["hi"]}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["state"], "succeeded");
    assert_eq!(a.body["stdout"]["data"], "script says hi\n");

    // Anything outside the allowed directories is refused, existing or
    // not, directly or through a symlink or `..`.
    let outside = blink.data_dir.path().join("outside.sh");
    std::fs::write(&outside, "#!/bin/sh\necho leaked\n").unwrap();
    let link = blink.data_dir.path().join("host-scripts/link.sh");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let dotdot = format!("{}/../outside.sh", script.parent().unwrap().display());
    for path in [
        "/etc/passwd",
        "/nonexistent/x.sh",
        outside.to_str().unwrap(),
        link.to_str().unwrap(),
        dotdot.as_str(),
    ] {
        let a = server.post("/api/runs", json!({"script": path}));
        assert_eq!((a.status, a.code()), (403, "script_not_allowed"), "{path}");
    }
    let missing = blink.data_dir.path().join("host-scripts/missing.sh");
    let a = server.post("/api/runs", json!({"script": missing.to_str().unwrap()}));
    assert_eq!((a.status, a.code()), (404, "script_not_found"));
}

#[test]
fn session_lifecycle() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };

    let a = server.post("/api/sessions", json!({"name": "s1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["created"], true);
    let box_id = a.body["session"]["box_id"].as_str().unwrap().to_string();
    let a = server.post("/api/sessions", json!({"name": "s1"}));
    assert_eq!((a.status, &a.body["created"]), (200, &json!(false)));
    assert_eq!(a.body["session"]["box_id"], box_id.as_str());
    let a = server.post("/api/sessions", json!({"name": "s1", "exclusive": true}));
    assert_eq!((a.status, a.code()), (409, "session_exists"));

    let a = server.get("/api/sessions");
    let names: Vec<&str> = a.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["s1"]);

    // Memory persists from run to run, through a stop.
    let a = server.post(
        "/api/sessions/s1/runs?wait=true",
        json!({"command": ["sh", "-c", "echo remembered > /var/blink/memory/note"]}),
    );
    assert_eq!((a.status, &a.body["state"]), (200, &json!("succeeded")));
    assert_eq!(a.body["session"], "s1");
    let a = server.post(
        "/api/sessions/s1/runs",
        json!({"command": ["true"], "session": "other"}),
    );
    assert_eq!(a.status, 422);

    let a = server.get("/api/sessions/s1");
    assert_eq!(a.status, 200);
    assert_eq!(a.body["box_id"], box_id.as_str());
    assert_eq!(a.body["isolation"], "namespace");

    let a = server.post("/api/sessions/s1/stop", json!({}));
    assert_eq!((a.status, &a.body["state"]), (200, &json!("stopped")));

    let a = server.post(
        "/api/sessions/s1/runs",
        json!({"command": ["cat", "/var/blink/memory/note"]}),
    );
    assert_eq!(a.status, 202);
    let run = server.wait_run(a.body["id"].as_str().unwrap());
    assert_eq!(run["stdout"]["data"], "remembered\n", "{run}");

    // Busy: a running spawn makes stop and remove answer 409 unless forced.
    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({"command": ["sleep", "60"]}),
    );
    assert_eq!(a.status, 201);
    let a = server.delete("/api/sessions/s1");
    assert_eq!((a.status, a.code()), (409, "session_busy"));
    let a = server.delete("/api/sessions/s1?force=true");
    assert_eq!(a.status, 204);
    let a = server.get("/api/sessions/s1");
    assert_eq!(a.status, 404);
    assert!(
        !blink
            .data_dir
            .path()
            .join("sandboxes")
            .join(&box_id)
            .exists()
    );
}

#[test]
fn pty_spawn_attach_resize_detach_reattach() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("s1");

    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({"command": ["sh"], "tty": true, "rows": 24, "cols": 80}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["tty"], true);
    let id = a.body["id"].as_str().unwrap().to_string();
    let path = format!("/api/sessions/s1/executions/{id}/attach");

    let mut ws = server.ws(&path);
    let mut got = Received::default();
    assert!(read_until(&mut ws, &mut got, WAIT, |r| !r
        .events
        .is_empty()));
    assert_eq!(got.events[0]["type"], "attached");
    assert_eq!(got.events[0]["tty"], true);

    // Echo round trip (the shell computes, so the echo of our typing does
    // not count).
    send_bytes(&mut ws, b"echo hello-$((40+2))\n");
    assert!(
        read_until(&mut ws, &mut got, WAIT, |r| r.text().contains("hello-42")),
        "{}",
        got.text()
    );

    // Resize is seen by stty.
    send_control(&mut ws, json!({"type": "resize", "rows": 33, "cols": 101}));
    send_bytes(&mut ws, b"stty size\n");
    assert!(
        read_until(&mut ws, &mut got, WAIT, |r| r.text().contains("33 101")),
        "{}",
        got.text()
    );
    // A bad control message is answered, not fatal.
    send_control(&mut ws, json!({"type": "dance"}));
    assert!(read_until(&mut ws, &mut got, WAIT, |r| r
        .events
        .iter()
        .any(|e| e["type"] == "error")));

    // Output produced while detached is kept.
    send_bytes(&mut ws, b"sleep 1; echo later-$((1+1))\n");
    ws.close(None).ok();
    drop(ws);
    std::thread::sleep(Duration::from_millis(1500));
    let a = server.get(&format!("/api/sessions/s1/executions/{id}"));
    assert_eq!(a.status, 200);
    assert!(a.body["exit"].is_null(), "{:?}", a.body);
    let a = server.get("/api/sessions/s1/executions");
    assert_eq!(a.body["executions"].as_array().unwrap().len(), 1);

    let mut ws = server.ws(&path);
    let mut again = Received::default();
    assert!(
        read_until(&mut ws, &mut again, WAIT, |r| r.text().contains("later-2")),
        "{}",
        again.text()
    );
    send_bytes(&mut ws, b"exit 7\n");
    assert!(read_until(&mut ws, &mut again, WAIT, |r| r
        .exit()
        .is_some()));
    assert_eq!(again.exit().unwrap()["code"], 7);

    // Signals reach the process.
    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({"command": ["sleep", "60"]}),
    );
    let sleeper = a.body["id"].as_str().unwrap().to_string();
    let mut ws = server.ws(&format!("/api/sessions/s1/executions/{sleeper}/attach"));
    send_control(&mut ws, json!({"type": "signal", "signal": "TERM"}));
    let mut got = Received::default();
    assert!(read_until(&mut ws, &mut got, WAIT, |r| r.exit().is_some()));
    assert_eq!(got.exit().unwrap()["signal"], 15, "{:?}", got.events);

    // A plain GET on the attach route is not a WebSocket.
    let a = server.get(&path);
    assert_eq!((a.status, a.code()), (400, "not_websocket"));

    // Attaching to something that does not exist.
    let a = server.get("/api/sessions/s1/executions/x-nope");
    assert_eq!((a.status, a.code()), (404, "execution_not_found"));
}

#[test]
fn pipe_spawn_keeps_streams_apart() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("s1");
    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({"command": ["sh", "-c", "read x; echo \"out $x\"; echo err >&2; exit 4"]}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["id"].as_str().unwrap();
    let mut ws = server.ws(&format!("/api/sessions/s1/executions/{id}/attach"));
    send_bytes(&mut ws, b"in\n");
    send_control(&mut ws, json!({"type": "eof"}));
    let mut got = Received::default();
    assert!(read_until(&mut ws, &mut got, WAIT, |r| r.exit().is_some()));
    assert_eq!(got.exit().unwrap()["code"], 4);
    // Pipe mode: each binary frame starts with 1 (stdout) or 2 (stderr);
    // read_until concatenated them, so split them back by hand here.
    let text = got.text();
    assert!(text.contains("\u{1}out in\n"), "{text:?}");
    assert!(text.contains("\u{2}err\n"), "{text:?}");
}

#[test]
fn keys_over_rest_gate_ssh_and_share_one_manager() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    let client = Client::new();
    server.open_session("s1");

    let ssh = |cmd: &str| run(client.ssh(&server, "id", "s1").arg(cmd), b"");
    let out = ssh("true");
    assert!(!out.status.success(), "no key yet: must be refused");

    let public = client.public_key("id");
    let a = server.post("/api/sessions/s1/keys", json!({"key": public}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let fingerprint = a.body["key"]["fingerprint"].as_str().unwrap().to_string();
    assert!(fingerprint.starts_with("SHA256:"));
    let a = server.post("/api/sessions/s1/keys", json!({"key": public}));
    assert_eq!((a.status, &a.body["added"]), (200, &json!(false)));
    let a = server.post(
        "/api/sessions/s1/keys",
        json!({"key": "ssh-ed25519 nonsense"}),
    );
    assert_eq!(a.status, 400);
    let a = server.get("/api/sessions/s1/keys");
    assert_eq!(a.body["keys"][0]["fingerprint"], fingerprint.as_str());

    // Written over REST, read over SSH: the same session, one manager.
    let a = server.post(
        "/api/sessions/s1/runs?wait=true",
        json!({"command": ["sh", "-c", "echo from-rest > /var/blink/memory/shared"]}),
    );
    assert_eq!(a.body["state"], "succeeded", "{:?}", a.body);
    let out = ssh("cat /var/blink/memory/shared");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-rest\n");

    let a = server.delete(&format!("/api/sessions/s1/keys/{}", encode(&fingerprint)));
    assert_eq!(a.status, 204, "{:?}", a.body);
    let a = server.delete(&format!("/api/sessions/s1/keys/{}", encode(&fingerprint)));
    assert_eq!((a.status, a.code()), (404, "key_not_found"));
    let out = ssh("true");
    assert!(!out.status.success(), "removed key must be refused");
}

#[test]
fn bearer_token_when_configured() {
    let blink = Blink::new();
    let server = blink.server().token("s3cret-token").start();
    assert_eq!(server.get_anonymous("/api/health").status, 200);
    let a = server.get_anonymous("/api/sessions");
    assert_eq!((a.status, a.code()), (401, "unauthorized"));
    assert_eq!(server.get("/api/sessions").status, 200);
}

#[test]
fn sigterm_lets_runs_finish_and_state_survives_sigkill() {
    let Some((blink, mut server)) = server_fixture() else {
        return;
    };
    server.open_session("keep");
    let a = server.post(
        "/api/sessions/keep/runs",
        json!({"command": ["sh", "-c", "sleep 2; echo done > /var/blink/memory/finished"]}),
    );
    assert_eq!(a.status, 202);
    let id = a.body["id"].as_str().unwrap().to_string();
    // Wait until it runs, then ask the server to stop.
    for _ in 0..200 {
        if server.get(&format!("/api/runs/{id}")).body["state"] == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let started = std::time::Instant::now();
    let status = server.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "did not wait for the run"
    );

    let server = blink.server().start();
    let a = server.post(
        "/api/sessions/keep/runs?wait=true",
        json!({"command": ["cat", "/var/blink/memory/finished"]}),
    );
    assert_eq!(a.body["stdout"]["data"], "done\n", "{:?}", a.body);
    let mut server = server;
    server.open_session("after-kill");
    let status = server.signal_and_wait("KILL");
    assert!(!status.success());

    let server = blink.server().start();
    let a = server.get("/api/sessions");
    let names: Vec<String> = a.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["after-kill", "keep"]);
    let _: Value = server.get("/api/health").body;
}

#[test]
fn websocket_attachments_are_capped_and_released() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink
        .server()
        .config("[rest]\nmax_attachments = 1\n")
        .start();
    server.open_session("s1");
    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({"command": ["sleep", "30"]}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let path = format!(
        "/api/sessions/s1/executions/{}/attach",
        a.body["id"].as_str().unwrap()
    );
    let first = server.ws(&path);
    let url = format!("ws://127.0.0.1:{}{path}", server.http_port);
    match tungstenite::connect(url.as_str()) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("second attachment was not refused: {:?}", other.map(|_| ())),
    }
    // Detaching frees the slot.
    drop(first);
    let mut reattached = false;
    for _ in 0..100 {
        if tungstenite::connect(url.as_str()).is_ok() {
            reattached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reattached, "the slot was never released");
}

/// A server whose config allows one extra host name and one origin.
fn start_guarded(blink: &Blink) -> Server {
    blink
        .server()
        .config(
            "[rest]\nallowed_hosts = [\"blink.internal\"]\n\
             allowed_origins = [\"https://console.example\"]\n",
        )
        .start()
}

#[test]
fn foreign_hosts_and_origins_are_refused() {
    let blink = Blink::new();
    let server = start_guarded(&blink);
    let port = server.http_port;

    // DNS rebinding: the browser names the attacker's host, whatever port.
    for host in ["evil.example".to_string(), format!("evil.example:{port}")] {
        let a = server.get_with("/api/sessions", &[("Host", &host)]);
        assert_eq!((a.status, a.code()), (421, "host_not_allowed"), "{host}");
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("evil.example"), "{message}");
    }
    let a = server.post_raw(
        "/api/sessions",
        Some("application/json"),
        br#"{"name":"s1"}"#,
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = server.get_with("/api/sessions/s1", &[("Host", "evil.example")]);
    assert_eq!(a.status, 421);

    // This machine by address or name, and the configured name, pass.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "blink.internal".to_string(),
        format!("blink.internal:{port}"),
    ] {
        let a = server.get_with("/api/sessions", &[("Host", &host)]);
        assert_eq!(a.status, 200, "{host}: {:?}", a.body);
    }
    // Health probes may use any name.
    let a = server.get_with("/api/health", &[("Host", "10.9.8.7:8787")]);
    assert_eq!(a.status, 200);

    // A page's request carries its Origin: only configured ones pass.
    let a = server.get_with("/api/sessions", &[("Origin", "http://evil.example")]);
    assert_eq!((a.status, a.code()), (403, "origin_not_allowed"));
    let a = server.get_with("/api/sessions", &[("Origin", "null")]);
    assert_eq!(a.status, 403);
    let a = server.get_with("/api/sessions", &[("Origin", "https://console.example")]);
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[test]
fn websocket_attach_refuses_foreign_origins() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = start_guarded(&blink);
    server.open_session("s1");
    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({"command": ["sleep", "30"]}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let path = format!(
        "/api/sessions/s1/executions/{}/attach",
        a.body["id"].as_str().unwrap()
    );

    // A page on another site opening the terminal.
    let refused = server
        .try_ws(&path, &[("Origin", "http://evil.example")])
        .expect_err("a foreign origin must be refused");
    assert_eq!(refused.0, 403);
    assert_eq!(refused.1["error"]["code"], "origin_not_allowed");
    // The same through DNS rebinding.
    let refused = server
        .try_ws(&path, &[("Host", "evil.example")])
        .expect_err("a foreign host must be refused");
    assert_eq!(refused.0, 421);

    // No Origin (not a browser), or the configured one: attached.
    for headers in [vec![], vec![("Origin", "https://console.example")]] {
        let mut ws = server
            .try_ws(&path, &headers)
            .unwrap_or_else(|e| panic!("{headers:?} refused: {e:?}"));
        let mut got = Received::default();
        assert!(read_until(&mut ws, &mut got, WAIT, |r| !r
            .events
            .is_empty()));
        assert_eq!(got.events[0]["type"], "attached", "{headers:?}");
        ws.close(None).ok();
    }
}

#[test]
fn key_options_over_rest_are_enforced_or_refused() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    let client = Client::new();
    server.open_session("s1");
    let public = client.public_key("id");

    // Options Blink cannot enforce are refused, naming them.
    for (options, named) in [
        ("bogus-opt", "bogus-opt"),
        (r#"restrict,permitopen="127.0.0.1:http""#, "permitopen"),
        (r#"from="host.example.com""#, "host.example.com"),
    ] {
        let a = server.post(
            "/api/sessions/s1/keys",
            json!({"key": format!("{options} {public}")}),
        );
        assert_eq!((a.status, a.code()), (400, "invalid_argument"), "{options}");
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(named), "{options}: {message}");
    }
    let a = server.get("/api/sessions/s1/keys");
    assert_eq!(a.body["keys"], json!([]));

    // Those it can are stored with the key and applied at login.
    let line = format!(r#"command="echo via-rest-forced",from="127.0.0.1" {public}"#);
    let a = server.post("/api/sessions/s1/keys", json!({ "key": line }));
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(
        a.body["key"]["options"],
        r#"command="echo via-rest-forced",from="127.0.0.1""#
    );
    let out = run(client.ssh(&server, "id", "s1").arg("echo asked"), b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-rest-forced\n");

    // The same key again with other options replaces them.
    let a = server.post(
        "/api/sessions/s1/keys",
        json!({"key": format!("restrict {public}")}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["added"], false);
    assert_eq!(a.body["options_changed"], true);
    let a = server.get("/api/sessions/s1/keys");
    assert_eq!(a.body["keys"][0]["options"], "restrict");
}

#[test]
fn one_sessions_burst_of_runs_does_not_starve_another() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink
        .server()
        .config("[rest]\nmax_concurrent_runs = 1\n")
        .start();
    server.open_session("a");
    server.open_session("b");
    let submit = |session: &str, command: &[&str]| {
        let a = server.post(
            &format!("/api/sessions/{session}/runs"),
            json!({ "command": command }),
        );
        assert_eq!(a.status, 202, "{:?}", a.body);
        a.body["id"].as_str().expect("id").to_string()
    };
    // A's first run holds the one slot while ten more of A's and then one
    // of B's queue.
    let mut a_runs = vec![submit("a", &["sleep", "1"])];
    for _ in 0..10 {
        a_runs.push(submit("a", &["true"]));
    }
    let b_run = submit("b", &["true"]);
    let started = |id: &str| {
        let run = server.wait_run(id);
        assert_eq!(run["state"], "succeeded", "{run}");
        run["started_at_ms"].as_u64().expect("started")
    };
    let b_started = started(&b_run);
    let a_started: Vec<u64> = a_runs.iter().map(|id| started(id)).collect();
    // B's run started second: after A's first, before all of A's others.
    assert!(a_started[0] <= b_started, "{a_started:?} {b_started}");
    for (i, t) in a_started.iter().enumerate().skip(1) {
        assert!(
            b_started <= *t,
            "A's run {i} started before B's: {a_started:?} {b_started}"
        );
    }
}

#[test]
fn one_sessions_burst_cannot_take_every_place_in_the_queue() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink
        .server()
        .config("[rest]\nmax_concurrent_runs = 1\nmax_queued_runs = 8\nmax_queued_runs_per_session = 2\n")
        .start();
    server.open_session("a");
    server.open_session("b");
    let submit = |session: &str, command: &[&str]| {
        server.post(
            &format!("/api/sessions/{session}/runs"),
            json!({ "command": command }),
        )
    };
    // A's first run holds the slot (wait until it runs, so it no longer
    // counts as queued); two more of A's queue; the next is refused.
    let first = submit("a", &["sleep", "3"]);
    assert_eq!(first.status, 202, "{:?}", first.body);
    let id = first.body["id"].as_str().expect("id").to_owned();
    for _ in 0..200 {
        if server.get(&format!("/api/runs/{id}")).body["state"] == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    for _ in 0..2 {
        let a = submit("a", &["true"]);
        assert_eq!(a.status, 202, "{:?}", a.body);
    }
    let refused = submit("a", &["true"]);
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.code(), "session_queue_full");
    // Another session still gets a place.
    let b = submit("b", &["true"]);
    assert_eq!(b.status, 202, "{:?}", b.body);
}
