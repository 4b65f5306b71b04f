//! REST run records on disk, so that a control plane polling `GET
//! /api/runs/{id}` across a restart gets the run's result, not 404.
//!
//! Each run's view is written to `<data>/runs/<id>.json` whenever it
//! changes (queued, running, finished), by a write to a temporary file and
//! a rename: a record is whole, old or new, whatever kills the server
//! (the page cache outlives the process; no fsync is paid per run). At
//! start the records are read back: finished runs as they were, runs that
//! were queued or running as `lost`, with the reason. Records past the
//! retention, beyond the count kept, or unreadable are removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ErrorDetail;
use super::run_registry::{RunState, RunView};

/// The run records of one server.
#[derive(Debug)]
pub struct RunRecords {
    dir: PathBuf,
}

/// A run id as the registry makes them (`r-` and 32 hex digits): the
/// only file names read back.
fn is_run_id(id: &str) -> bool {
    id.strip_prefix("r-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl RunRecords {
    /// Records under `dir` (made, mode 0700: outputs are the caller's).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Write a run's view. A failure is logged and the run goes on (its
    /// result is still served from memory until a restart).
    pub fn save(&self, view: &RunView) {
        if let Err(e) = self.try_save(view) {
            tracing::warn!(run = %view.id, error = %e, "cannot write the run's record");
        }
    }

    fn try_save(&self, view: &RunView) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(view).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{}.tmp", view.id));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, self.path(&view.id)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Forget a run.
    pub fn remove(&self, id: &str) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(run = %id, error = %e, "cannot remove the run's record"),
        }
    }

    /// The records a previous server left, oldest first: at most
    /// `max_kept`, none finished longer than `retention` before `now_ms`.
    /// Runs it left unfinished are marked lost (and written so). The rest
    /// is removed.
    pub fn load(&self, max_kept: usize, retention: Duration, now_ms: u64) -> Vec<RunView> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut views = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(id) = name.strip_suffix(".json").filter(|id| is_run_id(id)) else {
                // Temporary files of writes cut short, and strangers.
                if name.starts_with(".r-") && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            };
            let read = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<RunView>(&b).ok())
                .filter(|v| v.id == id);
            match read {
                Some(view) => views.push(view),
                None => {
                    tracing::warn!(run = %id, "removing an unreadable run record");
                    self.remove(id);
                }
            }
        }
        let cutoff = now_ms.saturating_sub(retention.as_millis() as u64);
        views.retain(|v| {
            let keep = v.finished_at_ms.unwrap_or(v.created_at_ms) >= cutoff;
            if !keep {
                self.remove(&v.id);
            }
            keep
        });
        views.sort_by_key(|v| (v.created_at_ms, v.id.clone()));
        let excess = views.len().saturating_sub(max_kept);
        for v in views.drain(..excess) {
            self.remove(&v.id);
        }
        for v in views.iter_mut().filter(|v| !v.state.finished()) {
            let was = if v.state == RunState::Queued {
                "queued"
            } else {
                "running"
            };
            v.state = RunState::Lost;
            v.finished_at_ms = Some(now_ms);
            v.error = Some(ErrorDetail {
                code: "run_lost".into(),
                message: format!(
                    "the server stopped while the run was {was}; its result is unknown"
                ),
            });
            self.save(v);
        }
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, state: RunState, created: u64, finished: Option<u64>) -> RunView {
        let mut v = RunView::queued(id.into(), Some("s".into()));
        v.state = state;
        v.created_at_ms = created;
        v.finished_at_ms = finished;
        v
    }

    fn id(n: u8) -> String {
        format!("r-{}", format!("{n:02x}").repeat(16))
    }

    #[test]
    fn records_come_back_with_unfinished_runs_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let records = RunRecords::open(tmp.path()).unwrap();
        let mut done = view(&id(1), RunState::Succeeded, 1_000, Some(2_000));
        done.exit_code = Some(0);
        records.save(&done);
        records.save(&view(&id(2), RunState::Running, 3_000, None));
        records.save(&view(&id(3), RunState::Queued, 4_000, None));
        let back =
            RunRecords::open(tmp.path())
                .unwrap()
                .load(10, Duration::from_secs(3600), 10_000);
        let states: Vec<_> = back.iter().map(|v| (v.id.clone(), v.state)).collect();
        assert_eq!(
            states,
            [
                (id(1), RunState::Succeeded),
                (id(2), RunState::Lost),
                (id(3), RunState::Lost)
            ]
        );
        assert_eq!(back[0].exit_code, Some(0));
        let why = back[1].error.as_ref().unwrap();
        assert_eq!(why.code, "run_lost");
        assert!(why.message.contains("was running"), "{}", why.message);
        assert!(
            back[2]
                .error
                .as_ref()
                .unwrap()
                .message
                .contains("was queued")
        );
        // Lost is written back: a second restart reads the same.
        let again = records.load(10, Duration::from_secs(3600), 20_000);
        assert_eq!(again[1].state, RunState::Lost);
        assert_eq!(again[1].finished_at_ms, Some(10_000));
    }

    #[test]
    fn old_excess_unreadable_and_half_written_records_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let records = RunRecords::open(tmp.path()).unwrap();
        records.save(&view(&id(1), RunState::Succeeded, 1, Some(2)));
        for n in 2..6 {
            records.save(&view(
                &id(n),
                RunState::Failed,
                1_000_000 + u64::from(n),
                Some(1_000_100),
            ));
        }
        std::fs::write(tmp.path().join(format!("{}.json", id(9))), b"{not json").unwrap();
        std::fs::write(tmp.path().join(format!(".{}.tmp", id(8))), b"{").unwrap();
        std::fs::write(tmp.path().join("notes.txt"), b"left alone").unwrap();
        let back = records.load(3, Duration::from_secs(60), 1_000_200);
        let ids: Vec<_> = back.iter().map(|v| v.id.clone()).collect();
        // id 1 is past the retention; of 2..5 the three newest are kept.
        assert_eq!(ids, [id(3), id(4), id(5)]);
        let mut left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<_> = ids.iter().map(|i| format!("{i}.json")).collect();
        want.push("notes.txt".into());
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn only_run_ids_name_files() {
        assert!(is_run_id(&id(7)));
        for bad in [
            "r-",
            "../r-00",
            "r-zz",
            "x-0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_run_id(bad), "{bad}");
        }
    }
}
