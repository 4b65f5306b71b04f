//! The abuse suite, as an unprivileged local user of the host (uid and gid
//! 65534, no groups, through `setpriv`): Blink's data dir, the sessions'
//! disks and what sessions make on them stay out of that user's reach, and
//! what the user sends to the REST API runs only inside a sandbox.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Output;

use blink_e2e::abuse::{Marker, as_nobody, unavailable};
use blink_e2e::{Blink, Server, run, texts};
use serde_json::{Value, json};

/// Host ids of sandboxes start here.
const ID_BASE: u32 = 0x7000_0000;

fn nobody(program: &str, args: &[&str]) -> Option<Output> {
    let mut cmd = as_nobody(program)?;
    Some(run(cmd.args(args), b""))
}

fn session_run(server: &Server, command: &str) -> Value {
    let a = server.post(
        "/api/sessions/s1/runs?wait=true",
        json!({"command": ["sh", "-c", command]}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["state"], "succeeded", "{:?}", a.body);
    a.body
}

/// The directory of the test's one session.
fn session_dir(blink: &Blink) -> PathBuf {
    std::fs::read_dir(blink.data_dir.path().join("sandboxes"))
        .expect("list sandboxes")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("a session's directory")
}

/// A host path of a file a session made, found as root: on the disk where
/// the disk is a directory; through a process of the running sandbox where
/// it is a disk image (mounted only inside).
fn on_disk(blink: &Blink, sandbox_path: &str) -> PathBuf {
    let dir = session_dir(blink);
    let box_id = dir.file_name().expect("name").to_str().expect("utf-8");
    let path = blink.disk_path(box_id, sandbox_path);
    assert!(path.exists(), "{sandbox_path} is on no disk");
    path
}

/// A local user's attempt must fail for lack of permission.
fn assert_denied(out: &Output, what: &str, secret: Option<&str>) {
    let (stdout, stderr) = texts(out);
    assert!(
        !out.status.success(),
        "an unprivileged user could {what}: {stdout}"
    );
    assert!(
        stderr.contains("Permission denied"),
        "{what}: failed, but not for lack of permission: {stderr}"
    );
    if let Some(secret) = secret {
        assert!(!stdout.contains(secret), "{what}: {stdout}");
    }
}

fn setup() -> Option<(Blink, Server)> {
    let blink = Blink::with_runtime()?;
    // Without root there is no other user to be, nor id ranges.
    as_nobody("true")?;
    let server = blink.server().start();
    server.open_session("s1");
    Some((blink, server))
}

#[test]
fn the_data_dir_and_session_disks_are_closed_to_other_users() {
    let Some((blink, server)) = setup() else {
        return;
    };
    // Inside, the file and its directory are open to all: only Blink's
    // own directories can keep a host user out.
    session_run(
        &server,
        "echo top-secret > /root/secret && chmod 644 /root/secret && chmod 755 /root",
    );
    let secret = on_disk(&blink, "/root/secret");
    let data = blink.data_dir.path().to_str().expect("utf-8").to_owned();
    let sandboxes = format!("{data}/sandboxes");
    let secret_path = secret.to_str().expect("utf-8");
    let session = session_dir(&blink);
    let disk = session.to_str().expect("utf-8").to_owned();
    let image = session.join("disk.img");

    let Some(out) = nobody("ls", &[&data]) else {
        return;
    };
    assert_denied(&out, "list the data dir", None);
    let out = nobody("ls", &[&sandboxes]).expect("as nobody");
    assert_denied(&out, "list the sandboxes dir", None);
    let out = nobody("ls", &[&disk]).expect("as nobody");
    assert_denied(&out, "list a session's disk", None);
    let out = nobody("cat", &[secret_path]).expect("as nobody");
    assert_denied(&out, "read a session's private file", Some("top-secret"));
    if image.exists() {
        let out = nobody("cat", &[image.to_str().expect("utf-8")]).expect("as nobody");
        assert_denied(&out, "read a session's disk image", Some("top-secret"));
    }
}

#[test]
fn a_setuid_binary_made_inside_cannot_be_run_from_the_host() {
    let Some((blink, server)) = setup() else {
        return;
    };
    session_run(
        &server,
        "cp /bin/busybox /root/suid && chmod 4755 /root/suid && chmod 755 /root",
    );
    let suid = on_disk(&blink, "/root/suid");
    // The trap is real: a setuid file of a sandbox id, on the host's disk.
    let meta = std::fs::metadata(&suid).expect("stat");
    assert!(meta.mode() & 0o4000 != 0, "{:o}", meta.mode());
    if meta.uid() < ID_BASE {
        unavailable("per-sandbox id ranges need blink-server running as root");
        return;
    }
    let path = suid.to_str().expect("utf-8");
    let out = nobody(path, &["id"]).expect("as nobody");
    assert_denied(&out, "run a setuid file made in a session", None);

    // Control: the harness's user really is unprivileged (a program in a
    // root-only directory is out of its reach too).
    let closed = tempfile::tempdir().expect("tempdir");
    let program = closed.path().join("program");
    std::fs::write(&program, "#!/bin/sh\necho ran\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
    }
    let out = nobody(program.to_str().expect("utf-8"), &[]).expect("as nobody");
    assert_denied(&out, "run a program in a root-only directory", Some("ran"));
}

#[test]
fn a_local_users_ld_preload_to_the_rest_api_stays_inside() {
    let Some((_blink, server)) = setup() else {
        return;
    };
    let Some(marker) = Marker::build() else {
        return;
    };
    let curl = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !curl {
        unavailable("curl is not installed (the local user's HTTP client)");
        return;
    }
    let lib = marker.lib_arg();
    let check = "echo ran; if test -e \"$LD_PRELOAD\"; then echo visible; else echo absent; fi";
    for path in ["/api/runs", "/api/sessions/s1/runs"] {
        let body = json!({"command": ["sh", "-c", check], "env": {"LD_PRELOAD": lib}});
        let url = server.url(&format!("{path}?wait=true"));
        let out = nobody(
            "curl",
            &[
                "-sS",
                "--max-time",
                "120",
                "-H",
                "Content-Type: application/json",
                "--data",
                &body.to_string(),
                &url,
            ],
        )
        .expect("as nobody");
        let (stdout, stderr) = texts(&out);
        assert!(out.status.success(), "curl: {stderr}");
        let answer: Value = serde_json::from_str(&stdout).expect("JSON answer");
        assert_eq!(answer["stdout"]["data"], "ran\nabsent\n", "{answer}");
        marker.assert_none(&format!("a local user's LD_PRELOAD to {path}"));
    }
}
