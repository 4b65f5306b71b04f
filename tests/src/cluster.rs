//! A real etcd cluster on 127.0.0.1 for the cluster tests
//! (tests/tests/cluster.rs, docs/SCALE.md): members with their own ports
//! and data dirs in a temporary directory, started by the test and killed
//! when it ends (also when it fails).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether Debian's `etcd-server` and `etcd-client` are installed; a test
/// is reported skipped when not (and fails under `CI=true`).
pub fn etcd_available() -> bool {
    let ok = |bin: &str, arg: &str| {
        Command::new(bin)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    blink_sdk::testing::require(
        ok("etcd", "--version") && ok("etcdctl", "version"),
        "etcd is not installed (apt-get install etcd-server etcd-client)",
    )
}

/// A free port on 127.0.0.1 now (etcd takes fixed ports).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Member {
    name: String,
    client_port: u16,
    child: Option<Child>,
}

/// An etcd cluster of loopback members.
pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Start `n` members and wait (bounded) until every one is healthy.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("blink-etcd-")
            .tempdir()
            .expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let name = format!("m{i}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "blink-test",
                    // Fast elections: a killed member's loss is noticed soon.
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            members.push(Member {
                name,
                client_port: client,
                child: Some(child),
            });
        }
        let etcd = Self { members, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = etcd.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd never became healthy: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                etcd.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// The client URLs of the members still running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `etcd_endpoints = [...]` of every member, for a `[cluster]` table.
    pub fn endpoints_toml(&self) -> String {
        let list: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", list.join(", "))
    }

    /// `etcdctl` against the running members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl")
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        assert!(out.status.success(), "etcdctl get: {:?}", out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The value at `key`, if any.
    pub fn value(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", "--print-value-only", key]);
        assert!(out.status.success(), "etcdctl get: {:?}", out);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let path: PathBuf = self.dir.path().join(format!("{}.log", m.name));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- {}\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
