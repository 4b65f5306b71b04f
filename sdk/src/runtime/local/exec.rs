//! Executions in a running local sandbox: `nsenter` joins the sandbox's
//! namespaces and root (held open as descriptors, see namespaces.rs), then
//! `blink-guest exec` starts a new session, takes the terminal (PTY mode),
//! drops capabilities, installs the seccomp filter, changes directory and
//! execs the program.
//!
//! nsenter runs with host privileges until it has entered, so it gets an
//! empty environment and nothing of the caller's: the execution's
//! environment travels in a descriptor that only `blink-guest`, already
//! inside the sandbox, reads.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::limits;
use super::namespaces::{self, Namespaces};
use super::pty::{self, PtyMaster, PtyReader, PtyWriter};
use crate::error::{Error, Result};
use crate::runtime::Limits;
use crate::runtime::exec::{ExecControl, ExecSpec, Execution, PtySize};
use crate::types::ExitStatus;

/// Where the guest helper is mounted inside every local sandbox.
pub const GUEST_PATH: &str = "/.blink/guest";

/// What an execution needs to know about its sandbox.
pub struct Target<'a> {
    pub nsenter: &'a Path,
    pub namespaces: Arc<Namespaces>,
    /// The sandbox's seccomp filter (an in-memory file, read with pread).
    pub seccomp: Option<Arc<OwnedFd>>,
    pub cgroup_procs: Vec<CString>,
    pub rlimits: Option<Limits>,
}

/// Descriptors an execution's nsenter starts with.
const SECCOMP_FD: i32 = 3;
const ENV_FD: i32 = 4;
/// The namespaces (in `namespaces::KINDS` order), then the root.
const FIRST_NS_FD: i32 = 5;

pub async fn start(target: Target<'_>, spec: ExecSpec) -> Result<Execution> {
    if spec.argv.is_empty() {
        return Err(Error::InvalidArgument("empty command".into()));
    }
    let env = env_fd(&spec.env)?;
    let mut cmd = tokio::process::Command::new(target.nsenter);
    let mut fds: Vec<(i32, i32)> = Vec::new();
    let mut next = FIRST_NS_FD;
    for ((_, flag), fd) in namespaces::KINDS.iter().zip(&target.namespaces.ns) {
        cmd.arg(format!("{flag}=/proc/self/fd/{next}"));
        fds.push((fd.as_raw_fd(), next));
        next += 1;
    }
    let root = format!("/proc/self/fd/{next}");
    fds.push((target.namespaces.root.as_raw_fd(), next));
    cmd.arg(format!("--root={root}"))
        .arg(format!("--wd={root}"));
    cmd.args(["--setuid", "0", "--setgid", "0"]);
    cmd.args(["--", GUEST_PATH, "exec"]);
    if spec.tty.is_some() {
        cmd.arg("--tty");
    }
    cmd.args(["--cwd", spec.cwd.as_deref().unwrap_or("/")]);
    fds.push((env.as_raw_fd(), ENV_FD));
    cmd.args(["--env-fd", &ENV_FD.to_string()]);
    if let Some(filter) = &target.seccomp {
        fds.push((filter.as_raw_fd(), SECCOMP_FD));
        cmd.args(["--seccomp-fd", &SECCOMP_FD.to_string()]);
    }
    cmd.arg("--").args(&spec.argv);
    // nsenter is host root until it has entered: a fixed, empty environment.
    cmd.env_clear();
    cmd.kill_on_drop(false);

    let procs = target.cgroup_procs;
    let rlimits = target.rlimits;
    let last_fd = next;
    // Sources are moved above every target first, so no dup2 below can
    // overwrite a source that a later one still needs.
    let fds = fds
        .into_iter()
        .map(|(from, to)| Ok((rustix::io::fcntl_dupfd_cloexec(borrow(from), 64)?, to)))
        .collect::<std::result::Result<Vec<(OwnedFd, i32)>, rustix::io::Errno>>()
        .map_err(|e| Error::io("preparing descriptors", e.into()))?;
    let raw: Vec<(i32, i32)> = fds.iter().map(|(f, to)| (f.as_raw_fd(), *to)).collect();
    // SAFETY: the closure only makes raw syscalls on memory prepared above.
    unsafe {
        cmd.pre_exec(move || {
            limits::attach_self(&procs)?;
            if let Some(l) = &rlimits {
                limits::apply_rlimits(l)?;
            }
            // Leave the caller's session and terminal behind.
            libc::setsid();
            for &(from, to) in &raw {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // None of the caller's other descriptors reach the sandbox;
            // blink-guest closes the ones above once it has entered.
            libc::syscall(
                libc::SYS_close_range,
                last_fd + 1,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }

    let mut master: Option<Arc<PtyMaster>> = None;
    if let Some(size) = spec.tty {
        let ptmx = target
            .namespaces
            .open_ptmx()
            .map_err(|e| Error::io("opening a terminal in the sandbox", e))?;
        let (m, slave) = pty::open_pair(ptmx, size)
            .map_err(|e| Error::io("opening a terminal in the sandbox", e))?;
        let stdio = |fd: &OwnedFd| -> Result<Stdio> {
            Ok(Stdio::from(
                fd.try_clone()
                    .map_err(|e| Error::io("duplicating terminal", e))?,
            ))
        };
        cmd.stdin(stdio(&slave)?)
            .stdout(stdio(&slave)?)
            .stderr(stdio(&slave)?);
        master = Some(m);
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }

    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("joining the sandbox (nsenter)", e))?;
    drop((fds, env));
    let nsenter_pid = child
        .id()
        .ok_or_else(|| Error::Runtime("nsenter exited at once".into()))?;
    // The parent's copies of the slave end were moved into `cmd` and are
    // dropped with it, so the master sees EOF when the process is done.
    drop(cmd);

    let (tx, rx) = watch::channel(None);
    let (stdin, stdout, stderr) = match &master {
        Some(m) => (
            Some(Box::pin(PtyWriter(m.clone())) as _),
            Some(Box::pin(PtyReader(m.clone())) as _),
            None,
        ),
        None => (
            child.stdin.take().map(|s| Box::pin(s) as _),
            child.stdout.take().map(|s| Box::pin(s) as _),
            child.stderr.take().map(|s| Box::pin(s) as _),
        ),
    };
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(s) => match s.signal() {
                Some(sig) => ExitStatus {
                    code: 128 + sig,
                    signal: Some(sig),
                },
                None => ExitStatus {
                    code: s.code().unwrap_or(-1),
                    signal: None,
                },
            },
            Err(e) => {
                tracing::warn!(error = %e, "waiting for an execution failed");
                ExitStatus {
                    code: -1,
                    signal: None,
                }
            }
        };
        let _ = tx.send(Some(status));
    });

    let tty = master.is_some();
    Ok(Execution {
        stdin,
        stdout,
        stderr,
        control: Arc::new(LocalControl {
            nsenter_pid,
            status: rx,
            pty: master,
        }),
        tty,
    })
}

/// The environment as `NAME=VALUE` records separated by NUL bytes, in an
/// in-memory file for `blink-guest exec --env-fd`.
fn env_fd(env: &[(String, String)]) -> Result<OwnedFd> {
    let mut bytes = Vec::new();
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "environment variable name {name:?} or its value is not allowed"
            )));
        }
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(b'=');
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    super::handover::bytes("blink-env", &bytes)
}

fn borrow(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: only used while the owners of these descriptors (the target
    // and the env file) are alive, within `start`.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

struct LocalControl {
    nsenter_pid: u32,
    status: watch::Receiver<Option<ExitStatus>>,
    pty: Option<Arc<PtyMaster>>,
}

impl LocalControl {
    /// Host pid of the process nsenter forked inside the sandbox.
    fn guest_pid(&self) -> Option<i32> {
        let path = format!("/proc/{0}/task/{0}/children", self.nsenter_pid);
        for _ in 0..100 {
            if self.status.borrow().is_some() {
                return None;
            }
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok())
            {
                return Some(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        None
    }
}

#[async_trait]
impl ExecControl for LocalControl {
    async fn wait(&self) -> Result<ExitStatus> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Runtime("execution monitor ended".into()))?;
        Ok(status.unwrap_or(ExitStatus {
            code: -1,
            signal: None,
        }))
    }

    fn try_status(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    fn signal(&self, signal: i32) -> Result<()> {
        let Some(pid) = self.guest_pid() else {
            return Ok(()); // already ended
        };
        // SAFETY: kill(2) on a pid we just read from our child's children.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(Error::io(
                format!("signalling pid {pid}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn kill(&self) -> Result<()> {
        if let Some(pid) = self.guest_pid() {
            // blink-guest made the process a session (and group) leader.
            // SAFETY: kill(2) with a negative pid signals that group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        Ok(())
    }

    fn resize(&self, size: PtySize) -> Result<()> {
        match &self.pty {
            Some(m) => m
                .resize(size)
                .map_err(|e| Error::io("resizing terminal", e)),
            None => Ok(()),
        }
    }
}
