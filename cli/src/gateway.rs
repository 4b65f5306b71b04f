//! `blink-cli gateway fingerprint`: the SSH host key fingerprint of the
//! `blink-server` on this data dir, to compare with what `ssh` shows.

use std::path::PathBuf;
use std::process::ExitCode;

use blink_sdk::manager::keys;
use clap::Subcommand;

use crate::output::{self, Context};

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Print the SSH host key fingerprint (SHA256).
    Fingerprint {
        /// Host key file, when the server's config names one. Default:
        /// <data-dir>/gateway/ssh_host_ed25519_key.
        #[arg(long)]
        host_key: Option<PathBuf>,
    },
}

pub fn dispatch(ctx: &Context, cmd: GatewayCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GatewayCommand::Fingerprint { host_key } => {
            let path = host_key.unwrap_or_else(|| keys::default_host_key_path(&ctx.data_dir));
            if !path.exists() {
                anyhow::bail!(
                    "no host key at {}: start blink-server once to generate it",
                    path.display()
                );
            }
            let fingerprint = keys::private_key_file_fingerprint(&path)?;
            if ctx.json {
                output::print_json(&serde_json::json!({
                    "fingerprint": fingerprint,
                    "path": path,
                }))?;
            } else {
                println!("{fingerprint}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
