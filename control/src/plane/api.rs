//! Operator requests ([`crate::api`]): tokens, sessions, presence, sends, history and
//! conversation operations on behalf of the deployment's backend.
//!
//! Every request is answered exactly once through [`Control::poll_api_reply`]: at once
//! when memory suffices (tokens, sessions, kicks), or when its storage completion arrives
//! (sends, history, presence, conversation operations). Sends and conversation
//! operations reuse the protocol's completion handlers (`fan_out`, `on_op_done`) with a
//! requester that is no connection ([`API_CONN`]), so every online device — the acting
//! user's included — gets the same push or `ConversationEvent` a client's request
//! produces. Not on the per-message path of client traffic; allocation is fine here.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

use petrel_proto::pb;
use petrel_storage::{AppendRequest, ConversationKey, Reply, Request, StorageError, UserId};
use prost::Message as _;

use super::Control;
use super::pending::{AppendCtx, OpCtx, OpKind, Pending, ReplyTo};
use crate::api::{
    ApiConversationOp, ApiError, ApiId, ApiOutcome, ApiReply, ApiRequest, MAX_PRESENCE_BATCH,
    Presence, SessionInfo,
};
use crate::convert;
use crate::time::Timestamp;
use crate::token::{self, TokenSpec};
use petrel_conn::ConnId;

/// The "connection" of a request made through the API: no transport ever hands out this
/// id (its slot is beyond every index), so replies addressed to it are dropped and
/// fan-outs exclude nobody.
pub(crate) const API_CONN: ConnId = ConnId::from_u64(u64::MAX);

/// What an API request waits for from storage.
#[derive(Debug)]
pub(crate) enum ApiPending {
    /// A send: answer, then fan out like a client's append.
    Send(ApiId, AppendCtx),
    /// A conversation operation: answer, then notify like a client's op.
    Op(ApiId, OpCtx),
    /// A history page of at most `limit` messages.
    History(ApiId, usize),
    /// A member list.
    Members(ApiId),
    /// A read count.
    ReadCount(ApiId),
    /// Entry `index` of the presence batch `id`.
    LastActive(ApiId, usize),
}

/// API state kept between calls.
#[derive(Debug, Default)]
pub(crate) struct ApiState {
    /// Answers not yet polled.
    replies: std::collections::VecDeque<ApiOutcome>,
    /// Presence batches waiting for their `LastActive` reads: results so far and how many
    /// reads are still out.
    presence: HashMap<ApiId, (Vec<Presence>, usize)>,
}

fn storage_failure(err: &StorageError) -> ApiError {
    let (code, _) = convert::storage_error_code(err);
    ApiError {
        code,
        message: err.to_string(),
        retry_after_ms: convert::storage_retry_after_ms(err),
    }
}

fn wrong_reply() -> ApiError {
    ApiError::new(
        pb::ErrorCode::Internal,
        "storage answered with the wrong reply",
    )
}

impl Control {
    /// Takes one operator request (see [`crate::api`]). Its answer comes out of
    /// [`Control::poll_api_reply`] — at once, or after the storage actions it queues
    /// have completed; poll actions as after any `handle`.
    pub fn handle_api(&mut self, now: Timestamp, id: ApiId, request: ApiRequest) {
        if self.draining_since.is_some() {
            return self.api_answer(
                id,
                Err(ApiError::new(
                    pb::ErrorCode::ShuttingDown,
                    "server shutting down; send it again after it is back",
                )),
            );
        }
        match request {
            ApiRequest::IssueToken {
                user,
                device,
                platform,
                ttl,
            } => {
                let token_id = self.new_token_id();
                let result = token::mint(
                    &self.keys,
                    &TokenSpec {
                        user,
                        device: &device,
                        platform,
                        issued_at: now,
                        ttl,
                        token_id,
                    },
                )
                .map(|issued| ApiReply::Token {
                    token: issued.token,
                    token_id,
                    expires_at: issued.claims.expires_at,
                })
                .map_err(|e| ApiError::new(pb::ErrorCode::InvalidRequest, e.to_string()));
                self.api_answer(id, result);
            }
            ApiRequest::RevokeToken { token } => {
                let result = match token::verify_signature(&token, &self.keys) {
                    Ok(claims) => {
                        let sessions = self.revoke_sessions(
                            now,
                            crate::Revocation::Token {
                                token_id: claims.token_id,
                                expires_at: claims.expires_at,
                            },
                        );
                        Ok(ApiReply::Ended { sessions })
                    }
                    Err(e) => Err(ApiError::new(e.error_code(), e.to_string())),
                };
                self.api_answer(id, result);
            }
            ApiRequest::RevokeUser { user } => {
                let sessions = self.revoke_sessions(now, crate::Revocation::User(user));
                self.api_answer(id, Ok(ApiReply::Ended { sessions }));
            }
            ApiRequest::Sessions { user } => {
                let sessions = self
                    .registry
                    .user_conns(user)
                    .iter()
                    .filter_map(|&c| {
                        let conn = self.registry.get(c)?;
                        let s = conn.session.as_ref()?;
                        Some(SessionInfo {
                            session_id: s.session_id,
                            device: s.device.to_string(),
                            platform: s.platform,
                            connected_at: conn.opened_at,
                            last_activity: conn.last_activity,
                            expires_at: s.expires_at(),
                        })
                    })
                    .collect();
                self.api_answer(id, Ok(ApiReply::Sessions(sessions)));
            }
            ApiRequest::Kick {
                user,
                device,
                message,
            } => {
                let conns: Vec<ConnId> = self
                    .registry
                    .user_conns(user)
                    .iter()
                    .copied()
                    .filter(|&c| {
                        device.as_deref().is_none_or(|d| {
                            self.registry
                                .get(c)
                                .and_then(|c| c.session.as_ref())
                                .is_some_and(|s| *s.device == *d)
                        })
                    })
                    .collect();
                for &conn in &conns {
                    self.counters.kicks.admin += 1;
                    self.kick(conn, pb::KickReason::Admin, &message);
                }
                self.api_answer(
                    id,
                    Ok(ApiReply::Ended {
                        sessions: conns.len(),
                    }),
                );
            }
            ApiRequest::Presence { users } => self.api_presence(id, users),
            ApiRequest::Send {
                sender,
                device,
                conversation,
                client_msg_id,
                content,
            } => self.api_send(
                now,
                id,
                sender,
                device,
                conversation,
                client_msg_id,
                content,
            ),
            ApiRequest::History {
                user,
                conversation,
                before_seq,
                limit,
            } => {
                let max = self.config.history_page_limit;
                let limit = if limit == 0 || limit > max {
                    max
                } else {
                    limit
                } as usize;
                self.storage(
                    Request::History {
                        user: UserId(user),
                        conversation,
                        before_seq: if before_seq == 0 {
                            u64::MAX
                        } else {
                            before_seq
                        },
                        limit,
                    },
                    Pending::Api(ApiPending::History(id, limit)),
                );
            }
            ApiRequest::Conversation { actor, op } => self.api_conversation(now, id, actor, op),
            ApiRequest::ReadCount {
                user,
                conversation,
                seq,
            } => {
                self.storage(
                    Request::ReadCount {
                        user: UserId(user),
                        conversation,
                        seq,
                    },
                    Pending::Api(ApiPending::ReadCount(id)),
                );
            }
            ApiRequest::Chatroom { room, op } => {
                let answer = self.api_chatroom(room, op);
                self.api_answer(id, Ok(answer));
            }
            ApiRequest::Members { conversation } => {
                self.storage(
                    Request::Members { conversation },
                    Pending::Api(ApiPending::Members(id)),
                );
            }
        }
    }

    /// The next answer to an [`ApiRequest`], if any is ready.
    pub fn poll_api_reply(&mut self) -> Option<ApiOutcome> {
        self.api.replies.pop_front()
    }

    fn api_answer(&mut self, id: ApiId, result: Result<ApiReply, ApiError>) {
        self.api.replies.push_back((id, result));
    }

    fn api_presence(&mut self, id: ApiId, users: Vec<u64>) {
        if users.is_empty() || users.len() > MAX_PRESENCE_BATCH {
            return self.api_answer(
                id,
                Err(ApiError::new(
                    pb::ErrorCode::InvalidRequest,
                    format!("ask about 1 to {MAX_PRESENCE_BATCH} users at a time"),
                )),
            );
        }
        let results: Vec<Presence> = users
            .iter()
            .map(|&user| Presence {
                user,
                devices: self.registry.user_conns(user).len(),
                last_active_ms: None,
            })
            .collect();
        self.api.presence.insert(id, (results, users.len()));
        for (index, user) in users.into_iter().enumerate() {
            self.storage(
                Request::LastActive { user: UserId(user) },
                Pending::Api(ApiPending::LastActive(id, index)),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn api_send(
        &mut self,
        now: Timestamp,
        id: ApiId,
        sender: u64,
        device: String,
        conversation: ConversationKey,
        client_msg_id: u64,
        content: pb::Content,
    ) {
        let refuse = |message: &str| Err(ApiError::new(pb::ErrorCode::InvalidRequest, message));
        if client_msg_id == 0 {
            return self.api_answer(id, refuse("client_msg_id is 0"));
        }
        match &content.body {
            None => return self.api_answer(id, refuse("content has no body")),
            Some(pb::content::Body::Text(t)) if t.text.is_empty() => {
                return self.api_answer(id, refuse("text content is empty"));
            }
            Some(_) => {}
        }
        if content.encoded_len() > self.config.max_content_len {
            return self.api_answer(
                id,
                Err(ApiError::new(
                    pb::ErrorCode::ContentTooLarge,
                    "content exceeds the server's limit",
                )),
            );
        }
        let device: Arc<str> = device.into();
        let payload = Bytes::from(content.encode_to_vec());
        self.storage(
            Request::Append(AppendRequest {
                sender: UserId(sender),
                sender_device: Arc::clone(&device),
                client_msg_id,
                conversation,
                payload: payload.clone(),
                now_ms: now.as_millis(),
                refs: Default::default(),
            }),
            Pending::Api(ApiPending::Send(
                id,
                AppendCtx {
                    to: ReplyTo {
                        conn: API_CONN,
                        rid: 0,
                        user: sender,
                    },
                    device,
                    client_msg_id,
                    key: conversation,
                    content: payload,
                },
            )),
        );
    }

    fn api_conversation(&mut self, now: Timestamp, id: ApiId, actor: u64, op: ApiConversationOp) {
        let users = |ids: &[u64]| ids.iter().copied().map(UserId).collect::<Vec<_>>();
        let now_ms = now.as_millis();
        let membership =
            |event: pb::ConversationEventKind| OpKind::Membership { event, role: None };
        let (request, kind) = match op {
            ApiConversationOp::CreateGroup { name, members } => (
                Request::CreateGroup {
                    owner: UserId(actor),
                    name,
                    members: users(&members),
                    now_ms,
                },
                OpKind::CreateGroup { members },
            ),
            ApiConversationOp::AddMembers { group, users: u } => (
                Request::AddMembers {
                    actor: UserId(actor),
                    group,
                    users: users(&u),
                    now_ms,
                },
                membership(pb::ConversationEventKind::MembersAdded),
            ),
            ApiConversationOp::RemoveMembers { group, users: u } => (
                Request::RemoveMembers {
                    actor: UserId(actor),
                    group,
                    users: users(&u),
                },
                membership(pb::ConversationEventKind::MembersRemoved),
            ),
            ApiConversationOp::Leave { group } => (
                Request::Leave {
                    user: UserId(actor),
                    group,
                },
                membership(pb::ConversationEventKind::MemberLeft),
            ),
            ApiConversationOp::SetRole { group, user, role } => (
                Request::SetRole {
                    actor: UserId(actor),
                    group,
                    user: UserId(user),
                    role,
                },
                OpKind::Membership {
                    event: pb::ConversationEventKind::RoleChanged,
                    role: Some(role),
                },
            ),
            ApiConversationOp::Edit {
                conversation,
                seq,
                content,
            } => {
                if let Some((code, why)) = self.content_problem(&content) {
                    return self.api_answer(id, Err(ApiError::new(code, why)));
                }
                (
                    self.edit_request(actor, conversation, seq, content, now_ms),
                    OpKind::Edit,
                )
            }
            ApiConversationOp::Recall { conversation, seq } => (
                self.recall_request(actor, conversation, seq, now_ms),
                OpKind::Recall,
            ),
            ApiConversationOp::Dissolve { group } => (
                Request::Dissolve {
                    actor: UserId(actor),
                    group,
                },
                membership(pb::ConversationEventKind::Dissolved),
            ),
            ApiConversationOp::Mute {
                group,
                user,
                duration_ms,
            } => {
                let until_ms = if duration_ms == 0 {
                    0
                } else {
                    now_ms.saturating_add(duration_ms)
                };
                (
                    Request::Mute {
                        actor: UserId(actor),
                        group,
                        user: user.map(UserId),
                        until_ms,
                        now_ms,
                    },
                    OpKind::Mute { until_ms },
                )
            }
            ApiConversationOp::CreatePublicAccount { name } => (
                Request::CreatePublicAccount {
                    owner: UserId(actor),
                    name,
                    now_ms,
                },
                OpKind::CreatePublicAccount,
            ),
            ApiConversationOp::Follow { account } => (
                Request::Follow {
                    user: UserId(actor),
                    account,
                    now_ms,
                },
                OpKind::Follow,
            ),
            ApiConversationOp::Unfollow { account } => (
                Request::Unfollow {
                    user: UserId(actor),
                    account,
                },
                OpKind::Follow,
            ),
        };
        let ctx = OpCtx {
            to: ReplyTo {
                conn: API_CONN,
                rid: 0,
                user: actor,
            },
            kind,
        };
        self.storage(request, Pending::Api(ApiPending::Op(id, ctx)));
    }

    /// A storage completion for an API request.
    pub(super) fn on_api_storage(
        &mut self,
        pending: ApiPending,
        result: Result<Reply, StorageError>,
    ) {
        match pending {
            ApiPending::Send(id, ctx) => {
                let outcome = match result {
                    Ok(Reply::Appended(outcome)) => outcome,
                    Ok(_) => return self.api_answer(id, Err(wrong_reply())),
                    Err(err) => return self.api_answer(id, Err(storage_failure(&err))),
                };
                self.api_answer(
                    id,
                    Ok(ApiReply::Sent {
                        seq: outcome.seq,
                        server_time_ms: outcome.server_time_ms,
                        duplicate: outcome.duplicate,
                    }),
                );
                if outcome.duplicate {
                    self.counters.messages_duplicate += 1;
                } else {
                    // Counted like a client's send (petrel_messages_persisted_total).
                    *super::messaging::scenario(&mut self.counters.messages_persisted, ctx.key) +=
                        1;
                    self.fan_out(ctx, outcome);
                }
            }
            ApiPending::Op(id, ctx) => {
                let answer = match &result {
                    Ok(Reply::Created(key)) => Ok(ApiReply::Created(*key)),
                    Ok(Reply::Edited(o)) => Ok(ApiReply::Edited {
                        conversation: o.message.conversation,
                        seq: o.message.seq,
                        edited_at_ms: o.message.edited_at_ms.unwrap_or(0),
                    }),
                    Ok(Reply::Recalled(o)) => Ok(ApiReply::Recalled {
                        conversation: o.conversation,
                        seq: o.seq,
                        by: o.recall.by.0,
                        at_ms: o.recall.at_ms,
                    }),
                    Ok(Reply::Membership(change)) => Ok(ApiReply::Membership {
                        conversation: change.conversation,
                        changed: change.changed.iter().map(|u| u.0).collect(),
                        members: change.members.clone(),
                    }),
                    Ok(_) => Err(wrong_reply()),
                    Err(err) => Err(storage_failure(err)),
                };
                self.api_answer(id, answer);
                // The protocol's handler sends the ConversationEvents (its reply to the
                // requester goes to API_CONN, i.e. nowhere).
                self.on_op_done(ctx, result);
            }
            ApiPending::History(id, limit) => {
                let answer = match result {
                    Ok(Reply::History(page)) => {
                        let has_more = (page.cut || page.messages.len() >= limit)
                            && page
                                .messages
                                .first()
                                .is_some_and(|m| m.seq > page.first_seq.max(1));
                        Ok(ApiReply::History {
                            messages: page.messages,
                            first_seq: page.first_seq,
                            has_more,
                        })
                    }
                    Ok(_) => Err(wrong_reply()),
                    Err(err) => Err(storage_failure(&err)),
                };
                self.api_answer(id, answer);
            }
            ApiPending::Members(id) => {
                let answer = match result {
                    Ok(Reply::Members(members)) => Ok(ApiReply::Members(members)),
                    Ok(_) => Err(wrong_reply()),
                    Err(err) => Err(storage_failure(&err)),
                };
                self.api_answer(id, answer);
            }
            ApiPending::ReadCount(id) => {
                let answer = match result {
                    Ok(Reply::ReadCount(read, of)) => Ok(ApiReply::ReadCount { read, of }),
                    Ok(_) => Err(wrong_reply()),
                    Err(err) => Err(storage_failure(&err)),
                };
                self.api_answer(id, answer);
            }
            ApiPending::LastActive(id, index) => {
                let Some((results, remaining)) = self.api.presence.get_mut(&id) else {
                    return;
                };
                match result {
                    Ok(Reply::LastActive(at)) => {
                        if let Some(p) = results.get_mut(index) {
                            p.last_active_ms = at;
                        }
                    }
                    // Presence without the last-seen time beats no answer.
                    _ => self.counters.storage_errors += 1,
                }
                *remaining -= 1;
                if *remaining == 0
                    && let Some((results, _)) = self.api.presence.remove(&id)
                {
                    self.api_answer(id, Ok(ApiReply::Presence(results)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Config, Event, KeyRing};
    use petrel_storage::{Engine, MemEngine};

    fn plane() -> (Control, MemEngine, Timestamp) {
        let keys = KeyRing::parse("k1 000102030405060708090a0b0c0d0e0f\n").unwrap();
        let now = Timestamp::from_millis(1_764_000_000_000);
        let mut control = Control::new(Config::default(), keys, now);
        let storage = MemEngine::new(Default::default());
        run(&mut control, &storage, now);
        (control, storage, now)
    }

    /// Performs storage actions until none is left; returns the sends.
    fn run(control: &mut Control, storage: &MemEngine, now: Timestamp) -> usize {
        let mut sends = 0;
        while let Some(action) = control.poll_action() {
            match action {
                Action::Storage { ticket, request } => {
                    let result = storage.execute(request);
                    control.handle(now, Event::Storage { ticket, result });
                }
                Action::Send { .. } => sends += 1,
                Action::Close { .. }
                | Action::NoteCongestion { .. }
                | Action::OfflineMessage(_)
                | Action::ToCore { .. } => {}
            }
        }
        sends
    }

    fn text(t: &str) -> pb::Content {
        pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: t.into(),
                mentions: Vec::new(),
            })),
        }
    }

    #[test]
    fn a_send_is_answered_once_durable_and_a_retry_is_a_duplicate() {
        let (mut control, storage, now) = plane();
        let send = |id| {
            (
                ApiId(id),
                ApiRequest::Send {
                    sender: 1,
                    device: "backend".into(),
                    conversation: ConversationKey::single(UserId(1), UserId(2)),
                    client_msg_id: 77,
                    content: text("order shipped"),
                },
            )
        };
        let (id, req) = send(1);
        control.handle_api(now, id, req);
        assert!(
            control.poll_api_reply().is_none(),
            "no answer before storage"
        );
        run(&mut control, &storage, now);
        let (id, reply) = control.poll_api_reply().unwrap();
        assert_eq!(id, ApiId(1));
        assert!(matches!(
            reply,
            Ok(ApiReply::Sent {
                seq: 1,
                duplicate: false,
                ..
            })
        ));
        let (id, req) = send(2);
        control.handle_api(now, id, req);
        run(&mut control, &storage, now);
        let (_, reply) = control.poll_api_reply().unwrap();
        assert!(matches!(
            reply,
            Ok(ApiReply::Sent {
                seq: 1,
                duplicate: true,
                ..
            })
        ));
        // Counted like client sends: one stored 1:1 message, one duplicate.
        assert_eq!(control.counters().messages_persisted.single, 1);
        assert_eq!(control.counters().messages_duplicate, 1);
    }

    #[test]
    fn bad_requests_are_answered_with_an_error_and_nothing_is_stored() {
        let (mut control, storage, now) = plane();
        control.handle_api(
            now,
            ApiId(5),
            ApiRequest::Send {
                sender: 1,
                device: "backend".into(),
                conversation: ConversationKey::Group(9),
                client_msg_id: 0,
                content: text("x"),
            },
        );
        let (_, reply) = control.poll_api_reply().unwrap();
        assert_eq!(reply.unwrap_err().code, pb::ErrorCode::InvalidRequest);
        // A group that does not exist: storage refuses it.
        control.handle_api(
            now,
            ApiId(6),
            ApiRequest::Send {
                sender: 1,
                device: "backend".into(),
                conversation: ConversationKey::Group(9),
                client_msg_id: 3,
                content: text("x"),
            },
        );
        run(&mut control, &storage, now);
        let (_, reply) = control.poll_api_reply().unwrap();
        assert!(reply.is_err());
        control.handle_api(
            now,
            ApiId(7),
            ApiRequest::RevokeToken {
                token: "not a token".into(),
            },
        );
        let (_, reply) = control.poll_api_reply().unwrap();
        assert_eq!(reply.unwrap_err().code, pb::ErrorCode::TokenMalformed);
    }

    #[test]
    fn presence_batches_collect_every_last_active_read() {
        let (mut control, storage, now) = plane();
        storage
            .execute(Request::TouchActivity {
                user: UserId(2),
                now_ms: 123,
            })
            .unwrap();
        control.handle_api(
            now,
            ApiId(1),
            ApiRequest::Presence {
                users: vec![1, 2, 3],
            },
        );
        run(&mut control, &storage, now);
        let (_, reply) = control.poll_api_reply().unwrap();
        let Ok(ApiReply::Presence(list)) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(list.len(), 3);
        assert_eq!(list[1].last_active_ms, Some(123));
        assert_eq!(list[0].devices, 0);
        assert!(control.poll_api_reply().is_none());
    }

    #[test]
    fn issued_tokens_verify_and_revoking_one_by_text_lists_it() {
        let (mut control, _storage, now) = plane();
        control.handle_api(
            now,
            ApiId(1),
            ApiRequest::IssueToken {
                user: 4,
                device: "phone".into(),
                platform: pb::Platform::Ios,
                ttl: std::time::Duration::from_secs(60),
            },
        );
        let (_, reply) = control.poll_api_reply().unwrap();
        let Ok(ApiReply::Token { token, .. }) = reply else {
            panic!("{reply:?}")
        };
        assert!(token::verify(&token, now, &control.keys, &control.revoked).is_ok());
        control.handle_api(
            now,
            ApiId(2),
            ApiRequest::RevokeToken {
                token: token.clone(),
            },
        );
        assert!(matches!(
            control.poll_api_reply(),
            Some((_, Ok(ApiReply::Ended { sessions: 0 })))
        ));
        assert!(token::verify(&token, now, &control.keys, &control.revoked).is_err());
    }
}
