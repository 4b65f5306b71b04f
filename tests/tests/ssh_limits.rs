//! The SSH gateway's limits and lifecycle with OpenSSH's `ssh`: flow
//! control across multiplexed channels, connection limits, timeouts,
//! keepalives, session start and idle stop, logs, and a PTY shell in tmux.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use blink_e2e::ssh::{Client, SshFixture, spawn_ready};
use blink_e2e::{Running, run, texts};

/// A command that stops itself after 60 s of sleeping, so that a test that
/// fails leaves nothing behind for long.
const LONG: &str = "sleep 60";

#[test]
fn unread_stdin_does_not_stall_other_channels_of_the_connection() {
    let Some(f) = SshFixture::new() else { return };
    let control = f.client.path("cm");
    let mux = |cmd: &mut Command| {
        cmd.args([
            "-o",
            "ControlMaster=auto",
            "-o",
            &format!("ControlPath={}", control.display()),
            "-o",
            "ControlPersist=10",
        ]);
    };

    // First channel: a program that never reads its stdin, while the
    // client pushes 8 MiB into it (more than russh's per-channel queue and
    // the pipe hold).
    let mut first = f.ssh_command();
    mux(&mut first);
    first.arg("echo first-started; sleep 30");
    let mut first = Running::spawn(&mut first);
    assert_eq!(first.first_line().as_deref(), Some("first-started\n"));
    let mut stdin = first.take_stdin();
    let pusher = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            if stdin.write_all(&chunk).is_err() {
                return false;
            }
        }
        // Keep stdin open: no EOF, the data just sits there.
        std::thread::sleep(Duration::from_secs(40));
        drop(stdin);
        true
    });
    // Give the 8 MiB time to cross the connection.
    std::thread::sleep(Duration::from_secs(2));

    // Second channel on the same connection (through the control master).
    let mut second = f.ssh_command();
    mux(&mut second);
    second.arg("echo second-done");
    let mut second = Running::spawn(&mut second);
    drop(second.take_stdin());
    let status = second.wait_exit(Duration::from_secs(20));
    // The first command still runs: the second finished while it did.
    let first_running = first.is_running();
    drop(first);
    let _ = Command::new("ssh")
        .args(["-O", "exit", "-o"])
        .arg(format!("ControlPath={}", control.display()))
        .arg("x")
        .stderr(Stdio::null())
        .status();
    let Some(status) = status else {
        panic!("the second channel stalled behind the first one's unread stdin");
    };
    // It has exited: this is all it wrote.
    let (_, out, _) = second.finish(Duration::from_secs(20));
    assert!(status.success(), "second: {status:?}");
    assert_eq!(out, "second-done\n");
    assert!(first_running, "the first command ended early");
    drop(pusher);
}

#[test]
fn total_connections_are_limited_with_a_clean_refusal() {
    let Some(f) = SshFixture::with(|s| {
        s.config("[ssh.limits]\nmax_connections = 1\n")
            .log_filter("info")
    }) else {
        return;
    };

    let mut first = spawn_ready(f.ssh_command().arg("echo ready; cat"));
    let out = f.ssh(&["echo second"], b"");
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    assert!(texts(&out).1.contains("closed"), "{:?}", texts(&out));
    assert!(
        f.server
            .wait_log(&["ssh connection refused: too many connections"])
            .is_some()
    );
    drop(first.take_stdin());
    let (status, _, _) = first.finish(Duration::from_secs(20));
    assert!(status.success());
    // The slot is free again once the first connection is gone.
    let mut ok = false;
    for _ in 0..50 {
        if texts(&f.ssh(&["echo again"], b"")).0 == "again\n" {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "no connection after the first one closed");
}

#[test]
fn idle_connections_close_but_busy_ones_stay() {
    // Keepalives every second are answered by ssh: they must not count as
    // activity.
    let Some(f) = SshFixture::with(|s| {
        s.config("[ssh.limits]\nidle_timeout_secs = 2\nkeepalive_interval_secs = 1\n")
    }) else {
        return;
    };

    // Output every half second keeps a connection alive past the timeout.
    let out = f.ssh(
        &["for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.5; done"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    assert_eq!(texts(&out).0.lines().count(), 8);

    // A silent one is closed long before its command ends.
    let mut idle = spawn_ready(f.ssh_command().arg(format!("echo ready; {LONG}")));
    let status = idle.wait_exit(Duration::from_secs(30));
    drop(idle);
    let status = status.expect("the idle connection was not closed");
    assert_eq!(status.code(), Some(255));
}

#[test]
fn keepalives_close_connections_to_unresponsive_clients() {
    let Some(f) = SshFixture::with(|s| {
        s.config(
            "[ssh.limits]\nidle_timeout_secs = 0\nkeepalive_interval_secs = 1\nkeepalive_max = 2\n",
        )
        .log_filter("info")
    }) else {
        return;
    };

    // A client that answers keepalives keeps its connection.
    let out = f.ssh(&["sleep 5; echo still-here"], b"");
    assert_eq!(texts(&out).0, "still-here\n", "{:?}", texts(&out));

    // A frozen client does not answer: the server closes the connection.
    let mut frozen = spawn_ready(f.ssh_command().arg(format!("echo ready; {LONG}")));
    let pid = frozen.pid().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(stopped.is_ok_and(|s| s.success()));
    let closed = f.server.wait_log(&["ssh channel closed", "sleep 60"]);
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let status = frozen.wait_exit(Duration::from_secs(20));
    drop(frozen);
    assert!(closed.is_some(), "the server kept the frozen client");
    assert_eq!(status.and_then(|s| s.code()), Some(255));
}

#[test]
fn stopped_sessions_start_on_connect_and_live_channels_hold_them() {
    let Some(f) = SshFixture::with(|s| s.args(&["--session-idle-timeout", "1"])) else {
        return;
    };
    // /tmp is a tmpfs of the running sandbox: a marker there disappears
    // when the session stops.
    let check = "cat /tmp/marker 2>/dev/null || echo gone";
    f.sh("echo one > /tmp/marker");
    // Nothing runs: the session stops, and the next connection starts it.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(f.sh(check), "gone\n");

    // An open sftp channel, idle, holds the session running.
    let mut sftp = Command::new("sftp");
    sftp.args(f.client.common_opts("id"))
        .arg("-P")
        .arg(f.server.ssh_port.to_string())
        .arg("s1@127.0.0.1");
    let mut sftp = Running::spawn(&mut sftp);
    sftp.send(b"pwd\n");
    assert!(
        sftp.wait_stdout("Remote working directory"),
        "sftp ended: {}",
        sftp.stdout()
    );
    f.sh("echo two > /tmp/marker");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(f.sh(check), "two\n");
    drop(sftp.take_stdin());
    let _ = sftp.wait_exit(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(f.sh(check), "gone\n");
}

#[test]
fn one_structured_log_line_per_connection_and_channel() {
    let Some(f) = SshFixture::with(|s| s.log_filter("info")) else {
        return;
    };
    let out = f.ssh(
        &["-o", "SetEnv=LANG=secret-env-value", "cat; exit 3"],
        b"hello",
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hello");
    let fingerprint = client_fingerprint(&f.client);

    let channel = f
        .server
        .wait_log(&["blink::ssh::channel", "ssh channel closed", "exit_status=3"])
        .expect("channel line");
    for field in [
        "session=s1",
        "kind=\"exec\"",
        "command=cat; exit 3",
        "bytes_in=5",
        "bytes_out=5",
        "duration_ms=",
        "pty=false",
    ] {
        assert!(channel.contains(field), "{field} not in {channel}");
    }
    let connection = f
        .server
        .wait_log(&[
            "blink::ssh::connection",
            "ssh connection closed",
            "login=s1",
        ])
        .expect("connection line");
    for field in [
        &format!("key={fingerprint}") as &str,
        "authenticated=true",
        "channels=1",
        "bytes_in=5",
        "bytes_out=5",
        "duration_ms=",
        "peer=127.0.0.1:",
    ] {
        assert!(connection.contains(field), "{field} not in {connection}");
    }
    let log = f.server.log();
    assert_eq!(log.matches("ssh channel closed").count(), 1, "{log}");
    assert_eq!(log.matches("ssh connection closed").count(), 1, "{log}");
    assert!(!log.contains("secret-env-value"), "{log}");
}

fn client_fingerprint(client: &Client) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(client.path("id.pub"))
        .output()
        .expect("ssh-keygen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string()
}

/// tmux driving an interactive `ssh -t` like a person at a terminal.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    fn keys(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .status()
            .expect("tmux");
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_screen(&self, needle: &str) -> String {
        for _ in 0..400 {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {needle:?} on the screen:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[test]
fn pty_shell_ctrl_c_ctrl_d_and_exit_status() {
    let Some(f) = SshFixture::new() else { return };
    let tmux = Tmux {
        socket: f.client.path("tmux"),
    };
    let status_file = f.client.path("status");
    let mut ssh = vec!["ssh".to_string(), "-t".into()];
    ssh.extend(f.client.common_opts("id"));
    ssh.extend([
        "-p".into(),
        f.server.ssh_port.to_string(),
        "s1@127.0.0.1".into(),
    ]);
    let line = format!(
        "TERM=screen-256color {}; echo $? > {}",
        ssh.join(" "),
        status_file.display()
    );
    let status = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "80",
            "-y",
            "24",
            &line,
        ])
        .status()
        .expect("tmux");
    assert!(status.success());

    // Type once the shell is there (early keys may be dropped).
    tmux.wait_screen("built-in shell");
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&["echo \"term=$TERM size=$(stty size)\"", "Enter"]);
    tmux.wait_screen("term=screen-256color size=24 80");
    // Ctrl-C interrupts the foreground program, not the shell.
    tmux.keys(&["sleep 60; echo not-interrupted", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo after-$((40+2))", "Enter"]);
    let screen = tmux.wait_screen("after-42");
    assert!(
        !screen.lines().any(|l| l.trim() == "not-interrupted"),
        "{screen}"
    );
    // The terminal resizes with the tmux window.
    let resized = tmux
        .cmd()
        .args(["resize-window", "-t", "t", "-x", "100", "-y", "30"])
        .status()
        .expect("tmux");
    assert!(resized.success());
    tmux.keys(&["echo size2=$(stty size)", "Enter"]);
    tmux.wait_screen("size2=30 100");
    // Ctrl-D at an empty prompt ends the shell with the last status.
    tmux.keys(&["(exit 7)", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-d"]);
    assert!(blink_e2e::wait_for_file(&status_file), "{}", tmux.screen());
    let mut code = String::new();
    for _ in 0..40 {
        code = std::fs::read_to_string(&status_file).unwrap_or_default();
        if code.ends_with('\n') {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(code.trim(), "7");
}

#[test]
fn unknown_session_and_wrong_key_take_the_same_time() {
    let Some(f) = SshFixture::new() else { return };
    let timed = |key: &str, login: &str| {
        let mut cmd = f.client.ssh(&f.server, key, login);
        cmd.arg("true");
        let start = std::time::Instant::now();
        let out = run(&mut cmd, b"");
        assert_eq!(out.status.code(), Some(255));
        start.elapsed()
    };
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut wrong_key = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        wrong_key.push(timed("other", "s1"));
        unknown.push(timed("id", "nosuch"));
    }
    let (a, b) = (median(wrong_key), median(unknown));
    // Both wait out the fixed refusal delay (0.5 s), and differ by noise.
    assert!(a >= Duration::from_millis(450), "{a:?}");
    assert!(b >= Duration::from_millis(450), "{b:?}");
    let diff = a.abs_diff(b);
    assert!(diff < Duration::from_millis(250), "{a:?} vs {b:?}");
}

#[test]
fn unread_stdin_holds_the_client_back_and_never_kills_the_program() {
    let Some(f) = SshFixture::new() else { return };
    // 24 MiB into a program that never reads: the client is held at the
    // channel's window (renewed only as the program consumes) until the
    // program ends on its own, with its own status.
    let out = f.ssh(
        &["echo started; sleep 2; echo done; exit 7"],
        &vec![b'x'; 24 << 20],
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(stdout, "started\ndone\n", "{stderr}");
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        !stderr.contains("stopped") && !stderr.contains("killed"),
        "{stderr}"
    );
    assert!(!f.server.log().contains("past its channel window"));
}
