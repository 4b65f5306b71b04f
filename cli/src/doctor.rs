//! `blink-cli doctor`: which runtime is usable here, which one `--runtime`
//! selects, and why; and which way commands go (backend.rs).

use std::process::ExitCode;

use crate::backend::Backend;
use crate::output::{self, Context};

pub async fn doctor(ctx: &Context) -> anyhow::Result<ExitCode> {
    let report = blink_sdk::runtime::diagnose(ctx.runtime);
    let path = Backend::describe(&ctx.data_dir, ctx.server.as_deref()).await?;
    if ctx.json {
        output::print_json(&serde_json::json!({
            "runtimes": report,
            "data_dir": ctx.data_dir,
            "path": path,
        }))?;
    } else {
        for r in &report {
            let d = &r.diagnosis;
            println!(
                "{}: {}{}",
                d.runtime,
                if d.usable { "usable" } else { "not usable" },
                if r.selected { " (selected)" } else { "" }
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
        match report.iter().find(|r| r.selected) {
            Some(r) => println!("runtime: {} ({})", r.diagnosis.runtime, r.reason),
            None => println!(
                "runtime: none ({})",
                report.first().map_or("", |r| r.reason.as_str())
            ),
        }
        println!("data dir: {}", ctx.data_dir.display());
        println!("path: {path}");
    }
    // Through a server, its runtime is what counts; here, the selected
    // one must be usable.
    let selected = report.iter().any(|r| r.selected && r.diagnosis.usable);
    Ok(if path.kind == "server" || selected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
