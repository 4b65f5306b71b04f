//! `blink-cli doctor`: which runtime is usable here, and why; and which
//! way commands go (backend.rs).

use std::process::ExitCode;

use crate::backend::Backend;
use crate::output::{self, Context};

pub async fn doctor(ctx: &Context) -> anyhow::Result<ExitCode> {
    let report = blink_sdk::runtime::diagnose();
    let path = Backend::describe(&ctx.data_dir, ctx.server.as_deref()).await?;
    if ctx.json {
        output::print_json(&serde_json::json!({
            "runtimes": report,
            "data_dir": ctx.data_dir,
            "path": path,
        }))?;
    } else {
        for d in &report {
            println!(
                "{}: {}",
                d.runtime,
                if d.usable { "usable" } else { "not usable" }
            );
            for c in &d.checks {
                println!(
                    "  [{}] {}: {}",
                    if c.ok { "ok" } else { "--" },
                    c.name,
                    c.detail
                );
            }
        }
        println!("data dir: {}", ctx.data_dir.display());
        println!("path: {path}");
    }
    // Through a server, its runtime is what counts; here, one must do.
    let any = path.kind == "server" || report.iter().any(|d| d.usable);
    Ok(if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
