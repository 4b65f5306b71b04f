//! Confined path resolution (`fs/`): sequences of real file operations on
//! arbitrary paths in a root where symlinks pointing out have been planted.
//! Nothing outside the root may change, and nothing outside may be read.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use blink_sdk::fs::{ConfinedRoot, OpenFlags};
use proptest::prelude::*;

use crate::util::{CANARY_DATA, Fence, cases, check_error, hostile_path};

#[derive(Debug, Clone)]
enum Op {
    Write(String),
    Read(String),
    CreateDirAll(String),
    CreateDir(String),
    Symlink(String, String),
    HardLink(String, String),
    Rename(String, String),
    RemoveAll(String),
    RemoveContents(String),
    Chmod(String, u32),
    Times(String),
    Canonicalize(String),
    Metadata(String),
    ReadDir(String),
    Mkfifo(String),
    OpenCreate(String, bool),
}

/// Paths aimed at the planted links as well as arbitrary ones.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => hostile_path(),
        2 => (
            prop::sample::select(vec!["abs", "rel", "up", "dotdot", "canary-file", "loop", "d/inner-up", "dangling"]),
            prop::sample::select(vec!["", "/", "/file", "/new", "/dir/inner", "/x/y", "/..", "/../canary/file"]),
        )
            .prop_map(|(a, b)| format!("{a}{b}")),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        path().prop_map(Op::Write),
        path().prop_map(Op::Read),
        path().prop_map(Op::CreateDirAll),
        path().prop_map(Op::CreateDir),
        (hostile_path(), path()).prop_map(|(t, l)| Op::Symlink(t, l)),
        (path(), path()).prop_map(|(a, b)| Op::HardLink(a, b)),
        (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        path().prop_map(Op::RemoveAll),
        path().prop_map(Op::RemoveContents),
        (path(), 0u32..0o10000).prop_map(|(p, m)| Op::Chmod(p, m)),
        path().prop_map(Op::Times),
        path().prop_map(Op::Canonicalize),
        path().prop_map(Op::Metadata),
        path().prop_map(Op::ReadDir),
        path().prop_map(Op::Mkfifo),
        (path(), any::<bool>()).prop_map(|(p, t)| Op::OpenCreate(p, t)),
    ]
}

fn plant(fence: &Fence) {
    let t = &fence.target;
    let canary = &fence.canary;
    std::fs::create_dir(t.join("d")).unwrap();
    std::os::unix::fs::symlink(canary, t.join("abs")).unwrap();
    std::os::unix::fs::symlink("../canary", t.join("rel")).unwrap();
    std::os::unix::fs::symlink("../../../../..", t.join("up")).unwrap();
    std::os::unix::fs::symlink("..", t.join("dotdot")).unwrap();
    std::os::unix::fs::symlink(canary.join("file"), t.join("canary-file")).unwrap();
    std::os::unix::fs::symlink("loop", t.join("loop")).unwrap();
    std::os::unix::fs::symlink("../../canary", t.join("d/inner-up")).unwrap();
    std::os::unix::fs::symlink("../canary/new-file", t.join("dangling")).unwrap();
}

fn run(root: &ConfinedRoot, op: &Op, canary_ino: u64) -> Result<(), TestCaseError> {
    let outcome: blink_sdk::Result<()> = match op {
        Op::Write(p) => root.write(p, b"fuzz", 0o644),
        Op::Read(p) => root.read(p).map(|data| {
            assert_ne!(data, CANARY_DATA, "read {p:?} returned the canary");
        }),
        Op::CreateDirAll(p) => root.create_dir_all(p, 0o755),
        Op::CreateDir(p) => root.create_dir(p, 0o755),
        Op::Symlink(t, l) => root.symlink(t, l),
        Op::HardLink(a, b) => root.hard_link(a, b),
        Op::Rename(a, b) => root.rename(a, b),
        Op::RemoveAll(p) => root.remove_dir_all(p),
        Op::RemoveContents(p) => root.remove_dir_contents(p, &|_| false),
        Op::Chmod(p, m) => root.set_permissions(p, *m),
        Op::Times(p) => root.set_times(p, Some(std::time::SystemTime::UNIX_EPOCH), None),
        Op::Canonicalize(p) => root.canonicalize(p).map(|c| {
            assert!(c.is_absolute(), "canonicalize {p:?} gave {c:?}");
            assert!(
                !c.starts_with(root.host_path()),
                "canonicalize {p:?} leaked a host path {c:?}"
            );
            // The sandbox path it names resolves to the same thing again.
            let again = root.canonicalize(&c).expect("canonical path resolves");
            assert_eq!(again, c);
        }),
        Op::Metadata(p) => root.metadata(p).map(|md| {
            assert_ne!(md.ino, canary_ino, "stat {p:?} reached the canary file");
        }),
        Op::ReadDir(p) => root.read_dir(p).map(|entries| {
            for e in &entries {
                assert_ne!(
                    e.metadata.ino, canary_ino,
                    "read_dir {p:?} listed the canary"
                );
            }
        }),
        Op::Mkfifo(p) => root.mkfifo(p, 0o600),
        Op::OpenCreate(p, trunc) => {
            let flags = if *trunc {
                OpenFlags::create_truncate()
            } else {
                OpenFlags::create_new_file()
            };
            root.open_file(p, flags, 0o600).map(drop)
        }
    };
    if let Err(e) = outcome {
        check_error(&e)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(150))]

    #[test]
    fn operations_stay_in_root(ops in prop::collection::vec(op(), 1..12)) {
        let fence = Fence::new();
        plant(&fence);
        let canary_ino = std::fs::metadata(fence.canary.join("file")).unwrap().ino();
        let root = ConfinedRoot::open(&fence.target).unwrap();
        for op in &ops {
            run(&root, op, canary_ino)?;
            fence.check()?;
        }
        // The root itself is still a directory in its place.
        prop_assert!(Path::new(&fence.target).is_dir());
    }
}
