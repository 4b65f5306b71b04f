//! The bubblewrap command line that boots a local sandbox.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Child;

use super::exec::GUEST_PATH;
use super::limits;
use super::spawner::Spawner;
use crate::error::{Error, Result};
use crate::runtime::Limits;

/// Descriptor numbers the sandbox's bubblewrap sees.
const ROOTFS_FD: i32 = 3;
const GUEST_FD: i32 = 4;
const INFO_FD: i32 = 5;
const READY_FD: i32 = 6;

pub struct Launch<'a> {
    pub bwrap: &'a Path,
    pub rootfs: &'a Path,
    pub guest: &'a Path,
    pub hostname: &'a str,
    /// Host uid/gid to run bubblewrap as (sandbox root maps to it).
    pub owner: Option<(u32, u32)>,
    pub cgroup_procs: Vec<CString>,
    pub rlimits: Option<Limits>,
}

impl Launch<'_> {
    /// Spawn bubblewrap. Returns the child and the read end of its info
    /// pipe, on which it reports the sandbox's pid once set up.
    pub async fn start(self, spawner: &Spawner) -> Result<Started> {
        // Directories are handed over as open descriptors, so bubblewrap
        // needs no search permission on the path to the data dir.
        let rootfs = high(open_path(self.rootfs)?)?;
        let guest = high(open_path(self.guest)?)?;
        let (info_rx, info_tx) = pipe()?;
        let info_tx = high(info_tx)?;
        let (ready_rx, ready_tx) = pipe()?;
        let ready_tx = high(ready_tx)?;

        let mut cmd = tokio::process::Command::new(self.bwrap);
        cmd.args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--uid",
            "0",
            "--gid",
            "0",
            "--hostname",
            self.hostname,
        ]);
        cmd.args(["--bind-fd", "3", "/", "--ro-bind-fd", "4", GUEST_PATH]);
        cmd.args([
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--info-fd",
            "5",
        ]);
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
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.kill_on_drop(true);

        let fds = [
            (rootfs.as_raw_fd(), ROOTFS_FD),
            (guest.as_raw_fd(), GUEST_FD),
            (info_tx.as_raw_fd(), INFO_FD),
            (ready_tx.as_raw_fd(), READY_FD),
        ];
        let procs = self.cgroup_procs;
        let rlimits = self.rlimits;
        let owner = self.owner;
        // SAFETY: the closure only makes raw syscalls on memory prepared
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                limits::attach_self(&procs)?;
                if let Some(l) = &rlimits {
                    limits::apply_rlimits(l)?;
                }
                for (from, to) in fds {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Nothing else of ours reaches the sandbox.
                libc::syscall(
                    libc::SYS_close_range,
                    READY_FD + 1,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if let Some((uid, gid)) = owner
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawner
            .spawn(cmd)
            .await
            .map_err(|e| Error::io(format!("starting {}", self.bwrap.display()), e))?;
        drop((rootfs, guest, info_tx, ready_tx));
        let receiver = |fd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| Error::io("reading bubblewrap info", e))
        };
        Ok(Started {
            child,
            info: receiver(info_rx)?,
            ready: receiver(ready_rx)?,
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
}

impl Started {
    /// Wait until the sandbox is set up; returns its init's host pid.
    pub async fn wait_ready(&mut self) -> Result<u32> {
        let pid = read_child_pid(&mut self.info).await?;
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
