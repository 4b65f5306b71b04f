//! Image layers (`image/unpack.rs`): raw tar streams, gzip'd or not, with
//! hostile entries (`..`, absolute paths, symlinks and hard links pointing
//! out, whiteouts of `..`, device nodes, huge sizes, deep trees, truncated
//! or corrupted streams), applied with the real unpacker into a target
//! directory that has a canary sibling. Nothing outside the target may
//! change, limits hold, and errors are clean.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use blink_sdk::image::oci::{self, Compression, ImageConfig, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_TAR};
use blink_sdk::image::{Layer, ResolvedImage, UnpackOptions, unpack_with};
use proptest::prelude::*;

use crate::util::{
    Damage, Fence, RawEntry, apply_damage, build_tar, cases, check_bounds, check_error, damage,
    gzip, hostile_component, hostile_path,
};

const MAX_BYTES: u64 = 256 << 10;
const MAX_ENTRIES: u64 = 64;

/// Link targets: relative climbs, absolute host paths into the canary, and
/// in-layer names.
fn link_target() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => hostile_path(),
        2 => prop::sample::select(vec![
            "../canary", "../../canary/file", "/", "..", "../../../../../../",
            "a", "a/b", "etc", "/etc/passwd", "CANARY", "CANARY/file", "CANARY/dir",
        ])
        .prop_map(str::to_string),
    ]
}

fn entry() -> impl Strategy<Value = RawEntry> {
    let kind = prop_oneof![
        4 => Just(b'0'), 2 => Just(b'5'), 3 => Just(b'2'), 2 => Just(b'1'),
        1 => Just(b'3'), 1 => Just(b'4'), 1 => Just(b'6'), 1 => Just(b'7'),
        1 => Just(b'S'), 1 => Just(b'x'), 1 => Just(b'g'), 1 => any::<u8>(),
    ];
    (
        hostile_path(),
        kind,
        link_target(),
        prop_oneof![
            Just(0o644u32),
            Just(0o4755),
            Just(0o7777),
            Just(0),
            0u32..0o10000
        ],
        prop::collection::vec(any::<u8>(), 0..64),
        prop_oneof![
            8 => Just(None),
            1 => Just(Some(u64::MAX >> 1)),
            1 => Just(Some(MAX_BYTES + 1)),
            1 => (0u64..2048).prop_map(Some),
        ],
        prop_oneof![
            8 => Just(None),
            1 => prop::sample::select(vec![0, u64::MAX, 1 << 63, (1 << 63) - 1, 253_402_300_800]).prop_map(Some),
            1 => any::<u64>().prop_map(Some),
        ],
    )
        .prop_map(|(name, kind, link, mode, data, size, mtime)| RawEntry {
            name: name.into_bytes(),
            kind,
            link: link.into_bytes(),
            mode,
            data,
            size,
            mtime,
        })
}

#[derive(Debug, Clone)]
struct LayerCase {
    entries: Vec<RawEntry>,
    gzip: bool,
    damage: Damage,
    /// Declare the right digest and size (else the layer is mislabelled).
    honest: bool,
    /// Media type says tar when the bytes are gzip, or the reverse.
    mislabel: bool,
}

fn layer_case() -> impl Strategy<Value = LayerCase> {
    (
        prop::collection::vec(entry(), 0..16),
        any::<bool>(),
        damage(),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(entries, gzip, damage, honest, mislabel)| LayerCase {
            entries,
            gzip,
            damage,
            honest,
            mislabel,
        })
}

/// Replace the `CANARY` placeholder with the canary's absolute host path.
fn with_canary(entries: &[RawEntry], canary: &Path) -> Vec<RawEntry> {
    let c = canary.as_os_str().as_encoded_bytes();
    let sub = |v: &[u8]| -> Vec<u8> {
        match v.strip_prefix(b"CANARY") {
            Some(rest) => [c, rest].concat(),
            None => v.to_vec(),
        }
    };
    entries
        .iter()
        .map(|e| RawEntry {
            name: sub(&e.name),
            link: sub(&e.link),
            ..e.clone()
        })
        .collect()
}

fn image_of(fence: &mut Fence, layers: &[(Vec<u8>, bool, bool, bool)]) -> ResolvedImage {
    let mut out = Vec::new();
    for (i, (blob, gz, honest, mislabel)) in layers.iter().enumerate() {
        let path = fence.add_outside(&format!("layer-{i}"), blob);
        let gz_label = *gz != *mislabel;
        out.push(Layer {
            media_type: if gz_label {
                MT_OCI_LAYER_GZIP
            } else {
                MT_OCI_LAYER_TAR
            }
            .into(),
            digest: if *honest {
                oci::sha256_digest(blob)
            } else {
                oci::sha256_digest(b"something else")
            },
            size: blob.len() as u64,
            compression: if gz_label {
                Compression::Gzip
            } else {
                Compression::None
            },
            path,
        });
    }
    ResolvedImage {
        reference: "fuzz/layers:latest".into(),
        digest: oci::sha256_digest(b"manifest"),
        manifest_media_type: oci::MT_OCI_MANIFEST.into(),
        config_digest: oci::sha256_digest(b"config"),
        layers: out,
        env: Vec::new(),
        cmd: Vec::new(),
        entrypoint: Vec::new(),
        working_dir: None,
        user: None,
        architecture: None,
        os: None,
        config: ImageConfig::default(),
    }
}

fn blob_of(case: &LayerCase, canary: &Path) -> Vec<u8> {
    let tar = build_tar(&with_canary(&case.entries, canary));
    let bytes = if case.gzip { gzip(&tar) } else { tar };
    apply_damage(bytes, &case.damage)
}

/// Bytes of regular files and number of entries under `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut n) = (0, 0);
    for (_, md) in walk(dir) {
        n += 1;
        if md.is_file() {
            bytes += md.len();
        }
    }
    (bytes, n)
}

fn walk(dir: &Path) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), md));
        }
    }
    out
}

/// Unpack `image` into the fence's target with the test limits; check.
fn unpack_checked(fence: &Fence, image: &ResolvedImage) -> Result<(), TestCaseError> {
    let opts = UnpackOptions {
        max_bytes: MAX_BYTES,
        max_entries: MAX_ENTRIES,
    };
    let started = std::time::Instant::now();
    let result = unpack_with(image, &fence.target, None, &opts, None);
    check_bounds(started, "unpack")?;
    check_unpacked(fence, result)
}

fn check_unpacked(fence: &Fence, result: blink_sdk::Result<()>) -> Result<(), TestCaseError> {
    if let Err(e) = &result {
        check_error(e)?;
    }
    fence.check()?;
    let (bytes, _) = usage(&fence.target);
    prop_assert!(
        bytes <= MAX_BYTES,
        "{bytes} bytes unpacked, limit {MAX_BYTES}"
    );
    let canary_inos: Vec<u64> = walk(&fence.canary).iter().map(|(_, m)| m.ino()).collect();
    for (path, md) in walk(&fence.target) {
        let ft = md.file_type();
        prop_assert!(
            !canary_inos.contains(&md.ino()),
            "{path:?} is a canary inode"
        );
        prop_assert!(md.mode() & 0o6000 == 0, "{path:?} kept setuid/setgid");
        use std::os::unix::fs::FileTypeExt as _;
        prop_assert!(
            !ft.is_block_device() && !ft.is_char_device(),
            "{path:?} is a device"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(150))]

    /// One or two hostile layers.
    #[test]
    fn hostile_layers(cases in prop::collection::vec(layer_case(), 1..3)) {
        let mut fence = Fence::new();
        let blobs: Vec<_> = cases
            .iter()
            .map(|c| (blob_of(c, &fence.canary), c.gzip, c.honest, c.mislabel))
            .collect();
        let image = image_of(&mut fence, &blobs);
        unpack_checked(&fence, &image)?;
    }

}

proptest! {
    #![proptest_config(cases(100))]

    /// Arbitrary bytes as a layer, labelled tar or gzip.
    #[test]
    fn arbitrary_layer_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096), gz in any::<bool>()) {
        let mut fence = Fence::new();
        let bytes = if gz { gzip(&bytes) } else { bytes };
        let image = image_of(&mut fence, &[(bytes, gz, true, false)]);
        unpack_checked(&fence, &image)?;
    }

    /// Escape attempts in two steps: a symlink planted by one entry (or an
    /// earlier layer), then files, directories, links and whiteouts written
    /// through it.
    #[test]
    fn through_planted_links(
        link in link_target(),
        via in prop::collection::vec(hostile_component(), 1..4),
        kinds in prop::collection::vec(prop::sample::select(vec![b'0', b'5', b'1', b'2', b'6']), 1..4),
        split_layers in any::<bool>(),
    ) {
        let mut fence = Fence::new();
        let first = vec![RawEntry::symlink("l", &link)];
        let mut second = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let name = format!("l/{}/n{i}", via.join("/"));
            second.push(match k {
                b'0' => RawEntry::file(&name, b"x"),
                b'5' => RawEntry::dir(&name),
                b'1' => RawEntry::hard_link(&name, "CANARY/file"),
                b'2' => RawEntry::symlink(&name, "/"),
                _ => RawEntry::file(&format!("l/{}/.wh.{}", via.join("/"), "file"), b""),
            });
        }
        second.push(RawEntry::file("l/.wh..wh..opq", b""));
        second.push(RawEntry::file("l/file", b"overwritten"));
        let layers: Vec<Vec<RawEntry>> = if split_layers {
            vec![first, second]
        } else {
            vec![[first, second].concat()]
        };
        let blobs: Vec<_> = layers
            .iter()
            .map(|l| (build_tar(&with_canary(l, &fence.canary)), false, true, false))
            .collect();
        let image = image_of(&mut fence, &blobs);
        unpack_checked(&fence, &image)?;
    }
}

/// A deep tree (2000 levels, built with long GNU names and symlink hops)
/// and whiteouts of its top: no stack overflow, no escape.
#[test]
fn deep_tree() {
    let mut fence = Fence::new();
    let mut entries = Vec::new();
    let chunk = "d/".repeat(1000);
    entries.push(RawEntry::dir(&chunk));
    entries.push(RawEntry::symlink("hop", &chunk));
    entries.push(RawEntry::dir(&format!("hop/{chunk}")));
    entries.push(RawEntry::file(&format!("hop/{chunk}f"), b"deep"));
    entries.push(RawEntry::file(".wh.d", b""));
    let image = image_of(&mut fence, &[(build_tar(&entries), false, true, false)]);
    unpack_checked(&fence, &image).unwrap();
}

/// Limits: a layer over the byte or entry limit fails with `too_large`.
#[test]
fn limits_hold() {
    for (entries, what) in [
        (
            vec![RawEntry::file("big", &vec![7u8; (MAX_BYTES + 1) as usize])],
            "bytes",
        ),
        (
            (0..MAX_ENTRIES + 1)
                .map(|i| RawEntry::file(&format!("f{i}"), b""))
                .collect(),
            "entries",
        ),
    ] {
        for gz in [false, true] {
            let mut fence = Fence::new();
            let tar = build_tar(&entries);
            let blob = if gz { gzip(&tar) } else { tar };
            let image = image_of(&mut fence, &[(blob, gz, true, false)]);
            let opts = UnpackOptions {
                max_bytes: MAX_BYTES,
                max_entries: MAX_ENTRIES,
            };
            let err = unpack_with(&image, &fence.target, None, &opts, None).unwrap_err();
            assert_eq!(err.code(), "too_large", "{what}: {err}");
            fence.check().unwrap();
        }
    }
}

/// A gzip bomb: a small blob that inflates past the limit.
#[test]
fn gzip_bomb() {
    let mut fence = Fence::new();
    let tar = build_tar(&[RawEntry::file("bomb", &vec![0u8; 8 << 20])]);
    let blob = gzip(&tar);
    assert!(blob.len() < 64 << 10);
    let image = image_of(&mut fence, &[(blob, true, true, false)]);
    let opts = UnpackOptions {
        max_bytes: MAX_BYTES,
        max_entries: MAX_ENTRIES,
    };
    let err = unpack_with(&image, &fence.target, None, &opts, None).unwrap_err();
    assert_eq!(err.code(), "too_large", "{err}");
    fence.check().unwrap();
}

/// Header times past what `SystemTime` holds.
#[test]
fn huge_mtimes() {
    for mtime in [u64::MAX, 1 << 63, i64::MAX as u64 + 1] {
        let mut fence = Fence::new();
        let entries: Vec<RawEntry> = [
            RawEntry::dir("d/"),
            RawEntry::file("d/f", b"x"),
            RawEntry::symlink("d/l", "f"),
        ]
        .into_iter()
        .map(|e| RawEntry {
            mtime: Some(mtime),
            ..e
        })
        .collect();
        let image = image_of(&mut fence, &[(build_tar(&entries), false, true, false)]);
        unpack_checked(&fence, &image).unwrap();
    }
}
