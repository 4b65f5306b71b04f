//! TCP forwarding with the real OpenSSH client (and curl through `ssh -D`):
//! `-L` and `-D` reach the session's own loopback and never the host's,
//! `-R` makes a client-side server reachable inside the session, keys'
//! options refuse or narrow forwarding, a forwarded connection starts a
//! stopped session and holds it active, and bytes cross byte-exact under
//! flow control. Every connection is to 127.0.0.1 (or into the sandbox).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blink_e2e::ssh::{SshFixture, spawn_ready};
use blink_e2e::{Running, run, texts};
use serde_json::json;
use sha2::{Digest, Sha256};

const PAGE: &str = "hello from the sandbox\n";
const MIB: usize = 1 << 20;

/// A fixture whose server logs at info (forward lines).
fn fixture() -> Option<SshFixture> {
    SshFixture::with(|server| server.log_filter("info"))
}

/// A loopback port free now (for `ssh -L`/`-D` to bind).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Shell that waits (10 s at most) until something in the sandbox listens
/// on `port`, then prints `ready`.
fn ready_when_listening(port: u16) -> String {
    format!(
        "for i in $(seq 200); do cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \
         | grep -Eq ':{port:04X} [0-9A-F]+:0000 0A' && break; sleep 0.05; done; echo ready"
    )
}

/// busybox httpd serving [`PAGE`] on the sandbox's port 8080, for as long
/// as the returned ssh runs.
fn start_httpd(f: &SshFixture) -> Running {
    let command = format!(
        "mkdir -p /root/www && printf '{}' > /root/www/index.html && \
         {{ httpd -f -p 8080 -h /root/www & }}; {}; wait",
        PAGE.replace('\n', "\\n"),
        ready_when_listening(8080)
    );
    spawn_ready(f.ssh_command().arg(command))
}

/// An ssh holding forwards open (`forwards`: `-L ...`, `-D ...`, `-R ...`),
/// ready once its forwards are set up; its command echoes stdin back, so
/// the test can tell the connection is alive.
fn forwarding(f: &SshFixture, forwards: &[&str]) -> Running {
    spawn_ready(
        f.ssh_command()
            .args(["-o", "ExitOnForwardFailure=yes"])
            .args(forwards)
            .arg("echo ready; exec cat"),
    )
}

/// The connection is still alive: a line sent through its channel comes
/// back.
fn assert_alive(ssh: &mut Running, line: &str) {
    ssh.send(format!("{line}\n").as_bytes());
    assert!(ssh.wait_stdout(line), "the SSH connection died");
}

/// `GET /` on a loopback port: the whole answer, or what went wrong.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn session_state(f: &SshFixture) -> (String, u64) {
    let a = f.server.get("/api/sessions/s1");
    assert_eq!(a.status, 200, "{:?}", a.body);
    (
        a.body["state"].as_str().unwrap_or("").to_owned(),
        a.body["active_executions"].as_u64().unwrap_or(0),
    )
}

/// Wait up to 20 s for `check` on the session's (state, active count).
fn wait_session(f: &SshFixture, check: impl Fn(&str, u64) -> bool) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (state, active) = session_state(f);
        if check(&state, active) || Instant::now() > deadline {
            return (state, active);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_session(f: &SshFixture) {
    let a = f.server.post("/api/sessions/s1/stop", json!({}));
    assert_eq!((a.status, &a.body["state"]), (200, &json!("stopped")));
}

/// `ssh -v -W host:port` (stdio forwarding: one direct-tcpip channel)
/// with `input` on stdin. `-v` shows why the channel failed (`open
/// failed: administratively prohibited` or `connect failed`) and the
/// server's reason (`Remote: blink: ...`).
fn stdio_forward(f: &SshFixture, target: &str, input: &[u8]) -> std::process::Output {
    run(f.ssh_command().args(["-v", "-W", target]), input)
}

/// A one-answer HTTP server on the client side (for `ssh -R`): answers up
/// to `count` requests with `body`, for 60 s at most.
fn client_side_server(body: &'static str, count: usize) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < count && Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
            served += 1;
        }
        served
    });
    (port, thread)
}

#[test]
fn local_forward_reaches_the_sessions_own_loopback() {
    let Some(f) = fixture() else { return };
    let _httpd = start_httpd(&f);
    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let mut ssh = forwarding(
        &f,
        &[
            "-L",
            &format!("{port_a}:localhost:8080"),
            "-L",
            &format!("{port_b}:127.0.0.1:8080"),
            "-L",
            &format!("{port_c}:[::1]:8080"),
        ],
    );
    for port in [port_a, port_b, port_c] {
        let page = http_get(port).expect("GET through -L");
        assert!(page.starts_with("HTTP/1."), "{page}");
        assert!(page.ends_with(PAGE), "{page}");
    }
    let line = f
        .server
        .wait_log(&["ssh forward closed", "direction=\"local\"", "port=8080"])
        .expect("a log line per forwarded connection");
    for field in ["session=s1", "bytes_in=", "bytes_out=", "duration_ms="] {
        assert!(line.contains(field), "{line}");
    }

    // An open forwarded connection holds the session active (the two
    // channels, httpd's and the forwarding ssh's, hold it already).
    let (_, before) = wait_session(&f, |_, active| active == 2);
    assert_eq!(before, 2);
    let held = TcpStream::connect(("127.0.0.1", port_a)).expect("connect");
    let (_, during) = wait_session(&f, |_, active| active > before);
    assert_eq!(during, before + 1);
    drop(held);
    let (_, after) = wait_session(&f, |_, active| active == before);
    assert_eq!(after, before);
    assert_alive(&mut ssh, "still-here");
}

#[test]
fn local_forward_never_reaches_the_hosts_loopback() {
    let Some(f) = fixture() else { return };
    // The REST API listens on the host's 127.0.0.1: -L to that port goes
    // to the sandbox's loopback, where nothing listens.
    let rest = f.server.http_port;
    assert_eq!(f.server.get("/api/sessions/s1").status, 200);
    let local = free_port();
    let mut ssh = forwarding(&f, &["-L", &format!("{local}:127.0.0.1:{rest}")]);
    let answer = http_get(local);
    assert!(
        answer.as_deref().map_or(true, |a| !a.contains("HTTP/")),
        "the host's REST API answered through -L: {answer:?}"
    );
    let line = f
        .server
        .wait_log(&["ssh forward failed", &format!("port={rest}")])
        .expect("the failed connect is logged");
    assert!(line.contains("allowed=true"), "{line}");
    assert_alive(&mut ssh, "alive-after-refusal");

    // ssh -W to the same port: OpenSSH reports the failed connect.
    let out = stdio_forward(&f, &format!("127.0.0.1:{rest}"), b"GET / HTTP/1.0\r\n\r\n");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(255), "{stdout} {stderr}");
    assert!(stderr.contains("connect failed"), "{stderr}");
    assert!(!stdout.contains("HTTP/"), "{stdout}");

    // Other hosts are outside the session: refused by its network policy
    // ("none": loopback only), before any lookup; the connection lives on.
    for target in ["10.0.0.1:80", "example.invalid:80", "127.0.0.2:22"] {
        let out = stdio_forward(&f, target, b"");
        assert_eq!(out.status.code(), Some(255), "{target}");
        assert!(
            texts(&out).1.contains("administratively prohibited"),
            "{target}: {}",
            texts(&out).1
        );
    }
    let refused = f
        .server
        .wait_log(&[
            "ssh forward refused",
            "outside the session",
            "network policy is",
        ])
        .expect("refusals are logged with their reason");
    assert!(refused.contains("allowed=false"), "{refused}");
    assert_alive(&mut ssh, "alive-at-the-end");
}

#[test]
fn dynamic_forward_reaches_the_sessions_httpd() {
    let Some(f) = fixture() else { return };
    let curl_here = Command::new("curl").arg("--version").output().is_ok();
    if !blink_sdk::testing::require(curl_here, "curl is not installed (scripts/install-deps.sh)") {
        return;
    }
    let _httpd = start_httpd(&f);
    let socks = free_port();
    let mut ssh = forwarding(&f, &["-D", &format!("127.0.0.1:{socks}")]);
    let curl = |url: &str| {
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "--socks5-hostname"])
            .arg(format!("127.0.0.1:{socks}"))
            .arg(url)
            .output()
            .expect("curl")
    };
    for url in ["http://localhost:8080/", "http://127.0.0.1:8080/"] {
        let out = curl(url);
        assert!(out.status.success(), "{url}: {}", texts(&out).1);
        assert_eq!(texts(&out).0, PAGE, "{url}");
    }
    // A host outside the session: refused by the server (the name is
    // never resolved), curl sees the proxy fail.
    let out = curl("http://blink-forwarding-test.invalid/");
    assert!(!out.status.success(), "{:?}", texts(&out));
    f.server
        .wait_log(&[
            "ssh forward refused",
            "blink-forwarding-test.invalid",
            "outside the session",
        ])
        .expect("the refusal is logged");
    assert_alive(&mut ssh, "socks-still-alive");
}

#[test]
fn remote_forward_reaches_a_client_side_server_from_inside() {
    let Some(f) = fixture() else { return };
    let (port, server) = client_side_server("hello from the client\n", 2);
    let out = run(
        f.ssh_command()
            .args(["-o", "ExitOnForwardFailure=yes", "-R"])
            .arg(format!("9090:127.0.0.1:{port}"))
            .arg("wget -qO- http://127.0.0.1:9090/ && wget -qO- http://localhost:9090/"),
        b"",
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "hello from the client\n".repeat(2));
    assert_eq!(server.join().expect("server thread"), 2);
    let line = f
        .server
        .wait_log(&["ssh forward closed", "direction=\"remote\"", "port=9090"])
        .expect("forwarded connections are logged");
    assert!(line.contains("origin=127.0.0.1:"), "{line}");
    f.server
        .wait_log(&["ssh remote forward closed", "connections=2"])
        .expect("the listener's own line");

    // The listener closed with its connection.
    let out = f.ssh(&["wget -qO- http://127.0.0.1:9090/ || echo gone"], b"");
    assert_eq!(texts(&out).0.trim(), "gone", "{:?}", texts(&out));

    // Port 0: the server allocates one and tells the client, which names
    // the forward by it (a wrong port and the client would refuse the
    // channel); the program inside finds it among the listeners.
    let (port, server) = client_side_server("allocated\n", 1);
    let out = run(
        f.ssh_command()
            .args(["-o", "ExitOnForwardFailure=yes", "-R"])
            .arg(format!("0:127.0.0.1:{port}"))
            .arg(
                "for a in $(netstat -ltn | grep -o '127.0.0.1:[0-9]*'); do \
                 wget -qO- http://$a/; done",
            ),
        b"",
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(stdout, "allocated\n", "{stderr}");
    assert_eq!(server.join().expect("server thread"), 1);
}

#[test]
fn remote_forward_cancelled_and_bounded() {
    let Some(f) = fixture() else { return };
    let control = f.client.path("ctl");
    let share = format!("ControlPath={}", control.display());
    let mut master = f.ssh_command();
    master.args(["-o", &share, "-o", "ControlMaster=yes", "-N"]);
    let master = Running::spawn(&mut master);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(control.exists(), "the shared connection came up");
    let mux = |args: &[&str]| {
        run(
            Command::new("ssh")
                .args(["-o", &share, "-o", "ExitOnForwardFailure=yes"])
                .args(args)
                .arg("x"),
            b"",
        )
    };
    let (port, server) = client_side_server("through the mux\n", 1);
    let forward = format!("9191:127.0.0.1:{port}");
    let out = mux(&["-O", "forward", "-R", &forward]);
    assert!(out.status.success(), "{:?}", texts(&out));
    let out = f.ssh(&["wget -qO- http://127.0.0.1:9191/"], b"");
    assert_eq!(texts(&out).0, "through the mux\n", "{:?}", texts(&out));
    assert_eq!(server.join().expect("server thread"), 1);

    let out = mux(&["-O", "cancel", "-R", &forward]);
    assert!(out.status.success(), "{:?}", texts(&out));
    f.server
        .wait_log(&["ssh remote forward closed", "ended=\"cancelled\""])
        .expect("the cancel is logged");
    let out = f.ssh(&["wget -qO- http://127.0.0.1:9191/ || echo gone"], b"");
    assert_eq!(texts(&out).0.trim(), "gone");

    // At most max_remote_forwards listeners per connection (default 8).
    let mut refused = 0;
    for p in 0..9 {
        let out = mux(&["-O", "forward", "-R", &format!("{}:127.0.0.1:9", 9200 + p)]);
        if !out.status.success() {
            refused += 1;
        }
    }
    assert_eq!(refused, 1, "the ninth listener is refused");
    f.server
        .wait_log(&["ssh forward refused", "too many remote forwards"])
        .expect("logged");
    drop(master);
}

#[test]
fn key_options_refuse_or_narrow_forwarding() {
    let Some(f) = fixture() else { return };
    let authorize = |options: &str| {
        let line = format!("{options} {}", f.client.public_key("id"));
        let mut cmd = f
            .blink
            .cli(&["session", "keys", "add", "--name", "s1", "-"]);
        let out = run(&mut cmd, line.as_bytes());
        assert!(out.status.success(), "{options}: {}", texts(&out).1);
    };
    let remote = |spec: &str| {
        run(
            f.ssh_command()
                .args(["-o", "ExitOnForwardFailure=yes", "-R", spec])
                .arg("echo up"),
            b"",
        )
    };
    let prohibited = |out: &std::process::Output| {
        out.status.code() == Some(255) && texts(out).1.contains("administratively prohibited")
    };

    for options in ["no-port-forwarding", "restrict"] {
        authorize(options);
        let out = stdio_forward(&f, "localhost:8080", b"");
        assert!(prohibited(&out), "{options}: {:?}", texts(&out));
        // The server says why, as sshd does (a debug message: ssh -v).
        assert!(
            texts(&out)
                .1
                .contains("Remote: blink: the login key does not allow port forwarding"),
            "{}",
            texts(&out).1
        );
        let out = remote("9090:127.0.0.1:9");
        assert_eq!(out.status.code(), Some(255), "{options}");
        assert!(
            texts(&out).1.contains("remote port forwarding failed"),
            "{options}: {}",
            texts(&out).1
        );
        // Everything else still works.
        assert_eq!(f.sh("echo still"), "still\n");
    }
    let line = f
        .server
        .wait_log(&["ssh forward refused", "no-port-forwarding"])
        .expect("logged with its reason");
    assert!(line.contains("allowed=false"), "{line}");

    // restrict,port-forwarding gives it back.
    authorize("restrict,port-forwarding");
    let out = stdio_forward(&f, "localhost:8080", b"");
    assert!(
        texts(&out).1.contains("connect failed"),
        "{:?}",
        texts(&out)
    );

    // permitopen= and permitlisten=, as OpenSSH matches them.
    authorize(r#"permitopen="localhost:8080",permitlisten="9191""#);
    let out = stdio_forward(&f, "localhost:8080", b"");
    assert!(
        texts(&out).1.contains("connect failed"),
        "{:?}",
        texts(&out)
    );
    for target in ["127.0.0.1:8080", "localhost:8081"] {
        assert!(prohibited(&stdio_forward(&f, target, b"")), "{target}");
    }
    assert_eq!(remote("9090:127.0.0.1:9").status.code(), Some(255));
    let out = remote("9191:127.0.0.1:9");
    assert_eq!(texts(&out).0, "up\n", "{:?}", texts(&out));
    f.server
        .wait_log(&["ssh forward refused", "permitlisten"])
        .expect("logged");
}

#[test]
fn a_forwarded_connection_starts_a_stopped_session() {
    let Some(f) = fixture() else { return };
    assert_eq!(f.sh("echo up"), "up\n");
    stop_session(&f);
    assert_eq!(session_state(&f).0, "stopped");
    // Nothing listens in the fresh sandbox: the connect fails, but the
    // session was started for it.
    let out = stdio_forward(&f, "localhost:8080", b"");
    assert!(
        texts(&out).1.contains("connect failed"),
        "{:?}",
        texts(&out)
    );
    assert_eq!(session_state(&f).0, "running");

    // A listener starts it too, and holds it active: stopping is refused
    // while the forward is up.
    stop_session(&f);
    let (port, server) = client_side_server("after start\n", 1);
    let mut listening = f.ssh_command();
    listening
        .args(["-o", "ExitOnForwardFailure=yes", "-N", "-R"])
        .arg(format!("9090:127.0.0.1:{port}"));
    let listening = Running::spawn(&mut listening);
    f.server
        .wait_log(&["ssh remote forward listening", "port=9090"])
        .expect("the listener came up");
    let (state, active) = session_state(&f);
    assert_eq!((state.as_str(), active), ("running", 1));
    let a = f.server.post("/api/sessions/s1/stop", json!({}));
    assert_eq!((a.status, a.code()), (409, "session_busy"));
    assert_eq!(f.sh("wget -qO- http://127.0.0.1:9090/"), "after start\n");
    assert_eq!(server.join().expect("server thread"), 1);
    drop(listening);
    let (_, active) = wait_session(&f, |_, active| active == 0);
    assert_eq!(active, 0, "the listener let the session go");
    stop_session(&f);
}

/// Pseudo-random bytes, the same for the same seed.
fn fill(state: &mut u64, chunk: &mut [u8]) {
    for word in chunk.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
}

/// Send `len` bytes to a loopback port, counting what the socket has
/// taken in `sent`; their SHA-256.
fn send_bytes(port: u16, len: usize, sent: &AtomicUsize) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut hasher = Sha256::new();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; MIB];
    let mut left = len;
    while left > 0 {
        fill(&mut state, &mut chunk);
        let n = left.min(chunk.len());
        hasher.update(&chunk[..n]);
        stream.write_all(&chunk[..n]).expect("write through -L");
        sent.fetch_add(n, Ordering::SeqCst);
        left -= n;
    }
    stream.shutdown(Shutdown::Write).expect("shutdown");
    // Until the other side closes.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.read_to_end(&mut Vec::new());
    hex::encode(hasher.finalize())
}

#[test]
fn sixty_four_mebibytes_cross_local_forwarding_byte_exact_both_ways() {
    let Some(f) = fixture() else { return };
    let local = free_port();
    let _ssh = forwarding(
        &f,
        &[
            "-L",
            &format!("{local}:localhost:9000"),
            "-L",
            &format!("{}:localhost:9001", local + 1),
        ],
    );
    let len = 64 * MIB;

    // Client to sandbox: nc hashes what it gets.
    let sink = spawn_ready(f.ssh_command().arg(format!(
        "{{ nc -l -p 9000 </dev/null | sha256sum; }} & {}; wait",
        ready_when_listening(9000)
    )));
    let sent = AtomicUsize::new(0);
    let digest = send_bytes(local, len, &sent);
    let (status, stdout, stderr) = sink.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next()),
        Some(digest.as_str()),
        "{stdout}"
    );

    // Sandbox to client: nc sends a file the sandbox hashed.
    let source = spawn_ready(f.ssh_command().arg(format!(
        "head -c {len} /dev/urandom > /tmp/blob; {{ nc -l -p 9001 < /tmp/blob; }} & {}; \
         sha256sum /tmp/blob; wait",
        ready_when_listening(9001)
    )));
    let mut stream = TcpStream::connect(("127.0.0.1", local + 1)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB];
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf).expect("read through -L");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n;
    }
    drop(stream);
    let (status, stdout, stderr) = source.finish(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert_eq!(got, len);
    let expected = stdout
        .lines()
        .find(|l| l.contains("/tmp/blob"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("");
    assert_eq!(hex::encode(hasher.finalize()), expected, "{stdout}");
}

#[test]
fn a_slow_reader_holds_the_sender_back() {
    let Some(f) = fixture() else { return };
    let local = free_port();
    let _ssh = forwarding(&f, &["-L", &format!("{local}:localhost:9000")]);
    // The sandbox's end reads nothing for 6 s, then hashes everything.
    let sink = spawn_ready(f.ssh_command().arg(format!(
        "{{ nc -l -p 9000 </dev/null | {{ sleep 6; sha256sum; }}; }} & {}; wait",
        ready_when_listening(9000)
    )));
    let rss_before = f.server.rss_kib();
    let len = 128 * MIB;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let sender = std::thread::spawn(move || send_bytes(local, len, &counter));
    std::thread::sleep(Duration::from_secs(4));
    let taken = sent.load(Ordering::SeqCst);
    let rss_growth = f.server.rss_kib().saturating_sub(rss_before);
    eprintln!("taken while nothing read: {taken} bytes; gateway RSS grew {rss_growth} KiB");
    // Held back: what the sockets' buffers and one window hold, not the
    // whole stream; and the gateway buffered no more than a window or so.
    assert!(taken < len / 2, "{taken} bytes taken while nothing read");
    assert!(
        rss_growth < 32 * 1024,
        "the gateway grew by {rss_growth} KiB"
    );
    let digest = sender.join().expect("sender");
    let (status, stdout, stderr) = sink.finish(Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next()),
        Some(digest.as_str()),
        "{stdout}"
    );
}

#[test]
fn forwarding_can_be_turned_off() {
    let Some(f) = SshFixture::with(|server| {
        server
            .config("[ssh]\nallow_forwarding = false\n")
            .log_filter("info")
    }) else {
        return;
    };
    let out = stdio_forward(&f, "localhost:8080", b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(texts(&out).1.contains("administratively prohibited"));
    let out = run(
        f.ssh_command()
            .args(["-o", "ExitOnForwardFailure=yes", "-R", "9090:127.0.0.1:9"])
            .arg("true"),
        b"",
    );
    assert_eq!(out.status.code(), Some(255));
    f.server
        .wait_log(&["ssh forward refused", "turned off"])
        .expect("logged");
    assert_eq!(f.sh("echo fine"), "fine\n");
}

/// A tiny HTTP server on the test's 127.0.0.1 answering `body` to each of
/// up to `count` requests (60 s at most): an upstream outside the session.
fn upstream(body: &'static str, count: usize) -> u16 {
    client_side_server(body, count).0
}

/// A fixture whose server maps `allowed.test` and `other.test` to the
/// test's 127.0.0.1 (no DNS is ever asked), with session `s1` allowed to
/// reach `allowed.test:PORT` only.
fn fixture_with_egress(port: u16) -> Option<SshFixture> {
    let f = SshFixture::with(|server| {
        server
            .config(
                "[network.resolve]\n\"allowed.test\" = \"127.0.0.1\"\n\"other.test\" = \"127.0.0.1\"\n",
            )
            .log_filter("info")
    })?;
    let a = f.server.put(
        "/api/sessions/s1/network",
        json!({"mode": "proxy", "allow": [format!("allowed.test:{port}")]}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    Some(f)
}

#[test]
fn forwarding_to_other_hosts_follows_the_sessions_egress_policy() {
    let port = upstream("upstream-ok", 8);
    let Some(f) = fixture_with_egress(port) else {
        return;
    };
    let get = b"GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n";
    // ssh -W to an allowed name: out through the policy, from the host.
    let out = stdio_forward(&f, &format!("allowed.test:{port}"), get);
    let (stdout, stderr) = texts(&out);
    assert!(stdout.ends_with("upstream-ok"), "{stdout} {stderr}");
    let line = f
        .server
        .wait_log(&["egress connection", "via=ssh-forward", "allowed.test"])
        .unwrap_or_else(|| panic!("the egress connection is logged: {}", f.server.log()));
    assert!(line.contains("allowed=true"), "{line}");

    // Names and addresses the policy does not allow: refused before any
    // lookup or packet, the way the proxy refuses them.
    for target in [
        format!("other.test:{port}"),
        format!("allowed.test:{}", port + 1),
        "169.254.169.254:80".to_owned(),
        format!("127.0.0.2:{port}"),
    ] {
        let out = stdio_forward(&f, &target, get);
        assert_eq!(out.status.code(), Some(255), "{target}");
        assert!(
            texts(&out).1.contains("administratively prohibited"),
            "{target}: {}",
            texts(&out).1
        );
        assert!(!texts(&out).0.contains("upstream-ok"), "{target}");
    }
    f.server
        .wait_log(&["ssh forward refused", "other.test", "not on the allow list"])
        .expect("the refusal names the reason");

    // ssh -D with the name resolved by the server, inside the policy.
    let curl_here = Command::new("curl").arg("--version").output().is_ok();
    if blink_sdk::testing::require(curl_here, "curl is not installed (scripts/install-deps.sh)") {
        let socks = free_port();
        let mut ssh = forwarding(&f, &["-D", &format!("127.0.0.1:{socks}")]);
        let curl = |url: &str| {
            Command::new("curl")
                .args(["-sS", "--max-time", "30", "--socks5-hostname"])
                .arg(format!("127.0.0.1:{socks}"))
                .arg(url)
                .output()
                .expect("curl")
        };
        let out = curl(&format!("http://allowed.test:{port}/"));
        assert_eq!(texts(&out).0, "upstream-ok", "{}", texts(&out).1);
        let out = curl(&format!("http://other.test:{port}/"));
        assert!(!out.status.success(), "{:?}", texts(&out));
        assert_alive(&mut ssh, "socks-alive");
    }

    // Counted with the session's egress.
    let a = f.server.get("/api/sessions/s1/network");
    let egress = &a.body["egress"];
    assert!(
        egress["allowed_connections"].as_u64() >= Some(1),
        "{egress}"
    );
    assert!(egress["denied_connections"].as_u64() >= Some(4), "{egress}");
    assert!(egress["bytes_received"].as_u64() > Some(0), "{egress}");

    // A policy change applies to the next forward.
    let a = f
        .server
        .put("/api/sessions/s1/network", json!({"mode": "none"}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    let out = stdio_forward(&f, &format!("allowed.test:{port}"), get);
    assert!(
        texts(&out).1.contains("administratively prohibited"),
        "{}",
        texts(&out).1
    );
}

#[test]
fn a_sessions_forwarding_switches_apply_to_the_next_forward() {
    let Some(blink) = blink_e2e::Blink::with_runtime() else {
        return;
    };
    let client = blink_e2e::ssh::Client::new();
    let box_id = blink_e2e::ssh::setup(&blink, &client);
    // Turned off with the CLI before the server starts: kept in the record.
    let out = blink.ok(&[
        "session",
        "network",
        "--name",
        "s1",
        "--local-forwarding",
        "off",
    ]);
    assert!(out.contains("forwarding: local off, remote on"), "{out}");
    let server = blink.server().log_filter("info").start();
    let f = SshFixture {
        blink,
        client,
        server,
        box_id,
    };
    let a = f.server.get("/api/sessions/s1/forwarding");
    assert_eq!(a.body, json!({"local": false, "remote": true}));

    let _httpd = start_httpd(&f);
    let out = stdio_forward(&f, "localhost:8080", b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        texts(&out).1.contains("administratively prohibited"),
        "{}",
        texts(&out).1
    );
    f.server
        .wait_log(&["ssh forward refused", "forwarding.local is off"])
        .expect("the refusal is logged");

    // On again over REST: the next forward reaches the httpd.
    let a = f
        .server
        .put("/api/sessions/s1/forwarding", json!({"local": true}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    let out = stdio_forward(&f, "localhost:8080", b"GET / HTTP/1.0\r\n\r\n");
    assert!(texts(&out).0.ends_with(PAGE), "{}", texts(&out).1);

    // Remote off: ssh -R is refused, exec still works.
    let a = f.server.put(
        "/api/sessions/s1/forwarding",
        json!({"local": true, "remote": false}),
    );
    assert_eq!(a.body, json!({"local": true, "remote": false}));
    let out = run(
        f.ssh_command()
            .args(["-o", "ExitOnForwardFailure=yes", "-R", "9090:127.0.0.1:9"])
            .arg("true"),
        b"",
    );
    assert_eq!(out.status.code(), Some(255), "{:?}", texts(&out));
    f.server
        .wait_log(&["ssh forward refused", "forwarding.remote is off"])
        .expect("logged");
    assert_eq!(f.sh("echo fine"), "fine\n");

    // A bad body names the field; an unknown session is 404.
    let a = f
        .server
        .put("/api/sessions/s1/forwarding", json!({"lcoal": false}));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(a.body.to_string().contains("lcoal"), "{}", a.body);
    let a = f.server.put("/api/sessions/nope/forwarding", json!({}));
    assert_eq!(a.status, 404, "{:?}", a.body);
    // New sessions take the request's switches.
    let a = f.server.post(
        "/api/sessions",
        json!({"name": "s2", "forwarding": {"remote": false}}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(
        a.body["session"]["network"]["forwarding"],
        json!({"local": true, "remote": false})
    );
}
