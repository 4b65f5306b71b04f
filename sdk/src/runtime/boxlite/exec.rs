//! A BoxLite execution of `blink-guest wire` as the exec wire's process:
//! its stdin takes the frames, its text stdout carries the lines, its
//! stderr (the helper's own complaints) goes to the log.

use async_trait::async_trait;
use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::runtime::wire::{WireInput, WireProcess};
use crate::types::ExitStatus;

struct Stdin(::boxlite::ExecStdin);

#[async_trait]
impl WireInput for Stdin {
    async fn send(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.0
            .write(&bytes)
            .await
            .map_err(|e| Error::Runtime(format!("writing to a boxlite execution: {e}")))
    }
}

/// The wire process of a started BoxLite execution.
pub fn wire_process(id: &str, mut execution: ::boxlite::Execution) -> Result<WireProcess> {
    let missing = |what: &str| Error::Runtime(format!("boxlite execution in {id} has no {what}"));
    let stdin = execution.stdin().ok_or_else(|| missing("stdin"))?;
    let stdout = execution.stdout().ok_or_else(|| missing("stdout"))?;
    if let Some(mut stderr) = execution.stderr() {
        let id = id.to_owned();
        tokio::spawn(async move {
            while let Some(text) = stderr.next().await {
                tracing::warn!(sandbox = %id, text = %crate::escape::Escaped(&text), "blink-guest wire");
            }
        });
    }
    Ok(WireProcess {
        input: Box::new(Stdin(stdin)),
        output: Box::pin(stdout),
        ended: Box::pin(async move {
            let result = execution
                .wait()
                .await
                .map_err(|e| Error::Runtime(format!("waiting for a boxlite execution: {e}")))?;
            Ok(ExitStatus {
                code: result.exit_code,
                signal: (result.exit_code < 0).then_some(-result.exit_code),
            })
        }),
    })
}
