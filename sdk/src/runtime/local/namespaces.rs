//! A running sandbox's namespaces and root, held open as descriptors from
//! the moment it is set up. Executions join the sandbox through these, never
//! through `/proc/<pid>`, so a reused pid can never point an execution (or a
//! terminal) at some other process's namespaces.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// The namespaces an execution joins, in the order nsenter is given them.
pub const KINDS: [(&str, &str); 7] = [
    ("user", "--user"),
    ("mnt", "--mount"),
    ("pid", "--pid"),
    ("ipc", "--ipc"),
    ("uts", "--uts"),
    ("net", "--net"),
    ("cgroup", "--cgroup"),
];

#[derive(Debug)]
pub struct Namespaces {
    /// One descriptor per entry of `KINDS`.
    pub ns: Vec<OwnedFd>,
    /// The sandbox's root directory (`O_PATH`).
    pub root: OwnedFd,
}

impl Namespaces {
    /// Open the namespaces and root of the process `pid` (the sandbox's
    /// init, just started, so the pid is ours).
    pub fn open(pid: u32) -> io::Result<Self> {
        let open = |path: String, flags: OFlags| -> io::Result<OwnedFd> {
            rustix::fs::open(&path, flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{path}: {e}")))
        };
        let ns = KINDS
            .iter()
            .map(|(kind, _)| open(format!("/proc/{pid}/ns/{kind}"), OFlags::RDONLY))
            .collect::<io::Result<Vec<_>>>()?;
        let root = open(
            format!("/proc/{pid}/root"),
            OFlags::PATH | OFlags::DIRECTORY,
        )?;
        Ok(Self { ns, root })
    }

    /// The user namespace.
    pub fn user(&self) -> &OwnedFd {
        &self.ns[0]
    }

    /// The network namespace.
    pub fn net(&self) -> &OwnedFd {
        &self.ns[5]
    }

    /// Run `make` on a short-lived thread that has joined the sandbox's
    /// network namespace: a socket made there belongs to that namespace for
    /// good, whichever thread uses it afterwards. This is how the host side
    /// reaches the sandbox's loopback (SSH forwarding, the egress proxy's
    /// listener) without any process inside.
    pub fn in_network<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let net = rustix::io::dup(self.net())?;
        std::thread::Builder::new()
            .name("blink-netns".into())
            .spawn(move || {
                // SAFETY: setns on this thread with a namespace descriptor.
                if unsafe { libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                make()
            })?
            .join()
            .map_err(|_| io::Error::other("the network-namespace thread panicked"))?
    }

    /// Open the sandbox's terminal multiplexer. The path is resolved inside
    /// the sandbox's root with no symlinks at all, and the result must be
    /// on a devpts: the sandbox owns its /dev and could plant a link there.
    pub fn open_ptmx(&self) -> io::Result<std::fs::File> {
        let fd = rustix::fs::openat2(
            &self.root,
            "dev/pts/ptmx",
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )?;
        const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
        let fs = rustix::fs::fstatfs(&fd)?;
        if fs.f_type as i64 != DEVPTS_SUPER_MAGIC {
            return Err(io::Error::other(
                "the sandbox's /dev/pts/ptmx is not on a devpts",
            ));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Bind the sandbox's V-Hub endpoint: a unix socket at
    /// `/run/blink/vhub.sock`, on the sandbox's own tmpfs (bwrap.rs), 0666
    /// so every user in the sandbox may connect. The directory is resolved
    /// inside the sandbox's root with no symlinks and must be a tmpfs; the
    /// socket is made before anything of the session runs. `owner`: the
    /// sandbox's root id on the host, as which the socket is made (the
    /// tmpfs belongs to the sandbox's user namespace, where host root has
    /// no id), on a thread of its own.
    pub fn bind_vhub(&self, owner: Option<u32>) -> io::Result<std::os::unix::net::UnixListener> {
        let root = self.root.try_clone()?;
        std::thread::spawn(move || {
            if let Some(id) = owner {
                // SAFETY: raw syscalls changing this thread's fs ids only.
                unsafe {
                    libc::syscall(libc::SYS_setfsgid, id);
                    libc::syscall(libc::SYS_setfsuid, id);
                }
            }
            bind_vhub_in(&root)
        })
        .join()
        .map_err(|_| io::Error::other("the V-Hub binding thread panicked"))?
    }

    /// Forbid new user namespaces inside the sandbox for good: set
    /// `user.max_user_namespaces` to 0 in its user namespace. Its processes
    /// lack CAP_SYS_RESOURCE there, so they cannot raise it again. (The
    /// seccomp filter refuses namespace creation too; this holds even under
    /// the unconfined profile.)
    pub fn forbid_nested_user_namespaces(&self) -> io::Result<()> {
        let path = CString::new("/proc/sys/user/max_user_namespaces").map_err(io::Error::other)?;
        let user = self.user().as_raw_fd();
        // SAFETY: the child makes only async-signal-safe syscalls on memory
        // prepared before the fork, then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above; in the child.
            unsafe {
                let code = if libc::setns(user, libc::CLONE_NEWUSER) != 0 {
                    1
                } else {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        2
                    } else if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        3
                    } else {
                        0
                    }
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(0) => Ok(()),
            Some(1) => Err(io::Error::other(
                "joining the sandbox's user namespace failed",
            )),
            other => Err(io::Error::other(format!(
                "setting user.max_user_namespaces in the sandbox failed ({other:?})"
            ))),
        }
    }
}

fn bind_vhub_in(root: &OwnedFd) -> io::Result<std::os::unix::net::UnixListener> {
    let dir = rustix::fs::openat2(
        root,
        "run/blink",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let fs = rustix::fs::fstatfs(&dir)?;
    if fs.f_type as i64 != TMPFS_MAGIC {
        return Err(io::Error::other(
            "the sandbox's /run/blink is not its tmpfs",
        ));
    }
    let path = format!("/proc/self/fd/{}/vhub.sock", dir.as_raw_fd());
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    rustix::fs::chmodat(
        &dir,
        "vhub.sock",
        Mode::from_raw_mode(0o666),
        rustix::fs::AtFlags::empty(),
    )?;
    Ok(listener)
}
