//! The audit log: one JSON line per thing a client did, in a file rotated
//! by size (docs/OBSERVABILITY.md).
//!
//! The events are the server's own structured log lines of a few targets
//! (below): every SSH login and refusal with its reason, connection,
//! channel (kind, command, exit status, bytes), SFTP operation, forward,
//! egress connection, and every REST request that changes something. They
//! are written by a tracing layer through a bounded, lossy queue to a
//! writer thread: a slow or full disk loses audit lines (counted in
//! `blink_audit_lines_lost_total`), never holds up a session.

use std::io::Write;
use std::path::{Path, PathBuf};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use serde::Deserialize;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};

/// The log targets whose lines are audit events.
pub const TARGETS: [&str; 10] = [
    "blink::ssh::auth",
    "blink::ssh::admission",
    "blink::ssh::connection",
    "blink::ssh::channel",
    "blink::ssh::forward",
    "blink::sftp",
    "blink::egress",
    "blink::rest::request",
    "blink::recording",
    "blink::image",
];

/// The `[audit]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// Default: `<data>/audit/audit.jsonl`.
    pub path: Option<PathBuf>,
    /// A file is rotated once it passes this size (whole lines kept).
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` newest).
    pub keep: usize,
    /// Lines waiting for the writer; past it, lines are lost (counted).
    pub queue_lines: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            max_bytes: 64 << 20,
            keep: 8,
            queue_lines: 65_536,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes < 4096 {
            return Err("audit.max_bytes must be at least 4096".into());
        }
        if self.keep == 0 || self.keep > 1000 {
            return Err("audit.keep must be 1 to 1000".into());
        }
        if self.queue_lines == 0 {
            return Err("audit.queue_lines must be at least 1".into());
        }
        Ok(())
    }

    pub fn path_in(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join("audit").join("audit.jsonl"))
    }
}

/// A layer for the process's subscriber (boxed: it is put in place once
/// the config is read).
pub type Layer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The audit layer and the guard that flushes its queue when dropped (at
/// exit).
pub fn layer(
    config: &AuditConfig,
    data_dir: &Path,
) -> std::io::Result<(Layer, tracing_appender::non_blocking::WorkerGuard)> {
    let path = config.path_in(data_dir);
    let dir = path.parent().unwrap_or(Path::new("."));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true).create(true).append(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let file = FileRotate::new(
        &path,
        AppendCount::new(config.keep),
        ContentLimit::BytesSurpassed(usize::try_from(config.max_bytes).unwrap_or(usize::MAX)),
        Compression::None,
        Some(open),
    );
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(config.queue_lines)
        .thread_name("blink-audit")
        .finish(Counted(file));
    let dropped = writer.error_counter();
    // Lines the queue dropped show in the metric at each scrape-worthy
    // moment: a small task adds what the counter gained.
    std::thread::Builder::new()
        .name("blink-audit-count".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let now = dropped.dropped_lines();
                if now > seen {
                    metrics::counter!(crate::metrics::AUDIT_LINES_LOST_TOTAL)
                        .increment((now - seen) as u64);
                    seen = now;
                }
            }
        })?;
    let targets = TARGETS.iter().fold(Targets::new(), |t, name| {
        t.with_target(*name, LevelFilter::INFO)
    });
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(targets);
    Ok((Box::new(layer), guard))
}

/// The file, with write errors (a full disk) counted as lost lines
/// instead of failing the writer.
struct Counted(FileRotate<AppendCount>);

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.write_all(buf).is_err() {
            metrics::counter!(crate::metrics::AUDIT_LINES_LOST_TOTAL).increment(1);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}
