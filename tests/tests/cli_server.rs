//! `blink-cli` beside a running `blink-server`: the same commands, checked
//! by the same assertions, run three ways: directly on a data dir (no
//! server), through the server's local socket (the server holds the data
//! dir), and through its HTTP API with `--server URL` and a token. Their
//! `--json` answers have the same shape.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blink_e2e::ssh::Client;
use blink_e2e::{Blink, Server, bin, run, texts};
use rand::RngCore;
use serde_json::Value;

const TOKEN: &str = "cli-beside-the-server";

/// How a test's `blink-cli` reaches Blink.
#[derive(Debug, Clone)]
enum Way {
    /// On the data dir itself, no server.
    Direct,
    /// A server holds the data dir: its local socket.
    Socket,
    /// `--server http://127.0.0.1:PORT` with this token.
    Remote { url: String, token: String },
}

/// `blink-cli` on a data dir, one way.
struct Cli {
    data_dir: PathBuf,
    way: Way,
}

impl Cli {
    fn on(blink: &Blink, way: Way) -> Self {
        Self {
            data_dir: blink.data_dir.path().to_owned(),
            way,
        }
    }

    /// Through `server`'s HTTP API, from a data dir of its own (nothing
    /// of the server's is reachable from here but the API).
    fn remote(elsewhere: &Blink, server: &Server, token: &str) -> Self {
        Self {
            data_dir: elsewhere.data_dir.path().to_owned(),
            way: Way::Remote {
                url: format!("http://127.0.0.1:{}", server.http_port),
                token: token.to_owned(),
            },
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("blink-cli"));
        cmd.arg("--data-dir").arg(&self.data_dir);
        for var in ["BLINK_DATA_DIR", "BLINK_API_URL", "BLINK_API_TOKEN"] {
            cmd.env_remove(var);
        }
        if let Way::Remote { url, token } = &self.way {
            cmd.arg("--server").arg(url).env("BLINK_API_TOKEN", token);
        }
        cmd.args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args), b"")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{:?}: blink-cli {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            self.way,
            out.status.code(),
            texts(&out).0,
            texts(&out).1
        );
        texts(&out).0
    }

    fn json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{:?}: blink-cli {all:?} printed no JSON ({e})\nstdout: {}\nstderr: {}",
                self.way,
                texts(&out).0,
                texts(&out).1
            )
        });
        (out.status.code(), value)
    }
}

/// A script outside every server's script directory: through a server it
/// travels in the request.
fn host_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The assertions of the session commands (those of cli_session.rs and
/// more), any way; the `--json` answers by command, to compare shapes.
fn check_session_commands(cli: &Cli, name: &str) -> BTreeMap<&'static str, Value> {
    let way = format!("{:?}", cli.way);
    let mut answers = BTreeMap::new();
    let (code, v) = cli.json(&["session", "open", "--name", name]);
    assert_eq!(code, Some(0), "{way}: {v}");
    assert_eq!(v["created"], true, "{way}");
    assert_eq!(v["session"]["isolation"], "namespace", "{way}");
    let box_id = v["session"]["box_id"].as_str().unwrap().to_owned();
    answers.insert("open", v);
    let (_, again) = cli.json(&["session", "open", "--name", name]);
    assert_eq!(again["created"], false, "{way}");
    assert_eq!(again["session"]["box_id"], box_id.as_str(), "{way}");

    let human = cli.ok(&["session", "ls"]);
    assert!(
        human.contains(name) && human.contains("namespace"),
        "{way}: {human}"
    );
    let (_, list) = cli.json(&["session", "ls"]);
    assert!(
        list.as_array().unwrap().iter().any(|s| s["name"] == name),
        "{way}: {list}"
    );
    answers.insert("ls", list);
    let (_, info) = cli.json(&["session", "info", "--name", name]);
    assert_eq!(info["box_id"], box_id.as_str(), "{way}");
    answers.insert("info", info);
    assert!(
        cli.ok(&["session", "info", "--name", name])
            .contains(&box_id)
    );

    // Exit codes, stdout and stderr pass through.
    let out = cli.run(&[
        "session",
        "exec",
        "--name",
        name,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 42",
    ]);
    assert_eq!(out.status.code(), Some(42), "{way}: {}", texts(&out).1);
    assert_eq!(texts(&out).0, "out\n", "{way}");
    assert!(texts(&out).1.contains("err"), "{way}: {}", texts(&out).1);
    let out = cli.run(&["session", "exec", "--name", name, "--", "no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{way}");
    assert!(
        texts(&out).1.contains("no-such-program"),
        "{way}: {}",
        texts(&out).1
    );
    let (code, v) = cli.json(&[
        "session", "exec", "--name", name, "--", "sh", "-c", "exit 3",
    ]);
    assert_eq!(
        (code, &v["exit_code"]),
        (Some(3), &Value::from(3)),
        "{way}: {v}"
    );
    assert_eq!(v["session"], name, "{way}");
    answers.insert("exec", v);
    let out = cli.run(&[
        "session",
        "exec",
        "--name",
        name,
        "--timeout",
        "1",
        "--",
        "sleep",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(124), "{way}: {}", texts(&out).1);
    assert!(
        texts(&out).1.contains("timed out"),
        "{way}: {}",
        texts(&out).1
    );

    // Stdin, byte for byte.
    let mut data = vec![0u8; 64 << 10];
    rand::rng().fill_bytes(&mut data);
    let out = run(
        &mut cli.cmd(&["session", "exec", "--name", name, "--", "cat"]),
        &data,
    );
    assert!(out.status.success(), "{way}: {}", texts(&out).1);
    assert!(out.stdout == data, "{way}: stdin came back different");

    // A script of this host, with its arguments.
    let dir = tempfile::tempdir().unwrap();
    let script = host_script(
        dir.path(),
        "s.sh",
        "#!/bin/sh\necho \"in $(hostname) $1\"\nexit 42\n",
    );
    let script = script.to_str().unwrap();
    let out = cli.run(&["session", "run", "--name", name, script, "arg1"]);
    assert_eq!(out.status.code(), Some(42), "{way}: {}", texts(&out).1);
    assert_eq!(texts(&out).0, format!("in {name} arg1\n"), "{way}");
    // And once in a fresh sandbox.
    let out = cli.run(&["run", script, "once"]);
    assert_eq!(out.status.code(), Some(42), "{way}: {}", texts(&out).1);
    assert!(
        texts(&out).0.starts_with("in ") && texts(&out).0.ends_with(" once\n"),
        "{way}"
    );
    let (code, v) = cli.json(&["run", script, "once"]);
    assert_eq!(
        (code, &v["session"]),
        (Some(42), &Value::Null),
        "{way}: {v}"
    );
    answers.insert("run", v);
    let out = cli.run(&["session", "run", "--name", name, "/no/such/script.sh"]);
    assert_eq!(out.status.code(), Some(125), "{way}");
    assert!(
        texts(&out)
            .1
            .contains("script /no/such/script.sh not found"),
        "{way}: {}",
        texts(&out).1
    );

    // Network policy and forwarding switches.
    let (code, v) = cli.json(&[
        "session",
        "network",
        "--name",
        name,
        "--allow",
        "example.com",
        "--local-forwarding",
        "off",
    ]);
    assert_eq!(code, Some(0), "{way}: {v}");
    assert_eq!(v["policy"]["mode"], "proxy", "{way}");
    assert_eq!(
        v["policy"]["allow"],
        serde_json::json!(["example.com"]),
        "{way}"
    );
    assert_eq!(v["forwarding"]["local"], false, "{way}");
    assert_eq!(v["forwarding"]["remote"], true, "{way}");
    answers.insert("network", v);
    let human = cli.ok(&["session", "network", "--name", name, "--none"]);
    assert!(
        human.contains("mode:  None") && human.contains("local off"),
        "{way}: {human}"
    );

    // Size and usage.
    let (code, v) = cli.json(&["session", "resources", "--name", name, "--memory", "256M"]);
    assert_eq!(code, Some(0), "{way}: {v}");
    assert_eq!(v["resources"]["memory_mib"], 256, "{way}");
    assert!(v["applied"]["memory_mib"].is_string(), "{way}: {v}");
    let (_, v) = cli.json(&["session", "resources", "--name", name]);
    assert_eq!(v["resources"]["memory_mib"], 256, "{way}");
    answers.insert("stats", v);
    let out = cli.run(&["session", "resources", "--name", name, "--cpus", "-1"]);
    assert_eq!(out.status.code(), Some(125), "{way}");
    assert!(texts(&out).1.contains("cpus"), "{way}: {}", texts(&out).1);

    // Snapshots: make, list, restore, remove.
    let write = |text: &str| {
        let cmd = format!("echo {text} > /var/blink/memory/f");
        cli.ok(&["session", "exec", "--name", name, "--", "sh", "-c", &cmd]);
    };
    write("v1");
    let (code, v) = cli.json(&[
        "session",
        "checkpoint",
        "--name",
        name,
        "--snapshot",
        "snap1",
    ]);
    assert_eq!(
        (code, &v["name"]),
        (Some(0), &Value::from("snap1")),
        "{way}: {v}"
    );
    answers.insert("checkpoint", v);
    write("v2");
    let (_, v) = cli.json(&["session", "list", "--name", name]);
    assert_eq!(v["checkpoints"][0]["name"], "snap1", "{way}: {v}");
    assert!(
        cli.ok(&["session", "list", "--name", name])
            .contains("snap1")
    );
    let (code, v) = cli.json(&["session", "restore", "--name", name, "--snapshot", "snap1"]);
    assert_eq!(code, Some(0), "{way}: {v}");
    assert_eq!(v["name"], name, "{way}");
    answers.insert("restore", v);
    let back = cli.ok(&[
        "session",
        "exec",
        "--name",
        name,
        "--",
        "cat",
        "/var/blink/memory/f",
    ]);
    assert_eq!(back, "v1\n", "{way}");
    cli.ok(&[
        "session",
        "checkpoint",
        "rm",
        "--name",
        name,
        "--snapshot",
        "snap1",
    ]);
    let (_, v) = cli.json(&["session", "list", "--name", name]);
    assert_eq!(v["checkpoints"], serde_json::json!([]), "{way}");

    // Bad input: the same messages and exit code.
    let out = cli.run(&["session", "info", "--name", "ghost"]);
    assert_eq!(out.status.code(), Some(125), "{way}");
    assert!(
        texts(&out).1.contains("session \"ghost\" not found"),
        "{way}: {}",
        texts(&out).1
    );
    let (code, v) = cli.json(&["session", "info", "--name", "ghost"]);
    assert_eq!(
        (code, &v["error"]["code"]),
        (Some(125), &Value::from("session_not_found"))
    );
    let out = cli.run(&["session", "open", "--name", "Bad/Name"]);
    assert_eq!(out.status.code(), Some(125), "{way}");
    assert!(
        texts(&out).1.contains("invalid session name \"Bad/Name\""),
        "{way}: {}",
        texts(&out).1
    );

    let (code, v) = cli.json(&["session", "stop", "--name", name]);
    assert_eq!(
        (code, &v["state"]),
        (Some(0), &Value::from("stopped")),
        "{way}: {v}"
    );
    cli.ok(&["session", "rm", "--name", name]);
    let (_, list) = cli.json(&["session", "ls"]);
    assert!(
        !list.as_array().unwrap().iter().any(|s| s["name"] == name),
        "{way}"
    );
    answers
}

/// Whether two JSON answers have the same shape: the same keys all the
/// way down (`null` stands for any value: a figure a stopped sandbox does
/// not have).
fn same_shape(a: &Value, b: &Value) -> Result<(), String> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => Ok(()),
        (Value::Object(x), Value::Object(y)) => {
            let (kx, ky): (Vec<_>, Vec<_>) = (x.keys().collect(), y.keys().collect());
            if kx != ky {
                return Err(format!("keys {kx:?} vs {ky:?}"));
            }
            x.iter()
                .try_for_each(|(k, v)| same_shape(v, &y[k]).map_err(|e| format!("{k}.{e}")))
        }
        (Value::Array(x), Value::Array(y)) => match (x.first(), y.first()) {
            (Some(p), Some(q)) => same_shape(p, q),
            _ => Ok(()),
        },
        _ if std::mem::discriminant(a) == std::mem::discriminant(b) => Ok(()),
        _ => Err(format!("{a} vs {b}")),
    }
}

/// A socket left by a killed server: bound, then nobody listening.
fn stale_socket(data_dir: &Path) -> PathBuf {
    let path = data_dir.join("blink.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    path
}

#[test]
fn session_commands_work_the_same_direct_through_the_socket_and_remote() {
    let Some(direct_blink) = Blink::with_runtime() else {
        return;
    };
    let direct = Cli::on(&direct_blink, Way::Direct);
    let (_, doctor) = direct.json(&["doctor"]);
    assert_eq!(doctor["path"]["kind"], "direct", "{doctor}");
    let from_direct = check_session_commands(&direct, "d1");

    let blink = Blink::new();
    let socket = stale_socket(blink.data_dir.path());
    let mut server = blink.server().token(TOKEN).start();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket must be its owner's only");

    let local = Cli::on(&blink, Way::Socket);
    let (_, doctor) = local.json(&["doctor"]);
    assert_eq!(doctor["path"]["kind"], "server", "{doctor}");
    assert_eq!(
        doctor["path"]["target"],
        format!("unix:{}", socket.display()).as_str()
    );
    assert!(local.ok(&["doctor"]).contains("server: unix:"));
    let from_socket = check_session_commands(&local, "s1");

    let elsewhere = Blink::new();
    let remote = Cli::remote(&elsewhere, &server, TOKEN);
    let (_, doctor) = remote.json(&["doctor"]);
    assert_eq!(
        doctor["path"]["target"],
        format!("http://127.0.0.1:{}", server.http_port).as_str()
    );
    let from_remote = check_session_commands(&remote, "r1");
    assert!(
        !elsewhere.data_dir.path().join("sessions").exists(),
        "the remote CLI touched its own data dir"
    );

    for (what, direct) in &from_direct {
        for (way, other) in [("socket", &from_socket), ("remote", &from_remote)] {
            if let Err(e) = same_shape(direct, &other[what]) {
                panic!(
                    "{what} --json differs {way} vs direct: {e}\n{direct}\n{}",
                    other[what]
                );
            }
        }
    }

    server.signal_and_wait("TERM");
    assert!(!socket.exists(), "the socket outlived its server");
}

#[test]
fn a_wrong_token_or_url_is_refused_clearly() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink.server().token(TOKEN).start();
    let elsewhere = Blink::new();
    for token in ["wrong", ""] {
        let cli = Cli::remote(&elsewhere, &server, token);
        let out = cli.run(&["session", "ls"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(texts(&out).1.contains("Bearer"), "{}", texts(&out).1);
        let (code, v) = cli.json(&["session", "ls"]);
        assert_eq!(
            (code, &v["error"]["code"]),
            (Some(125), &Value::from("unauthorized"))
        );
    }
    let bad = |url: &str, needle: &str| {
        let cli = Cli {
            data_dir: elsewhere.data_dir.path().to_owned(),
            way: Way::Remote {
                url: url.into(),
                token: TOKEN.into(),
            },
        };
        let out = cli.run(&["session", "ls"]);
        assert_eq!(out.status.code(), Some(125), "{url}");
        assert!(texts(&out).1.contains(needle), "{url}: {}", texts(&out).1);
    };
    bad("https://127.0.0.1:1", "http:// only");
    bad("ftp://x", "expected http://");
    // A port nothing listens on (this server's, once it is gone, is not
    // known to be free: ask the kernel for one and close it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    bad(
        &format!("http://127.0.0.1:{port}"),
        "cannot reach the Blink server",
    );
}

#[test]
fn a_held_data_dir_without_a_server_keeps_its_clear_message() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    // Held by another process (flock(1) on the lock file), and a socket
    // nothing answers on.
    let lock = blink.data_dir.path().join("blink.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    stale_socket(blink.data_dir.path());
    let cli = Cli::on(&blink, Way::Direct);
    let mut refused = None;
    for _ in 0..100 {
        let out = cli.run(&["session", "ls"]);
        if out.status.code() == Some(125) {
            refused = Some(texts(&out).1);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    let refused = refused.expect("the held data dir was never refused");
    assert!(
        refused.contains("in use by another Blink process"),
        "{refused}"
    );
}

#[test]
fn export_import_keys_and_spawn_through_the_server() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink.server().token(TOKEN).start();
    let elsewhere = Blink::new();
    let ways = [
        Cli::on(&blink, Way::Socket),
        Cli::remote(&elsewhere, &server, TOKEN),
    ];
    let client = Client::new();
    for (i, cli) in ways.iter().enumerate() {
        let way = format!("{:?}", cli.way);
        let (name, copy) = (format!("e{i}"), format!("c{i}"));
        cli.ok(&["session", "open", "--name", &name]);
        cli.ok(&[
            "session",
            "exec",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "echo kept > /var/blink/memory/f",
        ]);

        // Export (made on the server, downloaded here), import (uploaded).
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.boxlite");
        let archive_s = archive.to_str().unwrap();
        let (code, v) = cli.json(&["session", "export", "--name", &name, "-o", archive_s]);
        assert_eq!(code, Some(0), "{way}: {v}");
        let size = std::fs::metadata(&archive).unwrap().len();
        assert_eq!(v["size_bytes"], size, "{way}");
        assert!(size > 0);
        let (code, v) = cli.json(&["session", "import", archive_s, "--name", &copy]);
        assert_eq!(code, Some(0), "{way}: {v}");
        assert_eq!(v["session"]["name"], copy.as_str(), "{way}");
        let out = cli.ok(&[
            "session",
            "exec",
            "--name",
            &copy,
            "--",
            "cat",
            "/var/blink/memory/f",
        ]);
        assert_eq!(out, "kept\n", "{way}");
        let out = cli.run(&["session", "import", archive_s, "--name", &copy]);
        assert_eq!(out.status.code(), Some(125), "{way}");
        assert!(texts(&out).1.contains("exists"), "{way}: {}", texts(&out).1);

        // A key added through the server logs in at once.
        let ssh = |cmd: &str| run(client.ssh(&server, "id", &copy).arg(cmd), b"");
        assert!(!ssh("true").status.success(), "{way}: no key yet");
        let key = client.path("id.pub");
        let (code, v) = cli.json(&[
            "session",
            "keys",
            "add",
            "--name",
            &copy,
            key.to_str().unwrap(),
        ]);
        assert_eq!(
            (code, &v["added"]),
            (Some(0), &Value::from(true)),
            "{way}: {v}"
        );
        let fingerprint = v["key"]["fingerprint"].as_str().unwrap().to_owned();
        let out = ssh("cat /var/blink/memory/f");
        assert!(out.status.success(), "{way}: {}", texts(&out).1);
        assert_eq!(texts(&out).0, "kept\n");
        assert!(
            cli.ok(&["session", "keys", "ls", "--name", &copy])
                .contains(&fingerprint)
        );
        cli.ok(&["session", "keys", "rm", "--name", &copy, &fingerprint]);
        assert!(
            !ssh("true").status.success(),
            "{way}: a removed key logged in"
        );
        let out = cli.run(&["session", "keys", "rm", "--name", &copy, &fingerprint]);
        assert_eq!(out.status.code(), Some(125), "{way}");

        // Spawn in pipe mode: streams apart, the exit code passes.
        let out = cli.run(&[
            "session",
            "spawn",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ]);
        assert_eq!(out.status.code(), Some(7), "{way}: {}", texts(&out).1);
        assert_eq!(texts(&out).0, "out\n", "{way}");
        assert!(texts(&out).1.contains("err"), "{way}");

        // Spawn on a terminal: script(1) gives blink-cli one, whose size
        // the sandbox's terminal takes.
        let mut inner = cli.cmd(&[
            "session",
            "spawn",
            "--name",
            &name,
            "--tty",
            "--",
            "sh",
            "-c",
            "tty; stty size",
        ]);
        let line = std::iter::once(inner.get_program())
            .chain(inner.get_args())
            .map(|a| format!("'{}'", a.to_str().unwrap()))
            .collect::<Vec<_>>()
            .join(" ");
        let shell = format!("stty rows 33 cols 101; {line}");
        let mut script = Command::new("script");
        script.args(["-qec", &shell, "/dev/null"]);
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        inner.env_clear();
        let out = run(&mut script, b"");
        let text = texts(&out).0;
        assert!(out.status.success(), "{way}: {text}\n{}", texts(&out).1);
        assert!(text.contains("/dev/pts/"), "{way}: {text}");
        assert!(text.contains("33 101"), "{way}: {text}");
    }
}

#[test]
fn spawn_tty_through_the_server_follows_the_window_and_restores_the_terminal() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink.server().token(TOKEN).start();
    let elsewhere = Blink::new();
    let cli = bin("blink-cli");
    let ways = [
        // Through the socket of the server that holds the data dir.
        format!(
            "{} --data-dir {} SPAWN",
            cli.display(),
            blink.data_dir.path().display()
        ),
        // Through its HTTP API, from another data dir.
        format!(
            "BLINK_API_TOKEN={TOKEN} {} --data-dir {} --server http://127.0.0.1:{} SPAWN",
            cli.display(),
            elsewhere.data_dir.path().display(),
            server.http_port
        ),
    ];
    for (i, line) in ways.iter().enumerate() {
        let name = format!("winch{i}");
        let local = Cli::on(&blink, Way::Socket);
        let (_, opened) = local.json(&["session", "open", "--name", &name]);
        let box_id = opened["session"]["box_id"].as_str().unwrap().to_owned();
        blink_e2e::tty::check_spawn_tty_follows_the_window(&blink, &box_id, &name, line);
    }
}
