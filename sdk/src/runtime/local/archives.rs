//! Export and import of layered disks (crate::archive does the format).
//! Both run on a thread of their own in a mount namespace of its own:
//! the disks they read or write are mounted there only, and go (with their
//! loop devices) when the thread ends, whatever happens.
//!
//! An export copies the disk first (frozen and synced if the sandbox runs,
//! as a snapshot is) and reads the copy: an ext4 is never mounted
//! read-write twice, and the sandbox runs on meanwhile. The layers under it
//! (and under the snapshots it carries) are read-only, and are mounted
//! read-only as they are (layers.rs); the disk's own changes and theirs are
//! written as one tree (crate::archive::merged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::disk_image::{self, Templates};
use super::layers::Layer;
use super::mounts::{Mounts, in_private_mounts};
use crate::archive::{self, ChangeLayer, ExportSource, Header, ImportLimits, ImportTargets};
use crate::error::{Error, Result};
use crate::fs::ConfinedRoot;

/// A snapshot to export, as the runtime found it.
pub enum SnapshotDisk {
    /// A chain of layers, topmost first (empty: the image as it is).
    Chain(Vec<Layer>),
    /// A copy of the disk, made before layers.
    Copy(PathBuf),
}

/// What to export: the disk of sandbox directory `dir` (its ids counting
/// from `id_root`) over the layers of its `chain`, and `snapshots`.
pub struct ExportDisk {
    pub dir: PathBuf,
    pub id_root: u32,
    pub chain: Vec<Layer>,
    pub snapshots: Vec<(String, SnapshotDisk)>,
}

/// Export a layered disk: its own changes over its chain, as one tree.
pub fn export(
    disk: ExportDisk,
    header: Header,
    image_archive: Option<PathBuf>,
    dest: PathBuf,
    copy_disk: impl FnOnce(&Path) -> Result<u64> + Send + 'static,
    progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<u64> {
    let ExportDisk {
        dir,
        id_root,
        chain,
        snapshots,
    } = disk;
    let work = dir.join(format!(".export-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        super::private_dir(&work)?;
        let disk = work.join("disk.img");
        copy_disk(&disk)?;
        // Copies made before layers are copied again (they are mounted
        // read-write); layers are read-only and mounted as they are.
        let mut snaps = Vec::new();
        for (name, stored) in snapshots {
            snaps.push(match stored {
                SnapshotDisk::Copy(image) => {
                    let copy = work.join(format!("snap-{name}.img"));
                    disk_image::copy_sparse(&image, &copy)
                        .map_err(|e| Error::io("copying a snapshot", e))?;
                    (name, SnapshotDisk::Copy(copy))
                }
                chain => (name, chain),
            });
        }
        let work2 = work.clone();
        in_private_mounts(move |mounts| {
            let mut mounted: HashMap<String, PathBuf> = HashMap::new();
            let mut stack_of = |mounts: &mut Mounts, chain: &[Layer]| -> Result<Vec<ChangeLayer>> {
                let mut stack = Vec::new();
                for layer in chain {
                    let upper = match mounted.get(&layer.id) {
                        Some(upper) => upper.clone(),
                        None => {
                            let at = work2.join(format!("layer-{}", layer.id));
                            let upper = mounts.mount_read_only(&layer.image, &at)?;
                            mounted.insert(layer.id.clone(), upper.clone());
                            upper
                        }
                    };
                    stack.push(ChangeLayer {
                        upper,
                        id_root: layer.id_root,
                    });
                }
                Ok(stack)
            };
            let mut changes = vec![ChangeLayer {
                upper: mounts.mount(&disk, &work2.join("mnt"))?,
                id_root,
            }];
            changes.extend(stack_of(mounts, &chain)?);
            let mut snapshots = Vec::new();
            for (i, (name, stored)) in snaps.iter().enumerate() {
                let stack = match stored {
                    SnapshotDisk::Copy(copy) => vec![ChangeLayer {
                        upper: mounts.mount(copy, &work2.join(format!("mnt-{i}")))?,
                        id_root,
                    }],
                    SnapshotDisk::Chain(chain) if chain.is_empty() => {
                        // Nothing over the image: an empty tree.
                        let empty = work2.join(format!("empty-{i}"));
                        std::fs::create_dir_all(&empty)
                            .map_err(|e| Error::io("making an empty tree", e))?;
                        std::os::unix::fs::chown(&empty, Some(id_root), Some(id_root))
                            .map_err(|e| Error::io("making an empty tree", e))?;
                        vec![ChangeLayer {
                            upper: empty,
                            id_root,
                        }]
                    }
                    SnapshotDisk::Chain(chain) => stack_of(mounts, chain)?,
                };
                snapshots.push((name.clone(), stack));
            }
            let source = ExportSource {
                changes,
                snapshots,
                image_archive,
            };
            let partial = dest.with_extension("partial");
            let file = std::fs::File::create(&partial)
                .map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
            let out = std::io::BufWriter::with_capacity(1 << 20, file);
            let written =
                archive::write_archive(out, &header, &source, &*progress).and_then(|out| {
                    let file = out
                        .into_inner()
                        .map_err(|e| Error::io("writing the archive", e.into_error()))?;
                    file.sync_all()
                        .map_err(|e| Error::io("writing the archive", e))?;
                    let size = file
                        .metadata()
                        .map_err(|e| Error::io("the archive", e))?
                        .len();
                    std::fs::rename(&partial, &dest)
                        .map_err(|e| Error::io("committing the archive", e))?;
                    Ok(size)
                });
            if written.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            written
        })
    })();
    let _ = crate::fs::remove_tree(&work);
    result
}

/// Read an archive into the staging sandbox directory `staging` (ids
/// recorded, nothing else yet): its disk image, and its snapshots. The
/// image archive inside, if any, is left at `staging/image.oci.tar`.
pub fn import(
    staging: PathBuf,
    archive_path: PathBuf,
    id_root: u32,
    templates: std::sync::Arc<Templates>,
    default_mib: u64,
    mut check: crate::runtime::HeaderCheck,
    progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<archive::Imported> {
    in_private_mounts(move |mounts| {
        let file = std::fs::File::open(&archive_path)
            .map_err(|e| Error::io(format!("opening {}", archive_path.display()), e))?;
        // The disks' size comes from the header, read first.
        let mib = std::cell::Cell::new(default_mib);
        let mut header = |h: &Header| -> Result<()> {
            check(h)?;
            let size = h.session.limits.disk_mib.unwrap_or(default_mib);
            if !(disk_image::MIN_MIB..=disk_image::MAX_MIB).contains(&size) {
                return Err(Error::InvalidArchive(format!(
                    "disk size {size} MiB is out of range"
                )));
            }
            mib.set(size);
            Ok(())
        };
        let mounts = std::cell::RefCell::new(mounts);
        let made = |image: &Path, at: &Path| -> Result<ConfinedRoot> {
            templates
                .make_disk(mib.get(), image)
                .map_err(|e| Error::io("making a disk image", e))?;
            let upper = mounts.borrow_mut().mount(image, at)?;
            ConfinedRoot::open(&upper)
        };
        let mut changes = || made(&staging.join(disk_image::FILE), &staging.join("import-mnt"));
        let snapshot_dir = staging.join("snapshots");
        let mut n = 0;
        let mut snapshot = |name: &str| -> Result<ConfinedRoot> {
            super::private_dir(&snapshot_dir)?;
            n += 1;
            made(
                &snapshot_dir.join(format!("{name}.img")),
                &staging.join(format!("import-snap-{n}")),
            )
        };
        let image_file = staging.join("image.oci.tar");
        let targets = ImportTargets {
            header: &mut header,
            changes: &mut changes,
            snapshot: &mut snapshot,
            image_file: &image_file,
            id_root,
        };
        let limits = ImportLimits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_image_bytes: 64 << 30,
        };
        let input = std::io::BufReader::with_capacity(1 << 20, file);
        archive::read_archive(input, targets, limits, &*progress)
    })
}
