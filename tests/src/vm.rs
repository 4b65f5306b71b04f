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
fn nested() -> bool {
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

/// A server on the boxlite runtime, with `config` and API token `token`.
/// Keep the returned directory as long as the server.
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

/// Run a suite that starts its own [`boxlite_server`] (reported skipped
/// when [`missing`] says what is); when it fails and that server's log
/// shows BoxLite's transport break, run it once more in a new L1, saying
/// so. Any other failure, or a second break, fails.
pub fn run_suite(suite: impl Fn()) {
    let missing = missing();
    if !blink_sdk::testing::require(missing.is_none(), missing.as_deref().unwrap_or("")) {
        return;
    }
    retrying_transport_breaks(suite);
}

/// [`run_suite`]'s retry.
fn retrying_transport_breaks(suite: impl Fn()) {
    for attempt in 1..=2 {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&suite));
        let broke = LAST_LOG
            .lock()
            .ok()
            .and_then(|last| last.clone())
            .and_then(|log| log.lock().ok().map(|l| l.contains(TRANSPORT_BREAK)))
            .unwrap_or(false);
        match outcome {
            Ok(()) => return,
            Err(_) if attempt == 1 && broke => eprintln!(
                "[boxlite-vm] BoxLite's exec transport broke ({TRANSPORT_BREAK:?}, docs/BOXLITE.md): the suite runs once more in a new L1"
            ),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// How long L1 has to boot and start its server (normally 20-30 s).
const UP_WITHIN: std::time::Duration = std::time::Duration::from_secs(240);
/// QEMU's own limit (the suite takes 1-2 min in L1).
const VM_TIMEOUT_SECS: u64 = 900;

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
