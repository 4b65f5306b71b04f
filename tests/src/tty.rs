//! `blink-cli session spawn --tty` on a real terminal (tmux), however the
//! CLI reaches Blink: the sandbox's terminal takes the local size and
//! follows its changes, and leaving restores the local terminal. One check
//! for every way (cli_session.rs directly, cli_server.rs through a server).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::{Blink, wait_for_file};

fn tmux(socket: &Path, args: &[&str]) -> Output {
    Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .args(args)
        .output()
        .expect("tmux (installed by scripts/install-deps.sh)")
}

/// Run `cli` (a shell command line that starts `blink-cli`, with `SPAWN`
/// standing for `session spawn --name NAME --tty -- sh`) in an 80x24 tmux
/// window; `blink` holds the data dir whose session `box_id` (`name`)
/// runs the shell, so its disk is read from the host.
pub fn check_spawn_tty_follows_the_window(blink: &Blink, box_id: &str, name: &str, cli: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("tmux.sock");
    let spawn = format!("session spawn --name {name} --tty -- sh");
    let line = format!(
        "stty -g > {d}/before; {cli}; stty -g > {d}/after; sleep 30",
        cli = cli.replace("SPAWN", &spawn),
        d = dir.path().display()
    );
    let out = tmux(
        &socket,
        &["new-session", "-d", "-x", "80", "-y", "24", &line],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size_file = blink.disk_path(box_id, "/var/blink/memory/size");
    let ask = |file: &str| {
        tmux(
            &socket,
            &[
                "send-keys",
                &format!("stty size > /var/blink/memory/{file}"),
                "Enter",
            ],
        );
    };
    // The shell inside may take a moment to come up; ask until it answers.
    for _ in 0..100 {
        ask("size");
        std::thread::sleep(Duration::from_millis(200));
        if size_file.exists() {
            break;
        }
    }
    let first = std::fs::read_to_string(&size_file).expect("the shell never answered");
    assert_eq!(first.trim(), "24 80", "{cli}");
    tmux(&socket, &["resize-window", "-x", "120", "-y", "40"]);
    let resized = blink.disk_path(box_id, "/var/blink/memory/resized");
    std::thread::sleep(Duration::from_millis(300));
    ask("resized");
    assert!(
        wait_for_file(&resized),
        "{cli}: the shell did not answer after resize"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::read_to_string(&resized).unwrap().trim(),
        "40 120",
        "{cli}"
    );
    // Leaving the shell restores the local terminal's settings.
    tmux(&socket, &["send-keys", "exit", "Enter"]);
    let after = dir.path().join("after");
    assert!(
        wait_for_file(&after),
        "{cli}: blink-cli did not return after exit"
    );
    std::thread::sleep(Duration::from_millis(100));
    let before = std::fs::read_to_string(dir.path().join("before")).unwrap();
    assert_eq!(std::fs::read_to_string(&after).unwrap(), before, "{cli}");
    tmux(&socket, &["kill-server"]);
}
