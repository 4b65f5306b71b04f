//! Building images locally: the default image from the host's static
//! busybox, and Debian images with debootstrap.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use blink_shared::ImageInfo;
use tracing::info;

use super::layer::{LayerBlob, LayerWriter, pack_dir};
use super::oci::{
    self, Descriptor, ImageConfig, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST, Manifest,
    RootFs, RunConfig,
};
use super::store::Staging;
use super::{DEFAULT_IMAGE, ImageStore, Progress, ProgressFn};
use crate::error::{Error, Result};

/// Where the static busybox comes from (Debian package `busybox-static`).
pub const BUSYBOX_PATH: &str = "/bin/busybox";
/// `PATH` in built images.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Fixed mtime of every entry in built layers (2024-01-01T00:00:00Z), so a
/// given busybox always gives the same digest.
pub const BUILD_MTIME: u64 = 1_704_067_200;

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const HOSTNAME: &str = "blink\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost\n";

fn busybox_missing(reason: String) -> Error {
    Error::RuntimeUnavailable {
        runtime: "busybox".into(),
        reason: format!(
            "{reason}; the default image needs a static busybox: apt-get install busybox-static"
        ),
    }
}

/// Whether an ELF image is statically linked (no `PT_INTERP`).
pub(crate) fn elf_is_static(data: &[u8]) -> std::result::Result<bool, &'static str> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF executable");
    }
    let le = match data[5] {
        1 => true,
        2 => false,
        _ => return Err("bad ELF byte order"),
    };
    let u16_at = |o: usize| -> Option<u64> {
        let b: [u8; 2] = data.get(o..o + 2)?.try_into().ok()?;
        Some(u64::from(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }))
    };
    let u32_at = |o: usize| -> Option<u64> {
        let b: [u8; 4] = data.get(o..o + 4)?.try_into().ok()?;
        Some(u64::from(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }))
    };
    let u64_at = |o: usize| -> Option<u64> {
        let b: [u8; 8] = data.get(o..o + 8)?.try_into().ok()?;
        Some(if le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    };
    let (phoff, phentsize, phnum) = match data[4] {
        1 => (u32_at(0x1c), u16_at(0x2a), u16_at(0x2c)),
        2 => (u64_at(0x20), u16_at(0x36), u16_at(0x38)),
        _ => return Err("bad ELF class"),
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("truncated ELF header");
    };
    for i in 0..phnum {
        let off = usize::try_from(phoff + i * phentsize).map_err(|_| "bad ELF header")?;
        match u32_at(off) {
            Some(3) => return Ok(false), // PT_INTERP
            Some(_) => {}
            None => return Err("truncated ELF program headers"),
        }
    }
    Ok(true)
}

/// Applet paths (relative, e.g. `usr/bin/env`) of a busybox binary.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let run = |arg: &str| {
        Command::new(busybox)
            .arg(arg)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let lines: Vec<String> = if let Some(out) = run("--list-full") {
        out.lines().map(str::to_owned).collect()
    } else if let Some(out) = run("--list") {
        out.lines().map(|l| format!("bin/{l}")).collect()
    } else {
        return Err(busybox_missing(format!(
            "{} --list failed",
            busybox.display()
        )));
    };
    let mut applets = BTreeSet::new();
    for line in lines {
        let line = line.trim();
        let p = Path::new(line);
        let safe = !line.is_empty()
            && p.components().all(|c| matches!(c, Component::Normal(_)))
            && matches!(line.split('/').next(), Some("bin" | "sbin" | "usr"))
            && line != "bin/busybox";
        if safe {
            applets.insert(line.to_owned());
        }
    }
    if !applets.contains("bin/sh") {
        return Err(busybox_missing(format!(
            "{} has no 'sh' applet",
            busybox.display()
        )));
    }
    Ok(applets.into_iter().collect())
}

/// Write the busybox rootfs layer into the staging dir.
fn busybox_layer(staging: &mut Staging, busybox: &Path) -> Result<LayerBlob> {
    let binary = std::fs::read(busybox)
        .map_err(|e| busybox_missing(format!("cannot read {}: {e}", busybox.display())))?;
    match elf_is_static(&binary) {
        Ok(true) => {}
        Ok(false) => {
            return Err(busybox_missing(format!(
                "{} is dynamically linked",
                busybox.display()
            )));
        }
        Err(why) => return Err(busybox_missing(format!("{}: {why}", busybox.display()))),
    }
    let applets = busybox_applets(busybox)?;
    let mut dirs: BTreeSet<(String, u32)> = [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sbin", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
        ("var/blink", 0o755),
        ("var/blink/memory", 0o755),
        ("var/tmp", 0o1777),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m))
    .collect();
    for a in &applets {
        let mut p = Path::new(a).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            if let Some(s) = d.to_str()
                && !dirs.iter().any(|(x, _)| x == s)
            {
                dirs.insert((s.to_owned(), 0o755));
            }
            p = d.parent();
        }
    }
    let path = staging.scratch_path("layer");
    let mut layer = LayerWriter::create(path, BUILD_MTIME)?;
    // Directories first (sorted, so parents precede children), then files.
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort();
    for (d, mode) in &dirs {
        layer.dir(d, *mode)?;
    }
    layer.file("bin/busybox", 0o755, binary.len() as u64, binary.as_slice())?;
    for (name, data) in [
        ("etc/group", GROUP),
        ("etc/hostname", HOSTNAME),
        ("etc/hosts", HOSTS),
        ("etc/passwd", PASSWD),
    ] {
        layer.file(name, 0o644, data.len() as u64, data.as_bytes())?;
    }
    for a in &applets {
        layer.symlink(a, Path::new("/bin/busybox"))?;
    }
    layer.finish()
}

/// Store a single-layer image built locally under `reference`.
fn store_built(
    store: &ImageStore,
    mut staging: Staging,
    layer: LayerBlob,
    run: RunConfig,
    reference: &str,
) -> Result<ImageInfo> {
    let config = ImageConfig {
        architecture: Some(oci::host_architecture().to_owned()),
        os: Some("linux".into()),
        config: Some(run),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer.diff_id.clone()],
        },
    };
    let config_bytes = serde_json::to_vec(&config)
        .map_err(|e| Error::Runtime(format!("serializing image config: {e}")))?;
    let config_digest = staging.add_bytes(&config_bytes)?;
    staging.add_file(layer.digest.clone(), layer.path.clone());
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: Descriptor::new(MT_OCI_CONFIG, config_digest, config_bytes.len() as u64),
        layers: vec![Descriptor::new(
            MT_OCI_LAYER_GZIP,
            layer.digest.clone(),
            layer.size,
        )],
        annotations: Default::default(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Runtime(format!("serializing manifest: {e}")))?;
    let manifest_digest = staging.add_bytes(&manifest_bytes)?;
    let desc = Descriptor::new(
        MT_OCI_MANIFEST,
        manifest_digest,
        manifest_bytes.len() as u64,
    );
    let mut infos = store.commit(staging, vec![(reference.to_owned(), desc)])?;
    infos
        .pop()
        .ok_or_else(|| Error::Runtime("commit stored nothing".into()))
}

impl ImageStore {
    /// The default image, built from the host's static busybox if missing.
    pub fn ensure_default(&self) -> Result<ImageInfo> {
        let present = self
            .read_index()?
            .manifests
            .iter()
            .any(|d| d.ref_name() == Some(DEFAULT_IMAGE));
        if present {
            let found = self
                .list()?
                .into_iter()
                .find(|i| i.reference == DEFAULT_IMAGE);
            if let Some(info) = found {
                return Ok(info);
            }
        }
        self.build_default(None)
    }

    /// (Re)build the default image from [`BUSYBOX_PATH`].
    pub fn build_default(&self, progress: ProgressFn<'_>) -> Result<ImageInfo> {
        self.build_busybox_image(Path::new(BUSYBOX_PATH), DEFAULT_IMAGE, progress)
    }

    /// Build a busybox image from the given static busybox binary.
    pub fn build_busybox_image(
        &self,
        busybox: &Path,
        reference: &str,
        progress: ProgressFn<'_>,
    ) -> Result<ImageInfo> {
        let reference = super::reference::normalize(reference)?;
        if let Some(p) = progress {
            p(Progress::new("build", 0, 0));
        }
        let mut staging = self.staging()?;
        let layer = busybox_layer(&mut staging, busybox)?;
        let run = RunConfig {
            env: Some(vec![DEFAULT_PATH.into()]),
            cmd: Some(vec!["/bin/sh".into()]),
            entrypoint: None,
            working_dir: Some("/root".into()),
            user: None,
        };
        let size = layer.size;
        let info = store_built(self, staging, layer, run, &reference)?;
        if let Some(p) = progress {
            p(Progress::new("build", size, size));
        }
        info!(reference = %info.reference, digest = %info.digest, "built busybox image");
        Ok(info)
    }

    /// Build `blink/debian:SUITE` with `debootstrap --variant=minbase`
    /// (needs root and network access to a Debian mirror).
    pub fn build_default_debootstrap(&self, suite: &str) -> Result<ImageInfo> {
        self.build_debootstrap(suite, None)
    }

    /// [`ImageStore::build_default_debootstrap`] with progress.
    pub fn build_debootstrap(&self, suite: &str, progress: ProgressFn<'_>) -> Result<ImageInfo> {
        let suite_ok = !suite.is_empty()
            && suite.len() <= 32
            && suite
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !suite.starts_with('-');
        if !suite_ok {
            return Err(Error::InvalidArgument(format!(
                "bad Debian suite name {suite:?}"
            )));
        }
        let reference = super::reference::normalize(&format!("blink/debian:{suite}"))?;
        let debootstrap = find_program("debootstrap").ok_or_else(|| Error::RuntimeUnavailable {
            runtime: "debootstrap".into(),
            reason: "debootstrap is not installed; apt-get install debootstrap".into(),
        })?;
        let mut staging = self.staging()?;
        let rootfs = staging.dir.path().join("rootfs");
        if let Some(p) = progress {
            p(Progress::new("debootstrap", 0, 0));
        }
        info!(suite, "running debootstrap");
        let out = Command::new(&debootstrap)
            .arg("--variant=minbase")
            .arg(suite)
            .arg(&rootfs)
            .output()
            .map_err(|e| Error::io(format!("running {}", debootstrap.display()), e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::Runtime(format!(
                "debootstrap {suite} failed ({}): {}",
                out.status,
                tail.join(" / ")
            )));
        }
        let path = staging.scratch_path("layer");
        let mut layer = LayerWriter::create(path, BUILD_MTIME)?;
        pack_dir(&mut layer, &rootfs, progress)?;
        let layer = layer.finish()?;
        let _ = std::fs::remove_dir_all(&rootfs);
        let run = RunConfig {
            env: Some(vec![DEFAULT_PATH.into()]),
            cmd: Some(vec!["/bin/bash".into()]),
            entrypoint: None,
            working_dir: Some("/root".into()),
            user: None,
        };
        let info = store_built(self, staging, layer, run, &reference)?;
        info!(reference = %info.reference, digest = %info.digest, "built debootstrap image");
        Ok(info)
    }
}

/// Find a program in `PATH` and the sbin directories.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
