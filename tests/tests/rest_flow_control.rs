//! WebSocket attach input is held back, not queued without bound and
//! never dropped, while the program does not read: the client's writes
//! wait, everything arrives, and the server's memory stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use blink_e2e::rest::{Received, read_until, send_bytes, send_control};
use blink_e2e::server_fixture;
use blink_e2e::ssh::sha;
use rand::RngCore;
use serde_json::json;

#[test]
fn attach_input_to_a_late_reader_arrives_whole_with_bounded_memory() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    server.open_session("s1");
    // Reads nothing for 3 s, then everything.
    let a = server.post(
        "/api/sessions/s1/spawn",
        json!({"command": ["sh", "-c", "sleep 3; sha256sum"]}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["id"].as_str().expect("id").to_owned();
    let mut socket = server.ws(&format!("/api/sessions/s1/executions/{id}/attach"));

    let idle = server.rss_kib();
    let peak = Arc::new(AtomicU64::new(idle));
    let sending = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sending, pid) = (peak.clone(), sending.clone(), server.pid());
        std::thread::spawn(move || {
            while sending.load(Ordering::SeqCst) {
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(rss, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // 128 MiB in 1 MiB frames: the sends block while the program sleeps.
    let mut data = vec![0u8; 128 << 20];
    rand::rng().fill_bytes(&mut data);
    for part in data.chunks(1 << 20) {
        send_bytes(&mut socket, part);
    }
    send_control(&mut socket, json!({"type": "eof"}));
    sending.store(false, Ordering::SeqCst);
    sampler.join().expect("sampler");

    let mut got = Received::default();
    assert!(
        read_until(&mut socket, &mut got, Duration::from_secs(120), |r| r
            .exit()
            .is_some()),
        "no exit: {:?}",
        got.events
    );
    assert_eq!(got.exit().expect("exit")["code"], 0, "{:?}", got.events);
    // Pipe mode: each frame starts with its stream (1 = stdout).
    assert_eq!(got.bytes.first(), Some(&1));
    let printed = String::from_utf8_lossy(&got.bytes[1..]).into_owned();
    assert!(printed.starts_with(&sha(&data)), "{printed}");
    let grew_mib = peak.load(Ordering::SeqCst).saturating_sub(idle) / 1024;
    assert!(
        grew_mib < 64,
        "server memory grew {grew_mib} MiB for input the program had not read"
    );
}
