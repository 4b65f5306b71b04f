//! `blink-cli run` and `session` commands against the real local runtime.

use blink_e2e::{Blink, texts};
use sha2::{Digest, Sha256};

#[test]
fn run_separates_stdout_stderr_and_passes_exit_codes() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let script = blink.script(
        "agent.sh",
        "#!/bin/sh\necho to-out\necho to-err >&2\nexit 3\n",
    );
    let out = blink.run(&["run", script.to_str().unwrap()]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(stdout, "to-out\n");
    assert!(stderr.contains("to-err\n"), "{stderr}");
    assert!(!stdout.contains("to-err"));

    let ok = blink.script("ok.sh", "#!/bin/sh\necho \"args: $*\"\n");
    let out = blink.run(&["run", ok.to_str().unwrap(), "a", "-b"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(texts(&out).0, "args: a -b\n");
}

#[test]
fn run_json_reports_structured_result_with_isolation() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let script = blink.script("j.sh", "#!/bin/sh\nprintf hello\nprintf oops >&2\nexit 7\n");
    let (code, v) = blink.json(&["run", script.to_str().unwrap()]);
    assert_eq!(code, Some(7));
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["stdout"]["data"], "hello");
    assert_eq!(v["stderr"]["data"], "oops");
    assert_eq!(v["timed_out"], false);
    assert_eq!(v["isolation"], "namespace");
    assert!(v["session"].is_null());
}

#[test]
fn one_mib_of_random_bytes_comes_through_stdout_byte_exact() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    // The sandbox makes the bytes and reports their checksum on stderr.
    let script = blink.script(
        "rand.sh",
        "#!/bin/sh\nhead -c 1048576 /dev/urandom > /tmp/r\nsha256sum /tmp/r | cut -d' ' -f1 >&2\ncat /tmp/r\n",
    );
    let out = blink.run(&["run", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", texts(&out).1);
    assert_eq!(out.stdout.len(), 1 << 20);
    let digest = hex::encode(Sha256::digest(&out.stdout));
    assert_eq!(texts(&out).1.trim(), digest);
}

#[test]
fn missing_script_is_named_and_leaves_nothing_behind() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let out = blink.run(&["run", "/nonexistent/agent.sh"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        texts(&out)
            .1
            .contains("script /nonexistent/agent.sh not found"),
        "{}",
        texts(&out).1
    );
    let sandboxes = blink.data_dir.path().join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sandboxes)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name())
                .filter(|n| !n.to_string_lossy().starts_with(".blink-guest"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn ephemeral_sandboxes_are_removed_after_the_run() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let script = blink.script("touch.sh", "#!/bin/sh\necho x > /root/file\n");
    let out = blink.run(&["run", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", texts(&out).1);
    let left: Vec<_> = std::fs::read_dir(blink.data_dir.path().join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("run-"))
        .collect();
    assert!(left.is_empty(), "ephemeral sandboxes left: {left:?}");
}

#[test]
fn timeout_kills_the_run_and_says_so() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let script = blink.script("slow.sh", "#!/bin/sh\necho started\nsleep 60\necho never\n");
    let started = std::time::Instant::now();
    let out = blink.run(&["run", "--timeout", "1", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(124));
    let (stdout, stderr) = texts(&out);
    assert_eq!(stdout, "started\n");
    assert!(stderr.contains("timed out after 1 s"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(50));

    let (code, v) = blink.json(&["run", "--timeout", "1", script.to_str().unwrap()]);
    assert_eq!(code, Some(124));
    assert_eq!(v["timed_out"], true);
    assert_eq!(v["signal"], 9);
}

#[test]
fn unknown_registry_image_is_refused_with_import_hint() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let script = blink.script("a.sh", "#!/bin/sh\ntrue\n");
    let out = blink.run(&["run", "--image", "alpine:3.20", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = texts(&out).1;
    assert!(stderr.contains("alpine:3.20"), "{stderr}");
    assert!(stderr.contains("blink-cli image import"), "{stderr}");
}
