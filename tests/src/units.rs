//! systemd units as installed (deploy/): a copy whose `ExecStart` names
//! the built server, checked by `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `systemd-analyze` is here (reported skipped otherwise).
pub fn systemd_analyze_here() -> bool {
    let here = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    blink_sdk::testing::require(here, "systemd-analyze is not installed")
}

/// Copy `unit` into `dir` as installed: its ExecStart naming the server
/// this test run built.
pub fn install(unit: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit).expect("read the unit");
    let server = crate::bin("blink-server");
    let copy = dir.join(unit.file_name().expect("a unit file name"));
    std::fs::write(
        &copy,
        text.replace(
            "/usr/local/bin/blink-server",
            server.to_str().expect("utf-8"),
        ),
    )
    .expect("write the unit");
    copy
}

/// `systemd-analyze verify` passes on `unit` (with its drop-ins beside
/// it), with no unknown key and nothing it failed to parse.
pub fn verify(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", unit.display());
    assert!(
        !stderr.contains("Unknown key") && !stderr.contains("Failed to parse"),
        "{}: {stderr}",
        unit.display()
    );
}
