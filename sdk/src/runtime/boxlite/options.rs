//! A sandbox's spec as BoxLite box options: what each of Blink's settings
//! becomes, and what a micro-VM cannot take.

use std::path::Path;

use ::boxlite::{BoxOptions, NetworkSpec, RootfsSpec};

use crate::runtime::{Limits, SandboxSpec};

/// Where the guest helper's directory appears in every box.
pub const GUEST_DIR: &str = "/.blink";
/// The helper's path in the box.
pub const GUEST: &str = "/.blink/guest";

/// Options for the box of `spec`, its root from the OCI layout `layout`
/// and the helper's host directory `guest_dir` mounted read-only.
#[allow(deprecated)] // auto_remove: kept false too, for older readers of the record
pub fn box_options(spec: &SandboxSpec, layout: &Path, guest_dir: &Path) -> BoxOptions {
    let mut volume = ::boxlite::runtime::options::VolumeSpec::bind_mount(
        guest_dir.display().to_string(),
        GUEST_DIR,
    );
    volume.read_only = true;
    BoxOptions {
        cpus: cpus(&spec.limits),
        memory_mib: memory_mib(&spec.limits),
        disk_size_gb: disk_size_gb(&spec.limits),
        rootfs: RootfsSpec::RootfsPath(layout.display().to_string()),
        volumes: vec![volume],
        // Egress goes through Blink's policy, which is not mapped onto
        // BoxLite's network yet: the box has none (docs/BOXLITE.md).
        network: NetworkSpec::Disabled,
        inbound_network: NetworkSpec::Disabled,
        // A session's disk outlives its box's runs.
        auto_remove: false,
        auto_delete: Some(0),
        detach: false,
        // The helper is the box's init: it reaps orphans and never exits,
        // whatever the image would run.
        entrypoint: Some(vec![GUEST.into(), "init".into(), "--box".into()]),
        cmd: Some(Vec::new()),
        ..BoxOptions::default()
    }
}

/// Whole vCPUs: a fraction of a core rounds up, as a VM has no fractions.
pub fn cpus(limits: &Limits) -> Option<u8> {
    limits
        .cpus
        .map(|c| c.ceil().clamp(1.0, f64::from(u8::MAX)) as u8)
}

/// Guest memory in MiB; at least 128, which BoxLite's guest needs.
pub fn memory_mib(limits: &Limits) -> Option<u32> {
    limits
        .memory_mib
        .map(|m| m.clamp(128, u64::from(u32::MAX)) as u32)
}

/// The disk in whole GB (rounded up): BoxLite sizes disks in gigabytes.
pub fn disk_size_gb(limits: &Limits) -> Option<u64> {
    limits.disk_mib.map(|m| m.div_ceil(1024).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limits: Limits) -> SandboxSpec {
        SandboxSpec {
            id: "s-1".into(),
            image: "blink/default:latest".into(),
            hostname: "s".into(),
            limits,
        }
    }

    #[test]
    fn limits_become_whole_vcpus_memory_and_gigabytes() {
        let l = Limits {
            cpus: Some(1.5),
            memory_mib: Some(64),
            pids: Some(100),
            disk_mib: Some(1500),
        };
        assert_eq!(cpus(&l), Some(2));
        assert_eq!(memory_mib(&l), Some(128));
        assert_eq!(disk_size_gb(&l), Some(2));
        let none = Limits::default();
        assert_eq!(
            (cpus(&none), memory_mib(&none), disk_size_gb(&none)),
            (None, None, None)
        );
        assert_eq!(
            cpus(&Limits {
                cpus: Some(0.1),
                ..Limits::default()
            }),
            Some(1)
        );
    }

    #[test]
    #[allow(deprecated)]
    fn a_session_box_keeps_its_disk_and_runs_the_helper() {
        let o = box_options(
            &spec(Limits {
                memory_mib: Some(512),
                ..Limits::default()
            }),
            Path::new("/data/layouts/abc"),
            Path::new("/data/boxlite/guest"),
        );
        assert!(!o.auto_remove);
        assert_eq!(o.auto_delete, Some(0));
        assert_eq!(o.memory_mib, Some(512));
        assert!(matches!(&o.rootfs, RootfsSpec::RootfsPath(p) if p == "/data/layouts/abc"));
        assert_eq!(
            o.entrypoint.as_deref(),
            Some(&[GUEST.to_owned(), "init".to_owned(), "--box".to_owned()][..])
        );
        assert!(matches!(o.network, NetworkSpec::Disabled));
        assert_eq!(o.volumes.len(), 1);
        assert_eq!(o.volumes[0].guest_path, GUEST_DIR);
        assert!(o.volumes[0].read_only);
        assert_eq!(o.volumes[0].host_path, "/data/boxlite/guest");
    }
}
