//! blink-cli: local use and operations of Blink.
//!
//! Human output by default, `--json` for scripts. `run` and `session exec`
//! exit with the sandbox command's exit code; Blink's own failures exit
//! with 125 (like `docker run`), after a message naming the problem.

mod api_client;
mod archive;
mod attach;
mod backend;
mod checkpoint;
mod cluster;
mod doctor;
mod gateway;
mod image;
mod keys;
mod output;
mod pull_progress;
mod remote_archive;
mod remote_run;
mod run;
mod serve;
mod session;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for Blink's own failures (not the sandboxed command's).
const BLINK_FAILURE: u8 = 125;

#[derive(Debug, Parser)]
#[command(name = "blink-cli", version, about = "Blink: sandboxes for AI agents")]
struct Cli {
    /// Data directory (sessions, images, sandboxes). Default:
    /// $BLINK_DATA_DIR, /var/lib/blink for root, else ~/.local/share/blink.
    #[arg(long, global = true, env = "BLINK_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// blink-server's TOML config, of which the CLI reads `[images]`
    /// (mirrors, insecure registries, credentials, limits; docs/IMAGES.md).
    #[arg(long, global = true, env = "BLINK_CONFIG")]
    config: Option<PathBuf>,

    /// Go through this blink-server's REST API: http://HOST:PORT (its
    /// token in $BLINK_API_TOKEN) or unix:SOCKET. Default: the server that
    /// holds the data dir, through its socket (<data-dir>/blink.sock),
    /// else the data dir directly.
    #[arg(long, global = true, env = "BLINK_API_URL", value_name = "URL")]
    server: Option<String>,

    /// Print machine-readable JSON instead of human output.
    #[arg(long, global = true)]
    json: bool,

    /// Sandbox runtime: auto (boxlite when its preflight passes, else
    /// local), boxlite or local.
    #[arg(long, global = true, env = "BLINK_RUNTIME", default_value = "auto")]
    runtime: blink_sdk::runtime::selection::RuntimeChoice,

    /// Log verbosity (-v info, -vv debug). Logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a host script or binary once in a fresh sandbox (pipe mode).
    Run(run::RunArgs),
    /// Named sessions with a persistent disk.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// Local OCI images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Which runtime is usable here, and why; and which way commands go
    /// (directly on the data dir, or through a server).
    Doctor,
    /// The SSH gateway (`blink-server`).
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Run the V-Hub (docs/VHUB.md) on its own over the data dir.
    Serve(serve::ServeArgs),
    /// A cluster of nodes behind routers (through a router: `--server`).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blink-cli: cannot start the async runtime: {e}");
            return ExitCode::from(BLINK_FAILURE);
        }
    };
    let pull = match cli.config.as_deref().map(output::read_images_config) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let ctx = output::Context::new(PathBuf::new(), cli.json, Default::default(), None);
            output::print_error(&ctx, &e);
            return ExitCode::from(BLINK_FAILURE);
        }
        None => Default::default(),
    };
    let mut ctx = output::Context::new(
        cli.data_dir
            .clone()
            .unwrap_or_else(blink_sdk::manager::default_data_dir),
        cli.json,
        pull,
        cli.server.clone(),
    );
    ctx.runtime = cli.runtime;
    let result = runtime.block_on(async {
        let result = match cli.command {
            Command::Run(args) => run::run(&ctx, args).await,
            Command::Session(cmd) => session::dispatch(&ctx, cmd).await,
            Command::Image(cmd) => image::dispatch(&ctx, cmd).await,
            Command::Doctor => doctor::doctor(&ctx).await,
            Command::Gateway(cmd) => gateway::dispatch(&ctx, cmd),
            Command::Serve(args) => serve::serve(&ctx, args).await,
            Command::Cluster(cmd) => cluster::dispatch(&ctx, cmd).await,
        };
        ctx.close().await;
        result
    });
    // Do not wait for lingering tasks (a stdin reader blocked on a terminal).
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => {
            output::print_error(&ctx, &err);
            ExitCode::from(BLINK_FAILURE)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLINK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
