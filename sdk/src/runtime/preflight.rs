//! Can this host boot a BoxLite micro-VM? The verdict `auto` selection and
//! `runtime = "boxlite"` rest on (docs/BOXLITE.md).
//!
//! `/dev/kvm` opening is not enough: on hosts whose KVM is `kvm_pvm`
//! (page-table based virtualization) the device opens and `KVM_CREATE_VM`
//! succeeds, yet a standard guest kernel aborts on its first instruction
//! PVM cannot emulate. So the checks are: the device opens, the module
//! behind it is hardware virtualization (`kvm_intel` / `kvm_amd`) and not
//! `kvm_pvm`, and this build has the boxlite runtime. The last word is
//! meant to be a tiny real boot; until that lands the preflight never
//! calls a host usable on the module checks alone (see [`BOOT_CHECK`]).

use std::path::{Path, PathBuf};

use super::Check;

/// The verdict on a `kvm_pvm` host.
pub const KVM_PVM_VERDICT: &str = "kvm_pvm: PVM cannot boot micro-VM guests (see docs/BOXLITE.md)";

/// The verdict of a build without the `boxlite` cargo feature.
pub const NOT_BUILT_VERDICT: &str = "this build has no boxlite runtime (feature `boxlite`)";

/// Name of the final check, a tiny real boot.
/// TODO(boxlite-boot-preflight): boot a minimal box (RootfsPath of a tiny
/// OCI layout, `true` as the command) with a bounded timeout and treat a
/// failed boot as the verdict. Until then this check fails with a clear
/// detail, so `auto` never picks a runtime it has not seen boot.
pub const BOOT_CHECK: &str = "test boot";

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
    boxlite_at(&HostPaths::default(), cfg!(feature = "boxlite"))
}

/// The boxlite preflight against `paths`, for a build with or without the
/// runtime.
pub fn boxlite_at(paths: &HostPaths, built: bool) -> Preflight {
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
    checks.push(Check {
        name: BOOT_CHECK.into(),
        ok: false,
        detail: if host_ok {
            "not yet implemented: the runtime is not selected before a test boot proves it (docs/BOXLITE.md)".into()
        } else {
            "skipped: an earlier check failed".into()
        },
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
        let p = boxlite_at(&paths, true);
        assert!(!p.usable());
        assert_eq!(p.verdict.as_deref(), Some(KVM_PVM_VERDICT));
    }

    #[test]
    fn missing_device_and_missing_feature_are_both_named() {
        let (_d, paths) = host(false, &[]);
        let verdict = boxlite_at(&paths, false).verdict.unwrap();
        assert!(verdict.contains("is missing: no KVM"), "{verdict}");
        assert!(
            verdict.contains("neither kvm_intel nor kvm_amd"),
            "{verdict}"
        );
        assert!(verdict.contains(NOT_BUILT_VERDICT), "{verdict}");
    }

    #[test]
    fn hardware_kvm_with_the_feature_still_waits_for_a_test_boot() {
        let (_d, paths) = host(true, &["kvm", "kvm_amd"]);
        let p = boxlite_at(&paths, true);
        let failed: Vec<_> = p.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1, "{p:?}");
        assert_eq!(failed[0].name, BOOT_CHECK);
        assert!(p.verdict.unwrap().contains("not yet implemented"));
    }

    #[test]
    fn this_host_has_a_verdict() {
        let p = boxlite();
        assert!(!p.usable(), "no test boot exists yet, so no host passes");
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(
                p.verdict.as_deref().unwrap().contains(KVM_PVM_VERDICT),
                "{p:?}"
            );
        }
    }
}
