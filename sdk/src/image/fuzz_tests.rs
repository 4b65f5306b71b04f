//! Round trip of the layer writer (`image/layer.rs`, crate-private, hence a
//! module here rather than in `sdk/tests/fuzz`): an arbitrary host tree
//! packed by `pack_dir` and applied by the unpacker is the same tree (types,
//! permission bits less setuid/setgid, contents, symlink targets verbatim,
//! hard links kept).
//!
//! Property-based (proptest) rather than coverage-guided for the reasons in
//! `sdk/tests/fuzz/main.rs`. A long run:
//! `PROPTEST_CASES=5000 cargo test -p blinkvm-sdk --lib image::fuzz_tests`.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::layer::{LayerWriter, pack_dir};
use super::oci::{self, Compression, MT_OCI_LAYER_GZIP};
use super::{Layer, ResolvedImage, UnpackOptions, unpack_with};

fn cases(n: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    config
}

#[derive(Debug, Clone)]
enum Node {
    Dir(u32),
    File(Vec<u8>, u32),
    Symlink(String),
    HardLink(prop::sample::Index),
    Fifo(u32),
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        3 => (0u32..0o100).prop_map(|m| Node::Dir(0o700 | m)),
        4 => (prop::collection::vec(any::<u8>(), 0..200), 0u32..0o2000)
            .prop_map(|(d, m)| Node::File(d, 0o600 | (m & 0o1177))),
        2 => prop_oneof![
            "[^\u{0}]{1,20}",
            Just("/".to_string()),
            Just("../../../etc/passwd".to_string()),
            Just("a/b/../c".to_string()),
        ]
        .prop_map(Node::Symlink),
        1 => any::<prop::sample::Index>().prop_map(Node::HardLink),
        1 => (0u32..0o100).prop_map(|m| Node::Fifo(0o600 | m)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._-]{1,12}", "[^/\u{0}]{1,8}", "[a-z]{100,120}",]
        .prop_filter("not . or .. or a skipped dir", |n| {
            !matches!(n.as_str(), "." | ".." | "proc" | "sys" | "dev")
        })
}

/// Build the tree on the host: each node goes into an earlier directory.
fn build(src: &Path, nodes: &[(prop::sample::Index, String, Node)]) {
    let mut dirs = vec![src.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dir_modes = Vec::new();
    for (parent, name, node) in nodes {
        let path = dirs[parent.index(dirs.len())].join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match node {
            Node::Dir(mode) => {
                std::fs::create_dir(&path).unwrap();
                dir_modes.push((path.clone(), *mode));
                dirs.push(path);
            }
            Node::File(data, mode) => {
                std::fs::write(&path, data).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
                files.push(path);
            }
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
            Node::HardLink(i) if !files.is_empty() => {
                std::fs::hard_link(&files[i.index(files.len())], &path).unwrap();
            }
            Node::HardLink(_) => {}
            Node::Fifo(mode) => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(*mode),
                    0,
                )
                .unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
    }
    for (path, mode) in dir_modes.into_iter().rev() {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Path -> (kind, permission bits, contents or target), and hard-link
/// groups as sets of paths.
fn describe(dir: &Path) -> (BTreeMap<PathBuf, String>, Vec<Vec<PathBuf>>) {
    let mut out = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let ft = md.file_type();
            let perm = md.mode() & 0o1777;
            let what = if ft.is_dir() {
                todo.push(path.clone());
                format!("dir {perm:o}")
            } else if ft.is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).unwrap())
            } else if ft.is_fifo() {
                format!("fifo {perm:o}")
            } else {
                by_ino.entry(md.ino()).or_default().push(rel.clone());
                format!("file {perm:o} {:?}", std::fs::read(&path).unwrap())
            };
            out.insert(rel, what);
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = by_ino
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

proptest! {
    #![proptest_config(cases(60))]

    #[test]
    fn pack_then_unpack_is_identity(
        nodes in prop::collection::vec((any::<prop::sample::Index>(), name(), node()), 0..20)
    ) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        build(&src, &nodes);

        let mut w = LayerWriter::create(t.path().join("layer"), 1_700_000_000).unwrap();
        pack_dir(&mut w, &src, None).unwrap();
        let blob = w.finish().unwrap();
        let image = ResolvedImage {
            reference: "fuzz/pack:latest".into(),
            digest: oci::sha256_digest(b"m"),
            manifest_media_type: oci::MT_OCI_MANIFEST.into(),
            config_digest: oci::sha256_digest(b"c"),
            layers: vec![Layer {
                media_type: MT_OCI_LAYER_GZIP.into(),
                digest: blob.digest.clone(),
                size: blob.size,
                compression: Compression::Gzip,
                path: blob.path.clone(),
            }],
            env: Vec::new(),
            cmd: Vec::new(),
            entrypoint: Vec::new(),
            working_dir: None,
            user: None,
            architecture: None,
            os: None,
            config: Default::default(),
        };
        let dest = t.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        unpack_with(&image, &dest, None, &UnpackOptions::default(), None).unwrap();

        let (want, want_links) = describe(&src);
        let (got, got_links) = describe(&dest);
        prop_assert_eq!(got, want);
        prop_assert_eq!(got_links, want_links);
    }
}
