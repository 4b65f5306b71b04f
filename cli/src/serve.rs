//! `blink-cli serve --socket PATH`: the V-Hub on its own (docs/VHUB.md),
//! over the data dir: the host socket at PATH, and the endpoint of every
//! session's sandbox this process runs (warm sessions start with it). A
//! `blink-server` runs the hub itself; this is for hosts without one.

use std::path::PathBuf;
use std::process::ExitCode;

use blink_sdk::vhub::{HubConfig, RunningHub};

use crate::backend::Need;
use crate::output::{self, Context};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The host socket (made 0600). Default: <data-dir>/vhub.sock.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Let every session's sandbox ask for a checkpoint of itself
    /// (`session.checkpoint`); off by default.
    #[arg(long)]
    pub allow_checkpoint: bool,
}

pub async fn serve(ctx: &Context, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let backend = ctx.backend(Need::Manager).await?;
    let Some(manager) = backend.manager() else {
        anyhow::bail!(
            "a blink-server holds {}: it runs the V-Hub already (its [vhub] socket, default <data-dir>/vhub.sock)",
            ctx.data_dir.display()
        );
    };
    let config = HubConfig {
        socket: args.socket,
        allow_checkpoint: args.allow_checkpoint,
        ..HubConfig::default()
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let running = RunningHub::start(manager.clone(), &config, &ctx.data_dir).await?;
    if ctx.json {
        output::print_json(&serde_json::json!({ "socket": running.socket }))?;
    } else {
        println!("vhub listening on {}", running.socket.display());
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(running);
    Ok(ExitCode::SUCCESS)
}
