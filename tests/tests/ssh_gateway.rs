//! The SSH gateway end to end: the real `blink-server`, the real local
//! runtime, and OpenSSH's `ssh` with throwaway keys and known_hosts.

use blink_e2e::ssh::{Client, config_file, run, setup, sha, start_server};
use blink_e2e::{Blink, local_runtime_available, texts};
use rand::RngCore;

#[test]
fn exec_exit_codes_streams_stdin_and_binary_data() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);

    for code in [0, 1, 42] {
        let mut cmd = client.ssh(&server, "id", "s1");
        cmd.arg(format!("echo out; echo err >&2; exit {code}"));
        let out = run(cmd, b"");
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
        assert_eq!(stdout, "out\n");
        assert_eq!(stderr, "err\n");
    }

    // stdin EOF reaches the command.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("cat");
    let out = run(cmd, b"hello\nworld");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"hello\nworld");

    // 16 MiB of random bytes in, then out again, byte for byte.
    let mut data = vec![0u8; 16 << 20];
    rand::rng().fill_bytes(&mut data);
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("cat > /tmp/blob && sha256sum /tmp/blob");
    let out = run(cmd, &data);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with(&sha(&data)), "{stdout}");
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("cat /tmp/blob; cat /tmp/blob >&2");
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha(&out.stdout), sha(&data));
    assert_eq!(sha(&out.stderr), sha(&data));
}

#[test]
fn pty_env_allow_list_and_concurrent_execs() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let config = config_file(&client, "[ssh]\nenv_allow = [\"FOO\"]\n");
    let server = start_server(&blink, &["--config", &config]);

    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.args(["-tt", "tty; stty size; echo term=$TERM"]);
    let out = run(cmd, b"");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    let size = stdout.lines().nth(1).unwrap_or("").trim().to_string();
    let numbers: Vec<&str> = size.split(' ').collect();
    assert!(
        numbers.len() == 2 && numbers.iter().all(|n| n.parse::<u16>().is_ok()),
        "{stdout}"
    );
    assert!(stdout.contains("term="), "{stdout}");

    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.args([
        "-o",
        "SetEnv=LANG=C.UTF-8 LC_FOO=lc FOO=foo BAR=bar",
        "echo \"$LANG|$LC_FOO|$FOO|$BAR\"",
    ]);
    let out = run(cmd, b"");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "C.UTF-8|lc|foo|\n");

    // 20 concurrent executions, each with its own output and exit code.
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let mut cmd = client.ssh(&server, "id", "s1");
            cmd.arg(format!("echo run-{i}; exit {}", i % 7));
            std::thread::spawn(move || (i, run(cmd, b"")))
        })
        .collect();
    for h in handles {
        let (i, out) = h.join().expect("thread");
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(i % 7), "run {i}: {stderr}");
        assert_eq!(stdout, format!("run-{i}\n"));
    }
}

#[test]
fn auth_refusals_look_identical_and_keys_are_managed_live() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);

    let attempt = |key: &str, login: &str| {
        let mut cmd = client.ssh(&server, key, login);
        cmd.arg("true");
        let out = run(cmd, b"");
        let (_, stderr) = texts(&out);
        (out.status.code(), stderr.replace(login, "LOGIN"))
    };
    let ok = attempt("id", "s1");
    assert_eq!(ok.0, Some(0), "{}", ok.1);
    let wrong_key = attempt("other", "s1");
    let unknown = attempt("id", "nosuch");
    let bad_name = attempt("id", "zz-Invalid");
    assert_eq!(wrong_key.0, Some(255));
    assert!(wrong_key.1.contains("Permission denied"), "{}", wrong_key.1);
    assert_eq!(wrong_key, unknown);
    assert_eq!(wrong_key, bad_name);

    // Keys are changed while the server runs.
    let other_pub = client.path("other.pub");
    blink.ok(&[
        "session",
        "keys",
        "add",
        "--name",
        "s1",
        other_pub.to_str().expect("utf-8"),
    ]);
    assert_eq!(attempt("other", "s1").0, Some(0));
    let listed = blink.ok(&["session", "keys", "ls", "--name", "s1"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let line = listed
        .lines()
        .find(|l| l.ends_with(" other"))
        .expect("other key listed");
    let fingerprint = line.split(' ').next().expect("fingerprint");
    blink.ok(&["session", "keys", "rm", "--name", "s1", fingerprint]);
    assert_eq!(attempt("other", "s1").0, Some(255));
    let (code, v) = blink.json(&["session", "keys", "ls", "--name", "s1"]);
    assert_eq!(code, Some(0));
    assert_eq!(v.as_array().map(Vec::len), Some(1));

    // Unsupported requests are refused without closing the connection.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.args(["-s", "no-such-subsystem"]);
    let out = run(cmd, b"");
    assert_ne!(out.status.code(), Some(0));
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.args([
        "-A",
        "-o",
        "ForwardX11=yes",
        "-R",
        "0:127.0.0.1:9",
        "echo still-here",
    ]);
    let out = run(cmd, b"");
    assert_eq!(texts(&out).0, "still-here\n");
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.args(["-W", "127.0.0.1:9"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        texts(&out).1.contains("forwarding failed"),
        "{:?}",
        texts(&out)
    );
}

#[test]
fn admin_keys_and_stable_host_key() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    let admin = client.path("admin_keys");
    std::fs::copy(client.path("other.pub"), &admin).expect("copy");
    let admin = admin.to_str().expect("utf-8").to_string();

    let first = start_server(&blink, &["--admin-keys", &admin, "--admin-create-sessions"]);
    assert!(first.fingerprint.starts_with("SHA256:"));
    // An admin key may create a missing session on first login.
    let mut cmd = client.ssh(&first, "other", "fresh");
    cmd.arg("echo created");
    let out = run(cmd, b"");
    assert_eq!(texts(&out).0, "created\n", "{}", texts(&out).1);
    // A key that is not an admin key cannot.
    let mut cmd = client.ssh(&first, "id", "fresh2");
    cmd.arg("true");
    assert_eq!(run(cmd, b"").status.code(), Some(255));
    drop(first);

    let printed = blink.ok(&["gateway", "fingerprint"]);
    let second = start_server(&blink, &["--admin-keys", &admin]);
    assert_eq!(printed.trim(), second.fingerprint);
    let key_file = blink.data_dir.path().join("gateway/ssh_host_ed25519_key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("host key")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // known_hosts from the first run still matches: strict checking passes.
    let mut cmd = client.ssh(&second, "other", "fresh");
    cmd.args(["-o", "StrictHostKeyChecking=yes", "echo again"]);
    let out = run(cmd, b"");
    assert_eq!(texts(&out).0, "again\n", "{}", texts(&out).1);
}

#[test]
fn shell_exit_signal_and_per_session_connection_limit() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let config = config_file(&client, "[ssh.limits]\nmax_connections_per_session = 1\n");
    let server = start_server(&blink, &["--config", &config]);

    // A shell without a PTY reads its commands from stdin.
    let cmd = client.ssh(&server, "id", "s1");
    let out = run(cmd, b"echo shell-ok\nexit 3\n");
    assert_eq!(out.status.code(), Some(3), "{}", texts(&out).1);
    assert_eq!(texts(&out).0, "shell-ok\n");

    // Killed by a signal: all output arrives, then exit-signal, which
    // OpenSSH's ssh reports as 255.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("echo before; kill -TERM $$; echo after");
    let out = run(cmd, b"");
    assert_eq!(texts(&out).0, "before\n");
    assert_eq!(out.status.code(), Some(255));

    // One connection holds the only slot of the session: a second one is
    // refused while it lives.
    let mut first = client.ssh(&server, "id", "s1");
    first.arg("echo ready; cat");
    let mut first = first
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ssh");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(first.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line, "ready\n");
    let mut second = client.ssh(&server, "id", "s1");
    second.arg("true");
    assert_eq!(run(second, b"").status.code(), Some(255));
    drop(first.stdin.take());
    assert!(first.wait().expect("wait").success());
}
