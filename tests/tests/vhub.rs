//! The V-Hub with real sandboxes (docs/VHUB.md): a process in a session
//! (`/.blink/guest vhub ...` on `/run/blink/vhub.sock`) emits events that a
//! host client on the server's socket and the REST event stream receive;
//! calls go both ways; a session cannot reach another's traffic; each bad
//! frame closes only its own connection; 1 GiB goes through a stream while
//! the hub's memory stays bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blink_e2e::{Blink, Server, server_fixture};
use blink_sdk::vhub::frame::{Frame, Kind};
use blink_sdk::vhub::{Client, Incoming};
use serde_json::{Value, json};

const GUEST: &str = "/.blink/guest";

fn socket(blink: &Blink) -> PathBuf {
    blink.data_dir.path().join("vhub.sock")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

async fn next(client: &Client) -> Incoming {
    tokio::time::timeout(Duration::from_secs(30), client.next())
        .await
        .expect("nothing arrived in 30 s")
        .expect("the hub closed the connection")
}

async fn next_event(client: &Client) -> blink_sdk::vhub::messages::Event {
    loop {
        if let Incoming::Event(e) = next(client).await {
            return e;
        }
    }
}

/// Start a command in the session without waiting; the run's id.
fn start(server: &Server, session: &str, command: &[&str]) -> String {
    let a = server.post(
        &format!("/api/sessions/{session}/runs"),
        json!({ "command": command }),
    );
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.body["id"].as_str().expect("run id").to_owned()
}

/// Call a method the sandbox is about to register, retrying while it is
/// not there yet.
async fn call_when_ready(client: &Client, session: &str, method: &str, params: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.call(Some(session), method, params.clone()).await {
            Ok(v) => return v,
            Err(e) if e.code() == Some("no_such_method") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("calling {method}: {e}"),
        }
    }
}

#[test]
fn events_from_a_sandbox_reach_host_subscribers_and_the_rest_stream() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    let rt = runtime();
    let host = rt
        .block_on(Client::connect(&socket(&blink)))
        .expect("host socket");
    rt.block_on(host.subscribe("a")).unwrap();
    let stream = server.events("a");

    let out = server.sh(
        "a",
        &format!("{GUEST} vhub emit build.done '{{\"ok\":true,\"n\":7}}'"),
    );
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["seq"], 1);
    // The host client and the REST stream are both subscribed.
    assert_eq!(answer["subscribers"], 2, "{answer}");

    let event = rt.block_on(next_event(&host));
    assert_eq!(event.session, "a");
    assert_eq!(event.topic, "build.done");
    assert_eq!(event.data, json!({ "ok": true, "n": 7 }));
    let rest = blink_e2e::rest::next_event(&stream);
    assert_eq!(rest["session"], "a");
    assert_eq!(rest["topic"], "build.done");
    assert_eq!(rest["data"], json!({ "ok": true, "n": 7 }));
    assert_eq!(rest["dropped"], 0);

    // A missing session's stream is a 404 naming it.
    let missing = server.get("/api/sessions/nope/events");
    assert_eq!(missing.status, 404, "{:?}", missing.body);
}

#[test]
fn calls_go_both_ways_between_a_sandbox_and_a_host_client() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    let rt = runtime();
    let tool = rt.block_on(Client::connect(&socket(&blink))).unwrap();
    rt.block_on(tool.register(Some("a"), "host.add")).unwrap();

    // Sandbox -> host: the call blocks in the sandbox until the host answers.
    let run = start(
        &server,
        "a",
        &[GUEST, "vhub", "call", "host.add", r#"{"a":2,"b":40}"#],
    );
    let Incoming::Call(call) = rt.block_on(next(&tool)) else {
        panic!("not a call")
    };
    assert_eq!(call.session.as_deref(), Some("a"));
    let sum = call.params["a"].as_i64().unwrap() + call.params["b"].as_i64().unwrap();
    tool.respond(call.id, Ok(json!({ "sum": sum }))).unwrap();
    let done = server.wait_run(&run);
    assert_eq!(done["exit_code"], 0, "{done}");
    let printed: Value = serde_json::from_str(blink_e2e::rest::stdout(&done).trim()).unwrap();
    assert_eq!(printed, json!({ "sum": 42 }));

    // Host -> sandbox: a program in the sandbox serves a method.
    let run = start(
        &server,
        "a",
        &[
            GUEST, "vhub", "serve", "agent.wc", "--count", "1", "--", "wc", "-c",
        ],
    );
    let counted = rt.block_on(call_when_ready(&tool, "a", "agent.wc", json!("hello")));
    // `"hello"` is 7 bytes of JSON.
    assert_eq!(counted.as_str().unwrap().trim(), "7");
    let done = server.wait_run(&run);
    assert_eq!(done["exit_code"], 0, "{done}");
}

#[test]
fn a_session_cannot_reach_another_sessions_traffic() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    server.open_session("b");
    let rt = runtime();
    let host = rt.block_on(Client::connect(&socket(&blink))).unwrap();
    rt.block_on(host.subscribe("a")).unwrap();
    rt.block_on(host.register(Some("a"), "only.for.a")).unwrap();

    // b's events do not reach a's subscriber; b cannot call a's method.
    server.sh("b", &format!("{GUEST} vhub emit from.b 1"));
    let run = server.run_wait(
        "/api/sessions/b/runs",
        json!({ "command": [GUEST, "vhub", "call", "only.for.a"] }),
    );
    assert_eq!(run["exit_code"], 1, "{run}");
    assert!(
        run["stderr"]["data"]
            .as_str()
            .unwrap_or_default()
            .contains("no_such_method")
            || blink_e2e::rest::stdout(&run).is_empty(),
        "{run}"
    );
    server.sh("a", &format!("{GUEST} vhub emit from.a 2"));
    let first = rt.block_on(next_event(&host));
    assert_eq!(
        (first.session.as_str(), first.topic.as_str()),
        ("a", "from.a")
    );

    // Each sandbox has its own endpoint on a tmpfs of its own (no host
    // path mounted in), open to every user inside.
    let listing = server.sh(
        "b",
        "ls -la /run/blink/vhub.sock; grep ' /run/blink ' /proc/self/mountinfo",
    );
    assert!(listing.starts_with("srw-rw-rw-"), "{listing}");
    assert!(listing.contains(" - tmpfs "), "{listing}");
    assert!(
        !listing.contains(&blink.data_dir.path().display().to_string()),
        "{listing}"
    );
    use std::os::unix::fs::PermissionsExt;
    let host_socket = std::fs::metadata(socket(&blink))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(host_socket, 0o600);
}

#[test]
fn a_sandbox_checkpoints_itself_only_when_its_policy_allows() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink
        .server()
        .config("[vhub]\ncheckpoint_sessions = [\"a\"]\n")
        .start();
    server.open_session("a");
    server.open_session("b");
    let refused = server.run_wait(
        "/api/sessions/b/runs",
        json!({ "command": [GUEST, "vhub", "call", "session.checkpoint", r#"{"snapshot":"s1"}"#] }),
    );
    assert_eq!(refused["exit_code"], 1, "{refused}");
    let run = server.run_wait(
        "/api/sessions/a/runs",
        json!({ "command": [GUEST, "vhub", "call", "session.checkpoint", r#"{"snapshot":"s1"}"#] }),
    );
    if run["exit_code"] != 0 && blink_e2e::rest::stdout(&run).is_empty() {
        // Snapshots need disk images (a server running as root).
        let listed = server.get("/api/sessions/a/checkpoints");
        if listed.status != 200 {
            blink_sdk::testing::skip("snapshots are not supported here (they need root)");
            return;
        }
    }
    assert_eq!(run["exit_code"], 0, "{run}");
    let listed = server.get("/api/sessions/a/checkpoints");
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert!(
        listed.body.to_string().contains("\"s1\""),
        "{:?}",
        listed.body
    );
    let other = server.get("/api/sessions/b/checkpoints");
    assert!(
        !other.body.to_string().contains("\"s1\""),
        "{:?}",
        other.body
    );
}

/// Hello, then `bytes`; what the hub answered before it closed.
fn bad_connection(path: &Path, bytes: &[u8]) -> Vec<Frame> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let hello = Frame::json(Kind::Hello, 0, &json!({ "versions": [1] }));
    let mut sending = hello.to_bytes().unwrap();
    sending.extend_from_slice(bytes);
    // Written while the answers are read, as a client does: the hub may
    // be sending (a stream's data) while it still reads. It may close
    // before all of it is written.
    let mut writer = s.try_clone().unwrap();
    let written = std::thread::spawn(move || {
        let _ = writer.write_all(&sending);
    });
    // The hub closes: the reads end (a timeout here fails the test). A
    // close with our bytes unread in the hub's socket ends in ECONNRESET
    // after all it sent: that is an end too.
    let mut rest = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the hub kept the connection open: {e}"),
        }
    }
    written.join().unwrap();
    // Frames as docs/VHUB.md lays them out: a 16-byte header, then the payload.
    let mut frames = Vec::new();
    let mut at = 0;
    while rest.len() >= at + 16 {
        let len = u32::from_be_bytes(rest[at + 12..at + 16].try_into().unwrap()) as usize;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| *k as u8 == rest[at + 5])
            .expect("a known kind");
        let channel = u32::from_be_bytes(rest[at + 8..at + 12].try_into().unwrap());
        frames.push(Frame::new(
            kind,
            channel,
            rest[at + 16..at + 16 + len].to_vec(),
        ));
        at += 16 + len;
    }
    frames
}

#[test]
fn each_bad_frame_closes_only_its_own_connection() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    let path = socket(&blink);
    let rt = runtime();
    let watcher = rt.block_on(Client::connect(&path)).unwrap();
    rt.block_on(watcher.subscribe("a")).unwrap();
    // A sandbox process accepts streams for "sink" (and never reads one).
    let accepting = start(
        &server,
        "a",
        &[
            "sh",
            "-c",
            &format!("exec {GUEST} vhub accept sink < /dev/zero > /dev/null"),
        ],
    );

    let ping = Frame::new(Kind::Ping, 0, &b""[..]).to_bytes().unwrap();
    let mut magic = ping.clone();
    magic[..4].copy_from_slice(b"HTTP");
    let mut oversize = ping.clone();
    oversize[12..16].copy_from_slice(&(64u32 << 20).to_be_bytes());
    let mut kind = ping.clone();
    kind[5] = 200;
    let json_frame = Frame::new(Kind::Request, 1, &b"{\"method\":"[..])
        .to_bytes()
        .unwrap();
    let mut over_credit = Frame::json(
        Kind::StreamOpen,
        1,
        &json!({ "method": "sink", "session": "a" }),
    )
    .to_bytes()
    .unwrap();
    for _ in 0..3 {
        over_credit.extend(
            Frame::new(Kind::StreamData, 1, vec![1u8; 512 * 1024])
                .to_bytes()
                .unwrap(),
        );
    }
    // Wait until the sandbox's provider is registered: a call to it is
    // then forwarded (and waits) instead of failing at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(300),
                watcher.call(Some("a"), "sink", Value::Null),
            )
            .await
        });
        match probe {
            Err(_) => break,
            Ok(Err(e)) if e.code() == Some("no_such_method") => {}
            Ok(other) => panic!("unexpected answer {other:?}"),
        }
        assert!(Instant::now() < deadline, "the sandbox never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (code, bytes) in [
        ("bad_magic", magic),
        ("too_large", oversize),
        ("unknown_kind", kind),
        ("bad_json", json_frame),
        ("flow_control", over_credit),
    ] {
        let frames = bad_connection(&path, &bytes);
        assert_eq!(frames.first().map(|f| f.kind), Some(Kind::Welcome));
        let last = frames.last().unwrap();
        assert_eq!(last.kind, Kind::Error, "{code}");
        let body: Value = serde_json::from_slice(&last.payload).unwrap();
        assert_eq!(body["code"], code, "{body}");
        // The hub and the other connections carry on.
        server.sh("a", &format!("{GUEST} vhub emit after.{code} 1"));
        let event = rt.block_on(next_event(&watcher));
        assert_eq!(event.topic, format!("after.{code}"));
    }
    server.sh("a", &format!("{GUEST} vhub emit still.here 1"));
    assert_eq!(rt.block_on(next_event(&watcher)).topic, "still.here");
    // The provider's stream was cut by the flood's close: it says so.
    let done = server.wait_run(&accepting);
    assert_eq!(done["exit_code"], 1, "{done}");
    assert!(
        done["stderr"]["data"]
            .as_str()
            .unwrap_or_default()
            .contains("peer_gone"),
        "{done}"
    );
}

#[test]
fn a_gib_through_a_stream_keeps_the_hub_bounded() {
    let Some((blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("a");
    let rt = runtime();
    let host = rt.block_on(Client::connect(&socket(&blink))).unwrap();
    rt.block_on(host.register(Some("a"), "sink")).unwrap();
    let rss_before = server.rss_kib();
    const GIB: u64 = 1 << 30;
    let run = start(
        &server,
        "a",
        &[
            "sh",
            "-c",
            &format!("head -c {GIB} /dev/zero | {GUEST} vhub stream sink"),
        ],
    );
    let peak_rss = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let pid = server.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, on) = (peak_rss.clone(), sampling.clone());
        std::thread::spawn(move || {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let got = rt.block_on(async {
        let Incoming::Stream(mut stream, open) = next(&host).await else {
            panic!("not a stream")
        };
        assert_eq!(open.session.as_deref(), Some("a"));
        // A reader that stalls first: without flow control the hub would
        // buffer what the sandbox sends meanwhile.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = 0u64;
        while let Some(bytes) = stream.recv().await.unwrap() {
            got += bytes.len() as u64;
        }
        stream.close().unwrap();
        got
    });
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(got, GIB);
    let done = server.wait_run(&run);
    assert_eq!(done["exit_code"], 0, "{done}");
    let stats = rt
        .block_on(host.call(None, "hub.stats", Value::Null))
        .unwrap();
    assert!(stats["stream_bytes"].as_u64().unwrap() >= GIB, "{stats}");
    let peak_queued = stats["peak_queued_bytes"].as_u64().unwrap();
    assert!(peak_queued <= (1 << 20) + (64 << 10), "{stats}");
    let grown = peak_rss.load(std::sync::atomic::Ordering::Relaxed) - rss_before;
    eprintln!(
        "1 GiB through a stream: hub peak queue {peak_queued} bytes, server RSS +{grown} KiB"
    );
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB");
}

#[test]
fn blink_cli_serve_runs_the_hub_on_its_own() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let out = blink.run(&["session", "open", "--name", "a"]);
    assert!(out.status.success(), "{out:?}");
    let path = blink.data_dir.path().join("standalone.sock");
    let mut child = blink
        .cli(&["serve", "--socket", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), format!("vhub listening on {}", path.display()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let rt = runtime();
    rt.block_on(async {
        let host = Client::connect(&path).await.unwrap();
        host.subscribe("a").await.unwrap();
        let err = host.subscribe("missing").await.unwrap_err();
        assert_eq!(err.code(), Some("session_not_found"));
        let err = host.call(Some("a"), "nobody", json!(1)).await.unwrap_err();
        assert_eq!(err.code(), Some("no_such_method"));
    });
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "the socket stayed");
}
