//! The abuse suite, as the sandbox: the attacker program
//! (tests/abuse/probe.c) runs in sessions and ephemeral runs and tries the
//! known ways out of a container. Every test fails if an attack works again.

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use blink_e2e::abuse::{
    Probe, field, hex, is_root, line, private_id_base_config, refused, unavailable, wait_for,
};
use blink_e2e::rest::stdout;
use blink_e2e::{Blink, Server};
use serde_json::{Value, json};

const EROFS: i32 = 30;
const ENOSYS: i32 = 38;
const ECONNREFUSED: i32 = 111;
const EMFILE: i32 = 24;
const ENOSPC: i32 = 28;
const EAGAIN: i32 = 11;

/// Host ids of sandboxes start here, 65536 per sandbox.
const ID_BASE: u64 = 0x7000_0000;
const RANGE: u64 = 65536;

/// Attempts that must be refused, whatever the errno.
const REFUSED: [&str; 18] = [
    "unshare_user",
    "unshare_mnt",
    "clone_newuser",
    "setns_user",
    "mount_tmpfs",
    "keyctl",
    "add_key",
    "bpf",
    "perf_event_open",
    "io_uring_setup",
    "userfaultfd",
    "socket_vsock",
    "open_by_handle_at",
    "init_module",
    "kexec_load",
    "ptrace_pid1",
    "environ_pid1",
    "sysctl_printk",
];

/// Docker's default capabilities: all an execution may hold.
const DOCKER_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];
/// The ones that would matter most, named in failures.
const FORBIDDEN_CAPS: [(u32, &str); 4] = [
    (21, "CAP_SYS_ADMIN"),
    (12, "CAP_NET_ADMIN"),
    (19, "CAP_SYS_PTRACE"),
    (16, "CAP_SYS_MODULE"),
];

/// Everything `probe all` printed must say "refused", "filtered" and
/// "unprivileged".
fn assert_confined(out: &str) {
    for name in REFUSED {
        refused(out, name);
    }
    assert_eq!(
        refused(out, "clone3"),
        ENOSYS,
        "clone3 must fail with ENOSYS (its flags are out of the filter's sight):\n{out}"
    );
    for name in ["sysctl_printk", "sysctl_net"] {
        assert_eq!(
            refused(out, name),
            EROFS,
            "/proc/sys must be read-only even for sandbox root:\n{out}"
        );
    }
    // Every process of the sandbox runs under the filter, its init included.
    for who in ["self", "pid1"] {
        let status = line(out, who).unwrap_or_else(|| panic!("no {who} status:\n{out}"));
        assert_eq!(
            field(status, "Seccomp"),
            Some("2"),
            "{who} is not under a seccomp filter:\n{out}"
        );
    }
    let status = line(out, "self").expect("self status");
    let allowed: u64 = DOCKER_CAPS.iter().map(|c| 1u64 << c).sum();
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        let caps = field(status, key)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or_else(|| panic!("no {key}:\n{out}"));
        for (bit, name) in FORBIDDEN_CAPS {
            assert_eq!(caps & (1 << bit), 0, "{key} holds {name}:\n{out}");
        }
        assert_eq!(
            caps & !allowed,
            0,
            "{key} {caps:x} holds capabilities beyond Docker's default set:\n{out}"
        );
    }
    // Per-user quotas hold: inotify instances run out long before 2000.
    let inotify = line(out, "inotify").expect("inotify line");
    let count: u32 = field(inotify, "count")
        .and_then(|c| c.parse().ok())
        .expect("count");
    let errno: i32 = field(inotify, "errno")
        .and_then(|c| c.parse().ok())
        .expect("errno");
    assert!(
        count < 2000 && [EMFILE, ENOSPC].contains(&errno),
        "inotify instances are unbounded: {inotify}"
    );
}

/// The one line of an id map: (host id of sandbox id 0, length).
fn id_map(out: &str, which: &str) -> (u64, u64) {
    let prefix = format!("{which}: ");
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect();
    assert_eq!(lines.len(), 1, "{which} must map one range:\n{out}");
    let numbers: Vec<u64> = lines[0]
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    let [inside, outside, count] = numbers[..] else {
        panic!("bad {which}: {}", lines[0]);
    };
    assert_eq!(inside, 0, "{which}: {}", lines[0]);
    (outside, count)
}

/// Sandbox root is an unprivileged host id of a full range of its own.
fn assert_own_range(out: &str) -> u64 {
    let (uid, count) = id_map(out, "uid_map");
    let (gid, gcount) = id_map(out, "gid_map");
    assert_ne!(uid, 0, "sandbox root is host root:\n{out}");
    assert_ne!(gid, 0, "sandbox root group is host root:\n{out}");
    assert!(
        uid >= ID_BASE && gid >= ID_BASE,
        "ids below the base:\n{out}"
    );
    assert_eq!((count, gcount), (RANGE, RANGE), "{out}");
    assert_eq!(uid, gid, "{out}");
    assert!(uid + count <= 1 << 31, "{out}");
    uid
}

/// Real sandboxes and the attacker program; `None` when either cannot be
/// had here.
fn setup() -> Option<(Blink, Probe)> {
    let blink = Blink::with_runtime()?;
    Some((blink, Probe::build()?))
}

#[test]
fn escape_attempts_are_refused_in_sessions_and_runs() {
    let Some((blink, probe)) = setup() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "p"]);
    let in_session = blink.ok(&["session", "run", "--name", "p", probe.arg(), "all"]);
    assert_confined(&in_session);
    let in_run = blink.ok(&["run", probe.arg(), "all"]);
    assert_confined(&in_run);

    let max = blink.ok(&[
        "session",
        "exec",
        "--name",
        "p",
        "--",
        "cat",
        "/proc/sys/user/max_user_namespaces",
    ]);
    assert_eq!(max, "0\n", "user namespaces are open to the sandbox");

    if !is_root() {
        unavailable("per-sandbox id ranges need blink-cli running as root");
        return;
    }
    let a = assert_own_range(&in_session);
    let b = assert_own_range(&in_run);
    assert_ne!(a, b, "a session and a run share host ids");
}

/// A run in a session, waited for.
fn run(server: &Server, session: &str, body: Value) -> Value {
    server.run_wait(&format!("/api/sessions/{session}/runs"), body)
}

/// A run in a session, not waited for; its id.
fn run_async(server: &Server, session: &str, body: Value) -> String {
    let a = server.post(&format!("/api/sessions/{session}/runs"), body);
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.body["id"].as_str().expect("run id").to_owned()
}

/// Wait until a file the sandbox writes on its disk has content.
fn wait_for_content(path: &std::path::Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got its content",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sessions_have_their_own_id_ranges_and_inotify_quotas() {
    let Some((blink, probe)) = setup() else {
        return;
    };
    if !is_root() {
        unavailable("per-sandbox id ranges need blink-server running as root");
        return;
    }
    let server = blink.server().config(&private_id_base_config()).start();
    let script = probe.copy_to(&blink.scripts_dir());
    let box_a = server.open_session("a");
    server.open_session("b");

    let status = |session: &str| {
        let r = run(
            &server,
            session,
            json!({"script": script, "args": ["status"]}),
        );
        assert_eq!(r["state"], "succeeded", "{r}");
        stdout(&r)
    };
    let a = assert_own_range(&status("a"));
    let b = assert_own_range(&status("b"));
    assert!(a.abs_diff(b) >= RANGE, "sessions a and b overlap: {a} {b}");
    assert!(
        a >= 0x7800_0000 && b >= 0x7800_0000,
        "[sandbox] id_base was not applied: {a} {b}"
    );

    // Session a takes every inotify instance its quota allows, and holds
    // them while the others try.
    let holder = run_async(
        &server,
        "a",
        json!({"script": script, "args": ["inotify", "hold", "12", "/root/inotify.count"]}),
    );
    let count = wait_for_content(
        &blink.disk_path(&box_a, "/root/inotify.count"),
        Duration::from_secs(60),
    );
    let count: u32 = count.trim().parse().expect("count");
    assert!(count < 2000, "inotify instances are unbounded ({count})");
    let one = |session: &str| {
        stdout(&run(
            &server,
            session,
            json!({"script": script, "args": ["inotify-one"]}),
        ))
    };
    // The exhaustion is real: a itself gets no more...
    let in_a = one("a");
    assert_eq!(
        refused(&in_a, "inotify_one"),
        EMFILE,
        "session a was not exhausted (the test proves nothing): {in_a}"
    );
    // ...and b does not share a's quota.
    let in_b = one("b");
    assert_eq!(
        line(&in_b, "inotify_one"),
        Some("ok"),
        "session a's exhaustion stops session b: {in_b}"
    );
    let done = server.wait_run(&holder);
    assert_eq!(done["state"], "succeeded", "{done}");
}

#[test]
fn host_processes_files_and_loopback_are_out_of_reach() {
    let Some((blink, probe)) = setup() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "p"]);

    // Processes: only the sandbox's own, under its own init.
    let ps = blink.ok(&["session", "run", "--name", "p", probe.arg(), "ps"]);
    let procs: Vec<&str> = ps.lines().filter_map(|l| l.strip_prefix("ps: ")).collect();
    assert!(
        procs
            .iter()
            .any(|p| p.starts_with("pid=1 ") && p.contains("cmdline=/.blink/guest init")),
        "pid 1 is not the sandbox's init:\n{ps}"
    );
    assert!(procs.len() <= 4, "more processes than the sandbox's:\n{ps}");
    let host_only = [
        "blink-cli",
        "blink-server",
        "bwrap",
        "nsenter",
        "cargo",
        "security_sandbox",
    ];
    for p in &procs {
        for name in host_only {
            assert!(!p.contains(name), "a host process is visible: {p}");
        }
    }
    let busybox_ps = blink.ok(&["session", "exec", "--name", "p", "--", "ps"]);
    assert!(
        busybox_ps
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("/.blink/guest init")),
        "{busybox_ps}"
    );
    assert!(busybox_ps.lines().count() <= 5, "{busybox_ps}");
    for name in host_only {
        assert!(!busybox_ps.contains(name), "{busybox_ps}");
    }

    // Files: a world-readable host file, by path and through every
    // process's root and cwd.
    let host = tempfile::Builder::new()
        .prefix("blink-host-marker-")
        .tempdir()
        .expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let secret = format!("host-only-{}", rand::random::<u64>());
    let file = host.path().join("marker");
    std::fs::write(&file, &secret).expect("write marker");
    let reach = blink.ok(&[
        "session",
        "run",
        "--name",
        "p",
        probe.arg(),
        "reach",
        file.to_str().expect("utf-8"),
        &hex(&secret),
    ]);
    assert_eq!(line(&reach, "reach"), Some("none"), "{reach}");

    // Loopback: a listener on the host's 127.0.0.1 (and ::1) is not the
    // sandbox's loopback, and nothing ever arrives at it.
    let v4 = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let v6 = TcpListener::bind("[::1]:0").ok();
    let mut targets = vec![("127.0.0.1", &v4)];
    if let Some(l) = &v6 {
        targets.push(("::1", l));
    }
    for (host_addr, listener) in targets {
        let port = listener.local_addr().expect("addr").port().to_string();
        let out = blink.ok(&[
            "session",
            "run",
            "--name",
            "p",
            probe.arg(),
            "connect",
            host_addr,
            &port,
        ]);
        let name = format!("connect {host_addr}");
        assert_eq!(
            refused(&out, &name),
            ECONNREFUSED,
            "the sandbox reached the host's {host_addr}:{port}: {out}"
        );
        listener.set_nonblocking(true).expect("nonblocking");
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((mut s, peer)) => {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                panic!("a connection from {peer} reached the host listener");
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn resource_exhaustion_in_one_session_leaves_another_answering() {
    let Some((blink, probe)) = setup() else {
        return;
    };
    let server = blink.server().config(&private_id_base_config()).start();
    let script = probe.copy_to(&blink.scripts_dir());
    let box_a = server.open_session("a");
    server.open_session("b");
    let r = run(
        &server,
        "a",
        json!({"script": script, "args": ["install", "/root/probe"]}),
    );
    assert_eq!(r["state"], "succeeded", "{r}");

    let answers = |what: &str| {
        let t0 = Instant::now();
        let r = run(&server, "b", json!({"command": ["echo", "alive"]}));
        let took = t0.elapsed();
        assert_eq!(stdout(&r), "alive\n", "session b during {what}: {r}");
        assert!(
            took < Duration::from_secs(60),
            "session b took {took:?} to answer during {what}"
        );
    };

    // A fork bomb (bounded: 12 generations, 4096 processes at most, each
    // alive 15 s; under `timeout` too).
    let bomb = run_async(
        &server,
        "a",
        json!({
            "command": ["timeout", "90", "/root/probe", "forkbomb", "15", "/root/forkbomb.flag"],
            "timeout_secs": 120,
        }),
    );
    assert!(
        wait_for(
            &blink.disk_path(&box_a, "/root/forkbomb.flag"),
            Duration::from_secs(60)
        ),
        "the fork bomb never reported"
    );
    answers("a fork bomb in session a");
    let done = server.wait_run(&bomb);
    let out = stdout(&done);
    let verdict = line(&out, "forkbomb").unwrap_or_else(|| panic!("{done}"));
    assert!(
        verdict.starts_with("held "),
        "a fork bomb is not held: {done}"
    );
    let count: u32 = field(verdict, "count")
        .and_then(|c| c.parse().ok())
        .expect("count");
    assert!(
        count < 2000,
        "a fork bomb made {count} processes: {verdict}"
    );
    assert_eq!(field(verdict, "errno"), Some(EAGAIN.to_string().as_str()));

    // A memory hog: 1 GiB, a pause (while b answers), then on to 3 GiB,
    // past the session's memory limit (2 GiB by default).
    let flag = blink.disk_path(&box_a, "/root/memhog.flag");
    let hog = run_async(
        &server,
        "a",
        json!({
            "command": ["timeout", "120", "/root/probe", "memhog", "3072", "/root/memhog.flag"],
            "timeout_secs": 150,
        }),
    );
    assert!(
        wait_for(&flag, Duration::from_secs(60)),
        "the memory hog never reached 1 GiB"
    );
    answers("a memory hog in session a");
    let done = server.wait_run(&hog);
    let out = stdout(&done);
    assert!(
        !out.contains("SURVIVED"),
        "a memory hog got past the limit: {done}"
    );
    let killed = done["exit_code"] == 137 || done["signal"] == 9;
    let refused_alloc = line(&out, "memhog").is_some_and(|l| l.starts_with("refused"));
    assert!(
        killed || refused_alloc,
        "the memory hog did not end: {done}"
    );
}
