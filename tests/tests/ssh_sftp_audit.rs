//! The audit log of SFTP, with OpenSSH's `sftp -b`: the server's audit
//! file holds one `blink::sftp` line per operation, with its paths and
//! byte counts, and `blink_sftp_operations_total` moves with the requests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use blink_e2e::Server;
use blink_e2e::ssh::{SshFixture, sha};
use blink_e2e::texts;
use rand::RngCore;
use serde_json::Value;

/// `blink_sftp_operations_total` by op, from `GET /metrics`.
fn sftp_ops(server: &Server) -> HashMap<String, f64> {
    let (status, _, body) = server.get_bytes("/metrics", &[]);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("utf-8");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("blink_sftp_operations_total{op=\"")?;
            let (op, value) = rest.split_once("\"} ")?;
            Some((op.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The audit file's `blink::sftp` lines, once `done` holds of them (the
/// writer is a thread of its own: lines land a moment later).
fn sftp_lines(path: &std::path::Path, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .filter(|v: &Value| v["target"] == "blink::sftp")
            .collect();
        if done(&lines) || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn with_op<'a>(lines: &'a [Value], ops: &[&str]) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| ops.iter().any(|op| l["op"] == *op))
        .collect()
}

#[test]
fn every_sftp_operation_is_in_the_audit_log_with_paths_and_bytes() {
    let Some(f) = SshFixture::new() else { return };
    let client = &f.client;
    let audit = f.blink.data_dir.path().join("audit").join("audit.jsonl");

    // Not a multiple of any transfer size.
    let size = 3 * 1024 * 1024 + 4321;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    let local = client.path("local");
    std::fs::write(&local, &data).expect("write");
    let back = client.path("back");

    let before = sftp_ops(&f.server);
    let batch = format!(
        "put {local} up\nget up {back}\nrename up moved\nmkdir dir\nls\nrm moved\nrmdir dir\n",
        local = local.display(),
        back = back.display()
    );
    let out = f.sftp(&batch);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(sha(&std::fs::read(&back).expect("back")), sha(&data));

    let lines = sftp_lines(&audit, |l| with_op(l, &["rmdir"]).len() == 1);
    let shown = || {
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Every line says whose it is.
    for line in &lines {
        assert_eq!(line["session"], "s1", "{line}");
        let peer = line["peer"].as_str().expect("peer");
        assert!(peer.starts_with("127.0.0.1:"), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }

    // put: one file line, written whole; get: one, read whole.
    let files = with_op(&lines, &["file"]);
    assert_eq!(files.len(), 2, "{}", shown());
    let (put, get) = (files[0], files[1]);
    assert_eq!(put["path"], "/root/up", "{put}");
    assert_eq!(put["bytes_written"], size, "{put}");
    assert_eq!(put["bytes_read"], 0, "{put}");
    let flags = put["flags"].as_str().expect("flags");
    for flag in ["write", "create", "truncate"] {
        assert!(flags.split(',').any(|f| f == flag), "{put}");
    }
    assert_eq!(put["result"], "ok", "{put}");
    assert_eq!(get["path"], "/root/up", "{get}");
    assert_eq!(get["bytes_read"], size, "{get}");
    assert_eq!(get["bytes_written"], 0, "{get}");
    assert_eq!(get["flags"], "read", "{get}");
    assert_eq!(get["result"], "ok", "{get}");

    // OpenSSH renames with posix-rename when the server offers it.
    let renames = with_op(&lines, &["rename", "posix-rename"]);
    assert_eq!(renames.len(), 1, "{}", shown());
    assert_eq!(renames[0]["path"], "/root/up");
    assert_eq!(renames[0]["to"], "/root/moved");
    assert_eq!(renames[0]["result"], "ok");

    // ls: one line for the directory, with what it held (`moved`,
    // `dir`, and whatever else the image has there).
    let lists = with_op(&lines, &["list"]);
    assert_eq!(lists.len(), 1, "{}", shown());
    assert_eq!(lists[0]["path"], "/root");
    assert!(lists[0]["entries"].as_u64() >= Some(2), "{}", lists[0]);
    assert_eq!(lists[0]["result"], "ok");

    for (op, path) in [
        ("mkdir", "/root/dir"),
        ("remove", "/root/moved"),
        ("rmdir", "/root/dir"),
    ] {
        let found = with_op(&lines, &[op]);
        assert_eq!(found.len(), 1, "{op}: {}", shown());
        assert_eq!(found[0]["path"], path, "{op}");
        assert_eq!(found[0]["result"], "ok", "{op}");
        assert!(found[0].get("to").is_none(), "{op}: {}", found[0]);
    }

    // A failure is logged with the server's status.
    let out = f.sftp("rm /root/not-there\n");
    assert_ne!(out.status.code(), Some(0));
    let lines = sftp_lines(&audit, |l| with_op(l, &["remove"]).len() == 2);
    let removes = with_op(&lines, &["remove"]);
    assert_eq!(removes.len(), 2, "{removes:?}");
    assert_eq!(removes[1]["path"], "/root/not-there");
    assert_eq!(removes[1]["result"], "no_such_file");

    // The observation never gave up (it warns when it does).
    let log = f.server.log();
    assert!(!log.contains("sftp audit stopped"), "{log}");

    // Every request is counted by op (transfers go in pieces of at most
    // the 64 KiB the server advertises).
    let after = sftp_ops(&f.server);
    let delta = |op: &str| after.get(op).unwrap_or(&0.0) - before.get(op).unwrap_or(&0.0);
    let chunks = size.div_ceil(64 * 1024) as f64;
    assert!(delta("write") >= chunks, "{after:?}");
    assert!(delta("read") >= chunks, "{after:?}");
    assert!(delta("open") >= 2.0, "{after:?}");
    assert_eq!(delta("mkdir"), 1.0, "{after:?}");
    assert_eq!(delta("rmdir"), 1.0, "{after:?}");
    assert_eq!(delta("remove"), 2.0, "{after:?}");
    assert_eq!(delta("init"), 2.0, "{after:?}");
    assert!(delta("realpath") >= 2.0, "{after:?}");
}
