//! Helpers for the SSH gateway tests: OpenSSH clients with throwaway keys
//! and known_hosts, and [`SshFixture`], the usual start of such a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::{Blink, Running, Server, ServerBuilder, run};

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
    /// A client with two keys, `id` and `other`.
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

    /// The public half of a key, as one line without its newline.
    pub fn public_key(&self, key: &str) -> String {
        let path = self.path(&format!("{key}.pub"));
        let text = std::fs::read_to_string(&path).expect("public key");
        text.trim().to_owned()
    }

    /// `ssh` with a key, this test's known_hosts, and no agent or config.
    pub fn ssh(&self, server: &Server, key: &str, login: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.common_opts(key))
            .arg("-p")
            .arg(server.ssh_port.to_string())
            .arg(format!("{login}@127.0.0.1"));
        cmd
    }

    /// OpenSSH `sftp -b` with the `id` key as `login`: `options` first,
    /// then the batch (it stops at its first failing command).
    pub fn sftp(&self, server: &Server, options: &[&str], login: &str, batch: &str) -> Output {
        let file = self.path("batch");
        write_file(&file, batch);
        let mut cmd = Command::new("sftp");
        cmd.args(self.common_opts("id"))
            .args(options)
            .arg("-P")
            .arg(server.ssh_port.to_string())
            .arg("-b")
            .arg(&file)
            .arg(format!("{login}@127.0.0.1"));
        run(&mut cmd, b"")
    }

    /// OpenSSH `scp` (the sftp protocol) with the `id` key; remote paths
    /// are `LOGIN@127.0.0.1:PATH`.
    pub fn scp(&self, server: &Server, from: &str, to: &str) -> Output {
        let mut cmd = Command::new("scp");
        cmd.args(self.common_opts("id"))
            .arg("-P")
            .arg(server.ssh_port.to_string())
            .arg(from)
            .arg(to);
        run(&mut cmd, b"")
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

/// Start `cmd` (an `ssh` whose remote command prints `ready` first) and
/// return once that line has come.
pub fn spawn_ready(cmd: &mut Command) -> Running {
    let running = Running::spawn(cmd);
    assert_eq!(running.first_line().as_deref(), Some("ready\n"));
    running
}

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A session `s1` whose own key file authorizes the client's `id` key;
/// its box id.
pub fn setup(blink: &Blink, client: &Client) -> String {
    let (code, opened) = blink.json(&["session", "open", "--name", "s1"]);
    assert_eq!(code, Some(0), "{opened}");
    let out = blink.ok(&[
        "session",
        "keys",
        "add",
        "--name",
        "s1",
        client.path("id.pub").to_str().expect("utf-8"),
    ]);
    assert!(out.contains("SHA256:"), "{out}");
    opened["session"]["box_id"]
        .as_str()
        .expect("box_id")
        .to_owned()
}

pub fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

/// The usual start of an SSH test: real sandboxes, a session `s1` that
/// the client's `id` key logs in to ([`setup`]), and a server.
pub struct SshFixture {
    pub blink: Blink,
    pub client: Client,
    pub server: Server,
    /// The box id of `s1`.
    pub box_id: String,
}

impl SshFixture {
    /// With a server of the defaults; `None` when the local runtime is
    /// unavailable (reported skipped; the test returns).
    pub fn new() -> Option<Self> {
        Self::with(|server| server)
    }

    /// With a server configured by `configure` (config, flags, log
    /// filter); `None` as for [`SshFixture::new`].
    pub fn with(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Option<Self> {
        let blink = Blink::with_runtime()?;
        let client = Client::new();
        let box_id = setup(&blink, &client);
        let server = configure(blink.server()).start();
        Some(Self {
            blink,
            client,
            server,
            box_id,
        })
    }

    /// `ssh s1@…` with the `id` key, not yet run.
    pub fn ssh_command(&self) -> Command {
        self.client.ssh(&self.server, "id", "s1")
    }

    /// Run `ssh s1@… ARGS` (options and/or the remote command) with the
    /// `id` key, `input` on its stdin.
    pub fn ssh(&self, args: &[&str], input: &[u8]) -> Output {
        run(self.ssh_command().args(args), input)
    }

    /// A command in `s1` that must succeed; its stdout.
    pub fn sh(&self, command: &str) -> String {
        let out = self.ssh(&[command], b"");
        let (stdout, stderr) = crate::texts(&out);
        assert_eq!(out.status.code(), Some(0), "{command}: {stderr}");
        stdout
    }

    /// `sftp -b` as `s1` with the `id` key.
    pub fn sftp(&self, batch: &str) -> Output {
        self.client.sftp(&self.server, &[], "s1", batch)
    }
}
