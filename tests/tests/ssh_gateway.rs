//! The SSH gateway end to end: the real `blink-server`, the real local
//! runtime, and OpenSSH's `ssh` with throwaway keys and known_hosts.

use std::time::Duration;

use blink_e2e::ssh::{Client, SshFixture, sha, spawn_ready};
use blink_e2e::{Blink, run, texts};
use rand::RngCore;

#[test]
fn exec_exit_codes_streams_stdin_and_binary_data() {
    let Some(f) = SshFixture::new() else { return };

    for code in [0, 1, 42] {
        let out = f.ssh(&[&format!("echo out; echo err >&2; exit {code}")], b"");
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
        assert_eq!(stdout, "out\n");
        assert_eq!(stderr, "err\n");
    }

    // stdin EOF reaches the command.
    let out = f.ssh(&["cat"], b"hello\nworld");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"hello\nworld");

    // 16 MiB of random bytes in, then out again, byte for byte.
    let mut data = vec![0u8; 16 << 20];
    rand::rng().fill_bytes(&mut data);
    let out = f.ssh(&["cat > /tmp/blob && sha256sum /tmp/blob"], &data);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with(&sha(&data)), "{stdout}");
    let out = f.ssh(&["cat /tmp/blob; cat /tmp/blob >&2"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha(&out.stdout), sha(&data));
    assert_eq!(sha(&out.stderr), sha(&data));
}

#[test]
fn pty_env_allow_list_and_concurrent_execs() {
    let Some(f) = SshFixture::with(|s| s.config("[ssh]\nenv_allow = [\"FOO\"]\n")) else {
        return;
    };

    let out = f.ssh(&["-tt", "tty; stty size; echo term=$TERM"], b"");
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

    let out = f.ssh(
        &[
            "-o",
            "SetEnv=LANG=C.UTF-8 LC_FOO=lc FOO=foo BAR=bar",
            "echo \"$LANG|$LC_FOO|$FOO|$BAR\"",
        ],
        b"",
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "C.UTF-8|lc|foo|\n");

    // 20 concurrent executions, each with its own output and exit code.
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let mut cmd = f.ssh_command();
            cmd.arg(format!("echo run-{i}; exit {}", i % 7));
            std::thread::spawn(move || (i, run(&mut cmd, b"")))
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
    let Some(SshFixture {
        blink,
        client,
        server,
        ..
    }) = SshFixture::new()
    else {
        return;
    };

    let attempt = |key: &str, login: &str| {
        let out = run(client.ssh(&server, key, login).arg("true"), b"");
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
    let ssh = |args: &[&str]| run(client.ssh(&server, "id", "s1").args(args), b"");
    let out = ssh(&["-s", "no-such-subsystem"]);
    assert_ne!(out.status.code(), Some(0));
    let out = ssh(&[
        "-A",
        "-o",
        "ForwardX11=yes",
        "-R",
        "0:127.0.0.1:9",
        "echo still-here",
    ]);
    assert_eq!(texts(&out).0, "still-here\n");
    let out = ssh(&["-W", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        texts(&out).1.contains("forwarding failed"),
        "{:?}",
        texts(&out)
    );
}

#[test]
fn admin_keys_and_stable_host_key() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let client = Client::new();
    let admin = client.path("admin_keys");
    std::fs::copy(client.path("other.pub"), &admin).expect("copy");
    let admin = admin.to_str().expect("utf-8").to_string();

    let first = blink
        .server()
        .args(&["--admin-keys", &admin, "--admin-create-sessions"])
        .start();
    assert!(first.fingerprint.starts_with("SHA256:"));
    // An admin key may create a missing session on first login.
    let out = run(
        client.ssh(&first, "other", "fresh").arg("echo created"),
        b"",
    );
    assert_eq!(texts(&out).0, "created\n", "{}", texts(&out).1);
    // A key that is not an admin key cannot.
    let out = run(client.ssh(&first, "id", "fresh2").arg("true"), b"");
    assert_eq!(out.status.code(), Some(255));
    drop(first);

    let printed = blink.ok(&["gateway", "fingerprint"]);
    let second = blink.server().args(&["--admin-keys", &admin]).start();
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
    let out = run(&mut cmd, b"");
    assert_eq!(texts(&out).0, "again\n", "{}", texts(&out).1);
}

#[test]
fn shell_exit_signal_and_per_session_connection_limit() {
    let Some(f) = SshFixture::with(|s| s.config("[ssh.limits]\nmax_connections_per_session = 1\n"))
    else {
        return;
    };

    // A shell without a PTY reads its commands from stdin.
    let out = f.ssh(&[], b"echo shell-ok\nexit 3\n");
    assert_eq!(out.status.code(), Some(3), "{}", texts(&out).1);
    assert_eq!(texts(&out).0, "shell-ok\n");

    // Killed by a signal: all output arrives, then exit-signal, which
    // OpenSSH's ssh reports as 255.
    let out = f.ssh(&["echo before; kill -TERM $$; echo after"], b"");
    assert_eq!(texts(&out).0, "before\n");
    assert_eq!(out.status.code(), Some(255));

    // One connection holds the only slot of the session: a second one is
    // refused while it lives.
    let mut first = spawn_ready(f.ssh_command().arg("echo ready; cat"));
    assert_eq!(f.ssh(&["true"], b"").status.code(), Some(255));
    drop(first.take_stdin());
    let (status, _, _) = first.finish(Duration::from_secs(20));
    assert!(status.success());
}
