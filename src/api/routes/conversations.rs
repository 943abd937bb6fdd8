//! Groups and public accounts, through the protocol's own operations (role checks inside
//! storage, `ConversationEvent`s to the affected online devices). The backend names the
//! acting user (`actor`, or `owner` / `user_id`): a group change needs the role it needs
//! in the protocol (owner or admin).
//!
//! Chatrooms are in [`super::chatrooms`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use petrel_control::api::{ApiConversationOp, ApiReply, ApiRequest};
use petrel_storage::ConversationKey;
use serde::{Deserialize, Serialize};

use super::{AppState, call, unexpected, user_id};
use crate::api::error::HttpError;
use crate::api::extract::{ApiJson, ApiPath};
use crate::api::json::{MemberOut, RoleName, members};

/// Body of `POST /v1/groups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupBody {
    owner: u64,
    name: String,
    #[serde(default)]
    members: Vec<u64>,
}

/// A created group or account.
#[derive(Debug, Serialize)]
pub struct Created {
    id: u64,
    members: Vec<MemberOut>,
}

/// A membership change.
#[derive(Debug, Serialize)]
pub struct Changed {
    changed: Vec<u64>,
    members: Vec<MemberOut>,
}

/// A member list.
#[derive(Debug, Serialize)]
pub struct Members {
    members: Vec<MemberOut>,
}

fn check_users(field: &str, users: &[u64]) -> Result<(), HttpError> {
    if users.is_empty() || users.len() > 1000 {
        return Err(HttpError::invalid(field, "list 1 to 1000 users"));
    }
    if users.contains(&0) {
        return Err(HttpError::invalid(field, "user ids start at 1"));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), HttpError> {
    if name.is_empty() || name.len() > 256 {
        return Err(HttpError::invalid("name", "names are 1 to 256 bytes"));
    }
    Ok(())
}

async fn op(state: &AppState, actor: u64, op: ApiConversationOp) -> Result<ApiReply, HttpError> {
    call(state, ApiRequest::Conversation { actor, op }).await
}

fn changed(reply: ApiReply) -> Result<Json<Changed>, HttpError> {
    match reply {
        ApiReply::Membership {
            changed,
            members: m,
            ..
        } => Ok(Json(Changed {
            changed,
            members: members(&m),
        })),
        other => Err(unexpected(&other)),
    }
}

async fn list(state: &AppState, conversation: ConversationKey) -> Result<Json<Members>, HttpError> {
    match call(state, ApiRequest::Members { conversation }).await? {
        ApiReply::Members(m) => Ok(Json(Members {
            members: members(&m),
        })),
        other => Err(unexpected(&other)),
    }
}

fn id(field: &str, id: u64) -> Result<u64, HttpError> {
    if id == 0 {
        Err(HttpError::invalid(field, "ids start at 1"))
    } else {
        Ok(id)
    }
}

/// `POST /v1/groups`.
pub async fn create_group(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateGroupBody>,
) -> Result<(StatusCode, Json<Created>), HttpError> {
    let owner = user_id("owner", body.owner)?;
    check_name(&body.name)?;
    if body.members.len() > 1000 || body.members.contains(&0) {
        return Err(HttpError::invalid("members", "up to 1000 user ids, none 0"));
    }
    let reply = op(
        &state,
        owner,
        ApiConversationOp::CreateGroup {
            name: body.name,
            members: body.members,
        },
    )
    .await?;
    let ApiReply::Created(ConversationKey::Group(group)) = reply else {
        return Err(unexpected(&reply));
    };
    let Json(Members { members }) = list(&state, ConversationKey::Group(group)).await?;
    Ok((StatusCode::CREATED, Json(Created { id: group, members })))
}

/// `GET /v1/groups/{group_id}/members`.
pub async fn group_members(
    State(state): State<AppState>,
    ApiPath(group): ApiPath<u64>,
) -> Result<Json<Members>, HttpError> {
    list(&state, ConversationKey::Group(id("group_id", group)?)).await
}

/// Body of adding or removing members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    actor: u64,
    user_ids: Vec<u64>,
}

/// `POST /v1/groups/{group_id}/members`.
pub async fn add_members(
    State(state): State<AppState>,
    ApiPath(group): ApiPath<u64>,
    ApiJson(body): ApiJson<MembersBody>,
) -> Result<Json<Changed>, HttpError> {
    let group = id("group_id", group)?;
    let actor = user_id("actor", body.actor)?;
    check_users("user_ids", &body.user_ids)?;
    let users = body.user_ids;
    changed(
        op(
            &state,
            actor,
            ApiConversationOp::AddMembers { group, users },
        )
        .await?,
    )
}

/// `POST /v1/groups/{group_id}/members/remove`.
pub async fn remove_members(
    State(state): State<AppState>,
    ApiPath(group): ApiPath<u64>,
    ApiJson(body): ApiJson<MembersBody>,
) -> Result<Json<Changed>, HttpError> {
    let group = id("group_id", group)?;
    let actor = user_id("actor", body.actor)?;
    check_users("user_ids", &body.user_ids)?;
    let users = body.user_ids;
    changed(
        op(
            &state,
            actor,
            ApiConversationOp::RemoveMembers { group, users },
        )
        .await?,
    )
}

/// Body of `PUT /v1/groups/{group_id}/members/{user_id}/role`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    actor: u64,
    role: RoleName,
}

/// `PUT /v1/groups/{group_id}/members/{user_id}/role`.
pub async fn set_role(
    State(state): State<AppState>,
    ApiPath((group, user)): ApiPath<(u64, u64)>,
    ApiJson(body): ApiJson<RoleBody>,
) -> Result<Json<Changed>, HttpError> {
    let group = id("group_id", group)?;
    let user = user_id("user_id", user)?;
    let actor = user_id("actor", body.actor)?;
    let role = body.role.into();
    changed(
        op(
            &state,
            actor,
            ApiConversationOp::SetRole { group, user, role },
        )
        .await?,
    )
}

/// Body naming one user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    user_id: u64,
}

/// `POST /v1/groups/{group_id}/leave`.
pub async fn leave(
    State(state): State<AppState>,
    ApiPath(group): ApiPath<u64>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<Changed>, HttpError> {
    let group = id("group_id", group)?;
    let user = user_id("user_id", body.user_id)?;
    changed(op(&state, user, ApiConversationOp::Leave { group }).await?)
}

/// Body naming the acting user alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorBody {
    actor: u64,
}

/// `POST /v1/groups/{group_id}/dissolve` (owner only): every member is out and gets
/// `ConversationEvent` DISSOLVED, the messages are deleted, and the group answers 404
/// from then on. `changed` lists the former members.
pub async fn dissolve(
    State(state): State<AppState>,
    ApiPath(group): ApiPath<u64>,
    ApiJson(body): ApiJson<ActorBody>,
) -> Result<Json<Changed>, HttpError> {
    let group = id("group_id", group)?;
    let actor = user_id("actor", body.actor)?;
    changed(op(&state, actor, ApiConversationOp::Dissolve { group }).await?)
}

/// Longest mute, seconds (ten years; "forever" in practice).
const MAX_MUTE_SECS: u64 = 10 * 365 * 24 * 3600;

/// Body of `POST /v1/groups/{group_id}/mute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    actor: u64,
    /// The member; absent for the whole group (every plain member).
    #[serde(default)]
    user_id: Option<u64>,
    /// How long from now; 0 lifts the mute.
    seconds: u64,
}

/// `POST /v1/groups/{group_id}/mute`: mute a member or the whole group for `seconds`
/// (0 lifts it). Members online get `ConversationEvent` MUTED; a muted sender's sends
/// are refused with `MUTED` (`403 muted`, with `Retry-After`, over the API).
pub async fn mute(
    State(state): State<AppState>,
    ApiPath(group): ApiPath<u64>,
    ApiJson(body): ApiJson<MuteBody>,
) -> Result<Json<Changed>, HttpError> {
    let group = id("group_id", group)?;
    let actor = user_id("actor", body.actor)?;
    let user = body.user_id.map(|u| user_id("user_id", u)).transpose()?;
    if body.seconds > MAX_MUTE_SECS {
        return Err(HttpError::invalid(
            "seconds",
            format!("at most {MAX_MUTE_SECS} (ten years)"),
        ));
    }
    changed(
        op(
            &state,
            actor,
            ApiConversationOp::Mute {
                group,
                user,
                duration_ms: body.seconds * 1000,
            },
        )
        .await?,
    )
}

/// Body of `POST /v1/public-accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountBody {
    owner: u64,
    name: String,
}

/// `POST /v1/public-accounts`.
pub async fn create_account(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateAccountBody>,
) -> Result<(StatusCode, Json<Created>), HttpError> {
    let owner = user_id("owner", body.owner)?;
    check_name(&body.name)?;
    let reply = op(
        &state,
        owner,
        ApiConversationOp::CreatePublicAccount { name: body.name },
    )
    .await?;
    let ApiReply::Created(ConversationKey::PublicAccount(account)) = reply else {
        return Err(unexpected(&reply));
    };
    let Json(Members { members }) = list(&state, ConversationKey::PublicAccount(account)).await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id: account,
            members,
        }),
    ))
}

/// `GET /v1/public-accounts/{account_id}/followers`.
pub async fn followers(
    State(state): State<AppState>,
    ApiPath(account): ApiPath<u64>,
) -> Result<Json<Members>, HttpError> {
    list(
        &state,
        ConversationKey::PublicAccount(id("account_id", account)?),
    )
    .await
}

/// `POST /v1/public-accounts/{account_id}/followers`.
pub async fn follow(
    State(state): State<AppState>,
    ApiPath(account): ApiPath<u64>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<Changed>, HttpError> {
    let account = id("account_id", account)?;
    let user = user_id("user_id", body.user_id)?;
    changed(op(&state, user, ApiConversationOp::Follow { account }).await?)
}

/// `POST /v1/public-accounts/{account_id}/followers/remove`.
pub async fn unfollow(
    State(state): State<AppState>,
    ApiPath(account): ApiPath<u64>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Json<Changed>, HttpError> {
    let account = id("account_id", account)?;
    let user = user_id("user_id", body.user_id)?;
    changed(op(&state, user, ApiConversationOp::Unfollow { account }).await?)
}
