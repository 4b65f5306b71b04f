//! Reading a session archive into fresh disks, refusing anything hostile:
//! every path is resolved inside its target ([`ConfinedRoot`]); entries
//! with `..` or absolute paths, links leading out, device nodes, unknown
//! entry kinds, sizes past the limits, an unknown format version and bad
//! checksums are errors. The caller made the targets for this import and
//! removes them on any error, so nothing half-made is kept.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{
    CHANGES, CHECKSUMS, Checksums, FORMAT, HEADER, Header, IMAGE, MAX_JSON, NOBODY, SNAPSHOTS,
    VERSION, plain_component,
};
use crate::error::{Error, Result};
use crate::fs::{ConfinedRoot, OpenFlags};

/// Bounds on what an archive may make.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    /// Most bytes of file data, all sections together (the disk's size
    /// bounds each section again: a bomb ends in ENOSPC at worst).
    pub max_bytes: u64,
    pub max_entries: u64,
    /// Largest embedded image archive.
    pub max_image_bytes: u64,
}

/// Where an import writes.
pub struct ImportTargets<'a> {
    /// Checks the header before anything is written (names, sizes).
    pub header: &'a mut dyn FnMut(&Header) -> Result<()>,
    /// The new session's upper layer, asked for when its section starts.
    pub changes: &'a mut dyn FnMut() -> Result<ConfinedRoot>,
    /// A fresh upper layer for each snapshot, asked for in archive order.
    pub snapshot: &'a mut dyn FnMut(&str) -> Result<ConfinedRoot>,
    /// Where `image.oci.tar` is written.
    pub image_file: &'a Path,
    /// Host id of the new session's root.
    pub id_root: u32,
}

/// What an import made.
#[derive(Debug)]
pub struct Imported {
    pub header: Header,
    pub files: u64,
    pub bytes: u64,
    pub has_image: bool,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::InvalidArchive(reason.into())
}

/// Read an archive from `input`; `progress` gets the compressed bytes read.
pub fn read_archive(
    input: impl Read,
    targets: ImportTargets<'_>,
    limits: ImportLimits,
    progress: &dyn Fn(u64),
) -> Result<Imported> {
    let counted = Counting {
        inner: input,
        read: 0,
        progress,
    };
    let decoder = zstd::stream::read::Decoder::new(counted)
        .map_err(|e| bad(format!("not a zstd stream: {e}")))?;
    let mut archive = tar::Archive::new(decoder);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let mut r = Reader {
        targets,
        limits,
        header: None,
        section: None,
        done_sections: BTreeSet::new(),
        sums: Checksums::new(),
        seen_files: HashSet::new(),
        dirs: Vec::new(),
        entries: 0,
        bytes: 0,
        files: 0,
        has_image: false,
        checksums: None,
        changes_root: None,
    };
    for entry in entries {
        let mut entry = entry.map_err(truncated)?;
        r.entries += 1;
        if r.entries > r.limits.max_entries {
            return Err(bad(format!("more than {} entries", r.limits.max_entries)));
        }
        if r.checksums.is_some() {
            return Err(bad("entries after checksums.json"));
        }
        r.entry(&mut entry)?;
    }
    let Some(expected) = r.checksums.take() else {
        return Err(bad(
            "the archive ends before checksums.json: it is truncated",
        ));
    };
    if expected != r.sums {
        let differs = expected
            .iter()
            .find(|(k, v)| r.sums.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .or_else(|| r.sums.keys().find(|k| !expected.contains_key(*k)).cloned())
            .unwrap_or_default();
        return Err(bad(format!(
            "checksum mismatch for {differs}: the archive is damaged"
        )));
    }
    r.finish_dirs()?;
    let header = r.header.ok_or_else(|| bad("no header"))?;
    Ok(Imported {
        header,
        files: r.files,
        bytes: r.bytes,
        has_image: r.has_image,
    })
}

fn truncated(e: io::Error) -> Error {
    bad(format!("unreadable (truncated or corrupt): {e}"))
}

struct Counting<'a, R> {
    inner: R,
    read: u64,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// The section entries are being written to.
struct Section {
    name: String,
    root: ConfinedRoot,
}

struct Reader<'a> {
    targets: ImportTargets<'a>,
    limits: ImportLimits,
    header: Option<Header>,
    section: Option<Section>,
    done_sections: BTreeSet<String>,
    sums: Checksums,
    /// Regular files written, per section (`section/path`): hard link
    /// targets must be among them.
    seen_files: HashSet<PathBuf>,
    /// Directories' times, set once their contents are written.
    dirs: Vec<(String, PathBuf, u64)>,
    entries: u64,
    bytes: u64,
    files: u64,
    has_image: bool,
    checksums: Option<Checksums>,
    /// Where the changes went, for the directories' times at the end.
    changes_root: Option<PathBuf>,
}

/// A relative path of plain components, or an error naming it.
pub(super) fn clean(raw: &[u8]) -> Result<PathBuf> {
    let text = String::from_utf8_lossy(raw);
    if raw.is_empty() || raw.len() > 4096 || raw.contains(&0) {
        return Err(bad(format!("entry {text:?}: bad path")));
    }
    let path = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) if n.len() <= 255 => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(bad(format!("entry {text:?} climbs out with '..'")));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!("entry {text:?} is an absolute path")));
            }
            Component::Normal(_) => {
                return Err(bad(format!("entry {text:?}: a name over 255 bytes")));
            }
        }
    }
    Ok(out)
}

/// Whether a symlink at `link` (inside a root) pointing to `target` stays
/// inside that root when resolved lexically: absolute targets do (they
/// resolve from the sandbox's own `/`), relative ones must not climb above it.
pub(super) fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

impl Reader<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let path = clean(&raw)?;
        let kind = entry.header().entry_type();
        if self.header.is_none() {
            if path != Path::new(HEADER) || !kind.is_file() {
                return Err(bad(format!(
                    "the first entry must be {HEADER}: not a Blink session archive"
                )));
            }
            let text = read_small(entry, HEADER)?;
            let value: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| bad(format!("{HEADER} is not JSON: {e}")))?;
            if value["format"] != FORMAT {
                return Err(bad(format!("format {} is not {FORMAT:?}", value["format"])));
            }
            if value["version"] != VERSION {
                return Err(bad(format!(
                    "unknown archive format version {} (this Blink reads version {VERSION})",
                    value["version"]
                )));
            }
            let header: Header =
                serde_json::from_value(value).map_err(|e| bad(format!("{HEADER}: {e}")))?;
            for s in &header.snapshots {
                if !plain_component(&s.name) {
                    return Err(bad(format!("snapshot name {:?}", s.name)));
                }
            }
            (self.targets.header)(&header)?;
            self.header = Some(header);
            return Ok(());
        }
        if path == Path::new(CHECKSUMS) {
            let text = read_small(entry, CHECKSUMS)?;
            self.checksums =
                Some(serde_json::from_slice(&text).map_err(|e| bad(format!("{CHECKSUMS}: {e}")))?);
            return Ok(());
        }
        if path == Path::new(IMAGE) {
            if !kind.is_file() || self.section.is_some() || self.has_image {
                return Err(bad("image.oci.tar out of place"));
            }
            let size = entry.header().size().map_err(truncated)?;
            if size > self.limits.max_image_bytes {
                return Err(Error::TooLarge {
                    what: "the archive's image".into(),
                    size,
                    limit: self.limits.max_image_bytes,
                });
            }
            let mut out = std::fs::File::create(self.targets.image_file)
                .map_err(|e| Error::io("staging the image", e))?;
            let digest = copy_hashed(entry, &mut out, size)?;
            self.sums.insert(IMAGE.into(), digest);
            self.has_image = true;
            return Ok(());
        }
        let (section, rel) = self.locate(&path)?;
        self.switch_to(&section)?;
        self.apply(entry, &section, &rel, &raw)
    }

    /// The section (`changes` or `snapshots/NAME`) and the path in it.
    fn locate(&self, path: &Path) -> Result<(String, PathBuf)> {
        let mut comps = path.components();
        let first = comps.next().and_then(|c| c.as_os_str().to_str());
        match first {
            Some(CHANGES) => Ok((CHANGES.into(), comps.as_path().to_path_buf())),
            Some(SNAPSHOTS) => {
                let name = comps
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .ok_or_else(|| bad(format!("entry {} names no snapshot", path.display())))?;
                let known = self
                    .header
                    .as_ref()
                    .is_some_and(|h| h.snapshots.iter().any(|s| s.name == name));
                if !known {
                    return Err(bad(format!("snapshot {name:?} is not in the header")));
                }
                Ok((format!("{SNAPSHOTS}/{name}"), comps.as_path().to_path_buf()))
            }
            _ => Err(bad(format!("unexpected entry {}", path.display()))),
        }
    }

    fn switch_to(&mut self, section: &str) -> Result<()> {
        if self.section.as_ref().is_some_and(|s| s.name == section) {
            return Ok(());
        }
        if self.done_sections.contains(section) {
            return Err(bad(format!("{section} is split in two")));
        }
        if let Some(old) = self.section.take() {
            self.done_sections.insert(old.name);
        }
        let root = if section == CHANGES {
            // Asked once: the section cannot come back (checked above).
            let root = (self.targets.changes)()?;
            self.changes_root = Some(root.host_path().to_path_buf());
            root
        } else {
            let name = section
                .trim_start_matches(SNAPSHOTS)
                .trim_start_matches('/');
            (self.targets.snapshot)(name)?
        };
        self.section = Some(Section {
            name: section.into(),
            root,
        });
        Ok(())
    }

    fn owner(&self, entry_header: &tar::Header) -> (u32, u32) {
        let map = |id: Option<u64>| {
            let id = id
                .filter(|id| *id < u64::from(crate::runtime::local::ID_RANGE))
                .unwrap_or(u64::from(NOBODY)) as u32;
            self.targets.id_root + id
        };
        (map(entry_header.uid().ok()), map(entry_header.gid().ok()))
    }

    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        section: &str,
        rel: &Path,
        raw: &[u8],
    ) -> Result<()> {
        let h = entry.header().clone();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let (uid, gid) = self.owner(&h);
        let xattrs: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .ok()
            .flatten()
            .map(|exts| {
                exts.flatten()
                    .filter_map(|e| {
                        let key = e.key().ok()?;
                        let name = key.strip_prefix("SCHILY.xattr.")?;
                        name.starts_with("user.")
                            .then(|| (name.to_owned(), e.value_bytes().to_vec()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let root = &self.section.as_ref().ok_or_else(|| bad("no section"))?.root;
        let inside = Path::new("/").join(rel);
        let file_name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Overlay markers, as in OCI layers.
        if file_name == ".wh..wh..opq" {
            let dir = inside.parent().unwrap_or(Path::new("/"));
            return root.set_xattr(dir, "trusted.overlay.opaque", b"y");
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            if !plain_component(hidden) {
                return Err(bad(format!("whiteout {}", String::from_utf8_lossy(raw))));
            }
            return root.whiteout(inside.with_file_name(hidden));
        }
        match kind {
            tar::EntryType::Directory => {
                if rel.as_os_str().is_empty() {
                    root.lchown("/", uid, gid)?;
                    root.set_permissions("/", mode)?;
                } else {
                    root.create_dir_all(&inside, 0o700)?;
                    root.lchown(&inside, uid, gid)?;
                    root.set_permissions(&inside, mode)?;
                }
                for (name, value) in &xattrs {
                    root.set_xattr(&inside, name, value)?;
                }
                self.dirs.push((section.into(), inside, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = h.size().map_err(truncated)?;
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.limits.max_bytes {
                    return Err(Error::TooLarge {
                        what: "the archive's files".into(),
                        size: self.bytes,
                        limit: self.limits.max_bytes,
                    });
                }
                let mut out = root.open_file(&inside, OpenFlags::create_new_file(), 0o600)?;
                let digest = copy_hashed(entry, &mut out, size)?;
                drop(out);
                root.lchown(&inside, uid, gid)?;
                root.set_permissions(&inside, mode)?;
                for (name, value) in &xattrs {
                    root.set_xattr(&inside, name, value)?;
                }
                let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                root.set_times(&inside, Some(when), Some(when))?;
                self.sums
                    .insert(format!("{section}/{}", rel.display()), digest);
                self.seen_files.insert(Path::new(section).join(rel));
                self.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = h
                    .link_name()
                    .map_err(truncated)?
                    .ok_or_else(|| bad(format!("symlink {} has no target", rel.display())))?;
                if !link_stays_inside(rel, &target) {
                    return Err(bad(format!(
                        "symlink {} -> {} leads out of the session",
                        rel.display(),
                        target.display()
                    )));
                }
                root.symlink(&target, &inside)?;
                root.lchown(&inside, uid, gid)?;
            }
            tar::EntryType::Link => {
                let target = h
                    .link_name()
                    .map_err(truncated)?
                    .ok_or_else(|| bad(format!("hard link {} has no target", rel.display())))?;
                let target = clean(target.as_os_str().as_encoded_bytes())?;
                let (target_section, target_rel) = self.locate(&target)?;
                if target_section != section
                    || !self
                        .seen_files
                        .contains(&Path::new(section).join(&target_rel))
                {
                    return Err(bad(format!(
                        "hard link {} -> {} leads outside what the archive made",
                        rel.display(),
                        target.display()
                    )));
                }
                root.hard_link(Path::new("/").join(&target_rel), &inside)?;
            }
            tar::EntryType::Fifo => {
                root.mkfifo(&inside, mode)?;
                root.lchown(&inside, uid, gid)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(bad(format!("device node {} refused", rel.display())));
            }
            other => {
                return Err(bad(format!(
                    "entry {} of kind {other:?} refused",
                    rel.display()
                )));
            }
        }
        Ok(())
    }

    /// Directories get their times last: writing into them changed them.
    fn finish_dirs(&mut self) -> Result<()> {
        self.section = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (section, path, mtime) in dirs.into_iter().rev() {
            let (true, Some(changes)) = (section == CHANGES, &self.changes_root) else {
                // Snapshots' directories keep the times their writing left.
                continue;
            };
            let root = ConfinedRoot::open(changes)?;
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
            root.set_times(&path, Some(when), Some(when))?;
        }
        Ok(())
    }
}

fn read_small<R: Read>(entry: &mut tar::Entry<'_, R>, what: &str) -> Result<Vec<u8>> {
    let size = entry.header().size().map_err(truncated)?;
    if size > MAX_JSON {
        return Err(Error::TooLarge {
            what: what.into(),
            size,
            limit: MAX_JSON,
        });
    }
    let mut text = Vec::new();
    entry
        .take(MAX_JSON)
        .read_to_end(&mut text)
        .map_err(truncated)?;
    Ok(text)
}

/// Copy exactly `size` bytes; their `sha256:` digest.
fn copy_hashed(from: &mut impl Read, to: &mut impl io::Write, size: u64) -> Result<String> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = from.read(&mut buf[..want]).map_err(truncated)?;
        if n == 0 {
            return Err(bad("a file ends early: the archive is truncated"));
        }
        hash.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                bad("its files do not fit in the session's disk (decompressed past its size)")
            } else {
                Error::io("writing an imported file", e)
            }
        })?;
        left -= n as u64;
    }
    Ok(format!("sha256:{}", hex::encode(hash.finalize())))
}
