//! Can this host boot a BoxLite micro-VM? The verdict `auto` selection and
//! `runtime = "boxlite"` rest on (docs/BOXLITE.md).
//!
//! `/dev/kvm` opening is not enough: on hosts whose KVM is `kvm_pvm`
//! (page-table based virtualization) the device opens and `KVM_CREATE_VM`
//! succeeds, yet a standard guest kernel aborts on its first instruction
//! PVM cannot emulate. So the checks are: the device opens, the module
//! behind it is hardware virtualization (`kvm_intel` / `kvm_amd`) and not
//! `kvm_pvm`, and this build has the boxlite runtime. The last word is a
//! tiny real boot (see [`BOOT_CHECK`]): a box of an empty image boots and
//! runs a program, or its failure is the verdict.

use std::path::{Path, PathBuf};

use super::Check;

/// The verdict on a `kvm_pvm` host.
pub const KVM_PVM_VERDICT: &str = "kvm_pvm: PVM cannot boot micro-VM guests (see docs/BOXLITE.md)";

/// The verdict of a build without the `boxlite` cargo feature.
pub const NOT_BUILT_VERDICT: &str = "this build has no boxlite runtime (feature `boxlite`)";

/// Name of the final check, a tiny real boot: a box of an empty image
/// (the guest helper mounted in) is made, booted, runs a program and is
/// removed, within [`BOOT_TIMEOUT`]. Only run when every other check
/// passed, so hosts that cannot work never pay for it.
pub const BOOT_CHECK: &str = "test boot";

/// How long the test boot may take: a second on hardware, ten or so
/// nested under emulation.
pub const BOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// A test boot: how long it took, or why it failed.
pub type BootCheck<'a> = &'a dyn Fn() -> Result<std::time::Duration, String>;

/// Where the preflight looks; the host's `/dev` and `/sys/module` unless a
/// test points it at a directory of its own.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub dev_kvm: PathBuf,
    pub sys_module: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            dev_kvm: PathBuf::from("/dev/kvm"),
            sys_module: PathBuf::from("/sys/module"),
        }
    }
}

/// The preflight's outcome: every check, and one sentence saying why the
/// runtime is not usable (`None`: usable).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Preflight {
    pub checks: Vec<Check>,
    /// The failed checks' details, most fundamental first; `None` when
    /// every check passed.
    pub verdict: Option<String>,
}

impl Preflight {
    pub fn usable(&self) -> bool {
        self.verdict.is_none()
    }
}

/// The boxlite preflight on this host.
pub fn boxlite() -> Preflight {
    boxlite_at(&HostPaths::default(), cfg!(feature = "boxlite"), &real_boot)
}

/// The preflight without its test boot, for a manager told to run
/// `local`: nothing rests on the verdict, and a boot costs seconds.
pub fn boxlite_unbooted() -> Preflight {
    boxlite_at(&HostPaths::default(), cfg!(feature = "boxlite"), &|| {
        Err("not run: runtime = \"local\" is configured".into())
    })
}

fn real_boot() -> Result<std::time::Duration, String> {
    #[cfg(feature = "boxlite")]
    {
        super::boxlite::test_boot(BOOT_TIMEOUT)
    }
    #[cfg(not(feature = "boxlite"))]
    {
        Err(NOT_BUILT_VERDICT.into())
    }
}

/// The boxlite preflight against `paths`, for a build with or without the
/// runtime, `boot` making the test boot.
pub fn boxlite_at(paths: &HostPaths, built: bool, boot: BootCheck<'_>) -> Preflight {
    let mut checks = Vec::new();
    checks.push(kvm_device(&paths.dev_kvm));
    checks.push(kvm_module(&paths.sys_module));
    checks.push(Check {
        name: "built in".into(),
        ok: built,
        detail: if built {
            "boxlite 0.10.8".into()
        } else {
            NOT_BUILT_VERDICT.into()
        },
    });
    let host_ok = checks.iter().all(|c| c.ok);
    checks.push(if host_ok {
        match boot() {
            Ok(took) => Check {
                name: BOOT_CHECK.into(),
                ok: true,
                detail: format!("a box booted and ran a program in {} ms", took.as_millis()),
            },
            Err(e) => Check {
                name: BOOT_CHECK.into(),
                ok: false,
                detail: format!("a test box did not boot: {e}"),
            },
        }
    } else {
        Check {
            name: BOOT_CHECK.into(),
            ok: false,
            detail: "skipped: an earlier check failed".into(),
        }
    });
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok && !c.detail.starts_with("skipped"))
        .map(|c| c.detail.as_str())
        .collect();
    let verdict = (!failed.is_empty()).then(|| failed.join("; "));
    Preflight { checks, verdict }
}

/// `/dev/kvm` exists and this process may open it read-write.
fn kvm_device(path: &Path) -> Check {
    let name = path.display().to_string();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => Check {
            name,
            ok: true,
            detail: "opens read-write".into(),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check {
            name,
            ok: false,
            detail: format!("{} is missing: no KVM on this host", path.display()),
        },
        Err(e) => Check {
            name,
            ok: false,
            detail: format!("cannot open {}: {e}", path.display()),
        },
    }
}

/// The module behind `/dev/kvm` is hardware virtualization, not PVM.
fn kvm_module(sys_module: &Path) -> Check {
    let name = "hardware virtualization".to_owned();
    let has = |m: &str| sys_module.join(m).exists();
    if has("kvm_pvm") {
        return Check {
            name,
            ok: false,
            detail: KVM_PVM_VERDICT.into(),
        };
    }
    match ["kvm_intel", "kvm_amd"].into_iter().find(|m| has(m)) {
        Some(module) => Check {
            name,
            ok: true,
            detail: module.into(),
        },
        None => Check {
            name,
            ok: false,
            detail: "neither kvm_intel nor kvm_amd is loaded: no hardware virtualization".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake host: a `/dev/kvm` stand-in file (or none) and the named
    /// modules in a `/sys/module` stand-in.
    fn host(kvm: bool, modules: &[&str]) -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            dev_kvm: dir.path().join("kvm"),
            sys_module: dir.path().join("module"),
        };
        if kvm {
            std::fs::write(&paths.dev_kvm, b"").unwrap();
        }
        for m in modules {
            std::fs::create_dir_all(paths.sys_module.join(m)).unwrap();
        }
        (dir, paths)
    }

    #[test]
    fn kvm_pvm_is_the_verdict_even_when_the_device_opens() {
        let (_d, paths) = host(true, &["kvm", "kvm_pvm"]);
        let p = boxlite_at(&paths, true, &never);
        assert!(!p.usable());
        assert_eq!(p.verdict.as_deref(), Some(KVM_PVM_VERDICT));
    }

    #[test]
    fn missing_device_and_missing_feature_are_both_named() {
        let (_d, paths) = host(false, &[]);
        let verdict = boxlite_at(&paths, false, &never).verdict.unwrap();
        assert!(verdict.contains("is missing: no KVM"), "{verdict}");
        assert!(
            verdict.contains("neither kvm_intel nor kvm_amd"),
            "{verdict}"
        );
        assert!(verdict.contains(NOT_BUILT_VERDICT), "{verdict}");
    }

    /// A host that fails a module check never boots.
    fn never() -> Result<std::time::Duration, String> {
        panic!("the test boot ran although an earlier check failed")
    }

    #[test]
    fn hardware_kvm_with_the_feature_is_decided_by_the_test_boot() {
        let (_d, paths) = host(true, &["kvm", "kvm_amd"]);
        let failed = boxlite_at(&paths, true, &|| Err("KVM_EXIT_INTERNAL_ERROR".into()));
        let bad: Vec<_> = failed.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(bad.len(), 1, "{failed:?}");
        assert_eq!(bad[0].name, BOOT_CHECK);
        assert_eq!(
            failed.verdict.as_deref(),
            Some("a test box did not boot: KVM_EXIT_INTERNAL_ERROR")
        );
        let booted = boxlite_at(&paths, true, &|| Ok(std::time::Duration::from_millis(420)));
        assert!(booted.usable(), "{booted:?}");
        assert!(booted.checks.last().unwrap().detail.contains("420 ms"));
    }

    #[test]
    fn this_host_has_a_verdict() {
        let p = boxlite();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!p.usable());
            assert!(
                p.verdict.as_deref().unwrap().contains(KVM_PVM_VERDICT),
                "{p:?}"
            );
        }
    }
}
