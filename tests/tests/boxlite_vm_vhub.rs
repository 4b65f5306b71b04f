//! A box's V-Hub endpoint for real (docs/VHUB.md, Endpoints and Relay):
//! the release blink-server on `runtime = "boxlite"` with
//! `[sandbox] boxlite_vhub_relay = true`, in L1 under QEMU TCG like
//! `boxlite_vm.rs`. A program in the box emits events that the REST event
//! stream carries, calls the hub's own method, and emits 200 events in a
//! row through the relay.

use std::time::Instant;

use blink_e2e::ssh::Client;
use blink_e2e::vm::ssh;
use blink_e2e::{texts, vm};
use serde_json::json;

const TOKEN: &str = "vm-test-token-0123456789abcdef";

#[test]
fn a_box_reaches_the_hub_through_its_relay() {
    vm::run_suite(suite);
}

fn suite() {
    let started = Instant::now();
    let (server, _share) = vm::boxlite_server(
        "[images]\npull = \"never\"\n[sandbox]\nephemeral_pool = 0\nboxlite_vhub_relay = true\n",
        TOKEN,
    );
    let health = server.get("/api/health");
    assert_eq!(health.body["runtime"], "boxlite", "{}", health.body);
    let client = Client::new();
    let made = server.post("/api/sessions", json!({"name": "agent"}));
    assert_eq!(made.status, 201, "{:?}", made.body);
    let key = server.post(
        "/api/sessions/agent/keys",
        json!({"key": client.public_key("id")}),
    );
    assert!(key.status == 201 || key.status == 200, "{:?}", key.body);
    // The relay starts a moment after the box: the first emit waits for
    // the endpoint (the guest client retries for 10 s).
    let out = ssh(&client, &server, "agent", &["true"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    eprintln!(
        "[boxlite-vm-vhub +{:.0}s] session up",
        started.elapsed().as_secs_f64()
    );

    // The V-Hub, relayed out of the box: an event a box program emits
    // reaches the REST event stream; a call to the hub's own method comes
    // back; 200 events in a row, with their latency through the relay.
    let events = server.events("agent");
    let out = ssh(
        &client,
        &server,
        "agent",
        &[r#"/.blink/guest vhub emit box.hello '{"vm":true}'"#],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    let event = blink_e2e::rest::next_event(&events);
    assert_eq!(
        (&event["session"], &event["topic"], &event["data"]),
        (&json!("agent"), &json!("box.hello"), &json!({"vm": true})),
        "{event}"
    );
    let script =
        "/.blink/guest vhub call hub.stats && /.blink/guest vhub emit box.many 1 --repeat 200";
    let out = ssh(&client, &server, "agent", &[script], b"");
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout} {stderr}");
    let mut lines = stdout
        .lines()
        .map(serde_json::from_str::<serde_json::Value>);
    let stats = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(stats["connections"].as_u64() >= Some(1), "{stdout}");
    let repeated = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(repeated["calls"], 200, "{stdout}");
    eprintln!("[boxlite-vm] event round trips through the relay: {repeated}");
    for i in 0..200 {
        let event = blink_e2e::rest::next_event(&events);
        assert_eq!(event["topic"], "box.many", "event {i}: {event}");
    }
    eprintln!(
        "[boxlite-vm-vhub +{:.0}s] done",
        started.elapsed().as_secs_f64()
    );
}
