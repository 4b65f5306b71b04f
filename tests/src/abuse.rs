//! Helpers of the abuse suite (`tests/tests/security_*.rs`): the attacker
//! program (`tests/abuse/probe.c`), a preload library that leaves a marker
//! when anything loads it (`tests/abuse/marker.c`), running commands as an
//! unprivileged host user, and reading what the probe prints.
//!
//! Tests that cannot run here call [`unavailable`], which prints
//! `SKIPPED: <reason>`, or panics under `CI` (as `local_runtime_available`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Blink;

/// The attack cannot be tried here: say why, or fail under CI.
pub fn unavailable(reason: &str) {
    blink_sdk::testing::require(false, reason);
}

/// Whether this process is host root (the id ranges, host-side stat of
/// sandbox disks and running as another user need it).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("abuse")
}

/// Compile `source` with the host's C compiler; `Err` says why not.
fn compile(source: &Path, out: &Path, flags: &[&str]) -> Result<(), String> {
    let cc = Command::new("cc")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !cc.is_ok_and(|s| s.success()) {
        return Err("there is no C compiler (`cc`; apt-get install gcc)".into());
    }
    let output = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(source)
        .output()
        .map_err(|e| format!("cc could not run: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cc {}` failed on {} (a static libc is needed: apt-get install libc6-dev): {}",
            flags.join(" "),
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// A temp dir whose mode is set: the marker library and its marker dir
/// must be reachable by any host user, so a host-side process running
/// under any id would leave its marker.
fn open_dir(prefix: &str, mode: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
    dir
}

/// The attacker program, compiled static so it runs in the default
/// (busybox) image.
pub struct Probe {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Probe {
    /// Compile `tests/abuse/probe.c`; `None` (after [`unavailable`]) when
    /// this host cannot.
    pub fn build() -> Option<Self> {
        let dir = open_dir("blink-probe-", 0o755);
        let path = dir.path().join("probe");
        match compile(
            &sources().join("probe.c"),
            &path,
            &["-static", "-O1", "-Wall"],
        ) {
            Ok(()) => Some(Self { _dir: dir, path }),
            Err(reason) => {
                unavailable(&reason);
                None
            }
        }
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// A copy in `dir` (a REST server's script dir); its path.
    pub fn copy_to(&self, dir: &Path) -> String {
        std::fs::create_dir_all(dir).expect("mkdir");
        let dest = dir.join("probe");
        std::fs::copy(&self.path, &dest).expect("copy probe");
        dest.to_str().expect("utf-8 path").to_owned()
    }
}

/// A preload library whose constructor leaves a marker file (with the
/// loading process's uid and executable) in a host temp dir.
pub struct Marker {
    _lib_dir: tempfile::TempDir,
    dir: tempfile::TempDir,
    pub lib: PathBuf,
}

impl Marker {
    /// Build `tests/abuse/marker.c` and prove it works: a host program
    /// started with it as LD_PRELOAD leaves a marker (then cleared). `None`
    /// (after [`unavailable`]) when this host cannot build it.
    pub fn build() -> Option<Self> {
        let lib_dir = open_dir("blink-preload-", 0o755);
        let dir = open_dir("blink-marker-", 0o777);
        let lib = lib_dir.path().join("libblinkmarker.so");
        let define = format!("-DMARKER_DIR=\"{}\"", dir.path().display());
        if let Err(reason) = compile(
            &sources().join("marker.c"),
            &lib,
            &["-shared", "-fPIC", "-O1", &define],
        ) {
            unavailable(&reason);
            return None;
        }
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let marker = Self {
            _lib_dir: lib_dir,
            dir,
            lib,
        };
        // Without this, a test that finds no marker would prove nothing.
        let status = Command::new("true")
            .env("LD_PRELOAD", &marker.lib)
            .status()
            .expect("run true");
        assert!(status.success());
        let found = marker.found();
        assert!(
            found.iter().any(|m| m.contains("exe=")),
            "the marker library left no marker when a host program loaded it: \
             a test relying on it would prove nothing"
        );
        marker.clear();
        Some(marker)
    }

    pub fn lib_arg(&self) -> &str {
        self.lib.to_str().expect("utf-8 path")
    }

    /// The markers left so far (their contents).
    pub fn found(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                out.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    fn clear(&self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Fail if any process has loaded the library.
    pub fn assert_none(&self, context: &str) {
        let found = self.found();
        assert!(
            found.is_empty(),
            "{context}: a host-side process loaded the caller's LD_PRELOAD: {found:?}"
        );
    }
}

/// The unprivileged host user the local-user attacks run as.
pub const NOBODY: u32 = 65534;

/// `program` run as uid and gid 65534 with no supplementary groups
/// (`setpriv` from util-linux); `None` (after [`unavailable`]) unless this
/// test runs as root with setpriv installed.
pub fn as_nobody(program: &str) -> Option<Command> {
    if !is_root() {
        unavailable("the local-user attacks need root (to become an unprivileged user)");
        return None;
    }
    let ok = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        unavailable("setpriv (util-linux) cannot run commands as uid 65534 here");
        return None;
    }
    // setpriv keeps its capabilities until its own execve, so it must not
    // be what looks `program` up: a shell, already without any, does.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "/bin/sh",
        "-c",
        "exec \"$0\" \"$@\"",
        program,
    ]);
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    Some(cmd)
}

/// The rest of the line `NAME: ...` that the probe printed for `name`.
pub fn line<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}: ");
    out.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

/// The probe's verdict on an attempt: `Some(errno)` when the kernel
/// refused it; panics, quoting everything, when the attempt worked or
/// printed nothing.
pub fn refused(out: &str, name: &str) -> i32 {
    let Some(rest) = line(out, name) else {
        panic!("the probe printed nothing for {name}:\n{out}");
    };
    if let Some(signal) = rest.strip_prefix("killed signal=") {
        // Killed by the filter (a foreign ABI, say): refused too.
        return -signal.trim().parse::<i32>().unwrap_or(0);
    }
    let errno = rest
        .strip_prefix("denied errno=")
        .and_then(|e| e.split_whitespace().next())
        .and_then(|e| e.parse().ok());
    match errno {
        Some(errno) => errno,
        None => panic!("ATTACK WORKED: {name}: {rest}\nfull probe output:\n{out}"),
    }
}

/// A `key=value` field of a probe line.
pub fn field<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Wait up to `limit` for a file to appear.
pub fn wait_for(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    path.exists()
}

/// Strings that would give away where a Blink's data dir is on the host.
pub fn host_paths(blink: &Blink) -> Vec<String> {
    let dir = blink.data_dir.path();
    let mut out = vec![dir.display().to_string()];
    if let Ok(real) = dir.canonicalize() {
        out.push(real.display().to_string());
    }
    out.push(dir.join("sandboxes").display().to_string());
    out
}

/// Fail if a text seen by a client names a host path of the data dir.
pub fn assert_no_host_path(blink: &Blink, what: &str, text: &str) {
    let short: String = text.chars().take(600).collect();
    for path in host_paths(blink) {
        assert!(
            !text.contains(&path),
            "{what} shows a client the host path {path}: {short}"
        );
    }
    assert!(
        !text.contains("/sandboxes/"),
        "{what} shows a client a host disk path: {short}"
    );
}

/// Hex of a string: secrets travel to the probe hex-encoded, so its own
/// command line never holds them in clear.
pub fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A server config giving this test's sandboxes host id ranges of their
/// own, away from the default base (0x70000000) that every other Blink on
/// the host (other tests running at the same time) starts from: attacks on
/// per-user quotas (inotify, processes) then never touch anyone else's
/// sandboxes, nor theirs ours. Its TOML, for [`crate::ServerBuilder::config`].
pub fn private_id_base_config() -> String {
    id_base_config(private_id_base())
}

/// A random id base away from the default one; see
/// [`private_id_base_config`].
pub fn private_id_base() -> u64 {
    // 0x78000000 + k * 65536, k < 2000: ranges up to 0x7FD00000 plus a
    // few sandboxes, below 2^31.
    0x7800_0000 + (rand::random::<u64>() % 2000) * 65536
}

/// The TOML setting `[sandbox] id_base`.
pub fn id_base_config(base: u64) -> String {
    format!("[sandbox]\nid_base = {base}\n")
}
