//! `blink-cli gateway fingerprint`: the SSH host key fingerprint of the
//! `blink-server` on this data dir, to compare with what `ssh` shows. It
//! reads the public half the server writes beside its key (`<key>.pub`).

use std::path::PathBuf;
use std::process::ExitCode;

use blink_sdk::manager::{gateway_dir, keys::AuthorizedKey};
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
            let path =
                host_key.unwrap_or_else(|| gateway_dir(&ctx.data_dir).join("ssh_host_ed25519_key"));
            let mut public = path.clone().into_os_string();
            public.push(".pub");
            let public = PathBuf::from(public);
            let line = std::fs::read_to_string(&public).map_err(|e| {
                anyhow::anyhow!(
                    "no host key at {}: start blink-server once to write it ({e})",
                    public.display()
                )
            })?;
            let fingerprint = AuthorizedKey::parse(&line)?
                .ok_or_else(|| anyhow::anyhow!("{} holds no public key", public.display()))?
                .fingerprint;
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
