//! A layer blob (tar, or gzip'd tar when it starts with the gzip magic)
//! unpacked into a directory beside a canary: small limits, and the
//! canary never changes.
#![no_main]

use blink_sdk::image::oci::{self, Compression, ImageConfig};
use blink_sdk::image::{Layer, ResolvedImage, UnpackOptions, unpack_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    let canary = tmp.path().join("canary");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("file"), b"canary").unwrap();
    let blob = tmp.path().join("blob");
    std::fs::write(&blob, data).unwrap();
    let image = ResolvedImage {
        reference: "fuzz/layer:latest".into(),
        digest: oci::sha256_digest(b"m"),
        manifest_media_type: oci::MT_OCI_MANIFEST.into(),
        config_digest: oci::sha256_digest(b"c"),
        layers: vec![Layer {
            media_type: oci::MT_OCI_LAYER_TAR.into(),
            digest: oci::sha256_digest(data),
            size: data.len() as u64,
            compression: Compression::None,
            path: blob,
        }],
        env: Vec::new(),
        cmd: Vec::new(),
        entrypoint: Vec::new(),
        working_dir: None,
        user: None,
        architecture: None,
        os: None,
        config: ImageConfig::default(),
    };
    let opts = UnpackOptions {
        max_bytes: 1 << 20,
        max_entries: 256,
    };
    if let Err(e) = unpack_with(&image, &target, None, &opts, None) {
        assert!(!e.to_string().is_empty());
    }
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "something appeared beside the target: {names:?}"
    );
    assert_eq!(std::fs::read(canary.join("file")).unwrap(), b"canary");
    assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 1);
});
