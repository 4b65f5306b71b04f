//! Session disks: copy-on-write over a shared image tree (an untouched
//! session costs next to nothing and copies nothing), a quota per session
//! (ENOSPC inside, nothing outside), usage reported, sizes validated.

use blink_e2e::{Blink, allocated, server_fixture, texts};
use serde_json::json;

fn box_dir(blink: &Blink, opened: &serde_json::Value) -> std::path::PathBuf {
    let id = opened["session"]["box_id"].as_str().expect("box_id");
    blink.data_dir.path().join("sandboxes").join(id)
}

#[test]
fn an_untouched_session_costs_little_and_copies_no_image() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let (code, a) = blink.json(&["session", "open", "--name", "a"]);
    assert_eq!(code, Some(0), "{a}");
    let (code, b) = blink.json(&["session", "open", "--name", "b"]);
    assert_eq!(code, Some(0), "{b}");
    for opened in [&a, &b] {
        let dir = box_dir(&blink, opened);
        assert!(!dir.join("rootfs").exists(), "the image was copied");
        let bytes = allocated(&dir);
        assert!(bytes <= 1 << 20, "an untouched session takes {bytes} bytes");
        // 10 GiB by default, of which next to nothing is used.
        assert_eq!(
            opened["session"]["disk"]["size_bytes"],
            10u64 << 30,
            "{opened}"
        );
        assert!(
            opened["session"]["disk"]["used_bytes"]
                .as_u64()
                .expect("used")
                <= 1 << 20
        );
    }
    // One tree for both.
    let trees: Vec<_> = std::fs::read_dir(blink.data_dir.path().join("image-trees"))
        .expect("trees")
        .flatten()
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");

    // The session's changes persist across a stop, and stay its own.
    blink.ok(&[
        "session",
        "exec",
        "--name",
        "a",
        "--",
        "sh",
        "-c",
        "echo mine > /etc/motd",
    ]);
    blink.ok(&["session", "stop", "--name", "a"]);
    let out = blink.ok(&["session", "exec", "--name", "a", "--", "cat", "/etc/motd"]);
    assert_eq!(out, "mine\n");
    let out = blink.run(&["session", "exec", "--name", "b", "--", "cat", "/etc/motd"]);
    assert_ne!(texts(&out).0, "mine\n", "a's change shows in b");
}

#[test]
fn a_full_disk_gives_enospc_inside_and_nothing_outside() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    let a = server.post("/api/sessions", json!({"name": "small", "disk_mib": 64}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["session"]["disk"]["size_bytes"], 64u64 << 20);
    server.open_session("big");
    let run = |session: &str, script: &str| {
        server.run_wait(
            &format!("/api/sessions/{session}/runs"),
            json!({"command": ["sh", "-c", script]}),
        )
    };
    let full = run(
        "small",
        "dd if=/dev/zero of=/root/fill bs=1M count=100; echo rc=$?",
    );
    let stderr = full["stderr"]["data"].as_str().unwrap_or("");
    assert!(
        stderr.contains("No space left on device"),
        "no ENOSPC: {full}"
    );
    assert!(blink_e2e::rest::stdout(&full).contains("rc=1"), "{full}");
    // The full session still works, other sessions are unaffected.
    let ok = run(
        "big",
        "dd if=/dev/zero of=/root/fill bs=1M count=100 2>/dev/null; wc -c < /root/fill",
    );
    assert_eq!(blink_e2e::rest::stdout(&ok).trim(), "104857600", "{ok}");
    let used = |name: &str| {
        server.get(&format!("/api/sessions/{name}")).body["disk"]["used_bytes"]
            .as_u64()
            .expect("used_bytes")
    };
    assert!(
        used("small") >= 50 << 20,
        "usage not reported: {}",
        used("small")
    );
    // Space freed inside goes back to the host.
    run("small", "rm /root/fill && sync");
    let mut freed = false;
    for _ in 0..100 {
        if used("small") < 16 << 20 {
            freed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(freed, "freed space stayed on the host: {}", used("small"));
}

#[test]
fn disk_sizes_out_of_range_are_refused_and_leave_nothing() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    let a = server.post("/api/sessions", json!({"name": "tiny", "disk_mib": 1}));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("disk size"),
        "{:?}",
        a.body
    );
    assert_eq!(server.get("/api/sessions/tiny").status, 404);
    let left: Vec<_> = std::fs::read_dir(blink.data_dir.path().join("sandboxes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let out = blink.run(&["session", "open", "--name", "tiny", "--disk-size", "12X"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(texts(&out).1.contains("unit"), "{:?}", texts(&out));
}

#[test]
fn a_disk_survives_quick_stop_and_start_cycles() {
    // The kernel unmounts a stopped sandbox's disk a moment after its end;
    // a start that mounted it again before would run two filesystems on
    // one image ("Structure needs cleaning").
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("cycle");
    for i in 0..15 {
        let run = server.run_wait(
            "/api/sessions/cycle/runs",
            json!({"command": ["sh", "-c", format!("echo {i} >> /root/log && sync && wc -l < /root/log")]}),
        );
        assert_eq!(run["exit_code"], 0, "round {i}: {run}");
        assert_eq!(
            blink_e2e::rest::stdout(&run).trim(),
            (i + 1).to_string(),
            "round {i}"
        );
        let a = server.post_raw("/api/sessions/cycle/stop?force=true", None, b"");
        assert_eq!(a.status, 200, "round {i}: {:?}", a.body);
    }
}
