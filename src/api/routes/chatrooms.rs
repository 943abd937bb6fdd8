//! Chatrooms, for the operator: open (create) a room, list who is in it, kick a user out
//! of it, close it. Chatrooms live in memory (docs/PROTOCOL.md 5.6): so do these
//! operations' effects — a restart opens every closed room again.

use axum::Json;
use axum::extract::State;
use petrel_control::api::{ApiChatroomOp, ApiReply, ApiRequest};
use serde::{Deserialize, Serialize};

use super::{AppState, call, unexpected, user_id};
use crate::api::error::HttpError;
use crate::api::extract::{ApiJson, ApiPath};

/// What every chatroom route answers.
#[derive(Debug, Serialize)]
pub struct RoomOut {
    room_id: u64,
    /// Joins are refused (`NOT_FOUND`) while closed.
    closed: bool,
    /// `members`: who is in it; `kick` and `close`: who was taken out.
    users: Vec<u64>,
}

fn room_id(id: u64) -> Result<u64, HttpError> {
    if id == 0 {
        Err(HttpError::invalid("room_id", "room ids start at 1"))
    } else {
        Ok(id)
    }
}

async fn room_op(
    state: &AppState,
    room: u64,
    op: ApiChatroomOp,
) -> Result<Json<RoomOut>, HttpError> {
    match call(state, ApiRequest::Chatroom { room, op }).await? {
        ApiReply::Chatroom { users, closed } => Ok(Json(RoomOut {
            room_id: room,
            closed,
            users,
        })),
        other => Err(unexpected(&other)),
    }
}

/// Body of `POST /v1/chatrooms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBody {
    room_id: u64,
}

/// `POST /v1/chatrooms`: open a room for joining — a room closed by `close` (any other
/// room is open already: joining creates it).
pub async fn open(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OpenBody>,
) -> Result<Json<RoomOut>, HttpError> {
    let room = room_id(body.room_id)?;
    room_op(&state, room, ApiChatroomOp::Open).await
}

/// `GET /v1/chatrooms/{room_id}/members`: the users in the room now.
pub async fn members(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<u64>,
) -> Result<Json<RoomOut>, HttpError> {
    room_op(&state, room_id(room)?, ApiChatroomOp::Members).await
}

/// Body of `POST /v1/chatrooms/{room_id}/kick`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    user_id: u64,
}

/// `POST /v1/chatrooms/{room_id}/kick`: take every connection of a user out of the room;
/// each gets `ConversationEvent` MEMBERS_REMOVED (the SDK stops rejoining the room). The
/// user may join again unless the room is closed.
pub async fn kick(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<u64>,
    ApiJson(body): ApiJson<KickBody>,
) -> Result<Json<RoomOut>, HttpError> {
    let room = room_id(room)?;
    let user = user_id("user_id", body.user_id)?;
    room_op(&state, room, ApiChatroomOp::Kick { user }).await
}

/// `POST /v1/chatrooms/{room_id}/close`: take everyone out (`ConversationEvent`
/// DISSOLVED), forget the room's recent messages, and refuse joins until it is opened.
pub async fn close(
    State(state): State<AppState>,
    ApiPath(room): ApiPath<u64>,
) -> Result<Json<RoomOut>, HttpError> {
    room_op(&state, room_id(room)?, ApiChatroomOp::Close).await
}
