//! A real S3-compatible server on 127.0.0.1 for the cluster's export
//! store: `s3s-fs` (crates.io, the `s3s` project's file-system server,
//! installed by scripts/install-deps.sh), serving one bucket from a
//! temporary directory with its own access key. Killed when dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket the cluster tests use.
pub const BUCKET: &str = "blink-exports";
const ACCESS_KEY: &str = "blink-test-access";
const SECRET_KEY: &str = "blink-test-secret-key";

/// A running `s3s-fs`.
pub struct S3Server {
    child: Child,
    pub port: u16,
    /// Its root: bucket `b`'s object `k` is the file `<root>/b/k`.
    pub root: tempfile::TempDir,
}

/// Whether `s3s-fs` is here (reported skipped otherwise).
pub fn available() -> bool {
    let here = Command::new("s3s-fs")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    blink_sdk::testing::require(here, "s3s-fs (cargo install; scripts/install-deps.sh)")
}

impl S3Server {
    /// Start it with [`BUCKET`] made; `None` (skipped) without `s3s-fs`.
    pub fn start() -> Option<Self> {
        if !available() {
            return None;
        }
        let root = tempfile::Builder::new()
            .prefix("blink-s3-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("the bucket");
        let port = crate::free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs");
        let server = Self { child, port, root };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// `[cluster.export_s3]` for this server, keys under `prefix`.
    pub fn toml(&self, prefix: &str) -> String {
        format!(
            "[cluster.export_s3]\nbucket = {BUCKET:?}\nprefix = {prefix:?}\nendpoint = \"http://127.0.0.1:{}\"\nallow_http = true\n",
            self.port
        )
    }

    /// The credentials, as the environment gives them to blink-server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// The file holding object `key` of [`BUCKET`].
    pub fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
