//! A session's size: CPU, memory, processes, disk, run and idle timeouts.
//! Asked for when a session is made and changed later, checked once here
//! against the configured maxima (every surface passes what it was sent);
//! held in the session's record, so it survives restarts; applied to the
//! running sandbox where the runtime can (cgroup limits), else at its next
//! start; and what the session uses, read from the kernel's counters.
//! docs/RESOURCES.md.

use std::time::Duration;

use super::store::SessionRecord;
use super::{Manager, lock, now_ms};
use crate::error::{Error, Result};
use crate::runtime::{Applied, Limits, LimitsApplied};
use crate::types::{Resources, ResourcesChanged, SessionStats};

/// Smallest CPU quota: the kernel's smallest CFS quota (1 ms per 100 ms).
pub const MIN_CPUS: f64 = 0.01;
/// Smallest memory limit: a sandbox's own processes (init, an execution's
/// helper) need a few MiB before the program does.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Fewest processes: init and an execution's helpers take some.
pub const MIN_PIDS: u64 = 16;

/// What a caller asks for; `None` leaves a field as it is (a change) or
/// takes the configured default (a new session).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceRequest {
    /// CPU quota in cores (fractional).
    pub cpus: Option<f64>,
    pub memory_mib: Option<u64>,
    pub pids: Option<u64>,
    /// Disk size: a new session's, or a larger one for an existing
    /// session's disk (grown when it next starts; disks never shrink).
    pub disk_mib: Option<u64>,
    pub run_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
}

/// Figures as a client sent them (JSON numbers: any sign, size or
/// fraction), so that a bad one is refused naming its field rather than
/// failing to parse.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceNumbers {
    pub cpus: Option<f64>,
    pub memory_mib: Option<f64>,
    pub pids: Option<f64>,
    pub disk_mib: Option<f64>,
    pub run_timeout_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
}

impl ResourceRequest {
    /// Whole, non-negative figures where a field counts something, else an
    /// `InvalidArgument` naming the field. Ranges are the maxima's to check.
    pub fn from_numbers(n: ResourceNumbers) -> Result<Self> {
        let whole = |field: &str, value: Option<f64>| -> Result<Option<u64>> {
            let Some(v) = value else { return Ok(None) };
            if !v.is_finite() || v < 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "{field}: must be a positive number, not {v}"
                )));
            }
            if v.fract() != 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "{field}: must be a whole number, not {v}"
                )));
            }
            // Past u64 it is above every maximum, which says so.
            Ok(Some(if v >= u64::MAX as f64 {
                u64::MAX
            } else {
                v as u64
            }))
        };
        Ok(Self {
            cpus: n.cpus,
            memory_mib: whole("memory_mib", n.memory_mib)?,
            pids: whole("pids", n.pids)?,
            disk_mib: whole("disk_mib", n.disk_mib)?,
            run_timeout_secs: whole("run_timeout_secs", n.run_timeout_secs)?,
            idle_timeout_secs: whole("idle_timeout_secs", n.idle_timeout_secs)?,
        })
    }

    /// Whether it asks for a limit the runtime enforces (not only
    /// timeouts, which the manager keeps).
    fn touches_limits(&self) -> bool {
        self.cpus.is_some()
            || self.memory_mib.is_some()
            || self.pids.is_some()
            || self.disk_mib.is_some()
    }

    /// `limits` with this request's figures in place.
    fn apply_to(&self, limits: &Limits) -> Limits {
        Limits {
            cpus: self.cpus.or(limits.cpus),
            memory_mib: self.memory_mib.or(limits.memory_mib),
            pids: self.pids.or(limits.pids),
            disk_mib: self.disk_mib.or(limits.disk_mib),
        }
    }
}

/// The most one session may ask for (an operator's bounds: `[sandbox]
/// max_*` in the server's config).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceMaxima {
    pub cpus: f64,
    pub memory_mib: u64,
    pub pids: u64,
    pub disk_mib: u64,
    pub run_timeout_secs: u64,
    pub idle_timeout_secs: u64,
}

impl ResourceMaxima {
    /// Bounds that stop typos and requests beyond this host: its cores,
    /// its memory, 32768 processes, the largest disk, a day's run and a
    /// month's idle time.
    pub fn for_this_host() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            cpus: cpus as f64,
            memory_mib: host_memory_mib().unwrap_or(1 << 20),
            pids: 32768,
            disk_mib: crate::runtime::local::MAX_DISK_MIB,
            run_timeout_secs: 24 * 3600,
            idle_timeout_secs: 30 * 24 * 3600,
        }
    }

    /// Every figure the request gives within its range, else an
    /// `InvalidArgument` naming the first field that is not.
    pub fn check(&self, r: &ResourceRequest) -> Result<()> {
        if let Some(c) = r.cpus {
            if !c.is_finite() || c < MIN_CPUS {
                return Err(Error::InvalidArgument(format!(
                    "cpus: must be at least {MIN_CPUS} (a hundredth of a core), not {c}"
                )));
            }
            if c > self.cpus {
                return Err(Error::InvalidArgument(format!(
                    "cpus: {c} is above this server's maximum, {}",
                    self.cpus
                )));
            }
        }
        let ranges = [
            (
                "memory_mib",
                r.memory_mib,
                MIN_MEMORY_MIB,
                self.memory_mib,
                " MiB",
            ),
            ("pids", r.pids, MIN_PIDS, self.pids, ""),
            (
                "disk_mib",
                r.disk_mib,
                crate::runtime::local::MIN_DISK_MIB,
                self.disk_mib,
                " MiB",
            ),
            (
                "run_timeout_secs",
                r.run_timeout_secs,
                1,
                self.run_timeout_secs,
                " s",
            ),
            (
                "idle_timeout_secs",
                r.idle_timeout_secs,
                1,
                self.idle_timeout_secs,
                " s",
            ),
        ];
        for (field, value, min, max, unit) in ranges {
            let Some(v) = value else { continue };
            let what = if field == "disk_mib" {
                "disk size "
            } else {
                ""
            };
            if v < min {
                return Err(Error::InvalidArgument(format!(
                    "{field}: {what}must be at least {min}{unit}, not {v}"
                )));
            }
            if v > max {
                return Err(Error::InvalidArgument(format!(
                    "{field}: {what}{v}{unit} is above this server's maximum, {max}{unit}"
                )));
            }
        }
        Ok(())
    }
}

/// `MemTotal` of /proc/meminfo, in MiB.
fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

impl Manager {
    /// A session's effective size: its own figures, the configured
    /// defaults for what it leaves to them.
    pub(super) fn resources_of(&self, record: &SessionRecord) -> Resources {
        Resources {
            cpus: record.limits.cpus,
            memory_mib: record.limits.memory_mib,
            pids: record.limits.pids,
            disk_mib: record.limits.disk_mib.or_else(|| {
                self.runtime
                    .disk_usage(&record.box_id)
                    .map(|d| d.size_bytes >> 20)
            }),
            run_timeout_secs: self.run_timeout_of(record).as_secs(),
            idle_timeout_secs: self.idle_timeout_of(record).as_secs(),
        }
    }

    /// The default time limit of a run in this session.
    pub(super) fn run_timeout_of(&self, record: &SessionRecord) -> Duration {
        record
            .run_timeout_secs
            .map_or(self.config.run_timeout, Duration::from_secs)
    }

    /// How long this session may idle before it is stopped.
    pub(super) fn idle_timeout_of(&self, record: &SessionRecord) -> Duration {
        record
            .idle_timeout_secs
            .map_or(self.config.idle_timeout, Duration::from_secs)
    }

    /// The limits of a new session: what it asks for (checked), the
    /// configured defaults for the rest.
    pub(super) fn limits_for_new(&self, request: &ResourceRequest) -> Result<Limits> {
        self.config.maxima.check(request)?;
        Ok(request.apply_to(&self.config.limits))
    }

    /// The limits an imported archive brings, where this server's maxima
    /// allow them; its defaults for the others (an archive comes from
    /// elsewhere: it sets no limit this server would refuse).
    pub(super) fn limits_for_import(&self, name: &str, brought: &Limits) -> Limits {
        let defaults = &self.config.limits;
        let keep = |request: ResourceRequest| self.config.maxima.check(&request).is_ok();
        let limits = Limits {
            cpus: brought
                .cpus
                .filter(|&c| {
                    keep(ResourceRequest {
                        cpus: Some(c),
                        ..Default::default()
                    })
                })
                .or(defaults.cpus),
            memory_mib: brought
                .memory_mib
                .filter(|&m| {
                    keep(ResourceRequest {
                        memory_mib: Some(m),
                        ..Default::default()
                    })
                })
                .or(defaults.memory_mib),
            pids: brought
                .pids
                .filter(|&p| {
                    keep(ResourceRequest {
                        pids: Some(p),
                        ..Default::default()
                    })
                })
                .or(defaults.pids),
            disk_mib: brought.disk_mib,
        };
        if limits != *brought {
            tracing::warn!(session = %name, ?brought, kept = ?limits, "an imported session's limits were outside this server's: its defaults apply to those");
        }
        limits
    }

    /// Change a session's size. Each field given is checked first (nothing
    /// changes if one is refused); CPU, memory and process limits change
    /// on the running sandbox where the runtime can, a disk grows at the
    /// next start, timeouts apply to what starts from now. The answer says
    /// per field which. Held in the session's record.
    pub async fn set_resources(
        &self,
        name: &str,
        request: ResourceRequest,
    ) -> Result<ResourcesChanged> {
        let slot = self.slot(name)?;
        self.config.maxima.check(&request)?;
        let _life = slot.lifecycle.lock().await;
        if slot.removed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::SessionNotFound(name.into()));
        }
        let mut record = lock(&slot.record).clone();
        if let Some(mib) = request.disk_mib {
            match self.runtime.disk_usage(&record.box_id) {
                None => {
                    return Err(Error::Unsupported(
                        "changing the disk size of a session whose disk has no size of its own \
                         (a server not running as root)"
                            .into(),
                    ));
                }
                Some(disk) if mib.saturating_mul(1 << 20) < disk.size_bytes => {
                    return Err(Error::InvalidArgument(format!(
                        "disk_mib: a disk cannot shrink: {mib} MiB is below its {} MiB",
                        disk.size_bytes >> 20
                    )));
                }
                Some(_) => {}
            }
        }
        let before = record.limits.clone();
        let limits = request.apply_to(&before);
        let by_runtime = if request.touches_limits() {
            self.runtime.update_limits(&record.box_id, &limits).await?
        } else {
            LimitsApplied::NEXT_START
        };
        record.limits = limits;
        record.run_timeout_secs = request.run_timeout_secs.or(record.run_timeout_secs);
        record.idle_timeout_secs = request.idle_timeout_secs.or(record.idle_timeout_secs);
        if let Err(e) = self.store.save(&record) {
            if request.touches_limits() {
                let _ = self.runtime.update_limits(&record.box_id, &before).await;
            }
            return Err(e);
        }
        *lock(&slot.record) = record.clone();
        slot.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if request.idle_timeout_secs.is_some() {
            self.idle_changed.notify_one();
        }
        let mut applied = std::collections::BTreeMap::new();
        let fields = [
            ("cpus", request.cpus.is_some(), by_runtime.cpus),
            (
                "memory_mib",
                request.memory_mib.is_some(),
                by_runtime.memory,
            ),
            ("pids", request.pids.is_some(), by_runtime.pids),
            ("disk_mib", request.disk_mib.is_some(), by_runtime.disk),
            (
                "run_timeout_secs",
                request.run_timeout_secs.is_some(),
                Applied::Live,
            ),
            (
                "idle_timeout_secs",
                request.idle_timeout_secs.is_some(),
                Applied::Live,
            ),
        ];
        for (field, asked, how) in fields {
            if asked {
                applied.insert(field.to_owned(), how);
            }
        }
        tracing::info!(session = %name, ?applied, limits = ?record.limits, run_timeout_secs = ?record.run_timeout_secs, idle_timeout_secs = ?record.idle_timeout_secs, "resources changed");
        Ok(ResourcesChanged {
            resources: self.resources_of(&record),
            applied,
        })
    }

    /// One reading of a session's usage and size.
    pub fn session_stats(&self, name: &str) -> Result<SessionStats> {
        let info = self.session_info(name)?;
        Ok(SessionStats {
            name: info.name,
            state: info.state,
            taken_at_ms: now_ms(),
            resources: info.resources,
            usage: info.usage,
        })
    }

    /// What the idle policy's tick follows: the shortest idle timeout of
    /// any session, the configured one included.
    pub(super) fn shortest_idle_timeout(&self) -> Duration {
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .map(|s| self.idle_timeout_of(&lock(&s.record)))
            .fold(self.config.idle_timeout, Duration::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maxima() -> ResourceMaxima {
        ResourceMaxima {
            cpus: 4.0,
            memory_mib: 8192,
            pids: 4096,
            disk_mib: 1 << 20,
            run_timeout_secs: 3600,
            idle_timeout_secs: 86400,
        }
    }

    fn refused(r: ResourceRequest) -> String {
        let e = maxima().check(&r).expect_err("refused");
        assert_eq!(e.code(), "invalid_argument");
        e.to_string()
    }

    #[test]
    fn each_bad_figure_is_refused_naming_its_field() {
        let r = ResourceRequest::default;
        assert!(
            refused(ResourceRequest {
                cpus: Some(0.0),
                ..r()
            })
            .starts_with("cpus:")
        );
        assert!(
            refused(ResourceRequest {
                cpus: Some(-1.0),
                ..r()
            })
            .starts_with("cpus:")
        );
        assert!(
            refused(ResourceRequest {
                cpus: Some(f64::NAN),
                ..r()
            })
            .starts_with("cpus:")
        );
        assert!(
            refused(ResourceRequest {
                cpus: Some(4.5),
                ..r()
            })
            .contains("maximum")
        );
        assert!(
            refused(ResourceRequest {
                memory_mib: Some(0),
                ..r()
            })
            .starts_with("memory_mib:")
        );
        assert!(
            refused(ResourceRequest {
                memory_mib: Some(8193),
                ..r()
            })
            .contains("8192 MiB")
        );
        assert!(
            refused(ResourceRequest {
                pids: Some(1),
                ..r()
            })
            .starts_with("pids:")
        );
        assert!(
            refused(ResourceRequest {
                disk_mib: Some(1),
                ..r()
            })
            .contains("disk size")
        );
        assert!(
            refused(ResourceRequest {
                run_timeout_secs: Some(0),
                ..r()
            })
            .starts_with("run_timeout_secs:")
        );
        assert!(
            refused(ResourceRequest {
                idle_timeout_secs: Some(u64::MAX),
                ..r()
            })
            .starts_with("idle_timeout_secs:")
        );
        let fine = ResourceRequest {
            cpus: Some(0.5),
            memory_mib: Some(64),
            pids: Some(64),
            disk_mib: Some(128),
            run_timeout_secs: Some(60),
            idle_timeout_secs: Some(60),
        };
        maxima().check(&fine).expect("within range");
    }

    #[test]
    fn client_numbers_must_be_whole_and_positive() {
        let n = ResourceNumbers::default;
        let err = |n: ResourceNumbers| ResourceRequest::from_numbers(n).unwrap_err().to_string();
        assert!(
            err(ResourceNumbers {
                memory_mib: Some(-1.0),
                ..n()
            })
            .starts_with("memory_mib:")
        );
        assert!(
            err(ResourceNumbers {
                pids: Some(1.5),
                ..n()
            })
            .starts_with("pids:")
        );
        let huge = ResourceRequest::from_numbers(ResourceNumbers {
            disk_mib: Some(1e30),
            ..n()
        })
        .unwrap();
        assert_eq!(huge.disk_mib, Some(u64::MAX));
        assert!(refused(huge).starts_with("disk_mib:"));
        let ok = ResourceRequest::from_numbers(ResourceNumbers {
            cpus: Some(1.5),
            memory_mib: Some(512.0),
            ..n()
        })
        .unwrap();
        assert_eq!(
            (ok.cpus, ok.memory_mib, ok.pids),
            (Some(1.5), Some(512), None)
        );
    }
}
