//! Before authentication (`gateway/src/ssh/admission.rs`): floods of
//! unauthenticated connections, sources that keep failing, and the login
//! grace time, with OpenSSH's `ssh` for the real logins and raw TCP
//! sockets for the floods. Sources are loopback addresses of their own
//! (127.0.0.2, ...: Linux routes all of 127.0.0.0/8 to lo), so a test
//! limits one source and shows another still gets in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use blink_e2e::ssh::{Client, setup};
use blink_e2e::{Blink, Server, local_runtime_available, run, texts};

fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `ssh` from the loopback address `from` running `command`.
fn ssh_from(client: &Client, server: &Server, key: &str, from: IpAddr, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(client.common_opts(key))
        .args(["-b", &from.to_string()])
        .args(["-o", "ConnectTimeout=10"])
        .arg("-p")
        .arg(server.ssh_port.to_string())
        .arg("s1@127.0.0.1")
        .arg(command);
    cmd
}

/// A TCP connection to the server from the loopback address `from`.
async fn connect_from(from: IpAddr, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(SocketAddr::new(source(1), port)).await
}

/// Log lines holding every one of `needles`.
fn count_lines(server: &Server, needles: &[&str]) -> usize {
    server
        .log()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_lock_out_a_real_login() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = blink
        .server()
        .config("[ssh.limits]\nmax_connections = 100\nmax_startups = \"20:30:100\"\nper_source_max_startups = 10\n\
         login_grace_time_secs = 60\n")
        .log_filter("info")
        .start();

    // 200 connections from 127.0.0.3 that never say anything, held open.
    let flooder = source(3);
    let mut flood = Vec::new();
    for _ in 0..200 {
        match connect_from(flooder, server.ssh_port).await {
            Ok(socket) => flood.push(socket),
            Err(e) => panic!("connecting from {flooder}: {e}"),
        }
    }
    // The first ten hold the source's places; the rest are refused.
    let refused = |server: &Server| {
        count_lines(
            server,
            &[
                "ssh connection refused",
                "reason=\"per_source_max_startups\"",
                "source=127.0.0.3/32",
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused(&server) < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused(&server) >= 20, "{}", server.log());
    // Refused ones are told why and closed.
    let mut told = String::new();
    let mut last = flood.pop().expect("a socket");
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt as _;
        let mut buf = Vec::new();
        let _ = last.read_to_end(&mut buf).await;
        told = String::from_utf8_lossy(&buf).into_owned();
    })
    .await;
    assert!(
        told.contains("too many unauthenticated connections from your address"),
        "{told:?}"
    );

    // A real login from another source completes, and quickly.
    let started = Instant::now();
    let mut cmd = ssh_from(&client, &server, "id", source(2), "echo in");
    let out = tokio::task::spawn_blocking(move || run(&mut cmd, b""))
        .await
        .expect("ssh");
    let took = started.elapsed();
    assert_eq!(texts(&out).0, "in\n", "{:?}", texts(&out));
    assert!(took < Duration::from_secs(15), "login took {took:?}");
    assert!(server.log().contains("peer=127.0.0.2:"), "{}", server.log());
    drop(flood);
}

#[test]
fn a_source_failing_authentication_is_refused_for_a_while_then_let_back() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    // Small penalties: 3 s a failure, refused past 4 s, at most 8 s.
    let server = blink
        .server()
        .config(
            "[ssh.limits]\npenalty_exempt = []\npenalty_authfail_secs = 3\n\
         penalty_min_secs = 4\npenalty_max_secs = 8\n",
        )
        .log_filter("info")
        .start();
    let bad = source(4);

    // Wrong keys until the source is refused at connect: after the second
    // failure (about 6 s of penalty, over the 4 s minimum).
    let mut failures = 0;
    let mut refused_at = None;
    for _ in 0..6 {
        let out = run(&mut ssh_from(&client, &server, "other", bad, "true"), b"");
        assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
        if texts(&out).1.contains("Permission denied") {
            failures += 1;
            continue;
        }
        refused_at = Some(Instant::now());
        break;
    }
    let refused_at = refused_at.expect("the failing source was never refused");
    assert!(failures >= 2, "refused after {failures} failures");
    let line = server
        .wait_log(&[
            "ssh connection refused",
            "peer=127.0.0.4:",
            "reason=\"penalty\"",
        ])
        .expect("refusal line");
    assert!(line.contains("penalty=\"authentication failed\""), "{line}");
    assert!(
        server
            .wait_log(&["ssh source penalized", "source=127.0.0.4/32"])
            .is_some()
    );

    // The right key from that source is refused too; another source is not.
    let out = run(&mut ssh_from(&client, &server, "id", bad, "echo in"), b"");
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    let out = run(
        &mut ssh_from(&client, &server, "id", source(5), "echo in"),
        b"",
    );
    assert_eq!(texts(&out).0, "in\n", "{:?}", texts(&out));

    // The penalty decays: the source gets back in (within the 8 s cap).
    let mut back = None;
    for _ in 0..40 {
        let out = run(&mut ssh_from(&client, &server, "id", bad, "echo in"), b"");
        if texts(&out).0 == "in\n" {
            back = Some(refused_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let back = back.expect("the source was never let back in");
    assert!(back >= Duration::from_secs(1), "let back after {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_grace_time_cuts_a_connection_that_only_sends_its_banner() {
    let blink = Blink::new();
    // A grace time of 2 s; overstaying it costs 20 s of penalty, so the
    // source is refused right after.
    let server = blink
        .server()
        .config(
            "[ssh.limits]\nlogin_grace_time_secs = 2\npenalty_exempt = []\n\
         penalty_grace_exceeded_secs = 20\n",
        )
        .log_filter("info")
        .start();

    // The version string and nothing more: the server's key exchange is
    // never answered.
    let lazy = source(6);
    let mut socket = connect_from(lazy, server.ssh_port).await.expect("connect");
    let started = Instant::now();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    socket
        .write_all(b"SSH-2.0-lazy_client\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "still open after 30 s");
    assert!(seen.starts_with(b"SSH-2.0-blink"), "{seen:?}");
    assert!(took >= Duration::from_millis(1500), "cut early: {took:?}");
    assert!(took < Duration::from_secs(15), "cut late: {took:?}");
    assert!(
        server
            .wait_log(&["ssh login grace time exceeded", "peer=127.0.0.6:"])
            .is_some()
    );

    // One that sends nothing at all is cut at the grace time too.
    let silent = source(7);
    let mut socket = connect_from(silent, server.ssh_port)
        .await
        .expect("connect");
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "still open after 30 s");
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(15)).contains(&took),
        "{took:?}"
    );

    // Overstaying put the first source in the penalty box.
    let mut socket = connect_from(lazy, server.ssh_port).await.expect("connect");
    let mut told = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut told)).await;
    let told = String::from_utf8_lossy(&told);
    assert!(
        told.contains("too many failed or abandoned logins"),
        "{told:?}"
    );
    let line = server
        .wait_log(&["ssh connection refused", "peer=127.0.0.6:"])
        .expect("refusal line");
    assert!(
        line.contains("penalty=\"login grace time exceeded\""),
        "{line}"
    );
}

#[test]
fn refused_connections_read_as_closed_to_openssh() {
    // The refusal is a line and an orderly close, never a reset: OpenSSH
    // reports "Connection closed" and exits 255.
    let blink = Blink::new();
    let client = Client::new();
    let server = blink
        .server()
        .config("[ssh.limits]\npenalty_exempt = []\npenalty_noauth_secs = 20\n")
        .log_filter("info")
        .start();
    let from = source(8);
    // One connection that closes without authenticating: 20 s of penalty.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tokio::io::AsyncReadExt as _;
        let mut socket = connect_from(from, server.ssh_port).await.expect("connect");
        let mut banner = [0u8; 8];
        socket.read_exact(&mut banner).await.expect("banner");
    });
    assert!(
        server
            .wait_log(&["ssh source penalized", "source=127.0.0.8/32"])
            .is_some()
    );
    let out = run(&mut ssh_from(&client, &server, "id", from, "true"), b"");
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("closed"), "{stderr}");
    assert!(!stderr.contains("reset"), "{stderr}");
}
