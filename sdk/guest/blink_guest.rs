//! blink-guest: the small static helper that lives inside every local sandbox
//! at `/.blink/guest` (a read-only copy in the sandbox's own tmpfs). Its jobs:
//!
//! - `blink-guest init [--ready-fd N | --box]`: the sandbox's pid 1 (bubblewrap runs
//!   with `--as-pid-1`). It reaps orphans, ignores every signal sent from
//!   inside, is not dumpable (so the sandbox's processes, which lack
//!   CAP_SYS_PTRACE, cannot ptrace it), and writes to the ready descriptor
//!   once running: bubblewrap's own pid report comes before its mounts.
//! - `blink-guest exec [--tty] [--cwd DIR] [--env-fd N] [--seccomp-fd N] --
//!   PROG ARGS...`: the last step of every execution. It starts a new
//!   session (so the execution's process group can be signalled as a
//!   whole), takes its terminal in PTY mode, drops capabilities to Docker's
//!   default set, installs the sandbox's seccomp filter, and execs the
//!   program with the environment read from the env descriptor. The host
//!   side (nsenter) runs with an empty environment: nothing a caller
//!   supplies reaches a process with host privileges.
//! - `blink-guest put [--mode OCTAL] PATH`: write stdin to PATH (parents
//!   made), as a sandbox process: how the host copies scripts in.
//! - `blink-guest rm PATH`: remove a file; a missing one is not an error.
//! - `blink-guest sftp-server [--home DIR] [--symlink-order openssh|draft]`:
//!   an SFTP v3 server on stdin/stdout (sftp.rs), run as an execution for
//!   the gateway's `sftp` subsystem, so file transfer has exactly the
//!   sandbox's privileges.
//! - `blink-guest wire [--tty ROWSxCOLS] [--cwd DIR] -- PROG ARGS...`: an
//!   execution over a text-only channel with flow control (wire.rs): how
//!   the boxlite runtime runs programs byte-exact.
//!
//! - `blink-guest vhub emit|call|serve|stream ...`: a V-Hub client on the
//!   session's endpoint `/run/blink/vhub.sock` (vhub.rs, docs/VHUB.md).
//!
//! It is built by build.rs as a static binary with nothing but `std`, so it
//! runs in any image, even one without a libc.

mod sftp;
mod vhub;
mod vhub_relay;
mod wire;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

unsafe extern "C" {
    fn setsid() -> i32;
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn sigemptyset(set: *mut SigSet) -> i32;
    fn sigaddset(set: *mut SigSet, signal: i32) -> i32;
    fn sigprocmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigwaitinfo(set: *const SigSet, info: *mut SigInfo) -> i32;
    fn syscall(number: i64, ...) -> i64;
}

/// glibc's `sigset_t` (1024 bits) and `siginfo_t` (128 bytes).
#[repr(C)]
struct SigSet([u64; 16]);
#[repr(C)]
struct SigInfo([u64; 16]);

const TIOCSCTTY: u64 = 0x540E;
const PR_SET_DUMPABLE: i32 = 4;
const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: i32 = 9;
const PR_SET_SECCOMP: i32 = 22;
const SECCOMP_MODE_FILTER: u64 = 2;
const SIGCHLD: i32 = 17;
const SIGTERM: i32 = 15;
const SIG_BLOCK: i32 = 0;
const WNOHANG: i32 = 1;
const SYS_CLOSE_RANGE: i64 = 436;
const CLOSE_RANGE_CLOEXEC: u32 = 4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => init(&args[1..]),
        Some("exec") => exec(&args[1..]),
        Some("put") => put(&args[1..]),
        Some("rm") => rm(&args[1..]),
        Some("sftp-server") => sftp::main(&args[1..]),
        Some("vhub") => vhub::main(&args[1..]),
        Some("wire") => wire::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: blink-guest init [--ready-fd N | --box] | exec [--tty] [--cwd DIR] [--env-fd N] [--seccomp-fd N] -- PROG ARGS... | put [--mode OCTAL] PATH | rm PATH | sftp-server [--home DIR] [--symlink-order openssh|draft] | vhub emit|call|serve|stream ... | wire [--tty ROWSxCOLS] [--cwd DIR] -- PROG ARGS..."
            );
            ExitCode::from(2)
        }
    }
}

/// Tell the host the sandbox is fully set up (we only run after bubblewrap
/// finished its mounts), then reap orphans for as long as the sandbox runs.
fn init(args: &[String]) -> ExitCode {
    if args == ["--box"] {
        // A micro-VM box's init (the boxlite runtime): its parent is the
        // box's own agent, and the box is stopped by SIGTERM.
        reap_forever(true)
    }
    // SAFETY: prctl with integer arguments on our own process.
    unsafe {
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        // The sandbox ends with bubblewrap's outer process. bubblewrap asks
        // the same, but too late if that process was killed right after
        // making us; a host killed before that shows below.
        prctl(PR_SET_PDEATHSIG, SIGKILL as u64, 0, 0, 0);
    }
    if let [flag, fd] = args
        && flag == "--ready-fd"
        && let Ok(fd) = fd.parse::<i32>()
    {
        // SAFETY: the host passed this descriptor for us to own.
        let mut ready = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // Nobody reads (EPIPE; Rust ignores SIGPIPE): the host that started
        // us is gone, and a sandbox nobody can reach must not live on.
        if std::io::Write::write_all(&mut ready, b"ready\n").is_err() {
            return ExitCode::from(1);
        }
    }
    reap_forever(false)
}

/// As pid 1 every orphan of the sandbox becomes our child. SIGCHLD is
/// blocked and waited for, so no handler runs and nothing else can wake us;
/// with `exit_on_term`, SIGTERM (a box being stopped) ends us at once
/// instead of waiting out the stop's grace period.
fn reap_forever(exit_on_term: bool) -> ! {
    let mut set = SigSet([0; 16]);
    // SAFETY: signal-set calls on a set we own; waitpid on our children.
    unsafe {
        sigemptyset(&mut set);
        sigaddset(&mut set, SIGCHLD);
        if exit_on_term {
            sigaddset(&mut set, SIGTERM);
        }
        sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut());
    }
    loop {
        let mut status = 0;
        // SAFETY: as above.
        let signal = unsafe {
            while waitpid(-1, &mut status, WNOHANG) > 0 {}
            let mut info = SigInfo([0; 16]);
            sigwaitinfo(&set, &mut info)
        };
        if signal == SIGTERM {
            std::process::exit(0);
        }
    }
}

/// Capabilities kept by executions, as in Docker's default set: enough
/// for package managers and servers, nothing that reaches the kernel's
/// wider surface (no SYS_ADMIN, NET_ADMIN, SYS_PTRACE, ...).
const KEPT_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];
const PR_CAPBSET_DROP: i32 = 24;
const LAST_CAP: u32 = 63;

fn drop_capabilities() {
    for cap in 0..=LAST_CAP {
        if !KEPT_CAPS.contains(&cap) {
            // SAFETY: prctl with plain integer arguments. Errors (EINVAL
            // past the kernel's last capability) are expected and ignored.
            unsafe {
                prctl(PR_CAPBSET_DROP, cap as u64, 0, 0, 0);
            }
        }
    }
}

fn exec(args: &[String]) -> ExitCode {
    let mut tty = false;
    let mut cwd: Option<&str> = None;
    let mut env_fd: Option<i32> = None;
    let mut seccomp_fd: Option<i32> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--tty" => tty = true,
            "--cwd" => {
                i += 1;
                cwd = args.get(i).map(String::as_str);
            }
            "--env-fd" | "--seccomp-fd" => {
                let Some(fd) = args.get(i + 1).and_then(|v| v.parse::<i32>().ok()) else {
                    eprintln!("blink-guest: {} needs a descriptor number", args[i]);
                    return ExitCode::from(2);
                };
                if args[i] == "--env-fd" {
                    env_fd = Some(fd);
                } else {
                    seccomp_fd = Some(fd);
                }
                i += 1;
            }
            "--" => {
                i += 1;
                break;
            }
            other => {
                eprintln!("blink-guest: unknown option {other}");
                return ExitCode::from(2);
            }
        }
        i += 1;
    }
    let Some(program) = args.get(i) else {
        eprintln!("blink-guest: no program given");
        return ExitCode::from(2);
    };
    let env = match env_fd.map(read_env).transpose() {
        Ok(env) => env.unwrap_or_default(),
        Err(err) => {
            eprintln!("blink-guest: cannot read the environment: {err}");
            return ExitCode::from(126);
        }
    };
    // SAFETY: plain syscalls on our own process and on fd 0, which the host
    // side set to the terminal's slave end in PTY mode.
    unsafe {
        setsid();
        if tty && ioctl(0, TIOCSCTTY, 0) != 0 {
            eprintln!("blink-guest: cannot take the terminal as controlling terminal");
        }
    }
    // Root's capabilities after exec are the bounding set: shrink it.
    drop_capabilities();
    if let Some(dir) = cwd
        && let Err(err) = std::env::set_current_dir(dir)
    {
        eprintln!("blink-guest: cannot change directory to {dir}: {err}");
        return ExitCode::from(126);
    }
    // Last, so that nothing above runs under the filter; it needs
    // CAP_SYS_ADMIN in the sandbox's user namespace, which we still hold.
    if let Some(fd) = seccomp_fd
        && let Err(err) = install_seccomp(fd)
    {
        eprintln!("blink-guest: cannot install the seccomp filter: {err}");
        return ExitCode::from(126);
    }
    // The descriptors nsenter entered through stay behind.
    // SAFETY: close_range on our own descriptor table.
    unsafe {
        syscall(SYS_CLOSE_RANGE, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
    }
    let err = std::process::Command::new(program)
        .args(&args[i + 1..])
        .env_clear()
        .envs(env)
        .exec();
    eprintln!("blink-guest: cannot run {program}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        ExitCode::from(127)
    } else {
        ExitCode::from(126)
    }
}

/// Largest environment or filter the host hands over.
const MAX_HANDOVER: u64 = 4 << 20;

/// Read a descriptor the host passed us, whole, and close it. Read from
/// offset 0 with pread: the host shares one descriptor between executions.
fn read_handover(fd: i32) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    // SAFETY: the host passed this descriptor for us to own.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = file.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() as u64 > MAX_HANDOVER {
            return Err(std::io::Error::other("too large"));
        }
    }
}

/// `NAME=VALUE` records separated by NUL bytes.
fn read_env(fd: i32) -> std::io::Result<Vec<(String, String)>> {
    let bytes = read_handover(fd)?;
    let mut env = Vec::new();
    for record in bytes.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let text = std::str::from_utf8(record).map_err(std::io::Error::other)?;
        let Some((name, value)) = text.split_once('=') else {
            return Err(std::io::Error::other("a record without '='"));
        };
        env.push((name.to_owned(), value.to_owned()));
    }
    Ok(env)
}

/// Install a classic BPF program (an array of `struct sock_filter`).
fn install_seccomp(fd: i32) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const u8,
    }
    let program = read_handover(fd)?;
    if program.is_empty() || program.len() % 8 != 0 || program.len() / 8 > usize::from(u16::MAX) {
        return Err(std::io::Error::other("not a BPF program"));
    }
    let fprog = SockFprog {
        len: (program.len() / 8) as u16,
        filter: program.as_ptr(),
    };
    // SAFETY: fprog points at `program`, alive across the call.
    let rc = unsafe {
        prctl(
            PR_SET_SECCOMP,
            SECCOMP_MODE_FILTER,
            &fprog as *const SockFprog as u64,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `put [--mode OCTAL] PATH`: stdin to PATH, parents made.
fn put(args: &[String]) -> ExitCode {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let (mode, path) = match args {
        [flag, mode, path] if flag == "--mode" => match u32::from_str_radix(mode, 8) {
            Ok(m) if m <= 0o7777 => (m, path),
            _ => {
                eprintln!("blink-guest: bad mode {mode}");
                return ExitCode::from(2);
            }
        },
        [path] => (0o644, path),
        _ => {
            eprintln!("usage: blink-guest put [--mode OCTAL] PATH");
            return ExitCode::from(2);
        }
    };
    let result = (|| -> std::io::Result<()> {
        if let Some(parent) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        std::io::copy(&mut std::io::stdin().lock(), &mut out)?;
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        out.sync_all()
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blink-guest: writing {path}: {err}");
            ExitCode::from(1)
        }
    }
}

/// `rm PATH`: remove a file; a missing one is not an error.
fn rm(args: &[String]) -> ExitCode {
    let [path] = args else {
        eprintln!("usage: blink-guest rm PATH");
        return ExitCode::from(2);
    };
    match std::fs::remove_file(path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blink-guest: removing {path}: {err}");
            ExitCode::from(1)
        }
    }
}
