//! `blink-cli run` and the streaming used by every pipe-mode command: the
//! sandbox's stdout and stderr go to ours as they come, byte for byte, our
//! stdin goes to the command, and we exit with its exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use blink_sdk::manager::Target;
use blink_sdk::runtime::Execution;
use blink_sdk::{Manager, Program, RunOptions};
use clap::Args;
use tokio::io::AsyncWriteExt;

use crate::backend::{Backend, Need};
use crate::output::{self, Context, Progress};

/// Exit code when a run hits its timeout (as timeout(1) reports it).
pub const TIMED_OUT: u8 = 124;

/// The exit code of a finished run: the program's, or 124 on a timeout.
pub fn result_code(result: &blink_sdk::types::RunResult) -> ExitCode {
    if result.timed_out {
        ExitCode::from(TIMED_OUT)
    } else {
        output::exit_code(result.exit_code)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Host script or binary to copy into the sandbox and run.
    pub path: PathBuf,
    /// Arguments passed to it.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Image to run in (default: the built-in default image).
    #[arg(long)]
    pub image: Option<String>,
    #[command(flatten)]
    pub opts: ExecOpts,
}

/// Options shared by run, session run and session exec.
#[derive(Debug, Args)]
pub struct ExecOpts {
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Set an environment variable in the sandbox (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = output::parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[arg(long)]
    pub cwd: Option<String>,
}

impl ExecOpts {
    pub fn options(&self, args: Vec<String>, image: Option<String>) -> RunOptions {
        RunOptions {
            timeout: self.timeout.map(Duration::from_secs),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            image,
            args,
            ..RunOptions::default()
        }
    }
}

pub async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<ExitCode> {
    let backend = ctx.backend(Need::Manager).await?;
    let options = args.opts.options(args.args, args.image);
    execute(
        ctx,
        backend,
        Target::Ephemeral,
        &Program::Script(args.path),
        options,
    )
    .await
}

/// Run a program and report as the user asked: streamed, or one JSON
/// result; through a server, as one run of its API.
pub async fn execute(
    ctx: &Context,
    backend: &Backend,
    target: Target<'_>,
    program: &Program,
    options: RunOptions,
) -> anyhow::Result<ExitCode> {
    match backend {
        Backend::Server(client) => {
            crate::remote_run::execute(ctx, client, target, program, options).await
        }
        _ => {
            let manager = backend
                .manager()
                .ok_or_else(|| anyhow::anyhow!("no session manager to run with"))?;
            execute_here(ctx, manager, target, program, options).await
        }
    }
}

/// Run in this process's manager.
async fn execute_here(
    ctx: &Context,
    manager: &Manager,
    target: Target<'_>,
    program: &Program,
    mut options: RunOptions,
) -> anyhow::Result<ExitCode> {
    if ctx.json {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            let mut input = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut input).await?;
            options.stdin = Some(input);
        }
        let result = manager.run(target, program, options).await?;
        output::print_json(&result)?;
        return Ok(result_code(&result));
    }
    let timeout = options.timeout.unwrap_or(manager.config().run_timeout);
    let progress = Progress::start(ctx, "preparing sandbox");
    let started = manager.start(target, program, &options, None).await;
    progress.finish();
    let mut started = started?;
    let outcome = stream(&mut started.execution, timeout).await;
    manager.finish(started).await?;
    let (status, timed_out) = outcome?;
    if timed_out {
        eprintln!(
            "blink-cli: command timed out after {} s and was killed",
            timeout.as_secs()
        );
        return Ok(ExitCode::from(TIMED_OUT));
    }
    Ok(output::exit_code(status.code))
}

/// Wire an execution to our stdio until it ends. Returns its status and
/// whether it timed out.
pub async fn stream(
    exec: &mut Execution,
    timeout: Duration,
) -> anyhow::Result<(blink_sdk::types::ExitStatus, bool)> {
    if let Some(mut stdin) = exec.stdin.take() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut stdin).await;
            let _ = stdin.shutdown().await;
        });
    }
    let out = exec.stdout.take().map(|mut r| {
        tokio::spawn(async move {
            let mut w = tokio::io::stdout();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.flush().await;
        })
    });
    let err = exec.stderr.take().map(|mut r| {
        tokio::spawn(async move {
            let mut w = tokio::io::stderr();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.flush().await;
        })
    });
    let control = exec.control.clone();
    let (status, timed_out) = match tokio::time::timeout(timeout, control.wait()).await {
        Ok(s) => (s?, false),
        Err(_) => {
            control.kill()?;
            (control.wait().await?, true)
        }
    };
    for handle in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
    }
    Ok((status, timed_out))
}
