//! Deployment (docs/DEPLOY.md): the systemd unit passes `systemd-analyze
//! verify`, and blink-server does its whole job under exactly the
//! capability bounding set and `no_new_privs` the unit gives it (started
//! through `setpriv` with the unit's own list): sessions, runs, SSH,
//! snapshots, clones. Take a capability the server needs out of the unit
//! and this test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use blink_e2e::ssh::{Client, setup};
use blink_e2e::{Blink, bin};
use serde_json::json;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/blink-server.service")
}

/// The unit's `CapabilityBoundingSet`, as setpriv's `--bounding-set`.
fn bounding_set() -> String {
    let unit = std::fs::read_to_string(unit_path()).expect("read the unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| {
            let name = c.strip_prefix("CAP_").expect("CAP_ names");
            format!("+{}", name.to_ascii_lowercase())
        })
        .collect();
    assert!(caps.len() > 5, "{line}");
    format!("-all,{}", caps.join(","))
}

fn tool(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

#[test]
fn the_unit_verifies() {
    if !blink_e2e::units::systemd_analyze_here() {
        return;
    }
    let here = tempfile::tempdir().expect("tempdir");
    blink_e2e::units::verify(&blink_e2e::units::install(&unit_path(), here.path()));
}

#[test]
fn the_server_works_under_the_units_capabilities() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    if !blink_sdk::testing::require(tool("setpriv"), "setpriv (util-linux) is not installed") {
        return;
    }
    let client = Client::new();
    setup(&blink, &client);
    let caps = bounding_set();
    let server = blink
        .server()
        .wrapped(&[
            "setpriv",
            "--bounding-set",
            &caps,
            "--inh-caps=-all",
            "--no-new-privs",
        ])
        .start();
    // It runs with that set and no more.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("server status");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd")
        .trim()
        .to_owned();
    let full = u64::from_str_radix(&bounding, 16).expect("hex");
    assert_eq!(full & (1 << 16), 0, "CAP_SYS_MODULE kept: {bounding}");
    assert_eq!(full & (1 << 17), 0, "CAP_SYS_RAWIO kept: {bounding}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // Sessions, runs, SSH, snapshots and clones.
    assert_eq!(server.sh("s1", "echo data > /root/f; id -u"), "0\n");
    // Deleting an image's file (an overlay whiteout), set-id bits, owners.
    let script = "rm /etc/passwd && test ! -e /etc/passwd && mkdir -p /srv/g && \
                  chown 1000:1000 /srv/g && chmod 2775 /srv/g && touch /srv/g/x && \
                  stat -c '%u %a' /srv/g && stat -c %g /srv/g/x";
    assert_eq!(server.sh("s1", script), "1000 2775\n1000\n");
    let out = client.ssh(&server, "id", "s1").arg("cat /root/f").output();
    let out = out.expect("ssh");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "data\n");
    let a = server.post("/api/sessions/s1/checkpoints", json!({"snapshot": "c1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = server.post("/api/sessions", json!({"name": "s2", "from": "s1@c1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(
        server.sh("s2", "cat /root/f; test -e /etc/passwd || echo gone"),
        "data\ngone\n"
    );
    let a = server.post("/api/sessions/s1/checkpoints/c1/restore", json!({}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    // Export (with its image) and import: image trees and disks made by
    // the server itself.
    server.sh(
        "s1",
        "mkfifo /root/pipe && chown 7:8 /root/f && chmod 4750 /root/f",
    );
    let e = server.post_raw("/api/sessions/s1/export", None, b"");
    assert_eq!(e.status, 201, "{:?}", e.body);
    let file = e.body["filename"].as_str().expect("filename").to_owned();
    let (status, _, archive) = server.get_bytes(&format!("/api/exports/{file}"), &[]);
    assert_eq!(status, 200);
    let a = server.post_multipart(
        "/api/import",
        &[("name", "s3")],
        Some(("archive", &archive)),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(
        server.sh(
            "s3",
            "stat -c '%u %g %a' /root/f; test -p /root/pipe && echo fifo"
        ),
        "7 8 4750\nfifo\n"
    );
    let run = server.run_wait("/api/runs", json!({"command": ["echo", "ephemeral"]}));
    assert_eq!(run["stdout"]["data"], "ephemeral\n", "{run}");
    let a = server.delete("/api/sessions/s2");
    assert!(a.status == 200 || a.status == 204, "{:?}", a.body);
}

/// The container's entry point (deploy/docker-entrypoint.sh), run here as
/// the container would run it (no Docker daemon on this machine): on an
/// empty data dir it makes the default image, warns that no token is set,
/// then execs blink-server, which serves.
#[test]
fn the_containers_entry_point_makes_the_image_then_serves() {
    let Some(_blink) = Blink::with_runtime() else {
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    let bin_dir = bin("blink-server").parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker-entrypoint.sh");
    let mut child = Command::new("sh")
        .arg(&script)
        .args([
            "--ssh-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("PATH", path)
        .env("BLINK_DATA_DIR", data.path())
        .env_remove("BLINK_API_TOKEN")
        .env_remove("BLINK_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the entry point");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(addr) = line.strip_prefix("http listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(120));
    let health = addr.as_ref().ok().map(|addr| {
        ureq::get(&format!("http://{addr}/api/health"))
            .call()
            .map(|r| r.status())
            .ok()
    });
    let images = addr.as_ref().ok().map(|addr| {
        ureq::get(&format!("http://{addr}/api/images"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    });
    // SIGTERM through the entry point's exec: it is blink-server now.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(addr.is_ok(), "the server never listened: {stderr}");
    assert_eq!(health, Some(Some(200)), "{stderr}");
    let images = images.unwrap_or_default();
    assert!(images.contains("blink/default"), "{images}");
    assert!(stderr.contains("BLINK_API_TOKEN is not set"), "{stderr}");
    assert!(
        out.status.success(),
        "blink-server did not stop cleanly: {stderr}"
    );
}
