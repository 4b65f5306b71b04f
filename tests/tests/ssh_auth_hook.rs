//! The auth hook end to end: a blink-server asks an HTTP endpoint on
//! 127.0.0.1 (a small HTTP/1.1 server in this test, standing in for a
//! control plane, answering what each test tells it to) about every login
//! made with the real OpenSSH `ssh`. Allowing, denying, too slow (the
//! login fails closed), failing (HTTP 500, a body that is not the answer),
//! options added by the hook, a hook that authorizes keys nobody
//! registered, certificates, and the cache.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blink_e2e::ssh::{Client, SshFixture};
use blink_e2e::{Blink, run, texts};

const TOKEN: &str = "s3cret-hook-token";

/// What the hook answers.
#[derive(Clone)]
enum Answer {
    /// 200 with this body.
    Json(String),
    /// This status, empty body.
    Status(u16),
    /// Nothing for this long, then an allow (too late).
    Slow(Duration),
}

fn allow() -> Answer {
    Answer::Json(r#"{"allow": true}"#.into())
}

/// One request the hook received.
struct Seen {
    authorization: Option<String>,
    body: serde_json::Value,
}

struct Hook {
    port: u16,
    state: Arc<Mutex<(Answer, Vec<Seen>)>>,
}

impl Hook {
    /// Listening on 127.0.0.1 (a free port) until the test ends; serves
    /// at most 500 connections, each read for at most 10 s.
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hook");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new((allow(), Vec::new())));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(500).flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Self { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/blink/auth", self.port)
    }

    fn answer(&self, answer: Answer) {
        self.state.lock().unwrap().0 = answer;
    }

    fn count(&self) -> usize {
        self.state.lock().unwrap().1.len()
    }

    fn last(&self) -> (Option<String>, serde_json::Value) {
        let state = self.state.lock().unwrap();
        let seen = state.1.last().expect("the hook was asked");
        (seen.authorization.clone(), seen.body.clone())
    }
}

fn serve(stream: TcpStream, state: &Mutex<(Answer, Vec<Seen>)>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let (mut length, mut authorization) = (0usize, None);
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            authorization = Some(line["authorization:".len()..].trim().to_string());
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let answer = {
        let mut s = state.lock().unwrap();
        s.1.push(Seen {
            authorization,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        });
        s.0.clone()
    };
    let (status, text) = match answer {
        Answer::Json(text) => (200, text),
        Answer::Status(code) => (code, String::new()),
        Answer::Slow(wait) => {
            std::thread::sleep(wait);
            (200, r#"{"allow": true}"#.into())
        }
    };
    let _ = (&stream).write_all(
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )
        .as_bytes(),
    );
}

/// The `[ssh.auth_hook]` table (and anything after it).
fn hook_config(hook: &Hook, token_file: &std::path::Path, extra: &str) -> String {
    format!(
        "[ssh.auth_hook]\nurl = {:?}\ntoken_file = {:?}\ntimeout_ms = 1000\ncache_secs = 0\n{extra}",
        hook.url(),
        token_file.display().to_string()
    )
}

fn fingerprint(client: &Client, key: &str) -> String {
    let out = run(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(client.path(&format!("{key}.pub"))),
        b"",
    );
    texts(&out).0.split_whitespace().nth(1).unwrap().to_string()
}

fn refused(out: &Output) -> bool {
    out.status.code() == Some(255) && texts(out).1.contains("Permission denied (publickey)")
}

#[test]
fn the_hook_confirms_every_login_and_fails_closed() {
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = hook_config(&hook, &token_file, "");
    let Some(f) = SshFixture::with(|s| {
        s.config(&config)
            .log_filter("warn,blink_server=info,blink=info")
    }) else {
        return;
    };
    // The refusal of a key nobody knows; the hook is not asked for it.
    let wrong = run(f.client.ssh(&f.server, "other", "s1").arg("true"), b"");
    assert!(refused(&wrong));
    assert_eq!(
        hook.count(),
        0,
        "a key nothing lets in never reaches the hook"
    );
    let plain = texts(&wrong).1;

    // Allowed: the login goes on; the hook was told who and from where.
    assert_eq!(f.sh("echo in"), "in\n");
    let (authorization, body) = hook.last();
    assert_eq!(authorization.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    assert_eq!(body["session"], "s1");
    assert_eq!(body["session_exists"], true);
    assert_eq!(body["client_address"], "127.0.0.1");
    assert_eq!(body["granted_by"], "session_key");
    assert_eq!(body["key"]["fingerprint"], fingerprint(&f.client, "id"));
    assert_eq!(body["key"]["algorithm"], "ssh-ed25519");
    assert!(
        body["key"]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 AAAA")
    );
    assert!(body["certificate"].is_null());

    // Denied, too slow, failing, answering nonsense: refused, each looking
    // to the client like any other refusal.
    let cases = [
        (
            Answer::Json(r#"{"allow": false, "reason": "over quota"}"#.into()),
            "over quota",
        ),
        (
            Answer::Slow(Duration::from_secs(3)),
            "no answer within 1000 ms",
        ),
        (Answer::Status(500), "answered HTTP 500"),
        (Answer::Json("<html>".into()), "is not {"),
        (
            Answer::Json(r#"{"allow": true, "options": "tunnel=\"1\""}"#.into()),
            "options are refused",
        ),
    ];
    for (answer, logged) in cases {
        hook.answer(answer);
        let before = hook.count();
        let out = f.ssh(&["echo in"], b"");
        assert!(refused(&out), "{logged}: {:?}", texts(&out));
        assert_eq!(texts(&out).1, plain, "{logged}");
        assert_eq!(hook.count(), before + 1, "{logged}");
        assert!(
            f.server.wait_log(&[logged]).is_some(),
            "{logged} not logged"
        );
    }

    // Options from the hook narrow the login: a forced command.
    hook.answer(Answer::Json(
        r#"{"allow": true, "options": "restrict,command=\"echo hooked\""}"#.into(),
    ));
    assert_eq!(f.sh("echo asked"), "hooked\n");
    hook.answer(allow());
    assert_eq!(f.sh("echo in"), "in\n");
    // The token is sent, never logged.
    assert!(!f.server.log().contains(TOKEN));
}

#[test]
fn an_authorizing_hook_lets_in_keys_nobody_registered_and_sees_certificates() {
    let hook = Hook::start();
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "s1"]);
    let client = Client::new();
    client.keygen("ca");
    let trusted = client.path("trusted");
    std::fs::write(&trusted, client.public_key("ca")).unwrap();
    let token_file = client.path("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = format!(
        "[ssh]\ntrusted_user_ca_keys = {:?}\n{}",
        trusted.display().to_string(),
        hook_config(&hook, &token_file, "mode = \"authorize\"\n")
    );
    let server = blink
        .server()
        .config(&config)
        .log_filter("warn,blink_server=info,blink=info")
        .start();
    let ssh = |key: &str, login: &str, extra: &[&str]| {
        let mut cmd = client.ssh(&server, key, login);
        run(cmd.args(extra).arg("echo in"), b"")
    };

    // No key registered anywhere: the hook decides.
    hook.answer(allow());
    let out = ssh("other", "s1", &[]);
    assert_eq!(texts(&out).0, "in\n", "{}", texts(&out).1);
    let (_, body) = hook.last();
    assert!(body["granted_by"].is_null());
    assert_eq!(body["key"]["fingerprint"], fingerprint(&client, "other"));
    assert!(server.wait_log(&["ssh login", "via=\"hook\""]).is_some());
    hook.answer(Answer::Json(r#"{"allow": false}"#.into()));
    assert!(refused(&ssh("other", "s1", &[])));

    // A session that does not exist: refused, and the hook is not asked.
    hook.answer(allow());
    let before = hook.count();
    assert!(refused(&ssh("other", "nope", &[])));
    assert_eq!(hook.count(), before);

    // A certificate: the hook sees what the gateway accepted.
    let signed = client.path("cert-key.pub");
    std::fs::copy(client.path("id.pub"), &signed).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(client.path("ca"))
        .args(["-I", "agent-9", "-n", "s1", "-z", "77"])
        .arg(&signed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", texts(&out).1);
    let cert = format!(
        "CertificateFile={}",
        client.path("cert-key-cert.pub").display()
    );
    let out = ssh("id", "s1", &["-o", &cert]);
    assert_eq!(texts(&out).0, "in\n", "{}", texts(&out).1);
    let (_, body) = hook.last();
    assert_eq!(body["granted_by"], "certificate");
    assert_eq!(body["certificate"]["key_id"], "agent-9");
    assert_eq!(body["certificate"]["serial"], 77);
    assert_eq!(body["certificate"]["principals"], serde_json::json!(["s1"]));
    // The hook may refuse a valid certificate.
    hook.answer(Answer::Json(r#"{"allow": false}"#.into()));
    assert!(refused(&ssh("id", "s1", &["-o", &cert])));
}

#[test]
fn answers_are_cached_briefly() {
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = hook_config(&hook, &token_file, "").replace("cache_secs = 0", "cache_secs = 600");
    let Some(f) = SshFixture::with(|s| s.config(&config)) else {
        return;
    };
    assert_eq!(f.sh("echo in"), "in\n");
    assert_eq!(hook.count(), 1);
    // Within the cache time the answer holds, even once the hook changes
    // its mind: no request.
    hook.answer(Answer::Json(r#"{"allow": false}"#.into()));
    assert_eq!(f.sh("echo again"), "again\n");
    assert_eq!(hook.count(), 1);
    // Another key (here: a session key added now) asks again.
    f.client.keygen("third");
    f.blink.ok(&[
        "session",
        "keys",
        "add",
        "--name",
        "s1",
        f.client.path("third.pub").to_str().unwrap(),
    ]);
    assert!(refused(&run(
        f.client.ssh(&f.server, "third", "s1").arg("true"),
        b""
    )));
    assert_eq!(hook.count(), 2);
}
