//! Executions in a running local sandbox: `nsenter` joins the sandbox's
//! namespaces and root, then `blink-guest exec` starts a new session, takes
//! the terminal (PTY mode), changes directory and execs the program.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::limits;
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
    /// Host pid of a process inside the sandbox (its init).
    pub init_pid: u32,
    pub cgroup_procs: Vec<CString>,
    pub rlimits: Option<Limits>,
}

pub async fn start(target: Target<'_>, spec: ExecSpec) -> Result<Execution> {
    if spec.argv.is_empty() {
        return Err(Error::InvalidArgument("empty command".into()));
    }
    let pid = target.init_pid.to_string();
    let mut cmd = tokio::process::Command::new(target.nsenter);
    cmd.args([
        "--target", &pid, "-U", "-m", "-p", "-i", "-u", "-n", "-C", "--root", "--wd",
    ]);
    cmd.args(["--", GUEST_PATH, "exec"]);
    if spec.tty.is_some() {
        cmd.arg("--tty");
    }
    cmd.args(["--cwd", spec.cwd.as_deref().unwrap_or("/")]);
    cmd.arg("--").args(&spec.argv);
    cmd.env_clear().envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.kill_on_drop(false);

    let procs = target.cgroup_procs;
    let rlimits = target.rlimits;
    // SAFETY: the closure only makes raw syscalls on memory prepared above.
    unsafe {
        cmd.pre_exec(move || {
            limits::attach_self(&procs)?;
            if let Some(l) = &rlimits {
                limits::apply_rlimits(l)?;
            }
            // Leave the caller's session and terminal behind, and let none
            // of the caller's descriptors into the sandbox.
            libc::setsid();
            libc::syscall(
                libc::SYS_close_range,
                3,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }

    let mut master: Option<Arc<PtyMaster>> = None;
    if let Some(size) = spec.tty {
        let ptmx = Path::new("/proc").join(&pid).join("root/dev/ptmx");
        let (m, slave) = pty::open_pair(&ptmx, size)
            .map_err(|e| Error::io(format!("opening a terminal in sandbox (pid {pid})"), e))?;
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
        .map_err(|e| Error::io(format!("starting nsenter {}", target.nsenter.display()), e))?;
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
