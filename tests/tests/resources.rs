//! Sessions' sizes (docs/RESOURCES.md) on real sandboxes: the limits a
//! session asks for hold (a memory hog is OOM-killed and counted, a fork
//! bomb stops at the process limit, the CPU quota throttles), change live
//! on a running session, survive a restart; bad figures are refused naming
//! the field; and a session that misbehaves every way at once leaves its
//! neighbour and the server answering.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use blink_e2e::{Blink, Server, texts};
use serde_json::{Value, json};

/// A memory hog: a string that doubles until the kernel kills it.
const HOG: &str = r#"awk 'BEGIN { s = "xxxxxxxxxxxxxxxx"; while (1) s = s s }'"#;

/// A fork bomb that never lets go: every process starts copies of itself
/// forever, and (awk, not a shell) carries on when a fork fails.
const BOMB: &str = r#"cat > /tmp/bomb <<'EOF'
#!/bin/sh
exec awk 'BEGIN { while (1) system("/tmp/bomb &") }'
EOF
chmod +x /tmp/bomb && exec /tmp/bomb 2>/dev/null"#;

/// The memory hog again and again, through a failed fork or an OOM kill.
const HOGS: &str = r#"cat > /tmp/hog <<'EOF'
#!/bin/sh
exec awk 'BEGIN { s = "xxxxxxxxxxxxxxxx"; while (1) s = s s }'
EOF
chmod +x /tmp/hog && exec awk 'BEGIN { while (1) system("/tmp/hog") }' 2>/dev/null"#;

/// A server on real sandboxes whose limits are cgroups (what these tests
/// check); `None`, reported skipped, where the machine has neither.
fn cgroup_server(blink: &Blink, config: &str) -> Option<Server> {
    let server = blink.server().config(config).start();
    let product = server.get("/api/product");
    let memory = product.body["runtime"]["limits"]["memory"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    blink_sdk::testing::require(
        memory.starts_with("cgroup"),
        "limits here are not cgroups (no writable cgroup v1 or delegated v2)",
    )
    .then_some(server)
}

/// The first of `files` in the sandbox's cgroup directories (one per
/// controller under cgroup v1; one under v2), trimmed.
fn cgroup_value(box_id: &str, files: &[&str]) -> Option<String> {
    let roots = [
        "/sys/fs/cgroup/blink",
        "/sys/fs/cgroup/unified/blink",
        "/sys/fs/cgroup/memory/blink",
        "/sys/fs/cgroup/pids/blink",
        "/sys/fs/cgroup/cpu/blink",
    ];
    let prefix = format!("{box_id}.");
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for file in files {
                let path: PathBuf = entry.path().join(file);
                if let Ok(text) = std::fs::read_to_string(&path) {
                    return Some(text.trim().to_owned());
                }
            }
        }
    }
    None
}

/// The memory limit, process limit and CPU quota (µs per 100 ms; `None`
/// for none) the kernel holds for a running sandbox.
fn enforced(box_id: &str) -> (u64, u64, Option<u64>) {
    let memory = cgroup_value(box_id, &["memory.max", "memory.limit_in_bytes"]).expect("memory");
    let pids = cgroup_value(box_id, &["pids.max"]).expect("pids");
    let quota = cgroup_value(box_id, &["cpu.max", "cpu.cfs_quota_us"]).expect("cpu");
    let quota = quota.split_whitespace().next().unwrap_or("").to_owned();
    (
        memory.parse().expect("memory limit"),
        pids.parse().expect("pids limit"),
        quota.parse().ok(),
    )
}

fn stats(server: &Server, name: &str) -> Value {
    let a = server.get(&format!("/api/sessions/{name}/stats"));
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

fn usage(server: &Server, name: &str, field: &str) -> u64 {
    stats(server, name)["usage"][field].as_u64().unwrap_or(0)
}

/// Poll `f` every 100 ms for up to `within`.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Queue a run without waiting for it; its id.
fn queue(server: &Server, session: &str, script: &str) -> String {
    let a = server.post(
        &format!("/api/sessions/{session}/runs"),
        json!({"command": ["sh", "-c", script], "timeout_secs": 120}),
    );
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.body["id"].as_str().expect("run id").to_owned()
}

fn open(server: &Server, body: Value) -> Value {
    let a = server.post("/api/sessions", body);
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["session"].clone()
}

#[test]
fn a_sessions_limits_hold() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let Some(server) = cgroup_server(&blink, "") else {
        return;
    };
    let session = open(
        &server,
        json!({"name": "tight", "warm": true, "memory_mib": 64, "pids": 32, "cpus": 0.2}),
    );
    let r = &session["resources"];
    assert_eq!(
        (
            r["memory_mib"].clone(),
            r["pids"].clone(),
            r["cpus"].clone()
        ),
        (json!(64), json!(32), json!(0.2))
    );
    let box_id = session["box_id"].as_str().expect("box id");
    assert_eq!(enforced(box_id), (64 << 20, 32, Some(20_000)));

    // Memory: the hog is killed by the kernel, the session lives on, and
    // the kill is counted.
    let hog = server.run_wait(
        "/api/sessions/tight/runs",
        json!({"command": ["sh", "-c", HOG], "timeout_secs": 60}),
    );
    assert_eq!(
        (hog["state"].clone(), hog["signal"].clone()),
        (json!("failed"), json!(9)),
        "the hog was not killed: {hog}"
    );
    let s = stats(&server, "tight");
    assert!(s["usage"]["oom_kills"].as_u64().unwrap_or(0) >= 1, "{s}");
    let peak = s["usage"]["memory_peak_bytes"].as_u64().expect("peak");
    assert!(peak > 32 << 20 && peak <= 65 << 20, "peak {peak}: {s}");
    assert_eq!(server.sh("tight", "echo alive"), "alive\n");

    // Processes: a subshell starts a hundred background sleeps, of which
    // the limit lets fewer than 32 start (the shell gives up at the first
    // fork refused); what runs is counted and ended with builtins, as no
    // fork is left.
    let flood = server.run_wait(
        "/api/sessions/tight/runs",
        json!({"command": ["sh", "-c",
            "(for i in $(seq 100); do sleep 30 & done) 2>/dev/null; set -- /proc/[0-9]*; echo $#; kill -9 -1 2>/dev/null; true"],
            "timeout_secs": 60}),
    );
    let running: u64 = blink_e2e::rest::stdout(&flood)
        .trim()
        .parse()
        .expect("count");
    assert!(
        running > 16 && running <= 32,
        "{running} processes ran: {flood}"
    );
    // A fork bomb is held at the limit while it lasts.
    let bomb = queue(&server, "tight", BOMB);
    assert!(
        eventually(Duration::from_secs(30), || usage(&server, "tight", "pids")
            >= 28),
        "{}",
        stats(&server, "tight")
    );
    assert!(usage(&server, "tight", "pids") <= 32);
    let stop = server.post_raw("/api/sessions/tight/stop?force=true", None, b"");
    assert_eq!(stop.status, 200, "{:?}", stop.body);
    assert_eq!(server.wait_run(&bomb)["state"], "failed");

    // CPU: a spinner for 3 s gets at most its fifth of a core, and the
    // quota is seen throttling it.
    let before = usage(&server, "tight", "cpu_usec");
    server.run_wait(
        "/api/sessions/tight/runs",
        json!({"command": ["timeout", "3", "sh", "-c", "while :; do :; done"], "timeout_secs": 60}),
    );
    let s = stats(&server, "tight");
    let used = s["usage"]["cpu_usec"].as_u64().expect("cpu") - before;
    assert!(
        used > 0 && used < 1_500_000,
        "{used} µs of CPU in 3 s at 0.2 cores: {s}"
    );
    assert!(
        s["usage"]["cpu_throttled_periods"].as_u64().unwrap_or(0) > 0,
        "never throttled: {s}"
    );
    assert!(s["usage"]["pids"].as_u64().expect("pids") >= 1, "{s}");
}

#[test]
fn limits_change_on_a_running_session() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let Some(server) = cgroup_server(&blink, "") else {
        return;
    };
    let session = open(
        &server,
        json!({"name": "live", "warm": true, "memory_mib": 512, "pids": 256, "disk_mib": 256}),
    );
    let box_id = session["box_id"].as_str().expect("box id").to_owned();
    assert_eq!(enforced(&box_id), (512 << 20, 256, None));
    server.sh("live", "echo kept > /root/before");

    let a = server.patch(
        "/api/sessions/live/resources",
        json!({"memory_mib": 48, "pids": 24, "cpus": 0.1, "disk_mib": 512, "idle_timeout_secs": 900}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let applied = &a.body["applied"];
    for field in ["memory_mib", "pids", "cpus", "idle_timeout_secs"] {
        assert_eq!(applied[field], "live", "{field}: {:?}", a.body);
    }
    assert_eq!(applied["disk_mib"], "next_start", "{:?}", a.body);
    assert_eq!(a.body["resources"]["idle_timeout_secs"], 900);
    // The same sandbox, its new limits in the kernel, and they hold: a hog
    // that 512 MiB allowed is killed at 48.
    assert_eq!(enforced(&box_id), (48 << 20, 24, Some(10_000)));
    let kills = usage(&server, "live", "oom_kills");
    let hog = server.run_wait(
        "/api/sessions/live/runs",
        json!({"command": ["sh", "-c", "awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; for (i = 0; i < 22; i++) s = s s; print length(s) }'"], "timeout_secs": 60}),
    );
    assert_ne!(hog["exit_code"], 0, "64 MiB of string fit in 48 MiB: {hog}");
    assert!(usage(&server, "live", "oom_kills") > kills);
    // A limit below what the session holds and the kernel cannot take
    // back (tmpfs, no swap): cgroup v1 refuses it, and nothing changes;
    // v2 takes it and reclaims what it can.
    server.sh(
        "live",
        "dd if=/dev/zero of=/tmp/held bs=1M count=30 2>/dev/null",
    );
    let a = server.patch(
        "/api/sessions/live/resources",
        json!({"memory_mib": 16, "pids": 30}),
    );
    let mechanism = server.get("/api/product").body["runtime"]["limits"]["memory"].clone();
    if mechanism == "cgroup-v1" {
        assert_eq!(
            (a.status, a.code()),
            (400, "invalid_argument"),
            "{:?}",
            a.body
        );
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.starts_with("memory_mib:"), "{message}");
        assert_eq!(
            enforced(&box_id),
            (48 << 20, 24, Some(10_000)),
            "half changed"
        );
        assert_eq!(server.get("/api/sessions/live/resources").body["pids"], 24);
    } else {
        assert_eq!(a.status, 200, "{:?}", a.body);
        server.patch(
            "/api/sessions/live/resources",
            json!({"memory_mib": 48, "pids": 24}),
        );
    }
    server.sh("live", "rm /tmp/held");

    // The disk grows at the next start, with what it held.
    let info = server.get("/api/sessions/live").body;
    assert_eq!(info["disk"]["size_bytes"], 256u64 << 20, "{info}");
    assert_eq!(info["resources"]["disk_mib"], 512);
    let stop = server.post_raw("/api/sessions/live/stop?force=true", None, b"");
    assert_eq!(stop.status, 200, "{:?}", stop.body);
    assert_eq!(server.sh("live", "cat /root/before"), "kept\n");
    let info = server.get("/api/sessions/live").body;
    assert_eq!(info["disk"]["size_bytes"], 512u64 << 20, "{info}");
    let free_kib: u64 = server
        .sh("live", "df -k / | tail -1 | awk '{print $2}'")
        .trim()
        .parse()
        .expect("df");
    assert!(
        free_kib > 400 * 1024,
        "the filesystem did not grow: {free_kib} KiB"
    );
    // Stopped: the change waits for the next start.
    server.post_raw("/api/sessions/live/stop?force=true", None, b"");
    let a = server.patch("/api/sessions/live/resources", json!({"memory_mib": 96}));
    assert_eq!(
        a.body["applied"]["memory_mib"], "next_start",
        "{:?}",
        a.body
    );
    server.sh("live", "true");
    let box_id = server.get("/api/sessions/live").body["box_id"]
        .as_str()
        .expect("box")
        .to_owned();
    assert_eq!(enforced(&box_id).0, 96 << 20);
}

#[test]
fn bad_figures_are_refused_naming_the_field() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    // A CLI on the data dir first (it holds the data dir while it runs).
    for (flags, field) in [
        (vec!["--memory", "0"], "memory_mib"),
        (vec!["--cpus", "-1"], "cpus"),
        (vec!["--pids", "3"], "pids"),
        (vec!["--run-timeout", "0"], "run_timeout_secs"),
        (vec!["--cpus", "100000"], "cpus"),
    ] {
        let mut args = vec!["--json", "session", "open", "--name", "bad"];
        args.extend(&flags);
        let out = blink.run(&args);
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {:?}", texts(&out));
        let body: Value = serde_json::from_slice(&out.stdout).expect("JSON error");
        assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with(&format!("{field}:")),
            "{flags:?}: {message}"
        );
    }
    // A unit clap cannot read is named by its flag.
    let out = blink.run(&["session", "open", "--name", "bad", "--memory=-5"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(texts(&out).1.contains("--memory"), "{:?}", texts(&out));
    let (code, ls) = blink.json(&["session", "ls"]);
    assert_eq!(
        (code, ls),
        (Some(0), json!([])),
        "a refused session was made"
    );
    blink.ok(&["session", "open", "--name", "ok", "--memory", "128M"]);
    let out = blink.run(&["session", "resources", "--name", "ok", "--pids", "1"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(texts(&out).1.contains("pids:"), "{:?}", texts(&out));

    let server = blink
        .server()
        .config("[sandbox]\nmemory_mib = 512\nmax_memory_mib = 1024\nmax_cpus = 1.5\n")
        .start();
    let cases = [
        (json!({"memory_mib": -1}), "memory_mib"),
        (json!({"memory_mib": 0}), "memory_mib"),
        (json!({"memory_mib": 2048}), "memory_mib"),
        (json!({"cpus": 0}), "cpus"),
        (json!({"cpus": 2}), "cpus"),
        (json!({"pids": 1e20}), "pids"),
        (json!({"pids": 12.5}), "pids"),
        (json!({"disk_mib": -64}), "disk_mib"),
        (json!({"run_timeout_secs": 0}), "run_timeout_secs"),
        (json!({"run_timeout_secs": 1e9}), "run_timeout_secs"),
        (json!({"idle_timeout_secs": -5}), "idle_timeout_secs"),
    ];
    for (figures, field) in &cases {
        let mut body = figures.clone();
        body["name"] = json!("bad");
        for a in [
            server.post("/api/sessions", body),
            server.patch("/api/sessions/ok/resources", figures.clone()),
        ] {
            assert_eq!(a.status, 400, "{figures}: {:?}", a.body);
            assert_eq!(a.code(), "invalid_argument", "{figures}: {:?}", a.body);
            let message = a.body["error"]["message"].as_str().unwrap_or("");
            assert!(
                message.starts_with(&format!("{field}:")),
                "{figures}: {message}"
            );
        }
    }
    assert_eq!(server.get("/api/sessions/bad").status, 404);
    assert_eq!(
        server.get("/api/sessions/ok/resources").body["memory_mib"],
        128,
        "a refused change changed something"
    );
}

#[test]
fn a_misbehaving_session_leaves_its_neighbour_and_the_server_responsive() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let Some(server) = cgroup_server(&blink, "[rest]\nmax_concurrent_runs = 8\n") else {
        return;
    };
    open(
        &server,
        json!({"name": "noisy", "warm": true, "memory_mib": 64, "pids": 64, "cpus": 0.5}),
    );
    open(&server, json!({"name": "quiet", "warm": true}));
    server.sh("quiet", "true");

    // A CPU spinner and a memory hog (again and again), then a fork bomb.
    let spinner = queue(&server, "noisy", "while :; do :; done");
    let hog = queue(&server, "noisy", HOGS);
    assert!(
        eventually(Duration::from_secs(30), || usage(
            &server,
            "noisy",
            "oom_kills"
        ) >= 1),
        "the hog was never OOM-killed: {}",
        stats(&server, "noisy")
    );
    let bomb = queue(&server, "noisy", BOMB);
    assert!(
        eventually(Duration::from_secs(30), || usage(&server, "noisy", "pids")
            >= 60),
        "the fork bomb did not reach the limit: {}",
        stats(&server, "noisy")
    );

    for round in 0..5 {
        let s = stats(&server, "noisy");
        assert!(s["usage"]["pids"].as_u64().unwrap_or(0) <= 64, "{s}");
        let t = Instant::now();
        let run = server.run_wait(
            "/api/sessions/quiet/runs",
            json!({"command": ["echo", "fine"]}),
        );
        let exec = t.elapsed();
        assert_eq!(blink_e2e::rest::stdout(&run), "fine\n", "{run}");
        let t = Instant::now();
        let health = server.get("/api/health");
        let probe = t.elapsed();
        assert_eq!(health.status, 200);
        eprintln!("round {round}: exec in the neighbour {exec:?}, /api/health {probe:?}");
        assert!(
            exec < Duration::from_secs(1) && probe < Duration::from_secs(1),
            "round {round}: exec in the neighbour took {exec:?}, /api/health {probe:?}"
        );
    }
    let s = stats(&server, "noisy");
    assert!(
        s["usage"]["cpu_throttled_periods"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );

    let stop = server.post_raw("/api/sessions/noisy/stop?force=true", None, b"");
    assert_eq!(stop.status, 200, "{:?}", stop.body);
    for id in [spinner, hog, bomb] {
        let run = server.wait_run(&id);
        assert_eq!(run["state"], "failed", "{run}");
    }
    assert_eq!(server.sh("quiet", "echo still"), "still\n");
}

#[test]
fn sizes_survive_a_restart() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&[
        "session",
        "open",
        "--name",
        "kept",
        "--cpus",
        "0.3",
        "--memory",
        "100M",
        "--pids",
        "40",
        "--run-timeout",
        "2",
        "--idle-timeout",
        "10m",
    ]);
    let (code, info) = blink.json(&["session", "info", "--name", "kept"]);
    assert_eq!(code, Some(0));
    let expected = json!({"cpus": 0.3, "memory_mib": 100, "pids": 40, "run_timeout_secs": 2, "idle_timeout_secs": 600});
    for (k, v) in expected.as_object().expect("object") {
        assert_eq!(&info["resources"][k], v, "{k}: {info}");
    }
    let text = blink.ok(&["session", "info", "--name", "kept"]);
    assert!(text.contains("cpus 0.3, memory 100 MiB, pids 40"), "{text}");

    for restart in 0..2 {
        let Some(server) = cgroup_server(&blink, "") else {
            return;
        };
        let info = server.get("/api/sessions/kept").body;
        for (k, v) in expected.as_object().expect("object") {
            assert_eq!(&info["resources"][k], v, "restart {restart}, {k}: {info}");
        }
        server.sh("kept", "true");
        let box_id = info["box_id"].as_str().expect("box");
        assert_eq!(
            enforced(box_id),
            (100 << 20, 40, Some(30_000)),
            "restart {restart}"
        );
        // The session's own run timeout, where the run asks for none.
        let run = server.run_wait(
            "/api/sessions/kept/runs",
            json!({"command": ["sleep", "30"]}),
        );
        assert_eq!(run["state"], "timed_out", "{run}");
    }
    let (code, stats) = blink.json(&["session", "resources", "--name", "kept"]);
    assert_eq!(code, Some(0), "{stats}");
    assert_eq!(stats["resources"]["pids"], 40, "{stats}");
    assert_eq!(stats["usage"]["source"], "none", "stopped: {stats}");
}
