//! A session's SSH authorized keys: the same per-session file the SSH
//! gateway reads on every login, so changes apply to the next connection.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blink_sdk::manager::keys::{AuthorizedKey, KeyChange};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiResult, ErrorResponse};

/// Largest public key line accepted (RSA 16384 is about 2.8 KB).
const MAX_KEY_LINE: usize = 16 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddKeyRequest {
    /// One OpenSSH `authorized_keys` line: `[options] ssh-ed25519 AAAA...
    /// comment`. Options (`from=`, `command=`, `no-pty`, `restrict`,
    /// `expiry-time=`, `environment=`, ...) are enforced; any other option
    /// is refused with 400 naming it.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// e.g. `ssh-ed25519`.
    pub kind: String,
    /// The key's options in `authorized_keys` syntax (empty: none).
    pub options: String,
    pub comment: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key line as stored.
    pub key: String,
}

impl From<AuthorizedKey> for KeyView {
    fn from(k: AuthorizedKey) -> Self {
        Self {
            key: k.to_line(),
            options: k.options.to_string(),
            kind: k.kind,
            comment: k.comment,
            fingerprint: k.fingerprint,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddedKey {
    pub key: KeyView,
    /// False when the key was already there.
    pub added: bool,
    /// True when the key was there with other options, now replaced.
    pub options_changed: bool,
}

/// Keys that may log in to the session over SSH.
#[utoipa::path(
    get,
    path = "/api/sessions/{name}/keys",
    tag = "keys",
    params(("name" = String, Path, description = "Session name")),
    responses(
        (status = 200, description = "Keys", body = KeyList),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<KeyList>> {
    state.manager.session_info(&name)?;
    let keys = state.manager.keys().list(&name)?;
    Ok(axum::Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// Authorize a public key for the session.
#[utoipa::path(
    post,
    path = "/api/sessions/{name}/keys",
    tag = "keys",
    params(("name" = String, Path, description = "Session name")),
    request_body = AddKeyRequest,
    responses(
        (status = 201, description = "Added", body = AddedKey),
        (status = 200, description = "Already there (its options replaced if they differ)", body = AddedKey),
        (status = 400, description = "Not a public key, or an option that cannot be enforced", body = ErrorResponse),
        (status = 404, description = "No such session", body = ErrorResponse),
    )
)]
pub async fn add(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<AddKeyRequest>,
) -> ApiResult<Response> {
    state.manager.session_info(&name)?;
    if req.key.len() > MAX_KEY_LINE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a key line may have at most {MAX_KEY_LINE} bytes"),
        ));
    }
    if req.key.trim().lines().count() > 1 {
        return Err(ApiError::bad_request(
            "invalid_argument",
            "give one key line, not several",
        ));
    }
    let (key, change) = state.manager.keys().add(&name, &req.key)?;
    let added = change == KeyChange::Added;
    let options_changed = change == KeyChange::OptionsChanged;
    tracing::info!(session = %name, fingerprint = %key.fingerprint, added, options_changed, "ssh key added over REST");
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(AddedKey {
            key: key.into(),
            added,
            options_changed,
        }),
    )
        .into_response())
}

/// Revoke a key by fingerprint (`SHA256:...`; URL-encode `/` and `+`).
#[utoipa::path(
    delete,
    path = "/api/sessions/{name}/keys/{fingerprint}",
    tag = "keys",
    params(
        ("name" = String, Path, description = "Session name"),
        ("fingerprint" = String, Path, description = "`SHA256:...` (the prefix is optional)"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such session or key", body = ErrorResponse),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath((name, fingerprint)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    state.manager.session_info(&name)?;
    match state.manager.keys().remove(&name, &fingerprint)? {
        Some(k) => {
            tracing::info!(session = %name, fingerprint = %k.fingerprint, "ssh key removed over REST");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!(
                "no key {:?} in session {name:?}",
                fingerprint.chars().take(80).collect::<String>()
            ),
        )),
    }
}
