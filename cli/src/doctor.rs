//! `blink-cli doctor`: which runtime is usable here, which one `--runtime`
//! selects, and why.

use std::process::ExitCode;

use crate::output::{self, Context};

pub fn doctor(ctx: &Context) -> anyhow::Result<ExitCode> {
    let report = blink_sdk::runtime::diagnose(ctx.runtime);
    if ctx.json {
        output::print_json(&report)?;
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
    }
    let selected = report.iter().any(|r| r.selected && r.diagnosis.usable);
    Ok(if selected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
