//! The abuse suite, as an SSH user with OpenSSH's `sftp` and `scp`: the
//! sftp server runs inside the sandbox with exactly its privileges, so no
//! file operation reaches the host's settings, devices or files, and what
//! it writes belongs to the session's own host ids.

use blink_e2e::abuse::{is_root, unavailable};
use blink_e2e::ssh::SshFixture;
use blink_e2e::texts;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

/// Host ids of sandboxes start here.
const ID_BASE: u32 = 0x7000_0000;

fn local(f: &SshFixture, name: &str) -> String {
    f.client.path(name).display().to_string()
}

#[test]
fn sftp_cannot_change_host_settings_or_devices() {
    let Some(f) = SshFixture::new() else { return };

    // A host sysctl, uploaded over with the very value it has now: even a
    // success would change nothing, and the put must fail.
    let sysctl = "/proc/sys/kernel/printk_ratelimit_burst";
    let before = std::fs::read(sysctl).expect("read sysctl");
    let local = f.client.path("burst");
    std::fs::write(&local, &before).expect("write");
    let out = f.sftp(&format!("put {} {sysctl}\n", local.display()));
    assert_ne!(
        out.status.code(),
        Some(0),
        "sftp wrote a sysctl: {:?}",
        texts(&out)
    );
    assert_eq!(std::fs::read(sysctl).expect("read sysctl"), before);

    // The host's /dev/full is bind-mounted into the sandbox: a chmod to
    // the mode it has now must still be refused (the sandbox does not own
    // it), and its mode stays.
    let full = std::fs::metadata("/dev/full").expect("stat /dev/full");
    let mode = full.mode() & 0o7777;
    let out = f.sftp(&format!("chmod {mode:o} /dev/full\n"));
    assert_ne!(
        out.status.code(),
        Some(0),
        "sftp changed the mode of the host's /dev/full: {:?}",
        texts(&out)
    );
    let after = std::fs::metadata("/dev/full").expect("stat /dev/full");
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (full.mode(), full.uid(), full.gid())
    );
}

#[test]
fn sftp_sees_only_the_sandbox() {
    let Some(f) = SshFixture::new() else { return };

    // Kernel symbols: no addresses for the sandbox.
    let out = f.sftp(&format!("get /proc/kallsyms {}\n", local(&f, "kallsyms")));
    if out.status.code() == Some(0) {
        let text = std::fs::read_to_string(f.client.path("kallsyms")).expect("kallsyms");
        eprintln!(
            "/proc/kallsyms through sftp: {} lines",
            text.lines().count()
        );
        for l in text.lines() {
            let address = l.split_whitespace().next().unwrap_or("");
            assert!(
                address.bytes().all(|b| b == b'0'),
                "sftp shows a kernel address: {l}"
            );
        }
    }

    // Links to /etc/shadow: always the sandbox's own (a marker), never the
    // host's.
    let marker = "blink-shadow-marker\n";
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    f.sh("printf 'blink-shadow-marker\\n' > /etc/shadow && ln -s /etc/shadow /root/s");
    // (`-`: the batch goes on if the command fails.)
    let batch = format!(
        "get s {s}\nsymlink /etc/shadow s2\nget s2 {s2}\nln /etc/shadow h1\nget h1 {h1}\n\
         -ln /../../../../etc/shadow h2\n-get h2 {h2}\n-ln /proc/1/root/etc/shadow h3\n\
         -get h3 {h3}\n-symlink /proc/1/root/etc/shadow s3\n-get s3 {s3}\n",
        s = local(&f, "s"),
        s2 = local(&f, "s2"),
        h1 = local(&f, "h1"),
        h2 = local(&f, "h2"),
        h3 = local(&f, "h3"),
        s3 = local(&f, "s3"),
    );
    let out = f.sftp(&batch);
    let (stdout, stderr) = texts(&out);
    eprintln!("links:\n{stdout}\n{stderr}");
    for name in ["s", "s2", "h1", "h2", "h3", "s3"] {
        match std::fs::read_to_string(f.client.path(name)) {
            Ok(text) => {
                assert_eq!(text, marker, "{name} is not the sandbox's /etc/shadow");
                assert!(host_shadow.is_empty() || text != host_shadow);
            }
            // Links that reach through `..` or another process's root may
            // be refused; made, they must stay inside.
            Err(_) => assert!(
                ["h2", "h3", "s3"].contains(&name),
                "{name}: {stdout}\n{stderr}"
            ),
        }
    }
    // A hard link across file systems (to a kernel file) cannot exist.
    let out = f.sftp("ln /proc/kallsyms /root/k\n");
    assert_ne!(out.status.code(), Some(0), "{:?}", texts(&out));

    // The root directory is the sandbox's: the same as a shell inside sees.
    f.sh("mkdir -p /sandbox-root-marker");
    let out = f.sftp("ls -1a /\n");
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    let via_sftp: BTreeSet<String> = texts(&out)
        .0
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "." && l != "..")
        .collect();
    let via_shell: BTreeSet<String> = f
        .sh("ls -1a /")
        .lines()
        .map(str::to_owned)
        .filter(|l| l != "." && l != "..")
        .collect();
    assert!(via_sftp.contains("sandbox-root-marker"), "{via_sftp:?}");
    assert_eq!(via_sftp, via_shell);

    // Processes: /proc through sftp holds the sandbox's few, under its init.
    let out = f.sftp(&format!(
        "ls -1 /proc\nget /proc/1/cmdline {}\n",
        local(&f, "cmdline")
    ));
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    let pids = texts(&out)
        .0
        .lines()
        .map(|l| l.trim().trim_start_matches("/proc/"))
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .count();
    assert!(
        (1..=6).contains(&pids),
        "sftp shows {pids} processes: {}",
        texts(&out).0
    );
    let cmdline = std::fs::read(f.client.path("cmdline")).expect("cmdline");
    assert!(
        cmdline.starts_with(b"/.blink/guest\0init"),
        "pid 1 is not the sandbox's init: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
}

#[test]
fn sftp_and_scp_uploads_belong_to_the_sessions_ids() {
    let Some(f) = SshFixture::new() else { return };
    if !is_root() {
        unavailable("per-sandbox id ranges need blink-server running as root");
        return;
    }
    let local = f.client.path("upload");
    std::fs::write(&local, "uploaded\n").expect("write");
    let out = f.sftp(&format!(
        "put {} /root/by-sftp\nmkdir /root/dir-by-sftp\nput {} /tmp/in-tmp\n",
        local.display(),
        local.display()
    ));
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    let out = f.client.scp(
        &f.server,
        local.to_str().expect("utf-8"),
        "s1@127.0.0.1:/root/by-scp",
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));

    let root = std::fs::metadata(f.blink.disk_path(&f.box_id, "/"))
        .expect("stat the disk")
        .uid();
    assert!(root >= ID_BASE, "the disk belongs to host uid {root}");
    for path in ["/root/by-sftp", "/root/dir-by-sftp", "/root/by-scp"] {
        let meta = std::fs::symlink_metadata(f.blink.disk_path(&f.box_id, path))
            .unwrap_or_else(|e| panic!("{path} is not on the disk: {e}"));
        assert!(
            meta.uid() >= ID_BASE && meta.gid() >= ID_BASE,
            "{path} is owned by host {}:{}",
            meta.uid(),
            meta.gid()
        );
        assert_eq!(
            (meta.uid(), meta.gid()),
            (root, root),
            "{path} is not the session's root's"
        );
    }
}
