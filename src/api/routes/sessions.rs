//! A user's sessions: list the devices online (`GET /v1/users/{user_id}/sessions`) and
//! kick all of them or one device (`POST /v1/users/{user_id}/kick`, `Kick{ADMIN}`).

use axum::Json;
use axum::extract::State;
use petrel_control::api::{ApiReply, ApiRequest};
use serde::{Deserialize, Serialize};

use super::tokens::{Ended, PlatformName, platform_name};
use super::{AppState, call, unexpected, user_id};
use crate::api::error::HttpError;
use crate::api::extract::{ApiJson, ApiPath};

/// One online device.
#[derive(Debug, Serialize)]
pub struct SessionOut {
    session_id: u64,
    device: String,
    platform: PlatformName,
    connected_at_ms: u64,
    last_activity_ms: u64,
    expires_at_ms: u64,
}

/// Answer of `GET /v1/users/{user_id}/sessions`.
#[derive(Debug, Serialize)]
pub struct Sessions {
    user_id: u64,
    sessions: Vec<SessionOut>,
}

/// `GET /v1/users/{user_id}/sessions`.
pub async fn list(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<u64>,
) -> Result<Json<Sessions>, HttpError> {
    let user = user_id("user_id", user)?;
    match call(&state, ApiRequest::Sessions { user }).await? {
        ApiReply::Sessions(list) => Ok(Json(Sessions {
            user_id: user,
            sessions: list
                .into_iter()
                .map(|s| SessionOut {
                    session_id: s.session_id,
                    device: s.device,
                    platform: platform_name(s.platform),
                    connected_at_ms: s.connected_at.as_millis(),
                    last_activity_ms: s.last_activity.as_millis(),
                    expires_at_ms: s.expires_at.as_millis(),
                })
                .collect(),
        })),
        other => Err(unexpected(&other)),
    }
}

/// Body of `POST /v1/users/{user_id}/kick`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// `POST /v1/users/{user_id}/kick`.
pub async fn kick(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<u64>,
    ApiJson(body): ApiJson<KickBody>,
) -> Result<Json<Ended>, HttpError> {
    let user = user_id("user_id", user)?;
    let message = body
        .message
        .unwrap_or_else(|| "ended by the operator".to_owned());
    if message.len() > 1024 {
        return Err(HttpError::invalid("message", "at most 1024 bytes"));
    }
    let request = ApiRequest::Kick {
        user,
        device: body.device,
        message,
    };
    match call(&state, request).await? {
        ApiReply::Ended { sessions } => Ok(Json(Ended {
            sessions_ended: sessions,
        })),
        other => Err(unexpected(&other)),
    }
}
