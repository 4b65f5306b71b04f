//! Rules for what callers hand the manager, in one place for every surface:
//! environment variables, command lines, terminal sizes and signal names.
//! The manager enforces them on every execution; surfaces that must answer
//! before anything runs (a queued REST run, an SSH request) call the same
//! functions and only choose how to present a refusal.

use crate::error::{Error, Result};
use crate::runtime::PtySize;

/// Variables per execution.
pub const MAX_ENV_VARS: usize = 256;
/// Bytes of one variable's name.
pub const MAX_ENV_NAME: usize = 256;
/// Bytes of one variable's value.
pub const MAX_ENV_VALUE: usize = 128 * 1024;
/// Bytes of the whole environment.
pub const MAX_ENV_TOTAL: usize = 1024 * 1024;
/// Arguments of one command line, and their bytes together.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ARGV_BYTES: usize = 1024 * 1024;
/// Rows and columns of a terminal.
pub const MAX_TERMINAL_CELLS: u16 = 4096;

/// An environment the sandbox can take: names without `=` or NUL, values
/// without NUL, within the size limits.
pub fn check_env(env: &[(String, String)]) -> Result<()> {
    if env.len() > MAX_ENV_VARS {
        return Err(Error::InvalidArgument(format!(
            "{} environment variables given; at most {MAX_ENV_VARS} are allowed",
            env.len()
        )));
    }
    let mut total = 0;
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) || name.len() > MAX_ENV_NAME {
            return Err(Error::InvalidArgument(format!(
                "invalid environment variable name {:?}: it must be 1 to {MAX_ENV_NAME} bytes without '=' or NUL",
                crate::escape::Escaped::limit(name, 64).to_string()
            )));
        }
        if value.contains('\0') || value.len() > MAX_ENV_VALUE {
            return Err(Error::InvalidArgument(format!(
                "invalid value for environment variable {name}: at most {MAX_ENV_VALUE} bytes, no NUL"
            )));
        }
        total += name.len() + value.len() + 2;
    }
    if total > MAX_ENV_TOTAL {
        return Err(Error::InvalidArgument(format!(
            "the environment is {total} bytes; at most {MAX_ENV_TOTAL} are allowed"
        )));
    }
    Ok(())
}

/// A command line: a non-empty program, no NUL anywhere, within limits.
pub fn check_command(argv: &[String]) -> Result<()> {
    match argv.first() {
        Some(program) if !program.is_empty() => check_args(argv),
        _ => Err(Error::InvalidArgument("empty command".into())),
    }
}

/// Extra arguments: no NUL, within limits.
pub fn check_args(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a.contains('\0')) {
        return Err(Error::InvalidArgument(
            "command arguments must not contain NUL".into(),
        ));
    }
    let bytes: usize = args.iter().map(|a| a.len() + 1).sum();
    if args.len() > MAX_ARGS || bytes > MAX_ARGV_BYTES {
        return Err(Error::InvalidArgument(format!(
            "the command line is too long: at most {MAX_ARGS} arguments and {MAX_ARGV_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A terminal size a client asked for, refused outside 1..=4096.
pub fn terminal_size(rows: u32, cols: u32) -> Result<PtySize> {
    let ok = |v: u32| (1..=u32::from(MAX_TERMINAL_CELLS)).contains(&v);
    if !ok(rows) || !ok(cols) {
        return Err(Error::InvalidArgument(format!(
            "rows and cols must be between 1 and {MAX_TERMINAL_CELLS}"
        )));
    }
    Ok(PtySize {
        rows: rows as u16,
        cols: cols as u16,
    })
}

/// A terminal size from a protocol that cannot refuse (SSH's pty-req and
/// window-change): 0 means "unknown" and takes the default, larger values
/// are clamped.
pub fn terminal_size_clamped(rows: u32, cols: u32) -> PtySize {
    let clamp = |v: u32, default: u16| match v {
        0 => default,
        v => v.min(u32::from(MAX_TERMINAL_CELLS)) as u16,
    };
    PtySize {
        rows: clamp(rows, 24),
        cols: clamp(cols, 80),
    }
}

/// Linux's signals by name, as `kill -l` lists them.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// A signal's number from its name, with or without `SIG` (`TERM`,
/// `SIGTERM`).
pub fn signal_number(name: &str) -> Option<i32> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// A signal's name without `SIG`, for the numbers Linux names.
pub fn signal_name(number: i32) -> Option<&'static str> {
    SIGNALS.iter().find(|(_, v)| *v == number).map(|(n, _)| *n)
}

/// A signal number a client gave: a named signal or a real-time one.
pub fn check_signal(number: i32) -> Result<i32> {
    if signal_name(number).is_some() || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&number) {
        Ok(number)
    } else {
        Err(Error::InvalidArgument(format!("unknown signal {number}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(check_env(&env(&[("LANG", "C"), ("EMPTY", "")])).is_ok());
        for bad in [("", "x"), ("A=B", "x"), ("A\0", "x"), ("A", "x\0y")] {
            let e = check_env(&env(&[bad])).expect_err("refused");
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        let long = "x".repeat(MAX_ENV_VALUE + 1);
        assert!(check_env(&env(&[("A", &long)])).is_err());
        let many: Vec<(String, String)> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert!(check_env(&many).is_err());
        let big: Vec<(String, String)> = (0..10)
            .map(|i| (format!("V{i}"), "x".repeat(MAX_ENV_VALUE)))
            .collect();
        assert!(check_env(&big).is_err(), "the total is bounded too");
        // A hostile name is not echoed raw into the error.
        let e = check_env(&env(&[("A=\n\x1b", "x")])).expect_err("refused");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn commands() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_command(&argv(&["sh", "-c", "true"])).is_ok());
        assert!(check_command(&argv(&[])).is_err());
        assert!(check_command(&argv(&[""])).is_err());
        assert!(check_command(&argv(&["sh", "a\0b"])).is_err());
        assert!(check_args(&argv(&[])).is_ok());
        let huge = vec!["x".repeat(1024); 1100];
        assert!(check_args(&huge).is_err());
    }

    #[test]
    fn terminals() {
        assert_eq!(
            terminal_size(24, 80).expect("ok"),
            PtySize { rows: 24, cols: 80 }
        );
        for (r, c) in [(0, 80), (24, 0), (4097, 80), (24, 5000)] {
            assert!(terminal_size(r, c).is_err(), "{r}x{c}");
        }
        assert_eq!(terminal_size_clamped(0, 0), PtySize { rows: 24, cols: 80 });
        assert_eq!(
            terminal_size_clamped(100_000, 9000),
            PtySize {
                rows: MAX_TERMINAL_CELLS,
                cols: MAX_TERMINAL_CELLS
            }
        );
    }

    #[test]
    fn signals() {
        for (name, number) in SIGNALS {
            assert_eq!(signal_number(name), Some(*number));
            assert_eq!(signal_number(&format!("SIG{name}")), Some(*number));
            assert_eq!(signal_name(*number), Some(*name));
            assert_eq!(check_signal(*number).expect("known"), *number);
        }
        assert_eq!(signal_number("NOPE"), None);
        assert!(check_signal(0).is_err());
        assert!(check_signal(libc::SIGRTMIN()).is_ok());
        assert!(check_signal(200).is_err());
    }
}
