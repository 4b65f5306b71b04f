//! `blink-cli image ...`: the local OCI image store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use blink_sdk::image::{ImageStore, Puller};
use clap::Subcommand;

use crate::output::{self, Context, Progress};
use crate::pull_progress::PullBars;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List local images (reference, size, layers, digest).
    Ls,
    /// Pull an image from a registry (`alpine:3.20` is Docker Hub's
    /// `docker.io/library/alpine:3.20`; `host:port/repo@sha256:...` pins a
    /// digest). Mirrors, insecure registries and credentials come from
    /// `[images]` of --config (docs/IMAGES.md).
    Pull { reference: String },
    /// Import an OCI archive or a `docker save` tarball.
    Import {
        file: PathBuf,
        /// Name for an archive that carries none (e.g. myimage:1.0).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove an image and the blobs only it used; refused while a
    /// session uses it.
    Rm {
        reference: String,
        /// Remove it even if sessions use it (they keep their unpacked
        /// tree).
        #[arg(long)]
        force: bool,
    },
    /// Delete blobs no image uses and downloads left by interrupted pulls.
    Prune,
    /// Build the default image (busybox) now, or a Debian one.
    Build {
        /// Build a Debian minbase image with debootstrap (e.g. bookworm)
        /// instead of the busybox default.
        #[arg(long, value_name = "SUITE")]
        debootstrap: Option<String>,
    },
}

pub async fn dispatch(ctx: &Context, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    // The image store has a lock of its own: beside a server on this
    // host it is used directly. A remote server's images need its API.
    if let Some(url) = &ctx.server {
        anyhow::bail!(
            "image commands work on this host's data dir; the server at {url} has no image routes in its API"
        );
    }
    let dir = ctx.data_dir.join("images");
    let store = ImageStore::open(&dir)?;
    match cmd {
        ImageCommand::Ls => {
            let images = store.list()?;
            if ctx.json {
                output::print_json(&images)?;
            } else if images.is_empty() {
                println!(
                    "no images (the default image is built on first use, or with 'blink-cli image build')"
                );
            } else {
                println!("{:<40} {:<12} {:>7} DIGEST", "REFERENCE", "SIZE", "LAYERS");
                for i in images {
                    println!(
                        "{:<40} {:<12} {:>7} {}",
                        i.reference,
                        human_size(i.size),
                        i.layers,
                        i.digest
                    );
                }
            }
        }
        ImageCommand::Pull { reference } => {
            let puller = Puller::new(Arc::new(store), ctx.pull.clone())?;
            let bars = PullBars::start(ctx, &reference);
            let report = puller.pull(&reference, bars.callback()).await;
            bars.finish();
            let report = report?;
            if ctx.json {
                output::print_json(&report)?;
            } else {
                println!(
                    "pulled {} ({}) from {}: {} blobs fetched ({}), {} already here",
                    report.image.reference,
                    report.image.digest,
                    report.source,
                    report.fetched_blobs,
                    human_size(report.fetched_bytes),
                    report.cached_blobs
                );
            }
        }
        ImageCommand::Import { file, name } => {
            let progress = Progress::start(ctx, &format!("importing {}", file.display()));
            let imported =
                tokio::task::spawn_blocking(move || store.import_archive(&file, name.as_deref()))
                    .await?;
            progress.finish();
            let imported = imported?;
            if ctx.json {
                output::print_json(&imported)?;
            } else {
                for i in imported {
                    println!("imported {} ({})", i.reference, i.digest);
                }
            }
        }
        ImageCommand::Rm { reference, force } => {
            let users = blink_sdk::manager::images_in_use(&ctx.data_dir)?;
            let removed = store.remove_unless_used(&reference, &users, force)?;
            if ctx.json {
                output::print_json(&removed)?;
            } else {
                println!("removed {}", removed.reference);
            }
        }
        ImageCommand::Prune => {
            let report = tokio::task::spawn_blocking(move || store.prune()).await??;
            if ctx.json {
                output::print_json(&report)?;
            } else {
                println!(
                    "removed {} unused blobs and {} downloads ({})",
                    report.blobs,
                    report.downloads,
                    human_size(report.bytes)
                );
            }
        }
        ImageCommand::Build { debootstrap } => {
            let progress = Progress::start(ctx, "building image");
            let built = tokio::task::spawn_blocking(move || match debootstrap {
                Some(suite) => store.build_default_debootstrap(&suite),
                None => store.ensure_default(),
            })
            .await?;
            progress.finish();
            let built = built?;
            if ctx.json {
                output::print_json(&built)?;
            } else {
                println!("built {} ({})", built.reference, built.digest);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
