use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::*;

fn setup() -> (tempfile::TempDir, ConfinedRoot) {
    let outer = tempfile::tempdir().unwrap();
    std::fs::create_dir(outer.path().join("root")).unwrap();
    std::fs::create_dir_all(outer.path().join("root/etc")).unwrap();
    std::fs::write(outer.path().join("root/etc/passwd"), b"inside\n").unwrap();
    // A file next to the root that must stay unreachable.
    std::fs::write(outer.path().join("secret"), b"outside\n").unwrap();
    let root = ConfinedRoot::open(&outer.path().join("root")).unwrap();
    (outer, root)
}

#[test]
fn dotdot_stays_in_root() {
    let (_t, root) = setup();
    assert_eq!(root.read("../../etc/passwd").unwrap(), b"inside\n");
    assert_eq!(root.read("/../../../etc/passwd").unwrap(), b"inside\n");
    assert!(root.read("../secret").is_err());
    // Writing through `..` lands inside too.
    root.write("../../escaped", b"x", 0o644).unwrap();
    assert!(_t.path().join("root/escaped").exists());
    assert!(!_t.path().join("escaped").exists());
}

#[test]
fn absolute_symlink_resolves_in_root() {
    let (t, root) = setup();
    root.symlink("/", "escape").unwrap();
    assert_eq!(root.read_link("escape").unwrap(), Path::new("/"));
    assert_eq!(root.read("escape/etc/passwd").unwrap(), b"inside\n");
    root.symlink("/etc/passwd", "pw").unwrap();
    assert_eq!(root.read("pw").unwrap(), b"inside\n");
    // Writing through the symlink writes inside.
    root.write("escape/newfile", b"y", 0o644).unwrap();
    assert!(t.path().join("root/newfile").exists());
    root.create_dir_all("escape/a/b", 0o755).unwrap();
    assert!(t.path().join("root/a/b").is_dir());
    assert_eq!(root.canonicalize("escape/a/b").unwrap(), Path::new("/a/b"));
}

#[test]
fn relative_symlink_cannot_climb() {
    let (t, root) = setup();
    root.create_dir("d", 0o755).unwrap();
    root.symlink("..", "d/up").unwrap();
    root.symlink("../../../..", "d/way_up").unwrap();
    assert_eq!(root.read("d/up/etc/passwd").unwrap(), b"inside\n");
    assert_eq!(root.read("d/way_up/etc/passwd").unwrap(), b"inside\n");
    assert!(root.read("d/way_up/secret").is_err());
    assert_eq!(root.canonicalize("d/way_up").unwrap(), Path::new("/"));
    // A dangling symlink pointing "outside": creating through it stays in.
    root.symlink("../../../../outside_new", "dangling").unwrap();
    root.open_file("dangling", OpenFlags::create_truncate(), 0o644)
        .unwrap();
    assert!(t.path().join("root/outside_new").exists());
    assert!(!t.path().join("outside_new").exists());
}

#[test]
fn hard_link_is_confined() {
    let (t, root) = setup();
    root.hard_link("/../etc/passwd", "pw2").unwrap();
    assert_eq!(
        std::fs::metadata(t.path().join("root/pw2")).unwrap().ino(),
        std::fs::metadata(t.path().join("root/etc/passwd"))
            .unwrap()
            .ino()
    );
    assert!(root.hard_link("../secret", "s").is_err());
}

#[test]
fn canonicalize_gives_sandbox_paths() {
    let (_t, root) = setup();
    assert_eq!(root.canonicalize("/").unwrap(), Path::new("/"));
    assert_eq!(root.canonicalize("").unwrap(), Path::new("/"));
    assert_eq!(root.canonicalize("..").unwrap(), Path::new("/"));
    assert_eq!(
        root.canonicalize("etc/../etc/passwd").unwrap(),
        Path::new("/etc/passwd")
    );
    root.symlink("etc", "e").unwrap();
    assert_eq!(
        root.canonicalize("/e/passwd").unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(root.canonicalize("nope").is_err());
}

#[test]
fn file_lifecycle() {
    let (t, root) = setup();
    let mut f = root
        .open_file("/hello", OpenFlags::create_truncate(), 0o600)
        .unwrap();
    f.write_all(b"hi").unwrap();
    drop(f);
    let mut s = String::new();
    root.open_file("hello", OpenFlags::read_only(), 0)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hi");
    let mut f = root
        .open_file("hello", OpenFlags::new().append(true), 0)
        .unwrap();
    f.write_all(b"!").unwrap();
    assert_eq!(root.read("hello").unwrap(), b"hi!");
    assert!(
        root.open_file("hello", OpenFlags::create_new_file(), 0o644)
            .is_err()
    );
    let md = root.metadata("hello").unwrap();
    assert!(md.is_file());
    assert_eq!(md.size, 3);

    root.rename("hello", "/bye").unwrap();
    assert!(!root.exists("hello").unwrap());
    root.write("other", b"o", 0o644).unwrap();
    assert!(root.rename_noreplace("other", "bye").is_err());
    root.set_permissions("bye", 0o640).unwrap();
    assert_eq!(root.metadata("bye").unwrap().permissions(), 0o640);
    let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    root.set_times("bye", Some(when), Some(when)).unwrap();
    assert_eq!(root.metadata("bye").unwrap().mtime, (1_000_000, 0));

    root.symlink("bye", "link").unwrap();
    assert!(root.symlink_metadata("link").unwrap().is_symlink());
    assert!(root.metadata("link").unwrap().is_file());
    assert!(
        root.open_file("link", OpenFlags::read_only().follow_symlinks(false), 0)
            .is_err()
    );
    root.set_symlink_times("link", None, Some(when)).unwrap();

    root.create_dir_all("a/b/c", 0o755).unwrap();
    root.create_dir_all("a/b/c", 0o755).unwrap();
    root.write("a/b/c/f", b"f", 0o644).unwrap();
    root.mkfifo("a/fifo", 0o644).unwrap();
    let names: Vec<_> = root
        .read_dir("a")
        .unwrap()
        .into_iter()
        .map(|e| (e.name.into_string().unwrap(), e.metadata.file_type))
        .collect();
    assert_eq!(
        names,
        vec![
            ("b".to_string(), FileType::Dir),
            ("fifo".to_string(), FileType::Fifo)
        ]
    );
    assert!(root.remove_dir("a").is_err());
    assert!(root.create_dir_all("bye/x", 0o755).is_err());
    root.remove_file("link").unwrap();
    assert!(root.exists("bye").unwrap());
    root.remove_dir_all("a").unwrap();
    assert!(!t.path().join("root/a").exists());
    root.remove_file("bye").unwrap();
    assert!(root.remove_file("..").is_err());
    assert!(root.remove_dir_all("/").is_err());
    assert!(root.create_dir("/", 0o755).is_err());
}

#[test]
fn remove_dir_all_does_not_follow_symlinks() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("victim")).unwrap();
    std::fs::write(t.path().join("victim/keep"), b"k").unwrap();
    root.create_dir("d", 0o755).unwrap();
    // A symlink whose host-view target is outside; must be removed as a link.
    std::os::unix::fs::symlink(t.path().join("victim"), t.path().join("root/d/l")).unwrap();
    root.remove_dir_all("d").unwrap();
    assert!(t.path().join("victim/keep").exists());
    // remove_dir_contents with a keep filter.
    root.create_dir_all("e/x", 0o755).unwrap();
    root.write("e/y", b"", 0o644).unwrap();
    root.remove_dir_contents("e", &|n| n == "y").unwrap();
    assert!(!root.exists("e/x").unwrap());
    assert!(root.exists("e/y").unwrap());
}

#[test]
fn chown_and_owner_apply_as_root() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let (t, root) = setup();
    let root = root.with_owner(900_000, 900_001);
    root.create_dir_all("x/y", 0o755).unwrap();
    root.write("x/y/f", b"1", 0o644).unwrap();
    root.symlink("f", "x/y/l").unwrap();
    root.mkfifo("x/p", 0o600).unwrap();
    for p in ["x", "x/y", "x/y/f", "x/y/l", "x/p"] {
        let md = std::fs::symlink_metadata(t.path().join("root").join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (900_000, 900_001), "{p}");
    }
    // Existing files keep their owner when opened with create.
    std::fs::write(t.path().join("root/mine"), b"").unwrap();
    root.open_file("mine", OpenFlags::create_truncate(), 0o644)
        .unwrap();
    assert_eq!(
        std::fs::metadata(t.path().join("root/mine")).unwrap().uid(),
        0
    );
    root.chown("mine", 5, 6).unwrap();
    let md = std::fs::metadata(t.path().join("root/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (5, 6));
    root.lchown("x/y/l", 7, 8).unwrap();
    let md = std::fs::symlink_metadata(t.path().join("root/x/y/l")).unwrap();
    assert_eq!((md.uid(), md.gid()), (7, 8));
    let md = std::fs::metadata(t.path().join("root/x/y/f")).unwrap();
    assert_eq!(md.uid(), 900_000);
}
