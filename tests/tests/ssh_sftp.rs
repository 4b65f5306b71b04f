//! The gateway's sftp subsystem with OpenSSH's `sftp` and `scp`: large
//! files byte-exact, the usual operations, and paths that try to escape.

use blink_e2e::ssh::{SshFixture, sha};
use blink_e2e::texts;
use rand::RngCore;

fn random_file(path: &std::path::Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, &data).expect("write");
    data
}

#[test]
fn sftp_large_file_operations_and_scp() {
    let Some(f) = SshFixture::new() else { return };
    let client = &f.client;

    let big = client.path("big");
    let data = random_file(&big, 64 << 20);
    let back = client.path("back");
    let batch = format!(
        "pwd\nput {big} big\nls -l\nrename big moved\nget moved {back}\nmkdir dir\n\
         ls\nchmod 600 moved\nls -l moved\nln -s moved link\nrm moved\nrmdir dir\nrm link\nls\n",
        big = big.display(),
        back = back.display()
    );
    let out = f.sftp(&batch);
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
    let out = f.ssh(&["ls /root"], b"");
    assert_eq!(texts(&out).0, "");

    // Offsets: resume a partial download (`reget`) of a file written by a
    // command in the session.
    let small = vec![7u8; 300_000];
    assert_eq!(f.ssh(&["cat > /root/part"], &small).status.code(), Some(0));
    let local = client.path("part");
    std::fs::write(&local, &small[..100_000]).expect("write");
    let out = f.sftp(&format!("reget part {}\n", local.display()));
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    assert_eq!(std::fs::read(&local).expect("part"), small);

    // scp (sftp protocol) both ways.
    let up = client.path("up");
    let up_data = random_file(&up, 5 << 20);
    let scp = |from: &str, to: &str| client.scp(&f.server, from, to);
    let out = scp(&up.display().to_string(), "s1@127.0.0.1:/root/up");
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    let out = f.ssh(&["sha256sum /root/up"], b"");
    assert!(
        texts(&out).0.starts_with(&sha(&up_data)),
        "{:?}",
        texts(&out)
    );
    let down = client.path("down");
    let out = scp("s1@127.0.0.1:/root/up", &down.display().to_string());
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    assert_eq!(std::fs::read(&down).expect("down"), up_data);
}

#[test]
fn sftp_paths_stay_inside_the_sandbox() {
    let Some(f) = SshFixture::new() else { return };
    let client = &f.client;

    // A marker only the sandbox's /etc/passwd has.
    let out = f.ssh(
        &["echo blink-marker:x:4242:4242::/:/bin/false >> /etc/passwd"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));

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
    let out = f.sftp(&batch);
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
    let out = f.sftp(&batch);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Remote working directory: /\n"), "{stdout}");
    let text = std::fs::read_to_string(client.path("e")).expect("e");
    assert!(text.contains("blink-marker"));
    // The upload above landed at the sandbox's root, not the host's.
    assert!(!std::path::Path::new("/escaped").exists());
    let out = f.ssh(&["test -f /escaped && echo inside"], b"");
    assert_eq!(texts(&out).0, "inside\n");
}

#[test]
fn sftp_sees_the_running_sandbox_including_its_tmp() {
    let Some(f) = SshFixture::new() else { return };
    let src = f.client.path("note");
    std::fs::write(&src, "through sftp\n").expect("write");
    let out = f.sftp(&format!("put {} /tmp/note\n", src.display()));
    assert_eq!(out.status.code(), Some(0), "{}", texts(&out).1);
    // A command in the same (running) sandbox reads it from its /tmp.
    let out = f.ssh(&["cat /tmp/note"], b"");
    assert_eq!(texts(&out).0, "through sftp\n", "{}", texts(&out).1);
}
