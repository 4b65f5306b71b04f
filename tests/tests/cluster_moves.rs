//! Moving sessions between nodes and restoring them when a node dies
//! (docs/SCALE.md), on a real 3-member etcd, 3 nodes and routers on
//! 127.0.0.1. Every state change is one etcd transaction; a router that
//! crashes at any step (the test-only `BLINK_TEST_CRASH_AT`) leaves the
//! session in exactly one place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blink_e2e::Server;
use blink_e2e::cluster::{Cluster, Setup, TOKEN, eventually};
use serde_json::{Value, json};

const NODES: [&str; 3] = ["node-0", "node-1", "node-2"];

/// The nodes holding `name`, each asked directly.
fn holders(c: &Cluster, name: &str) -> Vec<String> {
    NODES
        .iter()
        .filter(|n| c.held_by(n).contains(&name.to_owned()))
        .map(|n| n.to_string())
        .collect()
}

/// A node other than `node`.
fn other(node: &str) -> &'static str {
    NODES
        .into_iter()
        .find(|n| *n != node)
        .expect("another node")
}

/// A run through `server` that may fail: its status and body.
fn try_sh(server: &Server, session: &str, script: &str) -> (u16, Value) {
    let a = server.post(
        &format!("/api/sessions/{session}/runs?wait=true"),
        json!({"command": ["sh", "-c", script]}),
    );
    (a.status, a.body)
}

#[test]
fn a_session_moves_while_a_client_polls_and_answers_from_one_node() {
    let Some(c) = Cluster::start(&[4, 4, 4], 2, 10) else {
        return;
    };
    let a = c.router(0).post("/api/sessions", json!({"name": "m1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    c.router(0).sh("m1", "echo before > /var/blink/memory/mark");
    let first = c.route("m1").expect("route");

    // A client appends a line per request through the other router while
    // the session moves twice; every append it was told succeeded must be
    // in the copy that remains.
    let stop = AtomicBool::new(false);
    let (succeeded, unavailable) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let (mut ok, mut moving) = (Vec::new(), 0);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                i += 1;
                let (status, body) = try_sh(
                    c.router(1),
                    "m1",
                    &format!("echo {i} >> /var/blink/memory/log"),
                );
                match (status, body["exit_code"].as_i64()) {
                    (200, Some(0)) => ok.push(i),
                    (503, _) => {
                        assert_eq!(body["error"]["code"], "session_moving", "{body}");
                        moving += 1;
                    }
                    // A run cut by the move's stop: neither counted nor
                    // required to be kept.
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, moving)
        });
        std::thread::sleep(Duration::from_millis(500));
        let second = other(&first);
        let a = c
            .router(0)
            .post("/api/sessions/m1/move", json!({"to": second}));
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["node"], second);
        std::thread::sleep(Duration::from_millis(500));
        let third = NODES
            .into_iter()
            .find(|n| *n != first && *n != second)
            .expect("third");
        let a = c
            .router(1)
            .post("/api/sessions/m1/move", json!({"to": third}));
        assert_eq!(a.status, 200, "{:?}", a.body);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        poller.join().expect("poller")
    });
    let last = c.route("m1").expect("route");
    assert_ne!(last, first);
    assert_eq!(holders(&c, "m1"), vec![last.clone()]);
    assert_eq!(
        c.router(0).sh("m1", "cat /var/blink/memory/mark").trim(),
        "before"
    );
    let log: Vec<i64> = c
        .node(&last)
        .sh("m1", "cat /var/blink/memory/log")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for i in &succeeded {
        assert!(log.contains(i), "append {i} acknowledged but lost: {log:?}");
    }
    assert!(!succeeded.is_empty());
    eprintln!(
        "{} appends acknowledged, {unavailable} answered session_moving",
        succeeded.len()
    );
    // Moving to where it is changes nothing; to no node is refused.
    let a = c
        .router(0)
        .post("/api/sessions/m1/move", json!({"to": last}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    let a = c
        .router(0)
        .post("/api/sessions/m1/move", json!({"to": "node-7"}));
    assert_eq!(
        (a.status, a.code()),
        (503, "node_unavailable"),
        "{:?}",
        a.body
    );
    let a = c
        .router(0)
        .post("/api/sessions/m1/move", json!({"where": "x"}));
    assert_eq!(a.status, 400, "{:?}", a.body);
}

#[test]
fn a_router_crash_at_any_step_of_a_move_leaves_the_session_in_one_place() {
    let Some(c) = Cluster::start(&[8, 8, 8], 1, 10) else {
        return;
    };
    // (crash point, whether the session ends where it went)
    let points = [
        ("after-mark", false),
        ("after-export", false),
        ("after-import", false),
        ("after-switch", true),
    ];
    for (i, (point, moved)) in points.into_iter().enumerate() {
        let name = format!("c{i}");
        let a = c.router(0).post("/api/sessions", json!({"name": name}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        c.router(0)
            .sh(&name, &format!("echo {point} > /var/blink/memory/mark"));
        let from = c.route(&name).expect("route");
        let to = other(&from);
        let (_blink, mut crasher) = c.start_router_with(2, &[("BLINK_TEST_CRASH_AT", point)]);
        let answer = ureq::post(&crasher.url(&format!("/api/sessions/{name}/move")))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .timeout(Duration::from_secs(120))
            .send_json(json!({"to": to}));
        assert!(answer.is_err(), "{point}: the router answered: {answer:?}");
        assert!(
            crasher.wait_exit(Duration::from_secs(10)).is_some(),
            "{point}: the router did not crash"
        );
        // Through a router that did not crash: the session answers (once
        // the dead mover's lease is gone), from one node.
        eventually(
            &format!("{name} answers after {point}"),
            Duration::from_secs(30),
            || c.router(0).get(&format!("/api/sessions/{name}")).status == 200,
        );
        let expected = if moved { to.to_owned() } else { from.clone() };
        assert_eq!(
            c.route(&name).as_deref(),
            Some(expected.as_str()),
            "{point}"
        );
        assert_eq!(holders(&c, &name), vec![expected.clone()], "{point}");
        assert_eq!(
            c.router(0).sh(&name, "cat /var/blink/memory/mark").trim(),
            point
        );
        // No lock, no leftover, no mark stays behind.
        let route: Value = serde_json::from_str(
            &c.etcd
                .value(&format!("/blink-test/sessions/{name}"))
                .expect("route"),
        )
        .expect("json");
        assert!(
            route.get("moving_to").is_none() && route.get("leftover_on").is_none(),
            "{route}"
        );
        assert!(c.etcd.value(&format!("/blink-test/moves/{name}")).is_none());
    }
}

#[test]
fn a_dead_nodes_cold_sessions_come_back_from_their_export_and_warm_ones_are_lost() {
    let Some(c) = Cluster::start(&[8, 8, 8], 2, 2) else {
        return;
    };
    for (name, warm) in [("cold1", false), ("warm1", true)] {
        let a = c
            .router(0)
            .post("/api/sessions", json!({"name": name, "warm": warm}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        c.router(0)
            .sh(name, &format!("echo {name} > /var/blink/memory/mark"));
    }
    // Both on one node, each with its export in the shared directory.
    let victim = c.route("cold1").expect("route");
    if c.route("warm1").as_deref() != Some(victim.as_str()) {
        let a = c
            .router(1)
            .post("/api/sessions/warm1/move", json!({"to": victim}));
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    for name in ["cold1", "warm1"] {
        let a = c
            .router(0)
            .post(&format!("/api/sessions/{name}/backup"), json!({}));
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert!(c.export_dir().join(format!("{name}.boxlite")).is_file());
    }
    let i: usize = victim.trim_start_matches("node-").parse().expect("index");
    c.nodes[i].1.signal("KILL");
    let died = Instant::now();
    // Nobody asks for it: the routers' sweep restores it on its own.
    eventually(
        "cold1 is routed to a live node",
        Duration::from_secs(60),
        || c.route("cold1").is_some_and(|n| n != victim),
    );
    eventually("cold1 answers again", Duration::from_secs(60), || {
        c.router(1).get("/api/sessions/cold1").status == 200
    });
    eprintln!(
        "cold1 answered again {:?} after its node died",
        died.elapsed()
    );
    let now = c.route("cold1").expect("route");
    assert_ne!(now, victim);
    assert_eq!(
        c.router(0).sh("cold1", "cat /var/blink/memory/mark").trim(),
        "cold1"
    );
    let a = c.router(0).get("/api/sessions/warm1");
    assert_eq!((a.status, a.code()), (503, "session_lost"), "{:?}", a.body);
    assert_eq!(c.route("warm1").as_deref(), Some(victim.as_str()));
}

/// A node killed at a step of a move (the test-only `BLINK_TEST_PAUSE_AT`
/// holds the moving router there): the session ends where it was or where
/// it went, answering from one live node; its new node dead right after
/// the switch, it comes back on another from the move's export.
#[test]
fn a_node_crash_at_any_step_of_a_move_leaves_the_session_in_one_place() {
    let Some(c) = Cluster::start(&[8, 8, 8, 8, 8], 1, 2) else {
        return;
    };
    let names: Vec<String> = (0..5).map(|i| format!("node-{i}")).collect();
    let mut dead: Vec<String> = Vec::new();
    // (step, the node killed there, where the session ends)
    let cases = [
        ("after-export", "target", "source"),
        ("after-export", "source", "target"),
        ("after-switch", "target", "another"),
    ];
    for (i, (step, victim, ends)) in cases.into_iter().enumerate() {
        // Nothing is placed on a node killed before: its lease is gone.
        eventually("the dead nodes drop out", Duration::from_secs(30), || {
            let live = c.live(0);
            dead.iter().all(|d| !live.contains_key(d))
        });
        let name = format!("n{i}");
        let a = c.router(0).post("/api/sessions", json!({"name": name}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        c.router(0)
            .sh(&name, &format!("echo {name} > /var/blink/memory/mark"));
        let from = c.route(&name).expect("route");
        let to = names
            .iter()
            .find(|n| **n != from && !dead.contains(n))
            .expect("a live target")
            .clone();
        let pause = tempfile::tempdir().expect("tempdir");
        let go = pause.path().join("go");
        let reached = pause.path().join("go.reached");
        let (_blink, mover) = c.start_router_with(
            10,
            &[
                ("BLINK_TEST_PAUSE_AT", step),
                ("BLINK_TEST_PAUSE_FILE", go.to_str().expect("utf-8 path")),
            ],
        );
        let url = mover.url(&format!("/api/sessions/{name}/move"));
        let target = to.clone();
        let moving = std::thread::spawn(move || {
            match ureq::post(&url)
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .timeout(Duration::from_secs(120))
                .send_json(json!({"to": target}))
            {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(code, _)) => code,
                Err(e) => panic!("the move's request: {e}"),
            }
        });
        eventually(
            &format!("{name}'s move reaches {step}"),
            Duration::from_secs(60),
            || reached.exists(),
        );
        let killed = if victim == "target" {
            to.clone()
        } else {
            from.clone()
        };
        let k: usize = killed
            .trim_start_matches("node-")
            .parse()
            .expect("node index");
        c.nodes[k].1.signal("KILL");
        dead.push(killed.clone());
        std::fs::write(&go, "").expect("release the mover");
        let status = moving.join().expect("the mover thread");
        match ends {
            // The import failed: the move says so; the session stays.
            "source" => assert!(status >= 500, "{step}/{victim}: answered {status}"),
            _ => assert_eq!(status, 200, "{step}/{victim}"),
        }
        eventually(
            &format!("{name} answers after {victim} died at {step}"),
            Duration::from_secs(60),
            || c.router(0).get(&format!("/api/sessions/{name}")).status == 200,
        );
        let now = c.route(&name).expect("route");
        match ends {
            "source" => assert_eq!(now, from, "{step}/{victim}"),
            "target" => assert_eq!(now, to, "{step}/{victim}"),
            _ => assert!(!dead.contains(&now), "{step}/{victim}: on dead {now}"),
        }
        // One live node holds it, and it is the session it was.
        let holding: Vec<&String> = names
            .iter()
            .filter(|n| !dead.contains(n) && c.held_by(n).contains(&name))
            .collect();
        assert_eq!(holding, vec![&now], "{step}/{victim}");
        assert_eq!(
            c.router(0).sh(&name, "cat /var/blink/memory/mark").trim(),
            name
        );
        let route: Value = serde_json::from_str(
            &c.etcd
                .value(&format!("/blink-test/sessions/{name}"))
                .expect("route"),
        )
        .expect("json");
        assert!(route.get("moving_to").is_none(), "{route}");
    }
}

/// A request that read the route before a move's mark and reaches the
/// source during the move is refused there (the source is fenced), not
/// run on a copy about to be exported and removed: nothing acknowledged
/// is lost. (A move given up lifts the fence: the node-crash and router-
/// crash tests run the session where it was afterwards.)
#[test]
fn a_request_reaching_the_source_during_a_move_is_refused_not_lost() {
    let Some(c) = Cluster::start(&[8, 8, 8], 1, 10) else {
        return;
    };
    let a = c.router(0).post("/api/sessions", json!({"name": "f1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    c.router(0).sh("f1", "echo before > /var/blink/memory/log");
    let from = c.route("f1").expect("route");
    let to = other(&from);
    let pause = tempfile::tempdir().expect("tempdir");
    let go = pause.path().join("go");
    let (_blink, mover) = c.start_router_with(
        10,
        &[
            ("BLINK_TEST_PAUSE_AT", "after-export"),
            ("BLINK_TEST_PAUSE_FILE", go.to_str().expect("utf-8 path")),
        ],
    );
    let url = mover.url("/api/sessions/f1/move");
    let moving = std::thread::spawn(move || {
        ureq::post(&url)
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .timeout(Duration::from_secs(120))
            .send_json(json!({"to": to}))
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    eventually(
        "the move has exported its source",
        Duration::from_secs(60),
        || pause.path().join("go.reached").exists(),
    );
    // As a router with an old read would: straight to the source, after
    // the export (unfenced, this would start the session there and
    // acknowledge a write the move then drops).
    let (status, body) = try_sh(c.node(&from), "f1", "echo late >> /var/blink/memory/log");
    // The run is answered as failed, with the reason: never acknowledged.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "failed", "{body}");
    assert_eq!(body["error"]["code"], "session_moving", "{body}");
    std::fs::write(&go, "").expect("release the mover");
    assert_eq!(moving.join().expect("mover"), Ok(200));
    assert_eq!(c.route("f1").as_deref(), Some(to));
    assert_eq!(
        c.router(0).sh("f1", "cat /var/blink/memory/log").trim(),
        "before"
    );
}

/// `blink_cluster_exports_total{result}` as node `node` reports it.
fn exports_counted(c: &Cluster, node: &str, result: &str) -> u64 {
    let (status, _, body) = c.node(node).get_bytes("/metrics", &[]);
    assert_eq!(status, 200);
    let line = format!("blink_cluster_exports_total{{result=\"{result}\"}} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// With `export_on_stop`, a node exports a cold session whenever it stops
/// after a change (a caller's stop, the idle policy), never again while
/// unchanged and never a warm one; its node dead, the session comes back
/// with what its last stop left, nobody having asked for a backup.
#[test]
fn a_cold_session_is_exported_when_it_stops_and_comes_back_with_it_after_its_node_dies() {
    let Some(c) = Cluster::start_with(&[8, 8, 8], 2, 2, |dir| Setup {
        node_extra: format!("export_dir = {dir:?}\nexport_on_stop = true\n"),
        ..Setup::default()
    }) else {
        return;
    };
    let a = c.router(0).post(
        "/api/sessions",
        json!({"name": "auto1", "idle_timeout_secs": 2}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let home = c.route("auto1").expect("route");
    let a = c
        .router(0)
        .post("/api/sessions", json!({"name": "warm2", "warm": true}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    if c.route("warm2").as_deref() != Some(home.as_str()) {
        let a = c
            .router(1)
            .post("/api/sessions/warm2/move", json!({"to": home}));
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    // A move keeps its export there: start from none.
    let export = c.export_dir().join("auto1.boxlite");
    let _ = std::fs::remove_file(c.export_dir().join("warm2.boxlite"));
    let written = || exports_counted(&c, &home, "written");
    let before = written();

    // A caller's stop after a change: exported.
    c.router(0).sh("auto1", "echo one > /var/blink/memory/mark");
    let a = c.router(1).post("/api/sessions/auto1/stop", json!({}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    eventually(
        "auto1's export after its stop",
        Duration::from_secs(60),
        || written() == before + 1,
    );
    assert!(export.is_file());
    let first = std::fs::metadata(&export)
        .expect("export")
        .modified()
        .expect("mtime");

    // Stopped again, unchanged: the node is woken and writes nothing.
    let a = c.router(0).post("/api/sessions/auto1/stop", json!({}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(written(), before + 1, "an unchanged session exported again");

    // Changed, then stopped by the idle policy (2 s): exported again.
    c.router(1).sh("auto1", "echo two > /var/blink/memory/mark");
    eventually(
        "auto1's export after its idle stop",
        Duration::from_secs(60),
        || written() == before + 2,
    );
    let second = std::fs::metadata(&export)
        .expect("export")
        .modified()
        .expect("mtime");
    assert!(second > first, "the export was not replaced");
    assert!(
        !c.export_dir().join("warm2.boxlite").exists(),
        "a warm session was exported"
    );
    // Only whole exports are in the directory, nothing partial.
    let names: Vec<String> = std::fs::read_dir(c.export_dir())
        .expect("exports")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["auto1.boxlite".to_owned()], "{names:?}");

    // Its node dies: the routers bring it back elsewhere from that export.
    let i: usize = home.trim_start_matches("node-").parse().expect("index");
    c.nodes[i].1.signal("KILL");
    eventually(
        "auto1 is routed to a live node",
        Duration::from_secs(60),
        || c.route("auto1").is_some_and(|n| n != home),
    );
    eventually("auto1 answers again", Duration::from_secs(60), || {
        c.router(1).get("/api/sessions/auto1").status == 200
    });
    assert_eq!(
        c.router(0).sh("auto1", "cat /var/blink/memory/mark").trim(),
        "two"
    );
    let a = c.router(0).get("/api/sessions/warm2");
    assert_eq!((a.status, a.code()), (503, "session_lost"), "{:?}", a.body);
    // Removed, its export goes too: its disk is kept nowhere.
    let a = c.router(1).delete("/api/sessions/auto1?force=true");
    assert_eq!(a.status, 204, "{:?}", a.body);
    assert!(!export.exists(), "a removed session's export was kept");
}

/// A node shut down (SIGTERM) with `export_on_stop` first marks itself
/// draining, then, once its connections have drained and while its lease
/// still holds its sessions, stops its running cold sessions and exports
/// those changed, and only then leaves the cluster: the routers bring a
/// session that was running at the shutdown back elsewhere with what it
/// had, its last write included.
#[test]
fn a_node_shut_down_exports_its_running_cold_sessions_before_it_leaves() {
    let Some(mut c) = Cluster::start_with(&[8, 8, 8], 2, 2, |dir| Setup {
        node_extra: format!("export_dir = {dir:?}\nexport_on_stop = true\n"),
        node_log: Some("info".into()),
        ..Setup::default()
    }) else {
        return;
    };
    let a = c.router(0).post("/api/sessions", json!({"name": "sd1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    // Written, and left running (its idle timeout is minutes away).
    c.router(0)
        .sh("sd1", "echo at-shutdown > /var/blink/memory/mark");
    let home = c.route("sd1").expect("route");
    let export = c.export_dir().join("sd1.boxlite");
    assert!(!export.exists(), "a running session was exported");

    let i: usize = home.trim_start_matches("node-").parse().expect("index");
    c.nodes[i].1.signal("TERM");
    let status = c.nodes[i]
        .1
        .wait_exit(Duration::from_secs(120))
        .expect("the node ends within 120 s");
    assert!(status.success(), "{status:?}");
    let log = c.nodes[i].1.log();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the node's log:\n{log}"))
    };
    let draining = at("cluster node draining");
    let exported = at("automatic export at shutdown written");
    let left = at("cluster node left");
    assert!(
        draining < exported && exported < left,
        "draining, exported, left: in that order"
    );
    assert!(export.is_file(), "no export at {}", export.display());

    // The routers bring it back on a live node, with its last write.
    eventually("sd1 answers again", Duration::from_secs(60), || {
        c.router(1).get("/api/sessions/sd1").status == 200
    });
    assert_ne!(c.route("sd1").as_deref(), Some(home.as_str()));
    assert_eq!(
        c.router(0).sh("sd1", "cat /var/blink/memory/mark").trim(),
        "at-shutdown"
    );
}

/// Exports kept in an S3-compatible bucket (`[cluster.export_s3]`, a real
/// `s3s-fs` on 127.0.0.1) instead of a shared directory: a move carries
/// the session through the bucket, a node's automatic export on stop
/// replaces the object, a backup writes it, and when the session's node
/// dies the routers restore it from the bucket with its last stop's data.
#[test]
fn exports_kept_in_a_bucket_carry_moves_backups_stops_and_failover() {
    let Some(s3) = blink_e2e::s3::S3Server::start() else {
        return;
    };
    let Some(c) = Cluster::start_with(&[8, 8, 8], 2, 2, |_| Setup {
        node_extra: format!("export_on_stop = true\n{}", s3.toml("cluster-a")),
        router_exports: Some(s3.toml("cluster-a")),
        env: s3.env(),
        ..Setup::default()
    }) else {
        return;
    };
    let object = s3.object("cluster-a/bkt1.boxlite");
    let a = c.router(0).post("/api/sessions", json!({"name": "bkt1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    c.router(0).sh("bkt1", "echo one > /var/blink/memory/mark");

    // A move goes through the bucket, and leaves its export there.
    let from = c.route("bkt1").expect("route");
    let to = other(&from);
    let a = c
        .router(1)
        .post("/api/sessions/bkt1/move", json!({"to": to}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(holders(&c, "bkt1"), vec![to.to_owned()]);
    assert!(object.is_file(), "the move's export is not in the bucket");
    assert!(
        std::fs::read_dir(c.export_dir())
            .expect("dir")
            .next()
            .is_none(),
        "an export went to the directory, not the bucket"
    );
    assert_eq!(
        c.router(0).sh("bkt1", "cat /var/blink/memory/mark").trim(),
        "one"
    );

    // Changed and stopped on its new node: that node uploads its export.
    let before = std::fs::metadata(&object)
        .expect("object")
        .modified()
        .expect("mtime");
    let written = exports_counted(&c, to, "written");
    c.router(1).sh("bkt1", "echo two > /var/blink/memory/mark");
    let a = c.router(0).post("/api/sessions/bkt1/stop", json!({}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    eventually(
        "the node's upload after the stop",
        Duration::from_secs(60),
        || exports_counted(&c, to, "written") == written + 1,
    );
    let after = std::fs::metadata(&object)
        .expect("object")
        .modified()
        .expect("mtime");
    assert!(after > before, "the object was not replaced");

    // A backup through a router writes it too, and says how much.
    let a = c.router(1).post("/api/sessions/bkt1/backup", json!({}));
    assert_eq!(a.status, 200, "{:?}", a.body);
    let size = std::fs::metadata(&object).expect("object").len();
    assert!(size > 0);
    assert_eq!(a.body["size_bytes"], size, "{:?}", a.body);

    // Its node dies: the routers restore it from the bucket.
    let i: usize = to.trim_start_matches("node-").parse().expect("index");
    c.nodes[i].1.signal("KILL");
    eventually(
        "bkt1 is routed to a live node",
        Duration::from_secs(60),
        || c.route("bkt1").is_some_and(|n| n != to),
    );
    eventually("bkt1 answers again", Duration::from_secs(60), || {
        c.router(0).get("/api/sessions/bkt1").status == 200
    });
    assert_eq!(
        c.router(1).sh("bkt1", "cat /var/blink/memory/mark").trim(),
        "two"
    );
    // The store's credentials never reach a sandbox.
    let seen = c.router(0).sh(
        "bkt1",
        "env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
    );
    assert!(seen.contains("PATH="), "{seen}");
    for (_, secret) in s3.env() {
        assert!(!seen.contains(&secret), "a credential inside the sandbox");
    }
    // Nothing half-written is left in the bucket.
    let left: Vec<String> = std::fs::read_dir(s3.object("cluster-a"))
        .expect("prefix")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["bkt1.boxlite".to_owned()], "{left:?}");
}

/// `blink-cli` pointed at a router (`--server`): the cluster's nodes, a
/// move, a backup, each in text and `--json`, and a move to a node that is
/// not there refused with the router's error.
#[test]
fn blink_cli_through_a_router_lists_nodes_moves_and_backs_up() {
    let Some(c) = Cluster::start(&[4, 4, 4], 1, 10) else {
        return;
    };
    let cli = |args: &[&str]| {
        let blink = &c.nodes[0].0;
        let mut cmd = blink.cli(&["--server", &c.router(0).url("")]);
        cmd.args(args).env("BLINK_API_TOKEN", TOKEN);
        let out = blink_e2e::run(&mut cmd, b"");
        let (stdout, stderr) = blink_e2e::texts(&out);
        (out.status.code(), stdout, stderr)
    };
    let a = c.router(0).post("/api/sessions", json!({"name": "viacli"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    c.router(0)
        .sh("viacli", "echo kept > /var/blink/memory/mark");
    let from = c.route("viacli").expect("route");

    let (code, stdout, stderr) = cli(&["--json", "cluster", "nodes"]);
    assert_eq!(code, Some(0), "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).expect("JSON");
    let nodes = listed["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{listed}");
    let home = nodes
        .iter()
        .find(|n| n["name"] == from.as_str())
        .expect("its node");
    assert_eq!(home["sessions"], 1, "{listed}");
    let (code, stdout, stderr) = cli(&["cluster", "nodes"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("NAME"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&from) && l.contains("1/4")),
        "{stdout}"
    );

    let to = other(&from);
    let (code, stdout, stderr) = cli(&["session", "move", "--name", "viacli", "--to", to]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), format!("session viacli is on node {to}"));
    assert_eq!(c.route("viacli").as_deref(), Some(to));
    assert_eq!(holders(&c, "viacli"), vec![to.to_owned()]);

    let (code, stdout, stderr) = cli(&["--json", "session", "backup", "--name", "viacli"]);
    assert_eq!(code, Some(0), "{stderr}");
    let kept: Value = serde_json::from_str(&stdout).expect("JSON");
    let file = c.export_dir().join("viacli.boxlite");
    assert_eq!(
        kept["size_bytes"].as_u64(),
        Some(std::fs::metadata(&file).expect("export").len())
    );

    let (code, _, stderr) = cli(&["session", "move", "--name", "viacli", "--to", "node-9"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("node node-9 is not live"), "{stderr}");
    assert_eq!(
        c.router(0)
            .sh("viacli", "cat /var/blink/memory/mark")
            .trim(),
        "kept"
    );
}
