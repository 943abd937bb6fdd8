//! Sending messages: `SendMessage` → storage append → `Ack` to the sender and
//! `MessagePush` to every other online device of every recipient. Chatroom sends never
//! touch storage and are handed to the room's owner (`chatrooms`, `room_owner`), which
//! skips members that lag (reported to them with a `Gap`, see [`crate::chatroom`]); the
//! `Gap` frame itself is built here.
//!
//! Performance-critical path (every message goes through here): no locks, no logging,
//! one encode per distinct view of a push (a 1:1 chat has two: the peer's side and the
//! sender's side; a group or public account has one), shared by every receiver. No heap
//! allocation per message on the 1:1 path (`control/tests/allocations.rs` counts them):
//! the device name travels as the session's `Arc<str>`, and the push's owned copy of it
//! is a reused scratch string.

use std::sync::Arc;

use petrel_proto::content::ContentView;
use petrel_proto::{Body, Frame, pb};
use petrel_storage::{
    AppendOutcome, AppendRequest, ConversationKey, Refs, Reply, Request, StorageError, UserId,
};

use super::Control;
use super::pending::{AppendCtx, Pending, ReplyTo};
use super::push::{Push, PushKind};
use crate::convert::{self, Target};
use crate::counters::ByScenario;
use crate::event::{Action, OfflineMessage};
use crate::time::Timestamp;
use petrel_conn::ConnId;

/// Which per-scenario counter a conversation feeds.
pub(super) fn scenario(counters: &mut ByScenario, key: ConversationKey) -> &mut u64 {
    match key {
        ConversationKey::Single { .. } => &mut counters.single,
        ConversationKey::Group(_) => &mut counters.group,
        ConversationKey::PublicAccount(_) => &mut counters.public_account,
    }
}

impl Control {
    pub(super) fn on_send_message(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        rid: u32,
        msg: pb::SendMessage,
    ) {
        let Some(session) = self.registry.get(conn).and_then(|c| c.session.as_ref()) else {
            return;
        };
        let user = session.user;
        let device = session.device.clone();
        if msg.client_msg_id == 0 {
            return self.reject_send(
                conn,
                rid,
                pb::ErrorCode::InvalidRequest,
                "client_msg_id is 0",
            );
        }
        let content = msg.content;
        if let Some((code, why)) = self.content_problem(&content) {
            return self.reject_send(conn, rid, code, &why);
        }
        if msg.mentions.len() > Refs::MAX_MENTIONS {
            return self.reject_send(
                conn,
                rid,
                pb::ErrorCode::InvalidRequest,
                "more than 100 mentions",
            );
        }
        match convert::target(user, msg.conversation.as_ref()) {
            None => self.reject_send(
                conn,
                rid,
                pb::ErrorCode::InvalidRequest,
                "conversation id missing or invalid",
            ),
            Some(Target::Chatroom(room)) => self.send_to_chatroom(
                now,
                conn,
                rid,
                user,
                &device,
                msg.client_msg_id,
                room,
                content,
                (msg.reply_to, msg.mentions),
            ),
            Some(Target::Persisted(key)) => {
                let payload = content.clone();
                self.storage(
                    Request::Append(AppendRequest {
                        sender: UserId(user),
                        sender_device: Arc::clone(&device),
                        client_msg_id: msg.client_msg_id,
                        conversation: key,
                        payload,
                        now_ms: now.as_millis(),
                        refs: Refs {
                            reply_to: msg.reply_to,
                            mentions: msg.mentions.into_iter().map(UserId).collect(),
                        },
                    }),
                    Pending::Append(AppendCtx {
                        to: ReplyTo { conn, rid, user },
                        device,
                        client_msg_id: msg.client_msg_id,
                        key,
                        content,
                    }),
                );
            }
        }
    }

    /// What is wrong with a message's content (a send's, an edit's), if anything: it must
    /// be present, within `max_content_len`, and pass the checked view. Checked once,
    /// never decoded: the bytes are stored and pushed as they came.
    pub(super) fn content_problem(&self, content: &[u8]) -> Option<(pb::ErrorCode, String)> {
        if content.is_empty() {
            return Some((pb::ErrorCode::InvalidRequest, "content missing".into()));
        }
        if content.len() > self.config.max_content_len {
            return Some((
                pb::ErrorCode::ContentTooLarge,
                "content exceeds the server's limit".into(),
            ));
        }
        ContentView::new_checked(content)
            .err()
            .map(|why| (pb::ErrorCode::InvalidRequest, why.to_string()))
    }

    pub(super) fn reject_send(
        &mut self,
        conn: ConnId,
        rid: u32,
        code: pb::ErrorCode,
        message: &str,
    ) {
        self.counters.messages_rejected += 1;
        self.send_error(conn, rid, code, message, 0);
    }

    pub(super) fn on_appended(&mut self, ctx: AppendCtx, result: Result<Reply, StorageError>) {
        let outcome = match result {
            Ok(Reply::Appended(outcome)) => outcome,
            Ok(_) => {
                self.counters.storage_errors += 1;
                return self.send_error(
                    ctx.to.conn,
                    ctx.to.rid,
                    pb::ErrorCode::Internal,
                    "storage answered an append with the wrong reply",
                    0,
                );
            }
            Err(err) => {
                let (code, internal) = convert::storage_error_code(&err);
                if internal {
                    self.counters.storage_errors += 1;
                } else {
                    self.counters.messages_rejected += 1;
                }
                let retry = convert::storage_retry_after_ms(&err);
                return self.send_error(ctx.to.conn, ctx.to.rid, code, &err.to_string(), retry);
            }
        };
        // The write is durable: acknowledge the sender (if still connected).
        self.send_frame(
            ctx.to.conn,
            Frame::response(
                ctx.to.rid,
                pb::Ack {
                    client_msg_id: ctx.client_msg_id,
                    conversation: Some(convert::wire_id(ctx.to.user, ctx.key)),
                    seq: outcome.seq,
                    server_time_ms: outcome.server_time_ms,
                    duplicate: outcome.duplicate,
                },
            ),
        );
        if outcome.duplicate {
            // The original append already pushed it.
            self.counters.messages_duplicate += 1;
            return;
        }
        *scenario(&mut self.counters.messages_persisted, ctx.key) += 1;
        self.fan_out(ctx, outcome);
    }

    /// Pushes a stored message to every online device of every recipient except the
    /// sending connection: one [`Push`] per view (a 1:1 chat has the peer's view and the
    /// sender's own, for the sender's other devices; other kinds have one view), and
    /// an [`OfflineMessage`] naming the recipients with no session at all.
    pub(super) fn fan_out(&mut self, ctx: AppendCtx, outcome: AppendOutcome) {
        let sender = ctx.to.user;
        let except = Some(ctx.to.conn);
        let single = matches!(ctx.key, ConversationKey::Single { .. });
        let mut peers = std::mem::take(&mut self.scratch_users);
        peers.clear();
        let mut own_devices = false;
        let mut offline = Vec::new();
        for recipient in &outcome.recipients {
            let user = recipient.0;
            if !self.reachable(user, except) {
                // Only the sender's own connection is left out above: any other
                // recipient not reachable has no session at all.
                if self.config.offline_notices && user != sender {
                    offline.push(user);
                }
            } else if single && user == sender {
                own_devices = true;
            } else {
                peers.push(user);
            }
        }
        // The frame owns its strings; lend it the scratch one and take it back after.
        let mut sender_device = std::mem::take(&mut self.scratch_device);
        sender_device.clear();
        sender_device.push_str(&ctx.device);
        let mut frame = Frame::new(
            0,
            pb::MessagePush {
                conversation: None,
                seq: outcome.seq,
                sender,
                server_time_ms: outcome.server_time_ms,
                client_msg_id: ctx.client_msg_id,
                content: ctx.content,
                sender_device,
                recalled_by: 0,
                recalled_at_ms: 0,
                edited_at_ms: 0,
                reply_to: outcome.refs.reply_to,
                mentions: convert::user_ids(&outcome.refs.mentions),
            },
        );
        let own = [sender];
        let views = [
            (peers.first().copied(), &peers[..]),
            (own_devices.then_some(sender), &own[..]),
        ];
        for (viewer, users) in views {
            let Some(viewer) = viewer else {
                continue;
            };
            if let Body::MessagePush(push) = &mut frame.body {
                push.conversation = Some(convert::wire_id(viewer, ctx.key));
            }
            if let Some(bytes) = self.encode(&frame) {
                self.deliver(Push {
                    users,
                    except,
                    kind: PushKind::Message(ctx.key),
                    bytes,
                });
            }
        }
        self.scratch_users = peers;
        if offline.is_empty() {
            if let Body::MessagePush(push) = &mut frame.body {
                self.scratch_device = std::mem::take(&mut push.sender_device);
            }
        } else if let Body::MessagePush(push) = frame.body {
            self.counters.offline_notices += 1;
            self.actions
                .push_back(Action::OfflineMessage(Box::new(OfflineMessage {
                    conversation: ctx.key,
                    seq: push.seq,
                    sender,
                    sender_device: push.sender_device,
                    client_msg_id: push.client_msg_id,
                    server_time_ms: push.server_time_ms,
                    content: push.content,
                    reply_to: push.reply_to,
                    mentions: push.mentions,
                    recipients: offline,
                })));
        }
    }

    /// Tells `conn` that pushes `from..=to` of `room` were skipped for it.
    pub(super) fn send_gap(&mut self, conn: ConnId, room: u64, from: u64, to: u64) {
        let frame = Frame::new(
            0,
            pb::Gap {
                conversation: Some(convert::chatroom_id(room)),
                from_seq: from,
                to_seq: to,
            },
        );
        if self.send_frame(conn, frame) {
            self.counters.chatroom_gaps += 1;
        }
    }
}
