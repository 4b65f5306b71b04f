//! The gateway with the clients people use, each doing what it usually
//! does: OpenSSH's ssh and sftp, paramiko and asyncssh (Python scripts in
//! tests/clients/, each checking one connection from login to keepalives),
//! and rsync over ssh both ways. Every server here sends a keepalive each
//! second and drops a client that leaves two unanswered, so a client that
//! does not answer them fails its keepalive check.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use blink_e2e::ssh::{Client, SshFixture, sha};
use blink_e2e::{Server, run, texts};
use rand::RngCore;

/// Session `s1` and a server whose keepalives come every second, at most
/// two unanswered.
fn fixture() -> Option<SshFixture> {
    SshFixture::with(|server| {
        server.config("[ssh.limits]\nkeepalive_interval_secs = 1\nkeepalive_max = 2\n")
    })
}

/// Run a command, killing it if it runs past `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// Whether python3 can import `module`.
fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// Run a client script against a fresh server and session; every check it
/// makes must pass (`ok: NAME` lines, exit 0).
fn python_client(module: &str, script_name: &str, checks: &[&str]) {
    if !blink_sdk::testing::require(
        python_has(module),
        &format!("python3 with {module} (scripts/install-deps.sh installs it)"),
    ) {
        return;
    }
    let Some(fx) = fixture() else {
        return;
    };
    let (client, server) = (&fx.client, &fx.server);
    let mut cmd = Command::new("python3");
    cmd.arg(script(script_name))
        .arg(server.ssh_port.to_string())
        .arg("s1")
        .arg(client.path("id"))
        .arg(client.path("other"))
        .arg(&server.fingerprint)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_bounded(cmd, Duration::from_secs(180));
    let (stdout, stderr) = texts(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{script_name}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for check in checks {
        assert!(
            stdout.lines().any(|l| l == format!("ok: {check}")),
            "{script_name} did not report {check:?}\n{stdout}"
        );
    }
    // The gateway's SFTP audit read the client's SFTP to its end.
    let log = server.log();
    assert!(!log.contains("sftp audit stopped"), "{log}");
}

#[test]
fn paramiko() {
    python_client(
        "paramiko",
        "paramiko_client.py",
        &[
            "login with a wrong key then the right one",
            "exec: exit status, stdout and stderr apart",
            "exec: stdin and its EOF",
            "exec with a PTY",
            "shell with a PTY",
            "sftp: open, write and read at offsets, append, fstat",
            "sftp: setstat and fsetstat (chmod, chown, utime, truncate)",
            "sftp: put and get 3 MiB byte-exact",
            "sftp: listdir and long names",
            "sftp: rename (no replace) and posix-rename",
            "sftp: symlink and readlink, both ways",
            "sftp: remove and rmdir",
            "keepalives both ways on a quiet channel",
        ],
    );
}

#[test]
fn asyncssh() {
    python_client(
        "asyncssh",
        "asyncssh_client.py",
        &[
            "login with a wrong key then the right one",
            "exec: exit status, stdout and stderr apart",
            "exec: stdin and its EOF",
            "exec: exit signal",
            "exec with a PTY",
            "sftp: open, write and read at offsets, fstat, fsync, ftruncate, fchmod, fstatvfs",
            "sftp: setstat (chmod, chown, utime, truncate) and statvfs",
            "sftp: put and get 3 MiB byte-exact",
            "sftp: listdir, readdir with long names, glob",
            "sftp: rename (no replace), posix-rename, hard link",
            "sftp: symlink and readlink, both ways",
            "sftp: remove, rmdir, rmtree",
            "keepalives both ways on a quiet channel",
        ],
    );
}

/// OpenSSH options offering the wrong key first, then the right one.
fn two_keys(client: &Client) -> Vec<String> {
    let mut opts = client.common_opts("other");
    opts.extend(["-i".into(), client.path("id").display().to_string()]);
    opts.extend([
        "-o".into(),
        "ServerAliveInterval=1".into(),
        "-o".into(),
        "ServerAliveCountMax=3".into(),
    ]);
    opts
}

fn ssh(client: &Client, server: &Server, command: &str) -> Command {
    ssh_with(client, server, &[], command)
}

/// `ssh` with more options (`-tt`) before the destination.
fn ssh_with(client: &Client, server: &Server, extra: &[&str], command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(two_keys(client))
        .args(extra)
        .arg("-p")
        .arg(server.ssh_port.to_string())
        .arg("s1@127.0.0.1")
        .arg(command);
    cmd
}

fn sftp_batch(client: &Client, server: &Server, batch: &str) -> Output {
    let file = client.path("batch");
    std::fs::write(&file, batch).expect("write batch");
    let mut cmd = Command::new("sftp");
    cmd.args(two_keys(client))
        .arg("-P")
        .arg(server.ssh_port.to_string())
        .arg("-b")
        .arg(&file)
        .arg("s1@127.0.0.1");
    run_bounded(cmd, Duration::from_secs(120))
}

#[test]
fn openssh() {
    let Some(fx) = fixture() else {
        return;
    };
    let (client, server) = (&fx.client, &fx.server);

    // Two keys, the wrong one first; exit status and both streams.
    let out = run(
        &mut ssh(client, server, "echo out; echo err >&2; exit 3"),
        b"",
    );
    assert_eq!(out.status.code(), Some(3), "{:?}", texts(&out));
    assert_eq!(texts(&out), ("out\n".into(), "err\n".into()));

    // A PTY.
    let mut cmd = ssh_with(client, server, &["-tt"], "tty; echo $TERM");
    cmd.env("TERM", "xterm");
    let out = run_bounded(cmd, Duration::from_secs(60));
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("xterm"), "{stdout}");

    // Every sftp command that reaches the server. SYMLINK goes in
    // OpenSSH's order; the link's target is checked in the sandbox, and a
    // link made in the sandbox is followed by sftp.
    let mut data = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut data);
    let up = client.path("up");
    std::fs::write(&up, &data).expect("write");
    let back = client.path("back");
    // Partial copies each way, for reput and reget to finish.
    let half = client.path("half");
    std::fs::write(&half, &data[..300_000]).expect("write");
    std::fs::write(client.path("back.3"), &data[..100_000]).expect("write");
    let out = run(
        &mut ssh(client, server, "ln -s /root/odir/file /root/made-in-shell"),
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    let batch = format!(
        "mkdir odir\ncd odir\nput {up} file\nls -l\nchmod 640 file\nchown 0 file\nchgrp 0 file\n\
         ln -s file soft\nln file hard\nrename hard moved\ndf -h .\nget soft {back}\n\
         get /root/made-in-shell {back}.2\nput {half} part\nreput {up} part\n\
         reget part {back}.3\nmkdir sub\nrmdir sub\nls -ln\npwd\n",
        up = up.display(),
        half = half.display(),
        back = back.display(),
    );
    let out = sftp_batch(client, server, &batch);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("-rw-r-----"), "{stdout}");
    assert!(
        stdout.contains("Remote working directory: /root/odir"),
        "{stdout}"
    );
    for got in [back.clone(), client.path("back.2"), client.path("back.3")] {
        assert_eq!(
            sha(&std::fs::read(&got).expect("downloaded")),
            sha(&data),
            "{}",
            got.display()
        );
    }
    let out = run(
        &mut ssh(
            client,
            server,
            "readlink /root/odir/soft; stat -c '%h %u %g %a' /root/odir/file; ls /root/odir",
        ),
        b"",
    );
    assert_eq!(
        texts(&out).0,
        "file\n2 0 0 640\nfile\nmoved\npart\nsoft\n",
        "{:?}",
        texts(&out)
    );
    let out = sftp_batch(
        client,
        server,
        "rm odir/soft\nrm odir/moved\nrm odir/file\nrm odir/part\nrmdir odir\nrm made-in-shell\nls\n",
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));

    // A quiet command across several keepalives each way.
    let out = run_bounded(
        ssh(client, server, "sleep 4; echo awake"),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    assert_eq!(texts(&out).0, "awake\n");
}

/// The host's rsync and the libraries it loads (from `ldd`), as (path
/// in the sandbox, file on the host).
fn rsync_files() -> Option<Vec<(String, PathBuf)>> {
    let rsync = which("rsync")?;
    let out = Command::new("ldd").arg(&rsync).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut files = vec![("/usr/bin/rsync".to_string(), rsync)];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            let real = std::fs::canonicalize(path).ok()?;
            files.push((path.to_string(), real));
        }
    }
    Some(files)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A tree of files to copy: nested directories, a symlink, modes.
fn make_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
    let mut rng = rand::rng();
    for (name, len) in [("top", 10_000), ("a/mid", 300_000), ("a/b/c/deep", 2 << 20)] {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        std::fs::write(root.join(name), data).expect("write");
    }
    std::fs::write(root.join("a/b/script"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(
        root.join("a/b/script"),
        std::fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("b/c/deep", root.join("a/link")).expect("symlink");
}

/// Every entry of a tree: path, kind, mode, size and content digest (or
/// link target), sorted.
fn tree_listing(root: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                out.push(format!("{rel} link -> {}", target.display()));
            } else if meta.is_dir() {
                out.push(format!("{rel} dir {mode:o}"));
                walk(root, &path, out);
            } else {
                let digest = sha(&std::fs::read(&path).expect("read"));
                out.push(format!("{rel} file {mode:o} {} {digest}", meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// rsync over ssh, both ways. rsync must run inside the sandbox too: the
/// host's rsync and its libraries are put there over sftp first (the
/// default image is busybox; no network or image build is needed).
#[test]
fn rsync_over_ssh_both_ways() {
    let files = rsync_files();
    if !blink_sdk::testing::require(
        files.is_some(),
        "rsync and ldd on the host (scripts/install-deps.sh installs rsync)",
    ) {
        return;
    }
    let files = files.unwrap_or_default();
    let Some(fx) = fixture() else {
        return;
    };
    let (client, server) = (&fx.client, &fx.server);

    // Install rsync into the sandbox, through the gateway's sftp.
    let mut batch = String::new();
    for (inside, _) in &files {
        let mut dir = String::new();
        for part in Path::new(inside)
            .parent()
            .expect("parent")
            .components()
            .skip(1)
        {
            dir.push('/');
            dir.push_str(&part.as_os_str().to_string_lossy());
            batch.push_str(&format!("-mkdir {dir}\n"));
        }
    }
    for (inside, host) in &files {
        batch.push_str(&format!(
            "put {} {inside}\nchmod 755 {inside}\n",
            host.display()
        ));
    }
    let out = sftp_batch(client, server, &batch);
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    let out = run(&mut ssh(client, server, "rsync --version"), b"");
    assert_eq!(out.status.code(), Some(0), "{:?}", texts(&out));
    assert!(texts(&out).0.starts_with("rsync"), "{:?}", texts(&out));

    let e = {
        let mut e = String::from("ssh");
        for opt in two_keys(client) {
            e.push(' ');
            e.push_str(&opt);
        }
        e.push_str(&format!(" -p {}", server.ssh_port));
        e
    };
    let rsync = |args: &[&str]| {
        let mut cmd = Command::new("rsync");
        cmd.arg("-e").arg(&e).args(args);
        let out = run_bounded(cmd, Duration::from_secs(120));
        assert_eq!(
            out.status.code(),
            Some(0),
            "rsync {args:?}: {:?}",
            texts(&out)
        );
        texts(&out).0
    };
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    let back = work.path().join("back");
    make_tree(&src);

    // Up, then down again: the same tree.
    rsync(&[
        "-a",
        &format!("{}/", src.display()),
        "s1@127.0.0.1:/root/dst/",
    ]);
    rsync(&[
        "-a",
        "s1@127.0.0.1:/root/dst/",
        &format!("{}/", back.display()),
    ]);
    assert_eq!(tree_listing(&back), tree_listing(&src));
    let out = run(&mut ssh(client, server, "readlink /root/dst/a/link"), b"");
    assert_eq!(texts(&out).0, "b/c/deep\n");

    // Incremental: one file changed, one removed; only that one is sent.
    std::fs::write(src.join("top"), "changed\n").expect("write");
    std::fs::remove_file(src.join("a/mid")).expect("rm");
    let stats = rsync(&[
        "-a",
        "--delete",
        "--stats",
        &format!("{}/", src.display()),
        "s1@127.0.0.1:/root/dst/",
    ]);
    assert!(
        stats.contains("Number of regular files transferred: 1"),
        "{stats}"
    );
    rsync(&[
        "-a",
        "--delete",
        "s1@127.0.0.1:/root/dst/",
        &format!("{}/", back.display()),
    ]);
    assert_eq!(tree_listing(&back), tree_listing(&src));
}
