//! Session manager against the real local runtime: idle and warm policy,
//! spawn attach/detach/re-attach, crash recovery, concurrency.

use std::sync::Arc;
use std::time::Duration;

use blink_sdk::Manager;
use blink_sdk::manager::{ManagerConfig, OpenOptions, Program, RunOptions, Stream, Target};
use blink_sdk::runtime::ExecSpec;
use blink_sdk::types::SessionState;

fn runtime_available() -> bool {
    let ok = std::process::Command::new("bwrap")
        .args(["--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"])
        .status()
        .is_ok_and(|s| s.success());
    blink_sdk::testing::require(ok, "bubblewrap cannot create namespaces here")
}

async fn manager(dir: &std::path::Path, idle: Duration) -> Arc<Manager> {
    let mut config = ManagerConfig::new(dir);
    config.idle_timeout = idle;
    // Opened again in the same process in some tests ("after a restart").
    blink_sdk::testing::reopen(|| Manager::open(config.clone()))
        .await
        .expect("open manager")
}

async fn wait_state(m: &Manager, name: &str, want: SessionState, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if m.session_info(name).unwrap().state == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn cmd(argv: &[&str]) -> Program {
    Program::Command(argv.iter().map(|s| (*s).to_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_session_stops_when_idle_but_never_while_something_runs() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(1)).await;
    m.open_session("idle", OpenOptions::default())
        .await
        .unwrap();
    let r = m
        .run(
            Target::Session("idle"),
            &cmd(&["true"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(m.session_info("idle").unwrap().state, SessionState::Running);
    assert!(
        wait_state(&m, "idle", SessionState::Stopped, Duration::from_secs(10)).await,
        "idle session never stopped"
    );

    // A long execution keeps it running well past the idle timeout.
    let long = m
        .exec(
            "idle",
            ExecSpec {
                argv: vec!["sleep".into(), "4".into()],
                ..ExecSpec::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(m.session_info("idle").unwrap().state, SessionState::Running);
    assert_eq!(m.session_info("idle").unwrap().active_executions, 1);
    let status = long.execution.control.wait().await.unwrap();
    assert_eq!(status.code, 0);
    m.finish(long).await.unwrap();
    // An explicit stop while busy is refused, naming the session.
    let held = m.hold("idle").unwrap();
    let err = m.stop_session("idle", false).await.unwrap_err();
    assert_eq!(err.code(), "session_busy");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_session_stays_running_and_keeps_processes() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(1)).await;
    let opened = m
        .open_session(
            "warm",
            OpenOptions {
                warm: Some(true),
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(opened.session.warm);
    assert_eq!(opened.session.state, SessionState::Running);
    // A background process started by one run is seen by the next.
    let r = m
        .run(
            Target::Session("warm"),
            &cmd(&["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo started"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.data, "started\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(m.session_info("warm").unwrap().state, SessionState::Running);
    let r = m
        .run(
            Target::Session("warm"),
            &cmd(&["sh", "-c", "ps | grep -c 'sleep 1000'"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        r.stdout.data.trim().parse::<u32>().unwrap() >= 1,
        "{:?}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_can_be_detached_and_reattached_with_replay() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(300)).await;
    m.open_session("sp", OpenOptions::default()).await.unwrap();
    let info = m
        .spawn(
            "sp",
            vec![
                "sh".into(),
                "-c".into(),
                "echo one; read line; echo got-$line; echo err >&2".into(),
            ],
            vec![],
            None,
        )
        .await
        .unwrap();
    let mut first = m.attach("sp", &info.id).unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(10), first.live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chunk.data, b"one\n");
    drop(first); // detach

    // Output produced while detached is kept and replayed.
    let a = m.attach("sp", &info.id).unwrap();
    assert_eq!(m.spawn_info("sp", &info.id).unwrap().attached, 1);
    a.write(b"two\n".to_vec()).await;
    let mut exit = a.exit.clone();
    tokio::time::timeout(Duration::from_secs(10), exit.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    drop(a);
    let again = m.attach("sp", &info.id).unwrap();
    let out: Vec<u8> = again
        .replay
        .iter()
        .filter(|c| c.stream == Stream::Stdout)
        .flat_map(|c| c.data.clone())
        .collect();
    let err: Vec<u8> = again
        .replay
        .iter()
        .filter(|c| c.stream == Stream::Stderr)
        .flat_map(|c| c.data.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&out), "one\ngot-two\n");
    assert_eq!(err, b"err\n");
    assert_eq!(again.spawn.exit_status().unwrap().code, 0);
    assert_eq!(
        m.attach("sp", "x-nope").unwrap_err().code(),
        "execution_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_new_manager_and_orphans_are_cleaned() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let box_id = {
        let m = manager(dir.path(), Duration::from_secs(300)).await;
        let o = m
            .open_session("persist", OpenOptions::default())
            .await
            .unwrap();
        m.run(
            Target::Session("persist"),
            &cmd(&["sh", "-c", "echo kept > /root/f"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
        o.session.box_id
    };
    // Simulate a crash mid-create: a disk no record owns.
    let orphan = dir.path().join("sandboxes/s-orphan");
    std::fs::create_dir_all(orphan.join("rootfs")).unwrap();
    let m = manager(dir.path(), Duration::from_secs(300)).await;
    assert!(!orphan.exists(), "orphan disk survived recovery");
    let info = m.session_info("persist").unwrap();
    assert_eq!(info.box_id, box_id);
    let r = m
        .run(
            Target::Session("persist"),
            &cmd(&["cat", "/root/f"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.data, "kept\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_in_one_session_all_succeed() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(300)).await;
    m.open_session("many", OpenOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.run(
                Target::Session("many"),
                &cmd(&["sh", "-c", &format!("echo {i}")]),
                RunOptions::default(),
            )
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.stdout.data, format!("{i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_caps_truncate_and_flag() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(300)).await;
    let options = RunOptions {
        output_limit: Some(1000),
        ..RunOptions::default()
    };
    let r = m
        .run(
            Target::Ephemeral,
            &cmd(&["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a"]),
            options,
        )
        .await
        .unwrap();
    assert!(r.stdout.truncated);
    assert_eq!(r.stdout.total_bytes, 5000);
    assert_eq!(r.stdout.data.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_from_outside_is_started_again_on_next_use() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(300)).await;
    let opened = m
        .open_session("phoenix", OpenOptions::default())
        .await
        .unwrap();
    let r = m
        .run(
            Target::Session("phoenix"),
            &cmd(&["sh", "-c", "echo alive > /root/f"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    // The sandbox's group is `<box_id>.<boot>`.
    let prefix = format!("{}.", opened.session.box_id);
    let procs = std::fs::read_dir("/sys/fs/cgroup/pids/blink")
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("cgroup.procs"))
        .unwrap_or_default();
    let Ok(pids) = std::fs::read_to_string(&procs) else {
        blink_sdk::testing::skip("no cgroup v1 pids group to find the sandbox's processes by");
        return;
    };
    for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) on processes of the sandbox this test made.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert!(
        wait_state(
            &m,
            "phoenix",
            SessionState::Stopped,
            Duration::from_secs(10)
        )
        .await
    );
    let r = m
        .run(
            Target::Session("phoenix"),
            &cmd(&["cat", "/root/f"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout.data, "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_child_holding_stdout_does_not_hang_or_lose_output() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::from_secs(300)).await;
    m.open_session("bg", OpenOptions::default()).await.unwrap();
    // The run ends after a bounded grace, not when `sleep 60` does.
    let r = m
        .run(
            Target::Session("bg"),
            &cmd(&["sh", "-c", "echo visible; sleep 60 & exit 5"]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 5);
    assert_eq!(r.stdout.data, "visible\n");
    assert!(!r.timed_out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_spawns_are_forgotten_and_running_ones_are_capped() {
    if !runtime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = ManagerConfig::new(dir.path());
    config.max_spawns_per_session = 2;
    config.spawn_retention = Duration::from_secs(1);
    let m = Manager::open(config).await.unwrap();
    m.open_session("cap", OpenOptions::default()).await.unwrap();
    let argv = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
    let done = m.spawn("cap", argv("exit 3"), vec![], None).await.unwrap();
    let mut exit = m.attach("cap", &done.id).unwrap().exit.clone();
    exit.wait_for(Option::is_some).await.unwrap();
    let long = m
        .spawn("cap", argv("sleep 30"), vec![], None)
        .await
        .unwrap();
    // At the cap: the finished spawn makes room for a new one.
    let third = m
        .spawn("cap", argv("sleep 30"), vec![], None)
        .await
        .unwrap();
    assert_eq!(
        m.attach("cap", &done.id).unwrap_err().code(),
        "execution_not_found"
    );
    // Both remaining spawns run: a fourth is refused, naming the limit.
    let err = m
        .spawn("cap", argv("true"), vec![], None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "session_busy");
    assert!(err.to_string().contains("limit is 2"), "{err}");
    // A finished spawn is forgotten after the retention period.
    m.attach("cap", &third.id)
        .unwrap()
        .spawn
        .control
        .kill()
        .unwrap();
    let mut exit = m.attach("cap", &third.id).unwrap().exit.clone();
    exit.wait_for(Option::is_some).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if m.spawn_info("cap", &third.id).is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "finished spawn was never forgotten");
    assert!(m.spawn_info("cap", &long.id).is_ok());
}
