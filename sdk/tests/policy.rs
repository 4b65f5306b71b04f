//! The manager's policies on the in-memory runtime (`blink_sdk::testing`,
//! a test double): idle stop, warm restart, spawn caps, recovery of
//! orphans, refusals while busy, forwards starting and holding a session,
//! sessions' sizes (checked, held, changed live or at the next start).
//! No sandbox is made, so these run in milliseconds anywhere;
//! tests/manager.rs covers the same ground against real bubblewrap
//! sandboxes.

use std::sync::Arc;
use std::time::Duration;

use blink_sdk::image::ImageStore;
use blink_sdk::manager::{
    ManagerConfig, OpenOptions, Program, ResourceNumbers, ResourceRequest, RunOptions, Target,
};
use blink_sdk::testing::FakeRuntime;
use blink_sdk::types::{Applied, ResourceUsage, SessionState};
use blink_sdk::{Error, Manager};

struct Fixture {
    dir: tempfile::TempDir,
    runtime: Arc<FakeRuntime>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            runtime: FakeRuntime::new(),
        }
    }

    async fn manager(&self, configure: impl FnOnce(&mut ManagerConfig)) -> Arc<Manager> {
        let mut config = ManagerConfig::new(self.dir.path());
        config.idle_timeout = Duration::from_secs(3600);
        configure(&mut config);
        let images =
            Arc::new(ImageStore::open(&self.dir.path().join("images")).expect("image store"));
        // Opened again in the same process ("after a restart").
        blink_sdk::testing::reopen(|| {
            Manager::with_runtime(config.clone(), self.runtime.clone(), images.clone())
        })
        .await
        .expect("manager")
    }
}

/// Whether `done` holds within 5 s (work the manager does off the
/// caller's path, such as removing a used sandbox).
async fn soon(done: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    done()
}

async fn open(m: &Manager, name: &str, warm: bool) -> String {
    m.open_session(
        name,
        OpenOptions {
            warm: Some(warm),
            ..OpenOptions::default()
        },
    )
    .await
    .expect("open")
    .session
    .box_id
}

fn command(argv: &[&str]) -> Program {
    Program::Command(argv.iter().map(|s| s.to_string()).collect())
}

/// Poll `f` for up to `within`.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn idle_sessions_stop_but_never_while_something_runs() {
    let fx = Fixture::new();
    let m = fx
        .manager(|c| c.idle_timeout = Duration::from_millis(150))
        .await;
    let id = open(&m, "busy", false).await;
    let quiet = open(&m, "quiet", false).await;

    // Something long runs in "busy"; "quiet" runs one short command.
    let long = m
        .start(
            Target::Session("busy"),
            &command(&["sleep", "30"]),
            &RunOptions::default(),
            None,
        )
        .await
        .expect("start");
    let r = m
        .run(
            Target::Session("quiet"),
            &command(&["true"]),
            RunOptions::default(),
        )
        .await
        .expect("run");
    assert_eq!(r.exit_code, 0);

    let rt = fx.runtime.clone();
    assert!(
        eventually(Duration::from_secs(5), || !rt.is_running_now(&quiet)).await,
        "the idle session stops"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        fx.runtime.is_running_now(&id),
        "a session in use is never stopped"
    );
    assert_eq!(m.session_info("busy").expect("info").active_executions, 1);

    long.execution.control.kill().expect("kill");
    m.finish(long).await.expect("finish");
    assert!(
        eventually(Duration::from_secs(5), || !rt.is_running_now(&id)).await,
        "once the execution ended, the session idles out too"
    );
}

#[tokio::test]
async fn warm_sessions_come_back_after_a_restart_and_never_idle() {
    let fx = Fixture::new();
    let id = {
        let m = fx
            .manager(|c| c.idle_timeout = Duration::from_millis(100))
            .await;
        let id = open(&m, "warm", true).await;
        assert!(fx.runtime.is_running_now(&id));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            fx.runtime.is_running_now(&id),
            "warm sessions never idle out"
        );
        m.shutdown().await;
        id
    };
    assert!(!fx.runtime.is_running_now(&id));
    let starts = fx.runtime.sandbox(&id).expect("disk kept").starts;

    let m = fx.manager(|_| {}).await;
    let rt = fx.runtime.clone();
    assert!(
        eventually(Duration::from_secs(5), || rt.is_running_now(&id)).await,
        "a new manager starts warm sessions"
    );
    assert_eq!(fx.runtime.sandbox(&id).expect("disk").starts, starts + 1);
    assert_eq!(
        m.session_info("warm").expect("info").state,
        SessionState::Running
    );
}

#[tokio::test]
async fn spawns_are_capped_per_session_and_finished_ones_make_room() {
    let fx = Fixture::new();
    let m = fx.manager(|c| c.max_spawns_per_session = 2).await;
    open(&m, "s", false).await;
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let first = m
        .spawn("s", argv(&["sleep", "30"]), Vec::new(), None)
        .await
        .expect("first");
    m.spawn("s", argv(&["sleep", "30"]), Vec::new(), None)
        .await
        .expect("second");
    let refused = m
        .spawn("s", argv(&["sleep", "30"]), Vec::new(), None)
        .await
        .expect_err("a third running spawn is refused");
    assert!(matches!(refused, Error::SessionBusy { .. }), "{refused}");

    // Once one has finished, a new spawn forgets it and goes ahead.
    let attachment = m.attach("s", &first.id).expect("attach");
    attachment.spawn.control.kill().expect("kill");
    let mm = m.clone();
    let id = first.id.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            mm.spawn_info("s", &id).is_ok_and(|i| i.exit.is_some())
        })
        .await
    );
    drop(attachment);
    m.spawn("s", argv(&["sleep", "30"]), Vec::new(), None)
        .await
        .expect("room was made");
    assert!(
        m.spawn_info("s", &first.id).is_err(),
        "the finished one is forgotten"
    );
    // Empty commands never reach the runtime.
    let empty = m
        .spawn("s", Vec::new(), Vec::new(), None)
        .await
        .expect_err("empty");
    assert!(matches!(empty, Error::InvalidArgument(_)), "{empty}");
}

#[tokio::test]
async fn a_restart_removes_orphan_sandboxes_and_keeps_sessions() {
    let fx = Fixture::new();
    let kept = {
        let m = fx.manager(|_| {}).await;
        open(&m, "kept", false).await
    };
    fx.runtime.plant("run-left-by-a-crash");
    fx.runtime.plant("s-never-recorded");
    let m = fx.manager(|_| {}).await;
    assert_eq!(fx.runtime.ids(), vec![kept.clone()]);
    assert_eq!(m.session_info("kept").expect("info").box_id, kept);
}

#[tokio::test]
async fn stop_and_remove_are_refused_while_busy_unless_forced() {
    let fx = Fixture::new();
    let m = fx.manager(|_| {}).await;
    let id = open(&m, "s", false).await;
    let started = m
        .start(
            Target::Session("s"),
            &command(&["sleep", "30"]),
            &RunOptions::default(),
            None,
        )
        .await
        .expect("start");
    for refused in [
        m.stop_session("s", false).await.map(|_| ()),
        m.remove_session("s", false).await,
    ] {
        let e = refused.expect_err("busy");
        assert!(matches!(e, Error::SessionBusy { .. }), "{e}");
    }
    assert!(fx.runtime.is_running_now(&id));
    m.stop_session("s", true).await.expect("forced stop");
    assert!(!fx.runtime.is_running_now(&id));
    let status = started.execution.control.wait().await.expect("wait");
    assert_eq!(
        status.signal,
        Some(9),
        "the forced stop killed the execution"
    );
    m.finish(started).await.expect("finish");
    m.remove_session("s", false).await.expect("remove");
    assert!(fx.runtime.sandbox(&id).is_none(), "the disk is gone");
    let e = m.session_info("s").expect_err("gone");
    assert!(matches!(e, Error::SessionNotFound(_)), "{e}");
}

#[tokio::test]
async fn ephemeral_runs_leave_nothing_and_scripts_are_cleaned_up() {
    let fx = Fixture::new();
    let m = fx.manager(|_| {}).await;
    let r = m
        .run(
            Target::Ephemeral,
            &command(&["echo", "hi"]),
            RunOptions::default(),
        )
        .await
        .expect("run");
    assert_eq!((r.exit_code, r.stdout.data.as_str()), (0, "hi\n"));
    // Removed off the caller's path, soon after.
    assert!(
        soon(|| fx.runtime.ids().is_empty()).await,
        "the ephemeral sandbox is removed"
    );

    let id = open(&m, "s", false).await;
    let script = fx.dir.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("script");
    // The fake runs no scripts (exit 127), but the copy comes and goes.
    let r = m
        .run(
            Target::Session("s"),
            &Program::Script(script),
            RunOptions::default(),
        )
        .await
        .expect("run");
    assert_eq!(r.exit_code, 127);
    assert!(fx.runtime.sandbox(&id).expect("disk").files.is_empty());
    let missing = m
        .run(
            Target::Session("s"),
            &Program::Script(fx.dir.path().join("nope")),
            RunOptions::default(),
        )
        .await
        .expect_err("missing script");
    assert!(matches!(missing, Error::ScriptNotFound(_)), "{missing}");
}

#[tokio::test]
async fn forwards_start_a_stopped_session_and_hold_it_active() {
    use blink_sdk::manager::ForwardRules;
    use blink_sdk::manager::keys::KeyOptions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fx = Fixture::new();
    let m = fx
        .manager(|c| c.idle_timeout = Duration::from_millis(150))
        .await;
    let id = open(&m, "s", false).await;
    let key = KeyOptions::default();
    let rules = ForwardRules {
        enabled: true,
        key: &key,
    };
    let rt = fx.runtime.clone();
    let active = || m.session_info("s").expect("info").active_executions;

    // Nothing listens: the session starts for the connection, which fails,
    // and holds nothing afterwards.
    assert!(!rt.is_running_now(&id));
    let e = m
        .forward_connect("s", rules.connect("localhost", 8080).expect("allowed"))
        .await
        .expect_err("nothing listens");
    assert_eq!(e.code(), "io_error", "{e}");
    assert!(rt.is_running_now(&id), "the connection started the session");
    assert_eq!(active(), 0);

    // A program of the session listens: the connection reaches it and
    // holds the session while it lives, past the idle timeout.
    let program = rt.serve_loopback(&id, 8080).await.expect("serve");
    let mut conn = m
        .forward_connect("s", rules.connect("127.0.0.1", 8080).expect("allowed"))
        .await
        .expect("connect");
    let (mut inside, _) = program.accept().await.expect("accept");
    conn.stream.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    inside.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"ping");
    assert_eq!(active(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rt.is_running_now(&id), "a forwarded connection holds it");
    drop(conn);
    assert_eq!(active(), 0);
    assert!(
        eventually(Duration::from_secs(5), || !rt.is_running_now(&id)).await,
        "then it idles out"
    );

    // A listener starts it too, holds it, and so does each connection it
    // accepts; stopping it is refused meanwhile.
    let listener = m
        .forward_listen("s", rules.listen("localhost", 9000).expect("allowed"))
        .await
        .expect("listen");
    assert!(rt.is_running_now(&id));
    assert_eq!(active(), 1);
    let port = listener.port();
    let client = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let (accepted, client) = tokio::join!(listener.accept(), client);
    let (accepted, _client) = (accepted.expect("accept"), client.expect("connect"));
    assert_eq!(active(), 2);
    let busy = m.stop_session("s", false).await.expect_err("busy");
    assert_eq!(busy.code(), "session_busy");
    drop(accepted);
    drop(listener);
    assert_eq!(active(), 0);
    assert!(
        eventually(Duration::from_secs(5), || !rt.is_running_now(&id)).await,
        "and idles out once they are gone"
    );
}

fn sized(r: ResourceRequest) -> OpenOptions {
    OpenOptions {
        resources: r,
        ..OpenOptions::default()
    }
}

#[tokio::test]
async fn a_sessions_size_is_held_applied_at_start_and_survives_a_restart() {
    let fx = Fixture::new();
    let asked = ResourceRequest {
        cpus: Some(0.5),
        memory_mib: Some(256),
        pids: Some(64),
        disk_mib: Some(512),
        run_timeout_secs: Some(30),
        idle_timeout_secs: Some(120),
    };
    let id = {
        let m = fx.manager(|_| {}).await;
        let opened = m
            .open_session("sized", sized(asked.clone()))
            .await
            .expect("open");
        let r = &opened.session.resources;
        assert_eq!(
            (r.cpus, r.memory_mib, r.pids, r.disk_mib),
            (Some(0.5), Some(256), Some(64), Some(512))
        );
        assert_eq!((r.run_timeout_secs, r.idle_timeout_secs), (30, 120));
        // Another session has the configured defaults.
        let plain = m
            .open_session("plain", OpenOptions::default())
            .await
            .expect("open");
        let defaults = &m.config().limits;
        assert_eq!(plain.session.resources.memory_mib, defaults.memory_mib);
        assert_eq!(plain.session.resources.cpus, None);
        assert_eq!(
            plain.session.resources.idle_timeout_secs,
            m.config().idle_timeout.as_secs()
        );
        opened.session.box_id
    };
    let m = fx.manager(|_| {}).await;
    let info = m.session_info("sized").expect("info");
    assert_eq!(info.resources.memory_mib, Some(256));
    assert_eq!(info.resources.run_timeout_secs, 30);
    m.ensure_running("sized").await.expect("start");
    let running = fx.runtime.sandbox(&id).expect("sandbox").limits;
    assert_eq!(
        (running.cpus, running.memory_mib, running.pids),
        (Some(0.5), Some(256), Some(64)),
        "the runtime started it with the session's limits"
    );
}

#[tokio::test]
async fn bad_figures_are_refused_naming_the_field_and_nothing_is_made() {
    let fx = Fixture::new();
    let m = fx
        .manager(|c| {
            c.maxima.cpus = 2.0;
            c.maxima.memory_mib = 1024;
            c.maxima.pids = 256;
        })
        .await;
    let cases = [
        (
            ResourceNumbers {
                cpus: Some(0.0),
                ..Default::default()
            },
            "cpus",
        ),
        (
            ResourceNumbers {
                cpus: Some(-1.0),
                ..Default::default()
            },
            "cpus",
        ),
        (
            ResourceNumbers {
                cpus: Some(2.5),
                ..Default::default()
            },
            "cpus",
        ),
        (
            ResourceNumbers {
                memory_mib: Some(-64.0),
                ..Default::default()
            },
            "memory_mib",
        ),
        (
            ResourceNumbers {
                memory_mib: Some(0.0),
                ..Default::default()
            },
            "memory_mib",
        ),
        (
            ResourceNumbers {
                memory_mib: Some(1025.0),
                ..Default::default()
            },
            "memory_mib",
        ),
        (
            ResourceNumbers {
                pids: Some(1e300),
                ..Default::default()
            },
            "pids",
        ),
        (
            ResourceNumbers {
                pids: Some(32.5),
                ..Default::default()
            },
            "pids",
        ),
        (
            ResourceNumbers {
                disk_mib: Some(1.0),
                ..Default::default()
            },
            "disk_mib",
        ),
        (
            ResourceNumbers {
                run_timeout_secs: Some(0.0),
                ..Default::default()
            },
            "run_timeout_secs",
        ),
        (
            ResourceNumbers {
                idle_timeout_secs: Some(1e12),
                ..Default::default()
            },
            "idle_timeout_secs",
        ),
    ];
    for (numbers, field) in cases {
        let refused = match ResourceRequest::from_numbers(numbers) {
            Err(e) => e,
            Ok(request) => m
                .open_session("bad", sized(request))
                .await
                .expect_err("refused"),
        };
        assert_eq!(refused.code(), "invalid_argument", "{refused}");
        assert!(
            refused.to_string().starts_with(&format!("{field}:")),
            "{numbers:?}: {refused}"
        );
    }
    assert!(fx.runtime.ids().is_empty(), "a sandbox was made");
    assert!(m.list_sessions().is_empty());
    // The same rules on a change, which leaves the session as it was.
    open(&m, "s", false).await;
    let before = m.session_info("s").expect("info").resources;
    let e = m
        .set_resources(
            "s",
            ResourceRequest {
                memory_mib: Some(512),
                pids: Some(100_000),
                ..Default::default()
            },
        )
        .await
        .expect_err("refused");
    assert!(e.to_string().starts_with("pids:"), "{e}");
    assert_eq!(m.session_info("s").expect("info").resources, before);
}

#[tokio::test]
async fn changes_apply_live_on_a_running_session_and_at_the_next_start_otherwise() {
    let fx = Fixture::new();
    let m = fx.manager(|_| {}).await;
    let id = m
        .open_session(
            "s",
            sized(ResourceRequest {
                disk_mib: Some(1024),
                ..Default::default()
            }),
        )
        .await
        .expect("open")
        .session
        .box_id;
    // Stopped: everything waits for the next start.
    let changed = m
        .set_resources(
            "s",
            ResourceRequest {
                memory_mib: Some(300),
                ..Default::default()
            },
        )
        .await
        .expect("change");
    assert_eq!(changed.applied["memory_mib"], Applied::NextStart);
    assert_eq!(changed.resources.memory_mib, Some(300));
    m.ensure_running("s").await.expect("start");
    assert_eq!(
        fx.runtime.sandbox(&id).expect("box").limits.memory_mib,
        Some(300)
    );
    // Running: limits at once, the disk at the next start, timeouts now.
    let changed = m
        .set_resources(
            "s",
            ResourceRequest {
                cpus: Some(1.0),
                pids: Some(50),
                disk_mib: Some(2048),
                idle_timeout_secs: Some(60),
                ..Default::default()
            },
        )
        .await
        .expect("change");
    let applied: Vec<(&str, Applied)> = changed
        .applied
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        applied,
        vec![
            ("cpus", Applied::Live),
            ("disk_mib", Applied::NextStart),
            ("idle_timeout_secs", Applied::Live),
            ("pids", Applied::Live),
        ]
    );
    let now = fx.runtime.sandbox(&id).expect("box");
    assert_eq!((now.limits.cpus, now.limits.pids), (Some(1.0), Some(50)));
    assert_eq!(now.disk_mib, 1024, "the disk grows only at the next start");
    m.stop_session("s", false).await.expect("stop");
    m.ensure_running("s").await.expect("start");
    assert_eq!(fx.runtime.sandbox(&id).expect("box").disk_mib, 2048);
    // A disk never shrinks.
    let e = m
        .set_resources(
            "s",
            ResourceRequest {
                disk_mib: Some(1024),
                ..Default::default()
            },
        )
        .await
        .expect_err("shrink");
    assert!(e.to_string().starts_with("disk_mib:"), "{e}");
    // Held across a restart.
    drop(m);
    let m = fx.manager(|_| {}).await;
    let r = m.session_info("s").expect("info").resources;
    assert_eq!(
        (r.cpus, r.pids, r.disk_mib, r.idle_timeout_secs),
        (Some(1.0), Some(50), Some(2048), 60)
    );
}

#[tokio::test]
async fn each_session_idles_and_times_out_runs_by_its_own_timeouts() {
    let fx = Fixture::new();
    // The configured idle timeout is an hour (the fixture's).
    let m = fx.manager(|_| {}).await;
    let quick = m
        .open_session(
            "quick",
            sized(ResourceRequest {
                idle_timeout_secs: Some(1),
                run_timeout_secs: Some(1),
                ..Default::default()
            }),
        )
        .await
        .expect("open")
        .session
        .box_id;
    let slow = open(&m, "slow", false).await;
    for name in ["quick", "slow"] {
        m.ensure_running(name).await.expect("start");
    }
    let runtime = fx.runtime.clone();
    assert!(
        eventually(Duration::from_secs(5), || !runtime.is_running_now(&quick)).await,
        "the session with a 1 s idle timeout kept running"
    );
    assert!(fx.runtime.is_running_now(&slow), "the other one idled out");
    // Its runs are stopped after its run timeout unless they ask for more.
    let r = m
        .run(
            Target::Session("quick"),
            &command(&["sleep", "30"]),
            RunOptions::default(),
        )
        .await
        .expect("run");
    assert!(r.timed_out, "{r:?}");
    let r = m
        .run(
            Target::Session("quick"),
            &command(&["sleep", "1.5"]),
            RunOptions {
                timeout: Some(Duration::from_secs(10)),
                ..RunOptions::default()
            },
        )
        .await
        .expect("run");
    assert!(!r.timed_out && r.exit_code == 0, "{r:?}");
}

#[tokio::test]
async fn usage_comes_from_the_runtime_with_the_egress_counters() {
    let fx = Fixture::new();
    let m = fx.manager(|_| {}).await;
    let id = open(&m, "s", false).await;
    let stopped = m.session_stats("s").expect("stats");
    assert_eq!(stopped.usage.source, "none");
    assert_eq!(stopped.usage.memory_bytes, None);
    m.ensure_running("s").await.expect("start");
    fx.runtime.set_usage(
        &id,
        ResourceUsage {
            source: "fake".into(),
            memory_bytes: Some(5 << 20),
            oom_kills: Some(2),
            ..ResourceUsage::default()
        },
    );
    let stats = m.session_stats("s").expect("stats");
    assert_eq!(stats.state, SessionState::Running);
    assert_eq!(stats.usage.memory_bytes, Some(5 << 20));
    assert_eq!(stats.usage.oom_kills, Some(2));
    assert_eq!(m.session_info("s").expect("info").usage, stats.usage);
}

#[tokio::test]
async fn a_second_manager_refused_leaves_the_data_dir_as_it_was() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let _held = f.manager(|_| {}).await;
    // What the local runtime sets so that sandboxes reach their disks.
    let mode = std::fs::Permissions::from_mode(0o711);
    std::fs::set_permissions(f.dir.path(), mode).unwrap();
    let images = Arc::new(ImageStore::open(&f.dir.path().join("images")).unwrap());
    let second =
        Manager::with_runtime(ManagerConfig::new(f.dir.path()), f.runtime.clone(), images).await;
    let Err(refused) = second else {
        panic!("a second manager was let in");
    };
    assert!(matches!(refused, Error::DataDirLocked { .. }), "{refused}");
    let now = std::fs::metadata(f.dir.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        now & 0o777,
        0o711,
        "the refused manager changed the data dir's mode"
    );
}

/// A fenced session (a cluster router moving it away) does not start, so
/// nothing reaches its disk after the move's export; the fence ends by
/// itself (a router that died) or when lifted (a move given up).
#[tokio::test]
async fn a_fenced_session_does_not_start_until_its_fence_ends() {
    let fx = Fixture::new();
    let m = fx.manager(|_| {}).await;
    let id = open(&m, "moving", false).await;
    m.stop_session("moving", true).await.expect("stop");
    m.fence("moving", Some(Duration::from_millis(300)))
        .expect("fence");
    let program = command(&["true"]);
    let run = || m.run(Target::Session("moving"), &program, RunOptions::default());
    let refused = run().await.expect_err("a fenced session ran");
    assert!(matches!(refused, Error::SessionMoving(_)), "{refused}");
    assert_eq!(refused.code(), "session_moving");
    assert!(!fx.runtime.is_running_now(&id), "a fenced session started");
    // It ends by itself.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(run().await.expect("after the fence").exit_code, 0);
    // Lifted at once.
    m.stop_session("moving", true).await.expect("stop");
    m.fence("moving", Some(Duration::from_secs(600)))
        .expect("fence");
    assert!(run().await.is_err());
    m.fence("moving", None).expect("lift");
    assert_eq!(run().await.expect("lifted").exit_code, 0);
    assert!(matches!(
        m.fence("nope", None),
        Err(Error::SessionNotFound(_))
    ));
    // A fence holds at most 10 minutes unless renewed, and a while at least.
    for ttl in [Duration::ZERO, Duration::from_secs(601)] {
        let refused = m.fence("moving", Some(ttl)).expect_err("a bad fence");
        assert!(matches!(refused, Error::InvalidArgument(_)), "{refused}");
    }
}

/// What a cluster node's exporter reads: a session's change count grows
/// with each start, restore-free stop leaves it, a restart begins at 0
/// (nothing known changed), a new session at 1 (a new disk); every stop,
/// by a caller or the idle policy, stores a wake-up for the exporter.
#[tokio::test]
async fn changes_count_starts_and_stops_wake_the_exporter() {
    let fx = Fixture::new();
    {
        let m = fx
            .manager(|c| c.idle_timeout = Duration::from_millis(150))
            .await;
        let stopped = m.stopped_signal();
        open(&m, "disk", false).await;
        assert_eq!(m.changes("disk").expect("changes"), 1, "a new disk");
        let program = command(&["true"]);
        m.run(Target::Session("disk"), &program, RunOptions::default())
            .await
            .expect("run");
        assert_eq!(m.changes("disk").expect("changes"), 2, "a start");
        // Running again while it runs is no new start.
        m.run(Target::Session("disk"), &program, RunOptions::default())
            .await
            .expect("run");
        assert_eq!(m.changes("disk").expect("changes"), 2);
        // The idle policy stops it: the exporter is woken.
        tokio::time::timeout(Duration::from_secs(5), stopped.notified())
            .await
            .expect("an idle stop wakes the exporter");
        assert_eq!(
            m.changes("disk").expect("changes"),
            2,
            "a stop changes nothing"
        );
        // A caller's stop too (the permit is stored, so a busy exporter
        // misses nothing).
        m.run(Target::Session("disk"), &program, RunOptions::default())
            .await
            .expect("run");
        m.stop_session("disk", true).await.expect("stop");
        tokio::time::timeout(Duration::from_millis(100), stopped.notified())
            .await
            .expect("a caller's stop wakes the exporter");
        assert_eq!(m.changes("disk").expect("changes"), 3);
        assert!(matches!(m.changes("nope"), Err(Error::SessionNotFound(_))));
        m.shutdown().await;
    }
    let m = fx.manager(|_| {}).await;
    assert_eq!(
        m.changes("disk").expect("changes"),
        0,
        "nothing known changed since this process opened it"
    );
}

/// A manager held a moment longer by a task (as its idle reaper or pool
/// may, across an await) keeps the data dir's lock until it goes; a reopen
/// in the same process waits for that rather than failing.
#[tokio::test]
async fn a_reopen_waits_for_the_last_managers_tasks_to_let_go() {
    let fx = Fixture::new();
    let m = fx.manager(|_| {}).await;
    let held = m.clone();
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(held);
    });
    drop(m);
    // Still held: a plain open is refused.
    let images = Arc::new(ImageStore::open(&fx.dir.path().join("images")).expect("images"));
    let now = Manager::with_runtime(
        ManagerConfig::new(fx.dir.path()),
        fx.runtime.clone(),
        images,
    )
    .await;
    assert!(
        matches!(now, Err(Error::DataDirLocked { .. })),
        "{:?}",
        now.err()
    );
    // The reopen waits for the holder.
    let again = fx.manager(|_| {}).await;
    assert!(again.list_sessions().is_empty());
    holder.await.expect("holder");
}

/// A pooled sandbox that died while it waited, unnoticed by the runtime's
/// own mark (as a micro-VM whose init ended on its own: the boxlite VM
/// suite met one), is dropped when a run takes from the pool, and the run
/// gets a live one instead of the dead one's `sandbox_dead`.
#[tokio::test]
async fn a_pooled_sandbox_that_died_unnoticed_is_not_handed_out() {
    let fx = Fixture::new();
    let m = fx.manager(|c| c.ephemeral_pool = 1).await;
    let pooled = async {
        loop {
            if let Some(id) = fx
                .runtime
                .ids()
                .into_iter()
                .find(|id| fx.runtime.is_running_now(id))
            {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let dead = tokio::time::timeout(Duration::from_secs(10), pooled)
        .await
        .expect("the pool fills");
    fx.runtime.die_unnoticed(&dead);
    let r = m
        .run(
            Target::Ephemeral,
            &command(&["echo", "alive"]),
            RunOptions::default(),
        )
        .await
        .expect("a run on a live sandbox");
    assert_eq!((r.exit_code, r.stdout.data.as_str()), (0, "alive\n"));
    // The dead one is removed, not put back.
    assert!(
        soon(|| fx.runtime.sandbox(&dead).is_none()).await,
        "the dead sandbox is removed"
    );
}

/// A session whose sandbox died unnoticed by the runtime's own mark is
/// started again by the next request, which then runs, instead of every
/// request meeting `sandbox_dead` until someone stops and starts it.
#[tokio::test]
async fn a_session_whose_sandbox_died_unnoticed_is_started_again() {
    let fx = Fixture::new();
    let m = fx.manager(|_| {}).await;
    let id = open(&m, "s", false).await;
    m.ensure_running("s").await.expect("start");
    assert_eq!(fx.runtime.sandbox(&id).expect("sandbox").starts, 1);
    fx.runtime.die_unnoticed(&id);
    let r = m
        .run(
            Target::Session("s"),
            &command(&["echo", "again"]),
            RunOptions::default(),
        )
        .await
        .expect("a run after the restart");
    assert_eq!((r.exit_code, r.stdout.data.as_str()), (0, "again\n"));
    assert_eq!(fx.runtime.sandbox(&id).expect("sandbox").starts, 2);
}
