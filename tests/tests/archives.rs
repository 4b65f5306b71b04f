//! Export and import (`.boxlite`): a round trip is byte-exact (contents,
//! modes, owners, symlinks, hard links, deletions), downloads resume with
//! Range, and every hostile archive is refused with a clear error and
//! nothing left behind.

use std::io::Write;

use blink_e2e::rest::Answer;
use blink_e2e::{Blink, Server, server_fixture, texts};
use serde_json::{Value, json};
use sha2::Digest;

/// Every file under the given roots as "path mode uid gid size sha/link".
const TREE: &str = "find /root /etc /usr/share -xdev | sort | while read -r p; do \
    if [ -L \"$p\" ]; then echo \"$p link $(readlink \"$p\")\"; \
    elif [ -f \"$p\" ]; then echo \"$p $(stat -c '%a %u %g %s %h' \"$p\") $(sha256sum < \"$p\" | cut -c1-16)\"; \
    else echo \"$p $(stat -c '%F %a %u %g' \"$p\")\"; fi; done";

#[test]
fn export_then_import_over_rest_is_byte_exact() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    let a = server.post(
        "/api/sessions",
        json!({"name": "a", "warm": true, "disk_mib": 512, "memory_mib": 300, "pids": 100}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    server.sh("a",
        "mkdir -p /root/d && echo one > /root/d/f && chmod 4750 /root/d/f && chown 7:8 /root/d/f \
         && ln -s d/f /root/link && ln /root/d/f /root/hard && rm -f /etc/group \
         && rm -rf /usr/share/udhcpc && mkdir -p /usr/share/udhcpc && echo new > /usr/share/udhcpc/x \
         && dd if=/dev/urandom of=/root/big bs=1M count=6 2>/dev/null && mkfifo /root/pipe",
    );
    let before = server.sh("a", TREE);

    // Exported while it runs; downloaded whole and in two ranges.
    let e = server.post_raw("/api/sessions/a/export", None, b"");
    assert_eq!(e.status, 201, "{:?}", e.body);
    let file = e.body["filename"].as_str().expect("filename").to_owned();
    let (status, length, whole) = server.get_bytes(&format!("/api/exports/{file}"), &[]);
    assert_eq!(status, 200);
    assert_eq!(length, Some(whole.len() as u64));
    assert_eq!(whole.len() as u64, e.body["size_bytes"].as_u64().unwrap());
    let (status, _, head) =
        server.get_bytes(&format!("/api/exports/{file}"), &[("Range", "bytes=0-99")]);
    assert_eq!((status, head.len()), (206, 100));
    let (status, _, tail) =
        server.get_bytes(&format!("/api/exports/{file}"), &[("Range", "bytes=100-")]);
    assert_eq!(status, 206);
    assert_eq!([head, tail].concat(), whole, "a resumed download differs");
    let (status, _, _) = server.get_bytes("/api/exports/nope.boxlite", &[]);
    assert_eq!(status, 404);
    let (status, _, _) = server.get_bytes("/api/exports/..%2Fblink.lock", &[]);
    assert_eq!(status, 404);

    let imported =
        server.post_multipart("/api/import", &[("name", "b")], Some(("archive", &whole)));
    assert_eq!(imported.status, 201, "{:?}", imported.body);
    assert_eq!(imported.body["session"]["name"], "b");
    assert_eq!(imported.body["session"]["disk"]["size_bytes"], 512u64 << 20);
    let after = server.sh("b", TREE);
    assert_eq!(before, after, "the imported tree differs");
    // Independent of its source.
    server.sh("b", "echo b > /root/d/f");
    assert_eq!(server.sh("a", "cat /root/d/f"), "one\n");
    // The same name again: refused, unless replaced.
    let again = server.post_multipart("/api/import", &[("name", "b")], Some(("archive", &whole)));
    assert_eq!(
        (again.status, again.code()),
        (409, "session_exists"),
        "{:?}",
        again.body
    );
    let replaced = server.post_multipart(
        "/api/import",
        &[("name", "b"), ("replace", "true")],
        Some(("archive", &whole)),
    );
    assert_eq!(replaced.status, 201, "{:?}", replaced.body);
    assert_eq!(server.sh("b", "cat /root/d/f"), "one\n");
    // The limits it brings come along where this server allows them...
    let size = &replaced.body["session"]["resources"];
    assert_eq!(
        (size["memory_mib"].clone(), size["pids"].clone()),
        (json!(300), json!(100))
    );
    // ...and on a server whose maxima they exceed, its defaults apply.
    let Some(other) = Blink::with_runtime() else {
        return;
    };
    let strict = other
        .server()
        .config("[sandbox]\npids = 50\nmax_pids = 64\n")
        .start();
    let imported =
        strict.post_multipart("/api/import", &[("name", "c")], Some(("archive", &whole)));
    assert_eq!(imported.status, 201, "{:?}", imported.body);
    let size = &imported.body["session"]["resources"];
    assert_eq!(
        (size["memory_mib"].clone(), size["pids"].clone()),
        (json!(300), json!(50))
    );
}

#[test]
fn the_cli_exports_and_imports_with_snapshots_and_without_the_image() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    blink.ok(&["session", "open", "--name", "my-agent"]);
    blink.ok(&[
        "session",
        "exec",
        "--name",
        "my-agent",
        "--",
        "sh",
        "-c",
        "echo 1 > /root/step",
    ]);
    blink.ok(&[
        "session",
        "checkpoint",
        "--name",
        "my-agent",
        "--snapshot",
        "step-1",
    ]);
    blink.ok(&[
        "session",
        "exec",
        "--name",
        "my-agent",
        "--",
        "sh",
        "-c",
        "echo 2 > /root/step",
    ]);
    let archive = blink.data_dir.path().join("out.boxlite");
    let path = archive.to_str().expect("utf-8");
    let (code, out) = blink.json(&[
        "session",
        "export",
        "--name",
        "my-agent",
        "-o",
        path,
        "--snapshots",
        "--no-image",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out["size_bytes"].as_u64().unwrap() > 0);
    blink.ok(&["session", "import", path, "--name", "copy"]);
    let step = blink.ok(&[
        "session",
        "exec",
        "--name",
        "copy",
        "--",
        "cat",
        "/root/step",
    ]);
    assert_eq!(step, "2\n");
    blink.ok(&[
        "session",
        "restore",
        "--name",
        "copy",
        "--snapshot",
        "step-1",
    ]);
    let step = blink.ok(&[
        "session",
        "exec",
        "--name",
        "copy",
        "--",
        "cat",
        "/root/step",
    ]);
    assert_eq!(step, "1\n");
    // No image in it: a host without the image is told so.
    let other = Blink::new();
    let out = other.run(&["session", "import", path, "--name", "x"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        texts(&out).1.contains("not on this host"),
        "{:?}",
        texts(&out)
    );
}

/// TREE without link counts: overlayfs shows a file of a lower layer with
/// its count there, even once another of its names is shadowed above (the
/// exported tree, rightly, links what it shows).
const LAYERED_TREE: &str = "find /root /etc /usr/share -xdev | sort | while read -r p; do \
    if [ -L \"$p\" ]; then echo \"$p link $(readlink \"$p\")\"; \
    elif [ -f \"$p\" ]; then echo \"$p $(stat -c '%a %u %g %s' \"$p\") $(sha256sum < \"$p\" | cut -c1-16)\"; \
    else echo \"$p $(stat -c '%F %a %u %g' \"$p\")\"; fi; done";

/// A session over a chain of disk layers (a snapshot of it running, one
/// of it stopped, changes over both that delete and replace what the
/// layers hold) exports as one tree and imports back identically, its
/// snapshots too.
#[test]
fn a_session_over_disk_layers_exports_and_imports_identically() {
    let Some((_blink, server)) = server_fixture() else {
        return;
    };
    let a = server.post("/api/sessions", json!({"name": "a", "disk_mib": 256}));
    assert_eq!(a.status, 201, "{:?}", a.body);
    server.sh(
        "a",
        "mkdir -p /root/d/sub && echo one > /root/d/f && echo x > /root/d/sub/x \
         && ln /root/d/f /root/hard && chown 7:8 /root/d/f && rm -f /etc/group \
         && echo keep > /root/keep && echo gone > /root/gone && echo p > /root/p1 \
         && ln /root/p1 /root/p2",
    );
    // s1 of the stopped session (its disk becomes a layer), s2 of the
    // running one (a copy over it), and its disk over two layers.
    let stop = || {
        let stopped = server.post_raw("/api/sessions/a/stop?force=true", None, b"");
        assert_eq!(stopped.status, 200, "{:?}", stopped.body);
    };
    let snapshot = |name: &str| {
        let made = server.post("/api/sessions/a/checkpoints", json!({"snapshot": name}));
        assert_eq!(made.status, 201, "{:?}", made.body);
    };
    stop();
    snapshot("s1");
    let at_s1 = server.sh("a", LAYERED_TREE);
    server.sh(
        "a",
        "rm /root/gone && rm -rf /root/d/sub && mkdir /root/d/sub && echo y > /root/d/sub/y \
         && chmod 600 /root/keep && rm -rf /usr/share/udhcpc && echo 2 > /root/two",
    );
    snapshot("s2");
    let at_s2 = server.sh("a", LAYERED_TREE);
    stop();
    snapshot("s3");
    server.sh(
        "a",
        "echo three > /root/d/f && rm /root/two && mkdir -p /usr/share/udhcpc \
         && echo back > /usr/share/udhcpc/z && touch /root/gone && rm /root/keep",
    );
    assert_eq!(server.get("/api/sessions/a").body["disk"]["layers"], 2);
    let before = server.sh("a", LAYERED_TREE);

    let e = server.post_raw("/api/sessions/a/export?snapshots=true", None, b"");
    assert_eq!(e.status, 201, "{:?}", e.body);
    let file = e.body["filename"].as_str().expect("filename").to_owned();
    let (status, _, whole) = server.get_bytes(&format!("/api/exports/{file}"), &[]);
    assert_eq!(status, 200);
    let imported =
        server.post_multipart("/api/import", &[("name", "b")], Some(("archive", &whole)));
    assert_eq!(imported.status, 201, "{:?}", imported.body);
    assert_eq!(
        server.sh("b", LAYERED_TREE),
        before,
        "the imported tree differs"
    );
    assert_eq!(
        server.sh("b", "stat -c %i /root/p1 /root/p2 | uniq | wc -l"),
        "1\n",
        "a hard link of a layer was not kept"
    );
    for (snapshot, tree) in [("s1", &at_s1), ("s2", &at_s2)] {
        let r = server.post_raw(
            &format!("/api/sessions/b/checkpoints/{snapshot}/restore?force=true"),
            None,
            b"",
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            &server.sh("b", LAYERED_TREE),
            tree,
            "snapshot {snapshot} differs"
        );
    }
}

/// One entry of a hand-made archive.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Device(&'a str),
}

fn header(version: u64) -> Vec<u8> {
    let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    serde_json::to_vec(&json!({
        "format": "blink-session", "version": version, "created_at": 0, "writer": "test",
        "session": {"name": "evil", "warm": false, "limits": {"memory_mib": null, "cpus": null, "pids": null, "disk_mib": 64}},
        "image": {"reference": "blink/default:latest", "digest": digest, "layers": []},
        "snapshots": [], "includes_image": false
    }))
    .unwrap()
}

/// An archive of `entries` after a header of `version`, with correct
/// checksums unless `corrupt`.
fn archive(version: u64, entries: &[Entry<'_>], corrupt: bool) -> Vec<u8> {
    let mut sums = serde_json::Map::new();
    let mut tar = tar::Builder::new(Vec::new());
    let add = |tar: &mut tar::Builder<Vec<u8>>,
               path: &str,
               kind: tar::EntryType,
               data: &[u8],
               link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // Raw names: the tar crate would refuse to write the hostile ones.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        tar.append(&h, data).unwrap();
    };
    add(
        &mut tar,
        "blink-archive.json",
        tar::EntryType::Regular,
        &header(version),
        None,
    );
    add(&mut tar, "changes/", tar::EntryType::Directory, b"", None);
    for e in entries {
        match e {
            Entry::File(p, data) => {
                add(&mut tar, p, tar::EntryType::Regular, data, None);
                let digest = hex::encode(sha2::Sha256::digest(if corrupt { b"x" } else { *data }));
                sums.insert((*p).to_owned(), Value::from(format!("sha256:{digest}")));
            }
            Entry::Symlink(p, t) => add(&mut tar, p, tar::EntryType::Symlink, b"", Some(t)),
            Entry::Link(p, t) => add(&mut tar, p, tar::EntryType::Link, b"", Some(t)),
            Entry::Device(p) => add(&mut tar, p, tar::EntryType::Char, b"", None),
        }
    }
    let sums = serde_json::to_vec(&Value::Object(sums)).unwrap();
    add(
        &mut tar,
        "checksums.json",
        tar::EntryType::Regular,
        &sums,
        None,
    );
    zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap()
}

fn import(server: &Server, data: &[u8]) -> Answer {
    server.post_multipart("/api/import", &[("name", "evil")], Some(("archive", data)))
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing_behind() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let server = blink
        .server()
        .config("[rest]\nmax_import_bytes = 4194304\n")
        .start();
    // Each case fails on its own defect, while reading, before the image
    // (which these archives only name) would be looked for.
    server.open_session("seed");
    let big = vec![0u8; 256 << 20];
    let bomb = {
        // 256 MiB of zeros compresses to little; the disk is 64 MiB.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(header(1).len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "blink-archive.json", &header(1)[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "changes/zeros", &big[..]).unwrap();
        let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&tar.into_inner().unwrap()).unwrap();
        enc.finish().unwrap()
    };
    drop(big);
    let good = archive(1, &[Entry::File("changes/ok", b"fine")], false);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            archive(1, &[Entry::File("changes/../../escape", b"x")], false),
            "'..'",
        ),
        (
            "absolute",
            archive(1, &[Entry::File("/etc/escape", b"x")], false),
            "absolute",
        ),
        (
            "symlink out",
            archive(
                1,
                &[Entry::Symlink("changes/root/l", "../../../etc")],
                false,
            ),
            "leads out",
        ),
        (
            "hard link out",
            archive(
                1,
                &[Entry::Link("changes/h", "changes/never-written")],
                false,
            ),
            "hard link",
        ),
        (
            "device",
            archive(1, &[Entry::Device("changes/dev/sda")], false),
            "device node",
        ),
        (
            "checksum",
            archive(1, &[Entry::File("changes/f", b"data")], true),
            "checksum",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        (
            "version",
            archive(99, &[], false),
            "unknown archive format version 99",
        ),
        ("not zstd", b"hello".to_vec(), "unreadable"),
        ("bomb", bomb, "do not fit"),
    ];
    for (what, data, says) in cases {
        let a = import(&server, &data);
        assert!(
            matches!(a.status, 400 | 413 | 422 | 507 | 500),
            "{what}: {} {:?}",
            a.status,
            a.body
        );
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(
            server.get("/api/sessions/evil").status,
            404,
            "{what}: a session was made"
        );
        let sandboxes: Vec<String> = std::fs::read_dir(blink.data_dir.path().join("sandboxes"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(sandboxes.len(), 1, "{what}: left behind: {sandboxes:?}");
        let uploads: Vec<_> = std::fs::read_dir(blink.data_dir.path().join("exports"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(uploads.is_empty(), "{what}: uploads left: {uploads:?}");
    }
    // Past rest.max_import_bytes: 413, answered before the body is read
    // (so over a raw socket: a client that insists on sending it all gets
    // its connection closed).
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    write!(
        socket,
        "POST /api/import HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: {}\r\n\r\n",
        5u64 << 20
    )
    .unwrap();
    let mut answer = String::new();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = std::io::Read::read_to_string(&mut socket, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    // A form without the archive.
    let a = server.post_multipart("/api/import", &[("name", "evil")], None);
    assert_eq!(a.status, 400, "{:?}", a.body);
}
