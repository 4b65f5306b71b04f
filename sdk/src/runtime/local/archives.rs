//! Export and import of layered disks (crate::archive does the format).
//! Both run on a thread of their own in a mount namespace of its own:
//! the disks they read or write are mounted there only, and go (with their
//! loop devices) when the thread ends, whatever happens.
//!
//! An export copies the disk first (frozen and synced if the sandbox runs,
//! as a snapshot is) and the snapshots it carries, and reads the copies:
//! an ext4 is never mounted twice, and the sandbox runs on meanwhile.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::disk_image::{self, Templates};
use super::loopdev::{self, LoopDevice};
use super::snapshots;
use crate::archive::{self, ExportSource, Header, ImportLimits, ImportTargets};
use crate::error::{Error, Result};
use crate::fs::ConfinedRoot;

/// Run `work` on a new thread inside a private mount namespace.
pub fn in_private_mounts<T: Send + 'static>(
    work: impl FnOnce(&mut Mounts) -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::Builder::new()
        .name("blink-disk-io".into())
        .spawn(move || {
            // SAFETY: unshare and mount on this thread's own state.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_SLAVE,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(Error::io(
                        "a private mount namespace",
                        io::Error::last_os_error(),
                    ));
                }
            }
            let mut mounts = Mounts::default();
            let result = work(&mut mounts);
            mounts.release();
            result
        })
        .map_err(|e| Error::io("starting the disk thread", e))?
        .join()
        .map_err(|_| Error::Runtime("the disk thread panicked".into()))?
}

/// Disk images mounted on the current (private) thread.
#[derive(Default)]
pub struct Mounts {
    mounted: Vec<(CString, LoopDevice)>,
}

impl Mounts {
    /// Mount the ext4 of `image` at `at` (created); the upper layer's path.
    pub fn mount(&mut self, image: &Path, at: &Path) -> Result<PathBuf> {
        let io = |what: &str, e: io::Error| Error::io(what.to_owned(), e);
        std::fs::create_dir_all(at).map_err(|e| io("making a mount point", e))?;
        let device = loopdev::attach(image).map_err(|e| io("attaching a disk", e))?;
        let dev = CString::new(device.path().as_os_str().as_bytes())
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let target =
            CString::new(at.as_os_str().as_bytes()).map_err(|e| Error::Runtime(e.to_string()))?;
        // SAFETY: mount with valid NUL-terminated strings.
        let mounted = unsafe {
            libc::mount(
                dev.as_ptr(),
                target.as_ptr(),
                c"ext4".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(io("mounting a disk", io::Error::last_os_error()));
        }
        self.mounted.push((target, device));
        Ok(at.join("upper"))
    }

    fn release(&mut self) {
        for (target, device) in self.mounted.drain(..).rev() {
            // SAFETY: unmounting what we mounted.
            unsafe {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
            drop(device);
        }
    }
}

/// Export the layered disk of sandbox directory `dir`.
pub fn export(
    dir: PathBuf,
    id_root: u32,
    header: Header,
    image_archive: Option<PathBuf>,
    dest: PathBuf,
    copy_disk: impl FnOnce(&Path) -> Result<u64> + Send + 'static,
    progress: std::sync::Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<u64> {
    let work = dir.join(format!(".export-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        super::private_dir(&work)?;
        let disk = work.join("disk.img");
        copy_disk(&disk)?;
        let mut copies = Vec::new();
        for s in &header.snapshots {
            let image =
                snapshots::image_of(&dir, &s.name).ok_or_else(|| Error::SnapshotNotFound {
                    session: header.session.name.clone(),
                    snapshot: s.name.clone(),
                })?;
            let copy = work.join(format!("snap-{}.img", s.name));
            disk_image::copy_sparse(&image, &copy)
                .map_err(|e| Error::io("copying a snapshot", e))?;
            copies.push((s.name.clone(), copy));
        }
        let work2 = work.clone();
        in_private_mounts(move |mounts| {
            let changes = mounts.mount(&disk, &work2.join("mnt"))?;
            let mut snaps = Vec::new();
            for (i, (name, copy)) in copies.iter().enumerate() {
                snaps.push((
                    name.clone(),
                    mounts.mount(copy, &work2.join(format!("mnt-{i}")))?,
                ));
            }
            let source = ExportSource {
                changes,
                snapshots: snaps,
                id_root,
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
