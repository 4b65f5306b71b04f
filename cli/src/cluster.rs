//! `blink-cli cluster nodes`: a cluster's live nodes as one of its routers
//! lists them (`--server`/`BLINK_API_URL` pointing at a router;
//! docs/SCALE.md): name, isolation class, sessions routed there against
//! its capacity, runtime, addresses.

use std::process::ExitCode;

use clap::Subcommand;

use crate::backend::Need;
use crate::output::{self, Context};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the cluster's live nodes.
    Nodes,
}

pub async fn dispatch(ctx: &Context, cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Nodes => {
            let backend = ctx.backend(Need::Files).await?;
            let listed = backend.cluster_nodes().await?;
            if ctx.json {
                output::print_json(&listed)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<10} {:>9} {:<8} {:<22} SSH",
                "NAME", "ISOLATION", "SESSIONS", "RUNTIME", "REST"
            );
            for node in listed["nodes"].as_array().into_iter().flatten() {
                let text = |key: &str| node[key].as_str().unwrap_or("-").to_owned();
                let sessions = format!(
                    "{}/{}",
                    node["sessions"].as_u64().unwrap_or(0),
                    node["capacity"]["sessions"].as_u64().unwrap_or(0)
                );
                println!(
                    "{:<20} {:<10} {:>9} {:<8} {:<22} {}",
                    text("name"),
                    text("isolation"),
                    sessions,
                    text("runtime"),
                    text("rest"),
                    text("ssh")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
