//! SSH channel requests OpenSSH's `ssh` cannot script: signals, window
//! changes on demand, many channels on one connection, and connections
//! that never authenticate. Driven with the `russh` client.

use std::sync::Arc;
use std::time::Duration;

use blink_e2e::ssh::SshFixture;
use russh::client::{Handle, Msg};
use russh::keys::PrivateKeyWithHashAlg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Trusts any host key: these tests check the gateway, not host keys.
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

async fn connect_only(port: u16) -> Handle<AnyHost> {
    let config = Arc::new(russh::client::Config::default());
    russh::client::connect(config, ("127.0.0.1", port), AnyHost)
        .await
        .expect("ssh connect")
}

/// A connection logged in to `s1` with the `id` key.
async fn login(f: &SshFixture) -> Handle<AnyHost> {
    let mut handle = connect_only(f.server.ssh_port).await;
    let key = russh::keys::load_secret_key(f.client.path("id"), None).expect("load key");
    let auth = handle
        .authenticate_publickey("s1", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .expect("authenticate");
    assert!(auth.success(), "public key refused");
    handle
}

/// Everything a channel says until it closes.
#[derive(Debug, Default)]
struct Outcome {
    stdout: String,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
}

/// Read stdout until it contains `needle` (20 s at most).
async fn read_until(channel: &mut Channel<Msg>, out: &mut String, needle: &str) {
    let wait = async {
        while !out.contains(needle) {
            match channel.wait().await {
                Some(ChannelMsg::Data { data }) => out.push_str(&String::from_utf8_lossy(&data)),
                Some(_) => {}
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), wait).await;
    assert!(out.contains(needle), "no {needle:?} in {out:?}");
}

/// Read until the channel closes (20 s at most).
async fn finish(channel: &mut Channel<Msg>, mut outcome: Outcome) -> Outcome {
    let wait = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    outcome.stdout.push_str(&String::from_utf8_lossy(&data))
                }
                ChannelMsg::ExitStatus { exit_status } => outcome.exit_status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    outcome.exit_signal = Some(format!("{signal_name:?}"))
                }
                _ => {}
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(20), wait).await;
    assert!(closed.is_ok(), "channel did not close: {outcome:?}");
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn signal_requests_reach_the_process() {
    let Some(f) = SshFixture::new() else { return };
    let ssh = login(&f).await;

    let mut channel = ssh.channel_open_session().await.expect("open");
    channel
        .exec(
            true,
            "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.1; done",
        )
        .await
        .expect("exec");
    let mut out = String::new();
    read_until(&mut channel, &mut out, "ready\n").await;
    channel.signal(Sig::USR1).await.expect("signal");
    read_until(&mut channel, &mut out, "got-usr1\n").await;
    channel.signal(Sig::TERM).await.expect("signal");
    let outcome = finish(&mut channel, Outcome::default()).await;
    assert_eq!(outcome.exit_signal.as_deref(), Some("TERM"), "{outcome:?}");
    assert_eq!(outcome.exit_status, None, "{outcome:?}");

    // INT to a program in a pipe-mode exec, on the same connection.
    let mut channel = ssh.channel_open_session().await.expect("open");
    channel
        .exec(true, "echo ready; exec sleep 60")
        .await
        .expect("exec");
    let mut out = String::new();
    read_until(&mut channel, &mut out, "ready\n").await;
    channel.signal(Sig::INT).await.expect("signal");
    let outcome = finish(&mut channel, Outcome::default()).await;
    assert_eq!(outcome.exit_signal.as_deref(), Some("INT"), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn window_change_resizes_the_terminal() {
    let Some(f) = SshFixture::new() else { return };
    let ssh = login(&f).await;

    let mut channel = ssh.channel_open_session().await.expect("open");
    channel
        .request_pty(true, "vt220", 80, 24, 0, 0, &[])
        .await
        .expect("pty");
    channel
        .exec(
            true,
            "echo \"size=$(stty size) term=$TERM\"; read line; echo \"size=$(stty size)\"",
        )
        .await
        .expect("exec");
    let mut out = String::new();
    read_until(&mut channel, &mut out, "size=24 80 term=vt220").await;
    channel.window_change(132, 43, 0, 0).await.expect("resize");
    channel.data(&b"go\r"[..]).await.expect("data");
    let outcome = finish(
        &mut channel,
        Outcome {
            stdout: out,
            ..Outcome::default()
        },
    )
    .await;
    assert!(outcome.stdout.contains("size=43 132"), "{outcome:?}");
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn channels_per_connection_are_limited() {
    let Some(f) = SshFixture::with(|s| s.config("[ssh.limits]\nmax_channels_per_connection = 2\n"))
    else {
        return;
    };
    let ssh = login(&f).await;

    let mut first = ssh.channel_open_session().await.expect("first");
    let mut second = ssh.channel_open_session().await.expect("second");
    let third = ssh.channel_open_session().await;
    assert!(
        matches!(
            third,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ResourceShortage
            ))
        ),
        "{third:?}"
    );
    // Both open channels work, and the connection is still fine.
    second.exec(true, "echo two").await.expect("exec");
    first.exec(true, "echo one").await.expect("exec");
    let one = finish(&mut first, Outcome::default()).await;
    let two = finish(&mut second, Outcome::default()).await;
    assert_eq!((one.stdout.as_str(), one.exit_status), ("one\n", Some(0)));
    assert_eq!((two.stdout.as_str(), two.exit_status), ("two\n", Some(0)));
    // Closed channels free their slots.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = ssh.channel_open_session().await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = again.expect("a slot is free again");
    again.exec(true, "echo three").await.expect("exec");
    let three = finish(&mut again, Outcome::default()).await;
    assert_eq!(three.stdout, "three\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_and_auth_timeouts_close_the_connection() {
    let Some(f) = SshFixture::with(|s| {
        s.config("[ssh.limits]\nhandshake_timeout_secs = 1\nauth_timeout_secs = 2\n")
    }) else {
        return;
    };

    // A client that never sends its version string is closed.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", f.server.ssh_port))
        .await
        .expect("connect");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "still open: {:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(seen.starts_with(b"SSH-2.0-blink"), "{seen:?}");
    let _ = socket.shutdown().await;

    // A client that finishes key exchange but never authenticates is
    // closed too.
    let ssh = connect_only(f.server.ssh_port).await;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while !ssh.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "unauthenticated connection still open");

    // One that authenticates in time stays: its channel outlives both
    // timeouts.
    let ssh = login(&f).await;
    let mut channel = ssh.channel_open_session().await.expect("open");
    channel
        .exec(true, "sleep 3; echo late")
        .await
        .expect("exec");
    let outcome = finish(&mut channel, Outcome::default()).await;
    assert_eq!(outcome.stdout, "late\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_execs_on_one_connection() {
    let Some(f) = SshFixture::new() else { return };
    let ssh = login(&f).await;

    let mut channels = Vec::new();
    for i in 0..12u32 {
        let channel = ssh.channel_open_session().await.expect("open");
        channel
            .exec(true, format!("sleep 1; echo run-{i}; exit {}", i % 5))
            .await
            .expect("exec");
        channels.push((i, channel));
    }
    // All run at once: each finishes with its own output and status.
    let results = channels.into_iter().map(|(i, mut channel)| {
        tokio::spawn(async move { (i, finish(&mut channel, Outcome::default()).await) })
    });
    for r in results.collect::<Vec<_>>() {
        let (i, outcome) = r.await.expect("task");
        assert_eq!(outcome.stdout, format!("run-{i}\n"));
        assert_eq!(outcome.exit_status, Some(i % 5));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_attempts_per_connection_are_limited() {
    let Some(f) = SshFixture::with(|s| s.config("[ssh.limits]\nmax_auth_attempts = 2\n")) else {
        return;
    };

    let mut ssh = connect_only(f.server.ssh_port).await;
    let wrong = Arc::new(russh::keys::load_secret_key(f.client.path("other"), None).expect("key"));
    let right = Arc::new(russh::keys::load_secret_key(f.client.path("id"), None).expect("key"));
    for _ in 0..2 {
        let auth = ssh
            .authenticate_publickey("s1", PrivateKeyWithHashAlg::new(wrong.clone(), None))
            .await;
        assert!(matches!(auth, Ok(ref a) if !a.success()), "{auth:?}");
    }
    // Attempts are used up: even the right key no longer gets in.
    let auth = ssh
        .authenticate_publickey("s1", PrivateKeyWithHashAlg::new(right.clone(), None))
        .await;
    assert!(!matches!(auth, Ok(ref a) if a.success()), "{auth:?}");

    // A fresh connection with the right key first is fine.
    let mut ssh = connect_only(f.server.ssh_port).await;
    let auth = ssh
        .authenticate_publickey("s1", PrivateKeyWithHashAlg::new(wrong, None))
        .await;
    assert!(matches!(auth, Ok(ref a) if !a.success()), "{auth:?}");
    let auth = ssh
        .authenticate_publickey("s1", PrivateKeyWithHashAlg::new(right, None))
        .await;
    assert!(matches!(auth, Ok(ref a) if a.success()), "{auth:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_text_cannot_forge_log_lines() {
    let Some(f) = SshFixture::with(|s| s.log_filter("info")) else {
        return;
    };

    // Before login: a login name with a line of its own.
    let mut ssh = connect_only(f.server.ssh_port).await;
    let key = Arc::new(russh::keys::load_secret_key(f.client.path("id"), None).expect("key"));
    let auth = ssh
        .authenticate_publickey(
            "s1\nFAKE LINE from the login",
            PrivateKeyWithHashAlg::new(key, None),
        )
        .await;
    assert!(matches!(auth, Ok(ref a) if !a.success()), "{auth:?}");
    drop(ssh);
    let closed = f
        .server
        .wait_log(&["ssh connection closed", "authenticated=false"]);
    assert!(closed.is_some(), "{}", f.server.log());

    // After login: a command with a newline, a carriage return and an
    // escape sequence (in a shell comment, so the command succeeds).
    let ssh = login(&f).await;
    let mut channel = ssh.channel_open_session().await.expect("open");
    channel
        .exec(true, "true\nFAKE=from-the-command true # \r\x1b[2J")
        .await
        .expect("exec");
    let outcome = finish(&mut channel, Outcome::default()).await;
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
    let line = f.server.wait_log(&["ssh channel closed"]);
    assert!(line.is_some(), "{}", f.server.log());

    let log = f.server.log();
    assert!(
        log.contains(r"s1\nFAKE LINE from the login"),
        "login not escaped:\n{log}"
    );
    assert!(
        log.contains(r"true\nFAKE=from-the-command true # \r\x1b[2J"),
        "command not escaped:\n{log}"
    );
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with("FAKE")).collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_name_with_nul_is_refused_alone() {
    let Some(f) = SshFixture::new() else { return };
    let ssh = login(&f).await;
    let mut channel = ssh.channel_open_session().await.expect("open");

    // The next reply to a request that wants one.
    async fn reply(channel: &mut Channel<Msg>) -> ChannelMsg {
        let wait = async {
            loop {
                match channel.wait().await {
                    Some(m @ (ChannelMsg::Success | ChannelMsg::Failure)) => return m,
                    Some(_) => {}
                    None => panic!("channel closed"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("no reply")
    }

    channel
        .set_env(true, "LC_BAD\0NAME", "x")
        .await
        .expect("env");
    assert!(matches!(reply(&mut channel).await, ChannelMsg::Failure));
    channel.set_env(true, "LC_GOOD", "kept").await.expect("env");
    assert!(matches!(reply(&mut channel).await, ChannelMsg::Success));
    channel
        .exec(true, "echo \"ok $LC_GOOD\"")
        .await
        .expect("exec");
    let outcome = finish(&mut channel, Outcome::default()).await;
    assert_eq!(outcome.exit_status, Some(0), "{outcome:?}");
    assert_eq!(outcome.stdout, "ok kept\n");
}
