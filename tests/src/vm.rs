//! Blink on the boxlite runtime, for real: its release binaries serving
//! sessions in BoxLite micro-VMs. Where this host's KVM can boot one
//! (`BLINK_VM=direct`, or the boxlite preflight of `blink-server` passing)
//! the server runs here; elsewhere, as on kvm_pvm hosts, inside an L1 guest
//! that QEMU emulates with SVM (tests/vm/boxlite-vm.sh), reached through
//! ports forwarded on 127.0.0.1. Either way the result is a [`Server`] the
//! usual REST and SSH helpers drive.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Server;

/// The release binaries the VM runs.
pub fn release_bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name)
}

fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/boxlite-vm.sh")
}

/// Why the boxlite suite cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    for name in ["blink-server", "blink-cli"] {
        if !release_bin(name).exists() {
            return Some(format!(
                "{} is not built (scripts/test.sh builds it with --features boxlite)",
                release_bin(name).display()
            ));
        }
    }
    if !nested() {
        return None;
    }
    if !crate::abuse::is_root() {
        return Some("the nested VM needs root (debootstrap, mkfs)".into());
    }
    None
}

/// Whether the server runs nested in L1 (no usable KVM here) rather than
/// directly.
pub fn nested() -> bool {
    match std::env::var("BLINK_VM").as_deref() {
        Ok("direct") => false,
        Ok("nested") => true,
        _ => {
            let hardware = ["kvm_intel", "kvm_amd"]
                .iter()
                .any(|m| Path::new("/sys/module").join(m).exists());
            !hardware || Path::new("/sys/module/kvm_pvm").exists()
        }
    }
}

/// The log of the server the last [`boxlite_server`] started.
static LAST_LOG: std::sync::Mutex<Option<std::sync::Arc<std::sync::Mutex<String>>>> =
    std::sync::Mutex::new(None);

fn remember(server: &Server) {
    if let Ok(mut last) = LAST_LOG.lock() {
        *last = Some(server.log.clone());
    }
}

/// What BoxLite 0.10.8 logs when its gRPC transport to a box breaks
/// (docs/BOXLITE.md): an execution in flight, or a box being started,
/// ends with an error, never with wrong bytes ("h2 protocol error" in the
/// first case, `status: Unknown, message: "transport error"` in both).
/// Nested under TCG it happens now and then (about one run of
/// `boxlite_vm.rs` in eight, with no relay).
const TRANSPORT_BREAK: &str = "message: \"transport error\"";

/// How many times a suite runs at most, each in a new L1 (see [`run_suite`]).
const MAX_ATTEMPTS: u32 = 3;

/// Run a suite that starts its own [`boxlite_server`] (reported skipped
/// when [`missing`] says what is).
///
/// Nested under TCG on a loaded 2-core host, a run now and then fails for
/// the emulation's sake: BoxLite's exec transport breaks, or L1 stalls past
/// a step's timeout (one cold CI run failed so, with its reason cut from
/// the record). So a failed run is said aloud, with its reason and the
/// server's last log lines, and the suite runs once more in a new L1; a
/// third run is allowed only when every failure so far was BoxLite's
/// transport break. A fault of Blink's fails every run, so it still fails
/// the test.
pub fn run_suite(suite: impl Fn()) {
    let missing = missing();
    if !blink_sdk::testing::require(missing.is_none(), missing.as_deref().unwrap_or("")) {
        return;
    }
    retrying(suite, take_last_log);
}

/// [`run_suite`]'s retry: `suite` runs until it passes or may not run
/// again; `server_log` is the log of the server its last run started.
fn retrying(suite: impl Fn(), server_log: impl Fn() -> String) {
    let mut all_breaks = true;
    for attempt in 1..=MAX_ATTEMPTS {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&suite));
        let Err(panic) = outcome else { return };
        let log = server_log();
        let broke = log.contains(TRANSPORT_BREAK);
        all_breaks &= broke;
        let again = attempt == 1 || (attempt < MAX_ATTEMPTS && all_breaks);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        eprintln!(
            "[boxlite-vm] run {attempt} of at most {MAX_ATTEMPTS} failed: {}\n\
             [boxlite-vm] BoxLite's transport break ({TRANSPORT_BREAK:?}, docs/BOXLITE.md) in the server's log: {broke}\n\
             [boxlite-vm] the server's last log lines:\n{}",
            panic_text(&panic),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        if !again {
            std::panic::resume_unwind(panic);
        }
        eprintln!("[boxlite-vm] the suite runs once more in a new L1");
    }
}

/// The log of the server the last [`boxlite_server`] started, taken once
/// (the next run starts with none).
fn take_last_log() -> String {
    LAST_LOG
        .lock()
        .ok()
        .and_then(|mut last| last.take())
        .and_then(|log| log.lock().ok().map(|l| l.clone()))
        .unwrap_or_default()
}

/// The message a panic carried.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// How long L1 has to boot and start its server (normally 20-30 s).
const UP_WITHIN: std::time::Duration = std::time::Duration::from_secs(240);
/// QEMU's own limit (the suite takes 1-2 min in L1).
const VM_TIMEOUT_SECS: u64 = 900;

/// A server on the boxlite runtime, with `config` and API token `token`.
/// Keep the returned directory as long as the server.
pub fn boxlite_server(config: &str, token: &str) -> (Server, tempfile::TempDir) {
    let share = tempfile::Builder::new()
        .prefix("blink-vm-share-")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
        .expect("share dir");
    std::fs::write(share.path().join("blink.toml"), config).expect("config");
    std::fs::write(share.path().join("token"), token).expect("token");
    if !nested() {
        let data = share.path().join("data");
        let child = Command::new(release_bin("blink-server"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(share.path().join("blink.toml"))
            .args(["--runtime", "boxlite"])
            .args([
                "--ssh-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env("BLINK_API_TOKEN", token)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn blink-server");
        let server = Server::adopt(child, Some(token.into()), false);
        remember(&server);
        return (server, share);
    }
    let status = Command::new("bash")
        .arg(harness())
        .arg("prepare")
        .status()
        .expect("tests/vm/boxlite-vm.sh prepare");
    assert!(status.success(), "preparing the L1 guest failed");
    for name in ["blink-server", "blink-cli"] {
        std::fs::copy(release_bin(name), share.path().join(name)).expect("copy a binary");
    }
    // A TCG guest has been seen to freeze as its first box started (once
    // in some twenty boots): a server not up in time is a boot that
    // froze, killed and made once more. QEMU's own limit bounds a freeze
    // later on.
    for attempt in 1..=2 {
        let child = Command::new("bash")
            .arg(harness())
            .arg("serve")
            .env("VM_SHARE", share.path())
            .env("VM_SSH_PORT", crate::free_port().to_string())
            .env("VM_HTTP_PORT", crate::free_port().to_string())
            .env("VM_TIMEOUT", VM_TIMEOUT_SECS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tests/vm/boxlite-vm.sh serve");
        let pid = child.id();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch = up.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + UP_WITHIN;
            while std::time::Instant::now() < deadline {
                if watch.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            eprintln!("[boxlite-vm] the server in L1 is not up in {UP_WITHIN:?}: killing the boot");
            // The harness's QEMU dies with it (pdeathsig).
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        });
        let adopted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Server::adopt(child, Some(token.into()), false)
        }));
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        match adopted {
            Ok(server) => {
                remember(&server);
                return (server, share);
            }
            Err(_) if attempt == 1 => eprintln!("[boxlite-vm] booting L1 once more"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    unreachable!("the second attempt returns or panics")
}

/// `ssh` as `login` with the client's `id` key to the server in L1,
/// `args` as the command, `input` on its stdin.
pub fn ssh(
    client: &crate::ssh::Client,
    server: &Server,
    login: &str,
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    let mut cmd = client.ssh(server, "id", login);
    cmd.args(args);
    crate::run(&mut cmd, input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// Runs `retrying` over a suite whose run `i` (from 0) fails when
    /// `fails[i]` says so, with a server log that shows a transport break
    /// when `breaks[i]` does; returns whether it passed and how many runs
    /// there were.
    fn drive(fails: &[bool], breaks: &[bool]) -> (bool, usize) {
        let runs = Cell::new(0usize);
        let log = RefCell::new(String::new());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            retrying(
                || {
                    let i = runs.get();
                    runs.set(i + 1);
                    *log.borrow_mut() = if breaks.get(i).copied().unwrap_or(false) {
                        format!("WARN Attach stream error: status: Unknown, {TRANSPORT_BREAK}")
                    } else {
                        "INFO ssh channel closed".into()
                    };
                    assert!(!fails.get(i).copied().unwrap_or(true), "run {i} fails");
                },
                || log.borrow().clone(),
            )
        }));
        (outcome.is_ok(), runs.get())
    }

    #[test]
    fn a_passing_suite_runs_once() {
        assert_eq!(drive(&[false], &[false]), (true, 1));
    }

    #[test]
    fn any_first_failure_runs_the_suite_once_more() {
        assert_eq!(drive(&[true, false], &[false, false]), (true, 2));
        assert_eq!(drive(&[true, false], &[true, false]), (true, 2));
    }

    #[test]
    fn a_second_failure_fails_unless_both_were_transport_breaks() {
        assert_eq!(drive(&[true, true, false], &[false, false]), (false, 2));
        assert_eq!(drive(&[true, true, false], &[true, false]), (false, 2));
        assert_eq!(drive(&[true, true, false], &[false, true]), (false, 2));
        assert_eq!(drive(&[true, true, false], &[true, true]), (true, 3));
    }

    #[test]
    fn a_third_failure_always_fails() {
        assert_eq!(
            drive(&[true, true, true, false], &[true, true, true]),
            (false, 3)
        );
    }
}
