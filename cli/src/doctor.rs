//! `blink-cli doctor`: which runtime is usable here, and why.

use std::process::ExitCode;

use crate::output::{self, Context};

pub fn doctor(ctx: &Context) -> anyhow::Result<ExitCode> {
    let report = blink_sdk::runtime::diagnose();
    if ctx.json {
        output::print_json(&report)?;
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
    }
    let any = report.iter().any(|d| d.usable);
    Ok(if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
