//! Snapshots, restores and clones of layered disks, made of disk layers
//! (layers.rs) rather than copies wherever the disk allows it.
//!
//! A snapshot is a chain of layers, named in `<box>/snapshots/<name>.json`
//! (when it was made, how long the sandbox was frozen for it, the top of
//! its chain):
//! - of a stopped sandbox, its disk image becomes a layer as it is (a
//!   second name of the file, nothing copied) and the sandbox gets a fresh,
//!   empty disk image over it. A disk nothing has mounted since it was made
//!   empty adds no layer: the snapshot names the chain under it.
//! - of a running sandbox (whose overlay's upper cannot be swapped), its
//!   processes are frozen (cgroup freezer), its filesystem synced through
//!   its root (syncfs reaches the disk's ext4 and, through the loop device,
//!   the image file), its disk image copied into a new layer over its
//!   chain, and the processes thawed: the freeze lasts as long as the copy
//!   of what the session wrote since its last layer.
//!
//! A restore puts a fresh disk image over the snapshot's chain in place of
//! the disk (one rename; the sandbox is stopped). A clone gets a fresh disk
//! image over its source's snapshot, or over one made for it as above. No
//! file is copied back or moved into another id range: each layer is
//! id-mapped into the sandbox that mounts it.
//!
//! Snapshots made before layers (`<name>.img`, a copy of the disk; imports
//! still write them) become a layer the first time they are restored or
//! cloned.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::disk_image::{self, Templates, copy_sparse};
use super::layers::{self, Content, Held, Layers};
use crate::error::{Error, Result};
use crate::runtime::SnapshotInfo;

const DIR: &str = "snapshots";
/// Snapshots one sandbox may keep.
pub const MAX_PER_SANDBOX: usize = 64;
/// A fresh disk image being made, before it replaces `disk.img`.
pub const FRESH: &str = ".disk.img.new";

/// Where layers live and empty disks come from.
#[derive(Clone, Copy)]
pub struct Disks<'a> {
    pub layers: &'a Layers,
    pub templates: &'a Templates,
}

fn dir(sandbox: &Path) -> PathBuf {
    sandbox.join(DIR)
}

/// A snapshot made before layers: a copy of the disk image.
fn legacy_image(sandbox: &Path, name: &str) -> PathBuf {
    dir(sandbox).join(format!("{name}.img"))
}

fn meta(sandbox: &Path, name: &str) -> PathBuf {
    dir(sandbox).join(format!("{name}.json"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    created_at: u64,
    frozen_ms: u64,
    /// A chain of layers (else `<name>.img`, made before layers).
    #[serde(default)]
    layered: bool,
    /// The top of its chain; none: the image as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer: Option<String>,
}

fn read_meta(sandbox: &Path, name: &str) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(meta(sandbox, name)).ok()?).ok()
}

/// Write a snapshot's record whole or not at all.
fn write_meta(sandbox: &Path, name: &str, m: &Meta) -> Result<()> {
    let json = serde_json::to_vec(m).map_err(|e| Error::Runtime(e.to_string()))?;
    let tmp = dir(sandbox).join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, meta(sandbox, name)))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("recording the snapshot", e)
        })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Record when an imported snapshot was made (its image is in place).
pub fn record_imported(sandbox: &Path, name: &str, created_at: u64) -> Result<()> {
    write_meta(
        sandbox,
        name,
        &Meta {
            created_at,
            frozen_ms: 0,
            layered: false,
            layer: None,
        },
    )
}

/// Whether the snapshot exists.
pub fn exists(sandbox: &Path, name: &str) -> bool {
    match read_meta(sandbox, name) {
        Some(m) if m.layered => true,
        _ => legacy_image(sandbox, name).is_file(),
    }
}

/// The snapshots of a sandbox directory, oldest first. A snapshot's size
/// is what its own layer (or copy) takes on the host.
pub fn list(sandbox: &Path, layers: &Layers) -> Vec<SnapshotInfo> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir(sandbox)) else {
        return Vec::new();
    };
    let mut all: Vec<SnapshotInfo> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".json")?.to_owned();
            if name.starts_with('.') {
                return None;
            }
            let m = read_meta(sandbox, &name)?;
            let size_bytes = if m.layered {
                m.layer.as_deref().map_or(0, |id| layers.bytes_of(id))
            } else {
                std::fs::metadata(legacy_image(sandbox, &name))
                    .ok()?
                    .blocks()
                    * 512
            };
            Some(SnapshotInfo {
                size_bytes,
                name,
                created_at: m.created_at,
                frozen_ms: m.frozen_ms,
            })
        })
        .collect();
    all.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    all
}

/// The layers the snapshots of a sandbox directory name (the tops of their
/// chains). An unreadable record is an error: its layers must not be
/// taken for unneeded.
pub fn layers_named(sandbox: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir(sandbox)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing snapshots", e)),
    };
    let mut tops = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing snapshots", e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with('.') || !file.ends_with(".json") {
            continue;
        }
        let text = std::fs::read(entry.path()).map_err(|e| Error::io("reading a snapshot", e))?;
        let m: Meta = serde_json::from_slice(&text).map_err(|e| {
            Error::Runtime(format!("snapshot record {}: {e}", entry.path().display()))
        })?;
        tops.extend(m.layer.filter(|_| m.layered));
    }
    Ok(tops)
}

/// What keeps a running sandbox still while its disk is copied.
pub struct Freeze<'a> {
    pub cgroup: &'a super::limits::SandboxCgroup,
    /// The sandbox's root (O_PATH), to sync its filesystem through.
    pub root: &'a std::os::fd::OwnedFd,
}

/// Copy the disk of `sandbox` to `dest`, frozen and synced if `freeze` is
/// given; how long the processes were frozen, in ms. Blocking.
pub fn copy_disk(sandbox: &Path, dest: &Path, freeze: Option<Freeze<'_>>) -> Result<u64> {
    let disk = sandbox.join(disk_image::FILE);
    let Some(freeze) = freeze else {
        copy_sparse(&disk, dest).map_err(|e| Error::io("copying the disk", e))?;
        return Ok(0);
    };
    let started = Instant::now();
    let frozen = freeze
        .cgroup
        .freeze(true)
        .map_err(|e| Error::io("freezing the sandbox", e))?;
    if !frozen {
        return Err(Error::Unsupported(
            "a snapshot of a running session without a cgroup freezer on this host; stop the session first".into(),
        ));
    }
    let copied = (|| {
        // The root is O_PATH: syncfs needs a real descriptor of it.
        let root = rustix::fs::openat(
            freeze.root,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io("opening the sandbox's root", e.into()))?;
        // SAFETY: syncfs on a descriptor we own.
        if unsafe { libc::syncfs(root.as_raw_fd()) } != 0 {
            return Err(Error::io("syncing the disk", io::Error::last_os_error()));
        }
        copy_sparse(&disk, dest).map_err(|e| Error::io("copying the disk", e))
    })();
    let thawed = freeze.cgroup.freeze(false);
    let frozen_ms = started.elapsed().as_millis() as u64;
    copied?;
    thawed.map_err(|e| Error::io("thawing the sandbox", e))?;
    Ok(frozen_ms)
}

/// The disk of a stopped sandbox (whose ids count from `id_root`) becomes
/// the top layer of its chain, and the sandbox gets a fresh disk over it:
/// the new top, and the lock, held until the caller has recorded who else
/// needs it. Nothing is copied. A fresh disk stays as it is: the top is
/// the one under it. Blocking.
pub fn split<'a>(d: Disks<'a>, sandbox: &Path, id_root: u32) -> Result<(Option<String>, Held<'a>)> {
    let disk = sandbox.join(disk_image::FILE);
    let parent = layers::top_of(&disk)?;
    if layers::is_fresh(&disk) {
        return Ok((parent, d.layers.hold()));
    }
    let mib = layers::mib_of(&disk)?;
    let fresh = sandbox.join(FRESH);
    layers::fresh_disk(d.templates, mib, &fresh, None)?;
    let done = (|| {
        let prepared = d.layers.prepare(
            Content::Link(disk.clone()),
            parent.as_deref(),
            id_root,
            d.templates,
            mib,
        )?;
        let held = d.layers.hold();
        let id = d.layers.commit(&held, prepared)?;
        layers::set_top(&fresh, Some(&id))?;
        std::fs::rename(&fresh, &disk)
            .map_err(|e| Error::io("putting a fresh disk in place", e))?;
        Ok((Some(id), held))
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&fresh);
    }
    done
}

/// A copy of a running sandbox's disk (frozen for it if `freeze` is
/// given) as a new layer over its chain: the new layer, how long the
/// sandbox was frozen, and the lock, held until the caller has recorded
/// who needs the layer. Blocking.
pub fn copy_layer<'a>(
    d: Disks<'a>,
    sandbox: &Path,
    id_root: u32,
    freeze: Option<Freeze<'_>>,
) -> Result<(String, u64, Held<'a>)> {
    let disk = sandbox.join(disk_image::FILE);
    let parent = layers::top_of(&disk)?;
    let mib = layers::mib_of(&disk)?;
    let partial = d.layers.partial()?;
    let frozen_ms = match copy_disk(sandbox, &partial, freeze) {
        Ok(ms) => ms,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let prepared = d.layers.prepare(
        Content::Made(partial),
        parent.as_deref(),
        id_root,
        d.templates,
        mib,
    )?;
    let held = d.layers.hold();
    let id = d.layers.commit(&held, prepared)?;
    Ok((id, frozen_ms, held))
}

/// Make snapshot `name` of `sandbox` (its ids counting from `id_root`):
/// of the running sandbox if `running` (frozen if it carries a freeze),
/// else of the stopped one. Blocking.
pub fn take(
    d: Disks<'_>,
    sandbox: &Path,
    session: &str,
    name: &str,
    id_root: u32,
    running: Option<Option<Freeze<'_>>>,
) -> Result<SnapshotInfo> {
    if !sandbox.join(disk_image::FILE).is_file() {
        return Err(Error::Unsupported(
            "snapshots of this session: its disk is a directory (made by a server not running as root, or before disk images)".into(),
        ));
    }
    if exists(sandbox, name) {
        return Err(Error::SnapshotExists {
            session: session.into(),
            snapshot: name.into(),
        });
    }
    if list(sandbox, d.layers).len() >= MAX_PER_SANDBOX {
        return Err(Error::InvalidArgument(format!(
            "session {session:?} has {MAX_PER_SANDBOX} snapshots, the most it may keep; remove one first"
        )));
    }
    super::private_dir(&dir(sandbox))?;
    let (layer, frozen_ms, held) = match running {
        Some(freeze) => {
            let (id, ms, held) = copy_layer(d, sandbox, id_root, freeze)?;
            (Some(id), ms, held)
        }
        None => {
            let (top, held) = split(d, sandbox, id_root)?;
            (top, 0, held)
        }
    };
    let m = Meta {
        created_at: now(),
        frozen_ms,
        layered: true,
        layer,
    };
    write_meta(sandbox, name, &m)?;
    drop(held);
    list(sandbox, d.layers)
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Runtime(format!("snapshot {name} vanished")))
}

/// The top of snapshot `name`'s chain. A snapshot made before layers
/// becomes one here (its copy a layer of no parent). Blocking.
pub fn top_of_snapshot(
    d: Disks<'_>,
    held: &Held<'_>,
    sandbox: &Path,
    session: &str,
    name: &str,
    id_root: u32,
) -> Result<Option<String>> {
    let Some(m) = read_meta(sandbox, name) else {
        return Err(not_found(session, name));
    };
    if m.layered {
        return Ok(m.layer);
    }
    let image = legacy_image(sandbox, name);
    if !image.is_file() {
        return Err(not_found(session, name));
    }
    let mib = layers::mib_of(&image)?;
    let prepared = d.layers.prepare(
        Content::Link(image.clone()),
        None,
        id_root,
        d.templates,
        mib,
    )?;
    let id = d.layers.commit(held, prepared)?;
    write_meta(
        sandbox,
        name,
        &Meta {
            layered: true,
            layer: Some(id.clone()),
            ..m
        },
    )?;
    let _ = std::fs::remove_file(&image);
    Ok(Some(id))
}

/// Put `sandbox`'s disk back as snapshot `name` was: a fresh disk over the
/// snapshot's chain replaces it, in one rename. The sandbox is stopped.
/// Blocking.
pub fn restore(
    d: Disks<'_>,
    sandbox: &Path,
    session: &str,
    name: &str,
    id_root: u32,
) -> Result<()> {
    if !exists(sandbox, name) {
        return Err(not_found(session, name));
    }
    let disk = sandbox.join(disk_image::FILE);
    let fresh = sandbox.join(FRESH);
    layers::fresh_disk(d.templates, layers::mib_of(&disk)?, &fresh, None)?;
    let done = (|| {
        let held = d.layers.hold();
        let top = top_of_snapshot(d, &held, sandbox, session, name, id_root)?;
        layers::set_top(&fresh, top.as_deref())?;
        std::fs::rename(&fresh, &disk)
            .map_err(|e| Error::io(format!("restoring snapshot {name}"), e))
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&fresh);
    }
    done?;
    // The chain the disk had may be needed by nothing now.
    d.layers.collect();
    Ok(())
}

/// Make `dest` (a new sandbox's disk image) a clone of `source`'s disk
/// (ids from `source_root`): over its snapshot `snapshot`'s chain, or over
/// one made for it now (`running` as for [`take`]). Blocking.
pub fn clone_disk(
    d: Disks<'_>,
    source: &Path,
    source_id: &str,
    source_root: u32,
    snapshot: Option<&str>,
    running: Option<Option<Freeze<'_>>>,
    dest: &Path,
) -> Result<()> {
    let mib = layers::mib_of(&source.join(disk_image::FILE))?;
    layers::fresh_disk(d.templates, mib, dest, None)?;
    let (top, held) = match (snapshot, running) {
        (Some(name), _) => {
            let held = d.layers.hold();
            let top = top_of_snapshot(d, &held, source, source_id, name, source_root)?;
            (top, held)
        }
        (None, Some(freeze)) => {
            let (id, _, held) = copy_layer(d, source, source_root, freeze)?;
            (Some(id), held)
        }
        (None, None) => split(d, source, source_root)?,
    };
    layers::set_top(dest, top.as_deref())?;
    drop(held);
    Ok(())
}

/// Remove snapshot `name` (its layers go once nothing else needs them).
pub fn remove(sandbox: &Path, session: &str, name: &str) -> Result<()> {
    if !exists(sandbox, name) {
        return Err(not_found(session, name));
    }
    std::fs::remove_file(meta(sandbox, name))
        .map_err(|e| Error::io(format!("removing snapshot {name}"), e))?;
    let _ = std::fs::remove_file(legacy_image(sandbox, name));
    Ok(())
}

fn not_found(session: &str, name: &str) -> Error {
    Error::SnapshotNotFound {
        session: session.into(),
        snapshot: name.into(),
    }
}

/// What a snapshot is made of, for reading it.
pub enum Stored {
    /// The top of a chain of layers (none: the image as it is).
    Layered(Option<String>),
    /// A copy of the disk, made before layers.
    Copy(PathBuf),
}

/// Snapshot `name` of `sandbox`, if it exists.
pub fn stored(sandbox: &Path, name: &str) -> Option<Stored> {
    match read_meta(sandbox, name) {
        Some(m) if m.layered => Some(Stored::Layered(m.layer)),
        _ => {
            let image = legacy_image(sandbox, name);
            image.is_file().then_some(Stored::Copy(image))
        }
    }
}

/// Leftovers of a process killed mid-snapshot or mid-restore in a
/// sandbox directory: a fresh disk not yet in place, a record not yet
/// written, a copy already made a layer. At start only.
pub fn remove_leftovers(sandbox: &Path) {
    let _ = std::fs::remove_file(sandbox.join(FRESH));
    // Restores before layers copied the snapshot here first.
    let _ = std::fs::remove_file(sandbox.join(".disk.img.restoring"));
    let Ok(entries) = std::fs::read_dir(dir(sandbox)) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with('.') {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(name) = file.strip_suffix(".img")
            && read_meta(sandbox, name).is_some_and(|m| m.layered)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
