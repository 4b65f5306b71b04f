//! Shared helpers: case counts, directory snapshots, raw tar building and
//! hostile path strategies.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// `n` cases in CI; `PROPTEST_CASES` (read by `ProptestConfig::default()`)
/// overrides it for a long run.
pub fn cases(n: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    // Shrinking a filesystem case can take long; keep it bounded.
    config.max_shrink_iters = 256;
    config
}

/// Everything observable about a tree that is not ours to change: type,
/// mode, size, link count, inode, contents and symlink targets.
pub type Snapshot = BTreeMap<PathBuf, String>;

pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, out: &mut Snapshot) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path.strip_prefix(base).unwrap().to_path_buf();
        let ft = md.file_type();
        let what = if ft.is_symlink() {
            format!("link -> {:?}", std::fs::read_link(&path).ok())
        } else if ft.is_dir() {
            walk(base, &path, out);
            "dir".to_string()
        } else if ft.is_file() {
            format!("file {:?}", std::fs::read(&path).ok())
        } else {
            "other".to_string()
        };
        out.insert(
            rel,
            format!(
                "{what} mode={:o} nlink={} ino={} mtime={}",
                md.permissions().mode(),
                md.nlink(),
                md.ino(),
                md.mtime()
            ),
        );
    }
}

/// A fenced work area: `target` is where hostile input is applied; `canary`
/// is a sibling holding a file, a directory and a symlink that must never
/// change; `outside` is everything in the temp dir but `target`.
pub struct Fence {
    pub tmp: tempfile::TempDir,
    pub target: PathBuf,
    pub canary: PathBuf,
    before: Snapshot,
}

pub const CANARY_DATA: &[u8] = b"OUTSIDE-THE-SANDBOX";

impl Fence {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let canary = tmp.path().join("canary");
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir_all(canary.join("dir")).unwrap();
        std::fs::write(canary.join("file"), CANARY_DATA).unwrap();
        std::fs::write(canary.join("dir/inner"), CANARY_DATA).unwrap();
        std::os::unix::fs::symlink(&target, canary.join("to-target")).unwrap();
        let before = Self::outside(tmp.path());
        Self {
            tmp,
            target,
            canary,
            before,
        }
    }

    fn outside(tmp: &Path) -> Snapshot {
        snapshot(tmp)
            .into_iter()
            .filter(|(p, _)| !p.starts_with("target"))
            .collect()
    }

    /// Nothing outside `target` changed; also that the temp dir's own mode
    /// is intact.
    pub fn check(&self) -> Result<(), TestCaseError> {
        let now = Self::outside(self.tmp.path());
        prop_assert_eq!(&now, &self.before, "something outside the target changed");
        Ok(())
    }

    /// Register a file placed outside the target on purpose (an input blob).
    pub fn add_outside(&mut self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, data).unwrap();
        self.before = Self::outside(self.tmp.path());
        path
    }
}

/// Path components chosen to hurt: parents, dots, empties, whiteouts,
/// names that exist in the canary, long names.
pub fn hostile_component() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just(String::new()),
        3 => prop::sample::select(vec!["a", "b", "etc", "d"]).prop_map(str::to_string),
        1 => prop::sample::select(vec![
            "canary", "file", "dir", "to-target", "target", ".wh..", ".wh...",
            ".wh..wh..opq", ".wh.a", ".wh.etc", ".wh.canary", ".wh..wh.plnk", "\u{1F980}",
        ])
        .prop_map(str::to_string),
        1 => "[a-z]{100,300}",
        1 => "[^/\u{0}]{1,12}",
    ]
}

/// A path of hostile components, relative or absolute.
pub fn hostile_path() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(hostile_component(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(abs, comps, trailing)| {
            let mut s = comps.join("/");
            if abs {
                s.insert(0, '/');
            }
            if trailing {
                s.push('/');
            }
            s
        })
}

/// One tar entry, described by raw fields (nothing is sanitized: the
/// name goes into the header bytes, or a GNU long-name record).
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub kind: u8,
    pub link: Vec<u8>,
    pub mode: u32,
    pub data: Vec<u8>,
    /// Size written in the header (may disagree with `data`).
    pub size: Option<u64>,
    /// Modification time in the header (default: a fixed date).
    pub mtime: Option<u64>,
}

impl RawEntry {
    pub fn file(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            kind: b'0',
            link: Vec::new(),
            mode: 0o644,
            data: data.to_vec(),
            size: None,
            mtime: None,
        }
    }

    pub fn dir(name: &str) -> Self {
        Self {
            kind: b'5',
            mode: 0o755,
            ..Self::file(name, b"")
        }
    }

    pub fn symlink(name: &str, target: &str) -> Self {
        Self {
            kind: b'2',
            link: target.as_bytes().to_vec(),
            mode: 0o777,
            ..Self::file(name, b"")
        }
    }

    pub fn hard_link(name: &str, target: &str) -> Self {
        Self {
            kind: b'1',
            link: target.as_bytes().to_vec(),
            ..Self::file(name, b"")
        }
    }
}

fn octal(field: &mut [u8], value: u64) {
    let s = format!("{value:0w$o}", w = field.len() - 1);
    let s = s.as_bytes();
    let n = s.len().min(field.len() - 1);
    field[..n].copy_from_slice(&s[s.len() - n..]);
    field[field.len() - 1] = 0;
}

/// A numeric field: octal when it fits, else GNU base-256.
fn number(field: &mut [u8], value: u64) {
    if value < 8u64.pow(field.len() as u32 - 1) {
        octal(field, value);
    } else {
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        field[n - 8..].copy_from_slice(&value.to_be_bytes());
    }
}

fn header(name: &[u8], kind: u8, link: &[u8], mode: u32, size: u64, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    number(&mut h[124..136], size);
    number(&mut h[136..148], mtime);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    h
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// Serialize entries as a GNU tar with two zero blocks at the end.
pub fn build_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if e.name.len() > 100 {
            let mut long = e.name.clone();
            long.push(0);
            out.extend_from_slice(&header(
                b"././@LongLink",
                b'L',
                b"",
                0,
                long.len() as u64,
                0,
            ));
            out.extend_from_slice(&long);
            pad(&mut out);
        }
        if e.link.len() > 100 {
            let mut long = e.link.clone();
            long.push(0);
            out.extend_from_slice(&header(
                b"././@LongLink",
                b'K',
                b"",
                0,
                long.len() as u64,
                0,
            ));
            out.extend_from_slice(&long);
            pad(&mut out);
        }
        let size = e.size.unwrap_or(e.data.len() as u64);
        let mtime = e.mtime.unwrap_or(1_700_000_000);
        out.extend_from_slice(&header(&e.name, e.kind, &e.link, e.mode, size, mtime));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Ways to damage a byte stream after it is built.
#[derive(Debug, Clone)]
pub enum Damage {
    None,
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Splice(prop::sample::Index, Vec<u8>),
}

pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(i, b)| Damage::Splice(i, b)),
    ]
}

pub fn apply_damage(mut data: Vec<u8>, d: &Damage) -> Vec<u8> {
    if data.is_empty() {
        return data;
    }
    match d {
        Damage::None => {}
        Damage::Truncate(i) => data.truncate(i.index(data.len())),
        Damage::Flip(i, b) => {
            let i = i.index(data.len());
            data[i] ^= b | 1;
        }
        Damage::Splice(i, bytes) => {
            let i = i.index(data.len());
            data.splice(i..i, bytes.iter().copied());
        }
    }
    data
}

/// Bounded time and memory: one case of an operation on hostile input
/// finishes in seconds, and the process never grows past 2 GiB (the peak
/// resident size covers every case run so far, so a decompression or
/// allocation bomb anywhere fails the test that hit it or the next one).
pub fn check_bounds(started: std::time::Instant, what: &str) -> Result<(), TestCaseError> {
    let secs = started.elapsed().as_secs_f64();
    prop_assert!(secs < 30.0, "{} took {:.1} s", what, secs);
    // SAFETY: getrusage only writes the struct it is given.
    let peak_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_maxrss
    };
    prop_assert!(
        peak_kib < 2 << 20,
        "{} left a peak RSS of {} KiB",
        what,
        peak_kib
    );
    Ok(())
}

/// An error must carry a message a person can read.
pub fn check_error(e: &blink_sdk::Error) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.trim().is_empty(), "empty error message: {e:?}");
    prop_assert!(!e.code().is_empty());
    Ok(())
}
