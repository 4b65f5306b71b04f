//! blink-guest: the small static helper that lives inside every local sandbox
//! at `/.blink/guest` (bind-mounted read-only). It has two jobs:
//!
//! - `blink-guest init [--ready-fd N]`: the sandbox's long-lived process.
//!   bubblewrap is pid 1 of the sandbox and reaps orphans; this process only
//!   has to exist, so the sandbox keeps running between executions. It
//!   writes to the ready descriptor once running: bubblewrap's own pid
//!   report comes before its mounts are done.
//! - `blink-guest exec [--tty] [--cwd DIR] -- PROG ARGS...`: the last step of
//!   every execution. It starts a new session (so the execution's process
//!   group can be signalled as a whole), takes its terminal as controlling
//!   terminal in PTY mode, drops capabilities to Docker's default set,
//!   changes directory and execs the program.
//!
//! It is built by build.rs as a static binary with nothing but `std`, so it
//! runs in any image, even one without a libc.

mod sftp;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

unsafe extern "C" {
    fn setsid() -> i32;
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

const TIOCSCTTY: u64 = 0x540E;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => init(&args[1..]),
        Some("exec") => exec(&args[1..]),
        Some("sftp-server") => sftp::main(&args[1..]),
        _ => {
            eprintln!("usage: blink-guest init | exec [--tty] [--cwd DIR] -- PROG ARGS...");
            ExitCode::from(2)
        }
    }
}

/// Tell the host the sandbox is fully set up (we only run after bubblewrap
/// finished its mounts), then wait forever.
fn init(args: &[String]) -> ExitCode {
    if let [flag, fd] = args {
        if flag == "--ready-fd" {
            if let Ok(fd) = fd.parse::<i32>() {
                // SAFETY: the host passed this descriptor for us to own.
                let mut ready = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let _ = std::io::Write::write_all(&mut ready, b"ready\n");
            }
        }
    }
    loop {
        std::thread::park();
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
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--tty" => tty = true,
            "--cwd" => {
                i += 1;
                cwd = args.get(i).map(String::as_str);
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
    if let Some(dir) = cwd {
        if let Err(err) = std::env::set_current_dir(dir) {
            eprintln!("blink-guest: cannot change directory to {dir}: {err}");
            return ExitCode::from(126);
        }
    }
    let err = std::process::Command::new(program).args(&args[i + 1..]).exec();
    eprintln!("blink-guest: cannot run {program}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        ExitCode::from(127)
    } else {
        ExitCode::from(126)
    }
}
