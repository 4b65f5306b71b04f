//! OCI manifests, indexes and configs (`image/oci.rs`, `image/store.rs`):
//! arbitrary JSON and mutated valid documents, parsed directly and read
//! through a real image store (resolve, list, contains, remove, gc).

use std::collections::BTreeMap;
use std::path::Path;

use blink_sdk::image::ImageStore;
use blink_sdk::image::oci::{
    self, Descriptor, ImageConfig, Index, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER_GZIP,
    MT_OCI_MANIFEST, Manifest,
};
use proptest::prelude::*;
use serde_json::Value;

use crate::util::{Fence, cases, check_error};

/// Arbitrary JSON values, with the keys OCI documents use mixed in so that
/// deeper fields get reached.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,20}".prop_map(Value::String),
        prop::sample::select(vec![
            MT_OCI_MANIFEST,
            MT_OCI_INDEX,
            MT_OCI_CONFIG,
            MT_OCI_LAYER_GZIP,
            "sha256:",
            "linux",
            "amd64",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "schemaVersion",
                        "mediaType",
                        "manifests",
                        "config",
                        "layers",
                        "digest",
                        "size",
                        "annotations",
                        "platform",
                        "architecture",
                        "os",
                        "rootfs",
                        "diff_ids",
                        "Env",
                        "Cmd",
                        "Entrypoint",
                        "WorkingDir",
                        "User",
                        "org.opencontainers.image.ref.name",
                    ])
                    .prop_map(str::to_string),
                    "\\PC{0,10}",
                ],
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn digest() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        1 => Just("sha256:../../../canary/file".to_string()),
        1 => Just(format!("sha256:{}", "A".repeat(64))),
        1 => "\\PC{0,80}",
    ]
}

fn descriptor() -> impl Strategy<Value = Descriptor> {
    (
        prop::sample::select(vec![
            MT_OCI_MANIFEST,
            MT_OCI_INDEX,
            MT_OCI_CONFIG,
            MT_OCI_LAYER_GZIP,
            "",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "text/plain",
        ]),
        digest(),
        any::<u64>(),
        prop::collection::btree_map("\\PC{0,12}", "\\PC{0,12}", 0..3),
    )
        .prop_map(|(mt, digest, size, annotations)| Descriptor {
            media_type: mt.into(),
            digest,
            size,
            annotations,
            platform: None,
        })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        any::<u32>(),
        prop::option::of(prop::sample::select(vec![
            MT_OCI_MANIFEST,
            MT_OCI_INDEX,
            "x",
        ])),
        descriptor(),
        prop::collection::vec(descriptor(), 0..4),
    )
        .prop_map(|(v, mt, config, layers)| Manifest {
            schema_version: v,
            media_type: mt.map(str::to_string),
            config,
            layers,
            annotations: BTreeMap::new(),
        })
}

/// How a JSON document is damaged before it is stored.
#[derive(Debug, Clone)]
enum Doc {
    Value(Value),
    Bytes(Vec<u8>),
    Valid,
}

fn doc() -> impl Strategy<Value = Doc> {
    prop_oneof![
        2 => json_value().prop_map(Doc::Value),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Doc::Bytes),
        3 => Just(Doc::Valid),
    ]
}

fn bytes_of(doc: &Doc, valid: &[u8]) -> Vec<u8> {
    match doc {
        Doc::Value(v) => serde_json::to_vec(v).unwrap(),
        Doc::Bytes(b) => b.clone(),
        Doc::Valid => valid.to_vec(),
    }
}

fn put_blob(store: &Path, data: &[u8]) -> String {
    let digest = oci::sha256_digest(data);
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::write(store.join("blobs/sha256").join(hex), data).unwrap();
    digest
}

const NAME: &str = "fuzz/img:1";

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn arbitrary_bytes_parse_cleanly(b in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = serde_json::from_slice::<Manifest>(&b);
        let _ = serde_json::from_slice::<Index>(&b);
        let _ = serde_json::from_slice::<ImageConfig>(&b);
    }

    #[test]
    fn digest_hex_accepts_only_sha256_hex(d in digest()) {
        match oci::digest_hex("x", &d) {
            Ok(hex) => {
                prop_assert_eq!(hex.len(), 64);
                prop_assert!(hex.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            }
            Err(e) => check_error(&e)?,
        }
    }

    #[test]
    fn manifests_round_trip(m in manifest()) {
        let text = serde_json::to_vec(&m).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Manifest>(&text).unwrap(), m);
    }

}

proptest! {
    #![proptest_config(cases(80))]

    /// A store whose index, manifest and config are hostile: every read
    /// either works or fails with a clean error, and resolved layer paths
    /// stay in the store's blob directory.
    #[test]
    fn hostile_store_documents(
        index_doc in doc(),
        manifest_doc in doc(),
        config_doc in doc(),
        m in manifest(),
        use_generated_manifest in any::<bool>(),
    ) {
        let fence = Fence::new();
        let dir = fence.target.join("images");
        let store = ImageStore::open(&dir).unwrap();

        let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_bytes = bytes_of(&config_doc, config);
        let config_digest = put_blob(&dir, &config_bytes);
        let layer = put_blob(&dir, b"not really a layer");
        let mut valid_manifest = Manifest {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            config: Descriptor::new(MT_OCI_CONFIG, config_digest, config_bytes.len() as u64),
            layers: vec![Descriptor::new(MT_OCI_LAYER_GZIP, layer, 18)],
            annotations: BTreeMap::new(),
        };
        if use_generated_manifest {
            valid_manifest = m;
        }
        let manifest_bytes = bytes_of(&manifest_doc, &serde_json::to_vec(&valid_manifest).unwrap());
        let manifest_digest = put_blob(&dir, &manifest_bytes);
        let mut desc = Descriptor::new(MT_OCI_MANIFEST, manifest_digest.clone(), manifest_bytes.len() as u64);
        desc.annotations.insert(oci::ANNOTATION_REF_NAME.into(), NAME.into());
        let index = Index { manifests: vec![desc], ..Index::default() };
        let index_bytes = bytes_of(&index_doc, &serde_json::to_vec(&index).unwrap());
        std::fs::write(dir.join("index.json"), &index_bytes).unwrap();

        let blob_dir = dir.join("blobs/sha256");
        for reference in [NAME, manifest_digest.as_str(), "other:tag"] {
            match store.resolve(reference) {
                Ok(img) => {
                    for l in &img.layers {
                        prop_assert!(l.path.starts_with(&blob_dir), "{:?}", l.path);
                        prop_assert_eq!(l.path.parent(), Some(blob_dir.as_path()));
                    }
                }
                Err(e) => check_error(&e)?,
            }
        }
        match store.list() { Ok(_) => {}, Err(e) => check_error(&e)? }
        match store.contains(NAME) { Ok(_) => {}, Err(e) => check_error(&e)? }
        match store.gc() { Ok(_) => {}, Err(e) => check_error(&e)? }
        match store.remove(NAME) { Ok(_) => {}, Err(e) => check_error(&e)? }
        fence.check()?;
    }
}
