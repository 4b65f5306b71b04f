//! Recordings of PTY sessions (docs/RECORDING.md): a real OpenSSH client
//! in a real terminal (tmux) whose session is recorded, downloaded over
//! REST and replayed in a headless terminal (pyte, tests/clients/
//! cast_screen.py) to the screen the client saw; REST spawns with a
//! terminal; the switches; multi-byte characters cut between reads; the
//! size cap; retention; ids that try to leave the recordings directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blink_e2e::rest::{Received, read_until, send_bytes, send_control};
use blink_e2e::ssh::SshFixture;
use blink_e2e::{Server, texts};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// `[recording]` on for every session, with the given extra lines.
fn recording_config(extra: &str) -> String {
    format!("[recording]\nenabled = true\n{extra}")
}

/// The session's recordings as listed.
fn list(server: &Server, session: &str) -> Vec<Value> {
    let a = server.get(&format!("/api/sessions/{session}/recordings"));
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body["recordings"].as_array().expect("recordings").clone()
}

/// Wait until `session` has `n` finished recordings; them, oldest first.
fn wait_finished(server: &Server, session: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = list(server, session);
        let finished = listed
            .iter()
            .filter(|r| !r["ended_at"].is_null() && r["active"] == false)
            .count();
        if finished == n && listed.len() == n {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} finished recordings: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET a cast: status, content type and body.
fn download(server: &Server, path: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut req = ureq::get(&server.url(path));
    if let Some(range) = range {
        req = req.set("Range", range);
    }
    let response = match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = response.status();
    let content_type = response.content_type().to_owned();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("body");
    (status, content_type, body)
}

/// A cast parsed: its header and events, every line checked to be JSON of
/// the asciicast v2 shape, times never going back.
struct Cast {
    header: Value,
    events: Vec<(f64, String, String)>,
}

impl Cast {
    fn parse(bytes: &[u8]) -> Self {
        let text = std::str::from_utf8(bytes).expect("a cast is UTF-8");
        let mut lines = text.lines();
        let header: Value = serde_json::from_str(lines.next().expect("header")).expect("header");
        assert_eq!(header["version"], 2, "{header}");
        let mut events = Vec::new();
        for line in lines {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let event = v.as_array().expect("an event is an array");
            assert_eq!(event.len(), 3, "{line}");
            let time = event[0].as_f64().expect("time");
            let code = event[1].as_str().expect("code").to_owned();
            let data = event[2].as_str().expect("data").to_owned();
            assert!(matches!(code.as_str(), "o" | "i" | "r"), "{line}");
            events.push((time, code, data));
        }
        assert!(
            events.windows(2).all(|w| w[0].0 <= w[1].0),
            "times go back: {:?}",
            events.iter().map(|e| e.0).collect::<Vec<_>>()
        );
        Self { header, events }
    }

    fn output(&self) -> String {
        self.of("o").concat()
    }

    fn of(&self, code: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e.1 == code)
            .map(|e| e.2.as_str())
            .collect()
    }
}

fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The final screen of a cast replayed in pyte: size and rows.
fn replay(cast: &Path) -> (u64, u64, Vec<String>) {
    let out = Command::new("python3")
        .arg(client_script("cast_screen.py"))
        .arg(cast)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3");
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "cast_screen.py: {stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("cast_screen.py JSON");
    let lines = v["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l.as_str().expect("line").to_owned())
        .collect();
    (
        v["width"].as_u64().expect("width"),
        v["height"].as_u64().expect("height"),
        lines,
    )
}

/// Rows without trailing blanks, and without the blank rows at the bottom.
fn normalized<S: AsRef<str>>(rows: &[S]) -> Vec<String> {
    let mut rows: Vec<String> = rows
        .iter()
        .map(|r| r.as_ref().trim_end().to_owned())
        .collect();
    while rows.last().is_some_and(|r| r.is_empty()) {
        rows.pop();
    }
    rows
}

/// tmux driving an interactive `ssh -tt` like a person at a terminal.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    fn ok(&self, args: &[&str]) {
        let status = self.cmd().args(args).status().expect("tmux");
        assert!(status.success(), "tmux {args:?}");
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.ok(&args);
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_screen(&self, needle: &str) -> String {
        for _ in 0..600 {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {needle:?} on the screen:\n{}", self.screen());
    }

    fn running(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "t"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// Drawn in the session once the shell is there: text with multi-byte
/// characters, then (once the terminal is 100x30) a screen only that size
/// can hold, then `done` on the last row; then it waits for a key.
const DRAW: &str = r#"printf 'before: h\303\251llo w\303\266rld \342\234\223\r\n'
i=0
while [ "$(stty size)" != "30 100" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
printf '\033[H\033[2J'
printf 'size=%s\r\n' "$(stty size)"
printf 'wide: %s|\r\n' "$(printf '%090d' 0 | tr 0 =)"
printf '\033[12;70H\342\224\214\342\224\200 box \342\224\200\342\224\220'
printf '\033[28;60Hrow 28 col 60: \342\234\223 \303\251 \303\266 \342\206\222'
printf '\033[30;1Hdone'
stty -echo
read x
"#;

#[test]
fn a_recorded_pty_session_replays_to_the_same_screen() {
    if !blink_sdk::testing::require(
        python_has("pyte"),
        "python3 with pyte (scripts/install-deps.sh installs it)",
    ) {
        return;
    }
    let Some(f) = SshFixture::with(|s| s.config(&recording_config(""))) else {
        return;
    };
    // The program to run, put in the session without a terminal (no
    // recording of that: only PTY sessions are recorded).
    let out = f.ssh(&["cat > /tmp/draw.sh"], DRAW.as_bytes());
    assert!(out.status.success(), "{:?}", texts(&out));
    assert!(list(&f.server, "s1").is_empty());

    let tmux = Tmux {
        socket: f.client.path("tmux"),
    };
    let mut ssh = vec!["ssh".to_string(), "-tt".into()];
    ssh.extend(f.client.common_opts("id"));
    ssh.extend([
        "-p".into(),
        f.server.ssh_port.to_string(),
        "s1@127.0.0.1".into(),
    ]);
    let line = format!("TERM=screen-256color {}", ssh.join(" "));
    tmux.ok(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "80",
        "-y",
        "24",
        &line,
    ]);
    tmux.wait_screen("built-in shell");
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys(&["exec sh /tmp/draw.sh", "Enter"]);
    tmux.wait_screen("before: héllo wörld ✓");
    // The client's terminal grows: ssh sends a window change.
    tmux.ok(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    tmux.wait_screen("done");
    // What the client sees, all drawn: then the program ends.
    let seen = tmux.screen();
    assert!(seen.contains("size=30 100"), "{seen}");
    let active = list(&f.server, "s1");
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["active"], true);
    assert!(active[0]["ended_at"].is_null());
    tmux.keys(&["Enter"]);
    let deadline = Instant::now() + WAIT;
    while tmux.running() {
        assert!(Instant::now() < deadline, "ssh did not end");
        std::thread::sleep(Duration::from_millis(50));
    }

    let listed = wait_finished(&f.server, "s1", 1);
    let rec = &listed[0];
    assert_eq!(rec["session"], "s1");
    assert_eq!(rec["source"], "ssh");
    assert_eq!(rec["login"], "s1");
    assert!(
        rec["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{rec}"
    );
    assert_eq!(rec["complete"], true, "{rec}");
    assert_eq!(rec["dropped_events"], 0);
    assert_eq!(rec["truncated"], false);
    assert_eq!(rec["input_recorded"], false);
    assert_eq!(
        (rec["cols"].as_u64(), rec["rows"].as_u64()),
        (Some(80), Some(24))
    );
    let id = rec["id"].as_str().unwrap();

    let path = format!("/api/sessions/s1/recordings/{id}");
    let (status, content_type, body) = download(&f.server, &path, None);
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/x-asciicast");
    assert_eq!(rec["bytes"].as_u64(), Some(body.len() as u64));
    let cast = Cast::parse(&body);
    let h = &cast.header;
    assert_eq!(
        (h["width"].as_u64(), h["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert_eq!(h["env"]["TERM"], "screen-256color");
    assert_eq!(h["env"]["SHELL"], "/bin/sh");
    assert!(h["title"].as_str().unwrap().starts_with("s1 "), "{h}");
    assert_eq!(h["timestamp"], rec["started_at"]);
    assert!(h.get("command").is_none(), "a shell has no command: {h}");
    // The window change, once; nothing typed is in it.
    assert_eq!(cast.of("r"), ["100x30"]);
    assert!(cast.of("i").is_empty());
    let output = cast.output();
    for needle in [
        "built-in shell",
        "before: héllo wörld ✓",
        "size=30 100",
        "done",
    ] {
        assert!(output.contains(needle), "no {needle:?} in {output:?}");
    }

    // Replayed, it ends on the screen the client saw.
    let file = f.client.path("session.cast");
    std::fs::write(&file, &body).unwrap();
    let (width, height, screen) = replay(&file);
    assert_eq!((width, height), (100, 30));
    let seen_rows: Vec<&str> = seen.lines().collect();
    assert_eq!(
        normalized(&screen),
        normalized(&seen_rows),
        "replayed screen:\n{}\nclient's screen:\n{seen}",
        screen.join("\n")
    );

    // asciinema itself reads it, output for output.
    if blink_sdk::testing::require(
        Command::new("asciinema").arg("--version").output().is_ok(),
        "asciinema (scripts/install-deps.sh installs it)",
    ) {
        let out = Command::new("asciinema")
            .arg("cat")
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .expect("asciinema");
        assert!(out.status.success(), "{:?}", texts(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), output);
    }

    // Range: a resumed download.
    let (status, _, part) = download(&f.server, &path, Some("bytes=10-29"));
    assert_eq!(status, 206);
    assert_eq!(part, body[10..30]);

    // On disk: the server's own, private.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = f.blink.data_dir.path().join("recordings");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("s1")), 0o700);
    assert_eq!(mode(&dir.join("s1").join(format!("{id}.cast"))), 0o600);
    assert_eq!(mode(&dir.join("s1").join(format!("{id}.json"))), 0o600);

    // Removed over REST; gone.
    assert_eq!(f.server.delete(&path).status, 204);
    assert_eq!(f.server.get(&path).code(), "recording_not_found");
    assert!(list(&f.server, "s1").is_empty());
}

/// Run `ssh -tt s1@… COMMAND` (a PTY exec) to its end; its output.
fn pty_exec(f: &SshFixture, command: &str) -> String {
    let out = f.ssh(&["-tt", command], b"");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{command}: {stderr}");
    stdout
}

#[test]
fn switches_decide_what_is_recorded() {
    // Recording on, for another session only.
    let Some(f) = SshFixture::with(|s| s.config(&recording_config("sessions = [\"other\"]\n")))
    else {
        return;
    };
    let switch = f.server.get("/api/sessions/s1/recording");
    assert_eq!(switch.status, 200);
    assert_eq!(
        switch.body,
        json!({"enabled": false, "session_switch": null, "server_enabled": true, "record_input": false})
    );
    pty_exec(&f, "echo not-recorded");
    // s1's own switch on: PTY sessions are recorded, others are not.
    let a = f
        .server
        .put("/api/sessions/s1/recording", json!({"enabled": true}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["enabled"], true);
    assert_eq!(a.body["session_switch"], true);
    pty_exec(&f, "echo recorded");
    f.sh("echo no-terminal-no-recording");
    let listed = wait_finished(&f.server, "s1", 1);
    let (_, _, body) = download(
        &f.server,
        &format!(
            "/api/sessions/s1/recordings/{}",
            listed[0]["id"].as_str().unwrap()
        ),
        None,
    );
    let cast = Cast::parse(&body);
    assert!(cast.output().contains("recorded\r\n"), "{}", cast.output());
    assert_eq!(cast.header["command"], "echo recorded");
    // Off again.
    let a = f
        .server
        .put("/api/sessions/s1/recording", json!({"enabled": false}));
    assert_eq!(a.body["enabled"], false);
    pty_exec(&f, "echo off-again");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(list(&f.server, "s1").len(), 1);
    // Bad bodies and names are named.
    let a = f
        .server
        .put("/api/sessions/s1/recording", json!({"enabled": "yes"}));
    assert_eq!(a.status, 400, "{:?}", a.body);
    let a = f
        .server
        .put("/api/sessions/nope/recording", json!({"enabled": true}));
    assert_eq!(a.code(), "session_not_found");
}

#[test]
fn recording_off_makes_no_file() {
    let Some(f) = SshFixture::new() else { return };
    pty_exec(&f, "echo hello");
    let dir = f.blink.data_dir.path().join("recordings");
    assert!(!dir.exists(), "recordings made with recording off");
    assert!(list(&f.server, "s1").is_empty());
    let a = f.server.get("/api/sessions/s1/recording");
    assert_eq!(a.body["enabled"], false);
    assert_eq!(a.body["server_enabled"], false);
    let a = f
        .server
        .put("/api/sessions/s1/recording", json!({"enabled": true}));
    assert_eq!((a.status, a.code()), (409, "recording_disabled"));
    // Unknown sessions are not found.
    assert_eq!(
        f.server.get("/api/sessions/nope/recordings").code(),
        "session_not_found"
    );
}

#[test]
fn multibyte_characters_cut_between_reads_stay_whole() {
    let Some(f) = SshFixture::with(|s| s.config(&recording_config(""))) else {
        return;
    };
    // ✓ (e2 9c 93) written in two pieces a while apart, so the gateway
    // reads them apart; then bytes that are never UTF-8.
    let seen = pty_exec(
        &f,
        r"printf 'a\342\234'; sleep 0.5; printf '\223b\r\n'; sleep 0.2; printf 'bad:\377\376:end\r\n'",
    );
    assert!(seen.contains("a✓b"), "{seen:?}");
    let listed = wait_finished(&f.server, "s1", 1);
    let (_, _, body) = download(
        &f.server,
        &format!(
            "/api/sessions/s1/recordings/{}",
            listed[0]["id"].as_str().unwrap()
        ),
        None,
    );
    let cast = Cast::parse(&body);
    let output = cast.output();
    // What the client got, bytes that are not UTF-8 as U+FFFD.
    assert_eq!(output, seen);
    assert!(output.contains("a✓b\r"), "{output:?}");
    assert!(output.contains("bad:\u{fffd}\u{fffd}:end"), "{output:?}");
    // The cut was real: `a` came in an event of its own, before the ✓.
    let events = cast.of("o");
    let a = events
        .iter()
        .position(|e| e.ends_with('a'))
        .expect("`a` alone");
    assert!(events[a + 1].starts_with('✓'), "{events:?}");
}

#[test]
fn the_size_cap_stops_the_cast_and_marks_it_incomplete() {
    let Some(f) =
        SshFixture::with(|s| s.config(&recording_config("max_bytes_per_recording = 4096\n")))
    else {
        return;
    };
    let seen = pty_exec(
        &f,
        "i=0; while [ $i -lt 2000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done",
    );
    // The session itself lost nothing.
    assert!(seen.contains("line-1999-"), "{}", seen.len());
    let listed = wait_finished(&f.server, "s1", 1);
    let rec = &listed[0];
    assert_eq!(rec["complete"], false, "{rec}");
    assert_eq!(rec["truncated"], true, "{rec}");
    assert!(rec["dropped_events"].as_u64().unwrap() > 0, "{rec}");
    // It ends at the cap (the last event cut to fit).
    let bytes = rec["bytes"].as_u64().unwrap();
    assert!(bytes <= 4096 && bytes > 4000, "{bytes}");
    let (_, _, body) = download(
        &f.server,
        &format!(
            "/api/sessions/s1/recordings/{}",
            rec["id"].as_str().unwrap()
        ),
        None,
    );
    // Whole lines up to the cap, each valid.
    let cast = Cast::parse(&body);
    assert!(cast.output().contains("line-0-"));
    assert!(!cast.output().contains("line-1999-"));
}

#[test]
fn retention_removes_the_oldest_past_the_total() {
    // Each recording here is ~2.3 KB; 6000 bytes hold two.
    let Some(f) = SshFixture::with(|s| {
        s.config(&recording_config(
            "max_bytes_per_recording = 4096\nmax_total_bytes = 6000\n",
        ))
    }) else {
        return;
    };
    let record = |n: usize| {
        pty_exec(&f, &format!("printf '%2000s' | tr ' ' {n}"));
    };
    record(1);
    let first = wait_finished(&f.server, "s1", 1);
    record(2);
    let two = wait_finished(&f.server, "s1", 2);
    record(3);
    // Three would take ~7 KB: the oldest goes.
    let kept = wait_finished(&f.server, "s1", 2);
    let ids: Vec<&str> = kept.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&first[0]["id"].as_str().unwrap()), "{ids:?}");
    assert_eq!(ids[0], two[1]["id"].as_str().unwrap());
    let gone = format!(
        "/api/sessions/s1/recordings/{}",
        first[0]["id"].as_str().unwrap()
    );
    assert_eq!(f.server.get(&gone).code(), "recording_not_found");
}

#[test]
fn recordings_older_than_the_retention_are_removed() {
    let Some(f) = SshFixture::with(|s| s.config(&recording_config("retention_secs = 1\n"))) else {
        return;
    };
    pty_exec(&f, "echo old");
    let old = wait_finished(&f.server, "s1", 1);
    // Seconds are whole: more than one must pass after it ended.
    std::thread::sleep(Duration::from_millis(2500));
    pty_exec(&f, "echo new");
    // The new one's end sweeps the old one away.
    let kept = wait_finished(&f.server, "s1", 1);
    assert_ne!(kept[0]["id"], old[0]["id"]);
}

#[test]
fn recording_ids_cannot_leave_the_directory() {
    let Some(f) = SshFixture::with(|s| s.config(&recording_config(""))) else {
        return;
    };
    pty_exec(&f, "echo x");
    let listed = wait_finished(&f.server, "s1", 1);
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    // Files a traversal would aim at.
    let data = f.blink.data_dir.path();
    assert!(data.join("sessions/s1/session.json").exists());
    // (`..` itself never reaches the server: HTTP clients resolve it, as
    // ureq does, %2E%2E included.)
    let bad_ids = [
        "..%2F..%2Fsessions%2Fs1%2Fsession.json".to_owned(),
        "..%2F..%2F..%2Fetc%2Fpasswd".to_owned(),
        format!("{id}.cast"),
        format!("{id}.json"),
        format!("{id}%2F..%2F{id}"),
        format!("%2F{id}"),
        "switch".to_owned(),
        "1-ABCDEF0123456789".to_owned(),
        format!("{id}%00"),
    ];
    for bad in &bad_ids {
        for (method, answer) in [
            (
                "GET",
                f.server.get(&format!("/api/sessions/s1/recordings/{bad}")),
            ),
            (
                "DELETE",
                f.server
                    .delete(&format!("/api/sessions/s1/recordings/{bad}")),
            ),
        ] {
            assert_eq!(
                (answer.status, answer.code()),
                (400, "invalid_argument"),
                "{method} {bad}: {:?}",
                answer.body
            );
            assert!(
                answer.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("id: "),
                "{:?}",
                answer.body
            );
        }
    }
    // A bad session name is the name's error; a well-formed id that is
    // not there is not found.
    let a = f
        .server
        .get(&format!("/api/sessions/..%2Fsessions/recordings/{id}"));
    assert_eq!((a.status, a.code()), (400, "invalid_name"));
    let a = f
        .server
        .get("/api/sessions/s1/recordings/1-0123456789abcdef");
    assert_eq!((a.status, a.code()), (404, "recording_not_found"));
    // The recording is still there, and still the only one.
    assert_eq!(list(&f.server, "s1").len(), 1);
    let (status, _, _) = download(
        &f.server,
        &format!("/api/sessions/s1/recordings/{id}"),
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn a_rest_spawn_with_a_terminal_is_recorded() {
    let Some(f) = SshFixture::with(|s| s.config(&recording_config("record_input = true\n"))) else {
        return;
    };
    let server = &f.server;
    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({
            "command": ["sh", "-c", "printf 'rest-hello \\342\\234\\223\\r\\n'; read x; printf 'size=%s\\r\\n' \"$(stty size)\""],
            "tty": true, "rows": 24, "cols": 80,
        }),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let exec = a.body["id"].as_str().unwrap().to_owned();
    // The recording is not a client: nothing is attached.
    let a = server.get(&format!("/api/sessions/s1/executions/{exec}"));
    assert_eq!(a.body["attached"], 0, "{:?}", a.body);
    let mut ws = server.ws(&format!("/api/sessions/s1/executions/{exec}/attach"));
    let mut got = Received::default();
    assert!(read_until(&mut ws, &mut got, WAIT, |r| r
        .text()
        .contains("rest-hello")));
    send_control(&mut ws, json!({"type": "resize", "rows": 30, "cols": 100}));
    send_bytes(&mut ws, b"go\r");
    assert!(
        read_until(&mut ws, &mut got, WAIT, |r| r.exit().is_some()),
        "{}",
        got.text()
    );
    assert!(got.text().contains("size=30 100"), "{}", got.text());

    let listed = wait_finished(server, "s1", 1);
    let rec = &listed[0];
    assert_eq!(rec["source"], "rest");
    assert_eq!(rec["execution"], exec.as_str());
    assert_eq!(rec["input_recorded"], true);
    assert_eq!(rec["complete"], true, "{rec}");
    let (_, _, body) = download(
        server,
        &format!(
            "/api/sessions/s1/recordings/{}",
            rec["id"].as_str().unwrap()
        ),
        None,
    );
    let cast = Cast::parse(&body);
    assert_eq!(cast.header["env"]["TERM"], "xterm-256color");
    assert_eq!(cast.of("r"), ["100x30"]);
    // Input, as configured here.
    assert_eq!(cast.of("i").concat(), "go\r");
    let output = cast.output();
    assert!(output.contains("rest-hello ✓"), "{output:?}");
    assert!(output.contains("size=30 100"), "{output:?}");
    // The resize is recorded before the output at the new size.
    let r = cast.events.iter().position(|e| e.1 == "r").unwrap();
    let size = cast
        .events
        .iter()
        .position(|e| e.1 == "o" && e.2.contains("size=30 100"))
        .unwrap();
    assert!(r < size, "{:?}", cast.events);
}
