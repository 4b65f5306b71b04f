//! The sandbox's seccomp filter, with the semantics of Docker's default
//! profile for what a container without CAP_SYS_ADMIN may not do: no new
//! namespaces, no mounts, no keyrings, no BPF, no perf events, no
//! userfaultfd, no io_uring, no kernel modules or kexec, no
//! `open_by_handle_at`, no AF_VSOCK sockets. Unlike Docker, `personality`
//! is not narrowed to a few values (libseccomp cannot say "none of these"
//! in one rule): its flags only change the calling process's own memory
//! layout. Everything else is allowed, as
//! in Docker, so package managers, compilers, debuggers (ptrace within the
//! sandbox) and servers run unchanged.
//!
//! Built with libseccomp (what Docker, Podman and runc use), which also
//! makes the filter refuse every other syscall ABI (i386 through `int 0x80`,
//! x32): those kill the process.
//!
//! The compiled program (classic BPF) is handed to bubblewrap for the
//! sandbox's init and to `blink-guest exec` for every execution, so each
//! process of a sandbox runs under it.

use std::io::{Read, Seek};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::error::{Error, Result};

/// Which filter sandboxes run under (`[sandbox] seccomp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompProfile {
    /// Docker's default semantics (the default).
    #[default]
    Default,
    /// No filter at all. For debugging only.
    Unconfined,
}

impl std::str::FromStr for SeccompProfile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Self::Default),
            "unconfined" => Ok(Self::Unconfined),
            other => Err(Error::InvalidArgument(format!(
                "unknown seccomp profile {other:?}: expected default or unconfined"
            ))),
        }
    }
}

/// Refused outright with EPERM.
const DENIED: &[&str] = &[
    // Namespaces: no new ones, no joining others.
    "unshare",
    "setns",
    // Mounts, old and new API.
    "mount",
    "umount2",
    "pivot_root",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    // Keyrings.
    "add_key",
    "keyctl",
    "request_key",
    // The kernel's wider surface.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "kcmp",
    "lookup_dcookie",
    "syslog",
    // Kernel code and the machine itself.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "iopl",
    "ioperm",
    "vhangup",
    // File handles bypass path permissions (the "shocker" escape).
    "name_to_handle_at",
    "open_by_handle_at",
    // Clocks, host names (Docker needs CAP_SYS_TIME / CAP_SYS_ADMIN).
    "clock_adjtime",
    "clock_settime",
    "settimeofday",
    "sethostname",
    "setdomainname",
    // NUMA policy (Docker needs CAP_SYS_NICE).
    "mbind",
    "set_mempolicy",
    "migrate_pages",
    "move_pages",
    // Obsolete interfaces.
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
];

/// `clone` flags that make namespaces.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const AF_VSOCK: u64 = 40;

/// The filter as classic BPF, ready for `--seccomp` or `PR_SET_SECCOMP`.
/// `None` for the unconfined profile.
pub fn compile(profile: SeccompProfile) -> Result<Option<Vec<u8>>> {
    match profile {
        SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::Default => default_filter()
            .map(Some)
            .map_err(|e| Error::Runtime(format!("building the seccomp filter (libseccomp): {e}"))),
    }
}

fn default_filter() -> std::result::Result<Vec<u8>, Box<dyn std::error::Error>> {
    let eperm = ScmpAction::Errno(libc::EPERM);
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow)?;
    filter.set_act_badarch(ScmpAction::KillProcess)?;
    for name in DENIED {
        // A name this libseccomp does not know has no number on this
        // architecture, so nothing can call it.
        if let Ok(syscall) = ScmpSyscall::from_name(name) {
            filter.add_rule(eperm, syscall)?;
        }
    }
    let clone = ScmpSyscall::from_name("clone")?;
    for flag in CLONE_NAMESPACE_FLAGS {
        let cmp = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(*flag), *flag);
        filter.add_rule_conditional(eperm, clone, &[cmp])?;
    }
    // clone3 passes its flags in memory, out of the filter's sight: ENOSYS
    // makes libc fall back to clone, whose flags are checked above.
    filter.add_rule(
        ScmpAction::Errno(libc::ENOSYS),
        ScmpSyscall::from_name("clone3")?,
    )?;
    let socket = ScmpSyscall::from_name("socket")?;
    let vsock = ScmpArgCompare::new(0, ScmpCompareOp::Equal, AF_VSOCK);
    filter.add_rule_conditional(eperm, socket, &[vsock])?;

    let mut memfd = super::handover::memfd("blink-seccomp")?;
    filter.export_bpf(&memfd)?;
    memfd.rewind()?;
    let mut program = Vec::new();
    memfd.read_to_end(&mut program)?;
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_to_bpf() {
        let program = compile(SeccompProfile::Default)
            .expect("compile")
            .expect("a program");
        assert!(!program.is_empty());
        assert_eq!(program.len() % 8, 0, "sock_filter records are 8 bytes");
        assert!(
            compile(SeccompProfile::Unconfined)
                .expect("compile")
                .is_none()
        );
    }

    #[test]
    fn profile_names_parse() {
        assert_eq!(
            "default".parse::<SeccompProfile>().expect("parse"),
            SeccompProfile::Default
        );
        assert_eq!(
            "unconfined".parse::<SeccompProfile>().expect("parse"),
            SeccompProfile::Unconfined
        );
        let err = "strict".parse::<SeccompProfile>().expect_err("refused");
        assert!(err.to_string().contains("strict"), "{err}");
    }
}
