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

/// Whether this machine can run local sandboxes; tests that need them skip
/// with a printed reason when not.
pub fn local_runtime_available() -> bool {
    let ok = Command::new("bwrap")
        .args(["--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must be able to run local sandboxes: bubblewrap cannot create namespaces");
    }
    if !ok {
        eprintln!(
            "SKIPPED: bubblewrap cannot create namespaces here (install bubblewrap; run `blink-cli doctor`)"
        );
    }
    ok
}
