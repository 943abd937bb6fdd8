//! Presence of a batch of users (`POST /v1/presence`): online devices now and the last
//! recorded activity (login or send).

use axum::Json;
use axum::extract::State;
use petrel_control::api::{ApiReply, ApiRequest, MAX_PRESENCE_BATCH};
use serde::{Deserialize, Serialize};

use super::{AppState, call, unexpected};
use crate::api::error::HttpError;
use crate::api::extract::ApiJson;

/// Body of `POST /v1/presence`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceBody {
    user_ids: Vec<u64>,
}

/// One user's presence.
#[derive(Debug, Serialize)]
pub struct PresenceOut {
    user_id: u64,
    online: bool,
    devices: usize,
    last_active_ms: Option<u64>,
}

/// Answer of `POST /v1/presence`.
#[derive(Debug, Serialize)]
pub struct PresenceList {
    users: Vec<PresenceOut>,
}

/// `POST /v1/presence`.
pub async fn presence(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PresenceBody>,
) -> Result<Json<PresenceList>, HttpError> {
    if body.user_ids.is_empty() || body.user_ids.len() > MAX_PRESENCE_BATCH {
        return Err(HttpError::invalid(
            "user_ids",
            format!("ask about 1 to {MAX_PRESENCE_BATCH} users at a time"),
        ));
    }
    if body.user_ids.contains(&0) {
        return Err(HttpError::invalid("user_ids", "user ids start at 1"));
    }
    match call(
        &state,
        ApiRequest::Presence {
            users: body.user_ids,
        },
    )
    .await?
    {
        ApiReply::Presence(list) => Ok(Json(PresenceList {
            users: list
                .into_iter()
                .map(|p| PresenceOut {
                    user_id: p.user,
                    online: p.devices > 0,
                    devices: p.devices,
                    last_active_ms: p.last_active_ms,
                })
                .collect(),
        })),
        other => Err(unexpected(&other)),
    }
}
