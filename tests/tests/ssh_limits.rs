//! The SSH gateway's limits and lifecycle with OpenSSH's `ssh`: flow
//! control across multiplexed channels, connection limits, timeouts,
//! keepalives, session start and idle stop, logs, and a PTY shell in tmux.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use blink_e2e::ssh::{Client, config_file, run, setup, start_server, start_server_logging};
use blink_e2e::{Blink, local_runtime_available, texts};

/// Wait up to `limit` for a child to exit; its status, or None if it still
/// runs.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A command that stops itself after 60 s of sleeping, so that a test that
/// fails leaves nothing behind for long.
const LONG: &str = "sleep 60";

#[test]
fn unread_stdin_does_not_stall_other_channels_of_the_connection() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);
    let control = client.path("cm");
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
    let mut first = client.ssh(&server, "id", "s1");
    mux(&mut first);
    first.arg("echo first-started; sleep 30");
    let mut first = first
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ssh");
    let mut line = [0u8; 14];
    first
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("first started");
    assert_eq!(&line, b"first-started\n");
    let mut stdin = first.stdin.take().expect("stdin");
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
    let mut second = client.ssh(&server, "id", "s1");
    mux(&mut second);
    second.arg("echo second-done");
    let mut second = second
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let status = wait_exit(&mut second, Duration::from_secs(20));
    // The first command still runs: the second finished while it did.
    let first_running = first.try_wait().expect("try_wait").is_none();
    let _ = first.kill();
    let _ = first.wait();
    let _ = Command::new("ssh")
        .args(["-O", "exit", "-o"])
        .arg(format!("ControlPath={}", control.display()))
        .arg("x")
        .stderr(Stdio::null())
        .status();
    let Some(status) = status else {
        let _ = second.kill();
        panic!("the second channel stalled behind the first one's unread stdin");
    };
    let mut out = String::new();
    second
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(status.success(), "second: {status:?}");
    assert_eq!(out, "second-done\n");
    assert!(first_running, "the first command ended early");
    drop(pusher);
}

/// `ssh` running `command`, stdout piped, waiting for its first line.
fn spawn_ready(mut cmd: Command) -> std::process::Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line, "ready\n");
    child
}

#[test]
fn total_connections_are_limited_with_a_clean_refusal() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let config = config_file(&client, "[ssh.limits]\nmax_connections = 1\n");
    let server = start_server_logging(&blink, &["--config", &config], "info");

    let mut first = client.ssh(&server, "id", "s1");
    first.arg("echo ready; cat");
    let mut first = spawn_ready(first);
    let mut second = client.ssh(&server, "id", "s1");
    second.arg("echo second");
    let out = run(second, b"");
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    assert!(texts(&out).1.contains("closed"), "{:?}", texts(&out));
    assert!(
        server
            .wait_log(&["ssh connection refused: too many connections"])
            .is_some()
    );
    drop(first.stdin.take());
    assert!(first.wait().expect("wait").success());
    // The slot is free again once the first connection is gone.
    let mut ok = false;
    for _ in 0..50 {
        let mut again = client.ssh(&server, "id", "s1");
        again.arg("echo again");
        if texts(&run(again, b"")).0 == "again\n" {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "no connection after the first one closed");
}

#[test]
fn idle_connections_close_but_busy_ones_stay() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    // Keepalives every second are answered by ssh: they must not count as
    // activity.
    let config = config_file(
        &client,
        "[ssh.limits]\nidle_timeout_secs = 2\nkeepalive_interval_secs = 1\n",
    );
    let server = start_server(&blink, &["--config", &config]);

    // Output every half second keeps a connection alive past the timeout.
    let mut busy = client.ssh(&server, "id", "s1");
    busy.arg("for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.5; done");
    let out = run(busy, b"");
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    assert_eq!(texts(&out).0.lines().count(), 8);

    // A silent one is closed long before its command ends.
    let mut idle = client.ssh(&server, "id", "s1");
    idle.arg(format!("echo ready; {LONG}"));
    let mut idle = spawn_ready(idle);
    let status = wait_exit(&mut idle, Duration::from_secs(30));
    let _ = idle.kill();
    let status = status.expect("the idle connection was not closed");
    assert_eq!(status.code(), Some(255));
}

#[test]
fn keepalives_close_connections_to_unresponsive_clients() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let config = config_file(
        &client,
        "[ssh.limits]\nidle_timeout_secs = 0\nkeepalive_interval_secs = 1\nkeepalive_max = 2\n",
    );
    let server = start_server_logging(&blink, &["--config", &config], "info");

    // A client that answers keepalives keeps its connection.
    let mut alive = client.ssh(&server, "id", "s1");
    alive.arg("sleep 5; echo still-here");
    let out = run(alive, b"");
    assert_eq!(texts(&out).0, "still-here\n", "{:?}", texts(&out));

    // A frozen client does not answer: the server closes the connection.
    let mut frozen = client.ssh(&server, "id", "s1");
    frozen.arg(format!("echo ready; {LONG}"));
    let mut frozen = spawn_ready(frozen);
    let pid = frozen.id().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(stopped.is_ok_and(|s| s.success()));
    let closed = server.wait_log(&["ssh channel closed", "sleep 60"]);
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let status = wait_exit(&mut frozen, Duration::from_secs(20));
    let _ = frozen.kill();
    assert!(closed.is_some(), "the server kept the frozen client");
    assert_eq!(status.and_then(|s| s.code()), Some(255));
}

#[test]
fn stopped_sessions_start_on_connect_and_live_channels_hold_them() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &["--session-idle-timeout", "1"]);
    // /tmp is a tmpfs of the running sandbox: a marker there disappears
    // when the session stops.
    let exec = |command: &str| {
        let mut cmd = client.ssh(&server, "id", "s1");
        cmd.arg(command);
        let out = run(cmd, b"");
        assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
        texts(&out).0
    };
    let check = "cat /tmp/marker 2>/dev/null || echo gone";
    exec("echo one > /tmp/marker");
    // Nothing runs: the session stops, and the next connection starts it.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(exec(check), "gone\n");

    // An open sftp channel, idle, holds the session running.
    let mut sftp = Command::new("sftp");
    sftp.args(client.common_opts("id"))
        .arg("-P")
        .arg(server.port.to_string())
        .arg("s1@127.0.0.1");
    let mut sftp = sftp
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sftp");
    let mut stdin = sftp.stdin.take().expect("stdin");
    stdin.write_all(b"pwd\n").expect("write");
    let mut reader = std::io::BufReader::new(sftp.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("Remote working directory") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        assert!(n > 0, "sftp ended");
    }
    exec("echo two > /tmp/marker");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(exec(check), "two\n");
    drop(stdin);
    let _ = sftp.wait();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(exec(check), "gone\n");
}

#[test]
fn one_structured_log_line_per_connection_and_channel() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server_logging(&blink, &[], "info");
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.args(["-o", "SetEnv=LANG=secret-env-value", "cat; exit 3"]);
    let out = run(cmd, b"hello");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"hello");
    let fingerprint = client_fingerprint(&client);

    let channel = server
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
    let connection = server
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
    let log = server.log();
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
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);
    let tmux = Tmux {
        socket: client.path("tmux"),
    };
    let status_file = client.path("status");
    let mut ssh = vec!["ssh".to_string(), "-t".into()];
    ssh.extend(client.common_opts("id"));
    ssh.extend(["-p".into(), server.port.to_string(), "s1@127.0.0.1".into()]);
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
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);
    let timed = |key: &str, login: &str| {
        let mut cmd = client.ssh(&server, key, login);
        cmd.arg("true");
        let start = std::time::Instant::now();
        let out = run(cmd, b"");
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
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);
    // 24 MiB into a program that never reads: the client is held at the
    // channel's window (renewed only as the program consumes) until the
    // program ends on its own, with its own status.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("echo started; sleep 2; echo done; exit 7");
    let out = run(cmd, &vec![b'x'; 24 << 20]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(stdout, "started\ndone\n", "{stderr}");
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        !stderr.contains("stopped") && !stderr.contains("killed"),
        "{stderr}"
    );
    assert!(!server.log().contains("past its channel window"));
}
