//! Named sessions through `blink-cli session ...` on the real local runtime.

use std::process::Command;

use blink_e2e::{Blink, bin, run, texts, wait_for_file};
use rand::RngCore;

#[test]
fn open_reports_created_then_existing_and_lists_isolation() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let (code, v) = blink.json(&["session", "open", "--name", "my-agent"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["created"], true);
    assert_eq!(v["session"]["isolation"], "namespace");
    let box_id = v["session"]["box_id"].as_str().unwrap().to_owned();
    let (_, again) = blink.json(&["session", "open", "--name", "my-agent"]);
    assert_eq!(again["created"], false);
    assert_eq!(again["session"]["box_id"], box_id.as_str());

    let human = blink.ok(&["session", "ls"]);
    assert!(
        human.contains("my-agent") && human.contains("namespace"),
        "{human}"
    );
    let (_, list) = blink.json(&["session", "ls"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, info) = blink.json(&["session", "info", "--name", "my-agent"]);
    assert_eq!(info["box_id"], box_id.as_str());
    assert_eq!(info["state"], "stopped");
}

#[test]
fn files_survive_stop_and_new_processes() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "keeper"]);
    blink.ok(&[
        "session",
        "exec",
        "--name",
        "keeper",
        "--",
        "sh",
        "-c",
        "echo remembered > /var/blink/memory/note",
    ]);
    blink.ok(&["session", "stop", "--name", "keeper"]);
    // Every CLI call is a new process: the disk outlives them all.
    let out = blink.ok(&[
        "session",
        "exec",
        "--name",
        "keeper",
        "--",
        "cat",
        "/var/blink/memory/note",
    ]);
    assert_eq!(out, "remembered\n");
}

#[test]
fn session_run_copies_a_host_script_and_exec_passes_exit_codes() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "runner"]);
    let script = blink.script("s.sh", "#!/bin/sh\necho \"in $(hostname)\"\nexit 42\n");
    let out = blink.run(&[
        "session",
        "run",
        "--name",
        "runner",
        script.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(texts(&out).0, "in runner\n");
    let (code, v) = blink.json(&[
        "session",
        "run",
        "--name",
        "runner",
        script.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(42));
    assert_eq!(v["session"], "runner");

    let out = blink.run(&[
        "session", "exec", "--name", "runner", "--", "sh", "-c", "exit 0",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = blink.run(&[
        "session",
        "exec",
        "--name",
        "runner",
        "--",
        "no-such-program",
    ]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        texts(&out).1.contains("no-such-program"),
        "{}",
        texts(&out).1
    );
}

#[test]
fn stdin_streams_through_cat_byte_exact() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "pipe"]);
    let mut data = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut data);
    let mut cat = blink.cli(&["session", "exec", "--name", "pipe", "--", "cat"]);
    let out = run(&mut cat, &data);
    assert!(out.status.success(), "{}", texts(&out).1);
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "bytes differ");
}

#[test]
fn pty_spawn_has_a_terminal_of_the_given_size() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "term"]);
    // script(1) gives blink-cli a real terminal; stty sets its size, which
    // `spawn --tty` must pass on to the sandbox's terminal.
    let cli = bin("blink-cli");
    let inner = format!(
        "stty rows 33 cols 101; {} --data-dir {} session spawn --name term --tty -- sh -c 'tty; stty size'",
        cli.display(),
        blink.data_dir.path().display()
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("33 101"), "{text}");
}

#[test]
fn sandbox_is_isolated_from_host_files_processes_and_network() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "iso"]);
    // A host file outside the sandbox's root.
    let secret = blink.data_dir.path().join("host-secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let out = blink.run(&[
        "session",
        "exec",
        "--name",
        "iso",
        "--",
        "cat",
        secret.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!texts(&out).0.contains("top secret"));
    let out = blink.run(&[
        "session",
        "exec",
        "--name",
        "iso",
        "--",
        "cat",
        "/etc/hostname",
    ]);
    assert!(
        !texts(&out).0.contains(&hostname()),
        "host /etc/hostname visible"
    );

    // Host processes are invisible: only the sandbox's few pids exist and
    // this test's pid is not among them (unless by chance small).
    let ps = blink.ok(&[
        "session",
        "exec",
        "--name",
        "iso",
        "--",
        "sh",
        "-c",
        "ls /proc | grep -E '^[0-9]+$' | wc -l",
    ]);
    let count: usize = ps.trim().parse().unwrap();
    assert!(count < 10, "sandbox sees {count} processes");

    // No network but loopback; a host listener is unreachable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let links = blink.ok(&[
        "session",
        "exec",
        "--name",
        "iso",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net 2>/dev/null || ip -o link | cut -d: -f2",
    ]);
    let cmd = format!("nc -w 2 127.0.0.1 {port} </dev/null; echo rc=$?");
    let out = blink.ok(&["session", "exec", "--name", "iso", "--", "sh", "-c", &cmd]);
    assert!(!out.contains("rc=0"), "connected to the host: {out}");
    assert!(listener.accept().is_err(), "host listener got a connection");
    assert!(!links.contains("eth"), "network interfaces: {links}");
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn bad_inputs_get_clear_errors() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let out = blink.run(&["session", "open", "--name", "Bad/Name"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        texts(&out).1.contains("invalid session name \"Bad/Name\""),
        "{}",
        texts(&out).1
    );

    let out = blink.run(&["session", "exec", "--name", "ghost", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        texts(&out).1.contains("session \"ghost\" not found"),
        "{}",
        texts(&out).1
    );

    let (code, v) = blink.json(&["session", "info", "--name", "ghost"]);
    assert_eq!(code, Some(125));
    assert_eq!(v["error"]["code"], "session_not_found");

    blink.ok(&["session", "open", "--name", "real"]);
    let out = blink.run(&["session", "run", "--name", "real", "/no/such/script.sh"]);
    assert!(
        texts(&out)
            .1
            .contains("script /no/such/script.sh not found"),
        "{}",
        texts(&out).1
    );

    let out = blink.run(&[
        "session",
        "open",
        "--name",
        "other",
        "--image",
        "alpine:3.20",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(texts(&out).1.contains("image import"), "{}", texts(&out).1);
    // The failed open left no session behind.
    let (_, list) = blink.json(&["session", "ls"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["real"]);

    let out = blink.run(&["session", "rm", "--name", "real"]);
    assert!(out.status.success());
    let out = blink.run(&["session", "info", "--name", "real"]);
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let (mut holder, _) = start_holder(&blink, "held", 30);
    let out = blink.run(&["session", "ls"]);
    let refused = (!out.status.success()).then(|| texts(&out).1);
    let _ = holder.kill();
    let _ = holder.wait();
    let refused = refused.expect("second process was never refused");
    assert!(
        refused.contains("in use by another Blink process"),
        "{refused}"
    );
    assert!(refused.contains("blink-cli"), "{refused}");
}

#[test]
fn limits_apply_while_running_and_nothing_outlives_the_cli() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let (code, doctor) = Blink::new().json(&["doctor"]);
    assert_eq!(code, Some(0));
    let limits = doctor["runtimes"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "limits")
        .map(|c| c["detail"].as_str().unwrap().to_owned())
        .unwrap();
    if !limits.contains("pids=cgroup-v1") {
        blink_sdk::testing::skip(&format!(
            "cgroup v1 is not the limit mechanism here ({limits})"
        ));
        return;
    }
    let (mut holder, box_id) = start_holder(&blink, "limited", 2);
    // One group per boot of the sandbox: `<box_id>.<boot>`.
    let groups = |ctrl: &str| -> Vec<std::path::PathBuf> {
        let parent = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("blink");
        std::fs::read_dir(parent)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with(&format!("{box_id}."))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = |ctrl: &str| {
        groups(ctrl)
            .pop()
            .expect("the running sandbox has a cgroup")
    };
    let pids_max = std::fs::read_to_string(group("pids").join("pids.max")).unwrap();
    assert_eq!(pids_max.trim(), "1024");
    let mem = std::fs::read_to_string(group("memory").join("memory.limit_in_bytes")).unwrap();
    assert_eq!(mem.trim(), (2048u64 << 20).to_string());
    let procs = std::fs::read_to_string(group("pids").join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().count() >= 2,
        "sandbox processes not in its cgroup: {procs:?}"
    );
    assert!(holder.wait().unwrap().success());
    for ctrl in ["memory", "pids", "cpu"] {
        assert!(
            groups(ctrl).is_empty(),
            "{ctrl} cgroup of {box_id} outlived the CLI"
        );
    }
}

#[test]
fn private_data_dirs_work_and_unreachable_ones_are_named() {
    use std::os::unix::fs::PermissionsExt;
    // A data dir of mode 0700 (as `mktemp -d` makes): Blink makes it
    // searchable for the sandbox uid and goes on.
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    std::fs::set_permissions(
        blink.data_dir.path(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    blink.ok(&["session", "open", "--name", "private"]);
    let out = blink.ok(&[
        "session", "exec", "--name", "private", "--", "echo", "reached",
    ]);
    assert_eq!(out, "reached\n");

    // A data dir below a private directory that is not Blink's: refused,
    // naming that directory, and no sandbox is attempted.
    let outer = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = outer.path().join("data");
    let out = std::process::Command::new(bin("blink-cli"))
        .arg("--data-dir")
        .arg(&data)
        .args(["session", "open", "--name", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} has mode 700", outer.path().display())),
        "{stderr}"
    );
}

/// Run tmux on a private socket.
#[test]
fn spawn_tty_follows_window_size_changes_and_restores_the_terminal() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let (_, opened) = blink.json(&["session", "open", "--name", "winch"]);
    let box_id = opened["session"]["box_id"].as_str().unwrap().to_owned();
    let cli = format!(
        "{} --data-dir {} SPAWN",
        bin("blink-cli").display(),
        blink.data_dir.path().display()
    );
    blink_e2e::tty::check_spawn_tty_follows_the_window(&blink, &box_id, "winch", &cli);
}

/// Open a session and run `sleep SECS` in it through `blink-cli session
/// exec`, returning once the command runs (it marks its start on the
/// session's disk): the CLI process and the session's box id.
fn start_holder(blink: &Blink, name: &str, secs: u32) -> (std::process::Child, String) {
    let (_, opened) = blink.json(&["session", "open", "--name", name]);
    let box_id = opened["session"]["box_id"].as_str().unwrap().to_owned();
    let script = format!("touch /var/blink/memory/ready; sleep {secs}");
    let holder = blink
        .cli(&["session", "exec", "--name", name, "--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Reached through the running sandbox, once the CLI has started it.
    let ready = blink.disk_path(&box_id, "/var/blink/memory/ready");
    assert!(wait_for_file(&ready), "the command in {name} never started");
    (holder, box_id)
}
