//! End-to-end harness: drives the built `blink-cli` binary as a user would,
//! each test with its own throwaway data dir.
//!
//! The binaries are found in `$BLINK_BIN_DIR`, else in the workspace's
//! `target/debug` (build them first: `cargo build --workspace`).
//!
//! - [`Blink`]: a data dir and `blink-cli` on it; [`Blink::with_runtime`]
//!   for tests that need real sandboxes (`None`, reported skipped, when
//!   this machine cannot make them).
//! - [`Blink::server`]: a [`ServerBuilder`] for `blink-server` (SSH and
//!   REST alike), started as a [`Server`].
//! - [`ssh`]: OpenSSH clients with throwaway keys, and [`ssh::SshFixture`]
//!   (a session `s1` the client logs in to, and a server).
//! - [`rest`]: HTTP and WebSocket calls to a [`Server`].
//! - [`run`] / [`run_with`]: the one way to run a program to its end with
//!   stdin fed; [`Running`] for one the test talks to as it runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod abuse;
pub mod cluster;
pub mod leftovers;
pub mod registry;
pub mod rest;
mod running;
pub mod s3;
mod server;
pub mod ssh;
pub mod tty;
pub mod units;
pub mod vm;

pub use running::Running;

/// A port on 127.0.0.1 that is free now, for a program that takes a fixed
/// port (etcd, a registry, QEMU's forwards). Drawn below Linux's
/// ephemeral range (32768-60999): a port the kernel handed out for a
/// probe is soon handed out again to one of the many outgoing loopback
/// connections parallel tests make, before the program binds it.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20000..32000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-32000 on 127.0.0.1");
}
pub use server::{Server, ServerBuilder};

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

/// Run `cmd` to its end with `input` on its stdin (written from another
/// thread, so a program that writes before it reads never deadlocks);
/// stdout and stderr are collected.
pub fn run(cmd: &mut Command, input: &[u8]) -> Output {
    run_with(cmd, |mut stdin| {
        let _ = stdin.write_all(input);
    })
    .0
}

/// [`run`] with stdin fed by `feed` (for input made as it is sent, never
/// held whole); its result comes back beside the output. Stdin closes when
/// `feed` returns.
pub fn run_with<T: Send>(
    cmd: &mut Command,
    feed: impl FnOnce(ChildStdin) -> T + Send,
) -> (Output, T) {
    let mut child = spawn_piped(cmd);
    let stdin = child.stdin.take().expect("stdin");
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || feed(stdin));
        let out = child.wait_with_output().expect("wait");
        (out, writer.join().expect("stdin writer"))
    })
}

/// Spawn `cmd` with stdin, stdout and stderr piped.
pub(crate) fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

/// Wait up to `limit` for `child` to exit; its status, or None if it
/// still runs.
pub(crate) fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
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

    /// A Blink for a test that needs real sandboxes; `None` when this
    /// machine cannot make them (see [`local_runtime_available`]): the
    /// test then returns at once.
    pub fn with_runtime() -> Option<Self> {
        local_runtime_available().then(Self::new)
    }

    /// `blink-cli ARGS` on this data dir, not yet run. Its `--config`
    /// (`BLINK_CONFIG`) is [`Blink::cli_config_path`]: unless the test
    /// wrote its own ([`Blink::set_cli_config`]), `[images] pull =
    /// "never"`, so that no test reaches for a public registry.
    pub fn cli(&self, args: &[&str]) -> Command {
        let config = self.cli_config_path();
        if !config.exists() {
            std::fs::write(&config, "[images]\npull = \"never\"\n").expect("write cli.toml");
        }
        let mut cmd = Command::new(bin("blink-cli"));
        cmd.arg("--data-dir").arg(self.data_dir.path());
        cmd.env_remove("BLINK_DATA_DIR");
        cmd.env("BLINK_CONFIG", config);
        for var in ["DOCKER_AUTH_CONFIG", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG"] {
            cmd.env_remove(var);
        }
        cmd.args(args);
        cmd
    }

    /// The config file every `blink-cli` of this Blink reads.
    pub fn cli_config_path(&self) -> PathBuf {
        self.data_dir.path().join("cli.toml")
    }

    /// Replace the CLI's config (TOML; the CLI reads its `[images]`).
    pub fn set_cli_config(&self, toml: &str) {
        std::fs::write(self.cli_config_path(), toml).expect("write cli.toml");
    }

    /// Run `blink-cli ARGS` with empty stdin (to feed it some:
    /// `run(&mut blink.cli(args), input)`).
    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cli(args), b"")
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

    /// A `blink-server` on this data dir, to configure and start.
    pub fn server(&self) -> ServerBuilder {
        ServerBuilder::new(self)
    }

    /// Where [`Blink::script`] writes: the servers' script directory.
    pub fn scripts_dir(&self) -> PathBuf {
        self.data_dir.path().join("host-scripts")
    }

    /// Write an executable script into the scripts dir and return its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.scripts_dir();
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(name);
        std::fs::write(&path, body).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// A host path of a file of a session's disk. A disk that is a
    /// directory (made without root) is read where it is; a disk image is
    /// mounted only inside its sandbox, so its files are reached through a
    /// process of the running sandbox (`/proc/<pid>/root`), waited for up
    /// to 10 s.
    pub fn disk_path(&self, box_id: &str, sandbox_path: &str) -> PathBuf {
        let relative = sandbox_path.trim_start_matches('/');
        let dir = self.data_dir.path().join("sandboxes").join(box_id);
        if dir.join("rootfs").is_dir() {
            return dir.join("rootfs").join(relative);
        }
        for _ in 0..400 {
            if let Some(pid) = leftovers::sandbox_process(box_id) {
                return PathBuf::from(format!("/proc/{pid}/root")).join(relative);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("sandbox {box_id} is not running: its disk cannot be read");
    }
}

/// Host bytes allocated under `dir` (files' blocks, not their sizes).
pub fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// Real sandboxes and a server of the defaults on them; `None` as for
/// [`Blink::with_runtime`].
pub fn server_fixture() -> Option<(Blink, Server)> {
    let blink = Blink::with_runtime()?;
    let server = blink.server().start();
    Some((blink, server))
}

/// Wait up to 10 s for a file to appear (a sandbox signalling readiness
/// through its disk); true if it did.
pub fn wait_for_file(path: &Path) -> bool {
    for _ in 0..400 {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
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
