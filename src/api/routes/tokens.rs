//! Tokens: issue one (`POST /v1/tokens`), revoke one by its text
//! (`POST /v1/tokens/revoke`), revoke every token of a user's live sessions
//! (`POST /v1/users/{user_id}/tokens/revoke`). Revoking ends the sessions using the
//! tokens with `Kick{TOKEN_REVOKED}`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use petrel_control::api::{ApiReply, ApiRequest};
use petrel_proto::pb;
use serde::{Deserialize, Serialize};

use super::{AppState, call, unexpected, user_id};
use crate::api::error::HttpError;
use crate::api::extract::{ApiJson, ApiPath};

/// Longest lifetime of an issued token.
const MAX_TTL_SECS: u64 = 366 * 86_400;
/// Lifetime when the request names none.
const DEFAULT_TTL_SECS: u64 = 86_400;

/// A platform class, as in the protocol's `Platform`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformName {
    /// iOS.
    Ios,
    /// Android.
    Android,
    /// Browser.
    Web,
    /// Desktop app.
    Desktop,
    /// Automated client.
    Bot,
    /// None said.
    Unspecified,
}

impl From<PlatformName> for pb::Platform {
    fn from(p: PlatformName) -> pb::Platform {
        match p {
            PlatformName::Ios => pb::Platform::Ios,
            PlatformName::Android => pb::Platform::Android,
            PlatformName::Web => pb::Platform::Web,
            PlatformName::Desktop => pb::Platform::Desktop,
            PlatformName::Bot => pb::Platform::Bot,
            PlatformName::Unspecified => pb::Platform::Unspecified,
        }
    }
}

/// The name of a `pb::Platform` value.
pub fn platform_name(value: i32) -> PlatformName {
    match pb::Platform::try_from(value) {
        Ok(pb::Platform::Ios) => PlatformName::Ios,
        Ok(pb::Platform::Android) => PlatformName::Android,
        Ok(pb::Platform::Web) => PlatformName::Web,
        Ok(pb::Platform::Desktop) => PlatformName::Desktop,
        Ok(pb::Platform::Bot) => PlatformName::Bot,
        _ => PlatformName::Unspecified,
    }
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    user_id: u64,
    device: String,
    #[serde(default = "desktop")]
    platform: PlatformName,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

fn desktop() -> PlatformName {
    PlatformName::Desktop
}

/// An issued token.
#[derive(Debug, Serialize)]
pub struct Issued {
    token: String,
    token_id: String,
    user_id: u64,
    device: String,
    platform: PlatformName,
    expires_at_ms: u64,
}

/// `POST /v1/tokens`.
pub async fn issue(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<IssueBody>,
) -> Result<(StatusCode, Json<Issued>), HttpError> {
    let user = user_id("user_id", body.user_id)?;
    if body.device.is_empty() || body.device.len() > 128 {
        return Err(HttpError::invalid(
            "device",
            "device ids are 1 to 128 bytes",
        ));
    }
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(HttpError::invalid(
            "ttl_secs",
            format!("lifetime must be 1 to {MAX_TTL_SECS} seconds"),
        ));
    }
    let reply = call(
        &state,
        ApiRequest::IssueToken {
            user,
            device: body.device.clone(),
            platform: body.platform.into(),
            ttl: Duration::from_secs(ttl),
        },
    )
    .await?;
    let ApiReply::Token {
        token,
        token_id,
        expires_at,
    } = reply
    else {
        return Err(unexpected(&reply));
    };
    Ok((
        StatusCode::CREATED,
        Json(Issued {
            token,
            token_id: hex::encode(token_id),
            user_id: user,
            device: body.device,
            platform: body.platform,
            expires_at_ms: expires_at.as_millis(),
        }),
    ))
}

/// Body of `POST /v1/tokens/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    token: String,
}

/// How many sessions a revocation or kick ended.
#[derive(Debug, Serialize)]
pub struct Ended {
    /// Sessions ended.
    pub sessions_ended: usize,
}

/// `POST /v1/tokens/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> Result<Json<Ended>, HttpError> {
    let reply = call(&state, ApiRequest::RevokeToken { token: body.token })
        .await
        .map_err(|e| {
            if e.code.starts_with("token_") {
                e.field("token")
            } else {
                e
            }
        })?;
    match reply {
        ApiReply::Ended { sessions } => Ok(Json(Ended {
            sessions_ended: sessions,
        })),
        other => Err(unexpected(&other)),
    }
}

/// `POST /v1/users/{user_id}/tokens/revoke`.
pub async fn revoke_user(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<u64>,
) -> Result<Json<Ended>, HttpError> {
    let user = user_id("user_id", user)?;
    match call(&state, ApiRequest::RevokeUser { user }).await? {
        ApiReply::Ended { sessions } => Ok(Json(Ended {
            sessions_ended: sessions,
        })),
        other => Err(unexpected(&other)),
    }
}
