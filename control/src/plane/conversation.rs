//! `ConversationOp`: group management, chatroom join/leave, public accounts, follows,
//! read positions and member lists.
//!
//! Group and public-account operations go to storage, which checks roles atomically
//! with the change; the answer is a `ConversationOpResult` to the requester and a
//! `ConversationEvent` to every other online device of the affected users (the members
//! after the change, plus whoever was removed or left). Chatroom operations are
//! answered from memory by the room's owner core (`chatrooms`, `room_owner`).

use std::collections::BTreeSet;

use petrel_proto::{Frame, pb};
use petrel_storage::{
    ConversationKey, EditOutcome, Member, RecallOutcome, Reply, Request, Role, StorageError, UserId,
};

use super::Control;
use super::pending::{OpCtx, OpKind, Pending, ReplyTo};
use super::push::{Push, PushKind};
use super::receipts::Receipt;
use crate::convert::{self, Target};
use crate::time::Timestamp;
use petrel_conn::ConnId;

fn wire_members(members: impl IntoIterator<Item = Member>) -> Vec<pb::Member> {
    members
        .into_iter()
        .map(|m| pb::Member {
            user_id: m.user.0,
            role: convert::role_to_wire(m.role) as i32,
        })
        .collect()
}

fn users(ids: &[u64]) -> Vec<UserId> {
    ids.iter().copied().map(UserId).collect()
}

impl Control {
    pub(super) fn on_conversation_op(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        rid: u32,
        op: pb::ConversationOp,
    ) {
        let Some(user) = self
            .registry
            .get(conn)
            .and_then(|c| c.session.as_ref())
            .map(|s| s.user)
        else {
            return;
        };
        let to = ReplyTo { conn, rid, user };
        let now_ms = now.as_millis();
        use pb::conversation_op::Op;
        let Some(op) = op.op else {
            return self.invalid(conn, rid, "empty ConversationOp");
        };
        let (request, kind) = match op {
            Op::CreateGroup(g) => {
                let members = g.members.clone();
                (
                    Request::CreateGroup {
                        owner: UserId(user),
                        name: g.name,
                        members: users(&g.members),
                        now_ms,
                    },
                    OpKind::CreateGroup { members },
                )
            }
            Op::AddMembers(a) if a.group_id != 0 => (
                Request::AddMembers {
                    actor: UserId(user),
                    group: a.group_id,
                    users: users(&a.users),
                    now_ms,
                },
                OpKind::Membership {
                    event: pb::ConversationEventKind::MembersAdded,
                    role: None,
                },
            ),
            Op::RemoveMembers(r) if r.group_id != 0 => (
                Request::RemoveMembers {
                    actor: UserId(user),
                    group: r.group_id,
                    users: users(&r.users),
                },
                OpKind::Membership {
                    event: pb::ConversationEventKind::MembersRemoved,
                    role: None,
                },
            ),
            Op::LeaveGroup(l) if l.group_id != 0 => (
                Request::Leave {
                    user: UserId(user),
                    group: l.group_id,
                },
                OpKind::Membership {
                    event: pb::ConversationEventKind::MemberLeft,
                    role: None,
                },
            ),
            Op::SetRole(s) if s.group_id != 0 && s.user_id != 0 => {
                let Some(role) = convert::role_from_wire(s.role) else {
                    return self.invalid(conn, rid, "role missing or unknown");
                };
                (
                    Request::SetRole {
                        actor: UserId(user),
                        group: s.group_id,
                        user: UserId(s.user_id),
                        role,
                    },
                    OpKind::Membership {
                        event: pb::ConversationEventKind::RoleChanged,
                        role: Some(role),
                    },
                )
            }
            Op::CreatePublicAccount(p) => (
                Request::CreatePublicAccount {
                    owner: UserId(user),
                    name: p.name,
                    now_ms,
                },
                OpKind::CreatePublicAccount,
            ),
            Op::Follow(f) if f.account_id != 0 => (
                Request::Follow {
                    user: UserId(user),
                    account: f.account_id,
                    now_ms,
                },
                OpKind::Follow,
            ),
            Op::Unfollow(f) if f.account_id != 0 => (
                Request::Unfollow {
                    user: UserId(user),
                    account: f.account_id,
                },
                OpKind::Follow,
            ),
            Op::MarkDelivered(d) => {
                let Some(key) = convert::message_key(user, d.conversation.as_ref(), d.seq) else {
                    return self.invalid(
                        conn,
                        rid,
                        "delivery receipts name a message (seq 1 or more) of a persisted \
                         conversation",
                    );
                };
                // Nothing is stored: answered at once, the receipt goes out live.
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: d.conversation,
                        members: Vec::new(),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
                return self.send_receipts(to, key, d.seq, Receipt::Delivered);
            }
            Op::MarkRead(m) => match convert::target(user, m.conversation.as_ref()) {
                Some(Target::Persisted(key)) => (
                    Request::MarkRead {
                        user: UserId(user),
                        conversation: key,
                        seq: m.seq,
                    },
                    OpKind::MarkRead { key },
                ),
                _ => {
                    return self.invalid(
                        conn,
                        rid,
                        "read positions exist only for persisted conversations",
                    );
                }
            },
            Op::RecallMessage(r) => {
                let Some(key) = convert::message_key(user, r.conversation.as_ref(), r.seq) else {
                    return self.invalid(
                        conn,
                        rid,
                        "recall names a message (seq 1 or more) of a persisted conversation",
                    );
                };
                (
                    self.recall_request(user, key, r.seq, now_ms),
                    OpKind::Recall,
                )
            }
            Op::ReadCount(r) => {
                let Some(key) = convert::message_key(user, r.conversation.as_ref(), r.seq) else {
                    return self.invalid(
                        conn,
                        rid,
                        "read counts name a message (seq 1 or more) of a persisted conversation",
                    );
                };
                (
                    Request::ReadCount {
                        user: UserId(user),
                        conversation: key,
                        seq: r.seq,
                    },
                    OpKind::ReadCount { key, seq: r.seq },
                )
            }
            Op::EditMessage(e) => {
                let content = petrel_proto::wire::encode_content(&e.content.unwrap_or_default());
                if let Some((code, why)) = self.content_problem(&content) {
                    return self.reject_send(conn, rid, code, &why);
                }
                let Some(key) = convert::message_key(user, e.conversation.as_ref(), e.seq) else {
                    return self.invalid(
                        conn,
                        rid,
                        "edit names a message (seq 1 or more) of a persisted conversation",
                    );
                };
                (
                    self.edit_request(user, key, e.seq, content, now_ms),
                    OpKind::Edit,
                )
            }
            Op::ListMembers(l) => match convert::target(user, l.conversation.as_ref()) {
                Some(Target::Persisted(key)) => (
                    Request::Members { conversation: key },
                    OpKind::ListMembers { key },
                ),
                Some(Target::Chatroom(room)) => return self.list_chatroom(now, conn, rid, room),
                None => return self.invalid(conn, rid, "conversation id missing or invalid"),
            },
            Op::JoinChatroom(j) if j.room_id != 0 => {
                return self.join_chatroom(now, conn, rid, j.room_id);
            }
            Op::LeaveChatroom(l) if l.room_id != 0 => {
                return self.leave_chatroom(conn, rid, l.room_id);
            }
            _ => return self.invalid(conn, rid, "id missing (0) in ConversationOp"),
        };
        self.storage(request, Pending::Op(OpCtx { to, kind }));
    }

    /// The storage request recalling `seq` of `key` as `actor`, with the configured
    /// window (one place for the protocol's and the API's recall).
    pub(super) fn recall_request(
        &self,
        actor: u64,
        key: ConversationKey,
        seq: u64,
        now_ms: u64,
    ) -> Request {
        Request::Recall {
            actor: UserId(actor),
            conversation: key,
            seq,
            window_ms: u64::try_from(self.config.recall_window.as_millis()).unwrap_or(u64::MAX),
            now_ms,
        }
    }

    /// The storage request replacing the content of `seq` of `key` by `content` as
    /// `actor`, with the configured window (the protocol's and the API's edit).
    pub(super) fn edit_request(
        &self,
        actor: u64,
        key: ConversationKey,
        seq: u64,
        content: bytes::Bytes,
        now_ms: u64,
    ) -> Request {
        Request::Edit {
            actor: UserId(actor),
            conversation: key,
            seq,
            payload: content,
            window_ms: u64::try_from(self.config.edit_window.as_millis()).unwrap_or(u64::MAX),
            now_ms,
        }
    }

    /// Pushes the edited version of a message to every participant's online devices —
    /// the requester's connection too, so it holds the server's edit time — each naming
    /// the conversation their way.
    fn push_edit(&mut self, outcome: &EditOutcome) {
        let single = matches!(outcome.message.conversation, ConversationKey::Single { .. });
        let mut users = std::mem::take(&mut self.scratch_users);
        users.clear();
        users.extend(
            outcome
                .recipients
                .iter()
                .map(|u| u.0)
                .filter(|&u| self.reachable(u, None)),
        );
        // A 1:1 chat is named differently by each side; a group the same for everyone.
        let views: &[u64] = if single {
            &users
        } else {
            &users[..users.len().min(1)]
        };
        for &viewer in views {
            let (push, _) = convert::push_from_stored(viewer, &outcome.message);
            let Some(bytes) = self.encode(&Frame::new(0, push)) else {
                continue;
            };
            let one = [viewer];
            self.deliver(Push {
                users: if single { &one } else { &users },
                except: None,
                kind: PushKind::Edit,
                bytes,
            });
        }
        self.scratch_users = users;
        self.counters.messages_edited += 1;
    }

    /// Tells every participant's online devices (but the requester's connection) that
    /// a message was recalled; each user gets the conversation as they name it.
    fn announce_recall(&mut self, to: ReplyTo, outcome: &RecallOutcome) {
        let single = matches!(outcome.conversation, ConversationKey::Single { .. });
        let event = |viewer: u64| pb::ConversationEvent {
            conversation: Some(convert::wire_id(viewer, outcome.conversation)),
            kind: pb::ConversationEventKind::Recalled as i32,
            actor: outcome.recall.by.0,
            users: Vec::new(),
            role: 0,
            seq: outcome.seq,
            until_ms: 0,
        };
        if single {
            for user in &outcome.recipients {
                self.notify(to, [user.0], event(user.0));
            }
        } else {
            let audience: Vec<u64> = outcome.recipients.iter().map(|u| u.0).collect();
            self.notify(to, audience, event(to.user));
        }
        self.counters.messages_recalled += 1;
    }

    fn invalid(&mut self, conn: ConnId, rid: u32, message: &str) {
        self.send_error(conn, rid, pb::ErrorCode::InvalidRequest, message, 0);
    }

    fn op_result(&mut self, to: ReplyTo, result: pb::ConversationOpResult) {
        self.send_frame(to.conn, Frame::response(to.rid, result));
    }

    /// Sends `event` to every online device of `audience` except the requesting
    /// connection. Each user is notified once even if listed twice. Returns how many
    /// connections it was sent to.
    pub(super) fn notify(
        &mut self,
        to: ReplyTo,
        audience: impl IntoIterator<Item = u64>,
        event: pb::ConversationEvent,
    ) -> u64 {
        let except = Some(to.conn);
        let mut users = std::mem::take(&mut self.scratch_users);
        users.clear();
        users.extend(audience);
        users.sort_unstable();
        users.dedup();
        users.retain(|&u| self.reachable(u, except));
        let mut sent = 0;
        if !users.is_empty()
            && let Some(bytes) = self.encode(&Frame::new(0, event))
        {
            sent = self.deliver(Push {
                users: &users,
                except,
                kind: PushKind::Event,
                bytes,
            });
        }
        self.scratch_users = users;
        sent
    }

    pub(super) fn on_op_done(&mut self, ctx: OpCtx, result: Result<Reply, StorageError>) {
        let to = ctx.to;
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => {
                let (code, internal) = convert::storage_error_code(&err);
                if internal {
                    self.counters.storage_errors += 1;
                }
                let retry = convert::storage_retry_after_ms(&err);
                return self.send_error(to.conn, to.rid, code, &err.to_string(), retry);
            }
        };
        match (ctx.kind, reply) {
            (OpKind::CreateGroup { members }, Reply::Created(key)) => {
                let mut list = vec![Member {
                    user: UserId(to.user),
                    role: Role::Owner,
                }];
                let others: BTreeSet<u64> = members
                    .into_iter()
                    .filter(|&m| m != to.user && m != 0)
                    .collect();
                list.extend(others.iter().map(|&m| Member {
                    user: UserId(m),
                    role: Role::Member,
                }));
                let conversation = convert::wire_id(to.user, key);
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: Some(conversation),
                        members: wire_members(list),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
                let added: Vec<u64> = others.iter().copied().collect();
                self.notify(
                    to,
                    others.into_iter().chain([to.user]),
                    pb::ConversationEvent {
                        conversation: Some(conversation),
                        kind: pb::ConversationEventKind::MembersAdded as i32,
                        actor: to.user,
                        users: added,
                        role: 0,
                        seq: 0,
                        until_ms: 0,
                    },
                );
            }
            (OpKind::CreatePublicAccount, Reply::Created(key)) => self.op_result(
                to,
                pb::ConversationOpResult {
                    conversation: Some(convert::wire_id(to.user, key)),
                    members: wire_members([Member {
                        user: UserId(to.user),
                        role: Role::Owner,
                    }]),
                    recent: Vec::new(),
                    read_count: None,
                },
            ),
            (OpKind::Membership { event, role }, Reply::Membership(change)) => {
                let conversation = convert::wire_id(to.user, change.conversation);
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: Some(conversation),
                        members: Vec::new(),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
                if change.changed.is_empty() {
                    return;
                }
                let mut changed: Vec<u64> = change.changed.iter().map(|u| u.0).collect();
                let audience: Vec<u64> = change
                    .members
                    .iter()
                    .map(|m| m.user.0)
                    .chain(changed.iter().copied())
                    .chain([to.user])
                    .collect();
                if event == pb::ConversationEventKind::Dissolved {
                    // Everyone is out: no list (a large group's would not fit a frame).
                    changed.clear();
                }
                self.notify(
                    to,
                    audience,
                    pb::ConversationEvent {
                        conversation: Some(conversation),
                        kind: event as i32,
                        actor: to.user,
                        users: changed,
                        role: role.map_or(0, |r| convert::role_to_wire(r) as i32),
                        seq: 0,
                        until_ms: 0,
                    },
                );
            }
            (OpKind::Mute { until_ms }, Reply::Membership(change)) => {
                let conversation = convert::wire_id(to.user, change.conversation);
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: Some(conversation),
                        members: Vec::new(),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
                let audience: Vec<u64> = change
                    .members
                    .iter()
                    .map(|m| m.user.0)
                    .chain([to.user])
                    .collect();
                self.notify(
                    to,
                    audience,
                    pb::ConversationEvent {
                        conversation: Some(conversation),
                        kind: pb::ConversationEventKind::Muted as i32,
                        actor: to.user,
                        users: change.changed.iter().map(|u| u.0).collect(),
                        role: 0,
                        seq: 0,
                        until_ms,
                    },
                );
            }
            (OpKind::ReadCount { key, seq }, Reply::ReadCount(read, of)) => self.op_result(
                to,
                pb::ConversationOpResult {
                    conversation: Some(convert::wire_id(to.user, key)),
                    members: Vec::new(),
                    recent: Vec::new(),
                    read_count: Some(pb::ReadCountResult { seq, read, of }),
                },
            ),
            (OpKind::Edit, Reply::Edited(outcome)) => {
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: Some(convert::wire_id(to.user, outcome.message.conversation)),
                        members: Vec::new(),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
                self.push_edit(&outcome);
            }
            (OpKind::Recall, Reply::Recalled(outcome)) => {
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: Some(convert::wire_id(to.user, outcome.conversation)),
                        members: Vec::new(),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
                self.announce_recall(to, &outcome);
            }
            (OpKind::Follow, Reply::Membership(change)) => self.op_result(
                to,
                pb::ConversationOpResult {
                    conversation: Some(convert::wire_id(to.user, change.conversation)),
                    members: Vec::new(),
                    recent: Vec::new(),
                    read_count: None,
                },
            ),
            (OpKind::MarkRead { key }, Reply::State(state)) => {
                let conversation = convert::wire_id(to.user, key);
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: Some(conversation),
                        members: Vec::new(),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
                // The user's other devices move their read position too.
                self.notify(
                    to,
                    [to.user],
                    pb::ConversationEvent {
                        conversation: Some(conversation),
                        kind: pb::ConversationEventKind::Read as i32,
                        actor: to.user,
                        users: vec![to.user],
                        role: 0,
                        seq: state.read_seq,
                        until_ms: 0,
                    },
                );
                // And the other members see a receipt (receipts.rs).
                self.send_receipts(to, key, state.read_seq, Receipt::Read);
            }
            (OpKind::ListMembers { key }, Reply::Members(members)) => {
                let me = members.iter().find(|m| m.user.0 == to.user);
                // Public-account follower lists are for the owner only.
                let allowed = match key {
                    ConversationKey::PublicAccount(_) => me.is_some_and(|m| m.role == Role::Owner),
                    _ => me.is_some(),
                };
                if !allowed {
                    return self.send_error(
                        to.conn,
                        to.rid,
                        pb::ErrorCode::NotAMember,
                        "only members may list members",
                        0,
                    );
                }
                self.op_result(
                    to,
                    pb::ConversationOpResult {
                        conversation: Some(convert::wire_id(to.user, key)),
                        members: wire_members(members),
                        recent: Vec::new(),
                        read_count: None,
                    },
                );
            }
            _ => {
                self.counters.storage_errors += 1;
                self.send_error(
                    to.conn,
                    to.rid,
                    pb::ErrorCode::Internal,
                    "storage answered with the wrong reply",
                    0,
                );
            }
        }
    }
}
