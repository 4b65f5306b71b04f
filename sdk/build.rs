//! Builds `blink-guest`, the static helper placed inside local sandboxes.
//! It is compiled with the same rustc as the crate, statically linked so it
//! runs in any image (busybox, distroless, Debian).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "guest/blink_guest.rs";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=guest/sftp.rs");
    println!("cargo:rerun-if-changed=src/sftp_wire.rs");
    println!("cargo:rerun-if-changed=guest/sftp/upload.rs");
    println!("cargo:rerun-if-changed=guest/wire.rs");
    println!("cargo:rerun-if-changed=guest/vhub.rs");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("blink-guest");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            "--crate-name",
            "blink_guest",
            src,
            "-o",
        ])
        .arg(&out)
        .status()
        .expect("running rustc for blink-guest");
    assert!(status.success(), "building blink-guest failed");
}
