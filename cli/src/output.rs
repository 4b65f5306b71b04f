//! Shared plumbing of the commands: context, manager opening, printing,
//! progress, and exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use blink_sdk::image::PullConfig;
use serde::Serialize;

use crate::backend::{Backend, Need};

pub struct Context {
    pub data_dir: PathBuf,
    pub json: bool,
    /// `[images]` of `--config`: how pulls go.
    pub pull: PullConfig,
    /// `--server` / `BLINK_API_URL`: go through that server.
    pub server: Option<String>,
    /// `--runtime`: auto, boxlite or local (the direct path).
    pub runtime: blink_sdk::runtime::selection::RuntimeChoice,
    backend: tokio::sync::OnceCell<Backend>,
}

impl Context {
    pub fn new(data_dir: PathBuf, json: bool, pull: PullConfig, server: Option<String>) -> Self {
        Self {
            data_dir,
            json,
            pull,
            server: server.filter(|s| !s.trim().is_empty()),
            runtime: Default::default(),
            backend: tokio::sync::OnceCell::new(),
        }
    }

    /// The way to Blink (backend.rs), chosen on first use.
    pub async fn backend(&self, need: Need) -> anyhow::Result<&Backend> {
        self.backend
            .get_or_try_init(|| {
                Backend::choose(
                    &self.data_dir,
                    self.server.as_deref(),
                    self.runtime,
                    &self.pull,
                    need,
                )
            })
            .await
    }

    /// Stop what the command started: sandboxes of this process end with
    /// it, and this way their cgroups and records are tidied first.
    pub async fn close(&self) {
        if let Some(Backend::Direct(m)) = self.backend.get() {
            m.shutdown().await;
        }
    }
}

/// The `[images]` table of a blink-server config file (the rest is the
/// server's business).
pub fn read_images_config(path: &std::path::Path) -> anyhow::Result<PullConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let mut doc: toml::Table = text
        .parse()
        .with_context(|| format!("config {} is not TOML", path.display()))?;
    let pull: PullConfig = match doc.remove("images") {
        Some(v) => v
            .try_into()
            .with_context(|| format!("config {}: [images]", path.display()))?,
        None => PullConfig::default(),
    };
    pull.validate()?;
    Ok(pull)
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Print an error: a JSON error body with --json, a line otherwise.
pub fn print_error(ctx: &Context, err: &anyhow::Error) {
    let (code, message) = if let Some(e) = err.downcast_ref::<blink_sdk::Error>() {
        (e.code().to_owned(), e.to_string())
    } else if let Some(e) = err.downcast_ref::<crate::api_client::ApiError>() {
        (e.code.clone(), e.message.clone())
    } else {
        ("error".to_owned(), format!("{err:#}"))
    };
    if ctx.json {
        let body = blink_sdk::types::ErrorBody {
            error: blink_sdk::types::ErrorDetail { code, message },
        };
        let _ = print_json(&body);
    } else {
        eprintln!("blink-cli: {message}");
    }
}

/// Exit code for a sandboxed command's status (0-255).
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

/// A spinner on stderr for long steps, shown only on a terminal and never
/// with --json.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn start(ctx: &Context, message: &str) -> Self {
        if ctx.json || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(Some(bar))
    }

    pub fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

/// `KEY=VALUE` from the command line.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A size in MiB from the command line: `512M`, `20G`, `1T` (binary units;
/// `MiB`, `GiB`, `TiB` too); a plain number is MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a size like 512M or 20G, got {s:?}"))?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 1,
        "G" | "GB" | "GIB" => 1024,
        "T" | "TB" | "TIB" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use M, G or T)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A duration in seconds from the command line: `90`, `90s`, `10m`, `2h`,
/// `1d`.
pub fn parse_secs(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a time like 90, 90s, 10m or 2h, got {s:?}"))?;
    let factor = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "unknown time unit {other:?} in {s:?} (use s, m, h or d)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("time {s:?} is too long"))
}

#[cfg(test)]
mod size_tests {
    use super::{parse_mib, parse_secs};

    #[test]
    fn times_parse_in_seconds() {
        assert_eq!(parse_secs("90"), Ok(90));
        assert_eq!(parse_secs("10m"), Ok(600));
        assert_eq!(parse_secs("2h"), Ok(7200));
        assert!(parse_secs("-5").is_err());
        assert!(parse_secs("5y").unwrap_err().contains("unit"));
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("20G"), Ok(20 * 1024));
        assert_eq!(parse_mib("2GiB"), Ok(2048));
        assert_eq!(parse_mib("1t"), Ok(1 << 20));
        assert!(parse_mib("").is_err());
        assert!(parse_mib("G").is_err());
        assert!(parse_mib("5X").unwrap_err().contains("unit"));
        assert!(parse_mib("99999999999999999999G").is_err());
    }
}
