//! Images from registries (docs/IMAGES.md), against a real registry on
//! 127.0.0.1 (Debian's `docker-registry`) fed by `skopeo` from OCI
//! layouts built here. Docker Hub names (`alpine:3.20`) reach it as a
//! mirror of `docker.io` with `mirror_fallback = false`, and
//! `allowed_registries` lists only loopback hosts and `docker.io`: nothing
//! leaves the machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use blink_e2e::registry::{
    Compression, HostileRegistry, Hostility, Layer, Layout, Registry, TokenServer, random_layer,
    sha256, tools_available,
};
use blink_e2e::{Blink, run, texts};
use serde_json::{Value, json};

/// `[images]` for these tests: `hosts` over plain HTTP, `docker.io`
/// mirrored by `mirrors` only.
fn images_config(mirrors: &[String], hosts: &[String], extra: &str) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut allowed: Vec<String> = hosts.to_vec();
    allowed.push("docker.io".into());
    format!(
        "[images]\npull = \"missing\"\nmirror_fallback = false\ninsecure_registries = [{}]\nallowed_registries = [{}]\n{extra}\n[images.mirrors]\n\"docker.io\" = [{}]\n",
        list(hosts),
        list(&allowed),
        list(mirrors),
    )
}

/// A Blink whose CLI pulls from `reg` (Docker Hub names through it).
fn blink_for(blink: Blink, reg: &Registry, extra: &str) -> Blink {
    blink.set_cli_config(&images_config(&[reg.host()], &[reg.host()], extra));
    blink
}

/// `blink-cli --json ARGS`: (exit code, stdout JSON or null, stderr).
fn cli_json(blink: &Blink, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Value, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let mut cmd = blink.cli(&all);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = run(&mut cmd, b"");
    let (stdout, stderr) = texts(&out);
    (
        out.status.code(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

fn pull(blink: &Blink, reference: &str) -> Value {
    let (code, v, stderr) = cli_json(blink, &["image", "pull", reference], &[]);
    assert_eq!(code, Some(0), "pull {reference}: {v} {stderr}");
    v
}

/// A refused pull: exit 125 and its error message.
fn refused(blink: &Blink, reference: &str, env: &[(&str, &str)]) -> String {
    let (code, v, stderr) = cli_json(blink, &["image", "pull", reference], env);
    assert_eq!(
        code,
        Some(125),
        "pull {reference} was not refused: {v} {stderr}"
    );
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every file of the image store with its size (the lock files aside).
fn store_files(blink: &Blink) -> BTreeMap<String, u64> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, u64>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            if path.is_dir() {
                out.insert(format!("{rel}/"), 0);
                walk(&path, base, out);
            } else if !rel.ends_with(".lock") && !rel.ends_with(".pulls") {
                out.insert(rel, entry.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    let dir = blink.data_dir.path().join("images");
    let mut out = BTreeMap::new();
    walk(&dir, &dir, &mut out);
    out
}

/// A busybox image with `/etc/os-release` saying `what`.
fn busybox_image(layout: &Layout, what: &str) -> Value {
    let release = Layer::of(
        &[("etc/os-release", format!("{what}\n").as_bytes(), 0o644)],
        Compression::Gzip,
    );
    layout.image(
        &[Layer::busybox(), release],
        blink_sdk::image::oci::host_architecture(),
        json!({}),
    )
}

#[test]
fn pulls_by_tag_and_digest_and_a_session_runs_on_the_image() {
    if !tools_available() {
        return;
    }
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let reg = Registry::start();
    let blink = blink_for(blink, &reg, "");
    let mut layout = Layout::new();
    let image = busybox_image(&layout, "pulled-from-a-registry");
    layout.tag("v1", &image);
    reg.push(&layout, "v1", "library/alpine:3.20");
    let digest = image["digest"].as_str().unwrap();

    // A Docker Hub name, normalized as Docker does, from the mirror.
    let report = pull(&blink, "alpine:3.20");
    assert_eq!(
        report["reference"], "docker.io/library/alpine:3.20",
        "{report}"
    );
    assert_eq!(report["digest"], digest, "{report}");
    assert_eq!(report["source"], format!("mirror {}", reg.host()));
    assert_eq!(
        report["fetched_blobs"], 3,
        "config and two layers: {report}"
    );
    assert_eq!(report["layers"], 2);

    // ls shows size and digest.
    let ls = blink.ok(&["image", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.starts_with("docker.io/library/alpine:3.20"))
        .unwrap_or_else(|| panic!("not listed: {ls}"));
    assert!(line.contains(digest) && line.contains("MiB"), "{line}");

    // By digest, from the registry itself: every blob is already here.
    let by_digest = format!("{}/library/alpine@{digest}", reg.host());
    let report = pull(&blink, &by_digest);
    assert_eq!(report["reference"], by_digest);
    assert_eq!(report["fetched_blobs"], 0, "{report}");
    assert_eq!(report["cached_blobs"], 3, "{report}");

    // A session on it runs a command, with the image's environment.
    blink.ok(&["session", "open", "--name", "s", "--image", "alpine:3.20"]);
    let out = blink.ok(&[
        "session",
        "exec",
        "--name",
        "s",
        "--",
        "sh",
        "-c",
        "cat /etc/os-release; echo env=$FROM_IMAGE",
    ]);
    assert_eq!(out, "pulled-from-a-registry\nenv=yes\n");

    // Not removed while the session uses it, unless forced.
    let (code, v, _) = cli_json(&blink, &["image", "rm", "alpine:3.20"], &[]);
    assert_eq!(code, Some(125));
    assert_eq!(v["error"]["code"], "image_in_use", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("session(s) s"),
        "{v}"
    );
    blink.ok(&["session", "rm", "--name", "s"]);
    blink.ok(&["image", "rm", "alpine:3.20"]);
    blink.ok(&["image", "rm", &by_digest]);
    let (_, list, _) = cli_json(&blink, &["image", "ls"], &[]);
    assert_eq!(list, json!([]), "{list}");
    let blobs = std::fs::read_dir(blink.data_dir.path().join("images/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs of removed images stay");
}

#[test]
fn a_multi_platform_index_gives_this_hosts_image() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start();
    let blink = blink_for(Blink::new(), &reg, "");
    let mut layout = Layout::new();
    let host = blink_sdk::image::oci::host_architecture();
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let mine_layer = random_layer("arch", 1000);
    let other_layer = random_layer("arch", 1000);
    let mine = layout.image(std::slice::from_ref(&mine_layer), host, json!({}));
    let theirs = layout.image(std::slice::from_ref(&other_layer), other, json!({}));
    let index = layout.index_of(&[theirs, mine.clone()]);
    layout.tag("multi", &index);
    reg.push(&layout, "multi", "test/multi:1");

    let report = pull(&blink, &format!("{}/test/multi:1", reg.host()));
    assert_eq!(report["digest"], mine["digest"], "{report}");
    assert_eq!(report["resolved_digest"], index["digest"], "{report}");
    assert_eq!(report["fetched_blobs"], 2, "{report}");
    assert_eq!(reg.blob_gets(&sha256(&mine_layer.bytes)).len(), 1);
    assert!(
        reg.blob_gets(&sha256(&other_layer.bytes)).is_empty(),
        "the other platform's layer was fetched"
    );
}

#[test]
fn zstd_layers_are_pulled_on_demand_and_unpacked() {
    if !tools_available() {
        return;
    }
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let reg = Registry::start();
    let blink = blink_for(blink, &reg, "");
    let mut layout = Layout::new();
    let zstd = Layer::of(
        &[("hello", b"from a zstd layer\n", 0o644)],
        Compression::Zstd,
    );
    let image = layout.image(
        &[Layer::busybox(), zstd],
        blink_sdk::image::oci::host_architecture(),
        json!({}),
    );
    layout.tag("z", &image);
    reg.push(&layout, "z", "test/zstd:1");
    // A run naming an image the store lacks pulls it first.
    let script = blink.script("cat.sh", "#!/bin/sh\ncat /hello\n");
    let reference = format!("{}/test/zstd:1", reg.host());
    let out = blink.ok(&["run", "--image", &reference, script.to_str().unwrap()]);
    assert_eq!(out, "from a zstd layer\n");
    let (_, list, _) = cli_json(&blink, &["image", "ls"], &[]);
    assert_eq!(list[0]["reference"], reference, "{list}");
}

#[test]
fn broken_images_are_refused_and_leave_nothing_behind() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start();
    let redirects = HostileRegistry::start(Hostility::RedirectLoop);
    let endless = HostileRegistry::start(Hostility::EndlessManifest);
    let hosts = [reg.host(), redirects.host(), endless.host()];
    let blink = Blink::new();
    blink.set_cli_config(&images_config(
        &[reg.host()],
        &hosts,
        "max_manifest_bytes = 4096",
    ));
    let mut layout = Layout::new();
    let good = layout.image(&[random_layer("ok", 100)], "amd64", json!({}));
    layout.tag("good", &good);
    let bad_digest = random_layer("x", 100_000);
    let img = layout.image(std::slice::from_ref(&bad_digest), "amd64", json!({}));
    layout.tag("digest", &img);
    let short = random_layer("y", 100_000);
    let img = layout.image(std::slice::from_ref(&short), "amd64", json!({}));
    layout.tag("short", &img);
    let img = layout.image(
        &[random_layer("z", 100)],
        "amd64",
        json!({"padding": "p".repeat(5000)}),
    );
    layout.tag("big", &img);
    for (tag, repo) in [
        ("good", "test/good:1"),
        ("digest", "test/digest:1"),
        ("short", "test/short:1"),
        ("big", "test/big:1"),
    ] {
        reg.push(&layout, tag, repo);
    }
    // One pull that works, so the store exists.
    pull(&blink, &format!("{}/test/good:1", reg.host()));
    let before = store_files(&blink);

    // Other bytes, same length: the digest check refuses them.
    let path = reg.blob_data(&sha256(&bad_digest.bytes));
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let e = refused(&blink, &format!("{}/test/digest:1", reg.host()), &[]);
    assert!(e.contains("digest mismatch"), "{e}");
    assert!(
        e.contains(&sha256(&bad_digest.bytes)) && e.contains(&sha256(&bytes)),
        "{e}"
    );
    assert_eq!(store_files(&blink), before, "after {e}");

    // Half the bytes: truncated.
    let path = reg.blob_data(&sha256(&short.bytes));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = refused(&blink, &format!("{}/test/short:1", reg.host()), &[]);
    assert!(
        e.contains("truncated")
            && e.contains(&format!("{} of the {}", bytes.len() / 2, bytes.len())),
        "{e}"
    );
    assert_eq!(store_files(&blink), before, "after {e}");

    // A manifest over [images] max_manifest_bytes.
    let e = refused(&blink, &format!("{}/test/big:1", reg.host()), &[]);
    assert!(
        e.contains("too large") && e.contains("the limit is 4096"),
        "{e}"
    );
    assert_eq!(store_files(&blink), before, "after {e}");

    // A redirect loop.
    let e = refused(&blink, &format!("{}/test/loop:1", redirects.host()), &[]);
    assert!(e.contains("too many redirects"), "{e}");
    assert_eq!(store_files(&blink), before, "after {e}");

    // A manifest that never ends: refused at the limit, not read on.
    let e = refused(&blink, &format!("{}/test/endless:1", endless.host()), &[]);
    assert!(
        e.contains("too large") && e.contains("the limit is 4096"),
        "{e}"
    );
    let sent = endless.sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < 64 << 20,
        "the endless manifest was read on: {sent} bytes"
    );
    assert_eq!(store_files(&blink), before, "after {e}");

    // A registry that is not allowed is never contacted.
    let e = refused(&blink, "127.0.0.9:5000/x:1", &[]);
    assert!(e.contains("not allowed"), "{e}");
}

#[test]
fn basic_auth_with_docker_config_credentials() {
    if !tools_available() {
        return;
    }
    let reg = Registry::with_auth("agent", "s3cret");
    let blink = Blink::new();
    let mut layout = Layout::new();
    let img = layout.image(&[random_layer("a", 1000)], "amd64", json!({}));
    layout.tag("a", &img);
    reg.push(&layout, "a", "private/app:1");
    let reference = format!("{}/private/app:1", reg.host());
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let docker_config = |user: &str, pass: &str| {
        json!({"auths": {reg.host(): {"auth": b64(&format!("{user}:{pass}"))}}}).to_string()
    };
    let auth_file = blink.data_dir.path().join("registry-auth.json");
    let config = |extra: &str| images_config(&[reg.host()], &[reg.host()], extra);
    blink.set_cli_config(&config(""));
    let before = {
        make_store(&blink);
        store_files(&blink)
    };

    // No credentials: 401, said plainly, nothing stored.
    let e = refused(&blink, &reference, &[]);
    assert!(
        e.contains("401") && e.contains("none are configured"),
        "{e}"
    );
    assert_eq!(store_files(&blink), before);

    // Wrong ones (from the environment): refused, naming the user only.
    let e = refused(
        &blink,
        &reference,
        &[("DOCKER_AUTH_CONFIG", &docker_config("agent", "wrong"))],
    );
    assert!(e.contains("refused the credentials of \"agent\""), "{e}");
    assert!(!e.contains("wrong"), "the password shows: {e}");

    // From a config.json named by [images] auth_file.
    std::fs::write(&auth_file, docker_config("agent", "s3cret")).unwrap();
    blink.set_cli_config(&config(&format!(
        "auth_file = {:?}",
        auth_file.display().to_string()
    )));
    let report = pull(&blink, &reference);
    assert_eq!(report["fetched_blobs"], 2, "{report}");

    // From the environment alone.
    blink.ok(&["image", "rm", &reference]);
    blink.set_cli_config(&config(""));
    let (code, v, stderr) = cli_json(
        &blink,
        &["image", "pull", &reference],
        &[("DOCKER_AUTH_CONFIG", &docker_config("agent", "s3cret"))],
    );
    assert_eq!(code, Some(0), "{v} {stderr}");
}

#[test]
fn bearer_tokens_from_the_registrys_token_service() {
    if !tools_available() {
        return;
    }
    let tokens = TokenServer::start("agent", "t0ken-pass");
    let reg = Registry::with_tokens(&tokens);
    let blink = Blink::new();
    let mut layout = Layout::new();
    let img = layout.image(&[random_layer("t", 1000)], "amd64", json!({}));
    layout.tag("t", &img);
    reg.push(&layout, "t", "private/tok:1");
    let reference = format!("{}/private/tok:1", reg.host());
    blink.set_cli_config(&images_config(&[reg.host()], &[reg.host()], ""));
    make_store(&blink);
    let before = store_files(&blink);

    // Anonymous: the token service refuses, and the error says so.
    let e = refused(&blink, &reference, &[]);
    assert!(e.contains("token service refused an anonymous pull"), "{e}");
    assert_eq!(store_files(&blink), before);

    // With credentials: a token, then the pull with it.
    let issued = tokens.issued.load(std::sync::atomic::Ordering::SeqCst);
    let auth = json!({"auths": {reg.host(): {"username": "agent", "password": "t0ken-pass"}}});
    let (code, v, stderr) = cli_json(
        &blink,
        &["image", "pull", &reference],
        &[("DOCKER_AUTH_CONFIG", &auth.to_string())],
    );
    assert_eq!(code, Some(0), "{v} {stderr}");
    assert_eq!(v["fetched_blobs"], 2, "{v}");
    assert!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst) > issued);
}

/// Make the store exist (an `image ls`).
fn make_store(blink: &Blink) {
    blink.ok(&["image", "ls"]);
}

#[test]
fn shared_layers_are_fetched_once_and_mirrors_are_tried_in_order() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start();
    let blink = Blink::new();
    // A dead mirror first (a closed loopback port), then the live one.
    blink.set_cli_config(&images_config(
        &["127.0.0.1:1".into(), reg.host()],
        &["127.0.0.1:1".into(), reg.host()],
        "",
    ));
    let mut layout = Layout::new();
    let base = random_layer("base", 1 << 20);
    let x = layout.image(&[base.clone(), random_layer("x", 1000)], "amd64", json!({}));
    let y = layout.image(&[base.clone(), random_layer("y", 1000)], "amd64", json!({}));
    layout.tag("x", &x);
    layout.tag("y", &y);
    reg.push(&layout, "x", "team/x:1");
    reg.push(&layout, "y", "team/y:1");

    let first = pull(&blink, "team/x:1");
    assert_eq!(first["reference"], "docker.io/team/x:1");
    assert_eq!(first["source"], format!("mirror {}", reg.host()), "{first}");
    let second = pull(&blink, "team/y:1");
    assert_eq!(
        second["fetched_blobs"], 2,
        "config and its own layer: {second}"
    );
    assert_eq!(second["cached_blobs"], 1, "{second}");
    assert!(
        second["fetched_bytes"].as_u64().unwrap() < 100_000,
        "the shared layer came again: {second}"
    );
    assert_eq!(reg.blob_gets(&sha256(&base.bytes)).len(), 1);
}

#[test]
fn concurrent_pulls_of_one_image_download_each_blob_once() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start();
    let blink = blink_for(Blink::new(), &reg, "");
    let mut layout = Layout::new();
    let layers: Vec<Layer> = (0..3)
        .map(|i| random_layer(&format!("l{i}"), 2 << 20))
        .collect();
    let img = layout.image(&layers, "amd64", json!({}));
    layout.tag("c", &img);
    reg.push(&layout, "c", "team/c:1");
    // Two processes at once (the blob locks are flock(2), across
    // processes and within one).
    let children: Vec<_> = (0..2)
        .map(|_| {
            blink
                .cli(&["--json", "image", "pull", "team/c:1"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", texts(&out));
    }
    for layer in &layers {
        assert_eq!(
            reg.blob_gets(&sha256(&layer.bytes)).len(),
            1,
            "a layer was downloaded twice"
        );
    }
}

#[test]
fn an_interrupted_download_resumes_and_prune_clears_leftovers() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start();
    let blink = blink_for(Blink::new(), &reg, "");
    let mut layout = Layout::new();
    let layer = random_layer("big", 4 << 20);
    let img = layout.image(std::slice::from_ref(&layer), "amd64", json!({}));
    layout.tag("r", &img);
    reg.push(&layout, "r", "team/r:1");
    let digest = sha256(&layer.bytes);
    let hex = digest.trim_start_matches("sha256:");
    make_store(&blink);
    let ingest = blink.data_dir.path().join("images/ingest");

    // What a cut-off download leaves: the first MiB.
    let have = 1 << 20;
    std::fs::write(ingest.join(format!("{hex}.partial")), &layer.bytes[..have]).unwrap();
    let report = pull(&blink, "team/r:1");
    let rest = (layer.bytes.len() - have) as u64;
    assert_eq!(reg.blob_gets(&digest), vec![rest], "not resumed");
    assert_eq!(
        report["fetched_bytes"].as_u64().unwrap(),
        rest + config_size(&report, &reg)
    );

    // A leftover with wrong bytes: resumed, found wrong, fetched whole.
    blink.ok(&["image", "rm", "team/r:1"]);
    let mut wrong = layer.bytes[..have].to_vec();
    wrong[10] ^= 1;
    std::fs::write(ingest.join(format!("{hex}.partial")), &wrong).unwrap();
    pull(&blink, "team/r:1");
    assert_eq!(
        reg.blob_gets(&digest),
        vec![rest, rest, layer.bytes.len() as u64],
        "a wrong leftover was kept"
    );

    // A whole leftover (cut off before it was kept) is checked, not asked for.
    blink.ok(&["image", "rm", "team/r:1"]);
    std::fs::write(ingest.join(format!("{hex}.partial")), &layer.bytes).unwrap();
    let report = pull(&blink, "team/r:1");
    assert_eq!(
        reg.blob_gets(&digest).len(),
        3,
        "asked again for a whole blob"
    );
    assert_eq!(
        report["fetched_bytes"].as_u64().unwrap(),
        config_size(&report, &reg)
    );

    // Prune takes leftovers no pull works on.
    std::fs::write(ingest.join(format!("{}.partial", "ab".repeat(32))), b"junk").unwrap();
    let (code, v, stderr) = cli_json(&blink, &["image", "prune"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(v["downloads"], 1, "{v}");
    assert!(!ingest.join(format!("{}.partial", "ab".repeat(32))).exists());
    // The image is untouched.
    let (_, list, _) = cli_json(&blink, &["image", "ls"], &[]);
    assert_eq!(list[0]["reference"], "docker.io/team/r:1");
}

#[test]
fn a_killed_pull_resumes_where_it_stopped() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start();
    let blink = blink_for(Blink::new(), &reg, "");
    let mut layout = Layout::new();
    let layer = random_layer("big", 48 << 20);
    let img = layout.image(std::slice::from_ref(&layer), "amd64", json!({}));
    layout.tag("k", &img);
    reg.push(&layout, "k", "team/k:1");
    let digest = sha256(&layer.bytes);
    make_store(&blink);
    let partial = blink.data_dir.path().join(format!(
        "images/ingest/{}.partial",
        digest.trim_start_matches("sha256:")
    ));
    let mut child = blink
        .cli(&["image", "pull", "team/k:1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL it once some MiB are down (bounded wait).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut had = 0;
    while std::time::Instant::now() < until {
        had = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if had >= 4 << 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        had >= 4 << 20 && kept < layer.bytes.len() as u64,
        "the download was not caught half-way ({had} then {kept} bytes)"
    );
    let report = pull(&blink, "team/k:1");
    let gets = reg.blob_gets(&digest);
    assert_eq!(
        gets.last().copied(),
        Some(layer.bytes.len() as u64 - kept),
        "not resumed from {kept}: {gets:?}"
    );
    assert_eq!(report["digest"], img["digest"]);
    assert!(!partial.exists());
}

/// Bytes of the config blob of the pulled image.
fn config_size(report: &Value, reg: &Registry) -> u64 {
    let manifest = std::fs::read(reg.blob_data(report["digest"].as_str().unwrap())).unwrap();
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    m["config"]["size"].as_u64().unwrap()
}

#[test]
fn rest_pulls_on_demand_once_for_concurrent_requests() {
    if !tools_available() {
        return;
    }
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let reg = Registry::start();
    let mut layout = Layout::new();
    let image = busybox_image(&layout, "rest-pulled");
    layout.tag("v1", &image);
    reg.push(&layout, "v1", "library/alpine:3.20");
    let server = blink
        .server()
        .config(&images_config(&[reg.host()], &[reg.host()], ""))
        .start();

    // Two sessions and an ephemeral run name it at once.
    std::thread::scope(|s| {
        let opens: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let server = &server;
                s.spawn(move || {
                    server.post(
                        "/api/sessions",
                        json!({"name": name, "image": "alpine:3.20"}),
                    )
                })
            })
            .collect();
        let run = s.spawn(|| {
            server.run_wait(
                "/api/runs",
                json!({"command": ["cat", "/etc/os-release"], "image": "alpine:3.20"}),
            )
        });
        for o in opens {
            let a = o.join().unwrap();
            assert!(a.status < 300, "{:?}", a.body);
        }
        let r = run.join().unwrap();
        assert_eq!(blink_e2e::rest::stdout(&r), "rest-pulled\n", "{r}");
    });
    for blob in image_blobs(&reg, image["digest"].as_str().unwrap()) {
        assert_eq!(
            reg.blob_gets(&blob).len(),
            1,
            "blob {blob} fetched more than once"
        );
    }
    assert_eq!(server.sh("a", "cat /etc/os-release"), "rest-pulled\n");

    let list = server.get("/api/images");
    assert_eq!(
        list.body["images"][0]["reference"],
        "docker.io/library/alpine:3.20"
    );
    // An explicit pull looks the tag up again; the blobs are here.
    let again = server.post("/api/images/pull", json!({"reference": "alpine:3.20"}));
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["fetched_blobs"], 0, "{:?}", again.body);
    assert_eq!(again.body["reference"], "docker.io/library/alpine:3.20");
    assert_eq!(again.body["digest"], image["digest"]);
    let bad = server.post("/api/images/pull", json!({"reference": ""}));
    assert_eq!((bad.status, bad.code()), (400, "invalid_argument"));
    let used = server.delete("/api/images?reference=alpine:3.20");
    assert_eq!(
        (used.status, used.code()),
        (409, "image_in_use"),
        "{:?}",
        used.body
    );
    let missing = server.post(
        "/api/images/pull",
        json!({"reference": format!("{}/library/nope:1", reg.host())}),
    );
    assert_eq!((missing.status, missing.code()), (404, "image_not_found"));

    // One audit line per pull that did the work (the concurrent ones that
    // waited for it have none), and the counters. The audit log is
    // written behind a queue: wait for its lines (20 s at most).
    let audit = blink.data_dir.path().join("audit/audit.jsonl");
    let pulls = |text: &str| -> Vec<Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["target"] == "blink::image")
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let lines = loop {
        let lines = pulls(&std::fs::read_to_string(&audit).unwrap_or_default());
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let ok: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "image pulled")
        .collect();
    assert_eq!(ok.len(), 2, "{lines:?}");
    assert_eq!(ok[0]["image"], "docker.io/library/alpine:3.20");
    assert_eq!(ok[0]["fetched_blobs"], 3, "{:?}", ok[0]);
    assert_eq!(ok[1]["fetched_blobs"], 0, "{:?}", ok[1]);
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "image pull failed" && l["result"] == "not_found"),
        "{lines:?}"
    );
    let (_, _, metrics) = server.get_bytes("/metrics", &[]);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("blink_image_pulls_total{result=\"ok\"} 2"),
        "{metrics}"
    );
}

/// The config and layer digests of a manifest the registry holds.
fn image_blobs(reg: &Registry, manifest: &str) -> Vec<String> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(reg.blob_data(manifest)).unwrap()).unwrap();
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect()
}
