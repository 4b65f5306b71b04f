//! `session checkpoint`, `session checkpoint rm`, `session list` and
//! `session restore`: snapshots of a session's disk.

use std::process::ExitCode;

use blink_sdk::runtime::SnapshotInfo;
use clap::{Args, Subcommand};

use crate::backend::Backend;
use crate::output::{self, Context, Progress};

/// `session checkpoint --name N --snapshot S`, or `session checkpoint rm
/// --name N --snapshot S`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub action: Option<CheckpointAction>,
    /// Session name.
    #[arg(long, short = 'n', required = true)]
    pub name: Option<String>,
    /// The snapshot's name: [a-z0-9][a-z0-9._-]{0,62}.
    #[arg(long, short = 's', required = true)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointAction {
    /// Remove a snapshot.
    Rm {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long, short = 's')]
        snapshot: String,
    },
}

pub async fn checkpoint(
    ctx: &Context,
    backend: &Backend,
    args: CheckpointArgs,
) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(CheckpointAction::Rm { name, snapshot }) => {
            backend.remove_checkpoint(&name, &snapshot).await?;
            if ctx.json {
                output::print_json(&serde_json::json!({"removed": snapshot, "session": name}))?;
            } else {
                println!("removed snapshot {snapshot} of session {name}");
            }
        }
        None => {
            let (Some(name), Some(snapshot)) = (args.name, args.snapshot) else {
                anyhow::bail!("session checkpoint needs --name and --snapshot");
            };
            let progress = Progress::start(ctx, "snapshotting the session's disk");
            let made = backend.checkpoint(&name, &snapshot).await;
            progress.finish();
            let info = made?;
            if ctx.json {
                output::print_json(&info)?;
            } else {
                println!(
                    "snapshot {} of session {name}: {} on disk, processes frozen {} ms",
                    info.name,
                    human_bytes(info.size_bytes),
                    info.frozen_ms
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(ctx: &Context, backend: &Backend, name: &str) -> anyhow::Result<ExitCode> {
    let snapshots = backend.checkpoints(name).await?;
    if ctx.json {
        output::print_json(&serde_json::json!({"session": name, "checkpoints": snapshots}))?;
    } else {
        print_table(&snapshots);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(
    ctx: &Context,
    backend: &Backend,
    name: &str,
    snapshot: &str,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let progress = Progress::start(ctx, "restoring the session's disk");
    let restored = backend.restore(name, snapshot, force).await;
    progress.finish();
    let info = restored?;
    if ctx.json {
        output::print_json(&info)?;
    } else {
        println!(
            "session {name} restored to snapshot {snapshot} ({})",
            info.state
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(snapshots: &[SnapshotInfo]) {
    if snapshots.is_empty() {
        println!("no snapshots");
        return;
    }
    println!("{:<24} {:<20} {:>10}", "SNAPSHOT", "CREATED (UTC)", "SIZE");
    for s in snapshots {
        println!(
            "{:<24} {:<20} {:>10}",
            s.name,
            utc(s.created_at),
            human_bytes(s.size_bytes)
        );
    }
}

/// `YYYY-MM-DD HH:MM:SS` of seconds since the epoch, in UTC.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_well() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_913_789), "2026-11-29 00:56:29");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
