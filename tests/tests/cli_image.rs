//! `blink-cli image ...`: build, list, import a `docker save` tarball made
//! here, run in the imported image, remove it.

use std::path::Path;

use blink_e2e::{Blink, texts};

/// A minimal `docker save` tarball: one layer with the host's static
/// busybox as /bin/busybox and /bin/sh, tagged `mini:1`.
fn docker_save(path: &Path) {
    use sha2::{Digest, Sha256};
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    layer
        .append_data(&mut dir.clone(), "bin/", std::io::empty())
        .unwrap();
    layer
        .append_data(&mut dir.clone(), "etc/", std::io::empty())
        .unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    layer
        .append_data(&mut file, "bin/busybox", &busybox[..])
        .unwrap();
    for applet in ["sh", "echo", "cat"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        layer
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let mut release = tar::Header::new_gnu();
    release.set_mode(0o644);
    release.set_size(12);
    layer
        .append_data(&mut release, "etc/mini-os", &b"mini-image!\n"[..])
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] }
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
    let manifest = serde_json::to_vec(&serde_json::json!([
        { "Config": config_name, "RepoTags": ["mini:1"], "Layers": ["abc/layer.tar"] }
    ]))
    .unwrap();
    let mut outer = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in [
        ("manifest.json".to_owned(), manifest),
        (config_name, config),
        ("abc/layer.tar".to_owned(), layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        outer.append_data(&mut h, name, &data[..]).unwrap();
    }
    outer.finish().unwrap();
}

#[test]
fn import_run_and_remove_an_image() {
    let Some(blink) = Blink::with_runtime() else {
        return;
    };
    let (code, built) = blink.json(&["image", "build"]);
    assert_eq!(code, Some(0));
    assert_eq!(built["reference"], "blink/default:latest");

    let archive = blink.data_dir.path().join("mini.tar");
    docker_save(&archive);
    let (code, imported) = blink.json(&["image", "import", archive.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{imported}");
    assert_eq!(imported[0]["reference"], "mini:1");

    let (_, list) = blink.json(&["image", "ls"]);
    let refs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert!(
        refs.contains(&"mini:1") && refs.contains(&"blink/default:latest"),
        "{refs:?}"
    );

    let script = blink.script("which.sh", "#!/bin/sh\ncat /etc/mini-os\n");
    let out = blink.run(&["run", "--image", "mini:1", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", texts(&out).1);
    assert_eq!(texts(&out).0, "mini-image!\n");

    let out = blink.run(&["image", "rm", "mini:1"]);
    assert!(out.status.success(), "{}", texts(&out).1);
    let out = blink.run(&["run", "--image", "mini:1", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(texts(&out).1.contains("image import"), "{}", texts(&out).1);
}

#[test]
fn hostile_or_broken_archives_are_refused_and_change_nothing() {
    let blink = Blink::new();
    let bogus = blink.data_dir.path().join("bogus.tar");
    std::fs::write(&bogus, b"this is not a tar archive at all").unwrap();
    let out = blink.run(&["image", "import", bogus.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let (_, list) = blink.json(&["image", "ls"]);
    assert_eq!(list.as_array().unwrap().len(), 0);

    let missing = blink.run(&["image", "import", "/no/such/archive.tar"]);
    assert_eq!(missing.status.code(), Some(125));
    assert!(
        texts(&missing).1.contains("/no/such/archive.tar"),
        "{}",
        texts(&missing).1
    );
}
