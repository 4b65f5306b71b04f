//! The algorithms the gateway offers (`gateway/src/ssh/algorithms.rs`),
//! judged by ssh-audit and negotiated by the OpenSSH client here (Debian
//! 12's 9.2 has no ML-KEM: it must agree on curve25519-sha256).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blink_e2e::Server;
use blink_e2e::ssh::Client;
use blink_e2e::{Blink, texts};

/// What ssh-audit says of curve25519: true, and no fault of the server's
/// until OpenSSH clients all speak ML-KEM (russh has no sntrup761).
const POST_QUANTUM_NOTE: &str = "does not provide protection against post-quantum attacks";

/// The ciphers the server offers.
const CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];

/// Wait for `child` for at most `limit`, killing it past that.
fn wait_bounded(mut child: Child, limit: Duration) -> Option<Output> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn runs(program: &Path, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `ssh-audit`: on PATH (scripts/install-deps.sh installs it), else
/// installed from PyPI into a venv under target/ kept across runs; None
/// when neither works (no network, no python3 venv).
fn ssh_audit() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let on_path = PathBuf::from("ssh-audit");
            if runs(&on_path, "-h") {
                return Some(on_path);
            }
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ssh-audit-venv");
            let bin = venv.join("bin/ssh-audit");
            if !runs(&bin, "-h") {
                let made = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .is_ok_and(|s| s.success());
                if made {
                    let pip = Command::new(venv.join("bin/pip"))
                        .args(["install", "--quiet", "ssh-audit"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .spawn();
                    if let Ok(pip) = pip {
                        let _ = wait_bounded(pip, Duration::from_secs(300));
                    }
                }
            }
            runs(&bin, "-h").then_some(bin)
        })
        .clone()
}

/// ssh-audit's JSON report on the server.
fn audit(program: &Path, server: &Server) -> serde_json::Value {
    let child = Command::new(program)
        .args(["-j", "-t", "10"])
        .arg(format!("127.0.0.1:{}", server.ssh_port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh-audit");
    let out = wait_bounded(child, Duration::from_secs(120)).expect("ssh-audit finished");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ssh-audit printed no JSON ({e}; status {:?})\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every (section, algorithm, level, note) of the report's algorithm
/// sections.
fn notes(report: &serde_json::Value) -> Vec<(String, String, String, String)> {
    let mut all = Vec::new();
    for section in ["kex", "key", "enc", "mac"] {
        let entries = report[section].as_array().cloned().unwrap_or_default();
        for entry in entries {
            let algorithm = entry["algorithm"].as_str().unwrap_or("").to_string();
            let Some(levels) = entry["notes"].as_object() else {
                continue;
            };
            for (level, list) in levels {
                for note in list.as_array().into_iter().flatten() {
                    all.push((
                        section.to_string(),
                        algorithm.clone(),
                        level.clone(),
                        note.as_str().unwrap_or("").to_string(),
                    ));
                }
            }
        }
    }
    all
}

fn algorithms(report: &serde_json::Value, section: &str) -> Vec<String> {
    report[section]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["algorithm"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn ssh_audit_finds_no_failure_and_no_warning_but_the_post_quantum_note() {
    let program = ssh_audit();
    if !blink_sdk::testing::require(
        program.is_some(),
        "ssh-audit is not installed and could not be installed from PyPI (pip install ssh-audit)",
    ) {
        return;
    }
    let program = program.expect("ssh-audit");
    let blink = Blink::new();
    // The default admission limits, loopback not exempt: what ssh-audit's
    // connection rate test (DHEat) meets is what any source meets.
    let server = blink
        .server()
        .config("[ssh.limits]\npenalty_exempt = []\n")
        .log_filter("info")
        .start();
    let report = audit(&program, &server);
    eprintln!("{report:#}");

    assert_eq!(
        algorithms(&report, "kex"),
        [
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "ext-info-s",
            "kex-strict-s-v00@openssh.com"
        ]
    );
    assert_eq!(algorithms(&report, "key"), ["ssh-ed25519"]);
    assert_eq!(algorithms(&report, "enc"), CIPHERS);
    assert_eq!(
        algorithms(&report, "mac"),
        [
            "hmac-sha2-256-etm@openssh.com",
            "hmac-sha2-512-etm@openssh.com"
        ]
    );
    let all = notes(&report);
    let fails: Vec<_> = all.iter().filter(|n| n.2 == "fail").collect();
    assert!(fails.is_empty(), "{fails:?}");
    let warns: Vec<_> = all.iter().filter(|n| n.2 == "warn").collect();
    for warn in &warns {
        assert!(
            warn.1.starts_with("curve25519") && warn.3 == POST_QUANTUM_NOTE,
            "unexpected warning: {warn:?}"
        );
    }
    assert_eq!(report["cves"].as_array().map(Vec::len), Some(0), "{report}");
    let recommendations = report["recommendations"].to_string();
    assert!(!recommendations.contains("fail"), "{recommendations}");
    // Per-source penalties throttle the rate test: no DHEat note.
    let additional = report["additional_notes"].to_string();
    assert!(!additional.contains("DHEat"), "{additional}");
    assert!(!additional.contains("throttling"), "{additional}");
}

#[test]
fn post_quantum_only_passes_clean_and_shuts_out_clients_without_ml_kem() {
    let blink = Blink::new();
    let client = Client::new();
    let server = blink
        .server()
        .config("[ssh]\npost_quantum_only = true\n")
        .log_filter("info")
        .start();

    let (kex, stderr) = negotiate(&client, &server);
    if openssh_version() < (9, 9) {
        // Debian 12's 9.2: no ML-KEM, no agreement.
        assert!(kex.is_none(), "{stderr}");
        assert!(
            stderr.contains("no matching key exchange method found"),
            "{stderr}"
        );
    } else {
        assert_eq!(kex.as_deref(), Some("mlkem768x25519-sha256"), "{stderr}");
    }

    let Some(program) = ssh_audit() else {
        blink_sdk::testing::skip("ssh-audit part: ssh-audit is not installed");
        return;
    };
    let report = audit(&program, &server);
    assert_eq!(
        algorithms(&report, "kex"),
        [
            "mlkem768x25519-sha256",
            "ext-info-s",
            "kex-strict-s-v00@openssh.com"
        ]
    );
    let all = notes(&report);
    let bad: Vec<_> = all
        .iter()
        .filter(|n| n.2 == "fail" || n.2 == "warn")
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn openssh_negotiates_curve25519_or_ml_kem_and_a_listed_cipher() {
    let blink = Blink::new();
    let client = Client::new();
    let server = blink.server().log_filter("info").start();
    let (kex, stderr) = negotiate(&client, &server);
    let expected = if openssh_version() < (9, 9) {
        "curve25519-sha256"
    } else {
        "mlkem768x25519-sha256"
    };
    assert_eq!(kex.as_deref(), Some(expected), "{stderr}");
    for direction in ["server->client", "client->server"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("kex: {direction} cipher: ")))
            .unwrap_or_else(|| panic!("no {direction} cipher line: {stderr}"));
        let cipher = line
            .split("cipher: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("");
        assert!(CIPHERS.contains(&cipher), "{line}");
        let mac = line.split("MAC: ").nth(1).unwrap_or("");
        assert!(
            mac.starts_with("<implicit>") || mac.contains("-etm@openssh.com"),
            "{line}"
        );
    }
}

/// The installed OpenSSH client's version (major, minor).
fn openssh_version() -> (u32, u32) {
    let out = Command::new("ssh").arg("-V").output().expect("ssh -V");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let version = text
        .strip_prefix("OpenSSH_")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit() && c != '.').next())
        .unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    eprintln!("client: {} -> {version:?}", text.trim());
    version
}

/// Connect with `ssh -vv` (to a session that does not exist: only the key
/// exchange matters); the key exchange it agreed on, if any, and its
/// stderr.
fn negotiate(client: &Client, server: &Server) -> (Option<String>, String) {
    let child = Command::new("ssh")
        .args(["-F", "/dev/null", "-vv", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            client.path("known_hosts").display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-i",
        ])
        .arg(client.path("id"))
        .arg("-p")
        .arg(server.ssh_port.to_string())
        .args(["nosuch@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let out = wait_bounded(child, Duration::from_secs(60)).expect("ssh finished");
    let (_, stderr) = texts(&out);
    let kex = stderr
        .lines()
        .find_map(|l| l.split("kex: algorithm: ").nth(1))
        .map(|k| k.trim().to_string())
        .filter(|k| k != "(no match)");
    (kex, stderr)
}
