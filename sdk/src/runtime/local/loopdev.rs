//! Loop devices for session disks: a disk image file attached as a block
//! device so its filesystem can be mounted. Attached with autoclear, the
//! device detaches itself once its mount is gone and our descriptor is
//! closed, so no device outlives its sandbox, a killed server included.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device; dropping it closes our descriptor (the device
/// stays while a mount uses it).
#[derive(Debug)]
pub struct LoopDevice {
    _device: File,
    path: PathBuf,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Wait until no loop device is backed by `image` any more, up to
/// `limit`; false if one still is. A sandbox's filesystem is unmounted by
/// the kernel once the last process and descriptor of its mount namespace
/// are gone, which can be a moment after the sandbox "ended": mounting the
/// image again before that would run two ext4 instances on one file.
pub async fn wait_released(image: &Path, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if !in_use(image) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Whether a loop device is backed by `image` (by its path, as the kernel
/// records it).
pub fn in_use(image: &Path) -> bool {
    let Ok(image) = std::fs::canonicalize(image) else {
        return false;
    };
    let image = image.as_path();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("loop")
            && std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end()) == image)
    })
}

/// Attach `image` to a free loop device.
pub fn attach(image: &Path) -> io::Result<LoopDevice> {
    attach_with(image, false)
}

/// Attach `image` to a free loop device that refuses writes (a disk
/// layer: its file is opened read-only too, so nothing mounted from it
/// can change it).
pub fn attach_read_only(image: &Path) -> io::Result<LoopDevice> {
    attach_with(image, true)
}

fn attach_with(image: &Path, read_only: bool) -> io::Result<LoopDevice> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")?;
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(image)?;
    let mut last = io::Error::other("no free loop device");
    // Another process may take the free device first: ask again.
    for _ in 0..32 {
        // SAFETY: an ioctl without argument on the control device.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(d) => d,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: if read_only {
                    LO_FLAGS_AUTOCLEAR | LO_FLAGS_READ_ONLY
                } else {
                    LO_FLAGS_AUTOCLEAR
                },
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE with a valid, fully initialised config.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } == 0 {
            return Ok(LoopDevice {
                _device: device,
                path,
            });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
        last = e;
    }
    Err(last)
}
