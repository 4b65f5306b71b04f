//! Egress: default deny, per-session allow-lists through the session's
//! proxy, changes on a running session, and no way around the proxy. Only
//! loopback traffic: upstreams are servers this test starts on 127.0.0.1,
//! mapped to test names by the server's `[network.resolve]` table; denials
//! are decided by policy before any packet leaves.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use blink_e2e::{Blink, Server};
use serde_json::{Value, json};

/// A tiny HTTP server on 127.0.0.1 answering `body` to every request, for
/// as long as it lives (bounded: at most 200 connections).
struct Upstream {
    port: u16,
}

fn upstream(body: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200).flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Upstream { port }
}

fn server_with_names(blink: &Blink) -> Server {
    blink
        .server()
        .config(
            "[network.resolve]\n\"allowed.test\" = \"127.0.0.1\"\n\"other.test\" = \"127.0.0.1\"\n",
        )
        .log_filter("warn,blink::egress=info")
        .start()
}

/// Run a shell command in a session; (exit code, stdout + stderr).
fn sh(server: &Server, session: &str, script: &str) -> (i64, String) {
    let run = server.run_wait(
        &format!("/api/sessions/{session}/runs"),
        json!({"command": ["sh", "-c", script]}),
    );
    let out = format!(
        "{}{}",
        run["stdout"]["data"].as_str().unwrap_or(""),
        run["stderr"]["data"].as_str().unwrap_or("")
    );
    (run["exit_code"].as_i64().unwrap_or(-1), out)
}

fn open(server: &Server, name: &str, network: Value) {
    let a = server.post("/api/sessions", json!({"name": name, "network": network}));
    assert_eq!(a.status, 201, "{:?}", a.body);
}

#[test]
fn allowed_names_pass_and_everything_else_is_refused() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let up = upstream("upstream-ok");
    let server = server_with_names(&blink);
    let port = up.port;
    open(
        &server,
        "n",
        json!({"mode": "proxy", "allow": [format!("allowed.test:{port}")]}),
    );

    let (code, out) = sh(
        &server,
        "n",
        &format!("wget -qO- http://allowed.test:{port}/"),
    );
    assert_eq!((code, out.as_str()), (0, "upstream-ok"));

    // Refused by policy, with the reason, and before any lookup or packet.
    for (url, says) in [
        (
            format!("http://other.test:{port}/"),
            "not on the allow list",
        ),
        (
            format!("http://allowed.test:{}/", port + 1),
            "not on the allow list",
        ),
        (
            format!("http://127.0.0.1:{}/api/health", server.http_port),
            "not on the allow list",
        ),
        (
            format!("http://127.0.0.1:{}/", server.ssh_port),
            "not on the allow list",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "not on the allow list",
        ),
    ] {
        let (code, out) = sh(&server, "n", &format!("wget -O- {url} 2>&1"));
        assert_ne!(code, 0, "{url}: {out}");
        assert!(out.contains("403"), "{url}: {out}");
        // The reason reaches the program in the body.
        let (_, body) = sh(
            &server,
            "n",
            &format!("printf 'GET {url} HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 3128"),
        );
        assert!(body.contains(says), "{url}: {body}");
    }

    // SOCKS5 (what ALL_PROXY names): a CONNECT by name, then HTTP.
    let mut request = vec![5u8, 1, 0, 5, 1, 0, 3, 12];
    request.extend_from_slice(b"allowed.test");
    request.extend_from_slice(&port.to_be_bytes());
    request.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    let octal: String = request.iter().map(|b| format!("\\{b:03o}")).collect();
    let (_, out) = sh(
        &server,
        "n",
        &format!("printf '{octal}' | nc 127.0.0.1 3128"),
    );
    assert!(out.contains("upstream-ok"), "SOCKS5: {out:?}");

    // Around the proxy: no route, no interface but loopback; the upstream's
    // port is the sandbox's own loopback, where nothing listens.
    let (_, out) = sh(&server, "n", "cat /proc/net/route; cat /proc/net/dev");
    assert_eq!(out.lines().filter(|l| l.contains(':')).count(), 1, "{out}");
    assert!(out.contains("lo:"), "{out}");
    assert_eq!(
        out.lines().next().map(|l| l.starts_with("Iface")),
        Some(true)
    );
    assert_eq!(
        out.lines()
            .filter(|l| !l.contains(':') && !l.starts_with("Iface") && !l.contains('|'))
            .count(),
        0,
        "a route: {out}"
    );
    let (code, out) = sh(
        &server,
        "n",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {port}"),
    );
    assert!(
        code != 0 || !out.contains("upstream-ok"),
        "reached the upstream directly: {out}"
    );

    // Counted and logged.
    let info = server.get("/api/sessions/n/network");
    assert_eq!(info.status, 200);
    assert!(
        info.body["egress"]["allowed_connections"].as_u64().unwrap() >= 2,
        "{:?}",
        info.body
    );
    assert!(
        info.body["egress"]["denied_connections"].as_u64().unwrap() >= 10,
        "{:?}",
        info.body
    );
    assert!(info.body["egress"]["bytes_received"].as_u64().unwrap() > 0);
    let line = server
        .wait_log(&["egress connection", "dest=other.test", "allowed=false"])
        .expect("a logged refusal");
    assert!(line.contains("session=n"), "{line}");
}

#[test]
fn a_policy_change_applies_to_the_next_connection() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let up = upstream("hello");
    let server = server_with_names(&blink);
    let port = up.port;
    open(&server, "n", json!({"mode": "proxy", "allow": ["*.test"]}));
    // A long-lived session: a spawn keeps it running throughout.
    let spawned = server.post("/api/sessions/n/spawn", json!({"command": ["sleep", "60"]}));
    assert_eq!(spawned.status, 201);
    let get = |host: &str| {
        sh(
            &server,
            "n",
            &format!("wget -qO- http://{host}:{port}/ 2>&1"),
        )
    };
    assert_eq!(get("allowed.test"), (0, "hello".into()));

    let put = |policy: Value| server.put("/api/sessions/n/network", policy);
    let a = put(json!({"mode": "proxy", "allow": ["*.test"], "deny": ["allowed.test"]}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    let (code, out) = get("allowed.test");
    assert!(code != 0 && out.contains("403"), "{out}");
    assert_eq!(get("other.test"), (0, "hello".into()));

    let a = put(json!({"mode": "none"}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    let (code, out) = get("other.test");
    assert_ne!(code, 0, "the proxy outlived mode none: {out}");

    let a = put(json!({"mode": "proxy", "allow": ["allowed.test"]}));
    assert_eq!(a.status, 200);
    // New executions get the proxy variables again.
    assert_eq!(get("allowed.test"), (0, "hello".into()));

    // Bad rules are refused, naming the rule.
    let a = put(json!({"mode": "proxy", "allow": ["bad name!"]}));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad name!"),
        "{:?}",
        a.body
    );
    let a = put(json!({"mode": "none", "allow": ["x.test"]}));
    assert_eq!(a.status, 400, "{:?}", a.body);
}

#[test]
fn by_default_a_session_has_loopback_only() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let up = upstream("nope");
    let server = server_with_names(&blink);
    server.open_session("plain");
    let (_, out) = sh(
        &server,
        "plain",
        "env | grep -ci proxy; nc -w 2 127.0.0.1 3128 </dev/null; echo rc=$?",
    );
    assert!(out.starts_with('0'), "proxy variables: {out}");
    assert!(!out.contains("rc=0"), "a proxy listens: {out}");
    let (code, out) = sh(
        &server,
        "plain",
        &format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {}",
            up.port
        ),
    );
    assert!(code != 0 || !out.contains("nope"), "{out}");
    let info = server.get("/api/sessions/plain");
    assert_eq!(info.body["network"]["policy"]["mode"], "none");
}
