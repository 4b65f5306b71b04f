//! One way to start `blink-server` for every test, SSH and REST alike:
//! [`ServerBuilder`] sets what a test needs, [`ServerBuilder::start`] runs
//! it on free loopback ports and reads the addresses it bound from its
//! stdout (nothing is guessed, nor waited for by the clock).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Blink, bin};

/// What a `blink-server` is started with; see [`Blink::server`].
///
/// Always: the Blink's data dir, `--ssh-listen` and `--http-listen` on
/// 127.0.0.1 port 0, `--script-dir` the Blink's scripts dir (where
/// [`Blink::script`] writes), and none of the `BLINK_*` variables of the
/// test's own environment.
pub struct ServerBuilder {
    data_dir: PathBuf,
    scripts_dir: PathBuf,
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    token: Option<String>,
    log_filter: String,
    /// A command the server is started through (see `wrapped`).
    wrapper: Vec<String>,
    /// `--role router`: it listens on HTTP only (docs/SCALE.md).
    router: bool,
}

/// Admission limits (`[ssh.limits]`) every test server gets unless its
/// config sets them: tests connect from 127.0.0.1 many times, at once and
/// with refused keys on purpose, which the defaults (10 unauthenticated
/// connections per source, penalties) would refuse. Tests of those limits
/// set them, and connect from other loopback addresses (127.0.0.2, ...)
/// where a source must be limited.
pub const TEST_ADMISSION: &[(&str, &str)] = &[
    ("penalty_exempt", r#"["127.0.0.1"]"#),
    ("per_source_max_startups", "64"),
    ("max_startups", r#""64:30:128""#),
];

/// A test's config completed with [`TEST_ADMISSION`], no pool of
/// ephemeral sandboxes (`[sandbox] ephemeral_pool = 0`: most tests make no
/// ephemeral runs, and a pool's sandboxes would only load the machine;
/// tests of the pool set it) and no pulls on demand (`[images] pull =
/// "never"`: a session naming an image the store lacks must not reach for
/// a public registry; tests of pulls set their own `[images]`, pointing
/// at a registry on loopback); a config that is not valid TOML is passed
/// as it is (tests of config errors).
fn with_test_admission(text: &str) -> String {
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return text.to_owned();
    };
    if let Some(images) = doc
        .entry("images")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
    {
        images
            .entry("pull")
            .or_insert(toml::Value::String("never".into()));
    }
    if let Some(sandbox) = doc
        .entry("sandbox")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
    {
        sandbox
            .entry("ephemeral_pool")
            .or_insert(toml::Value::Integer(0));
    }
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
                limits.insert((*key).to_string(), value["v"].clone());
            }
        }
    }
    doc.to_string()
}

impl ServerBuilder {
    pub fn new(blink: &Blink) -> Self {
        Self {
            data_dir: blink.data_dir.path().to_owned(),
            scripts_dir: blink.scripts_dir(),
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            token: None,
            log_filter: "warn".into(),
            wrapper: Vec::new(),
            router: false,
        }
    }

    /// A cluster's front door (`--role router`): HTTP, and SSH when its
    /// config names a router key (else `ssh_port` is 0).
    pub fn router(mut self) -> Self {
        self.router = true;
        self.args.extend(["--role".into(), "router".into()]);
        self
    }

    /// Start the server through this command (it must exec the server,
    /// keeping its pid), e.g. `setpriv` with a capability bounding set.
    pub fn wrapped(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A config file with this TOML, written into the data dir and passed
    /// as `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// More command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A variable in the server's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `BLINK_API_TOKEN`; [`Server`]'s HTTP calls then send it.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// `RUST_LOG` of the server (default `warn`); see [`Server::log`].
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_owned();
        self
    }

    /// Start the server; returns once it listens on both ports.
    pub fn start(self) -> Server {
        std::fs::create_dir_all(&self.scripts_dir).expect("mkdir host-scripts");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin("blink-server"));
                cmd
            }
            None => Command::new(bin("blink-server")),
        };
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--ssh-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--script-dir")
            .arg(&self.scripts_dir);
        let path = self.data_dir.join("blink.toml");
        std::fs::write(
            &path,
            with_test_admission(self.config.as_deref().unwrap_or("")),
        )
        .expect("write config");
        cmd.arg("--config").arg(path);
        cmd.args(&self.args)
            .env_remove("BLINK_DATA_DIR")
            .env_remove("BLINK_CONFIG")
            .env_remove("BLINK_BIND")
            .env_remove("BLINK_API_TOKEN")
            .env_remove("DOCKER_AUTH_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env("RUST_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = &self.token {
            cmd.env("BLINK_API_TOKEN", token);
        }
        let child = cmd.spawn().expect("spawn blink-server");
        Server::adopt(child, self.token, self.router)
    }
}

impl Server {
    /// Take a started blink-server (or something that speaks for one, such
    /// as tests/vm/boxlite-vm.sh): its stderr is the log, its stdout says
    /// the host key and the addresses; returns once both ports are known
    /// (a `router` once it says it is ready).
    pub fn adopt(mut child: Child, token: Option<String>, router: bool) -> Server {
        // The log is kept (see `Server::log`) and echoed to the test's
        // stderr.
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
        let (mut fingerprint, mut http_port, mut ssh_port) = (String::new(), 0, 0);
        let port = |addr: &str| -> u16 {
            addr.rsplit(':')
                .next()
                .and_then(|p| p.trim().parse().ok())
                .expect("port")
        };
        for line in lines.by_ref() {
            let line = line.expect("server stdout");
            if let Some(rest) = line.strip_prefix("ssh host key ") {
                fingerprint = rest.split_whitespace().next().unwrap_or("").to_string();
            }
            if let Some(addr) = line.strip_prefix("http listening on ") {
                http_port = port(addr);
            }
            if let Some(addr) = line.strip_prefix("ssh listening on ") {
                ssh_port = port(addr);
            }
            // A router says when it has bound all it serves (SSH only
            // with a router key).
            let ready = if router {
                line == "router ready"
            } else {
                http_port != 0 && ssh_port != 0
            };
            if ready {
                break;
            }
        }
        assert!(
            http_port != 0 && (ssh_port != 0 || router),
            "blink-server did not start:\n{}",
            log.lock().map(|l| l.clone()).unwrap_or_default()
        );
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            ssh_port,
            http_port,
            fingerprint,
            token,
            log,
        }
    }
}

/// A running `blink-server`, killed when dropped.
pub struct Server {
    child: Child,
    pub ssh_port: u16,
    pub http_port: u16,
    /// The host key's `SHA256:` fingerprint.
    pub fingerprint: String,
    /// The API token it was started with, sent by the HTTP calls.
    pub token: Option<String>,
    /// Everything the server wrote to stderr so far (its log).
    pub(crate) log: Arc<Mutex<String>>,
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

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
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Send the server a signal by name (`TERM`, `INT`, `KILL`, ...).
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
        crate::wait_exit(&mut self.child, limit)
    }

    /// Send a signal and wait, however long it takes, for the exit.
    pub fn signal_and_wait(&mut self, name: &str) -> ExitStatus {
        self.signal(name);
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
