//! The gateway's sftp subsystem with OpenSSH's `sftp` and `scp`: large
//! files byte-exact, the usual operations, and paths that try to escape.

use blink_e2e::ssh::{Client, Server, run, setup, sha, start_server};
use blink_e2e::{Blink, local_runtime_available, texts};
use rand::RngCore;
use std::process::{Command, Output};

fn sftp_batch(client: &Client, server: &Server, batch: &str) -> Output {
    let file = client.path("batch");
    std::fs::write(&file, batch).expect("write batch");
    let mut cmd = Command::new("sftp");
    cmd.args(client.common_opts("id"))
        .arg("-P")
        .arg(server.port.to_string())
        .arg("-b")
        .arg(&file)
        .arg("s1@127.0.0.1");
    run(cmd, b"")
}

fn random_file(path: &std::path::Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).expect("write");
    data
}

#[test]
fn sftp_large_file_operations_and_scp() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);

    let big = client.path("big");
    let data = random_file(&big, 64 << 20);
    let back = client.path("back");
    let batch = format!(
        "pwd\nput {big} big\nls -l\nrename big moved\nget moved {back}\nmkdir dir\n\
         ls\nchmod 600 moved\nls -l moved\nln -s moved link\nrm moved\nrmdir dir\nrm link\nls\n",
        big = big.display(),
        back = back.display()
    );
    let out = sftp_batch(&client, &server, &batch);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Remote working directory: /root"),
        "{stdout}"
    );
    assert!(stdout.contains("67108864"), "{stdout}");
    assert!(stdout.contains("-rw-------"), "{stdout}");
    assert_eq!(sha(&std::fs::read(&back).expect("back")), sha(&data));
    // The file was really in the session, and is really gone.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("ls /root");
    let out = run(cmd, b"");
    assert_eq!(texts(&out).0, "");

    // Offsets: resume a partial download (`reget`) of a file written by a
    // command in the session.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("cat > /root/part");
    let small = vec![7u8; 300_000];
    assert_eq!(run(cmd, &small).status.code(), Some(0));
    let local = client.path("part");
    std::fs::write(&local, &small[..100_000]).expect("write");
    let out = sftp_batch(
        &client,
        &server,
        &format!("reget part {}\n", local.display()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    assert_eq!(std::fs::read(&local).expect("part"), small);

    // scp (sftp protocol) both ways.
    let up = client.path("up");
    let up_data = random_file(&up, 5 << 20);
    let scp = |from: String, to: String| {
        let mut cmd = Command::new("scp");
        cmd.args(client.common_opts("id"))
            .arg("-P")
            .arg(server.port.to_string())
            .arg(from)
            .arg(to);
        run(cmd, b"")
    };
    let out = scp(
        up.display().to_string(),
        "s1@127.0.0.1:/root/up".to_string(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("sha256sum /root/up");
    let out = run(cmd, b"");
    assert!(
        texts(&out).0.starts_with(&sha(&up_data)),
        "{:?}",
        texts(&out)
    );
    let down = client.path("down");
    let out = scp(
        "s1@127.0.0.1:/root/up".to_string(),
        down.display().to_string(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    assert_eq!(std::fs::read(&down).expect("down"), up_data);
}

#[test]
fn sftp_paths_stay_inside_the_sandbox() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);

    // A marker only the sandbox's /etc/passwd has.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("echo blink-marker:x:4242:4242::/:/bin/false >> /etc/passwd");
    assert_eq!(run(cmd, b"").status.code(), Some(0));

    let got = |name: &str| client.path(name).display().to_string();
    let batch = format!(
        "get ../../etc/passwd {a}\nget /../../../etc/passwd {b}\n\
         ln -s / rootlink\nget rootlink/etc/passwd {c}\n\
         ln -s .. uplink\nget uplink/uplink/uplink/etc/passwd {d}\n\
         cd /../..\npwd\n",
        a = got("a"),
        b = got("b"),
        c = got("c"),
        d = got("d"),
    );
    // `uplink/uplink` resolves to `/uplink`, which does not exist: that get
    // fails and ends the batch after the others succeeded.
    let out = sftp_batch(&client, &server, &batch);
    let (stdout, _) = texts(&out);
    for name in ["a", "b", "c"] {
        let text = std::fs::read_to_string(client.path(name)).expect(name);
        assert!(text.contains("blink-marker"), "{name}: {text}");
    }
    assert!(!client.path("d").exists(), "{stdout}");

    let batch = format!(
        "ln -s .. up2\nget up2/etc/passwd {e}\ncd /../..\npwd\nput {e} ../../../../escaped\n",
        e = got("e"),
    );
    let out = sftp_batch(&client, &server, &batch);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Remote working directory: /\n"), "{stdout}");
    let text = std::fs::read_to_string(client.path("e")).expect("e");
    assert!(text.contains("blink-marker"));
    // The upload above landed at the sandbox's root, not the host's.
    assert!(!std::path::Path::new("/escaped").exists());
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("test -f /escaped && echo inside");
    assert_eq!(texts(&run(cmd, b"")).0, "inside\n");
}

#[test]
fn sftp_sees_the_running_sandbox_including_its_tmp() {
    if !local_runtime_available() {
        return;
    }
    let blink = Blink::new();
    let client = Client::new();
    setup(&blink, &client);
    let server = start_server(&blink, &[]);
    let src = client.path("note");
    std::fs::write(&src, "through sftp\n").expect("write");
    let out = sftp_batch(
        &client,
        &server,
        &format!("put {} /tmp/note\n", src.display()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    // A command in the same (running) sandbox reads it from its /tmp.
    let mut cmd = client.ssh(&server, "id", "s1");
    cmd.arg("cat /tmp/note");
    let out = run(cmd, b"");
    assert_eq!(texts(&out).0, "through sftp\n", "{}", texts(&out).1);
}
