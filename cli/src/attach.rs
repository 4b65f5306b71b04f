//! `session spawn` through a server: `POST .../spawn`, then attached over
//! the WebSocket (gateway/src/rest/spawn.rs, docs/PTY.md). Binary frames
//! from the server are output (raw terminal bytes with a TTY; otherwise a
//! leading byte names the stream, 1 stdout, 2 stderr), text frames JSON
//! events (`attached`, `exit`, `lagged`, `error`). We send input as binary
//! frames and control as text (`resize` on SIGWINCH, `eof` when our stdin
//! ends). The local terminal is raw while attached, as on the direct path.

use std::collections::BTreeMap;
use std::process::ExitCode;

use blink_sdk::manager::{SpawnInfo, Stream};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::api_client::{ApiClient, segment};
use crate::backend::session_path;
use crate::output::{self, Context};
use crate::session::write_chunk;
use crate::terminal;

/// Events from the server.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    Attached,
    Lagged { missed_chunks: u64 },
    Exit { code: i32 },
    Error { message: String },
}

pub async fn spawn(
    ctx: &Context,
    client: &ApiClient,
    name: &str,
    tty: bool,
    env: Vec<(String, String)>,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({
        "command": command,
        "env": env.into_iter().collect::<BTreeMap<_, _>>(),
        "tty": tty,
    });
    if tty {
        let size = terminal::size();
        body["rows"] = json!(size.rows);
        body["cols"] = json!(size.cols);
    }
    let info: SpawnInfo = client
        .call(Method::POST, &session_path(name, "/spawn"), Some(&body))
        .await?;
    if ctx.json && !tty {
        eprintln!("{}", serde_json::to_string(&info)?);
    }
    let path = session_path(name, &format!("/executions/{}/attach", segment(&info.id)));
    let mut request = format!("ws://{}{path}", client.authority()).into_client_request()?;
    if let Some(bearer) = client.bearer() {
        request
            .headers_mut()
            .insert(hyper::header::AUTHORIZATION, bearer.parse()?);
    }
    let conn = client.connect().await?;
    let (mut socket, _) = tokio_tungstenite::client_async(request, conn)
        .await
        .map_err(|e| anyhow::anyhow!("attaching to {} in session {name}: {e}", info.id))?;

    let raw = if tty {
        terminal::RawMode::enter()
    } else {
        None
    };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 8192];
    let mut stdin_open = true;
    let mut code = None;
    loop {
        tokio::select! {
            msg = socket.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if tty {
                        write_chunk(&mut stdout, &mut stderr, Stream::Stdout, &data).await;
                    } else if let Some((&which, bytes)) = data.split_first() {
                        let stream = if which == 2 { Stream::Stderr } else { Stream::Stdout };
                        write_chunk(&mut stdout, &mut stderr, stream, bytes).await;
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Event>(text.as_str()) {
                    Ok(Event::Exit { code: c }) => code = Some(c),
                    Ok(Event::Lagged { missed_chunks }) => {
                        tracing::warn!(missed = missed_chunks, "output came faster than the terminal took it");
                    }
                    Ok(Event::Error { message }) => tracing::warn!(%message, "the server refused a control message"),
                    Ok(Event::Attached) | Err(_) => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    if !tty {
                        let _ = socket.send(Message::Text(json!({"type": "eof"}).to_string().into())).await;
                    }
                }
                Ok(n) => {
                    if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
            _ = winch.recv(), if tty => {
                let size = terminal::size();
                let resize = json!({"type": "resize", "rows": size.rows, "cols": size.cols});
                let _ = socket.send(Message::Text(resize.to_string().into())).await;
            }
        }
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    drop(raw);
    match code {
        Some(code) => Ok(output::exit_code(code)),
        None => anyhow::bail!(
            "the connection to the server closed before {} in session {name} ended",
            info.id
        ),
    }
}
