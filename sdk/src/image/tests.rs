//! Image store tests: building, unpacking, importing, hostile input.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::oci::{
    self, Descriptor, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_TAR, MT_OCI_MANIFEST, Manifest,
};
use super::*;
use crate::error::Error;

// ---- helpers -------------------------------------------------------------

/// A tar entry for test layers; names are written raw (so `../x` and `/abs`
/// are possible).
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
}

fn raw_header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_000_000);
    h.set_uid(1234);
    h.set_gid(1234);
    let bytes = name.as_bytes();
    assert!(bytes.len() < 100);
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            E::Dir(n) => (raw_header(n, tar::EntryType::Directory, 0, 0o755), b""),
            E::File(n, d) => (
                raw_header(n, tar::EntryType::Regular, d.len() as u64, 0o6755),
                d,
            ),
            E::Sym(n, t) => {
                let mut h = raw_header(n, tar::EntryType::Symlink, 0, 0o777);
                h.set_link_name_literal(t).unwrap();
                (h, b"")
            }
            E::Hard(n, t) => {
                let mut h = raw_header(n, tar::EntryType::Link, 0, 0o644);
                h.set_link_name_literal(t).unwrap();
                (h, b"")
            }
            E::Fifo(n) => (raw_header(n, tar::EntryType::Fifo, 0, 0o644), b""),
            E::Char(n) => (raw_header(n, tar::EntryType::Char, 0, 0o644), b""),
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Config, layer descriptors and manifest bytes for test layers
/// (`(bytes, gzipped)`).
struct Built {
    config: Vec<u8>,
    layers: Vec<(Vec<u8>, Descriptor)>,
    manifest: Vec<u8>,
}

fn build(layers: &[(Vec<u8>, bool)]) -> Built {
    let descs: Vec<(Vec<u8>, Descriptor)> = layers
        .iter()
        .map(|(tar, gz)| {
            let bytes = if *gz { gzip(tar) } else { tar.clone() };
            let mt = if *gz {
                MT_OCI_LAYER_GZIP
            } else {
                MT_OCI_LAYER_TAR
            };
            let d = Descriptor::new(mt, oci::sha256_digest(&bytes), bytes.len() as u64);
            (bytes, d)
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|(t, _)| oci::sha256_digest(t)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci::host_architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin", "FOO=bar"], "Cmd": ["/bin/true"], "WorkingDir": "/w", "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: Descriptor::new(
            MT_OCI_CONFIG,
            oci::sha256_digest(&config),
            config.len() as u64,
        ),
        layers: descs.iter().map(|(_, d)| d.clone()).collect(),
        annotations: Default::default(),
    })
    .unwrap();
    Built {
        config,
        layers: descs,
        manifest,
    }
}

/// Put an image straight into the store.
fn store_image(store: &ImageStore, name: &str, layers: &[(Vec<u8>, bool)]) -> ResolvedImage {
    let b = build(layers);
    let mut staging = store.staging().unwrap();
    staging.add_bytes(&b.config).unwrap();
    for (bytes, _) in &b.layers {
        staging.add_bytes(bytes).unwrap();
    }
    let digest = staging.add_bytes(&b.manifest).unwrap();
    store
        .commit(
            staging,
            vec![(
                name.to_owned(),
                Descriptor::new(MT_OCI_MANIFEST, digest, b.manifest.len() as u64),
            )],
        )
        .unwrap();
    store.resolve(name).unwrap()
}

/// An outer archive from `(path, bytes)` files.
fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn oci_archive(built: &Built, ref_name: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut annotations = serde_json::Map::new();
    if let Some(n) = ref_name {
        annotations.insert(oci::ANNOTATION_REF_NAME.into(), n.into());
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MT_OCI_MANIFEST,
            "digest": oci::sha256_digest(&built.manifest),
            "size": built.manifest.len(),
            "annotations": annotations,
        }],
    });
    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".to_string(),
            serde_json::to_vec(&index).unwrap(),
        ),
        (
            blob_name(&oci::sha256_digest(&built.manifest)),
            built.manifest.clone(),
        ),
        (
            blob_name(&oci::sha256_digest(&built.config)),
            built.config.clone(),
        ),
    ];
    for (bytes, d) in &built.layers {
        files.push((blob_name(&d.digest), bytes.clone()));
    }
    files
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Everything in the store dir (relative paths) with sizes, for "unchanged".
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if rel == ".lock" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.push((rel, Vec::new()));
                stack.push(p);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn simple_layer() -> Vec<u8> {
    tar_of(&[E::Dir("bin/"), E::File("bin/hello", b"hello\n")])
}

// ---- default image -------------------------------------------------------

fn have_static_busybox() -> bool {
    std::fs::read(default_image::BUSYBOX_PATH)
        .ok()
        .and_then(|b| default_image::elf_is_static(&b).ok())
        .unwrap_or(false)
}

#[test]
fn default_image_builds_and_unpacks() {
    if !have_static_busybox() {
        eprintln!("skipped: no static /bin/busybox (apt-get install busybox-static)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let info = store.ensure_default().unwrap();
    assert_eq!(info.reference, DEFAULT_IMAGE);
    assert_eq!(info.layers, 1);
    // Deterministic: a rebuild gives the same digest.
    let again = store.build_default(None).unwrap();
    assert_eq!(again.digest, info.digest);
    assert_eq!(store.ensure_default().unwrap().digest, info.digest);

    let image = store.resolve("default").unwrap();
    assert_eq!(image.digest, info.digest);
    assert_eq!(image.cmd, vec!["/bin/sh"]);
    assert_eq!(image.working_dir.as_deref(), Some("/root"));
    assert_eq!(
        image.env_var("PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );

    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    let calls = std::cell::Cell::new(0);
    let cb = |_: Progress| calls.set(calls.get() + 1);
    store
        .unpack_with(&image, &dest, None, &UnpackOptions::default(), Some(&cb))
        .unwrap();
    assert!(calls.get() > 0);
    assert_eq!(
        std::fs::read_link(dest.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        std::fs::read_link(dest.join("usr/bin/env")).unwrap(),
        Path::new("/bin/busybox")
    );
    for d in [
        "root",
        "tmp",
        "var/blink/memory",
        "home",
        "proc",
        "dev",
        "sys",
    ] {
        assert!(dest.join(d).is_dir(), "{d}");
    }
    assert_eq!(
        std::fs::metadata(dest.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert!(
        std::fs::read_to_string(dest.join("etc/passwd"))
            .unwrap()
            .starts_with("root:x:0:0:")
    );
    let out = std::process::Command::new(dest.join("bin/busybox"))
        .args(["echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hi\n");
}

#[test]
fn elf_static_check() {
    assert!(default_image::elf_is_static(b"#!/bin/sh\n").is_err());
    if let Ok(b) = std::fs::read("/bin/ls") {
        assert_eq!(default_image::elf_is_static(&b), Ok(false));
    }
}

// ---- unpack --------------------------------------------------------------

#[test]
fn whiteouts_and_opaque_dirs() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let l1 = tar_of(&[
        E::Dir("a/"),
        E::File("a/f1", b"1"),
        E::Dir("a/sub/"),
        E::File("a/sub/f2", b"2"),
        E::Dir("b/"),
        E::File("b/keep", b"k"),
        E::File("b/gone", b"g"),
        E::Dir("b/gonedir/"),
        E::File("b/gonedir/x", b"x"),
        E::File("c", b"c"),
        E::File("d", b"file then dir"),
    ]);
    let l2 = tar_of(&[
        E::Dir("a/"),
        E::File("a/new", b"n"),
        E::File("a/.wh..wh..opq", b""),
        E::File("b/.wh.gone", b""),
        E::File("b/.wh.gonedir", b""),
        E::File(".wh.c", b""),
        E::File(".wh.never-existed", b""),
        E::Dir("d/"),
        E::File("d/inside", b"i"),
        E::Fifo("b/fifo"),
        E::Char("b/null"),
    ]);
    let image = store_image(&store, "test/wh", &[(l1, true), (l2, false)]);
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.env, vec!["PATH=/bin", "FOO=bar"]);
    assert_eq!(image.user.as_deref(), Some("1000"));
    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    store.unpack(&image, &dest, None).unwrap();
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dest.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("a"), vec!["new"]);
    assert_eq!(names("b"), vec!["fifo", "keep"]);
    assert!(!dest.join("c").exists());
    assert!(dest.join("d").is_dir());
    assert_eq!(std::fs::read(dest.join("d/inside")).unwrap(), b"i");
    // setuid/setgid stripped, ownership not taken from the tar.
    let md = std::fs::metadata(dest.join("b/keep")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755);
    assert_ne!(md.uid(), 1234);
    assert_eq!(md.mtime(), 1_000_000);
}

#[test]
fn hostile_layer_stays_inside() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let host_passwd = std::fs::read("/etc/passwd").ok();
    let layer = tar_of(&[
        E::File("../evil", b"evil"),
        E::File("../../../../../../tmp/blink-evil-abs", b"evil"),
        E::File("/abs", b"abs"),
        E::Sym("x", "/"),
        E::File("x/etc/evil", b"evil"),
        E::Sym("up", "../../.."),
        E::File("up/evil2", b"evil"),
        E::Sym("pw", "/etc/passwd"),
        E::File("pw", b"replaced the link, not the target"),
        E::File("etc/passwd", b"sandbox passwd\n"),
        E::Hard("hl", "/etc/passwd"),
        E::Hard("hl2", "../../../etc/passwd"),
    ]);
    let layer2 = tar_of(&[
        E::Sym("etc/shadow", "/etc/shadow"),
        E::File("x/etc/shadow", b"s"),
    ]);
    let image = store_image(&store, "test/hostile", &[(layer, true), (layer2, true)]);
    let outer = t.path().join("outer");
    let dest = outer.join("rootfs");
    std::fs::create_dir_all(&dest).unwrap();
    store.unpack(&image, &dest, None).unwrap();

    // Nothing appeared next to the destination.
    let beside: Vec<_> = std::fs::read_dir(&outer)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec!["rootfs"]);
    assert!(!t.path().join("evil").exists());
    assert!(!Path::new("/tmp/blink-evil-abs").exists());
    assert!(!Path::new("/etc/evil").exists());
    assert_eq!(std::fs::read("/etc/passwd").ok(), host_passwd);
    // Everything landed inside.
    assert_eq!(std::fs::read(dest.join("evil")).unwrap(), b"evil");
    assert_eq!(
        std::fs::read(dest.join("tmp/blink-evil-abs")).unwrap(),
        b"evil"
    );
    assert_eq!(std::fs::read(dest.join("abs")).unwrap(), b"abs");
    assert_eq!(std::fs::read(dest.join("etc/evil")).unwrap(), b"evil");
    assert_eq!(std::fs::read(dest.join("evil2")).unwrap(), b"evil");
    assert!(
        std::fs::symlink_metadata(dest.join("pw"))
            .unwrap()
            .is_file()
    );
    let ino = |p: &str| std::fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("hl"), ino("etc/passwd"));
    assert_eq!(ino("hl2"), ino("etc/passwd"));
    assert_eq!(std::fs::read(dest.join("etc/shadow")).unwrap(), b"s");
}

#[test]
fn hard_link_to_missing_file_fails_inside() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let layer = tar_of(&[E::Hard("hl", "/etc/passwd")]);
    let image = store_image(&store, "test/hl", &[(layer, false)]);
    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    let err = store.unpack(&image, &dest, None).unwrap_err();
    assert!(matches!(err, Error::InvalidImage { .. }), "{err}");
    assert!(!dest.join("hl").exists());
}

#[test]
fn unpack_limits() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let layer = tar_of(&[
        E::File("a", &[0u8; 4096]),
        E::File("b", b"b"),
        E::File("c", b"c"),
    ]);
    let image = store_image(&store, "test/limits", &[(layer, true)]);
    let dest = t.path().join("r1");
    std::fs::create_dir(&dest).unwrap();
    let opts = UnpackOptions {
        max_entries: 2,
        ..Default::default()
    };
    let err = store
        .unpack_with(&image, &dest, None, &opts, None)
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    let dest = t.path().join("r2");
    std::fs::create_dir(&dest).unwrap();
    let opts = UnpackOptions {
        max_bytes: 1000,
        ..Default::default()
    };
    let err = store
        .unpack_with(&image, &dest, None, &opts, None)
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[test]
fn corrupted_layer_blob_is_detected() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let image = store_image(&store, "test/corrupt", &[(simple_layer(), false)]);
    let path = &image.layers[0].path;
    let mut data = std::fs::read(path).unwrap();
    let n = data.len();
    data[n - 1] ^= 1; // in the zero padding: the tar still parses
    std::fs::write(path, &data).unwrap();
    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    let err = store.unpack(&image, &dest, None).unwrap_err();
    assert!(err.to_string().contains("digest"), "{err}");
}

#[test]
fn unpack_chowns_to_owner_as_root() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let layer = tar_of(&[
        E::Dir("d/"),
        E::File("d/f", b"x"),
        E::Sym("d/l", "f"),
        E::File("implicit/parent/f", b"y"),
    ]);
    let image = store_image(&store, "test/owner", &[(layer, true)]);
    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    store
        .unpack(&image, &dest, Some((900_000, 900_000)))
        .unwrap();
    for p in [
        "d",
        "d/f",
        "d/l",
        "implicit",
        "implicit/parent",
        "implicit/parent/f",
    ] {
        let md = std::fs::symlink_metadata(dest.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (900_000, 900_000), "{p}");
    }
}

// ---- store ---------------------------------------------------------------

#[test]
fn not_found_hint_and_bad_reference() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    match store.resolve("nope") {
        Err(Error::ImageNotFound { reference, hint }) => {
            assert_eq!(reference, "nope:latest");
            assert!(hint.contains("blink-cli image pull REF"), "{hint}");
            assert!(hint.contains("blink-cli image import FILE"), "{hint}");
            assert!(hint.contains("docker save"), "{hint}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        store.resolve("Bad Name"),
        Err(Error::InvalidImage { .. })
    ));
    assert!(store.list().unwrap().is_empty());
    assert!(t.path().join("oci-layout").is_file());
    assert!(t.path().join("index.json").is_file());
    // Reopening an existing store works.
    ImageStore::open(t.path()).unwrap();
}

#[test]
fn remove_and_gc() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let shared = simple_layer();
    let a = store_image(&store, "test/a", &[(shared.clone(), true)]);
    let b = store_image(
        &store,
        "test/b:v2",
        &[(shared, true), (tar_of(&[E::File("only-b", b"b")]), true)],
    );
    assert_eq!(
        store
            .list()
            .unwrap()
            .iter()
            .map(|i| i.reference.as_str())
            .collect::<Vec<_>>(),
        vec!["test/a:latest", "test/b:v2"]
    );
    let info = store.remove("test/a").unwrap();
    assert_eq!(info.digest, a.digest);
    assert!(!store.blob_path(&a.digest).unwrap().exists());
    assert!(b.layers.iter().all(|l| l.path.exists()));
    assert!(matches!(
        store.remove("test/a"),
        Err(Error::ImageNotFound { .. })
    ));
    store.remove("test/b:v2").unwrap();
    assert_eq!(
        std::fs::read_dir(t.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert!(store.list().unwrap().is_empty());
}

// ---- import --------------------------------------------------------------

#[test]
fn import_oci_archive() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let built = build(&[(simple_layer(), true)]);
    let tarball = archive(&oci_archive(&built, Some("test/oci:v1")));
    // Also gzip the outer archive.
    let file = write_file(t.path(), "oci.tar.gz", &gzip(&tarball));
    let infos = store.import_archive(&file, None).unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].reference, "test/oci:v1");
    assert_eq!(infos[0].digest, oci::sha256_digest(&built.manifest));
    let image = store.resolve("test/oci:v1").unwrap();
    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    store.unpack(&image, &dest, None).unwrap();
    assert_eq!(std::fs::read(dest.join("bin/hello")).unwrap(), b"hello\n");
    // No staging dirs left behind.
    assert!(std::fs::read_dir(store.dir()).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".staging")
    }));
}

#[test]
fn import_unnamed_needs_a_name() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let built = build(&[(simple_layer(), false)]);
    let file = write_file(t.path(), "oci.tar", &archive(&oci_archive(&built, None)));
    let err = store.import_archive(&file, None).unwrap_err();
    assert!(err.to_string().contains("has no name"), "{err}");
    let infos = store.import_archive(&file, Some("mine")).unwrap();
    assert_eq!(infos[0].reference, "mine:latest");
    assert!(store.contains("mine").unwrap());
}

#[test]
fn import_docker_save_legacy() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let l1 = simple_layer();
    let l2 = tar_of(&[E::File("etc/os-release", b"ID=test\n")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": [
            oci::sha256_digest(&l1), oci::sha256_digest(&l2), oci::sha256_digest(&l1)
        ]},
    }))
    .unwrap();
    let manifest = serde_json::json!([{
        "Config": "cfg.json",
        "RepoTags": ["test/docker:latest", "test/docker:1.0"],
        "Layers": ["l1/layer.tar", "l2/layer.tar", "l3/layer.tar"],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("cfg.json", &config);
    add("l1/layer.tar", &l1);
    add("l2/layer.tar", &l2);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "l3/layer.tar", "../l1/layer.tar")
        .unwrap();
    let file = write_file(t.path(), "docker.tar", &b.into_inner().unwrap());

    let infos = store.import_archive(&file, None).unwrap();
    let mut refs: Vec<_> = infos.iter().map(|i| i.reference.clone()).collect();
    refs.sort();
    assert_eq!(refs, vec!["test/docker:1.0", "test/docker:latest"]);
    let image = store.resolve("test/docker").unwrap();
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.cmd, vec!["sh"]);
    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    store.unpack(&image, &dest, None).unwrap();
    assert_eq!(std::fs::read(dest.join("bin/hello")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::read(dest.join("etc/os-release")).unwrap(),
        b"ID=test\n"
    );
}

/// Import `files` as an archive, expect an error containing `needle`, and
/// check the store is unchanged.
fn import_fails(files_tar: Vec<u8>, needle: &str) {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    store_image(&store, "test/existing", &[(simple_layer(), true)]);
    let before = snapshot(store.dir());
    let file = write_file(t.path(), "bad.tar", &files_tar);
    let err = store.import_archive(&file, Some("x")).unwrap_err();
    assert!(
        err.to_string().contains(needle),
        "{err} does not mention {needle:?}"
    );
    assert_eq!(snapshot(store.dir()), before, "store changed");
}

#[test]
fn import_rejects_digest_mismatch() {
    let built = build(&[(simple_layer(), true)]);
    let mut files = oci_archive(&built, Some("test/x"));
    let last = files.len() - 1;
    files[last].1 = gzip(&tar_of(&[E::File("other", b"tampered")]));
    import_fails(archive(&files), "digest mismatch");
}

#[test]
fn import_rejects_missing_blob() {
    let built = build(&[(simple_layer(), true)]);
    let mut files = oci_archive(&built, Some("test/x"));
    files.pop();
    import_fails(archive(&files), "missing from the archive");
}

#[test]
fn import_rejects_hostile_outer_tar() {
    // Path traversal.
    let mut b = tar::Builder::new(Vec::new());
    let h = raw_header("../escape", tar::EntryType::Regular, 1, 0o644);
    let mut h = h;
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    import_fails(b.into_inner().unwrap(), "escapes the archive");

    // Absolute path.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = raw_header("/etc/x", tar::EntryType::Regular, 1, 0o644);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    import_fails(b.into_inner().unwrap(), "absolute path");

    // A blob that is a symlink to a host file.
    let built = build(&[(simple_layer(), true)]);
    let mut files = oci_archive(&built, Some("test/x"));
    let (layer_name, _) = files.pop().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let mut h = raw_header(&layer_name, tar::EntryType::Symlink, 0, 0o777);
    h.set_link_name_literal("/etc/passwd").unwrap();
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    import_fails(b.into_inner().unwrap(), "points outside the archive");

    // A device node.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = raw_header("dev", tar::EntryType::Char, 0, 0o644);
    h.set_cksum();
    b.append(&h, &b""[..]).unwrap();
    import_fails(b.into_inner().unwrap(), "unsupported type");

    // Not an image at all.
    import_fails(archive(&[("hello".into(), b"x".to_vec())]), "no index.json");
}

#[test]
fn import_rejects_absurd_sizes() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let built = build(&[(tar_of(&[E::File("big", &[7u8; 100_000])]), false)]);
    let file = write_file(
        t.path(),
        "a.tar",
        &gzip(&archive(&oci_archive(&built, Some("t")))),
    );
    let opts = ImportOptions {
        max_bytes: 50_000,
        ..Default::default()
    };
    let err = store
        .import_archive_with(&file, None, &opts, None)
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn debootstrap_errors_are_clear() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    assert!(matches!(
        store.build_default_debootstrap("../etc"),
        Err(Error::InvalidArgument(_))
    ));
    if default_image::find_program("debootstrap").is_none() {
        let err = store.build_default_debootstrap("bookworm").unwrap_err();
        assert!(
            err.to_string().contains("apt-get install debootstrap"),
            "{err}"
        );
    }
}

#[test]
fn pack_dir_round_trips() {
    use std::io::Read as _;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::create_dir_all(src.join("dev")).unwrap();
    std::fs::write(src.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool2")).unwrap();
    std::os::unix::fs::symlink("usr/bin", src.join("bin")).unwrap();
    std::fs::write(src.join("dev/ignored"), b"x").unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let mut staging = store.staging().unwrap();
    let mut w = layer::LayerWriter::create(staging.scratch_path("l"), 0).unwrap();
    layer::pack_dir(&mut w, &src, None).unwrap();
    let blob = w.finish().unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&blob.path).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(oci::sha256_digest(&tar), blob.diff_id);
    assert_eq!(
        oci::sha256_digest(&std::fs::read(&blob.path).unwrap()),
        blob.digest
    );
    let image = store_image(&store, "t/pack", &[(tar, true)]);
    let dest = t.path().join("rootfs");
    std::fs::create_dir(&dest).unwrap();
    store.unpack(&image, &dest, None).unwrap();
    assert_eq!(
        std::fs::read(dest.join("bin/tool")).unwrap(),
        b"#!/bin/sh\n"
    );
    let ino = |p: &str| std::fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/tool"), ino("usr/bin/tool2"));
    assert!(dest.join("dev").is_dir());
    assert!(!dest.join("dev/ignored").exists());
}
