//! `GET /metrics`: Prometheus text that a Prometheus parser reads, behind
//! the API token, with counters that move with SSH and REST traffic.

use std::collections::HashMap;
use std::process::Command;

use blink_e2e::Server;
use blink_e2e::ssh::SshFixture;
use serde_json::json;

/// Every sample of a scrape by `name{label="v",...}` (labels sorted), as
/// Prometheus' reference parser reads it (`tests/clients/prometheus_parse.py`,
/// prometheus_client from PyPI).
fn scrape(server: &Server) -> HashMap<String, f64> {
    let (status, _, body) = server.get_bytes("/metrics", &[]);
    assert_eq!(status, 200);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/prometheus_parse.py");
    let out = blink_e2e::run(Command::new("python3").arg(script), &body);
    let (stdout, stderr) = blink_e2e::texts(&out);
    assert!(out.status.success(), "not Prometheus text: {stderr}");
    serde_json::from_str(&stdout).expect("samples")
}

/// Whether the reference parser is here (scripts/install-deps.sh).
fn parser_here() -> bool {
    let here = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    blink_sdk::testing::require(
        here,
        "python3 with prometheus_client (scripts/install-deps.sh)",
    )
}

fn get(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[test]
fn counters_move_with_traffic() {
    let Some(f) = SshFixture::new() else { return };
    if !parser_here() {
        return;
    }
    // Something of everything first, so that every family exists.
    assert_eq!(f.sh("true"), "");
    let before = scrape(&f.server);

    for _ in 0..2 {
        assert_eq!(f.sh("echo hi"), "hi\n");
    }
    let run = f
        .server
        .run_wait("/api/sessions/s1/runs", json!({"command": ["true"]}));
    assert_eq!(run["state"], "succeeded");
    let a = f.server.post("/api/sessions/s1/stop", json!({}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(f.sh("echo again"), "again\n");
    assert_eq!(f.server.get("/api/sessions/nope").status, 404);

    let after = scrape(&f.server);
    let delta = |key: &str| get(&after, key) - get(&before, key);
    assert_eq!(delta("blink_ssh_connections_total{}"), 3.0);
    assert_eq!(delta("blink_ssh_channels_total{kind=\"exec\"}"), 3.0);
    assert!(delta("blink_ssh_bytes_total{direction=\"out\"}") >= 12.0);
    assert_eq!(
        delta(
            "blink_http_requests_total{method=\"POST\",route=\"/api/sessions/{name}/runs\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            "blink_http_requests_total{method=\"GET\",route=\"/api/sessions/{name}\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(delta("blink_runs_total{state=\"succeeded\"}"), 1.0);
    assert_eq!(delta("blink_run_seconds_count{}"), 1.0);
    // Stopped, then started again by the last exec.
    assert!(delta("blink_sandbox_start_seconds_count{kind=\"session\"}") >= 1.0);
    assert_eq!(get(&after, "blink_sessions{state=\"running\"}"), 1.0);
    assert_eq!(get(&after, "blink_ssh_connections_open{}"), 0.0);
    assert_eq!(get(&after, "blink_runs_queued{}"), 0.0);
}

#[test]
fn metrics_are_behind_the_token() {
    let Some(blink) = blink_e2e::Blink::with_runtime() else {
        return;
    };
    if !parser_here() {
        return;
    }
    let server = blink.server().token("sekret").start();
    let (status, _, _) = server.get_bytes("/metrics", &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401);
    // The harness sends the token itself.
    let samples = scrape(&server);
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("blink_http_requests_total")),
        "{:?}",
        samples.keys().collect::<Vec<_>>()
    );
}
