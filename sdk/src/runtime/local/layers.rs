//! Disk layers: read-only, shared pieces of session disks, so snapshots,
//! restores and clones share what they have in common instead of copying
//! it (docs/DISKS.md).
//!
//! A layer is an ext4 image that was a session's `disk.img` (or a copy of
//! one), never written again, kept once in `<data>/disk-layers/<id>.img`
//! with `<id>.json` (its [`Record`]: the layer under it, the host id range
//! its files were written with). A session's disk is its own writable
//! `disk.img` over a chain of layers over the image's tree: the overlay's
//! lower layers, each attached read-only and id-mapped from the range it
//! was written with to the sandbox's (disk.rs). The disk image names the
//! top of its chain in an extended attribute (`user.blink.layer`), so a
//! disk and its chain change together, by one rename; no attribute is an
//! empty chain (every disk made before layers).
//!
//! Who needs a layer is found, never counted: a disk's chain, a snapshot's
//! chain (snapshots.rs), and their parents. [`Layers::collect`] removes
//! the rest under the lock every change of a reference takes; a layer
//! being made is a dotted `.partial` file nobody collects, removed at
//! start if a crash left it.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::disk_image::{self, Templates};
use crate::error::{Error, Result};

/// The directory of layers, beside the sandboxes' directory.
pub const DIR: &str = "disk-layers";
/// The most layers under one disk. Every start of a sandbox attaches one
/// read-only loop device and mounts one filesystem per layer (loop devices
/// are a host-wide resource), and overlayfs looks a missing name up in each
/// of them. A new layer that would go past it is flattened instead: the
/// top [`FLATTEN`] layers and the new content are merged into one layer
/// (a copy of what they hold), which leaves the chain at half the limit.
pub const MAX_DEPTH: usize = 16;
/// How many of a full chain's top layers a flatten merges.
pub const FLATTEN: usize = MAX_DEPTH / 2;

/// The attribute of a disk image naming the top of its chain.
const TOP_XATTR: &str = "user.blink.layer";
/// The attribute of a disk image no sandbox has mounted yet (made empty
/// over a chain): nothing in it, so snapshotting it adds no layer.
const FRESH_XATTR: &str = "user.blink.fresh";

/// What `<id>.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The layer under this one.
    pub parent: Option<String>,
    /// Host id of the root of the sandbox that wrote its files: its ids
    /// count from there.
    pub id_root: u32,
    /// The image's size (its filesystem's).
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// One layer of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub id: String,
    pub image: PathBuf,
    pub id_root: u32,
}

/// The layers of one data dir.
#[derive(Debug)]
pub struct Layers {
    dir: PathBuf,
    /// The sandboxes' directory, whose disks and snapshots name layers.
    sandboxes: PathBuf,
    /// Taken to add a reference to a layer, and to collect.
    lock: Mutex<()>,
}

/// Proof that the layers' lock is held.
pub struct Held<'a> {
    _guard: MutexGuard<'a, ()>,
}

/// What a new layer is made of.
#[derive(Debug)]
pub enum Content {
    /// The disk image of a stopped sandbox: the layer becomes a second
    /// name of the file (the sandbox gets a fresh disk right after).
    Link(PathBuf),
    /// A file made for it by [`Layers::partial`] (a copy): moved in.
    Made(PathBuf),
}

/// A layer ready to be committed; a made file it holds is removed if it
/// never is.
#[derive(Debug)]
pub struct Prepared {
    content: Option<Content>,
    parent: Option<String>,
    id_root: u32,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(Content::Made(path)) = self.content.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether `id` is a layer's name (and so a safe file name).
fn valid(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Layers {
    pub fn new(dir: PathBuf, sandboxes: PathBuf) -> Self {
        Self {
            dir,
            sandboxes,
            lock: Mutex::new(()),
        }
    }

    pub fn hold(&self) -> Held<'_> {
        Held {
            _guard: self
                .lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    fn image(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn record(&self, id: &str) -> Result<Record> {
        if !valid(id) {
            return Err(Error::Runtime(format!("{id:?} is not a disk layer's name")));
        }
        let path = self.record_path(id);
        let text =
            std::fs::read(&path).map_err(|e| Error::io(format!("reading disk layer {id}"), e))?;
        serde_json::from_slice(&text).map_err(|e| Error::Runtime(format!("disk layer {id}: {e}")))
    }

    /// The chain whose top is `top`, topmost first (empty for none).
    pub fn chain(&self, top: Option<&str>) -> Result<Vec<Layer>> {
        let mut chain: Vec<Layer> = Vec::new();
        let mut next = top.map(str::to_owned);
        while let Some(id) = next {
            if chain.len() >= MAX_DEPTH || chain.iter().any(|l| l.id == id) {
                return Err(Error::Runtime(format!(
                    "the chain of disk layers under {} is longer than {MAX_DEPTH}",
                    top.unwrap_or_default()
                )));
            }
            let record = self.record(&id)?;
            let image = self.image(&id);
            if !image.is_file() {
                return Err(Error::Runtime(format!("disk layer {id} is missing")));
            }
            next = record.parent;
            chain.push(Layer {
                id,
                image,
                id_root: record.id_root,
            });
        }
        Ok(chain)
    }

    /// Host bytes the images of `chain` take.
    pub fn bytes(chain: &[Layer]) -> u64 {
        chain
            .iter()
            .filter_map(|l| std::fs::metadata(&l.image).ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    /// Host bytes one layer's image takes (0 if it is gone).
    pub fn bytes_of(&self, id: &str) -> u64 {
        if !valid(id) {
            return 0;
        }
        std::fs::metadata(self.image(id)).map_or(0, |m| m.blocks() * 512)
    }

    /// A place to make a new layer's image in (a copy): no collection
    /// touches it, a crash leaves it to [`Layers::remove_leftovers`].
    pub fn partial(&self) -> Result<PathBuf> {
        super::private_dir(&self.dir)?;
        Ok(self
            .dir
            .join(format!(".{}.partial", uuid::Uuid::new_v4().simple())))
    }

    /// A scratch directory under the layers' (mount points of a flatten).
    pub fn scratch(&self) -> Result<PathBuf> {
        super::private_dir(&self.dir)?;
        Ok(self
            .dir
            .join(format!(".work-{}", uuid::Uuid::new_v4().simple())))
    }

    /// Make `content` ready to be a layer over the chain topped by
    /// `parent`, of files written with `id_root`'s ids: its filesystem
    /// made clean (a copy of a running disk carries a journal to replay; a
    /// layer is mounted without one), and flattened with the top of the
    /// chain if the chain is full. No lock is taken: `parent` is held by
    /// the disk being snapshotted, which nobody else changes meanwhile.
    /// Blocking.
    pub fn prepare(
        &self,
        content: Content,
        parent: Option<&str>,
        id_root: u32,
        templates: &Templates,
        mib: u64,
    ) -> Result<Prepared> {
        let mut prepared = Prepared {
            content: Some(content),
            parent: parent.map(str::to_owned),
            id_root,
        };
        let image = match &prepared.content {
            Some(Content::Link(p) | Content::Made(p)) => p.clone(),
            None => unreachable!("made with content"),
        };
        let work = self.scratch()?;
        let settled = settle(&image, &work);
        let _ = crate::fs::remove_tree(&work);
        settled?;
        let chain = self.chain(parent)?;
        if chain.len() < MAX_DEPTH {
            return Ok(prepared);
        }
        let (top, rest) = chain.split_at(FLATTEN);
        let dest = self.partial()?;
        let mut flattened = Prepared {
            content: Some(Content::Made(dest.clone())),
            parent: rest.first().map(|l| l.id.clone()),
            id_root,
        };
        let size = mib
            .saturating_mul(FLATTEN as u64 + 1)
            .min(disk_image::MAX_MIB);
        let work = self.scratch()?;
        let made = super::flatten::flatten(&image, id_root, top, &dest, &work, templates, size);
        let _ = crate::fs::remove_tree(&work);
        made?;
        tracing::info!(
            layers = top.len() + 1,
            "a chain of disk layers was full: its top was flattened into one"
        );
        // The content is in the flattened layer now; a made copy goes.
        std::mem::swap(&mut prepared, &mut flattened);
        drop(flattened);
        Ok(prepared)
    }

    /// Put a prepared layer in place; its id. The caller records who uses
    /// it before letting go of `held`.
    pub fn commit(&self, _held: &Held<'_>, mut prepared: Prepared) -> Result<String> {
        use std::os::unix::fs::PermissionsExt;
        super::private_dir(&self.dir)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let image = self.image(&id);
        let source = match &prepared.content {
            Some(Content::Link(p) | Content::Made(p)) => p.clone(),
            None => unreachable!("made with content"),
        };
        let size_bytes = std::fs::metadata(&source)
            .map_err(|e| Error::io("reading a new disk layer", e))?
            .len();
        let record = Record {
            parent: prepared.parent.clone(),
            id_root: prepared.id_root,
            size_bytes,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let json = serde_json::to_vec(&record).map_err(|e| Error::Runtime(e.to_string()))?;
        std::fs::write(self.record_path(&id), json)
            .map_err(|e| Error::io("recording a disk layer", e))?;
        let placed = match prepared.content.take() {
            Some(Content::Link(disk)) => std::fs::hard_link(&disk, &image),
            Some(Content::Made(file)) => std::fs::rename(&file, &image).inspect_err(|_| {
                let _ = std::fs::remove_file(&file);
            }),
            None => unreachable!("made with content"),
        }
        .and_then(|()| std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o400)));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&image);
            let _ = std::fs::remove_file(self.record_path(&id));
            return Err(Error::io("placing a disk layer", e));
        }
        Ok(id)
    }

    /// Remove every layer no disk, snapshot or needed layer names. Nothing
    /// is removed if a reference cannot be read: a layer kept too long is
    /// collected later, one removed too early breaks a disk. Blocking.
    pub fn collect(&self) {
        let held = self.hold();
        match self.needed(&held) {
            Ok(needed) => self.remove_unneeded(&needed),
            Err(e) => tracing::warn!(error = %e, "disk layers not collected"),
        }
    }

    /// Every layer some disk or snapshot needs, parents included.
    fn needed(&self, _held: &Held<'_>) -> Result<HashSet<String>> {
        let io = |e: io::Error| Error::io("listing sandboxes for their disk layers", e);
        let mut tops: Vec<String> = Vec::new();
        let entries = match std::fs::read_dir(&self.sandboxes) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Going: whatever it names is no longer needed.
            if name.ends_with(".removing") || !entry.path().is_dir() {
                continue;
            }
            let disk = entry.path().join(disk_image::FILE);
            if disk.is_file() {
                tops.extend(top_of(&disk)?);
            }
            tops.extend(super::snapshots::layers_named(&entry.path())?);
        }
        let mut needed = HashSet::new();
        while let Some(id) = tops.pop() {
            if !needed.insert(id.clone()) {
                continue;
            }
            if self.record_path(&id).exists() {
                tops.extend(self.record(&id)?.parent);
            }
        }
        Ok(needed)
    }

    fn remove_unneeded(&self, needed: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix(".img")
                .or_else(|| name.strip_suffix(".json"))
            else {
                continue;
            };
            if !valid(id) || needed.contains(id) {
                continue;
            }
            if name.ends_with(".img") {
                tracing::info!(layer = %id, "removing a disk layer nothing needs");
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// What a process killed while making layers left: half-made images and
    /// scratch directories. At start only, before anything is made.
    pub fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                let _ = crate::fs::remove_tree(&entry.path());
            }
        }
    }
}

/// The top of the chain a disk image names (none: no layers under it).
pub fn top_of(disk: &Path) -> Result<Option<String>> {
    let mut buf = [0u8; 64];
    match rustix::fs::lgetxattr(disk, TOP_XATTR, &mut buf) {
        Ok(n) => {
            let id = String::from_utf8_lossy(&buf[..n]).into_owned();
            if valid(&id) {
                Ok(Some(id))
            } else {
                Err(Error::Runtime(format!(
                    "{} names no disk layer ({id:?})",
                    disk.display()
                )))
            }
        }
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(e) => Err(Error::io(
            format!("reading the layers of {}", disk.display()),
            e.into(),
        )),
    }
}

/// Name `top` as the top of `disk`'s chain.
pub fn set_top(disk: &Path, top: Option<&str>) -> Result<()> {
    let set = match top {
        Some(id) => rustix::fs::lsetxattr(
            disk,
            TOP_XATTR,
            id.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        ),
        None => match rustix::fs::lremovexattr(disk, TOP_XATTR) {
            Err(rustix::io::Errno::NODATA) => Ok(()),
            other => other,
        },
    };
    set.map_err(|e| Error::io(format!("naming the layers of {}", disk.display()), e.into()))
}

/// Whether no sandbox has mounted `disk` since it was made empty.
pub fn is_fresh(disk: &Path) -> bool {
    let mut buf = [0u8; 4];
    rustix::fs::lgetxattr(disk, FRESH_XATTR, &mut buf).is_ok()
}

/// `disk` is about to be mounted (and written).
pub fn clear_fresh(disk: &Path) -> Result<()> {
    match rustix::fs::lremovexattr(disk, FRESH_XATTR) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(Error::io(
            format!("marking {} used", disk.display()),
            e.into(),
        )),
    }
}

/// Make `dest` an empty disk of `mib` MiB over the chain topped by `top`
/// (a stale `dest` is replaced).
pub fn fresh_disk(templates: &Templates, mib: u64, dest: &Path, top: Option<&str>) -> Result<()> {
    let _ = std::fs::remove_file(dest);
    let made = templates
        .make_disk(mib, dest)
        .map_err(|e| Error::io("making a disk image", e))
        .and_then(|()| set_top(dest, top))
        .and_then(|()| {
            rustix::fs::lsetxattr(dest, FRESH_XATTR, b"1", rustix::fs::XattrFlags::empty())
                .map_err(|e| Error::io("marking a new disk image", e.into()))
        });
    if made.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    made
}

/// A disk's size in MiB (its image file's length).
pub fn mib_of(disk: &Path) -> Result<u64> {
    let len = std::fs::metadata(disk)
        .map_err(|e| Error::io(format!("reading {}", disk.display()), e))?
        .len();
    Ok((len >> 20).max(disk_image::MIN_MIB))
}

/// `s_feature_incompat`'s "needs recovery" bit (a journal to replay).
const EXT4_FEATURE_INCOMPAT_RECOVER: u32 = 0x4;

/// Whether the ext4 in `image` has a journal to replay: a copy of a
/// mounted disk (a running snapshot), or a disk whose host went down.
pub fn needs_recovery(image: &Path) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(image)?;
    let mut sb = [0u8; 0x64];
    file.read_exact_at(&mut sb, 1024)?;
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != 0xEF53 {
        return Err(io::Error::other(format!(
            "{} holds no ext4 filesystem",
            image.display()
        )));
    }
    let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
    Ok(incompat & EXT4_FEATURE_INCOMPAT_RECOVER != 0)
}

/// Replay `image`'s journal if it has one to replay (mounted read-write
/// once, privately, at `at`, and unmounted), so that it can be mounted
/// read-only without it. Blocking.
pub fn settle(image: &Path, at: &Path) -> Result<()> {
    if !needs_recovery(image).map_err(|e| Error::io("reading a disk's filesystem", e))? {
        return Ok(());
    }
    let (image, at) = (image.to_path_buf(), at.to_path_buf());
    super::mounts::in_private_mounts(move |mounts| {
        mounts.mount(&image, &at)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(dir: &Path) -> Layers {
        std::fs::create_dir_all(dir.join("sandboxes")).unwrap();
        Layers::new(dir.join(DIR), dir.join("sandboxes"))
    }

    /// A fake disk image: only its name and attributes matter here.
    fn file(path: &Path) -> PathBuf {
        std::fs::write(path, b"disk").unwrap();
        path.to_path_buf()
    }

    fn commit(l: &Layers, image: PathBuf, parent: Option<&str>) -> String {
        let prepared = Prepared {
            content: Some(Content::Made(image)),
            parent: parent.map(str::to_owned),
            id_root: 7,
        };
        let held = l.hold();
        l.commit(&held, prepared).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Layers live while a disk, a snapshot or a layer above names them,
    /// and go once nothing does; a half-made one is left alone until
    /// start, which removes it.
    #[test]
    fn layers_are_collected_once_nothing_needs_them() {
        let dir = tempfile::tempdir().unwrap();
        let l = layers(dir.path());
        let a = commit(&l, file(&dir.path().join("a")), None);
        let b = commit(&l, file(&dir.path().join("b")), Some(&a));
        let c = commit(&l, file(&dir.path().join("c")), None);
        assert_eq!(
            l.chain(Some(&b))
                .unwrap()
                .iter()
                .map(|x| x.id.clone())
                .collect::<Vec<_>>(),
            [b.clone(), a.clone()]
        );
        // A disk names b (and so a); a snapshot names c.
        let sandbox = dir.path().join("sandboxes/s-1");
        std::fs::create_dir_all(sandbox.join("snapshots")).unwrap();
        let disk = file(&sandbox.join(disk_image::FILE));
        set_top(&disk, Some(&b)).unwrap();
        assert_eq!(top_of(&disk).unwrap().as_deref(), Some(b.as_str()));
        std::fs::write(
            sandbox.join("snapshots/s.json"),
            format!(r#"{{"created_at":1,"frozen_ms":0,"layered":true,"layer":"{c}"}}"#),
        )
        .unwrap();
        let partial = l.partial().unwrap();
        std::fs::write(&partial, b"half").unwrap();
        l.collect();
        assert_eq!(files(&l.dir).len(), 7, "{:?}", files(&l.dir));

        std::fs::remove_file(sandbox.join("snapshots/s.json")).unwrap();
        l.collect();
        assert!(!l.image(&c).exists() && !l.record_path(&c).exists());
        assert!(l.image(&a).exists() && l.image(&b).exists());

        // A sandbox being removed needs nothing.
        std::fs::rename(&sandbox, dir.path().join("sandboxes/.s-1.removing")).unwrap();
        l.collect();
        assert_eq!(files(&l.dir).len(), 1, "{:?}", files(&l.dir));
        l.remove_leftovers();
        assert!(files(&l.dir).is_empty(), "{:?}", files(&l.dir));
    }

    #[test]
    fn an_unreadable_reference_collects_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = layers(dir.path());
        let a = commit(&l, file(&dir.path().join("a")), None);
        let sandbox = dir.path().join("sandboxes/s-1");
        std::fs::create_dir_all(sandbox.join("snapshots")).unwrap();
        std::fs::write(sandbox.join("snapshots/s.json"), b"{torn").unwrap();
        l.collect();
        assert!(
            l.image(&a).exists(),
            "removed while a reference was unreadable"
        );
        assert!(set_top(&file(&sandbox.join("x")), Some("../../etc")).is_ok());
        assert!(top_of(&sandbox.join("x")).is_err(), "a bad name is refused");
    }

    #[test]
    fn a_disk_marked_fresh_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let disk = file(&dir.path().join("disk.img"));
        assert_eq!(top_of(&disk).unwrap(), None);
        assert!(!is_fresh(&disk));
        rustix::fs::setxattr(&disk, FRESH_XATTR, b"1", rustix::fs::XattrFlags::empty()).unwrap();
        assert!(is_fresh(&disk));
        clear_fresh(&disk).unwrap();
        clear_fresh(&disk).unwrap();
        assert!(!is_fresh(&disk));
        set_top(&disk, None).unwrap();
    }
}
