//! `session export` and `session import`: `.boxlite` archives
//! (docs/ARCHIVE.md), with byte progress bars on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use blink_sdk::manager::ExportOptions;

use crate::backend::Backend;
use crate::output::{self, Context};

/// A byte-counting bar on stderr (terminal only, never with --json);
/// `total` when known.
pub fn bar(ctx: &Context, message: &str, total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if ctx.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

pub async fn export(
    ctx: &Context,
    backend: &Backend,
    name: &str,
    output: Option<PathBuf>,
    no_image: bool,
    snapshots: bool,
) -> anyhow::Result<ExitCode> {
    let dest = output.unwrap_or_else(|| PathBuf::from(format!("{name}.boxlite")));
    let options = ExportOptions {
        include_image: !no_image,
        include_snapshots: snapshots,
    };
    let size = match backend {
        Backend::Server(client) => {
            crate::remote_archive::export(ctx, client, name, &dest, options).await?
        }
        _ => {
            let manager = backend
                .manager()
                .ok_or_else(|| anyhow::anyhow!("no session manager here"))?;
            let bar = bar(ctx, &format!("exporting {name}"), None);
            let shown = bar.clone();
            let progress = Arc::new(move |n: u64| {
                if let Some(b) = &shown {
                    b.set_position(n);
                }
            });
            let size = manager.export_session(name, &dest, options, progress).await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            size?
        }
    };
    if ctx.json {
        output::print_json(
            &serde_json::json!({"session": name, "path": dest, "size_bytes": size}),
        )?;
    } else {
        println!(
            "exported session {name} to {} ({size} bytes)",
            dest.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn import(
    ctx: &Context,
    backend: &Backend,
    file: &Path,
    name: Option<&str>,
    replace: bool,
) -> anyhow::Result<ExitCode> {
    let total = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
        .len();
    let bar = bar(ctx, &format!("importing {}", file.display()), Some(total));
    let shown = bar.clone();
    let progress = Arc::new(move |n: u64| {
        if let Some(b) = &shown {
            b.set_position(n);
        }
    });
    let opened = match backend {
        Backend::Server(client) => {
            crate::remote_archive::import(client, file, total, name, replace, progress).await
        }
        _ => match backend.manager() {
            Some(manager) => manager
                .import_session(file, name, replace, progress)
                .await
                .map_err(Into::into),
            None => Err(anyhow::anyhow!("no session manager here")),
        },
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let opened = opened?;
    if ctx.json {
        output::print_json(&opened)?;
    } else {
        let s = &opened.session;
        println!(
            "imported session {} (box {}, image {})",
            s.name, s.box_id, s.image
        );
    }
    Ok(ExitCode::SUCCESS)
}
