//! Snapshots of a session's disk (the seed's "checkpoints"): make, list,
//! restore, remove, and the source of a clone. The runtime copies disks;
//! this file holds the rules: names, the session's lifecycle lock, and
//! that a restore stops the session and starts it again if it ran or is
//! warm.

use std::sync::atomic::Ordering;

use super::sessions::refuse_if_busy;
use super::{Manager, lock, names};
use crate::error::{Error, Result};
use crate::runtime::SnapshotInfo;

/// Where a new session's disk comes from: another session as it is now,
/// or one of its snapshots (`A` or `A@S` on the command line and in REST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSource {
    pub session: String,
    pub snapshot: Option<String>,
}

impl CloneSource {
    /// Parse `A` or `A@S`; both names are checked.
    pub fn parse(text: &str) -> Result<Self> {
        let (session, snapshot) = match text.split_once('@') {
            Some((s, snap)) => (s, Some(snap)),
            None => (text, None),
        };
        names::validate(session)?;
        if let Some(s) = snapshot {
            names::validate_snapshot(s)?;
        }
        Ok(Self {
            session: session.to_owned(),
            snapshot: snapshot.map(str::to_owned),
        })
    }
}

impl Manager {
    /// Snapshot a session's disk as `snapshot`; a running session's
    /// processes are frozen for the copy.
    pub async fn checkpoint(&self, name: &str, snapshot: &str) -> Result<SnapshotInfo> {
        names::validate_snapshot(snapshot)?;
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        let box_id = lock(&slot.record).box_id.clone();
        let info = self
            .runtime
            .snapshot(&box_id, snapshot)
            .await
            .map_err(|e| named(e, name))?;
        tracing::info!(session = %name, snapshot = %snapshot, size = info.size_bytes, frozen_ms = info.frozen_ms, "snapshot made");
        Ok(info)
    }

    /// A session's snapshots, oldest first.
    pub fn checkpoints(&self, name: &str) -> Result<Vec<SnapshotInfo>> {
        let slot = self.slot(name)?;
        let box_id = lock(&slot.record).box_id.clone();
        self.runtime.snapshots(&box_id).map_err(|e| named(e, name))
    }

    /// Put a session's disk back as `snapshot` was: files made since are
    /// gone, removed ones are back. The session is stopped for it (refused
    /// while something runs in it, unless `force`) and started again if it
    /// was running or is warm.
    pub async fn restore_checkpoint(&self, name: &str, snapshot: &str, force: bool) -> Result<()> {
        names::validate_snapshot(snapshot)?;
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        if slot.removed.load(Ordering::SeqCst) {
            return Err(Error::SessionNotFound(name.into()));
        }
        let record = lock(&slot.record).clone();
        let known = self
            .runtime
            .snapshots(&record.box_id)?
            .iter()
            .any(|s| s.name == snapshot);
        if !known {
            return Err(Error::SnapshotNotFound {
                session: name.into(),
                snapshot: snapshot.into(),
            });
        }
        refuse_if_busy(&slot, name, force)?;
        let was_running = self.runtime.is_running(&record.box_id);
        if was_running {
            self.runtime.stop(&record.box_id).await?;
        }
        slot.changes.fetch_add(1, Ordering::SeqCst);
        self.runtime
            .restore(&record.box_id, snapshot)
            .await
            .map_err(|e| named(e, name))?;
        tracing::info!(session = %name, snapshot = %snapshot, "snapshot restored");
        if was_running || record.warm {
            self.runtime.start(&self.spec_of(&record)).await?;
        }
        Ok(())
    }

    /// Remove a snapshot.
    pub async fn remove_checkpoint(&self, name: &str, snapshot: &str) -> Result<()> {
        names::validate_snapshot(snapshot)?;
        let slot = self.slot(name)?;
        let _life = slot.lifecycle.lock().await;
        let box_id = lock(&slot.record).box_id.clone();
        self.runtime
            .remove_snapshot(&box_id, snapshot)
            .await
            .map_err(|e| named(e, name))
    }
}

/// Runtimes name sandboxes by box id; clients know the session's name.
pub(super) fn named(e: Error, session: &str) -> Error {
    match e {
        Error::SnapshotNotFound { snapshot, .. } => Error::SnapshotNotFound {
            session: session.into(),
            snapshot,
        },
        Error::SnapshotExists { snapshot, .. } => Error::SnapshotExists {
            session: session.into(),
            snapshot,
        },
        Error::SessionBusy { reason, .. } => Error::SessionBusy {
            name: session.into(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_sources_parse_and_are_checked() {
        assert_eq!(
            CloneSource::parse("a").unwrap(),
            CloneSource {
                session: "a".into(),
                snapshot: None
            }
        );
        assert_eq!(
            CloneSource::parse("a@step-1").unwrap().snapshot.as_deref(),
            Some("step-1")
        );
        assert!(CloneSource::parse("a@").is_err());
        assert!(CloneSource::parse("@s").is_err());
        assert!(CloneSource::parse("a@../x").is_err());
        assert!(CloneSource::parse("A").is_err());
    }
}
