//! Faults: an upload cut short, and blink-server killed with SIGKILL in
//! the middle of an upload or of a session's start. Afterwards an uploaded
//! file is whole or absent (never short), and a restarted server leaves no
//! sandbox process, mount or cgroup of the old one behind.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use blink_e2e::abuse::{id_base_config, private_id_base};
use blink_e2e::leftovers::{
    cgroups_of, describe, mounts_under, still_there, traces, wait_processes_gone,
};
use blink_e2e::ssh::{Client, SshFixture, sha, write_file};
use blink_e2e::{Blink, Server, texts};
use rand::RngCore;
use serde_json::json;

/// Ids the sandboxes of a test server with a private base may use (a few
/// ranges of 65536).
const IDS_SPAN: u64 = 16 * 65536;

fn random_file(path: &std::path::Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).expect("write");
    data
}

/// `sftp` putting `local` to `remote` at about 500 KB/s, so a test can
/// interrupt it; not waited for.
fn slow_upload(client: &Client, server: &Server, local: &str, remote: &str) -> Child {
    let batch = client.path(&format!("batch-{remote}").replace('/', "_"));
    write_file(&batch, &format!("put {local} {remote}\n"));
    Command::new("sftp")
        .args(client.common_opts("id"))
        .args(["-l", "4000", "-P", &server.ssh_port.to_string(), "-b"])
        .arg(&batch)
        .arg("s1@127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sftp")
}

/// Wait until some process of the session holds an unnamed file in
/// `/root`: the staged upload (`/root/#<inode> (deleted)`).
fn wait_staged(client: &Client, server: &Server) {
    let probe = "for i in $(seq 200); do \
                 ls -l /proc/[0-9]*/fd 2>/dev/null | grep -q '/root/#' && exit 0; sleep 0.05; done; exit 1";
    let out = blink_e2e::run(client.ssh(server, "id", "s1").arg(probe), b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the upload never started: {:?}",
        texts(&out)
    );
}

/// Like [`SshFixture::new`], but with the server's own id base: the
/// session is made over REST by that server (the CLI would use the
/// default base).
fn private_fixture(config: &str) -> Option<SshFixture> {
    let blink = Blink::with_runtime()?;
    let client = Client::new();
    let server = blink.server().config(config).log_filter("info").start();
    let box_id = server.open_session("s1");
    let a = server.post(
        "/api/sessions/s1/keys",
        json!({"key": client.public_key("id")}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    Some(SshFixture {
        blink,
        client,
        server,
        box_id,
    })
}

/// Whether a process runs (exists and is not a zombie awaiting its reaper).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|state| !state.trim_start().starts_with('Z'))
    })
}

fn ls_root(client: &Client, server: &Server) -> String {
    let out = blink_e2e::run(client.ssh(server, "id", "s1").arg("ls -a /root"), b"");
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    texts(&out).0
}

#[test]
fn an_upload_cut_short_leaves_the_old_file_or_nothing() {
    let Some(f) = SshFixture::new() else { return };
    let big = f.client.path("big");
    random_file(&big, 32 << 20);
    f.sh("echo old > /root/keep");
    for target in ["keep", "fresh"] {
        let mut sftp = slow_upload(&f.client, &f.server, &big.display().to_string(), target);
        wait_staged(&f.client, &f.server);
        sftp.kill().expect("kill sftp");
        sftp.wait().expect("wait sftp");
    }
    assert_eq!(f.sh("cat /root/keep"), "old\n", "the old file was touched");
    let listing = ls_root(&f.client, &f.server);
    assert!(
        !listing.contains("fresh"),
        "a cut upload left a file: {listing}"
    );
    assert!(
        !listing.contains(".sftp-"),
        "a staging name was left: {listing}"
    );

    // A whole upload replaces the file and keeps its mode and owner.
    f.sh("chmod 640 /root/keep && chown 12:34 /root/keep");
    let small = f.client.path("small");
    let data = random_file(&small, 3 << 20);
    let out = f.sftp(&format!("put {} keep\n", small.display()));
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    let out = f.sh("sha256sum /root/keep; stat -c '%a %u %g' /root/keep");
    assert!(out.starts_with(&sha(&data)), "{out}");
    assert!(out.ends_with("640 12 34\n"), "{out}");
    // Resumed uploads still write in place (`reput` appends to a part).
    let part = f.client.path("part");
    std::fs::write(&part, &data[..1 << 20]).expect("part");
    let out = f.sftp(&format!("put {} resumed\n", part.display()));
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    let out = f.sftp(&format!("reput {} resumed\n", small.display()));
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    assert!(f.sh("sha256sum /root/resumed").starts_with(&sha(&data)));
}

#[test]
fn sigkill_during_an_upload_then_restart_leaves_nothing_behind() {
    let base = private_id_base();
    let config = id_base_config(base);
    let Some(mut f) = private_fixture(&config) else {
        return;
    };
    let big = f.client.path("big");
    random_file(&big, 32 << 20);
    let whole = f.client.path("whole");
    let data = random_file(&whole, 4 << 20);
    let out = f.sftp(&format!("put {} whole\n", whole.display()));
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));

    let mut sftp = slow_upload(&f.client, &f.server, &big.display().to_string(), "cut");
    wait_staged(&f.client, &f.server);
    let status = f.server.signal_and_wait("KILL");
    assert!(!status.success());
    let _ = sftp.wait();
    let left = wait_processes_gone(base, IDS_SPAN);
    assert!(
        left.is_empty(),
        "sandbox processes outlived the server: {}",
        describe(&left)
    );

    let data_dir = f.blink.data_dir.path();
    // The disk's overlay lived in the sandbox's own mount namespace and
    // went with it.
    assert_eq!(
        mounts_under(data_dir),
        Vec::<String>::new(),
        "mounts left on the host"
    );
    let crashed = traces(data_dir);
    let server = f.blink.server().config(&config).start();
    assert_eq!(
        still_there(&crashed, data_dir),
        Vec::<String>::new(),
        "left after the restart"
    );
    // The session opens; the cut upload is absent, the whole one whole.
    let out = blink_e2e::run(
        f.client
            .ssh(&server, "id", "s1")
            .arg("sha256sum /root/whole; ls -a /root"),
        b"",
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with(&sha(&data)), "{stdout}");
    assert!(
        !stdout.contains("cut"),
        "a cut upload is on the disk: {stdout}"
    );
    assert_eq!(
        mounts_under(data_dir),
        Vec::<String>::new(),
        "a disk mounted on the host"
    );
    assert!(cgroups_of(&f.box_id).len() <= 1, "one cgroup per boot");
}

#[test]
fn sigkill_during_session_starts_then_restart_leaves_nothing_behind() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let base = private_id_base();
    let config = id_base_config(base);
    // Kill at several points of a start (creating the disk, mounting it,
    // starting bubblewrap, waiting for the sandbox); a bounded number of
    // rounds.
    for (round, delay_ms) in [0u64, 15, 40, 80, 160].into_iter().enumerate() {
        let mut server = blink.server().config(&config).start();
        let name = format!("k{round}");
        let port = server.http_port;
        let body = json!({"name": name, "warm": true});
        let request = std::thread::spawn(move || {
            ureq::post(&format!("http://127.0.0.1:{port}/api/sessions"))
                .timeout(Duration::from_secs(30))
                .send_json(body)
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        assert!(!server.signal_and_wait("KILL").success());
        let _ = request.join();
        // A sandbox caught at the very start of bubblewrap can outlive the
        // server for a while (bubblewrap's own child, before it set its
        // parent-death signal); the restart kills it through its cgroup.
        let left = wait_processes_gone(base, IDS_SPAN);

        let data_dir = blink.data_dir.path();
        assert_eq!(
            mounts_under(data_dir),
            Vec::<String>::new(),
            "round {round}: mounts left"
        );
        let crashed = traces(data_dir);
        let server = blink.server().config(&config).start();
        let mut alive = left.clone();
        for _ in 0..100 {
            alive.retain(|pid| running(*pid));
            if alive.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            alive.is_empty(),
            "round {round}: processes of the killed server outlived its restart: {}",
            describe(&alive)
        );
        assert_eq!(
            still_there(&crashed, data_dir),
            Vec::<String>::new(),
            "round {round}: left after the restart"
        );
        // The session opens: made now if the kill came before its record.
        let a = server.post("/api/sessions", json!({"name": name}));
        assert!(matches!(a.status, 200 | 201), "round {round}: {:?}", a.body);
        let run = server.run_wait(
            &format!("/api/sessions/{name}/runs"),
            json!({"command": ["sh", "-c", "echo ok > /root/f && cat /root/f"]}),
        );
        assert_eq!(
            blink_e2e::rest::stdout(&run),
            "ok\n",
            "round {round}: {run:?}"
        );
    }
}
