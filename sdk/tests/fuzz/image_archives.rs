//! Image archives (`image/import.rs`): OCI archives and `docker save`
//! tarballs, valid ones mutated and arbitrary ones, imported into a real
//! store. A rejected archive leaves the store unchanged; nothing outside
//! the store changes; an accepted one resolves.

use std::collections::BTreeMap;

use blink_sdk::image::oci::{
    self, ANNOTATION_REF_NAME, Descriptor, Index, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER_GZIP,
    MT_OCI_MANIFEST, Manifest,
};
use blink_sdk::image::{ImageStore, ImportOptions};
use proptest::prelude::*;

use crate::util::{
    Fence, RawEntry, apply_damage, build_tar, cases, check_bounds, check_error, damage, gzip,
    hostile_path, snapshot,
};

fn blob_name(data: &[u8]) -> String {
    let d = oci::sha256_digest(data);
    format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap())
}

fn image_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("fuzz/app:1".to_string()),
        1 => Just("default".to_string()),
        1 => "[a-z]{200,260}",
        1 => "[a-z]{200,250}:[a-z]{1,10}",
        1 => "\\PC{0,20}",
    ]
}

/// What to break in an otherwise valid OCI archive.
#[derive(Debug, Clone)]
enum Break {
    Nothing,
    ManifestDigest,
    LayerSize,
    DropBlob(prop::sample::Index),
    IndexAsSymlink(String),
    BlobAsSymlink(String),
    BlobAsHardLink(String),
    ExtraEntry(String, u8, String),
    NestedIndex(u8),
    ManifestMediaType(String),
    LayerMediaType(String),
    Json(prop::sample::Index, Vec<u8>),
}

fn breakage() -> impl Strategy<Value = Break> {
    prop_oneof![
        4 => Just(Break::Nothing),
        1 => Just(Break::ManifestDigest),
        1 => Just(Break::LayerSize),
        1 => any::<prop::sample::Index>().prop_map(Break::DropBlob),
        1 => prop::sample::select(vec!["../canary/file", "/etc/hostname", "blobs/../index2.json", "loop"])
            .prop_map(|s| Break::IndexAsSymlink(s.into())),
        1 => prop::sample::select(vec!["../../../canary/file", "/canary", "x", "../../index.json"])
            .prop_map(|s| Break::BlobAsSymlink(s.into())),
        1 => prop::sample::select(vec!["../canary/file", "/etc/passwd", "index.json", "oci-layout"])
            .prop_map(|s| Break::BlobAsHardLink(s.into())),
        2 => (hostile_path(), prop::sample::select(vec![b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'g', b'x']), hostile_path())
            .prop_map(|(p, k, l)| Break::ExtraEntry(p, k, l)),
        1 => (1u8..8).prop_map(Break::NestedIndex),
        1 => "\\PC{0,20}".prop_map(Break::ManifestMediaType),
        1 => prop::sample::select(vec!["application/vnd.oci.image.layer.v1.tar+zstd", "", "x"])
            .prop_map(|s| Break::LayerMediaType(s.into())),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Break::Json(i, b)),
    ]
}

fn oci_archive(name: &str, brk: &Break) -> Vec<RawEntry> {
    let layer_tar = build_tar(&[RawEntry::file("hello", b"world")]);
    let layer = gzip(&layer_tar);
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        oci::host_architecture(),
        oci::sha256_digest(&layer_tar)
    )
    .into_bytes();
    let mut layer_desc = Descriptor::new(
        MT_OCI_LAYER_GZIP,
        oci::sha256_digest(&layer),
        layer.len() as u64,
    );
    if let Break::LayerSize = brk {
        layer_desc.size += 1;
    }
    if let Break::LayerMediaType(mt) = brk {
        layer_desc.media_type = mt.clone();
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(match brk {
            Break::ManifestMediaType(mt) => mt.clone(),
            _ => MT_OCI_MANIFEST.into(),
        }),
        config: Descriptor::new(
            MT_OCI_CONFIG,
            oci::sha256_digest(&config),
            config.len() as u64,
        ),
        layers: vec![layer_desc],
        annotations: BTreeMap::new(),
    };
    let mut manifest = serde_json::to_vec(&manifest).unwrap();
    if let Break::Json(at, bytes) = brk {
        let i = at.index(manifest.len());
        manifest.splice(i..i, bytes.iter().copied());
    }
    let mut blobs = vec![layer.clone(), config.clone(), manifest.clone()];
    let mut top = Descriptor::new(
        MT_OCI_MANIFEST,
        oci::sha256_digest(&manifest),
        manifest.len() as u64,
    );
    if let Break::ManifestDigest = brk {
        top.digest = oci::sha256_digest(b"other");
    }
    if let Break::NestedIndex(depth) = brk {
        for _ in 0..*depth {
            let mut inner = top.clone();
            inner.platform = Some(oci::Platform {
                architecture: oci::host_architecture().into(),
                os: "linux".into(),
                variant: None,
            });
            let index = serde_json::to_vec(&Index {
                manifests: vec![inner],
                ..Index::default()
            })
            .unwrap();
            top = Descriptor::new(MT_OCI_INDEX, oci::sha256_digest(&index), index.len() as u64);
            blobs.push(index);
        }
    }
    top.annotations
        .insert(ANNOTATION_REF_NAME.into(), name.into());
    let index = serde_json::to_vec(&Index {
        manifests: vec![top],
        ..Index::default()
    })
    .unwrap();

    let mut entries = vec![
        RawEntry::file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        RawEntry::dir("blobs/"),
        RawEntry::dir("blobs/sha256/"),
    ];
    match brk {
        Break::IndexAsSymlink(t) => {
            entries.push(RawEntry::file("blobs/index2.json", &index));
            entries.push(RawEntry::symlink("index.json", t));
        }
        _ => entries.push(RawEntry::file("index.json", &index)),
    }
    let drop = match brk {
        Break::DropBlob(i) => Some(i.index(blobs.len())),
        _ => None,
    };
    for (i, b) in blobs.iter().enumerate() {
        let name = blob_name(b);
        if Some(i) == drop {
            continue;
        }
        match brk {
            Break::BlobAsSymlink(t) if i == 1 => entries.push(RawEntry::symlink(&name, t)),
            Break::BlobAsHardLink(t) if i == 1 => entries.push(RawEntry::hard_link(&name, t)),
            _ => entries.push(RawEntry::file(&name, b)),
        }
    }
    if let Break::ExtraEntry(p, k, l) = brk {
        entries.insert(
            1,
            RawEntry {
                kind: *k,
                link: l.clone().into_bytes(),
                ..RawEntry::file(p, b"extra")
            },
        );
    }
    entries
}

fn docker_archive(tags: &[String], config_path: &str, layer_paths: &[String]) -> Vec<RawEntry> {
    let layer = build_tar(&[RawEntry::file("hello", b"world")]);
    let config = format!(
        r#"{{"os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        oci::sha256_digest(&layer)
    );
    let manifest = serde_json::json!([{
        "Config": config_path,
        "RepoTags": tags,
        "Layers": layer_paths,
    }]);
    vec![
        RawEntry::file("manifest.json", manifest.to_string().as_bytes()),
        RawEntry::file("config.json", config.as_bytes()),
        RawEntry::file("layer/layer.tar", &layer),
    ]
}

struct Setup {
    fence: Fence,
    store: ImageStore,
}

fn setup() -> Setup {
    let fence = Fence::new();
    let store = ImageStore::open(&fence.target.join("images")).unwrap();
    Setup { fence, store }
}

fn opts() -> ImportOptions {
    ImportOptions {
        max_bytes: 1 << 20,
        max_entries: 64,
        max_json: 64 << 10,
    }
}

/// Import `bytes`; check the outcome.
fn import(s: &mut Setup, bytes: &[u8], name: Option<&str>) -> Result<(), TestCaseError> {
    let archive = s.fence.add_outside("archive.tar", bytes);
    let before = snapshot(s.store.dir());
    let started = std::time::Instant::now();
    let result = s.store.import_archive_with(&archive, name, &opts(), None);
    check_bounds(started, "import")?;
    match result {
        Ok(infos) => {
            prop_assert!(!infos.is_empty());
            for info in &infos {
                let img = s.store.resolve(&info.reference);
                prop_assert!(
                    img.is_ok(),
                    "imported {} does not resolve: {:?}",
                    info.reference,
                    img.err()
                );
            }
        }
        Err(e) => {
            check_error(&e)?;
            let after = snapshot(s.store.dir());
            prop_assert_eq!(after, before, "a rejected archive changed the store: {}", e);
        }
    }
    s.fence.check()
}

proptest! {
    #![proptest_config(cases(70))]

    #[test]
    fn mutated_oci_archives(
        name in image_name(),
        brk in breakage(),
        gz in any::<bool>(),
        dmg in damage(),
        given_name in prop::option::of(image_name()),
    ) {
        let mut s = setup();
        let tar = build_tar(&oci_archive(&name, &brk));
        let bytes = if gz { gzip(&tar) } else { tar };
        let bytes = apply_damage(bytes, &dmg);
        import(&mut s, &bytes, given_name.as_deref())?;
    }

    #[test]
    fn hostile_docker_saves(
        tags in prop::collection::vec(image_name(), 0..3),
        config_path in prop_oneof![Just("config.json".to_string()), hostile_path()],
        layers in prop::collection::vec(
            prop_oneof![Just("layer/layer.tar".to_string()), Just("../canary/file".to_string()), hostile_path()],
            0..3),
    ) {
        let mut s = setup();
        import(&mut s, &build_tar(&docker_archive(&tags, &config_path, &layers)), None)?;
    }

    #[test]
    fn arbitrary_archives(bytes in prop::collection::vec(any::<u8>(), 0..3000), gz in any::<bool>()) {
        let mut s = setup();
        let bytes = if gz { gzip(&bytes) } else { bytes };
        import(&mut s, &bytes, None)?;
    }

    /// A store that already holds an image: a rejected import keeps it.
    #[test]
    fn second_import_over_existing(name in image_name(), brk in breakage()) {
        let mut s = setup();
        let good = build_tar(&oci_archive("fuzz/app:1", &Break::Nothing));
        let archive = s.fence.add_outside("good.tar", &good);
        s.store.import_archive_with(&archive, None, &opts(), None).unwrap();
        let bad = build_tar(&oci_archive(&name, &brk));
        import(&mut s, &bad, None)?;
        prop_assert!(s.store.resolve("fuzz/app:1").is_ok());
    }
}

#[test]
fn valid_archive_imports() {
    let mut s = setup();
    let tar = build_tar(&oci_archive("fuzz/app:1", &Break::Nothing));
    let archive = s.fence.add_outside("a.tar", &tar);
    let infos = s
        .store
        .import_archive_with(&archive, None, &opts(), None)
        .unwrap();
    assert_eq!(infos[0].reference, "fuzz/app:1");
    let tar = build_tar(&docker_archive(
        &["fuzz/docker:2".into()],
        "config.json",
        &["layer/layer.tar".into()],
    ));
    let archive = s.fence.add_outside("b.tar", &tar);
    let infos = s
        .store
        .import_archive_with(&archive, None, &opts(), None)
        .unwrap();
    assert_eq!(infos[0].reference, "fuzz/docker:2");
}
