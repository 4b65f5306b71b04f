//! The hub's routing rules, over in-memory connections.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{Client, Incoming};
use super::frame::{Frame, Kind};
use super::hub::{Hub, Services};
use super::limits::Limits;
use super::messages::{ErrorBody, Side};

struct Fake {
    checkpoint: bool,
}

#[async_trait]
impl Services for Fake {
    fn session_exists(&self, name: &str) -> bool {
        name.starts_with('s')
    }
    fn checkpoint_allowed(&self, _session: &str) -> bool {
        self.checkpoint
    }
    async fn checkpoint(&self, session: &str, snapshot: &str) -> Result<Value, ErrorBody> {
        Ok(json!({ "session": session, "snapshot": snapshot }))
    }
}

fn hub_with(limits: Limits, checkpoint: bool) -> Hub {
    Hub::new(limits, Arc::new(Fake { checkpoint }))
}

fn hub() -> Hub {
    hub_with(Limits::default(), false)
}

async fn connect(hub: &Hub, side: Side, session: Option<&str>) -> Client {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let hub = hub.clone();
    let session = session.map(str::to_owned);
    tokio::spawn(async move { hub.connection(b, side, session).await });
    Client::handshake(a).await.unwrap()
}

async fn host(hub: &Hub) -> Client {
    connect(hub, Side::Host, None).await
}

async fn sandbox(hub: &Hub, session: &str) -> Client {
    connect(hub, Side::Sandbox, Some(session)).await
}

async fn next(client: &Client) -> Incoming {
    tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("nothing arrived")
        .expect("connection closed")
}

#[tokio::test]
async fn events_reach_the_sessions_subscribers_only() {
    let hub = hub();
    let watcher = host(&hub).await;
    watcher.subscribe("s1").await.unwrap();
    let other = host(&hub).await;
    other.subscribe("s2").await.unwrap();
    let box1 = sandbox(&hub, "s1").await;
    let sent = box1
        .emit("build.done", json!({ "ok": true }))
        .await
        .unwrap();
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["subscribers"], 1);
    let Incoming::Event(event) = next(&watcher).await else {
        panic!("not an event")
    };
    assert_eq!(event.session, "s1");
    assert_eq!(event.topic, "build.done");
    assert_eq!(event.data, json!({ "ok": true }));
    // s2's subscriber saw nothing; its own session's next event is first.
    sandbox(&hub, "s2").await.emit("x", json!(2)).await.unwrap();
    let Incoming::Event(event) = next(&other).await else {
        panic!("not an event")
    };
    assert_eq!((event.session.as_str(), event.seq), ("s2", 1));
}

#[tokio::test]
async fn calls_go_both_ways_within_a_session() {
    let hub = hub();
    let agent = sandbox(&hub, "s1").await;
    agent.register(None, "agent.echo").await.unwrap();
    let tool = host(&hub).await;
    tool.register(Some("s1"), "host.time").await.unwrap();

    let serve_agent = tokio::spawn(async move {
        let Incoming::Call(call) = next(&agent).await else {
            panic!("not a call")
        };
        assert_eq!(call.method, "agent.echo");
        assert_eq!(call.session, None);
        agent.respond(call.id, Ok(call.params)).unwrap();
        let answer = agent.call(None, "host.time", json!({ "q": 1 })).await;
        (agent, answer)
    });
    let caller = host(&hub).await;
    let echoed = caller
        .call(Some("s1"), "agent.echo", json!([1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(echoed, json!([1, 2, 3]));
    // The sandbox's call reaches the host provider, which learns the session.
    let Incoming::Call(call) = next(&tool).await else {
        panic!("not a call")
    };
    assert_eq!(call.session.as_deref(), Some("s1"));
    tool.respond(
        call.id,
        Err(ErrorBody {
            code: "nope".into(),
            message: "refused".into(),
        }),
    )
    .unwrap();
    let (_agent, answer) = serve_agent.await.unwrap();
    assert_eq!(answer.unwrap_err().code(), Some("nope"));
}

#[tokio::test]
async fn a_session_cannot_reach_another() {
    let hub = hub();
    let a = sandbox(&hub, "s1").await;
    a.register(None, "secret").await.unwrap();
    let tool = host(&hub).await;
    tool.register(Some("s1"), "host.only.s1").await.unwrap();
    let b = sandbox(&hub, "s2").await;
    // Not s2's method, whatever s1 registered.
    let err = b.call(None, "host.only.s1", json!(null)).await.unwrap_err();
    assert_eq!(err.code(), Some("no_such_method"));
    // A sandbox cannot name a session, not even its own.
    let err = b.call(Some("s1"), "secret", json!(null)).await.unwrap_err();
    assert_eq!(err.code(), Some("not_permitted"));
    // A host caller addressing s2 does not find s1's method.
    let err = tool
        .call(Some("s2"), "secret", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("no_such_method"));
    let err = tool.call(None, "secret", json!(null)).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_argument"));
    let err = tool
        .call(Some("xx"), "secret", json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("session_not_found"));
    // Host methods stay the hub's: a sandbox cannot subscribe.
    let err = b
        .call(None, "session.subscribe", json!({ "name": "s1" }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("no_such_method"));
}

#[tokio::test]
async fn checkpoints_from_inside_follow_the_policy() {
    let refused = hub();
    let inside = sandbox(&refused, "s1").await;
    let err = inside
        .call(None, "session.checkpoint", json!({ "snapshot": "a" }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_permitted"));
    let allowed = hub_with(Limits::default(), true);
    let inside = sandbox(&allowed, "s1").await;
    let made = inside
        .call(None, "session.checkpoint", json!({ "snapshot": "a" }))
        .await
        .unwrap();
    assert_eq!(made, json!({ "session": "s1", "snapshot": "a" }));
}

/// Raw bytes to the hub after a proper hello; returns what it answered
/// before closing.
async fn raw_after_hello(hub: &Hub, bytes: &[u8]) -> Vec<Frame> {
    use futures_util::StreamExt;
    let (mut a, b) = tokio::io::duplex(4 * 1024 * 1024);
    let h = hub.clone();
    let served =
        tokio::spawn(async move { h.connection(b, Side::Sandbox, Some("s1".into())).await });
    let hello = Frame::json(Kind::Hello, 0, &json!({ "versions": [1] }));
    a.write_all(&hello.to_bytes().unwrap()).await.unwrap();
    a.write_all(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the hub kept the connection")
        .unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).await.unwrap();
    let mut frames = tokio_util::codec::FramedRead::new(&rest[..], super::frame::FrameCodec);
    let mut out = Vec::new();
    while let Some(Ok(f)) = frames.next().await {
        out.push(f);
    }
    out
}

fn last_error_code(frames: &[Frame]) -> String {
    let last = frames.last().expect("no frames");
    assert_eq!(last.kind, Kind::Error);
    assert_eq!(last.channel, 0);
    serde_json::from_slice::<ErrorBody>(&last.payload)
        .unwrap()
        .code
}

#[tokio::test]
async fn each_bad_frame_closes_only_its_connection() {
    let hub = hub();
    let bystander = sandbox(&hub, "s1").await;
    let watcher = host(&hub).await;
    watcher.subscribe("s1").await.unwrap();
    let ok = Frame::new(Kind::Ping, 0, &b""[..]).to_bytes().unwrap();
    let mut magic = ok.clone();
    magic[0] = b'X';
    let mut oversize = ok.clone();
    oversize[12..16].copy_from_slice(&(2u32 << 20).to_be_bytes());
    let mut kind = ok.clone();
    kind[5] = 77;
    let json = Frame::new(Kind::Request, 1, &b"{not json"[..])
        .to_bytes()
        .unwrap();
    // A stream to a host provider, then more data than its credit.
    let tool = host(&hub).await;
    tool.register(Some("s1"), "sink").await.unwrap();
    let mut flood = Frame::json(Kind::StreamOpen, 5, &json!({ "method": "sink" }))
        .to_bytes()
        .unwrap();
    for _ in 0..2 {
        flood.extend(
            Frame::new(Kind::StreamData, 5, vec![0u8; 200 * 1024])
                .to_bytes()
                .unwrap(),
        );
    }
    let cases: [(&str, Vec<u8>); 5] = [
        ("bad_magic", magic),
        ("too_large", oversize),
        ("unknown_kind", kind),
        ("bad_json", json),
        ("flow_control", flood),
    ];
    for (code, bytes) in cases {
        let answered = raw_after_hello(&hub, &bytes).await;
        assert_eq!(answered[0].kind, Kind::Welcome);
        assert_eq!(last_error_code(&answered), code);
        // Everyone else is unaffected.
        bystander.emit("still", json!(code)).await.unwrap();
        loop {
            if let Incoming::Event(e) = next(&watcher).await
                && e.topic == "still"
            {
                assert_eq!(e.data, json!(code));
                break;
            }
        }
    }
    assert!(hub.stats().protocol_errors >= 5);
}

#[tokio::test]
async fn a_stream_is_bounded_by_credit_both_ways() {
    let hub = hub();
    let tool = host(&hub).await;
    tool.register(Some("s1"), "sink").await.unwrap();
    let inside = sandbox(&hub, "s1").await;
    const TOTAL: usize = 32 << 20;
    let sender = tokio::spawn(async move {
        let mut s = inside.open_stream(None, "sink", json!({})).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            s.send(&chunk).await.unwrap();
            sent += chunk.len();
        }
        s.close().unwrap();
        // The reply comes back on the same stream.
        let reply = s.recv().await.unwrap().unwrap();
        (inside, reply)
    });
    let Incoming::Stream(mut stream, open) = next(&tool).await else {
        panic!("not a stream")
    };
    assert_eq!(open.session.as_deref(), Some("s1"));
    let mut got = 0usize;
    while let Some(bytes) = stream.recv().await.unwrap() {
        got += bytes.len();
        // A slow reader.
        if got % (4 << 20) < bytes.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(got, TOTAL);
    stream.send(b"thanks").await.unwrap();
    stream.close().unwrap();
    let (_inside, reply) = sender.await.unwrap();
    assert_eq!(&reply[..], b"thanks");
    let stats = hub.stats();
    assert!(stats.stream_bytes >= TOTAL as u64);
    // Never more queued for one connection than the window allows (plus
    // a few small frames).
    let bound = hub.limits().max_window as usize + 64 * 1024;
    assert!(
        stats.peak_queued_bytes <= bound,
        "peak {} over {bound}",
        stats.peak_queued_bytes
    );
}

#[tokio::test]
async fn a_slow_subscriber_loses_events_and_is_told_how_many() {
    let limits = Limits {
        subscriber_queue: 4,
        ..Limits::default()
    };
    let hub = hub_with(limits, false);
    let mut sub = hub.subscribe("s1");
    let inside = sandbox(&hub, "s1").await;
    for i in 0..10 {
        inside.emit("tick", json!(i)).await.unwrap();
    }
    let first = sub.next().await.unwrap();
    assert_eq!(first.dropped, 6);
    assert_eq!(first.seq, 7);
}

/// A peer that sends a bad frame and never reads: its close (the error
/// frame behind a welcome it did not read) is bounded by
/// `close_timeout_secs`, then the hub drops it and its socket ends.
#[tokio::test]
async fn a_closing_peer_that_never_reads_is_dropped_in_time() {
    let limits = Limits {
        close_timeout_secs: 1,
        ..Limits::default()
    };
    let hub = hub_with(limits, false);
    // 32 bytes of buffer: the welcome alone does not fit.
    let (mut a, b) = tokio::io::duplex(32);
    let h = hub.clone();
    let served =
        tokio::spawn(async move { h.connection(b, Side::Sandbox, Some("s1".into())).await });
    let hello = Frame::json(Kind::Hello, 0, &json!({ "versions": [1] }));
    let mut bad = Frame::new(Kind::Ping, 0, &b""[..]).to_bytes().unwrap();
    bad[..4].copy_from_slice(b"HTTP");
    a.write_all(&hello.to_bytes().unwrap()).await.unwrap();
    a.write_all(&bad).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the hub waited forever on a peer that does not read")
        .unwrap();
    // Dropped: what was written is readable, then the end.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), a.read_to_end(&mut rest))
        .await
        .expect("the socket stayed open")
        .unwrap();
    assert_eq!(hub.stats().connections, 0);
    assert_eq!(hub.stats().protocol_errors, 1);
}

#[tokio::test]
async fn limits_hold() {
    let limits = Limits {
        sandbox_connections: 1,
        pending_per_connection: 1,
        ..Limits::default()
    };
    let hub = hub_with(limits, false);
    let first = sandbox(&hub, "s1").await;
    first.register(None, "slow").await.unwrap();
    let (a, b) = tokio::io::duplex(1024);
    let h = hub.clone();
    tokio::spawn(async move { h.connection(b, Side::Sandbox, Some("s1".into())).await });
    match Client::handshake(a).await {
        Err(err) => assert_eq!(err.code(), Some("limit_exceeded")),
        Ok(_) => panic!("a second connection was let in"),
    }
    // One pending call at a time.
    let caller = Arc::new(host(&hub).await);
    let c = caller.clone();
    let waiting = tokio::spawn(async move { c.call(Some("s1"), "slow", json!(1)).await });
    let Incoming::Call(call) = next(&first).await else {
        panic!("not a call")
    };
    let err = caller.call(Some("s1"), "slow", json!(2)).await.unwrap_err();
    assert_eq!(err.code(), Some("limit_exceeded"));
    first.respond(call.id, Ok(json!("done"))).unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), json!("done"));
    // A provider that leaves answers its callers with peer_gone.
    let c = caller.clone();
    let waiting = tokio::spawn(async move { c.call(Some("s1"), "slow", json!(3)).await });
    let _ = next(&first).await;
    drop(first);
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("peer_gone"));
}

/// The sandbox's own client (`blink-guest vhub`, std only) against the
/// SDK's hub and client: the same bytes both ways.
#[tokio::test]
async fn the_guest_client_speaks_the_sdk_protocol() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("blink-guest");
    std::fs::write(&guest, crate::runtime::local::GUEST_BINARY).unwrap();
    std::fs::set_permissions(&guest, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("vhub.sock");
    let hub = hub();
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let h = hub.clone();
    tokio::spawn(async move { h.serve_sandbox("s1".into(), listener).await });
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&guest);
        cmd.arg("vhub").args(args).env("BLINK_VHUB_SOCKET", &socket);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        cmd.spawn().unwrap()
    };

    // emit
    let watcher = host(&hub).await;
    watcher.subscribe("s1").await.unwrap();
    let out = run(&["emit", "job.done", r#"{"n":"x\"y"}"#])
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Incoming::Event(e) = next(&watcher).await else {
        panic!("not an event")
    };
    assert_eq!(
        (e.topic.as_str(), e.data.clone()),
        ("job.done", json!({ "n": "x\"y" }))
    );

    // call: the guest calls a host provider.
    let tool = Arc::new(host(&hub).await);
    tool.register(Some("s1"), "host.add").await.unwrap();
    let t = tool.clone();
    let provider = tokio::spawn(async move {
        let Incoming::Call(call) = next(&t).await else {
            panic!("not a call")
        };
        let sum = call.params["a"].as_i64().unwrap() + call.params["b"].as_i64().unwrap();
        t.respond(call.id, Ok(json!({ "sum": sum }))).unwrap();
    });
    let out = run(&["call", "host.add", r#"{"a":2,"b":40}"#])
        .wait_with_output()
        .await
        .unwrap();
    provider.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, json!({ "sum": 42 }));
    // An error frame becomes an exit code and a message.
    let out = run(&["call", "nobody.home"])
        .wait_with_output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_method"));

    // serve: the host calls the guest (echo, then through a program).
    let mut echo = run(&["serve", "guest.echo", "--count", "1"]);
    let mut line = [0u8; 6];
    echo.stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .await
        .unwrap();
    assert_eq!(&line, b"ready\n");
    let answer = tool
        .call(
            Some("s1"),
            "guest.echo",
            json!({ "deep": [1, { "a": "}" }] }),
        )
        .await
        .unwrap();
    assert_eq!(answer, json!({ "deep": [1, { "a": "}" }] }));
    assert!(echo.wait().await.unwrap().success());
    let mut wc = run(&["serve", "guest.wc", "--count", "1", "--", "wc", "-c"]);
    wc.stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .await
        .unwrap();
    let answer = tool
        .call(Some("s1"), "guest.wc", json!("abc"))
        .await
        .unwrap();
    assert_eq!(answer.as_str().unwrap().trim(), "5");
    assert!(wc.wait().await.unwrap().success());

    // stream: 4 MiB out of the guest's stdin, echoed back by the host.
    tool.register(Some("s1"), "host.echo").await.unwrap();
    let t = tool.clone();
    let echoer = tokio::spawn(async move {
        let Incoming::Stream(mut s, _) = next(&t).await else {
            panic!("not a stream")
        };
        while let Some(b) = s.recv().await.unwrap() {
            s.send(&b).await.unwrap();
        }
        s.close().unwrap();
    });
    let mut streamer = run(&["stream", "host.echo"]);
    let mut stdin = streamer.stdin.take().unwrap();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let feeder = tokio::spawn(async move {
        stdin.write_all(&sent).await.unwrap();
    });
    let out = streamer.wait_with_output().await.unwrap();
    feeder.await.unwrap();
    echoer.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
}
