//! `blink-server` on SIGTERM, as OpenSSH's `ssh` sees it: a command that
//! ends within the grace period finishes with its output and status; a
//! client still connected when its channels are done or the grace is over
//! is told why it is disconnected; the server exits 0 and says so.

use std::time::{Duration, Instant};

use blink_e2e::ssh::SshFixture;
use blink_e2e::{Running, wait_for_file};

/// How OpenSSH reports the server's disconnect (11: by application).
const TOLD: &str = ":11: blink-server is shutting down";

/// An SSH fixture whose server logs at `info` and gives its connections
/// `grace_secs` to finish on SIGTERM.
fn shutting_down_in(grace_secs: u32) -> Option<SshFixture> {
    SshFixture::with(|s| {
        s.config(&format!("[ssh]\nshutdown_grace_secs = {grace_secs}\n"))
            .log_filter("info")
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
    let grace = Duration::from_secs(3);
    let Some(mut f) = shutting_down_in(3) else {
        return;
    };

    let mut shell = Running::spawn(f.ssh_command().arg("-tt"));
    // The terminal echoes the line typed; only the shell prints `shell-up`.
    shell.send(b"echo shell-\"\"up\n");
    assert!(shell.wait_stdout("shell-up"), "{}", shell.stdout());

    let signalled = Instant::now();
    f.server.signal("TERM");
    let (status, _, stderr) = shell.finish(Duration::from_secs(20));
    let cut_after = signalled.elapsed();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(stderr.contains(TOLD), "{stderr}");
    assert!(
        cut_after >= grace - Duration::from_millis(500),
        "the shell was cut {cut_after:?} after SIGTERM, before the grace ended"
    );

    let margin = Duration::from_secs(10);
    let status = f
        .server
        .wait_exit(grace + margin)
        .expect("blink-server still running after the grace and a margin");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_said_it_shut_down(&f.server.log());
}

#[test]
fn a_command_ends_within_the_grace_and_idle_clients_go_at_once() {
    let Some(mut f) = shutting_down_in(30) else {
        return;
    };

    // A connection with no channel: nothing to wait for.
    let idle = Running::spawn(f.ssh_command().arg("-N"));
    assert!(f.server.wait_log(&["ssh login"]).is_some());

    // A command that needs a second more after the signal.
    let exec = Running::spawn(
        f.ssh_command()
            .arg("touch /root/started; sleep 1; echo done"),
    );
    let started = f.blink.disk_path(&f.box_id, "/root/started");
    assert!(wait_for_file(&started), "the command did not start");

    let signalled = Instant::now();
    f.server.signal("TERM");
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
    let status = f
        .server
        .wait_exit(Duration::from_secs(15))
        .expect("blink-server waited out the grace with nothing running");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_said_it_shut_down(&f.server.log());
}
