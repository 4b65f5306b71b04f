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
        return (Server::adopt(child, Some(token.into()), false), share);
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
    let child = Command::new("bash")
        .arg(harness())
        .arg("serve")
        .env("VM_SHARE", share.path())
        .env("VM_SSH_PORT", crate::free_port().to_string())
        .env("VM_HTTP_PORT", crate::free_port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tests/vm/boxlite-vm.sh serve");
    (Server::adopt(child, Some(token.into()), false), share)
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
