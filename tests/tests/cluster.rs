//! Many hosts behind one front door (docs/SCALE.md), on a real 3-member
//! etcd cluster, real nodes (blink-server with `[cluster]`, separate data
//! dirs and ports) and real routers (`blink-server --role router`), all on
//! 127.0.0.1 and started here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use blink_e2e::Blink;
use blink_e2e::cluster::{Cluster, PREFIX, eventually};
use blink_e2e::rest::{Received, read_until, send_bytes, send_control};
use serde_json::json;

fn cluster(capacities: &[u64], routers: usize, ttl: u64) -> Option<Cluster> {
    Cluster::start(capacities, routers, ttl)
}

#[test]
fn nodes_register_under_leases_and_sessions_spread_by_capacity() {
    let Some(c) = cluster(&[1, 2, 3], 2, 10) else {
        return;
    };
    let live = c.live(0);
    assert_eq!(
        live,
        BTreeMap::from([
            ("node-0".into(), 0),
            ("node-1".into(), 0),
            ("node-2".into(), 0)
        ])
    );
    // Each record is attached to a lease (etcdctl shows its lease id).
    let out = c
        .etcd
        .etcdctl(&["get", "-w", "json", &format!("{PREFIX}/nodes/node-1")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"lease\":"),
        "node record without a lease: {text}"
    );

    // Six sessions through alternating routers fill 1 + 2 + 3 exactly.
    for i in 0..6 {
        let a = c
            .router(i)
            .post("/api/sessions", json!({"name": format!("s{i}")}));
        assert_eq!(a.status, 201, "s{i}: {:?}", a.body);
        assert_eq!(a.body["created"], true);
    }
    assert_eq!(
        c.live(1),
        BTreeMap::from([
            ("node-0".into(), 1),
            ("node-1".into(), 2),
            ("node-2".into(), 3)
        ])
    );
    // Each session is where its route says, and only there.
    for i in 0..6 {
        let name = format!("s{i}");
        let node = c.route(&name).expect("route");
        for other in ["node-0", "node-1", "node-2"] {
            assert_eq!(
                c.held_by(other).contains(&name),
                other == node,
                "{name} routed to {node}, held by {other}?"
            );
        }
    }
    // Full: a seventh is refused, and nothing is left behind for it.
    let a = c.router(0).post("/api/sessions", json!({"name": "s6"}));
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert_eq!(a.code(), "no_capacity");
    assert!(c.route("s6").is_none());
    // "vm only" is honoured: no node here runs micro-VMs.
    let a = c
        .router(1)
        .post("/api/sessions", json!({"name": "v1", "isolation": "vm"}));
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("vm")
    );
    let a = c
        .router(1)
        .post("/api/sessions", json!({"name": "v1", "isolation": "gpu"}));
    assert_eq!(a.status, 400, "{:?}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("isolation")
    );

    // Removing one through a router frees its node's room.
    let gone = "s0";
    let node = c.route(gone).expect("route");
    let a = c.router(1).delete(&format!("/api/sessions/{gone}"));
    assert_eq!(a.status, 204, "{:?}", a.body);
    assert!(c.route(gone).is_none());
    assert!(!c.held_by(&node).contains(&gone.to_owned()));
    let a = c.router(0).post("/api/sessions", json!({"name": "s6"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(c.route("s6").as_deref(), Some(node.as_str()));
}

#[test]
fn rest_through_either_router_reaches_the_owning_node() {
    let Some(c) = cluster(&[4, 4, 4], 2, 10) else {
        return;
    };
    for i in 0..3 {
        let a = c
            .router(i)
            .post("/api/sessions", json!({"name": format!("r{i}")}));
        assert_eq!(a.status, 201, "{:?}", a.body);
    }
    // Written through one router, read through the other: the same
    // session, on its node.
    for i in 0..3 {
        let name = format!("r{i}");
        c.router(0).sh(&name, &format!("echo {name} > /tmp/mark"));
        assert_eq!(c.router(1).sh(&name, "cat /tmp/mark").trim(), name);
        let node = c.route(&name).expect("route");
        assert_eq!(c.node(&node).sh(&name, "cat /tmp/mark").trim(), name);
        // Opening it again through either router goes to that node.
        let a = c.router(1).post("/api/sessions", json!({"name": name}));
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["created"], false);
    }
    // The merged list: every node's sessions, each with its node.
    let a = c.router(1).get("/api/sessions");
    assert_eq!(a.status, 200, "{:?}", a.body);
    let listed: Vec<(String, String)> = a.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_owned(),
                s["node"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = (0..3)
        .map(|i| (format!("r{i}"), c.route(&format!("r{i}")).expect("route")))
        .collect();
    assert_eq!(listed, expected);
    // Ephemeral runs go to some node.
    let run = c
        .router(0)
        .run_wait("/api/runs", json!({"command": ["echo", "eph"]}));
    assert_eq!(blink_e2e::rest::stdout(&run).trim(), "eph");
    let id = run["id"].as_str().expect("run id").to_owned();
    // A run's record is found on the node that ran it, through the other router.
    let a = c.router(1).get(&format!("/api/runs/{id}"));
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["id"], id.as_str());

    // A WebSocket attach through a router: a terminal on the owning node,
    // input, output, resize and the exit event relayed.
    let a = c.router(0).post(
        "/api/sessions/r1/spawn",
        json!({"command": ["sh"], "tty": true, "rows": 24, "cols": 80}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = a.body["id"].as_str().expect("id").to_owned();
    let mut ws = c
        .router(1)
        .ws(&format!("/api/sessions/r1/executions/{id}/attach"));
    let mut got = Received::default();
    let wait = Duration::from_secs(20);
    assert!(read_until(&mut ws, &mut got, wait, |r| !r
        .events
        .is_empty()));
    assert_eq!(got.events[0]["type"], "attached");
    send_control(&mut ws, json!({"type": "resize", "rows": 33, "cols": 101}));
    send_bytes(&mut ws, b"stty size; cat /tmp/mark; exit 7\n");
    assert!(
        read_until(&mut ws, &mut got, wait, |r| r.exit().is_some()),
        "{}",
        got.text()
    );
    assert!(got.text().contains("33 101"), "{}", got.text());
    assert!(got.text().contains("r1"), "{}", got.text());
    assert_eq!(got.exit().expect("exit")["code"], 7, "{:?}", got.events);

    // Errors from a node reach the client unchanged.
    let bad = json!({"command": ["true"], "env": {"BAD=NAME": "x"}});
    let direct = c
        .node(&c.route("r0").expect("route"))
        .post("/api/sessions/r0/runs", bad.clone());
    let routed = c.router(1).post("/api/sessions/r0/runs", bad);
    assert!(direct.status >= 400, "{:?}", direct.body);
    assert_eq!((routed.status, &routed.body), (direct.status, &direct.body));
    // A session nobody placed: 404 as a node says it; a bad name: 400.
    let a = c.router(0).get("/api/sessions/nobody");
    assert_eq!((a.status, a.code()), (404, "session_not_found"));
    let a = c.router(0).get("/api/sessions/Bad..Name");
    assert_eq!(a.status, 400, "{:?}", a.body);
    // The token is the nodes' own: without it, 401 from the router.
    let a = c.router(0).get_anonymous("/api/sessions");
    assert_eq!((a.status, a.code()), (401, "unauthorized"));
    // A refused open (no such image) leaves no route behind.
    let a = c.router(0).post(
        "/api/sessions",
        json!({"name": "noimg", "image": "no-such-image:1"}),
    );
    assert!(a.status >= 400, "{:?}", a.body);
    assert!(c.route("noimg").is_none());
}

#[test]
fn two_routers_racing_on_one_name_place_it_once() {
    let Some(c) = cluster(&[10, 10, 10], 2, 10) else {
        return;
    };
    for round in 0..3 {
        let name = format!("race{round}");
        let answers: Vec<(u16, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let router = c.router(i);
                    let name = name.clone();
                    s.spawn(move || {
                        let a = router.post("/api/sessions", json!({"name": name}));
                        (a.status, a.body["created"] == true)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(
            answers.iter().all(|(s, _)| *s == 200 || *s == 201),
            "{answers:?}"
        );
        assert_eq!(
            answers.iter().filter(|(_, created)| *created).count(),
            1,
            "{name} created more than once: {answers:?}"
        );
        let node = c.route(&name).expect("route");
        let holders: Vec<&str> = ["node-0", "node-1", "node-2"]
            .into_iter()
            .filter(|n| c.held_by(n).contains(&name))
            .collect();
        assert_eq!(holders, vec![node.as_str()], "{name}");
    }
}

#[test]
fn a_node_killed_drops_out_at_lease_expiry_and_one_stopped_leaves_at_once() {
    let Some(c) = cluster(&[5, 5, 5], 1, 2) else {
        return;
    };
    let a = c.router(0).post("/api/sessions", json!({"name": "k1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let victim = c.route("k1").expect("route");
    let i: usize = victim.trim_start_matches("node-").parse().expect("index");
    c.nodes[i].1.signal("KILL");
    let killed = Instant::now();
    eventually("the killed node drops out", Duration::from_secs(15), || {
        !c.live(0).contains_key(&victim)
    });
    // Not before its lease could expire: 2 s after its last renewal,
    // which is at most a third of that before the kill.
    assert!(killed.elapsed() >= Duration::from_millis(1000));
    // Its session (never exported) is reported lost; new ones go elsewhere.
    let a = c.router(0).get("/api/sessions/k1");
    assert_eq!((a.status, a.code()), (503, "session_lost"), "{:?}", a.body);
    for n in 0..4 {
        let a = c
            .router(0)
            .post("/api/sessions", json!({"name": format!("after{n}")}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        assert_ne!(c.route(&format!("after{n}")).expect("route"), victim);
    }
    // A node stopped by SIGTERM leaves the cluster as it goes, not at expiry.
    let (blink, mut long) = c.start_node("node-9", 5, 3600);
    eventually("node-9 registers", Duration::from_secs(10), || {
        c.live(0).contains_key("node-9")
    });
    assert!(long.signal_and_wait("TERM").success());
    assert!(!c.live(0).contains_key("node-9"));
    drop(blink);
}

#[test]
fn an_etcd_member_killed_changes_nothing_visible() {
    let Some(mut c) = cluster(&[5, 5, 5], 2, 3) else {
        return;
    };
    let a = c.router(0).post("/api/sessions", json!({"name": "e1"}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    // Kill the leader (an election follows), then keep working.
    let leader = c.etcd.leader();
    c.etcd.kill(leader);
    for i in 0..4 {
        let name = format!("e{}", i + 2);
        let a = c.router(i).post("/api/sessions", json!({"name": name}));
        assert_eq!(a.status, 201, "{:?}", a.body);
        assert_eq!(c.router(i + 1).sh(&name, "echo ok").trim(), "ok");
    }
    assert_eq!(c.router(1).sh("e1", "echo still").trim(), "still");
    // Leases kept alive through the loss: all three nodes stay live past
    // their TTL.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.live(0).len(), 3);
    let a = c.router(1).get("/api/sessions");
    assert_eq!(
        a.body["sessions"].as_array().map(Vec::len),
        Some(5),
        "{:?}",
        a.body
    );
}

#[test]
fn a_router_without_a_cluster_table_refuses_to_start() {
    let blink = Blink::new();
    let out = std::process::Command::new(blink_e2e::bin("blink-server"))
        .args(["--role", "router", "--data-dir"])
        .arg(blink.data_dir.path())
        .output()
        .expect("blink-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[cluster]"), "{err}");
}
