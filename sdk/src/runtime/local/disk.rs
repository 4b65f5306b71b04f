//! The sandbox's root as its processes see it. When Blink runs as root it
//! is an overlay mounted at `<box>/merged`, and that overlay is what
//! bubblewrap binds as `/`. Its layers:
//! - layered disks (made since disks became copy-on-write): the image's
//!   shared tree (trees.rs), id-mapped to the sandbox's id range and
//!   read-only, at `<box>/lower`; over it the disk's chain of read-only
//!   layers (layers.rs; none for most disks), each on a read-only loop
//!   device, mounted read-only and id-mapped from the range its files were
//!   written with, at `<box>/layers/<n>` (0 the topmost); over them the
//!   session's own filesystem (`<box>/disk.img` on a loop device,
//!   disk_image.rs) at `<box>/disk`, whose `upper` holds the session's
//!   changes. Nothing of the image or the layers is copied; the disk's
//!   size is the session's quota.
//! - legacy disks: `<box>/rootfs` (a full copy of the image) over an empty
//!   lower layer.
//!
//! The overlay is mounted with paths relative to the sandbox's directory,
//! so `/proc/self/mountinfo` inside shows `lowerdir=lower,upperdir=...` and
//! no host path (a bind mount of a directory would show its full path on
//! the host's filesystem). Without root, the disk is bound directly.
//!
//! The overlay is mounted by bubblewrap's own process, between fork and
//! exec, in a mount namespace of its own (a slave of the host's, so nothing
//! mounted there reaches the host). It exists only while the sandbox's
//! processes hold that namespace: when the sandbox ends, however it ends
//! (blink-server killed with SIGKILL included), the kernel takes the mount
//! away. Nothing is ever left mounted on the host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const LOWER: &str = "lower";
const WORK: &str = "work";
const MERGED: &str = "merged";
/// Mount point of a layered disk's own filesystem (disk_image.rs).
const DISK: &str = "disk";
const LEGACY_OPTIONS: &str = "lowerdir=lower,upperdir=rootfs,workdir=work";
/// Mount points of a disk's layers: `layers/0` (the topmost), `layers/1`...
const LAYERS: &str = "layers";

/// A read-only layer under a session's own disk (layers.rs), as the
/// sandbox mounts it.
#[derive(Debug)]
pub struct LowerLayer {
    /// Its image, attached to a read-only loop device.
    pub device: PathBuf,
    /// The user namespace its ids are seen through, unless they are the
    /// sandbox's own already.
    pub userns: Option<OwnedFd>,
}

/// A layer's mount, prepared before the fork.
#[derive(Debug)]
struct LayerMount {
    device: CString,
    userns: Option<OwnedFd>,
    at: CString,
}

/// What the overlay is made of.
#[derive(Debug)]
enum Layers {
    /// Disks made before layered disks: `rootfs` (a full copy of the
    /// image) is the upper layer, over an empty lower.
    Legacy,
    /// The image's shared tree, id-mapped to the sandbox's range and
    /// read-only, under the disk's layers, under the session's own
    /// filesystem (a loop device).
    Layered(Box<Layered>),
}

/// The parts of a layered disk's overlay.
#[derive(Debug)]
struct Layered {
    device: CString,
    image: CString,
    /// The user namespace whose map the image tree is seen through.
    userns: OwnedFd,
    /// The sandbox's root id: owner of the upper layer's root.
    owner: u32,
    ext4: CString,
    source_key: CString,
    discard: CString,
    disk: CString,
    upper: CString,
    lower: CString,
    empty: CString,
    layers: Vec<LayerMount>,
    ro: CString,
    noload: CString,
    /// The topmost layer's upper, whose root's mode a fresh disk's
    /// upper takes on its first mount (the root directory is the
    /// upper's).
    inherit_root: Option<CString>,
}

/// Everything the forked child needs to mount a sandbox's overlay, made
/// before the fork (the child may not allocate).
#[derive(Debug)]
pub struct Overlay {
    dir: CString,
    source: CString,
    target: CString,
    options: CString,
    root: CString,
    layers: Layers,
}

fn make_dirs(dir: &Path, names: &[(&str, u32)]) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for (name, mode) in names {
        match std::fs::DirBuilder::new()
            .mode(*mode)
            .create(dir.join(name))
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The overlay of a legacy sandbox directory `dir` (which holds `rootfs`).
pub fn prepare_legacy(dir: &Path) -> io::Result<Overlay> {
    make_dirs(dir, &[(LOWER, 0o755), (WORK, 0o700), (MERGED, 0o755)])?;
    overlay(dir, LEGACY_OPTIONS, Layers::Legacy)
}

/// Lowest descriptor number a namespace kept for the child may have: the
/// child that mounts the overlay first moves the sandbox's own descriptors
/// to fixed low numbers (bwrap.rs, 3 to 8), which would silently replace a
/// namespace descriptor that happened to have one of those numbers (seen
/// as `mount_setattr` EINVAL under parallel starts).
const KEPT_FD_FLOOR: i32 = 64;

/// `fd` moved to a number at or above [`KEPT_FD_FLOOR`].
fn above_fixed_fds(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= KEPT_FD_FLOOR {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, KEPT_FD_FLOOR)?)
}

/// The overlay of a layered sandbox directory `dir`: `image` (the shared
/// tree) under `layers` (topmost first) under the filesystem on `device`
/// (its disk image, attached). `fresh`: the disk was made empty over its
/// layers and was never mounted.
pub fn prepare_layered(
    dir: &Path,
    device: &Path,
    image: &Path,
    userns: OwnedFd,
    owner: u32,
    layers: Vec<LowerLayer>,
    fresh: bool,
) -> io::Result<Overlay> {
    make_dirs(dir, &[(LOWER, 0o755), (DISK, 0o700), (MERGED, 0o755)])?;
    if !layers.is_empty() {
        make_dirs(dir, &[(LAYERS, 0o700)])?;
    }
    let c = |s: &str| CString::new(s);
    let mut lowers = String::new();
    let mut mounts = Vec::new();
    for (i, layer) in layers.into_iter().enumerate() {
        let at = format!("{LAYERS}/{i}");
        make_dirs(dir, &[(at.as_str(), 0o755)])?;
        lowers.push_str(&format!("{at}/upper:"));
        mounts.push(LayerMount {
            device: CString::new(layer.device.as_os_str().as_bytes())?,
            userns: layer.userns.map(above_fixed_fds).transpose()?,
            at: CString::new(at)?,
        });
    }
    let options = format!("lowerdir={lowers}{LOWER},upperdir=disk/upper,workdir=disk/work");
    let inherit_root = (fresh && !mounts.is_empty())
        .then(|| c(&format!("{LAYERS}/0/upper")))
        .transpose()?;
    let layers = Layers::Layered(Box::new(Layered {
        device: CString::new(device.as_os_str().as_bytes())?,
        image: CString::new(image.as_os_str().as_bytes())?,
        userns: above_fixed_fds(userns)?,
        owner,
        ext4: c("ext4")?,
        source_key: c("source")?,
        discard: c("discard")?,
        disk: c(DISK)?,
        upper: c("disk/upper")?,
        lower: c(LOWER)?,
        empty: c("")?,
        layers: mounts,
        ro: c("ro")?,
        noload: c("noload")?,
        inherit_root,
    }));
    overlay(dir, &options, layers)
}

fn overlay(dir: &Path, options: &str, layers: Layers) -> io::Result<Overlay> {
    Ok(Overlay {
        dir: CString::new(dir.as_os_str().as_bytes())?,
        source: CString::new("overlay")?,
        target: CString::new(MERGED)?,
        options: CString::new(options)?,
        root: CString::new("/")?,
        layers,
    })
}

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

impl Overlay {
    /// In a freshly forked child, as host root: enter a new mount
    /// namespace that receives the host's mounts but sends none back,
    /// mount the layers and the overlay there and return a descriptor
    /// (O_PATH) of it. The relative paths need the sandbox directory as
    /// working directory; the child's own, so this is safe.
    ///
    /// # Safety
    /// Only in a freshly forked child: raw syscalls on memory prepared
    /// before the fork.
    pub unsafe fn mount_in_child(&self) -> io::Result<i32> {
        let fail = || Err(io::Error::last_os_error());
        // SAFETY: as documented for the function.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    self.root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                || libc::chdir(self.dir.as_ptr()) != 0
            {
                return fail();
            }
            if let Layers::Layered(_) = &self.layers
                && self.mount_layers().is_err()
            {
                return fail();
            }
            if libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                self.source.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.options.as_ptr().cast(),
            ) != 0
            {
                return fail();
            }
            let fd = libc::open(
                self.target.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if fd < 0 || libc::chdir(self.root.as_ptr()) != 0 {
                return fail();
            }
            Ok(fd)
        }
    }

    /// The session's filesystem at `disk` (the upper layer's root owned by
    /// the sandbox's root id) and the image tree, id-mapped and read-only,
    /// at `lower`.
    ///
    /// # Safety
    /// As [`Overlay::mount_in_child`].
    unsafe fn mount_layers(&self) -> io::Result<()> {
        let Layers::Layered(layered) = &self.layers else {
            return Ok(());
        };
        let Layered {
            device,
            image,
            userns,
            owner,
            ext4,
            source_key,
            discard,
            disk,
            upper,
            lower,
            empty,
            layers,
            ro,
            noload,
            inherit_root,
        } = &**layered;
        let check = |ret: libc::c_long| {
            if ret < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(ret as i32)
            }
        };
        // SAFETY: as documented; every pointer is to memory made before
        // the fork, every descriptor is our own.
        unsafe {
            let fs = check(libc::syscall(libc::SYS_fsopen, ext4.as_ptr(), 1))?;
            check(libc::syscall(
                libc::SYS_fsconfig,
                fs,
                FSCONFIG_SET_STRING,
                source_key.as_ptr(),
                device.as_ptr(),
                0,
            ))?;
            check(libc::syscall(
                libc::SYS_fsconfig,
                fs,
                FSCONFIG_SET_FLAG,
                discard.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            ))?;
            check(libc::syscall(
                libc::SYS_fsconfig,
                fs,
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            ))?;
            let m = check(libc::syscall(
                libc::SYS_fsmount,
                fs,
                1,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            ))?;
            libc::close(fs);
            check(libc::syscall(
                libc::SYS_move_mount,
                m,
                empty.as_ptr(),
                libc::AT_FDCWD,
                disk.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ))?;
            libc::close(m);
            check(libc::chown(upper.as_ptr(), *owner, *owner).into())?;

            for layer in layers {
                let fs = check(libc::syscall(libc::SYS_fsopen, ext4.as_ptr(), 1))?;
                check(libc::syscall(
                    libc::SYS_fsconfig,
                    fs,
                    FSCONFIG_SET_STRING,
                    source_key.as_ptr(),
                    layer.device.as_ptr(),
                    0,
                ))?;
                for flag in [ro, noload] {
                    check(libc::syscall(
                        libc::SYS_fsconfig,
                        fs,
                        FSCONFIG_SET_FLAG,
                        flag.as_ptr(),
                        std::ptr::null::<libc::c_char>(),
                        0,
                    ))?;
                }
                check(libc::syscall(
                    libc::SYS_fsconfig,
                    fs,
                    FSCONFIG_CMD_CREATE,
                    std::ptr::null::<libc::c_char>(),
                    std::ptr::null::<libc::c_char>(),
                    0,
                ))?;
                let m = check(libc::syscall(
                    libc::SYS_fsmount,
                    fs,
                    1,
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                ))?;
                libc::close(fs);
                if let Some(userns) = &layer.userns {
                    let attr = MountAttr {
                        attr_set: MOUNT_ATTR_IDMAP,
                        attr_clr: 0,
                        propagation: 0,
                        userns_fd: userns.as_raw_fd() as u64,
                    };
                    check(libc::syscall(
                        libc::SYS_mount_setattr,
                        m,
                        empty.as_ptr(),
                        libc::AT_EMPTY_PATH,
                        &attr as *const MountAttr,
                        std::mem::size_of::<MountAttr>(),
                    ))?;
                }
                check(libc::syscall(
                    libc::SYS_move_mount,
                    m,
                    empty.as_ptr(),
                    libc::AT_FDCWD,
                    layer.at.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ))?;
                libc::close(m);
            }
            if let Some(top) = inherit_root {
                // SAFETY: a zeroed stat is a valid buffer for stat(2).
                let mut st: libc::stat = std::mem::zeroed();
                check(libc::stat(top.as_ptr(), &mut st).into())?;
                check(libc::chmod(upper.as_ptr(), st.st_mode & 0o7777).into())?;
            }

            let tree = check(libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                image.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            ))?;
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_IDMAP
                    | MOUNT_ATTR_RDONLY
                    | MOUNT_ATTR_NOSUID
                    | MOUNT_ATTR_NODEV,
                attr_clr: 0,
                propagation: 0,
                userns_fd: userns.as_raw_fd() as u64,
            };
            check(libc::syscall(
                libc::SYS_mount_setattr,
                tree,
                empty.as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ))?;
            check(libc::syscall(
                libc::SYS_move_mount,
                tree,
                empty.as_ptr(),
                libc::AT_FDCWD,
                lower.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ))?;
            libc::close(tree);
        }
        Ok(())
    }
}

/// Detach an overlay of `dir` from the host's mount table: versions before
/// the private mount namespace mounted it there, and one killed left it.
/// Every one, should one be stacked on another.
pub fn unmount_legacy(dir: &Path) {
    let Ok(target) = CString::new(dir.join(MERGED).as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..16 {
        // SAFETY: umount2 on a path we own; EINVAL (nothing mounted) and
        // ENOENT end the loop.
        let detached =
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        if detached != 0 {
            break;
        }
    }
}
