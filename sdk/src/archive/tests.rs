//! The archive's path rules, without a sandbox (the round trip and the
//! hostile archives are tested end to end: tests/tests/archives.rs).

use std::path::Path;

use super::read::{clean, link_stays_inside};

#[test]
fn entry_paths_stay_relative_and_plain() {
    assert_eq!(clean(b"changes/a/./b").unwrap(), Path::new("changes/a/b"));
    for bad in [
        &b"../x"[..],
        b"changes/../../x",
        b"/etc/passwd",
        b"",
        b"a\0b",
    ] {
        assert!(clean(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let long = vec![b'a'; 256];
    assert!(clean(&long).is_err());
}

#[test]
fn symlinks_may_not_climb_above_the_root() {
    let at = |link: &str, target: &str| link_stays_inside(Path::new(link), Path::new(target));
    assert!(at("root/l", "d/f"));
    assert!(at("root/l", "../etc/passwd"));
    assert!(
        at("root/l", "/etc/passwd"),
        "absolute targets resolve in the sandbox"
    );
    assert!(!at("root/l", "../../etc"));
    assert!(!at("l", ".."));
    assert!(at("a/b/c", "../../x"));
    assert!(!at("a/b/c", "../../../x"));
}

/// A tree written and read back through the format, without sandboxes:
/// contents, modes, owners (shifted between id ranges), symlinks, hard
/// links, FIFOs, user extended attributes, whiteouts and opaque
/// directories. As root only (owners, trusted.* xattrs); skipped otherwise.
#[test]
fn a_tree_round_trips_exactly_through_the_format() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use crate::archive::{
        ExportSource, FORMAT, Header, ImageRef, ImportLimits, ImportTargets, SessionSettings,
        VERSION, read_archive, write_archive,
    };
    use crate::fs::ConfinedRoot;

    if !rustix::process::geteuid().is_root() {
        crate::testing::skip("archive round trip: owners and trusted xattrs need root");
        return;
    }
    let (from_root, to_root) = (0x7100_0000u32, 0x7200_0000u32);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(src.join("d/f"), b"one").unwrap();
    std::fs::set_permissions(src.join("d/f"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    std::fs::hard_link(src.join("d/f"), src.join("hard")).unwrap();
    std::os::unix::fs::symlink("d/f", src.join("link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("gone").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    rustix::fs::setxattr(
        src.join("d/f").as_path(),
        "user.note",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        src.join("d/sub").as_path(),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    for p in ["", "d", "d/sub", "d/f", "link", "fifo", "gone"] {
        let path = src.join(p);
        std::os::unix::fs::lchown(&path, Some(from_root + 7), Some(from_root + 8)).unwrap();
    }
    std::os::unix::fs::lchown(&src, Some(from_root), Some(from_root)).unwrap();
    // After the chown, which clears set-id bits.
    std::fs::set_permissions(src.join("d/f"), std::fs::Permissions::from_mode(0o4750)).unwrap();

    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        created_at: 0,
        writer: "test".into(),
        session: SessionSettings {
            name: "s".into(),
            warm: false,
            limits: Default::default(),
        },
        image: ImageRef {
            reference: "r".into(),
            digest: "sha256:00".into(),
            layers: vec![],
        },
        snapshots: vec![],
        includes_image: false,
    };
    let source = ExportSource {
        changes: vec![crate::archive::ChangeLayer {
            upper: src.clone(),
            id_root: from_root,
        }],
        snapshots: vec![],
        image_archive: None,
    };
    let bytes = write_archive(Vec::new(), &header, &source, &|_| {}).unwrap();
    let image_file = dir.path().join("image.tar");
    let dst2 = dst.clone();
    let imported = read_archive(
        &bytes[..],
        ImportTargets {
            header: &mut |_| Ok(()),
            changes: &mut || ConfinedRoot::open(&dst2),
            snapshot: &mut |_| unreachable!("no snapshots"),
            image_file: &image_file,
            id_root: to_root,
        },
        ImportLimits {
            max_bytes: 1 << 20,
            max_entries: 1000,
            max_image_bytes: 1 << 20,
        },
        &|_| {},
    )
    .unwrap();
    assert_eq!(imported.header, header);

    let meta = |p: &str| std::fs::symlink_metadata(dst.join(p)).unwrap();
    assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"one");
    assert_eq!(meta("d/f").mode() & 0o7777, 0o4750, "set-id bits kept");
    assert_eq!(
        (meta("d/f").uid(), meta("d/f").gid()),
        (to_root + 7, to_root + 8)
    );
    assert_eq!(meta("hard").ino(), meta("d/f").ino(), "hard link kept");
    assert_eq!(
        std::fs::read_link(dst.join("link")).unwrap(),
        Path::new("d/f")
    );
    assert_eq!(meta("link").uid(), to_root + 7);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &meta("fifo").file_type()
    ));
    let gone = meta("gone");
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&gone.file_type()) && gone.rdev() == 0,
        "whiteout"
    );
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(dst.join("d/f").as_path(), "user.note", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"kept");
    let n = rustix::fs::getxattr(
        dst.join("d/sub").as_path(),
        "trusted.overlay.opaque",
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..n], b"y", "opaque directory");
    assert_eq!((meta("").uid(), meta("").gid()), (to_root, to_root));
}
