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

// --- Disk layers: what snapshots, restores and clones share -------------

/// Like TREE, over the places the tests below change.
const LAYER_TREE: &str = "find /root /etc /home /usr/share -xdev | sort | while read -r p; do \
    if [ -L \"$p\" ]; then echo \"$p link $(readlink \"$p\")\"; \
    elif [ -f \"$p\" ]; then echo \"$p $(stat -c '%a %u %g %s' \"$p\") $(sha256sum < \"$p\" | cut -c1-16)\"; \
    else echo \"$p $(stat -c '%F %a %u %g' \"$p\")\"; fi; done";

fn stop(server: &blink_e2e::Server, name: &str) {
    let a = server.post_raw(&format!("/api/sessions/{name}/stop?force=true"), None, b"");
    assert_eq!(a.status, 200, "{:?}", a.body);
}

fn snapshot(server: &blink_e2e::Server, name: &str, snapshot: &str) -> Value {
    let a = server.post(
        &format!("/api/sessions/{name}/checkpoints"),
        json!({"snapshot": snapshot}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body
}

fn clone(server: &blink_e2e::Server, name: &str, from: &str) -> Value {
    let a = server.post("/api/sessions", json!({"name": name, "from": from}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["session"].clone()
}

/// Host bytes `work` added to the data dir.
fn host_bytes_of(blink: &Blink, work: impl FnOnce()) -> u64 {
    let before = blink_e2e::allocated(blink.data_dir.path());
    work();
    blink_e2e::allocated(blink.data_dir.path()).saturating_sub(before)
}

fn layer_files(blink: &Blink) -> Vec<String> {
    std::fs::read_dir(blink.data_dir.path().join("disk-layers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The host uid owning a path of a running session's disk.
fn host_uid(blink: &Blink, session: &Value, path: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let id = session["box_id"].as_str().expect("box_id");
    std::fs::symlink_metadata(blink.disk_path(id, path))
        .expect("stat")
        .uid()
}

/// A clone of a stopped session with 64 MiB of its own costs next to
/// nothing on the host (the source's disk becomes a shared layer), shows
/// the data with its own ids, and clone and source never see each other's
/// writes: new files, deletions of the shared layer's files, a directory
/// replaced, owners and modes changed over the layer.
#[test]
fn a_clone_of_a_stopped_session_shares_its_disk_and_nothing_it_writes() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    server.sh(
        "a",
        "dd if=/dev/urandom of=/root/big bs=1M count=64 2>/dev/null \
         && mkdir -p /root/dir && echo keep > /root/dir/k && echo old > /root/gone \
         && echo o > /root/owned && chmod 644 /root/owned \
         && echo 'u:x:1000:1000::/home/u:/bin/sh' >> /etc/passwd && mkdir -p /home/u \
         && chown 1000:1000 /home/u && su u -s /bin/sh -c 'echo mine > /home/u/f' && sync",
    );
    let sum = server.sh("a", "sha256sum < /root/big");
    stop(&server, "a");

    let mut b = Value::Null;
    let cost = host_bytes_of(&blink, || b = clone(&server, "b", "a"));
    assert!(cost < 1 << 20, "a clone took {cost} bytes of the host");
    assert_eq!(server.sh("b", "sha256sum < /root/big"), sum);
    // Ids as the clone's own: inside, the source's uid 1000 is 1000; on
    // the host, in the clone's range, not the source's.
    assert_eq!(
        server.sh("b", "stat -c '%u %g' /root/big /home/u /home/u/f"),
        "0 0\n1000 1000\n1000 1000\n"
    );
    server.sh("a", "true");
    let a = server.get("/api/sessions/a").body;
    let b_root = host_uid(&blink, &b, "/");
    assert_ne!(b_root, host_uid(&blink, &a, "/"));
    assert_eq!(host_uid(&blink, &b, "/home/u/f"), b_root + 1000);
    assert_eq!(host_uid(&blink, &b, "/root/big"), b_root);

    // Usage: the clone's own bytes, and the shared layer apart.
    let disk = &server.get("/api/sessions/b").body["disk"];
    assert_eq!(disk["layers"], 1, "{disk}");
    assert!(disk["layers_bytes"].as_u64().unwrap() >= 64 << 20, "{disk}");
    assert!(disk["used_bytes"].as_u64().unwrap() < 16 << 20, "{disk}");

    server.sh(
        "b",
        "echo b > /root/new-b && rm /root/gone && rm -rf /root/dir && mkdir /root/dir \
         && echo b > /root/dir/only && chown 5:6 /root/owned && chmod 600 /root/owned \
         && echo b >> /root/big && rm /home/u/f",
    );
    server.sh(
        "a",
        "echo a > /root/new-a && rm /root/dir/k && chmod 640 /root/gone && chown 1000 /root/owned",
    );
    assert_eq!(server.sh("a", "sha256sum < /root/big"), sum);
    assert_eq!(
        server.sh(
            "a",
            "ls /root /root/dir; stat -c '%a %u' /root/gone /root/owned; cat /home/u/f"
        ),
        "/root:\nbig\ndir\ngone\nnew-a\nowned\n\n/root/dir:\n640 0\n644 1000\nmine\n"
    );
    assert_eq!(
        server.sh(
            "b",
            "ls /root /root/dir /home/u; stat -c '%a %u %g' /root/owned; cat /root/dir/only"
        ),
        "/home/u:\n\n/root:\nbig\ndir\nnew-b\nowned\n\n/root/dir:\nonly\n600 5 6\nb\n"
    );
    assert_ne!(server.sh("b", "sha256sum < /root/big"), sum);
    // Both survive a stop as they are.
    stop(&server, "b");
    assert_eq!(server.sh("b", "cat /root/new-b; ls /root/dir"), "b\nonly\n");
}

/// A snapshot of a stopped session, a restore, and clones of snapshots copy
/// nothing; a clone of a clone of a snapshot (a chain of three layers)
/// reads as its source did, deletions and replaced directories of older
/// layers included.
#[test]
fn snapshots_restores_and_chains_of_clones_copy_nothing() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    server.sh(
        "a",
        "dd if=/dev/urandom of=/root/big bs=1M count=64 2>/dev/null \
         && echo a > /root/from-a && mkdir -p /root/dir-a && echo x > /root/dir-a/x \
         && rm /etc/hosts && sync",
    );
    let sum = server.sh("a", "sha256sum < /root/big");
    stop(&server, "a");
    let mut made = Value::Null;
    let cost = host_bytes_of(&blink, || made = snapshot(&server, "a", "s1"));
    assert!(
        cost < 1 << 20,
        "a snapshot of a stopped session took {cost} bytes"
    );
    assert!(made["size_bytes"].as_u64().unwrap() >= 64 << 20, "{made}");
    let at_s1 = server.sh("a", LAYER_TREE);

    server.sh("a", "echo later > /root/later && rm /root/from-a");
    stop(&server, "a");
    let cost = host_bytes_of(&blink, || {
        let r = server.post_raw("/api/sessions/a/checkpoints/s1/restore", None, b"");
        assert_eq!(r.status, 200, "{:?}", r.body);
    });
    assert!(cost < 1 << 20, "a restore took {cost} bytes");
    assert_eq!(
        server.sh("a", LAYER_TREE),
        at_s1,
        "the restore is not exact"
    );

    let cost = host_bytes_of(&blink, || {
        clone(&server, "b", "a@s1");
    });
    assert!(cost < 1 << 20, "a clone of a snapshot took {cost} bytes");
    server.sh(
        "b",
        "rm /root/from-a && rm -rf /root/dir-a && mkdir /root/dir-a && echo b > /root/dir-a/y \
         && echo b > /root/from-b",
    );
    stop(&server, "b");
    snapshot(&server, "b", "s2");
    clone(&server, "c", "b@s2");
    server.sh("c", "echo c > /root/from-c && rm /etc/group");
    let c_tree = server.sh("c", LAYER_TREE);
    stop(&server, "c");
    let d = clone(&server, "d", "c");
    assert_eq!(d["disk"]["layers"], 3, "{d}");
    let d_tree = server.sh("d", LAYER_TREE);
    assert_eq!(d_tree, c_tree);
    assert_eq!(
        server.sh(
            "d",
            "ls /root /root/dir-a; ls /etc/hosts /etc/group 2>&1 | wc -l; sha256sum < /root/big"
        ),
        format!("/root:\nbig\ndir-a\nfrom-b\nfrom-c\n\n/root/dir-a:\ny\n2\n{sum}")
    );
    // Every older link of the chain still reads as it did.
    assert_eq!(server.sh("a", LAYER_TREE), at_s1);
}

/// Removing a source and its snapshots leaves its clones whole; once the
/// clones go too, no layer is left on the host.
#[test]
fn removing_sources_leaves_clones_whole_and_the_last_user_frees_every_layer() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    server.sh(
        "a",
        "dd if=/dev/urandom of=/root/big bs=1M count=8 2>/dev/null && echo 1 > /root/v",
    );
    snapshot(&server, "a", "s");
    clone(&server, "b", "a@s");
    server.sh("a", "echo 2 > /root/v");
    clone(&server, "c", "a");
    server.sh("c", "echo c > /root/c");
    stop(&server, "c");
    clone(&server, "d", "c");
    assert!(!layer_files(&blink).is_empty());
    assert_eq!(server.delete("/api/sessions/a").status, 204);
    assert_eq!(server.sh("b", "cat /root/v"), "1\n");
    assert_eq!(server.sh("c", "cat /root/v /root/c"), "2\nc\n");
    assert_eq!(server.sh("d", "cat /root/v /root/c"), "2\nc\n");
    for name in ["c", "b"] {
        assert_eq!(server.delete(&format!("/api/sessions/{name}")).status, 204);
    }
    assert_eq!(server.sh("d", "cat /root/v /root/c"), "2\nc\n");
    assert!(!layer_files(&blink).is_empty(), "d's layers went");
    assert_eq!(server.delete("/api/sessions/d").status, 204);
    assert_eq!(layer_files(&blink), Vec::<String>::new(), "layers left");
}

/// Past the depth limit, the top of a chain is flattened into one layer:
/// every snapshot still restores exactly, deletions made in flattened
/// layers stay deleted.
#[test]
fn a_chain_past_the_depth_limit_is_flattened_and_reads_the_same() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    let a = server.post("/api/sessions", json!({"name": "a", "disk_mib": 64}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let mut trees = Vec::new();
    for i in 0..19 {
        // Each step: a file, one of three steps ago deleted, a directory
        // replaced now and then; then a snapshot of the stopped session
        // (a new layer each time).
        let mut script = format!("echo {i} > /root/n{i} && chown {i} /root/n{i}");
        if i >= 3 {
            script += &format!(" && rm /root/n{}", i - 3);
        }
        if i % 5 == 0 {
            script += &format!(" && rm -rf /root/d && mkdir /root/d && echo {i} > /root/d/at-{i}");
        }
        server.sh("a", &script);
        trees.push(server.sh("a", LAYER_TREE));
        stop(&server, "a");
        snapshot(&server, "a", &format!("s{i}"));
    }
    let info = server.get("/api/sessions/a").body;
    let layers = info["disk"]["layers"].as_u64().unwrap();
    assert!(layers < 16, "never flattened: {layers} layers");
    assert_eq!(
        server.sh("a", "ls /root /root/d"),
        "/root:\nd\nn16\nn17\nn18\n\n/root/d:\nat-15\n"
    );
    assert_eq!(server.sh("a", LAYER_TREE), trees[18]);
    for i in [2, 9, 15, 18] {
        let r = server.post_raw(
            &format!("/api/sessions/a/checkpoints/s{i}/restore?force=true"),
            None,
            b"",
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(server.sh("a", LAYER_TREE), trees[i], "snapshot s{i}");
    }
    clone(&server, "b", "a@s17");
    assert_eq!(server.sh("b", LAYER_TREE), trees[17]);
}

/// What a server killed mid-snapshot leaves is cleaned up when the next
/// one starts: a half-made layer, a layer made whose disk was not yet
/// switched (a second name of the disk image), a fresh disk not yet in
/// place, a snapshot record not yet written. The session and its real
/// snapshot are whole.
#[test]
fn leftovers_of_a_killed_snapshot_are_removed_at_start() {
    let Some((blink, mut server)) = server_fixture() else {
        return;
    };
    let id = server.open_session("a");
    server.sh("a", "echo 1 > /root/v");
    stop(&server, "a");
    snapshot(&server, "a", "s");
    server.sh("a", "echo 2 > /root/v");
    stop(&server, "a");
    let layers = blink.data_dir.path().join("disk-layers");
    let real = layer_files(&blink);
    assert_eq!(real.len(), 2, "{real:?}");
    assert!(server.signal_and_wait("KILL").code().is_none());

    let boxdir = blink.data_dir.path().join("sandboxes").join(&id);
    std::fs::write(layers.join(".0123.partial"), b"half").unwrap();
    let orphan = "0123456789abcdef0123456789abcdef";
    std::fs::hard_link(
        boxdir.join("disk.img"),
        layers.join(format!("{orphan}.img")),
    )
    .unwrap();
    std::fs::write(
        layers.join(format!("{orphan}.json")),
        br#"{"parent":null,"id_root":0,"size_bytes":0,"created_at":0}"#,
    )
    .unwrap();
    std::fs::write(boxdir.join(".disk.img.new"), b"fresh").unwrap();
    std::fs::write(boxdir.join("snapshots/.t.json.tmp"), b"{").unwrap();

    let server = blink.server().start();
    let mut left = layer_files(&blink);
    left.sort();
    let mut want = real.clone();
    want.sort();
    assert_eq!(left, want);
    assert!(!boxdir.join(".disk.img.new").exists());
    assert!(!boxdir.join("snapshots/.t.json.tmp").exists());
    {
        use std::os::unix::fs::MetadataExt;
        let disk = std::fs::metadata(boxdir.join("disk.img")).unwrap();
        assert_eq!(disk.nlink(), 1, "the disk image kept a second name");
    }
    assert_eq!(server.sh("a", "cat /root/v"), "2\n");
    let r = server.post_raw(
        "/api/sessions/a/checkpoints/s/restore?force=true",
        None,
        b"",
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(server.sh("a", "cat /root/v"), "1\n");
}
