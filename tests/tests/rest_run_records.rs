//! REST run records outlive the server: a control plane polling `GET
//! /api/runs/{id}` across a SIGKILL and a restart gets the finished run's
//! result, and the run that was executing as `lost` with a reason.

use std::time::{Duration, Instant};

use blink_e2e::Blink;
use serde_json::json;

#[test]
fn run_results_survive_a_kill_and_restart() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let mut server = blink.server().start();
    let a = server.post("/api/sessions", json!({"name": "s"}));
    assert_eq!(a.status, 201, "{:?}", a.body);

    let done = server.run_wait(
        "/api/sessions/s/runs",
        json!({"command": ["sh", "-c", "echo kept; echo err >&2; exit 3"]}),
    );
    let done_id = done["id"].as_str().expect("id").to_owned();
    assert_eq!(done["state"], "failed", "{done}");

    // A run still executing when the server dies.
    let a = server.post(
        "/api/sessions/s/runs",
        json!({"command": ["sh", "-c", "echo started; sleep 60"]}),
    );
    assert_eq!(a.status, 202, "{:?}", a.body);
    let lost_id = a.body["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get(&format!("/api/runs/{lost_id}")).body["state"] != "running" {
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(!server.signal_and_wait("KILL").success());
    let server = blink.server().start();

    let a = server.get(&format!("/api/runs/{done_id}"));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["state"], "failed");
    assert_eq!(a.body["exit_code"], 3);
    assert_eq!(a.body["stdout"]["data"], "kept\n");
    assert_eq!(a.body["stderr"]["data"], "err\n");
    assert_eq!(a.body["session"], "s");

    let a = server.get(&format!("/api/runs/{lost_id}"));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["state"], "lost", "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], "run_lost");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("was running")),
        "{:?}",
        a.body
    );
    assert!(a.body["finished_at_ms"].as_u64().is_some(), "{:?}", a.body);

    // Unknown ids are still 404; new runs work beside the old records.
    assert_eq!(server.get("/api/runs/r-nope").status, 404);
    assert_eq!(server.sh("s", "echo again"), "again\n");
    // Records are the server's alone.
    let dir = blink.data_dir.path().join("runs");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&dir).expect("runs dir").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
}

#[test]
fn finished_runs_past_their_retention_are_forgotten() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let config = "[rest]\nrun_retention_secs = 1\n";
    let mut server = blink.server().config(config).start();
    let done = server.run_wait("/api/runs", json!({"command": ["true"]}));
    let id = done["id"].as_str().expect("id").to_owned();
    assert_eq!(server.get(&format!("/api/runs/{id}")).status, 200);
    assert!(server.signal_and_wait("TERM").success());
    std::thread::sleep(Duration::from_millis(1500));
    let server = blink.server().config(config).start();
    assert_eq!(server.get(&format!("/api/runs/{id}")).status, 404);
    let left = std::fs::read_dir(blink.data_dir.path().join("runs"))
        .expect("runs dir")
        .count();
    assert_eq!(left, 0, "records past their retention are removed");
}
