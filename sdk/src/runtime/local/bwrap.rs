//! The bubblewrap command line that boots a local sandbox.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Child;

use super::disk::Overlay;
use super::exec::GUEST_PATH;
use super::handover;
use super::ids::{self, IdRange};
use super::limits;
use super::spawner::Spawner;
use crate::error::{Error, Result};
use crate::runtime::Limits;

/// Descriptor numbers the sandbox's bubblewrap sees.
const ROOTFS_FD: i32 = 3;
const GUEST_FD: i32 = 4;
const INFO_FD: i32 = 5;
const READY_FD: i32 = 6;
const SECCOMP_FD: i32 = 7;
const USERNS_BLOCK_FD: i32 = 8;

/// A tmpfs of the sandbox's own where the host binds its V-Hub endpoint,
/// `vhub.sock` (docs/VHUB.md): nothing of the host is mounted for it.
pub const VHUB_DIR: &str = "/run/blink";

/// Parts of /proc that reach past the sandbox (sysctls, the magic SysRq
/// key, interrupts, buses): read-only for everyone in it, root included.
const READ_ONLY_PROC: [&str; 4] = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"];

/// What bubblewrap binds as the sandbox's `/`.
pub enum Root<'a> {
    /// A directory, bound as it is (without root).
    Bind(&'a Path),
    /// The disk's overlay, mounted by bubblewrap's process in a mount
    /// namespace of its own (disk.rs).
    Overlay(Box<Overlay>),
}

pub struct Launch<'a> {
    pub bwrap: &'a Path,
    pub root: Root<'a>,
    /// The guest helper's bytes: copied into the sandbox's own tmpfs, so
    /// no host path of it shows inside.
    pub guest: &'a [u8],
    pub hostname: &'a str,
    /// The sandbox's host id range (Blink runs as root); `None` maps
    /// sandbox root to the caller, the only choice without root.
    pub ids: Option<IdRange>,
    /// The seccomp filter the sandbox's init runs under.
    pub seccomp: Option<&'a [u8]>,
    pub cgroup_procs: Vec<CString>,
    pub rlimits: Option<Limits>,
}

impl Launch<'_> {
    /// Spawn bubblewrap. Returns the child and the read end of its info
    /// pipe, on which it reports the sandbox's pid once set up.
    pub async fn start(self, spawner: &Spawner) -> Result<Started> {
        // The root directory is handed over as an open descriptor, so
        // bubblewrap needs no search permission on the path to the data dir
        // (which is 0700).
        let (rootfs, overlay) = match self.root {
            Root::Bind(path) => (Some(high(open_path(path)?)?), None),
            Root::Overlay(overlay) => (None, Some(overlay)),
        };
        let guest = high(handover::bytes("blink-guest", self.guest)?)?;
        let seccomp = self
            .seccomp
            .map(|program| handover::bytes("blink-seccomp", program).and_then(high))
            .transpose()?;
        let (info_rx, info_tx) = pipe()?;
        let info_tx = high(info_tx)?;
        let (ready_rx, ready_tx) = pipe()?;
        let ready_tx = high(ready_tx)?;
        let block = self
            .ids
            .map(|_| -> Result<(OwnedFd, OwnedFd)> {
                let (rx, tx) = pipe()?;
                // bubblewrap must block on its end until the map is written.
                rustix::fs::fcntl_setfl(&rx, rustix::fs::OFlags::empty())
                    .map_err(|e| Error::io("fcntl", e.into()))?;
                Ok((high(rx)?, tx))
            })
            .transpose()?;

        let mut cmd = tokio::process::Command::new(self.bwrap);
        cmd.args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--as-pid-1",
            "--uid",
            "0",
            "--gid",
            "0",
            "--hostname",
            self.hostname,
        ]);
        if block.is_some() {
            cmd.args(["--unshare-user", "--userns-block-fd", "8"]);
        }
        cmd.args(["--bind-fd", "3", "/"]);
        cmd.args(["--proc", "/proc"]);
        for dir in READ_ONLY_PROC {
            cmd.args(["--ro-bind-try", dir, dir]);
        }
        cmd.args(["--dev", "/dev", "--tmpfs", "/tmp"]);
        cmd.args(["--perms", "0755", "--tmpfs", VHUB_DIR]);
        cmd.args(["--perms", "0755", "--ro-bind-data", "4", GUEST_PATH]);
        cmd.args(["--info-fd", "5"]);
        if seccomp.is_some() {
            cmd.args(["--seccomp", "7"]);
        }
        cmd.args([
            "--clearenv",
            "--chdir",
            "/",
            "--",
            GUEST_PATH,
            "init",
            "--ready-fd",
            "6",
        ]);
        // Nothing of the server's environment reaches the sandbox: bubblewrap
        // is pid 1's parent, and `--clearenv` only clears its child's.
        cmd.env_clear();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.kill_on_drop(true);

        let mut fds = vec![
            (guest.as_raw_fd(), GUEST_FD),
            (info_tx.as_raw_fd(), INFO_FD),
            (ready_tx.as_raw_fd(), READY_FD),
        ];
        if let Some(fd) = &rootfs {
            fds.push((fd.as_raw_fd(), ROOTFS_FD));
        }
        if let Some(fd) = &seccomp {
            fds.push((fd.as_raw_fd(), SECCOMP_FD));
        }
        if let Some((rx, _)) = &block {
            fds.push((rx.as_raw_fd(), USERNS_BLOCK_FD));
        }
        let procs = self.cgroup_procs;
        let rlimits = self.rlimits;
        let owner = self.ids.map(|r| r.root);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes raw syscalls on memory prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                limits::attach_self(&procs)?;
                if let Some(l) = &rlimits {
                    limits::apply_rlimits(l)?;
                }
                for &(from, to) in &fds {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // As host root still: the overlay, in this process's own
                // mount namespace (the numbers above are taken, so the
                // new descriptor is none of them).
                if let Some(overlay) = &overlay {
                    let fd = overlay.mount_in_child()?;
                    if libc::dup2(fd, ROOTFS_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                // Nothing else of ours reaches the sandbox.
                libc::syscall(
                    libc::SYS_close_range,
                    USERNS_BLOCK_FD + 1,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                // bubblewrap runs as the sandbox's root id, so the user
                // namespace it makes is owned by that id, not by host root.
                if let Some(id) = owner
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                // bubblewrap's --die-with-parent comes too late for a
                // parent killed before bubblewrap runs (and a change of
                // uid clears the setting): set it here, after the uid
                // change, and leave if the parent is already gone, or a
                // sandbox would wait forever for an id map nobody writes.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawner
            .spawn(cmd)
            .await
            .map_err(|e| Error::io("starting bubblewrap", e))?;
        drop((rootfs, guest, seccomp, info_tx, ready_tx));
        let receiver = |fd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| Error::io("reading bubblewrap info", e))
        };
        Ok(Started {
            child,
            info: receiver(info_rx)?,
            ready: receiver(ready_rx)?,
            id_map: self.ids.zip(block.map(|(_, tx)| tx)),
        })
    }
}

/// A bubblewrap process on its way up.
pub struct Started {
    pub child: Child,
    /// bubblewrap's info pipe: the sandbox's pid.
    pub info: tokio::net::unix::pipe::Receiver,
    /// The init's ready pipe: one line once the sandbox is set up.
    pub ready: tokio::net::unix::pipe::Receiver,
    /// The id range to map, and the pipe that lets bubblewrap go on once
    /// it is mapped.
    id_map: Option<(IdRange, OwnedFd)>,
}

impl Started {
    /// Wait until the sandbox is set up; returns its init's host pid.
    pub async fn wait_ready(&mut self) -> Result<u32> {
        let pid = read_child_pid(&mut self.info).await?;
        if let Some((range, go)) = self.id_map.take() {
            // Host root writes the full range (bubblewrap alone could map
            // a single id), then lets bubblewrap continue.
            let map = format!("0 {} {}\n", range.root, ids::RANGE);
            for file in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{pid}/{file}"), &map)
                    .map_err(|e| Error::io(format!("writing the sandbox's {file}"), e))?;
            }
            rustix::io::write(&go, b"1")
                .map_err(|e| Error::io("releasing bubblewrap", e.into()))?;
        }
        let mut buf = [0u8; 16];
        let n = self
            .ready
            .read(&mut buf)
            .await
            .map_err(|e| Error::io("waiting for the sandbox", e))?;
        if n == 0 {
            return Err(Error::Runtime(
                "the sandbox's init ended before it was ready".into(),
            ));
        }
        Ok(pid)
    }
}

/// Read `{"child-pid": N}` from bubblewrap's info pipe.
pub async fn read_child_pid(info: &mut tokio::net::unix::pipe::Receiver) -> Result<u32> {
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = info
            .read(&mut buf)
            .await
            .map_err(|e| Error::io("reading bubblewrap info", e))?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text)
            && let Some(pid) = v.get("child-pid").and_then(serde_json::Value::as_u64)
        {
            return u32::try_from(pid).map_err(|_| Error::Runtime("bad child pid".into()));
        }
    }
    Err(Error::Runtime(format!(
        "bubblewrap exited before reporting the sandbox pid ({})",
        String::from_utf8_lossy(&text)
    )))
}

/// Move a descriptor above the numbers the child's dup2 targets, so the
/// dup2 sequence in the child can never clobber a source.
fn high(fd: OwnedFd) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(&fd, 10).map_err(|e| Error::io("dup", e.into()))
}

fn open_path(path: &Path) -> Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    Ok(OwnedFd::from(file))
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )
    .map_err(|e| Error::io("creating a pipe", e.into()))?;
    // The write end goes to bubblewrap, which wants it blocking.
    rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::empty())
        .map_err(|e| Error::io("fcntl", e.into()))?;
    Ok((r, w))
}
