//! `run`, `session run` and `session exec` through a server: one run of
//! its API (`POST /api/runs` or `/api/sessions/{name}/runs`, `?wait=true`).
//! A host script travels in the request (`script_base64`), stdin too when
//! it is not a terminal; the result is the SDK's `RunResult`, printed as
//! the direct path prints it, with the same exit codes. The output comes
//! when the program has finished (the API captures it), up to the server's
//! capture limit.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use blink_sdk::manager::Target;
use blink_sdk::types::{CapturedOutput, ErrorDetail, IsolationClass, RunResult};
use blink_sdk::{Program, RunOptions};
use hyper::Method;
use serde::Deserialize;
use serde_json::json;

use crate::api_client::{ApiClient, ApiError, segment};
use crate::output::{self, Context, Progress};
use crate::run::{TIMED_OUT, result_code};

/// Largest script read to send (the server's own limits apply too).
const MAX_SCRIPT_BYTES: u64 = 64 << 20;

/// A run as `GET /api/runs/{id}` shows it: the fields a result needs.
#[derive(Debug, Deserialize)]
struct RunView {
    id: String,
    state: String,
    session: Option<String>,
    duration_ms: Option<u64>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    stdout: Option<CapturedOutput>,
    stderr: Option<CapturedOutput>,
    box_id: Option<String>,
    isolation: Option<IsolationClass>,
    error: Option<ErrorDetail>,
}

impl RunView {
    fn finished(&self) -> bool {
        !matches!(self.state.as_str(), "queued" | "running")
    }

    /// The run's result, or why it has none.
    fn into_result(self) -> anyhow::Result<RunResult> {
        if let Some(error) = self.error {
            return Err(ApiError {
                status: 0,
                code: error.code,
                message: error.message,
            }
            .into());
        }
        let empty = || CapturedOutput::from_bytes(b"", false, 0);
        match (self.exit_code, self.box_id) {
            (Some(exit_code), Some(box_id)) => Ok(RunResult {
                exit_code,
                signal: self.signal,
                timed_out: self.state == "timed_out",
                stdout: self.stdout.unwrap_or_else(empty),
                stderr: self.stderr.unwrap_or_else(empty),
                duration_ms: self.duration_ms.unwrap_or(0),
                session: self.session,
                box_id,
                isolation: self.isolation.unwrap_or(IsolationClass::Namespace),
            }),
            _ => anyhow::bail!("run {} ended {} without a result", self.id, self.state),
        }
    }
}

pub async fn execute(
    ctx: &Context,
    client: &ApiClient,
    target: Target<'_>,
    program: &Program,
    options: RunOptions,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({
        "args": options.args,
        "env": options.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    });
    match program {
        Program::Command(argv) => body["command"] = json!(argv),
        Program::Script(path) => {
            let bytes = read_script(path)?;
            body["script_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                body["script_name"] = json!(name);
            }
        }
    }
    if let Some(cwd) = &options.cwd {
        body["cwd"] = json!(cwd);
    }
    if let Some(t) = options.timeout {
        body["timeout_secs"] = json!(t.as_secs());
    }
    if let Some(image) = &options.image {
        body["image"] = json!(image);
    }
    if !std::io::stdin().is_terminal() {
        let mut input = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut input).await?;
        if !input.is_empty() {
            body["stdin_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(input));
        }
    }
    let path = match target {
        Target::Session(name) => format!("/api/sessions/{}/runs?wait=true", segment(name)),
        Target::Ephemeral => "/api/runs?wait=true".to_owned(),
    };
    let progress = Progress::start(ctx, "running on the server");
    let view = submit_and_wait(client, &path, &body).await;
    progress.finish();
    let result = view?.into_result()?;
    if ctx.json {
        output::print_json(&result)?;
        return Ok(result_code(&result));
    }
    write_output(&result)?;
    if result.timed_out {
        eprintln!(
            "blink-cli: command timed out after {} s and was killed",
            options
                .timeout
                .map_or(result.duration_ms.div_ceil(1000), |t| t.as_secs())
        );
        return Ok(ExitCode::from(TIMED_OUT));
    }
    Ok(output::exit_code(result.exit_code))
}

/// Queue the run and wait for its end (polling if the server answered
/// before it finished).
async fn submit_and_wait(
    client: &ApiClient,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<RunView> {
    let mut view: RunView = client
        .call(Method::POST, path, Some(body))
        .await
        .map_err(explain_body_limit)?;
    while !view.finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let path = format!("/api/runs/{}", segment(&view.id));
        view = client.call(Method::GET, &path, None::<&()>).await?;
    }
    Ok(view)
}

/// The script and stdin travel in the request body: say so when it was
/// too large.
fn explain_body_limit(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<ApiError>() {
        Ok(mut api) if api.code == "body_too_large" => {
            api.message
                .push_str("; through a server, the script and stdin travel in the request body");
            api.into()
        }
        Ok(api) => api.into(),
        Err(e) => e,
    }
}

fn read_script(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => blink_sdk::Error::ScriptNotFound(path.to_path_buf()),
        _ => blink_sdk::Error::io(format!("reading script {}", path.display()), e),
    })?;
    if !meta.is_file() {
        return Err(blink_sdk::Error::InvalidArgument(format!(
            "script {} is not a regular file",
            path.display()
        ))
        .into());
    }
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(blink_sdk::Error::TooLarge {
            what: format!("script {}", path.display()),
            size: meta.len(),
            limit: MAX_SCRIPT_BYTES,
        }
        .into());
    }
    std::fs::read(path)
        .map_err(|e| blink_sdk::Error::io(format!("reading script {}", path.display()), e).into())
}

/// The program's stdout and stderr on ours, byte for byte; a note when
/// the server's capture cut them.
fn write_output(result: &RunResult) -> anyhow::Result<()> {
    let stdout = result.stdout.to_bytes()?;
    let stderr = result.stderr.to_bytes()?;
    let mut out = std::io::stdout().lock();
    out.write_all(&stdout)?;
    out.flush()?;
    let mut err = std::io::stderr().lock();
    err.write_all(&stderr)?;
    let streams = [
        ("stdout", &result.stdout, stdout.len()),
        ("stderr", &result.stderr, stderr.len()),
    ];
    for (name, captured, kept) in streams {
        if captured.truncated {
            writeln!(
                err,
                "blink-cli: the server kept the first {kept} of {} bytes of {name}",
                captured.total_bytes
            )?;
        }
    }
    Ok(())
}
