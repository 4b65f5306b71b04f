//! End-to-end harness: drives the built `blink-cli` binary as a user would,
//! each test with its own throwaway data dir.
//!
//! The binaries are found in `$BLINK_BIN_DIR`, else in the workspace's
//! `target/debug` (build them first: `cargo build --workspace`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where the built binaries are.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("BLINK_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first (or set BLINK_BIN_DIR)",
        path.display()
    );
    path
}

/// A Blink installation in a temporary data dir.
pub struct Blink {
    pub data_dir: tempfile::TempDir,
}

impl Default for Blink {
    fn default() -> Self {
        Self::new()
    }
}

impl Blink {
    pub fn new() -> Self {
        Self {
            data_dir: tempfile::Builder::new()
                .prefix("blink-e2e-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// A `blink-cli` command on this data dir.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(bin("blink-cli"));
        cmd.arg("--data-dir").arg(self.data_dir.path());
        cmd.env_remove("BLINK_DATA_DIR");
        cmd
    }

    /// Run `blink-cli ARGS` with empty stdin.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, b"")
    }

    /// Run `blink-cli ARGS` feeding `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn blink-cli");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait blink-cli");
        let _ = writer.join();
        out
    }

    /// Run and insist on success; returns stdout as text.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "blink-cli {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run with `--json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "blink-cli {all:?} printed no JSON ({e})\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), value)
    }

    /// Write an executable script into a temp dir and return its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.data_dir.path().join("host-scripts");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(name);
        std::fs::write(&path, body).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}

/// Wait up to 10 s for a file to appear (a sandbox signalling readiness
/// through its disk); true if it did.
pub fn wait_for_file(path: &Path) -> bool {
    for _ in 0..400 {
        if path.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}

impl Blink {
    /// Host path of a file inside a session's disk.
    pub fn disk_path(&self, box_id: &str, sandbox_path: &str) -> PathBuf {
        self.data_dir
            .path()
            .join("sandboxes")
            .join(box_id)
            .join("rootfs")
            .join(sandbox_path.trim_start_matches('/'))
    }
}

/// stdout and stderr of an output as text.
pub fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this machine can run local sandboxes; tests that need them are
/// reported skipped by name when not (and fail under `CI=true`).
pub fn local_runtime_available() -> bool {
    let ok = Command::new("bwrap")
        .args(["--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    blink_sdk::testing::require(
        ok,
        "bubblewrap cannot create namespaces here (install bubblewrap; run `blink-cli doctor`)",
    )
}

/// Helpers for the SSH gateway tests: a `blink-server` on a free loopback
/// port and OpenSSH clients with throwaway keys and known_hosts.
pub mod ssh {
    use std::io::{BufRead, BufReader, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Output, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use sha2::{Digest, Sha256};

    use super::{Blink, bin};

    /// A running `blink-server`, killed when dropped.
    pub struct Server {
        child: Child,
        pub port: u16,
        pub fingerprint: String,
        /// Everything the server wrote to stderr so far (its log).
        log: Arc<Mutex<String>>,
        /// The config file the harness gave the server.
        _config: tempfile::TempDir,
    }

    impl Server {
        /// The server's log so far.
        pub fn log(&self) -> String {
            self.log.lock().map(|l| l.clone()).unwrap_or_default()
        }

        /// Wait up to 20 s for a log line containing all of `needles`;
        /// returns that line.
        pub fn wait_log(&self, needles: &[&str]) -> Option<String> {
            for _ in 0..800 {
                let found = self
                    .log()
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_string);
                if found.is_some() {
                    return found;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            None
        }

        /// Send the server a signal by name (`TERM`, `INT`, ...).
        pub fn signal(&self, name: &str) {
            let status = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(self.child.id().to_string())
                .status()
                .expect("kill");
            assert!(status.success(), "kill -{name} failed");
        }

        /// Wait up to `limit` for the server to exit; its status, or None
        /// if it is still running.
        pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
            let until = Instant::now() + limit;
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return Some(status);
                }
                if Instant::now() >= until {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Keys, known_hosts and config of one test, outside the data dir.
    pub struct Client {
        pub dir: tempfile::TempDir,
    }

    impl Default for Client {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Client {
        pub fn new() -> Self {
            let client = Self {
                dir: tempfile::Builder::new()
                    .prefix("blink-ssh-")
                    .tempdir()
                    .expect("tempdir"),
            };
            client.keygen("id");
            client.keygen("other");
            client
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        pub fn keygen(&self, name: &str) {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(self.path(name))
                .status()
                .expect("ssh-keygen");
            assert!(status.success());
        }

        /// `ssh` with a key, this test's known_hosts, and no agent or config.
        pub fn ssh(&self, server: &Server, key: &str, login: &str) -> Command {
            let mut cmd = Command::new("ssh");
            cmd.args(self.common_opts(key))
                .arg("-p")
                .arg(server.port.to_string())
                .arg(format!("{login}@127.0.0.1"));
            cmd
        }

        pub fn common_opts(&self, key: &str) -> Vec<String> {
            vec![
                "-F".into(),
                "/dev/null".into(),
                "-o".into(),
                "BatchMode=yes".into(),
                "-o".into(),
                format!("UserKnownHostsFile={}", self.path("known_hosts").display()),
                "-o".into(),
                "StrictHostKeyChecking=accept-new".into(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
                "-o".into(),
                "IdentityAgent=none".into(),
                "-o".into(),
                "LogLevel=ERROR".into(),
                "-i".into(),
                self.path(key).display().to_string(),
            ]
        }
    }

    /// Start `blink-server` on a free loopback port; the server prints the
    /// address it bound, so nothing is guessed or waited for by the clock.
    /// Write a server config file beside the client's keys; its path, for
    /// `--config`.
    pub fn config_file(client: &Client, text: &str) -> String {
        let path = client.path("blink.toml");
        write_file(&path, text);
        path.to_str().expect("utf-8").to_string()
    }

    pub fn start_server(blink: &Blink, extra: &[&str]) -> Server {
        start_server_logging(blink, extra, "warn")
    }

    /// Admission limits (`[ssh.limits]`) every test server gets unless its
    /// config sets them: tests connect from 127.0.0.1 many times, at once
    /// and with refused keys on purpose, which the defaults (10
    /// unauthenticated connections per source, penalties) would refuse.
    /// Tests of those limits set them, and connect from other loopback
    /// addresses (127.0.0.2, ...) where a source must be limited.
    pub const TEST_ADMISSION: &[(&str, &str)] = &[
        ("penalty_exempt", r#"["127.0.0.1"]"#),
        ("per_source_max_startups", "64"),
        ("max_startups", r#""64:30:128""#),
    ];

    /// The server's arguments with the config (`--config FILE` in `extra`,
    /// or none) completed with [`TEST_ADMISSION`] in a file of `dir`. A
    /// config that is not valid TOML is passed as it is.
    fn with_test_admission(extra: &[&str], dir: &Path) -> Vec<String> {
        let at = extra.iter().position(|a| *a == "--config");
        let text = match at.and_then(|i| extra.get(i + 1)) {
            Some(path) => std::fs::read_to_string(path).expect("read the test's config"),
            None => String::new(),
        };
        let Ok(mut doc) = text.parse::<toml::Table>() else {
            return extra.iter().map(|a| a.to_string()).collect();
        };
        let ssh = doc
            .entry("ssh")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(limits) = ssh.as_table_mut().map(|t| {
            t.entry("limits")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        }) && let Some(limits) = limits.as_table_mut()
        {
            for (key, value) in TEST_ADMISSION {
                if !limits.contains_key(*key) {
                    let value: toml::Table = format!("v = {value}").parse().expect("harness TOML");
                    limits.insert(key.to_string(), value["v"].clone());
                }
            }
        }
        let path = dir.join("blink.toml");
        write_file(&path, &doc.to_string());
        let mut args: Vec<String> = Vec::new();
        let mut i = 0;
        while i < extra.len() {
            if Some(i) == at {
                i += 2;
                continue;
            }
            args.push(extra[i].to_string());
            i += 1;
        }
        args.push("--config".into());
        args.push(path.display().to_string());
        args
    }

    /// `start_server` with `RUST_LOG` set to `filter`; the log is kept
    /// (see `Server::log`) and echoed to the test's stderr.
    pub fn start_server_logging(blink: &Blink, extra: &[&str], filter: &str) -> Server {
        let config = tempfile::Builder::new()
            .prefix("blink-server-config-")
            .tempdir()
            .expect("tempdir");
        let extra = with_test_admission(extra, config.path());
        let mut child = Command::new(bin("blink-server"))
            .arg("--data-dir")
            .arg(blink.data_dir.path())
            .args(["--ssh-listen", "127.0.0.1:0"])
            // The REST API of the same process must not collide either.
            .args(["--http-listen", "127.0.0.1:0"])
            .args(&extra)
            .env_remove("BLINK_DATA_DIR")
            .env_remove("BLINK_CONFIG")
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn blink-server");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut fingerprint = String::new();
        let mut port = 0;
        for line in lines.by_ref() {
            let line = line.expect("server stdout");
            if let Some(rest) = line.strip_prefix("ssh host key ") {
                fingerprint = rest.split_whitespace().next().unwrap_or("").to_string();
            }
            if let Some(addr) = line.strip_prefix("ssh listening on ") {
                port = addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port");
                break;
            }
        }
        assert!(port != 0, "blink-server did not start");
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            port,
            fingerprint,
            log,
            _config: config,
        }
    }

    pub fn run(mut cmd: Command, input: &[u8]) -> Output {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait");
        let _ = writer.join();
        out
    }

    pub fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// A session `s1` whose own key file authorizes the client's `id` key.
    pub fn setup(blink: &Blink, client: &Client) {
        blink.ok(&["session", "open", "--name", "s1"]);
        let out = blink.ok(&[
            "session",
            "keys",
            "add",
            "--name",
            "s1",
            client.path("id.pub").to_str().expect("utf-8"),
        ]);
        assert!(out.contains("SHA256:"), "{out}");
    }

    pub fn write_file(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }
}
pub mod abuse;
pub mod rest;
