//! The `[recording]` table: which PTY sessions are recorded, where, and
//! how long recordings are kept (docs/RECORDING.md).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The smallest `max_bytes_per_recording`: room for a header and a few
/// events.
pub const MIN_BYTES_PER_RECORDING: u64 = 4096;

/// The longest `retention_secs`: ten years.
const MAX_RETENTION_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Record at all. Off: nothing is recorded whatever the sessions'
    /// own switches say (recordings already made can still be listed,
    /// downloaded and removed).
    pub enabled: bool,
    /// Sessions recorded unless their own switch says otherwise (`PUT
    /// /api/sessions/{name}/recording`): names, or `"*"` for every one.
    pub sessions: Vec<String>,
    /// Where recordings are kept; default `<data_dir>/recordings`.
    pub dir: Option<PathBuf>,
    /// A cast stops growing here (the rest of its events are dropped and
    /// it is marked incomplete).
    pub max_bytes_per_recording: u64,
    /// Recordings that ended longer ago than this are removed (0: no age
    /// limit).
    pub retention_secs: u64,
    /// All casts together take at most this much; the oldest finished
    /// ones are removed first.
    pub max_total_bytes: u64,
    /// Record what the client types too (`"i"` events). Off by default:
    /// input holds what a terminal does not echo, passwords and other
    /// secrets typed at prompts among them.
    pub record_input: bool,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sessions: vec!["*".into()],
            dir: None,
            max_bytes_per_recording: 64 << 20,
            retention_secs: 30 * 24 * 3600,
            max_total_bytes: 1 << 30,
            record_input: false,
        }
    }
}

impl RecordingConfig {
    /// Where recordings are kept for a server on `data_dir`.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| data_dir.join("recordings"))
    }

    /// Whether the config (not a session's own switch) records `session`.
    pub fn lists(&self, session: &str) -> bool {
        self.sessions.iter().any(|s| s == "*" || s == session)
    }

    pub fn validate(&self) -> Result<(), String> {
        for name in &self.sessions {
            if name != "*" {
                blink_sdk::manager::names::validate(name)
                    .map_err(|e| format!("recording.sessions: {e}"))?;
            }
        }
        if self.max_bytes_per_recording < MIN_BYTES_PER_RECORDING {
            return Err(format!(
                "recording.max_bytes_per_recording must be at least {MIN_BYTES_PER_RECORDING}"
            ));
        }
        if self.max_total_bytes < self.max_bytes_per_recording {
            return Err(
                "recording.max_total_bytes must be at least max_bytes_per_recording".into(),
            );
        }
        if self.retention_secs > MAX_RETENTION_SECS {
            return Err(format!(
                "recording.retention_secs must be at most {MAX_RETENTION_SECS} (ten years; 0 for no age limit)"
            ));
        }
        if let Some(dir) = &self.dir
            && !dir.is_absolute()
        {
            return Err(format!(
                "recording.dir must be an absolute path, not {}",
                dir.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = RecordingConfig::default();
        assert!(!c.enabled && !c.record_input);
        assert!(c.lists("anything"));
        assert!(c.validate().is_ok());
        assert_eq!(
            c.dir(Path::new("/var/lib/blink")),
            Path::new("/var/lib/blink/recordings")
        );
        let named = RecordingConfig {
            sessions: vec!["s1".into()],
            ..c.clone()
        };
        assert!(named.lists("s1") && !named.lists("s2"));
        for (bad, field) in [
            (
                RecordingConfig {
                    sessions: vec!["../x".into()],
                    ..c.clone()
                },
                "recording.sessions",
            ),
            (
                RecordingConfig {
                    max_bytes_per_recording: 10,
                    ..c.clone()
                },
                "recording.max_bytes_per_recording",
            ),
            (
                RecordingConfig {
                    max_total_bytes: 5000,
                    ..c.clone()
                },
                "recording.max_total_bytes",
            ),
            (
                RecordingConfig {
                    retention_secs: u64::MAX,
                    ..c.clone()
                },
                "recording.retention_secs",
            ),
            (
                RecordingConfig {
                    dir: Some("rel".into()),
                    ..c.clone()
                },
                "recording.dir",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
    }
}
