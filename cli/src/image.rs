//! `blink-cli image ...`: the local OCI image store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use blink_sdk::image::{ImageInfo, ImageStore, PruneReport, PullReport, Puller};
use clap::Subcommand;
use hyper::Method;
use serde::Deserialize;

use crate::api_client::{Endpoint, segment};
use crate::backend::{Backend, Need};
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
    // Through the server when one holds the data dir or is named: its
    // image routes (list, pull, remove, prune); importing and building
    // work on this host's store, which has a lock of its own.
    if let Backend::Server(client) = ctx.backend(Need::Files).await? {
        let on_this_host = matches!(client.endpoint, Endpoint::Unix(_));
        match cmd {
            ImageCommand::Ls => {
                #[derive(Deserialize)]
                struct List {
                    images: Vec<ImageInfo>,
                }
                let list: List = client.call(Method::GET, "/api/images", NO_BODY).await?;
                print_list(ctx, list.images)?;
            }
            ImageCommand::Pull { reference } => {
                let progress = Progress::start(ctx, &format!("pulling {reference} on the server"));
                let body = serde_json::json!({ "reference": reference });
                let report = client
                    .call::<PullReport>(Method::POST, "/api/images/pull", Some(&body))
                    .await;
                progress.finish();
                print_pull(ctx, &report?)?;
            }
            ImageCommand::Rm { reference, force } => {
                let path = format!(
                    "/api/images?reference={}&force={force}",
                    segment(&reference)
                );
                let removed: ImageInfo = client.call(Method::DELETE, &path, NO_BODY).await?;
                print_removed(ctx, &removed)?;
            }
            ImageCommand::Prune => {
                let report: PruneReport = client
                    .call(Method::POST, "/api/images/prune", NO_BODY)
                    .await?;
                print_prune(ctx, &report)?;
            }
            cmd if on_this_host => return here(ctx, cmd).await,
            _ => anyhow::bail!(
                "image import and build work on this host's data dir: run them on the server's host (the server at {} has no route for them)",
                client.endpoint
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    here(ctx, cmd).await
}

/// On this host's image store.
async fn here(ctx: &Context, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let dir = ctx.data_dir.join("images");
    let store = ImageStore::open(&dir)?;
    match cmd {
        ImageCommand::Ls => print_list(ctx, store.list()?)?,
        ImageCommand::Pull { reference } => {
            let puller = Puller::new(Arc::new(store), ctx.pull.clone())?;
            let bars = PullBars::start(ctx, &reference);
            let report = puller.pull(&reference, bars.callback()).await;
            bars.finish();
            print_pull(ctx, &report?)?;
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
            print_removed(ctx, &removed)?;
        }
        ImageCommand::Prune => {
            let report = tokio::task::spawn_blocking(move || store.prune()).await??;
            print_prune(ctx, &report)?;
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

fn print_list(ctx: &Context, images: Vec<ImageInfo>) -> anyhow::Result<()> {
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
    Ok(())
}

fn print_pull(ctx: &Context, report: &PullReport) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(report)?;
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
    Ok(())
}

fn print_removed(ctx: &Context, removed: &ImageInfo) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(removed)?;
    } else {
        println!("removed {}", removed.reference);
    }
    Ok(())
}

fn print_prune(ctx: &Context, report: &PruneReport) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(report)?;
    } else {
        println!(
            "removed {} unused blobs and {} downloads ({})",
            report.blobs,
            report.downloads,
            human_size(report.bytes)
        );
    }
    Ok(())
}

/// `None` as a body of no type.
const NO_BODY: Option<&()> = None;

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
