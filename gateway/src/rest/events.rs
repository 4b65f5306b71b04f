//! `GET /api/sessions/{name}/events`: the events a session's sandbox emits
//! through the V-Hub (docs/VHUB.md), as server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::AppState;
use super::error::{ApiError, ApiPath, ApiResult, ErrorResponse};

/// A session's events from now on, one server-sent event each: `id` the
/// session's event number, `event: vhub`, `data` the event as JSON
/// (`session`, `seq`, `topic`, `data`, `dropped`). A client that reads too
/// slowly loses events: the next one it gets counts them in `dropped`.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/events",
    tag = "sessions",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "A stream of server-sent events", content_type = "text/event-stream"),
        (status = 400, description = "Bad name", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
        (status = 409, description = "The V-Hub is disabled", body = ErrorResponse),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    state.manager.session_info(&name)?;
    let Some(hub) = state.vhub.as_ref() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "vhub_disabled",
            "the V-Hub is disabled on this server ([vhub] enabled = false)",
        ));
    };
    let subscription = hub.subscribe(&name);
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (subscription, shutdown),
        |(mut sub, mut shutdown)| async move {
            let event = tokio::select! {
                e = sub.next() => e?,
                _ = shutdown.wait_for(|s| *s) => return None,
            };
            let sse = Event::default()
                .id(event.seq.to_string())
                .event("vhub")
                .json_data(&event)
                .unwrap_or_else(|_| Event::default().comment("unserializable event"));
            Some((Ok(sse), (sub, shutdown)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
