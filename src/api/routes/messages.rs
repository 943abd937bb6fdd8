//! Messages: send as a user or as the system (`POST /v1/messages`) and page a
//! conversation's history (`GET /v1/conversations/{kind}/{id}/messages`).
//!
//! A send is the protocol's `SendMessage` made by the backend: the same storage append
//! (exactly once per sender, conversation and `client_msg_id`, for the dedup window) and
//! the same live push to every online device of every recipient — the sender's devices
//! included, since no device of theirs sent it. The answer comes once the message is
//! durable.

use axum::Json;
use axum::extract::{RawQuery, State};
use petrel_control::api::{ApiConversationOp, ApiReply, ApiRequest};
use serde::{Deserialize, Serialize};

use super::{AppState, call, unexpected, user_id};
use crate::api::error::HttpError;
use crate::api::extract::{ApiJson, ApiPath, parse_query};
use crate::api::json::{Content, ConversationRef, Kind, MessageOut, RecalledOut};

/// Device recorded with messages the API sends when the request names none.
const API_DEVICE: &str = "api";

/// Body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    #[serde(default)]
    sender: Option<u64>,
    #[serde(default)]
    system: bool,
    #[serde(default)]
    device: Option<String>,
    conversation: ConversationRef,
    client_msg_id: u64,
    content: Content,
}

/// Answer of `POST /v1/messages`.
#[derive(Debug, Serialize)]
pub struct Sent {
    sender: u64,
    conversation: ConversationRef,
    seq: u64,
    server_time_ms: u64,
    duplicate: bool,
}

/// `POST /v1/messages`.
pub async fn send(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SendBody>,
) -> Result<Json<Sent>, HttpError> {
    let sender = match (body.sender, body.system) {
        (Some(id), false) => user_id("sender", id)?,
        (None, true) => state.system_user.ok_or_else(|| {
            HttpError::invalid(
                "system",
                "no system user is configured (set api_system_user in the server config)",
            )
        })?,
        (Some(_), true) => {
            return Err(HttpError::invalid(
                "system",
                "give either `sender` or `\"system\": true`, not both",
            ));
        }
        (None, false) => {
            return Err(HttpError::invalid(
                "sender",
                "give the sending user (`sender`) or `\"system\": true`",
            ));
        }
    };
    if body.client_msg_id == 0 {
        return Err(HttpError::invalid("client_msg_id", "must not be 0"));
    }
    let device = body.device.unwrap_or_else(|| API_DEVICE.to_owned());
    if device.is_empty() || device.len() > 128 {
        return Err(HttpError::invalid(
            "device",
            "device ids are 1 to 128 bytes",
        ));
    }
    let key = body.conversation.key(sender, "conversation")?;
    let content = body.content.into_wire()?;
    let reply = call(
        &state,
        ApiRequest::Send {
            sender,
            device,
            conversation: key,
            client_msg_id: body.client_msg_id,
            content,
        },
    )
    .await?;
    match reply {
        ApiReply::Sent {
            seq,
            server_time_ms,
            duplicate,
        } => Ok(Json(Sent {
            sender,
            conversation: ConversationRef::of(sender, key),
            seq,
            server_time_ms,
            duplicate,
        })),
        other => Err(unexpected(&other)),
    }
}

/// Answer of the history route.
#[derive(Debug, Serialize)]
pub struct HistoryOut {
    messages: Vec<MessageOut>,
    first_seq: u64,
    has_more: bool,
}

/// `GET /v1/conversations/{kind}/{id}/messages?user=U&before_seq=S&limit=N`: messages
/// below `before_seq` (default: from the newest), ascending, at most `limit` (1–100,
/// default 100), as user `U` (a participant) sees the conversation.
pub async fn history(
    State(state): State<AppState>,
    ApiPath((kind, id)): ApiPath<(Kind, u64)>,
    RawQuery(query): RawQuery,
) -> Result<Json<HistoryOut>, HttpError> {
    let [user, before_seq, limit] = parse_query(query.as_deref(), ["user", "before_seq", "limit"])?;
    let user = user_id(
        "user",
        user.ok_or_else(|| HttpError::invalid("user", "`user` (the reader) is required"))?,
    )?;
    let limit = match limit {
        None => 0,
        Some(n @ 1..=100) => n as u32,
        Some(_) => return Err(HttpError::invalid("limit", "limit is 1 to 100")),
    };
    let key = ConversationRef { kind, id }.key(user, "conversation")?;
    let reply = call(
        &state,
        ApiRequest::History {
            user,
            conversation: key,
            before_seq: before_seq.unwrap_or(0),
            limit,
        },
    )
    .await?;
    match reply {
        ApiReply::History {
            messages,
            first_seq,
            has_more,
        } => Ok(Json(HistoryOut {
            messages: messages.iter().map(MessageOut::from).collect(),
            first_seq,
            has_more,
        })),
        other => Err(unexpected(&other)),
    }
}

/// The acting user and the conversation of one message named by a request body (edit,
/// recall), checked: ids from 1, the conversation as the actor names it.
fn message_ref(
    actor: u64,
    conversation: &ConversationRef,
    seq: u64,
) -> Result<(u64, petrel_storage::ConversationKey), HttpError> {
    let actor = user_id("actor", actor)?;
    if seq == 0 {
        return Err(HttpError::invalid("seq", "seqs start at 1"));
    }
    Ok((actor, conversation.key(actor, "conversation")?))
}

/// Answer of the read-count route.
#[derive(Debug, Serialize)]
pub struct ReadCountOut {
    seq: u64,
    /// Participants other than the sender whose read position is at or past `seq`.
    read: u64,
    /// Participants other than the sender.
    of: u64,
}

/// `GET /v1/conversations/{kind}/{id}/messages/{seq}/reads?user=U`: how many of the
/// other participants have read message `seq` ("read by 37 of 500"), as user `U` (a
/// participant) asks. Conversations up to 10,000 members.
pub async fn read_count(
    State(state): State<AppState>,
    ApiPath((kind, id, seq)): ApiPath<(Kind, u64, u64)>,
    RawQuery(query): RawQuery,
) -> Result<Json<ReadCountOut>, HttpError> {
    let [user] = parse_query(query.as_deref(), ["user"])?;
    let user = user_id(
        "user",
        user.ok_or_else(|| HttpError::invalid("user", "`user` (who asks) is required"))?,
    )?;
    if seq == 0 {
        return Err(HttpError::invalid("seq", "seqs start at 1"));
    }
    let conversation = ConversationRef { kind, id }.key(user, "conversation")?;
    match call(
        &state,
        ApiRequest::ReadCount {
            user,
            conversation,
            seq,
        },
    )
    .await?
    {
        ApiReply::ReadCount { read, of } => Ok(Json(ReadCountOut { seq, read, of })),
        other => Err(unexpected(&other)),
    }
}

/// Body of `POST /v1/messages/edit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    actor: u64,
    conversation: ConversationRef,
    seq: u64,
    content: Content,
}

/// Answer of `POST /v1/messages/edit`.
#[derive(Debug, Serialize)]
pub struct EditedAnswer {
    conversation: ConversationRef,
    seq: u64,
    edited_at_ms: u64,
}

/// `POST /v1/messages/edit`: as `actor` (the message's sender, within the edit window),
/// replace the content of message `seq` of `conversation`. Participants online get the
/// new version pushed; history and sync return it from now on.
pub async fn edit(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EditBody>,
) -> Result<Json<EditedAnswer>, HttpError> {
    let (actor, key) = message_ref(body.actor, &body.conversation, body.seq)?;
    let content = petrel_proto::wire::encode_content(&body.content.into_wire()?);
    let reply = call(
        &state,
        ApiRequest::Conversation {
            actor,
            op: ApiConversationOp::Edit {
                conversation: key,
                seq: body.seq,
                content,
            },
        },
    )
    .await?;
    match reply {
        ApiReply::Edited {
            conversation,
            seq,
            edited_at_ms,
        } => Ok(Json(EditedAnswer {
            conversation: ConversationRef::of(actor, conversation),
            seq,
            edited_at_ms,
        })),
        other => Err(unexpected(&other)),
    }
}

/// Body of `POST /v1/messages/recall`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallBody {
    actor: u64,
    conversation: ConversationRef,
    seq: u64,
}

/// Answer of `POST /v1/messages/recall`.
#[derive(Debug, Serialize)]
pub struct RecalledAnswer {
    conversation: ConversationRef,
    seq: u64,
    recalled: RecalledOut,
}

/// `POST /v1/messages/recall`: as `actor` (the sender within the recall window, or a
/// group's owner or admin at any time), recall message `seq` of `conversation`. Its
/// content is gone from history and sync for good; participants online get
/// `ConversationEvent` RECALLED.
pub async fn recall(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RecallBody>,
) -> Result<Json<RecalledAnswer>, HttpError> {
    let (actor, key) = message_ref(body.actor, &body.conversation, body.seq)?;
    let reply = call(
        &state,
        ApiRequest::Conversation {
            actor,
            op: ApiConversationOp::Recall {
                conversation: key,
                seq: body.seq,
            },
        },
    )
    .await?;
    match reply {
        ApiReply::Recalled {
            conversation,
            seq,
            by,
            at_ms,
        } => Ok(Json(RecalledAnswer {
            conversation: ConversationRef::of(actor, conversation),
            seq,
            recalled: RecalledOut { by, at_ms },
        })),
        other => Err(unexpected(&other)),
    }
}
