//! Snapshots ("checkpoints") of session disks and clones, over REST and
//! the CLI: restore puts the disk back exactly, a running session is
//! frozen for the copy and keeps running, clones are independent, and bad
//! requests get clear errors.

use blink_e2e::{Blink, server_fixture, texts};
use serde_json::{Value, json};

/// Every file under the given roots as "path mode uid gid size sha/link",
/// sorted: two equal listings are two equal trees.
const TREE: &str = "find /root /etc /var/blink -xdev | sort | while read -r p; do \
    if [ -L \"$p\" ]; then echo \"$p link $(readlink \"$p\")\"; \
    elif [ -f \"$p\" ]; then echo \"$p $(stat -c '%a %u %g %s %Y' \"$p\") $(sha256sum < \"$p\" | cut -c1-16)\"; \
    else echo \"$p $(stat -c '%F %a %u %g' \"$p\")\"; fi; done";

#[test]
fn restore_puts_a_running_sessions_disk_back_exactly() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    let a = server.post("/api/sessions", json!({"name": "a", "warm": true}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    server.sh(
        "a",
        "mkdir -p /root/d && echo one > /root/d/f && chmod 640 /root/d/f && chown 7:8 /root/d/f \
         && ln -s d/f /root/link && ln /root/d/f /root/hard && rm /etc/hostname 2>/dev/null; \
         dd if=/dev/urandom of=/root/big bs=1M count=8 2>/dev/null; true",
    );
    // A process runs through the snapshot, and keeps running.
    let spawned = server.post(
        "/api/sessions/a/spawn",
        json!({"command": ["sh", "-c", "i=0; while [ $i -lt 600 ]; do echo $i >> /root/ticks; i=$((i+1)); sleep 0.05; done"]}),
    );
    assert_eq!(spawned.status, 201, "{:?}", spawned.body);
    let before = server.sh("a", TREE);

    let snap = server.post("/api/sessions/a/checkpoints", json!({"snapshot": "s1"}));
    assert_eq!(snap.status, 201, "{:?}", snap.body);
    assert_eq!(snap.body["name"], "s1");
    assert!(
        snap.body["size_bytes"].as_u64().unwrap() >= 8 << 20,
        "{:?}",
        snap.body
    );
    assert!(snap.body["frozen_ms"].is_u64(), "{:?}", snap.body);
    let ticks_at_snapshot = server.sh("a", "wc -l < /root/ticks");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ticks_later = server.sh("a", "wc -l < /root/ticks");
    assert_ne!(ticks_at_snapshot, ticks_later, "the session stayed frozen");

    // Change everything that can change, then restore (the spawn is
    // stopped with the session).
    server.sh(
        "a",
        "echo two > /root/d/f; chmod 600 /root/d/f; rm /root/link /root/big; touch /root/new; \
         echo x > /etc/hostname; rm /etc/passwd",
    );
    let list = server.get("/api/sessions/a/checkpoints");
    assert_eq!(list.status, 200);
    assert_eq!(list.body["checkpoints"][0]["name"], "s1", "{:?}", list.body);
    let restored = server.post_raw(
        "/api/sessions/a/checkpoints/s1/restore?force=true",
        None,
        b"",
    );
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(
        restored.body["state"], "running",
        "a warm session runs again"
    );

    let after = server.sh("a", TREE);
    // /root/ticks grew between the listing and the snapshot; compare the
    // rest exactly, and ticks as a whole-line prefix of the later file.
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("/root/ticks"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&before), strip(&after));
    let ticks = server.sh("a", "cat /root/ticks");
    for (i, line) in ticks.lines().enumerate() {
        assert_eq!(
            line,
            i.to_string(),
            "a torn write in the snapshot: {ticks:?}"
        );
    }
    assert!(!server.sh("a", "ls /root").contains("new"));
}

#[test]
fn clones_share_nothing_they_write() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    server.sh("a", "echo from-a > /root/f");
    let snap = server.post("/api/sessions/a/checkpoints", json!({"snapshot": "base"}));
    assert_eq!(snap.status, 201, "{:?}", snap.body);
    server.sh("a", "echo later > /root/f");

    let b = server.post("/api/sessions", json!({"name": "b", "from": "a@base"}));
    assert_eq!(b.status, 201, "{:?}", b.body);
    let c = server.post("/api/sessions", json!({"name": "c", "from": "a"}));
    assert_eq!(c.status, 201, "{:?}", c.body);
    assert_eq!(server.sh("b", "cat /root/f"), "from-a\n");
    assert_eq!(server.sh("c", "cat /root/f"), "later\n");
    // Files of a clone belong to the clone's root.
    assert_eq!(server.sh("b", "stat -c '%u %g' /root/f"), "0 0\n");
    server.sh("b", "echo b > /root/f; touch /root/only-b");
    server.sh("c", "echo c > /root/f");
    assert_eq!(server.sh("a", "cat /root/f; ls /root"), "later\nf\n");
    assert_eq!(server.sh("b", "cat /root/f"), "b\n");
    assert_eq!(server.sh("c", "cat /root/f; ls /root"), "c\nf\n");
    // Removing the source leaves its clones whole.
    assert_eq!(server.delete("/api/sessions/a").status, 204);
    assert_eq!(server.sh("b", "cat /root/f"), "b\n");
}

fn code(a: &blink_e2e::rest::Answer) -> (u16, String) {
    (a.status, a.code().to_owned())
}

#[test]
fn bad_snapshot_requests_get_clear_errors() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    let post = |body: Value| server.post("/api/sessions/a/checkpoints", body);
    assert_eq!(code(&post(json!({"snapshot": "s1"}))).0, 201);
    assert_eq!(
        code(&post(json!({"snapshot": "s1"}))),
        (409, "snapshot_exists".into())
    );
    assert_eq!(code(&post(json!({"snapshot": "../x"}))).0, 400);
    assert_eq!(code(&post(json!({"snapshot": ""}))).0, 400);
    assert_eq!(code(&post(json!({}))).0, 400);
    let none = server.post("/api/sessions/nope/checkpoints", json!({"snapshot": "s"}));
    assert_eq!(code(&none), (404, "session_not_found".into()));
    let restore = server.post_raw("/api/sessions/a/checkpoints/zz/restore", None, b"");
    assert_eq!(code(&restore), (404, "snapshot_not_found".into()));
    assert!(
        restore.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"zz\"")
    );
    assert_eq!(server.delete("/api/sessions/a/checkpoints/s1").status, 204);
    assert_eq!(
        code(&server.delete("/api/sessions/a/checkpoints/s1")),
        (404, "snapshot_not_found".into())
    );
    // Clones: an unknown source or snapshot, a taken name, a bad source.
    let open = |body: Value| server.post("/api/sessions", body);
    assert_eq!(
        code(&open(json!({"name": "b", "from": "ghost"}))),
        (404, "session_not_found".into())
    );
    assert_eq!(
        code(&open(json!({"name": "b", "from": "a@ghost"}))),
        (404, "snapshot_not_found".into())
    );
    assert_eq!(
        code(&open(json!({"name": "a", "from": "a"}))),
        (409, "session_exists".into())
    );
    assert_eq!(code(&open(json!({"name": "b", "from": "a@"}))).0, 400);
    assert_eq!(
        server.get("/api/sessions/b").status,
        404,
        "a failed clone left a session"
    );
    let product = server.get("/api/product");
    assert_eq!(
        product.body["features"]["checkpoints"], true,
        "{:?}",
        product.body
    );
}

#[test]
fn the_cli_speaks_the_seeds_words() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "my-agent"]);
    blink.ok(&[
        "session",
        "exec",
        "--name",
        "my-agent",
        "--",
        "sh",
        "-c",
        "echo 1 > /root/step",
    ]);
    let made = blink.ok(&[
        "session",
        "checkpoint",
        "--name",
        "my-agent",
        "--snapshot",
        "step-1",
    ]);
    assert!(made.contains("snapshot step-1"), "{made}");
    blink.ok(&[
        "session",
        "exec",
        "--name",
        "my-agent",
        "--",
        "sh",
        "-c",
        "echo 2 > /root/step",
    ]);
    let listed = blink.ok(&["session", "list", "--name", "my-agent"]);
    assert!(listed.contains("step-1"), "{listed}");
    let (code, json) = blink.json(&["session", "list", "--name", "my-agent"]);
    assert_eq!(code, Some(0));
    assert_eq!(json["checkpoints"][0]["name"], "step-1", "{json}");
    blink.ok(&[
        "session",
        "restore",
        "--name",
        "my-agent",
        "--snapshot",
        "step-1",
    ]);
    let step = blink.ok(&[
        "session",
        "exec",
        "--name",
        "my-agent",
        "--",
        "cat",
        "/root/step",
    ]);
    assert_eq!(step, "1\n");
    blink.ok(&[
        "session",
        "open",
        "--name",
        "twin",
        "--from",
        "my-agent@step-1",
    ]);
    let twin = blink.ok(&[
        "session",
        "exec",
        "--name",
        "twin",
        "--",
        "cat",
        "/root/step",
    ]);
    assert_eq!(twin, "1\n");
    blink.ok(&[
        "session",
        "checkpoint",
        "rm",
        "--name",
        "my-agent",
        "--snapshot",
        "step-1",
    ]);
    let out = blink.run(&[
        "session",
        "restore",
        "--name",
        "my-agent",
        "--snapshot",
        "step-1",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        texts(&out).1.contains("no snapshot \"step-1\""),
        "{:?}",
        texts(&out)
    );
}
