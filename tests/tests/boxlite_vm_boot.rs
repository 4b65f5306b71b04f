//! A micro-VM that does not boot in time, for real (docs/BOXLITE.md,
//! "A boot that hangs"): the release blink-server on `runtime =
//! "boxlite"`, in L1 under QEMU TCG like `boxlite_vm.rs`, with
//! `[sandbox] boxlite_boot_timeout_ms` below what a boot takes there
//! (3-10 s nested; 1 ms where the server runs directly on hardware KVM).
//! Every boot is then a hung one: it is stopped and tried once more, and
//! the caller gets `sandbox_dead` naming the setting instead of a request
//! that never ends; the session is still there, and goes when removed.

use std::time::Instant;

use blink_e2e::vm;
use serde_json::json;

const TOKEN: &str = "vm-test-token-0123456789abcdef";

#[test]
fn a_boot_past_its_time_is_stopped_retried_and_reported() {
    vm::run_suite(suite);
}

fn suite() {
    let started = Instant::now();
    // Long enough, nested, for BoxLite to have spawned the VM (well under
    // a second there), so abandoning it stops a VM that runs.
    let within_ms = if vm::nested() { 1500 } else { 1 };
    let (server, _share) = vm::boxlite_server(
        &format!(
            "[images]\npull = \"never\"\n[sandbox]\nephemeral_pool = 0\nboxlite_boot_timeout_ms = {within_ms}\n"
        ),
        TOKEN,
    );
    let health = server.get("/api/health");
    assert_eq!(health.body["runtime"], "boxlite", "{}", health.body);
    let made = server.post("/api/sessions", json!({"name": "slow"}));
    assert_eq!(made.status, 201, "{:?}", made.body);

    // A run needs the box: two boots past their time, then the error.
    let run = server.post(
        "/api/sessions/slow/runs?wait=true",
        json!({"command": ["echo", "never"]}),
    );
    eprintln!(
        "[boxlite-vm-boot +{:.0}s] run answered {}: {}",
        started.elapsed().as_secs_f64(),
        run.status,
        run.body
    );
    // The run is made, and ends with the sandbox's error instead of an
    // exit code.
    assert_eq!(run.status, 200, "{:?}", run.body);
    assert_eq!(run.body["error"]["code"], "sandbox_dead", "{}", run.body);
    assert!(run.body["exit_code"].is_null(), "{}", run.body);
    let text = run.body["error"]["message"].to_string();
    assert!(
        text.contains(&format!("did not boot within {within_ms} ms, 2 times")),
        "{text}"
    );
    assert!(text.contains("boxlite_boot_timeout_ms"), "{text}");
    let log = server.log();
    let hung = log.matches("the box did not boot in time").count();
    assert_eq!(hung, 2, "two hung boots logged:\n{log}");
    assert!(
        log.contains("booted once more"),
        "the first hung boot is tried again:\n{log}"
    );

    // The session is not written off: the next request boots it afresh
    // (and, here, meets the same timeout).
    let again = server.post(
        "/api/sessions/slow/runs?wait=true",
        json!({"command": ["echo", "never"]}),
    );
    assert_eq!(
        again.body["error"]["code"], "sandbox_dead",
        "{}",
        again.body
    );
    let log = server.log();
    assert_eq!(log.matches("the box did not boot in time").count(), 4);

    // Nothing half-made: the session is there, not running, and removing
    // it removes its box.
    let info = server.get("/api/sessions/slow");
    assert_eq!(info.status, 200, "{:?}", info.body);
    assert_ne!(info.body["state"], "running", "{}", info.body);
    let gone = server.delete("/api/sessions/slow?force=true");
    assert!(gone.status < 300, "{:?}", gone.body);
    assert_eq!(server.get("/api/sessions/slow").status, 404);
    eprintln!(
        "[boxlite-vm-boot +{:.0}s] done",
        started.elapsed().as_secs_f64()
    );
}
