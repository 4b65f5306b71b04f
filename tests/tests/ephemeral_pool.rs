//! The pool of ephemeral sandboxes made ahead of time: every run gets a
//! fresh one (never another run's files), used ones are removed, and the
//! pool is topped up.

use std::time::Duration;

use blink_e2e::Blink;
use serde_json::json;

#[test]
fn pooled_runs_are_fresh_and_the_pool_refills() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink
        .server()
        .config("[sandbox]\nephemeral_pool = 2\n")
        .start();
    let runs_dir = blink.data_dir.path().join("sandboxes");
    let run_dirs = || {
        std::fs::read_dir(&runs_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
                    .count()
            })
            .unwrap_or(0)
    };
    let settle = |want: usize| {
        for _ in 0..200 {
            if run_dirs() == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(settle(2), "the pool never filled: {} sandboxes", run_dirs());
    for i in 0..6 {
        let run = server.run_wait(
            "/api/runs",
            json!({"command": ["sh", "-c", "test ! -e /root/marker && echo used > /root/marker && hostname"]}),
        );
        assert_eq!(run["exit_code"], 0, "run {i} saw another run's file: {run}");
        assert_eq!(blink_e2e::rest::stdout(&run), "blink-run\n");
    }
    // Used sandboxes go; the pool is back to its size.
    assert!(settle(2), "{} sandboxes after the runs", run_dirs());
}
