//! A relayed V-Hub endpoint end to end, as the boxlite runtime runs it:
//! the real `blink-guest vhub relay` under the exec wire (host processes,
//! no VM), the SDK's relay host half connecting each relayed connection to
//! a session endpoint of a real hub, and the real `blink-guest vhub`
//! clients on the relay's socket. tests/vm/ runs the same inside a box.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use blink_sdk::vhub::messages::{ErrorBody, Side};
use blink_sdk::vhub::{Client, Hub, Incoming, Limits, Services, relay};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod guest_process;
use guest_process::{Guest, guest, run, spec};

struct Sessions;

#[async_trait]
impl Services for Sessions {
    fn session_exists(&self, name: &str) -> bool {
        name == "s1"
    }
    fn checkpoint_allowed(&self, _session: &str) -> bool {
        false
    }
    async fn checkpoint(&self, _session: &str, _snapshot: &str) -> Result<Value, ErrorBody> {
        Err(ErrorBody {
            code: "denied".into(),
            message: "no checkpoints here".into(),
        })
    }
}

/// A hub with session `s1`'s endpoint served and relayed: the relay's
/// socket is where sandbox programs connect.
struct Relayed {
    hub: Hub,
    guest: Guest,
    dir: tempfile::TempDir,
    socket: PathBuf,
    relay: tokio::task::JoinHandle<Result<(), relay::RelayError>>,
    _relay_process: blink_sdk::runtime::exec::Execution,
}

async fn relayed() -> Relayed {
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new(Limits::default(), Arc::new(Sessions));
    let endpoint = dir.path().join("endpoint.sock");
    let listener = tokio::net::UnixListener::bind(&endpoint).unwrap();
    {
        let hub = hub.clone();
        tokio::spawn(async move { hub.serve_sandbox("s1".into(), listener).await });
    }
    let socket = dir.path().join("run/blink/vhub.sock");
    let argv = [
        guest.path.to_str().unwrap(),
        "vhub",
        "relay",
        socket.to_str().unwrap(),
    ];
    let mut ex = run(&guest, spec(&argv), Arc::default()).await;
    let (stdout, stdin) = (ex.stdout.take().unwrap(), ex.stdin.take().unwrap());
    let relay = tokio::spawn(relay::serve(stdout, stdin, endpoint, 64));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the relay never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Relayed {
        hub,
        guest,
        dir,
        socket,
        relay,
        _relay_process: ex,
    }
}

impl Relayed {
    async fn host(&self) -> Client {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let hub = self.hub.clone();
        tokio::spawn(async move { hub.connection(b, Side::Host, None).await });
        Client::handshake(a).await.unwrap()
    }

    /// `blink-guest vhub ARGS` as a sandbox program on the relay's socket.
    fn program(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.guest.path);
        c.arg("vhub")
            .args(args)
            .env("BLINK_VHUB_SOCKET", &self.socket)
            .kill_on_drop(true);
        c
    }

    async fn output(&self, args: &[&str]) -> std::process::Output {
        tokio::time::timeout(Duration::from_secs(30), self.program(args).output())
            .await
            .expect("the program hung")
            .unwrap()
    }
}

async fn next(client: &Client) -> Incoming {
    tokio::time::timeout(Duration::from_secs(20), client.next())
        .await
        .expect("nothing arrived in 20 s")
        .expect("the hub closed the connection")
}

async fn call_when_ready(client: &Client, method: &str, params: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.call(Some("s1"), method, params.clone()).await {
            Ok(v) => return v,
            Err(e) if e.code() == Some("no_such_method") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("calling {method}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_calls_both_ways_cross_the_relay() {
    let r = relayed().await;
    let watcher = r.host().await;
    watcher.subscribe("s1").await.unwrap();
    let out = r.output(&["emit", "relay.up", r#"{"n":1}"#]).await;
    assert!(out.status.success(), "{out:?}");
    let Incoming::Event(event) = next(&watcher).await else {
        panic!("not an event")
    };
    // The session is the endpoint's, whatever the relay is.
    assert_eq!(
        (event.session.as_str(), event.topic.as_str()),
        ("s1", "relay.up")
    );
    assert_eq!(event.data, json!({ "n": 1 }));

    // Host -> sandbox: a method a sandbox program provides.
    let mut serving = r
        .program(&["serve", "echo", "--count", "1"])
        .spawn()
        .unwrap();
    let answer = call_when_ready(&watcher, "echo", json!({ "x": [1, 2] })).await;
    assert_eq!(answer, json!({ "x": [1, 2] }));
    assert!(serving.wait().await.unwrap().success());

    // Sandbox -> host: a method the host client provides.
    watcher.register(Some("s1"), "host.add").await.unwrap();
    let calling = tokio::spawn(r.program(&["call", "host.add", "41"]).output());
    let Incoming::Call(call) = next(&watcher).await else {
        panic!("not a call")
    };
    assert_eq!(call.params, json!(41));
    watcher.respond(call.id, Ok(json!(42))).unwrap();
    let out = calling.await.unwrap().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    assert!(!r.relay.is_finished());
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_16_mib_exactly_both_ways() {
    let r = relayed().await;
    let mut up = vec![0u8; 16 << 20];
    let mut down = vec![0u8; 16 << 20];
    rand::rng().fill_bytes(&mut up);
    rand::rng().fill_bytes(&mut down);
    // The sandbox's side sends `up` and writes what it gets to a file.
    let up_file = r.dir.path().join("up");
    std::fs::write(&up_file, &up).unwrap();
    let received = r.dir.path().join("received");
    let mut accepting = r
        .program(&["accept", "sink"])
        .stdin(std::fs::File::open(&up_file).unwrap())
        .stdout(std::fs::File::create(&received).unwrap())
        .spawn()
        .unwrap();
    // `ready` once its method is registered.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read(&received).unwrap_or_default() != b"ready\n" {
        assert!(
            Instant::now() < deadline,
            "the sandbox side never got ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let host = r.host().await;
    let mut stream = host.open_stream(Some("s1"), "sink", Value::Null).unwrap();
    let sending = async {
        for chunk in down.chunks(100_000) {
            stream.send(chunk).await.unwrap();
        }
        stream.close().unwrap();
        let mut got = Vec::new();
        while let Some(bytes) = stream.recv().await.unwrap() {
            got.extend_from_slice(&bytes);
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(120), sending)
        .await
        .expect("the stream stalled");
    assert_eq!((got.len(), sha(&got)), (up.len(), sha(&up)));
    let status = tokio::time::timeout(Duration::from_secs(30), accepting.wait())
        .await
        .expect("the sandbox's side never ended")
        .unwrap();
    assert!(status.success());
    let written = std::fs::read(&received).unwrap();
    let written = written.strip_prefix(b"ready\n").expect("ready first");
    assert_eq!((written.len(), sha(written)), (down.len(), sha(&down)));
}

/// A sandbox connection that sends and never reads its answers fills its
/// own window, not the relay: another connection still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_reads_stalls_no_other() {
    let r = relayed().await;
    let watcher = r.host().await;
    watcher.subscribe("s1").await.unwrap();
    let stuck = std::os::unix::net::UnixStream::connect(&r.socket).unwrap();
    let flood = std::thread::spawn(move || {
        use std::io::Write;
        let mut stuck = stuck;
        let frame = |kind: u8, channel: u32, payload: &[u8]| {
            let mut f = b"BLIN".to_vec();
            f.extend_from_slice(&[1, kind, 0, 0]);
            f.extend_from_slice(&channel.to_be_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let _ = stuck.write_all(&frame(1, 0, br#"{"versions":[1]}"#));
        // Answers to these (pings: 16 bytes each, 64 MiB of them, far more
        // than the hub queues and the sockets hold) are never
        // read. The write ends when the hub stops reading and the test ends.
        let ping = frame(10, 0, &[]);
        let batch: Vec<u8> = ping.repeat(4096);
        for _ in 0..1024 {
            if stuck.write_all(&batch).is_err() {
                break;
            }
        }
        stuck
    });
    // Let the flood fill what it can.
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.hub.stats().frames_in < 100_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(r.hub.stats().frames_in >= 100_000, "{:?}", r.hub.stats());
    for i in 0..3 {
        let topic = format!("still.flowing.{i}");
        let out = r.output(&["emit", &topic]).await;
        assert!(out.status.success(), "{out:?}");
        let Incoming::Event(event) = next(&watcher).await else {
            panic!("not an event")
        };
        assert_eq!(event.topic, topic);
    }
    assert!(!flood.is_finished(), "the flood was not held back");
    assert!(!r.relay.is_finished());
    drop(r);
}

/// What the relay's output may not do ends the relay with a protocol
/// error naming it; nothing is relayed past it.
#[tokio::test]
async fn a_relay_that_breaks_the_protocol_is_ended() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = dir.path().join("endpoint.sock");
    // A listener that never accepts: relayed bytes stay unwritten.
    let _listener = std::os::unix::net::UnixListener::bind(&endpoint).unwrap();
    let data = |id: u32, n: usize| relay::encode(relay::DATA, id, &vec![7u8; n]);
    let open = |id: u32| relay::encode(relay::OPEN, id, &[]);
    let mut flood = open(1);
    for _ in 0..32 {
        flood.extend(data(1, relay::MAX_DATA));
    }
    let mut oversize = open(1);
    oversize.extend(&data(1, relay::MAX_DATA + 1)[..9]);
    let mut after_close = open(1);
    after_close.extend(relay::encode(relay::CLOSE, 1, &[]));
    after_close.extend(data(1, 10));
    let mut twice = open(1);
    twice.extend(open(1));
    let mut credit = open(1);
    credit.extend(relay::encode(relay::CREDIT, 1, &[0, 0, 0, 1]));
    let cases: [(&str, Vec<u8>); 7] = [
        ("over its window", flood),
        ("a frame of 65537 bytes", oversize),
        ("which is not open", data(5, 10)),
        ("after its close", after_close),
        ("opened twice", twice),
        ("frame kind 9", relay::encode(9, 1, &[])),
        ("over the window", credit),
    ];
    for (says, bytes) in cases {
        let (to_guest, _keep) = tokio::io::duplex(1 << 20);
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            relay::serve(&bytes[..], to_guest, endpoint.clone(), 64),
        )
        .await
        .expect("the relay went on");
        let err = ended.expect_err(says).to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
    // One connection over the limit is refused; its data until its
    // close is dropped, not an error.
    let (to_guest, _keep) = tokio::io::duplex(1 << 20);
    let mut refused = open(1);
    refused.extend(open(2));
    refused.extend(data(2, 10));
    refused.extend(relay::encode(relay::CLOSE, 2, &[]));
    relay::serve(&refused[..], to_guest, endpoint.clone(), 1)
        .await
        .unwrap();
    // A clean end of the output is a clean end.
    let (to_guest, _keep) = tokio::io::duplex(1024);
    let clean = open(1);
    relay::serve(&clean[..], to_guest, endpoint.clone(), 64)
        .await
        .unwrap();
}

/// The relay's socket and what it makes are the sandbox's; it is where
/// the sandbox's programs look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_socket_is_open_to_every_sandbox_user() {
    use std::os::unix::fs::PermissionsExt;
    let r = relayed().await;
    let mode = std::fs::metadata(&r.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);
    assert!(Path::new(&r.socket).parent().unwrap().is_dir());
    let out = r
        .program(&["relay"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
