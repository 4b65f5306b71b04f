//! SSH through a cluster's routers (docs/SCALE.md): the real OpenSSH
//! client logs in to `SESSION@router` and reaches the session on its node,
//! through either router, with the node deciding on the client's key as on
//! a direct login. A real 3-member etcd, 3 nodes and 2 routers on
//! 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use blink_e2e::cluster::Cluster;
use blink_e2e::ssh::{Client, sha};
use blink_e2e::{run, texts};
use russh::keys::PrivateKeyWithHashAlg;
use russh::{ChannelMsg, Sig};
use serde_json::json;

/// Sessions `names` made through the routers, each letting the client's
/// `id` key in (added through a router too) and holding `/tmp/mark` = its
/// name.
fn sessions(c: &Cluster, client: &Client, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let a = c.router(i).post("/api/sessions", json!({"name": name}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        let a = c.router(i + 1).post(
            &format!("/api/sessions/{name}/keys"),
            json!({"key": client.public_key("id")}),
        );
        assert!(a.status < 300, "{:?}", a.body);
        c.router(i).sh(name, &format!("echo {name} > /tmp/mark"));
    }
}

#[test]
fn exec_and_sftp_through_either_router_reach_the_owning_node() {
    let Some(c) = Cluster::start(&[4, 4, 4], 2, 10) else {
        return;
    };
    // One host key for every router: the user sees one host.
    assert!(!c.router(0).fingerprint.is_empty());
    assert_eq!(c.router(0).fingerprint, c.router(1).fingerprint);
    assert_ne!(c.router(0).fingerprint, c.nodes[0].1.fingerprint);
    let client = Client::new();
    let names = ["x0", "x1", "x2"];
    sessions(&c, &client, &names);
    for name in names {
        for r in 0..2 {
            let out = run(
                client
                    .ssh(c.router(r), "id", name)
                    .arg("cat /tmp/mark; echo to-stderr >&2; exit 3"),
                b"",
            );
            let (stdout, stderr) = texts(&out);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{name} via router {r}: {stderr}"
            );
            assert_eq!(stdout, format!("{name}\n"));
            assert!(stderr.contains("to-stderr"), "{stderr}");
        }
        // A key the node does not know is refused through the router.
        let out = run(client.ssh(c.router(0), "other", name).arg("true"), b"");
        assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    }
    // A session no node holds: refused like a wrong key.
    let out = run(client.ssh(c.router(1), "id", "nobody").arg("true"), b"");
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));

    // 16 MiB of binary, exact, both ways: stdin in through router 0, out
    // through router 1, and over sftp.
    let blob: Vec<u8> = (0..16 << 20).map(|_| rand::random::<u8>()).collect();
    let want = sha(&blob);
    let out = run(
        client.ssh(c.router(0), "id", "x1").arg("cat > /tmp/blob"),
        &blob,
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out).1);
    let out = run(
        client.ssh(c.router(1), "id", "x1").arg("cat /tmp/blob"),
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), blob.len());
    assert_eq!(sha(&out.stdout), want);
    let node = c.route("x1").expect("route");
    let on_node = c.node(&node).sh("x1", "sha256sum /tmp/blob");
    assert!(on_node.starts_with(&want), "{on_node}");

    let local = client.path("blob");
    std::fs::write(&local, &blob).expect("write");
    let back = client.path("back");
    let out = client.sftp(
        c.router(1),
        &[],
        "x2",
        &format!(
            "put {} /tmp/up\nget /tmp/up {}\n",
            local.display(),
            back.display()
        ),
    );
    assert!(out.status.success(), "{:?}", texts(&out));
    assert_eq!(sha(&std::fs::read(&back).expect("read back")), want);
    let node = c.route("x2").expect("route");
    let on_node = c.node(&node).sh("x2", "sha256sum /tmp/up");
    assert!(on_node.starts_with(&want), "{on_node}");
}

#[test]
fn the_node_decides_on_the_key_with_the_clients_address_and_options() {
    let Some(c) = Cluster::start(&[4, 4], 1, 10) else {
        return;
    };
    let client = Client::new();
    client.keygen("forced");
    client.keygen("elsewhere");
    sessions(&c, &client, &["k1"]);
    let add = |line: String| {
        let a = c
            .router(0)
            .post("/api/sessions/k1/keys", json!({"key": line}));
        assert!(a.status < 300, "{:?}", a.body);
    };
    add(format!(
        "command=\"echo forced\" {}",
        client.public_key("forced")
    ));
    add(format!(
        "from=\"10.0.0.0/8\" {}",
        client.public_key("elsewhere")
    ));
    // The key's forced command replaces the client's, on the node.
    let out = run(
        client.ssh(c.router(0), "forced", "k1").arg("echo mine"),
        b"",
    );
    assert_eq!(texts(&out).0, "forced\n", "{:?}", texts(&out));
    // `from=` sees the client's address (127.0.0.1), not the router's
    // link: refused.
    let out = run(client.ssh(c.router(0), "elsewhere", "k1").arg("true"), b"");
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    // The router key itself reaches nothing when it logs in as a user.
    std::fs::copy(c.keys.path().join("router_key"), client.path("router")).expect("copy");
    let node = c.route("k1").expect("route");
    let out = run(
        std::process::Command::new("ssh")
            .args(client.common_opts("router"))
            .arg("-p")
            .arg(c.node(&node).ssh_port.to_string())
            .arg("k1@127.0.0.1")
            .arg("true"),
        b"",
    );
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
}

/// Trusts any host key: this test checks the relay, not host keys.
struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pty_window_changes_and_signals_pass_through_a_router() {
    let Some(c) = tokio::task::spawn_blocking(|| Cluster::start(&[4, 4, 4], 1, 10))
        .await
        .expect("start")
    else {
        return;
    };
    let client = Client::new();
    let c = Arc::new(c);
    let setup = c.clone();
    let key_line = client.public_key("id");
    tokio::task::spawn_blocking(move || {
        let a = setup.router(0).post("/api/sessions", json!({"name": "p1"}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        let a = setup
            .router(0)
            .post("/api/sessions/p1/keys", json!({"key": key_line}));
        assert!(a.status < 300, "{:?}", a.body);
    })
    .await
    .expect("setup");
    let config = Arc::new(russh::client::Config::default());
    let mut ssh = russh::client::connect(config, ("127.0.0.1", c.router(0).ssh_port), AnyHost)
        .await
        .expect("connect");
    let key = russh::keys::load_secret_key(client.path("id"), None).expect("key");
    let auth = ssh
        .authenticate_publickey("p1", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .expect("auth");
    assert!(auth.success());

    let mut channel = ssh.channel_open_session().await.expect("open");
    channel
        .request_pty(true, "vt220", 80, 24, 0, 0, &[])
        .await
        .expect("pty");
    channel
        .exec(
            true,
            "echo \"size=$(stty size) term=$TERM tty=$(tty)\"; read line; echo \"size=$(stty size)\"; trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.1; done",
        )
        .await
        .expect("exec");
    let mut out = String::new();
    let mut exit_signal = None;
    let read_until =
        async |channel: &mut russh::Channel<russh::client::Msg>, out: &mut String, needle: &str| {
            let wait = async {
                while !out.contains(needle) {
                    match channel.wait().await {
                        Some(ChannelMsg::Data { data }) => {
                            out.push_str(&String::from_utf8_lossy(&data))
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(20), wait).await;
            assert!(out.contains(needle), "no {needle:?} in {out:?}");
        };
    read_until(
        &mut channel,
        &mut out,
        "size=24 80 term=vt220 tty=/dev/pts/",
    )
    .await;
    channel.window_change(132, 43, 0, 0).await.expect("resize");
    channel.data(&b"go\r"[..]).await.expect("data");
    read_until(&mut channel, &mut out, "size=43 132").await;
    read_until(&mut channel, &mut out, "ready").await;
    channel.signal(Sig::USR1).await.expect("signal");
    read_until(&mut channel, &mut out, "got-usr1").await;
    channel.signal(Sig::TERM).await.expect("signal");
    let wait = async {
        while let Some(msg) = channel.wait().await {
            if let ChannelMsg::ExitSignal { signal_name, .. } = msg {
                exit_signal = Some(format!("{signal_name:?}"));
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .is_ok()
    );
    assert_eq!(exit_signal.as_deref(), Some("TERM"), "{out}");

    // Exit status on a second channel of the same connection.
    let mut channel = ssh.channel_open_session().await.expect("open");
    channel.exec(true, "exit 42").await.expect("exec");
    let mut status = None;
    let wait = async {
        while let Some(msg) = channel.wait().await {
            if let ChannelMsg::ExitStatus { exit_status } = msg {
                status = Some(exit_status);
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .is_ok()
    );
    assert_eq!(status, Some(42));
    tokio::task::spawn_blocking(move || drop(c))
        .await
        .expect("drop");
}

#[test]
fn a_router_killed_mid_transfer_loses_only_its_own_connections() {
    let Some(mut c) = Cluster::start(&[4, 4], 2, 10) else {
        return;
    };
    let client = Client::new();
    sessions(&c, &client, &["t0", "t1"]);
    // One upload through each router, 1 MiB every 100 ms for 4 s.
    let chunk: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    let mut whole = Vec::new();
    for _ in 0..40 {
        whole.extend_from_slice(&chunk);
    }
    let want = sha(&whole);
    let start = |r: usize, name: &str| {
        let mut child = client
            .ssh(c.router(r), "id", name)
            .arg("cat > /var/blink/memory/up; sha256sum /var/blink/memory/up")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ssh");
        let mut stdin = child.stdin.take().expect("stdin");
        let chunk = chunk.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            for _ in 0..40 {
                if stdin.write_all(&chunk).is_err() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            true
        });
        (child, writer)
    };
    let (doomed, doomed_writer) = start(0, "t0");
    let (kept, kept_writer) = start(1, "t1");
    std::thread::sleep(Duration::from_secs(1));
    c.routers[0].1.signal("KILL");
    let doomed = doomed.wait_with_output().expect("ssh");
    let _ = doomed_writer.join();
    assert_ne!(
        doomed.status.code(),
        Some(0),
        "the killed router's transfer finished?"
    );
    assert!(kept_writer.join().expect("writer"));
    let kept = kept.wait_with_output().expect("ssh");
    let (stdout, stderr) = texts(&kept);
    assert_eq!(kept.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with(&want), "{stdout}");
    // The other router still serves, both sessions included.
    for name in ["t0", "t1"] {
        let out = run(client.ssh(c.router(1), "id", name).arg("echo alive"), b"");
        assert_eq!(texts(&out).0, "alive\n", "{:?}", texts(&out));
    }
    c.routers.truncate(1);
}

#[test]
fn a_router_works_without_any_capability_as_its_unit_runs_it() {
    let unit_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/cluster/systemd/blink-router.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the unit");
    assert!(
        unit.lines().any(|l| l == "CapabilityBoundingSet="),
        "{unit}"
    );
    let Some(mut c) = Cluster::start(&[4], 0, 10) else {
        return;
    };
    // The unit verifies as installed (ExecStart naming the built server).
    let analyze = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if blink_sdk::testing::require(analyze, "systemd-analyze is not installed") {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("blink-router.service");
        std::fs::write(
            &copy,
            unit.replace(
                "/usr/local/bin/blink-server",
                blink_e2e::bin("blink-server").to_str().expect("utf-8"),
            ),
        )
        .expect("write");
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            !stderr.contains("Unknown key") && !stderr.contains("Failed to parse"),
            "{stderr}"
        );
    }
    // A router with an empty bounding set and no_new_privs serves REST and
    // SSH.
    let router = c.start_router_wrapped(
        10,
        &[],
        &[
            "setpriv",
            "--bounding-set",
            "-all",
            "--inh-caps=-all",
            "--no-new-privs",
        ],
    );
    c.routers.push(router);
    let client = Client::new();
    sessions(&c, &client, &["np"]);
    let out = run(
        client.ssh(c.router(0), "id", "np").arg("cat /tmp/mark"),
        b"",
    );
    assert_eq!(texts(&out).0, "np\n", "{:?}", texts(&out));
}

#[test]
fn direct_tcpip_forwarding_reaches_the_sessions_loopback_through_a_router() {
    let Some(c) = Cluster::start(&[4, 4], 1, 10) else {
        return;
    };
    let client = Client::new();
    sessions(&c, &client, &["fw"]);
    // busybox httpd on the session's own loopback, started over REST.
    let a = c.router(0).post(
        "/api/sessions/fw/spawn",
        json!({"command": ["sh", "-c", "mkdir -p /root/www && echo routed-page > /root/www/index.html && exec httpd -f -p 8080 -h /root/www"]}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    // `ssh -W` is one direct-tcpip channel; retried (bounded) until the
    // server in the sandbox listens.
    let mut page = String::new();
    for _ in 0..100 {
        let out = run(
            client
                .ssh(c.router(0), "id", "fw")
                .args(["-W", "127.0.0.1:8080"]),
            b"GET /index.html HTTP/1.0\r\n\r\n",
        );
        page = texts(&out).0;
        if page.contains("routed-page") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(page.starts_with("HTTP/1."), "{page}");
    assert!(page.contains("routed-page"), "{page}");
    // The node's rules decide: the host's loopback is not the session's
    // (the router's REST port is on the host): refused, and the node says
    // why.
    let out = run(
        client
            .ssh(c.router(0), "id", "fw")
            .args(["-W", &format!("127.0.0.1:{}", c.router(0).http_port)]),
        b"GET /api/health HTTP/1.0\r\n\r\n",
    );
    assert!(!texts(&out).0.contains("router"), "{:?}", texts(&out));
}

/// A TCP server on the client's side of `ssh -R` (127.0.0.1): each of up
/// to `count` connections (60 s in all at most) sends `LEN` bytes (read
/// whole, 30 s at most), then gets `reply` and is closed. Returns the
/// SHA-256 of what each sent, in order.
fn exchange_server(reply: Vec<u8>, count: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let thread = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while got.len() < count && std::time::Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut sent = vec![0u8; LEN];
            if stream.read_exact(&mut sent).is_err() {
                got.push("short".to_string());
                continue;
            }
            got.push(sha(&sent));
            let _ = stream.write_all(&reply);
        }
        got
    });
    (port, thread)
}

/// Bytes each way through a remote forward.
const LEN: usize = 1 << 20;

/// A program in `session` (busybox nc, 30 s at most) connects to `port`
/// on its own loopback and sends /tmp/a; its exit status and the SHA-256
/// of what came back, as printed.
fn connect_inside(c: &Cluster, client: &Client, session: &str, port: u32) -> String {
    let out = run(
        client.ssh(c.router(0), "id", session).arg(format!(
            "timeout 30 nc 127.0.0.1 {port} < /tmp/a > /tmp/b; echo rc=$?; sha256sum /tmp/b"
        )),
        b"",
    );
    texts(&out).0
}

/// What a connection from inside `session` to `port` on its loopback
/// meets: `refused` (nothing listens), `closed` (accepted, then closed
/// without data), or `rc=N` (nc's status otherwise: 143 when it was still
/// open after 10 s). A listener just cancelled may take a moment to go:
/// up to 50 tries, 100 ms apart, until one is refused.
fn connect_empty_inside(c: &Cluster, client: &Client, session: &str, port: u32) -> String {
    let script = format!(
        "for i in $(seq 50); do timeout 10 nc 127.0.0.1 {port} </dev/null >/dev/null 2>&1; rc=$?; \
         case $rc in 1) echo refused; exit;; 0) ;; *) echo rc=$rc; exit;; esac; sleep 0.1; done; echo closed"
    );
    let out = run(client.ssh(c.router(0), "id", session).arg(script), b"");
    texts(&out).0.trim().to_string()
}

/// An OpenSSH shared connection (`ControlMaster`) through router 0 to
/// `session`: the master, and the `ControlPath=` option its clients pass.
fn shared_connection(c: &Cluster, client: &Client, session: &str) -> (blink_e2e::Running, String) {
    let control = client.path(&format!("ctl-{session}"));
    let share = format!("ControlPath={}", control.display());
    let mut master = std::process::Command::new("ssh");
    master
        .args(client.common_opts("id"))
        .args(["-o", &share, "-o", "ControlMaster=yes", "-N", "-p"])
        .arg(c.router(0).ssh_port.to_string())
        .arg(format!("{session}@127.0.0.1"));
    let master = blink_e2e::Running::spawn(&mut master);
    blink_e2e::cluster::eventually("the shared connection", Duration::from_secs(20), || {
        control.exists()
    });
    (master, share)
}

#[test]
fn remote_forwarding_through_a_router_reaches_a_server_on_the_clients_side() {
    let Some(c) = Cluster::start(&[4, 4], 1, 10) else {
        return;
    };
    let client = Client::new();
    sessions(&c, &client, &["rf"]);
    let up: Vec<u8> = (0..LEN).map(|_| rand::random::<u8>()).collect();
    let down: Vec<u8> = (0..LEN).map(|_| rand::random::<u8>()).collect();
    let out = run(client.ssh(c.router(0), "id", "rf").arg("cat > /tmp/a"), &up);
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));

    // A shared connection through the router holds the forwards.
    let (master, share) = shared_connection(&c, &client, "rf");
    let mux = |args: &[&str]| {
        run(
            std::process::Command::new("ssh")
                .args(["-F", "/dev/null", "-o", &share])
                .args(["-o", "ExitOnForwardFailure=yes"])
                .args(args)
                .arg("x"),
            b"",
        )
    };

    // Port 0: the node allocates one, the router passes it on, OpenSSH
    // prints it; a program in the session reaches the client's server
    // through it, 1 MiB exact each way.
    let (server_port, server) = exchange_server(down.clone(), 1);
    let out = mux(&["-O", "forward", "-R", &format!("0:127.0.0.1:{server_port}")]);
    assert!(out.status.success(), "{:?}", texts(&out));
    let allocated: u32 = texts(&out).0.trim().parse().expect("the allocated port");
    assert!(allocated > 0, "{allocated}");
    let inside = connect_inside(&c, &client, "rf", allocated);
    assert!(inside.contains("rc=0"), "{inside}");
    assert!(inside.contains(&sha(&down)), "{inside}");
    assert_eq!(server.join().expect("server"), vec![sha(&up)]);

    // A fixed port, then cancelled: the port stops accepting.
    let (fixed_port, fixed) = exchange_server(down.clone(), 1);
    let forward = format!("9191:127.0.0.1:{fixed_port}");
    let out = mux(&["-O", "forward", "-R", &forward]);
    assert!(out.status.success(), "{:?}", texts(&out));
    let inside = connect_inside(&c, &client, "rf", 9191);
    assert!(inside.contains(&sha(&down)), "{inside}");
    assert_eq!(fixed.join().expect("server"), vec![sha(&up)]);
    let out = mux(&["-O", "cancel", "-R", &forward]);
    assert!(out.status.success(), "{:?}", texts(&out));
    assert_eq!(connect_empty_inside(&c, &client, "rf", 9191), "refused");
    // The allocated one still accepts; its target on the client's side is
    // gone (the server answered once), so the client refuses the channel
    // and the program's connection is closed at once.
    assert_eq!(connect_empty_inside(&c, &client, "rf", allocated), "closed");
    // Closing the connection ends its forwards.
    drop(master);
    assert_eq!(
        connect_empty_inside(&c, &client, "rf", allocated),
        "refused"
    );

    // A forward the node's rules refuse is refused through the router.
    let a = c.router(0).put(
        "/api/sessions/rf/forwarding",
        json!({"local": true, "remote": false}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let out = run(
        client
            .ssh(c.router(0), "id", "rf")
            .args(["-o", "ExitOnForwardFailure=yes", "-R", "9090:127.0.0.1:9"])
            .arg("true"),
        b"",
    );
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    assert!(
        texts(&out).1.contains("remote port forwarding failed"),
        "{}",
        texts(&out).1
    );
    let out = run(client.ssh(c.router(0), "id", "rf").arg("echo fine"), b"");
    assert_eq!(texts(&out).0, "fine\n");
}

/// `ssh` from the loopback address `from` through `router` to `session`.
fn ssh_from(
    client: &Client,
    router: &blink_e2e::Server,
    key: &str,
    session: &str,
    from: &str,
    command: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(client.common_opts(key))
        .args(["-b", from, "-o", "ConnectTimeout=10", "-p"])
        .arg(router.ssh_port.to_string())
        .arg(format!("{session}@127.0.0.1"))
        .arg(command);
    cmd
}

/// A router admits connections as a node does (`[ssh.limits]`): a source
/// failing authentication is refused at connect for a while, others are
/// not; a connection that never logs in is cut at the login grace time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_refuses_a_failing_source_and_cuts_logins_past_their_grace_time() {
    let limits = "[ssh.limits]\npenalty_exempt = []\npenalty_authfail_secs = 3\n\
                  penalty_min_secs = 4\npenalty_max_secs = 8\nlogin_grace_time_secs = 2\n";
    let Some(c) = tokio::task::spawn_blocking(move || {
        Cluster::start_with(&[4], 1, 10, |_| blink_e2e::cluster::Setup {
            router_tables: limits.into(),
            router_log: Some("info".into()),
            ..Default::default()
        })
    })
    .await
    .expect("start") else {
        return;
    };
    let c = Arc::new(c);
    let client = Arc::new(Client::new());
    let (cc, cl) = (c.clone(), client.clone());
    tokio::task::spawn_blocking(move || sessions(&cc, &cl, &["adm"]))
        .await
        .expect("sessions");

    // Wrong keys from 127.0.0.4 until it is refused at connect.
    let (cc, cl) = (c.clone(), client.clone());
    let failures = tokio::task::spawn_blocking(move || {
        for failures in 0..6 {
            let out = run(
                &mut ssh_from(&cl, cc.router(0), "other", "adm", "127.0.0.4", "true"),
                b"",
            );
            assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
            if !texts(&out).1.contains("Permission denied") {
                return failures;
            }
        }
        panic!("the failing source was never refused");
    })
    .await
    .expect("failures");
    assert!(failures >= 2, "refused after {failures} failures");
    let router = c.router(0);
    let line = router
        .wait_log(&[
            "ssh connection refused",
            "peer=127.0.0.4:",
            "reason=\"penalty\"",
        ])
        .expect("refusal line");
    assert!(line.contains("penalty=\"authentication failed\""), "{line}");

    // The right key from that source is refused too; from another it works.
    let (cc, cl) = (c.clone(), client.clone());
    tokio::task::spawn_blocking(move || {
        let router = cc.router(0);
        let out = run(
            &mut ssh_from(&cl, router, "id", "adm", "127.0.0.4", "echo in"),
            b"",
        );
        assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
        let out = run(
            &mut ssh_from(&cl, router, "id", "adm", "127.0.0.5", "cat /tmp/mark"),
            b"",
        );
        assert_eq!(texts(&out).0, "adm\n", "{:?}", texts(&out));
    })
    .await
    .expect("logins");

    // A client that sends its banner and nothing more is cut at 2 s.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.6:0".parse().expect("address"))
        .expect("bind");
    let mut stream = socket
        .connect(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            router.ssh_port,
        )))
        .await
        .expect("connect");
    stream.write_all(b"SSH-2.0-slow\r\n").await.expect("banner");
    let started = std::time::Instant::now();
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection outlived its grace time");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "cut after {:?}",
        started.elapsed()
    );
    assert!(
        router
            .wait_log(&["router ssh login grace time exceeded", "127.0.0.6"])
            .is_some()
    );
}

/// Through a router, a channel whose client does not read holds back only
/// itself: another channel of the same connection (an OpenSSH shared
/// connection) runs and answers meanwhile, as on a direct login.
#[test]
fn a_channel_nobody_reads_holds_back_only_itself_through_a_router() {
    let Some(c) = Cluster::start(&[4], 1, 10) else {
        return;
    };
    let client = Client::new();
    sessions(&c, &client, &["hol"]);
    let (_master, share) = shared_connection(&c, &client, "hol");
    let mux = || {
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-o", &share]);
        cmd
    };
    // 256 MiB that nobody reads: its stdout is a pipe this test never
    // drains, so OpenSSH stops granting that channel window.
    let mut stuck = mux()
        .args(["x", "head -c 268435456 /dev/zero; echo done >&2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh");
    std::thread::sleep(Duration::from_secs(3));
    // Another channel on the same connection still answers, several times.
    for i in 0..3 {
        let mut other = mux()
            .args(["x", &format!("echo alive-{i}; cat /tmp/mark")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ssh");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = other.try_wait().expect("wait") {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = other.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // (A stalled one is killed, not read: the shared connection holds
        // its output's other end.)
        assert!(
            status.is_some(),
            "a second channel stalled behind the unread one"
        );
        let out = other.wait_with_output().expect("output");
        assert!(status.is_some_and(|s| s.success()), "{:?}", texts(&out));
        assert_eq!(texts(&out).0, format!("alive-{i}\nhol\n"));
    }
    // The unread one is held, not lost: reading it now gets all of it.
    let mut stdout = stuck.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !reader.is_finished() {
        let _ = stuck.kill();
    }
    let total = reader.join().expect("reader");
    assert_eq!(
        total, 268_435_456,
        "the unread channel's data after it was read"
    );
    assert!(stuck.wait().expect("wait").success());
}
