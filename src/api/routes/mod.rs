//! The `/v1` handlers, one module per resource. Each parses and checks its input (every
//! mistake a 4xx naming the field), builds one [`ApiRequest`], sends it to the control
//! plane over the [`ApiBridge`] and shapes the answer as JSON.

pub mod chatrooms;
pub mod conversations;
pub mod messages;
pub mod pools;
pub mod presence;
pub mod sessions;
pub mod tokens;

use axum::http::StatusCode;
use petrel_control::api::{ApiReply, ApiRequest};

use super::bridge::ApiBridge;
use super::error::HttpError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The way to the control plane.
    pub bridge: ApiBridge,
    /// The user that `"system": true` messages are sent as (`api_system_user`).
    pub system_user: Option<u64>,
    /// The users' dispatch pools (a cluster only).
    pub pools: Option<std::sync::Arc<crate::dispatch::PoolBook>>,
}

/// Runs `request` on the control plane; its refusal becomes the matching HTTP error.
pub async fn call(state: &AppState, request: ApiRequest) -> Result<ApiReply, HttpError> {
    Ok(state.bridge.call(request).await??)
}

/// The control plane answered with a reply of another request's kind (a bug).
pub fn unexpected(reply: &ApiReply) -> HttpError {
    tracing::error!(
        ?reply,
        "api: the control plane answered with the wrong reply kind"
    );
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server answered with the wrong reply",
    )
}

/// Refuses a user id of 0 (no user has it), naming `field`.
pub fn user_id(field: &str, id: u64) -> Result<u64, HttpError> {
    if id == 0 {
        Err(HttpError::invalid(field, "user ids start at 1"))
    } else {
        Ok(id)
    }
}
