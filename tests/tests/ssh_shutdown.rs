//! `blink-server` on SIGTERM, as OpenSSH's `ssh` sees it: a command that
//! ends within the grace period finishes with its output and status; a
//! client still connected when its channels are done or the grace is over
//! is told why it is disconnected; the server exits 0 and says so.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blink_e2e::ssh::{Client, config_file, setup, start_server_logging};
use blink_e2e::{Blink, local_runtime_available, wait_for_file};

/// How OpenSSH reports the server's disconnect (11: by application).
const TOLD: &str = ":11: blink-server is shutting down";

/// An `ssh` left running, its output collected as it comes.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssh");
        let stdin = child.stdin.take();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Self {
            child,
            stdin,
            stdout,
            stderr,
            readers,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).expect("write to ssh");
        stdin.flush().expect("flush");
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Wait up to 20 s for `needle` on stdout.
    fn wait_stdout(&self, needle: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if self.stdout().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Wait up to `limit` for ssh to exit: its status, stdout and stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let until = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ssh still running after {limit:?}\nstdout: {}\nstderr: {}",
                    self.stdout(),
                    String::from_utf8_lossy(&self.stderr.lock().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        drop(self.stdin.take());
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        (status, self.stdout(), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

fn assert_said_it_shut_down(log: &str) {
    for line in [
        "ssh gateway shutting down",
        "ssh gateway stopped",
        "blink-server shut down",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
}

#[test]
fn a_shell_runs_until_the_grace_ends_then_is_told_why() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let grace = Duration::from_secs(3);
    let config = config_file(&client, "[ssh]\nshutdown_grace_secs = 3\n");
    let mut server = start_server_logging(&blink, &["--config", &config], "info");

    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("-tt");
    let mut shell = Running::spawn(cmd);
    // The terminal echoes the line typed; only the shell prints `shell-up`.
    shell.send(b"echo shell-\"\"up\n");
    assert!(shell.wait_stdout("shell-up"), "{}", shell.stdout());

    let signalled = Instant::now();
    server.signal("TERM");
    let (status, _, stderr) = shell.finish(Duration::from_secs(20));
    let cut_after = signalled.elapsed();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains(TOLD), "{stderr}");
    assert!(
        cut_after >= grace - Duration::from_millis(500),
        "the shell was cut {cut_after:?} after SIGTERM, before the grace ended"
    );

    let margin = Duration::from_secs(10);
    let status = server
        .wait_exit(grace + margin)
        .expect("blink-server still running after the grace and a margin");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_said_it_shut_down(&server.log());
}

#[test]
fn a_command_ends_within_the_grace_and_idle_clients_go_at_once() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let (_, info) = blink.json(&["session", "info", "--name", "s1"]);
    let box_id = info["box_id"].as_str().expect("box_id").to_owned();
    let config = config_file(&client, "[ssh]\nshutdown_grace_secs = 30\n");
    let mut server = start_server_logging(&blink, &["--config", &config], "info");

    // A connection with no channel: nothing to wait for.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("-N");
    let idle = Running::spawn(cmd);
    assert!(server.wait_log(&["ssh login"]).is_some());

    // A command that needs a second more after the signal.
    let started = blink.disk_path(&box_id, "/root/started");
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("touch /root/started; sleep 1; echo done");
    let exec = Running::spawn(cmd);
    assert!(wait_for_file(&started), "the command did not start");

    let signalled = Instant::now();
    server.signal("TERM");
    let (status, _, stderr) = idle.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains(TOLD), "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the idle client waited {:?}",
        signalled.elapsed()
    );

    let (status, stdout, stderr) = exec.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "done\n");
    assert!(!stderr.contains("shutting down"), "{stderr}");

    // Nothing left running: the server does not wait out the grace.
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("blink-server waited out the grace with nothing running");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_said_it_shut_down(&server.log());
}
