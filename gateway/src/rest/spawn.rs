//! Spawned executions and their WebSocket attach (see docs/PTY.md). A
//! spawn with a terminal is recorded if its session is (docs/RECORDING.md).
//!
//! Frames from the server: binary frames carry output (raw terminal bytes
//! in PTY mode; in pipe mode one leading byte says the stream, 1 stdout,
//! 2 stderr); text frames carry JSON events (`attached`, `exit`, `lagged`,
//! `error`). Frames from the client: binary frames are input (an empty one
//! closes stdin); text frames are JSON control (`resize`, `signal`, `eof`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blink_sdk::manager::{Attachment, Chunk, Stream, policy};
use blink_sdk::runtime::PtySize;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult, ErrorResponse};
use crate::recording::Recordings;

/// Largest WebSocket message a client may send.
const MAX_WS_MESSAGE: usize = 1 << 20;

/// `POST /api/sessions/{name}/spawn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run on a terminal (PTY mode); otherwise stdout and stderr are pipes.
    #[serde(default)]
    pub tty: bool,
    /// Terminal rows (PTY mode; default 24).
    pub rows: Option<u16>,
    /// Terminal columns (PTY mode; default 80).
    pub cols: Option<u16>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpawnList {
    /// Spawns (`id`, `session`, `argv`, `tty`, `started_at`, `exit`,
    /// `attached`).
    #[schema(value_type = Vec<Object>)]
    pub executions: Vec<blink_sdk::manager::SpawnInfo>,
}

/// Start a process that clients attach to over WebSocket.
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/spawn",
    tag = "executions",
    params(("name" = String, Path, description = "Session name")),
    request_body = SpawnRequest,
    responses(
        (status = 201, description = "Started: `{id, session, argv, tty, started_at, exit, attached}`", body = serde_json::Value),
        (status = 400, description = "Bad body or name", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 422, description = "Unprocessable request", body = ErrorResponse),
    )
)]
pub async fn spawn(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SpawnRequest>,
) -> ApiResult<Response> {
    let env: Vec<(String, String)> = req.env.into_iter().collect();
    let unprocessable = |e: blink_sdk::Error| ApiError::unprocessable(e.client_message());
    policy::check_command(&req.command).map_err(unprocessable)?;
    policy::check_env(&env).map_err(unprocessable)?;
    let tty = if req.tty {
        Some(pty_size(req.rows.unwrap_or(24), req.cols.unwrap_or(80))?)
    } else {
        if req.rows.is_some() || req.cols.is_some() {
            return Err(ApiError::unprocessable("rows and cols need tty: true"));
        }
        None
    };
    state.manager.session_info(&name)?;
    let term = env
        .iter()
        .find(|(k, _)| k == "TERM")
        .map_or_else(|| "xterm-256color".to_owned(), |(_, v)| v.clone());
    let info = state.manager.spawn(&name, req.command, env, tty).await?;
    tracing::info!(session = %name, execution = %info.id, tty = info.tty, "spawned");
    if let Some(size) = tty {
        // Recorded from its own output, whoever attaches (recording/).
        state
            .recordings
            .record_spawn(&state.manager, &name, &info.id, size, &term)
            .await;
    }
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

fn pty_size(rows: u16, cols: u16) -> ApiResult<PtySize> {
    policy::terminal_size(rows.into(), cols.into())
        .map_err(|e| ApiError::unprocessable(e.client_message()))
}

/// The session's spawned executions.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/executions",
    tag = "executions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "Executions", body = SpawnList),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<SpawnList>> {
    let mut executions = state.manager.list_spawns(&name)?;
    executions.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
    Ok(axum::Json(SpawnList { executions }))
}

/// One spawned execution (its exit status once it has ended).
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/executions/{id}",
    tag = "executions",
    params(
        ("name" = String, Path, description = "Session name"),
        ("id" = String, Path, description = "Execution id"),
    ),
    responses(
        (status = 200, description = "The execution", body = serde_json::Value),
        (status = 404, description = "No such session or execution", body = ErrorResponse),
    )
)]
pub async fn info(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<blink_sdk::manager::SpawnInfo>> {
    Ok(axum::Json(state.manager.spawn_info(&name, &id)?))
}

/// Attach to a spawned execution over WebSocket (see docs/PTY.md).
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/executions/{id}/attach",
    tag = "executions",
    params(
        ("name" = String, Path, description = "Session name"),
        ("id" = String, Path, description = "Execution id"),
    ),
    responses(
        (status = 101, description = "WebSocket: binary frames are terminal bytes, text frames JSON control"),
        (status = 400, description = "Not a WebSocket request", body = ErrorResponse),
        (status = 404, description = "No such session or execution", body = ErrorResponse),
    )
)]
pub async fn attach(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let attachment = state.manager.attach(&name, &id)?;
    let ws = ws.map_err(|r| {
        ApiError::bad_request(
            "not_websocket",
            format!("this route takes a WebSocket upgrade: {}", r.body_text()),
        )
    })?;
    let permit = state.attachments.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attachments",
            format!(
                "{} WebSocket attachments are open, the limit (rest.max_attachments)",
                state.config.max_attachments
            ),
        )
    })?;
    let shutdown = state.shutdown.clone();
    let recordings = state.recordings.clone();
    Ok(ws
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            tracing::debug!(session = %name, execution = %id, "attached");
            serve_socket(socket, attachment, shutdown, recordings).await;
            tracing::debug!(session = %name, execution = %id, "detached");
        }))
}

/// Control messages from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Control {
    Resize { rows: u16, cols: u16 },
    Signal { signal: SignalSpec },
    Eof,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SignalSpec {
    Number(i32),
    Name(String),
}

impl SignalSpec {
    fn number(&self) -> Option<i32> {
        match self {
            Self::Number(n) => policy::check_signal(*n).ok(),
            Self::Name(name) => policy::signal_number(name),
        }
    }
}

/// Events to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    Attached {
        id: &'a str,
        tty: bool,
        /// Output bytes lost before this attach because the replay buffer
        /// was full.
        dropped_bytes: u64,
    },
    Lagged {
        missed_chunks: u64,
    },
    Exit {
        code: i32,
        signal: Option<i32>,
    },
    Error {
        code: &'a str,
        message: String,
    },
}

fn event(e: &Event<'_>) -> Message {
    Message::Text(serde_json::to_string(e).unwrap_or_default().into())
}

fn frame(tty: bool, chunk: Chunk) -> Message {
    if tty {
        return Message::Binary(chunk.data.into());
    }
    let mut data = Vec::with_capacity(chunk.data.len() + 1);
    data.push(match chunk.stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    });
    data.extend_from_slice(&chunk.data);
    Message::Binary(data.into())
}

async fn serve_socket(
    mut socket: WebSocket,
    mut att: Attachment,
    mut shutdown: watch::Receiver<bool>,
    recordings: Arc<Recordings>,
) {
    let tty = att.spawn.tty;
    let id = att.spawn.id.clone();
    let hello = Event::Attached {
        id: &id,
        tty,
        dropped_bytes: att.dropped,
    };
    if socket.send(event(&hello)).await.is_err() {
        return;
    }
    for chunk in std::mem::take(&mut att.replay) {
        if socket.send(frame(tty, chunk)).await.is_err() {
            return;
        }
    }
    let mut exit = att.exit.clone();
    let input = att.input();
    // Input on its way to the program. While it waits for room (the
    // program is not reading), the socket is not read, which holds the
    // client back, and output keeps flowing.
    let mut pending: Option<std::pin::Pin<Box<dyn Future<Output = bool> + Send>>> = None;
    loop {
        if exit.borrow().is_some() {
            break;
        }
        tokio::select! {
            () = async {
                match pending.as_mut() {
                    Some(write) => { write.await; }
                    None => std::future::pending().await,
                }
            } => pending = None,
            msg = socket.recv(), if pending.is_none() => {
                let write = |data: Vec<u8>| {
                    let input = input.clone();
                    Box::pin(async move { input.write(data).await })
                };
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Binary(data))) => {
                        recordings.spawn_input(&id, &data);
                        pending = Some(write(data.to_vec()));
                    }
                    Some(Ok(Message::Text(text))) => match control(&att, text.as_str(), &recordings) {
                        Reply::Nothing => {}
                        // In order: after the input before it.
                        Reply::CloseInput => pending = Some(write(Vec::new())),
                        Reply::Send(reply) => {
                            if socket.send(reply).await.is_err() {
                                return;
                            }
                        }
                    },
                    Some(Ok(_)) => {}
                }
            }
            r = att.live.recv() => {
                let msg = match r {
                    Ok(chunk) => frame(tty, chunk),
                    Err(RecvError::Lagged(n)) => event(&Event::Lagged { missed_chunks: n }),
                    Err(RecvError::Closed) => break,
                };
                if socket.send(msg).await.is_err() {
                    return;
                }
            }
            changed = exit.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: "server shutting down".into(),
                    })))
                    .await;
                return;
            }
        }
    }
    // The process ended: everything it wrote was published before the
    // exit status, so drain what is left, then say how it ended.
    loop {
        match att.live.try_recv() {
            Ok(chunk) => {
                if socket.send(frame(tty, chunk)).await.is_err() {
                    return;
                }
            }
            Err(TryRecvError::Lagged(n)) => {
                if socket
                    .send(event(&Event::Lagged { missed_chunks: n }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    let status = *exit.borrow();
    let (code, signal) = status.map_or((-1, None), |s| (s.code, s.signal));
    let _ = socket.send(event(&Event::Exit { code, signal })).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "exited".into(),
        })))
        .await;
    // Read what the client still sends (input, `eof`) until it answers
    // the close, for a moment at most: a socket closed with unread input
    // is reset, and the client can lose the output and the exit event
    // that are still on their way to it.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How long a closing attachment waits for the client's close.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Apply a control message; returns an error event for bad ones.
/// What a control message asks of the socket's loop.
enum Reply {
    Nothing,
    Send(Message),
    /// Close the program's stdin, after the input queued before.
    CloseInput,
}

fn control(att: &Attachment, text: &str, recordings: &Recordings) -> Reply {
    let err =
        |code: &'static str, message: String| Reply::Send(event(&Event::Error { code, message }));
    let msg: Control = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return err("invalid_control", format!("bad control message: {e}")),
    };
    match msg {
        Control::Resize { rows, cols } => {
            if !att.spawn.tty {
                return err("not_a_tty", "resize needs a PTY-mode execution".into());
            }
            let size = match pty_size(rows, cols) {
                Ok(s) => s,
                Err(e) => return err(e.code, e.message),
            };
            // Recorded before the program sees it (as SSH window changes).
            recordings.spawn_resized(&att.spawn.id, size);
            if let Err(e) = att.spawn.control.resize(size) {
                return err(e.code(), e.client_message());
            }
        }
        Control::Signal { signal } => {
            let Some(n) = signal.number() else {
                return err("invalid_signal", format!("unknown signal {signal:?}"));
            };
            if let Err(e) = att.spawn.control.signal(n) {
                return err(e.code(), e.client_message());
            }
        }
        Control::Eof => return Reply::CloseInput,
    }
    Reply::Nothing
}
