//! Typing indicators: `Typing` from a member → `TypingNotice` to the conversation's other
//! online members. Ephemeral (never stored), never answered, and the first thing dropped
//! under load.
//!
//! A notice is dropped — and counted in `typing_dropped` — when the sender is over its
//! typing limit (its own token bucket, so typing never eats the request budget), the
//! control plane has many storage requests outstanding (a group's member list is a storage
//! read), the sender is not a member, the conversation is a public account or has more
//! members than `typing_max_audience`; a congested receiver is skipped. A 1:1 chat needs no
//! storage: the peer is in the conversation id. A chatroom's members are in memory.

use petrel_proto::pb;
use petrel_storage::{ConversationKey, Member, Reply, Request, StorageError, UserId};

use super::Control;
use super::pending::{COURTESY_SHED_PENDING, Pending, TypingCtx};
use super::push::{Push, PushKind};
use crate::convert::{self, Target};
use crate::time::Timestamp;
use petrel_conn::ConnId;

/// How long a receiver shows an indicator without a new notice (`TypingNotice.expires_ms`).
/// Senders repeat `typing = true` at most every 3 s, so one lost notice does not blink it.
pub const TYPING_EXPIRES_MS: u32 = 6_000;

impl Control {
    pub(super) fn on_typing(&mut self, now: Timestamp, conn: ConnId, typing: pb::Typing) {
        let Some(c) = self.registry.get_mut(conn) else {
            return;
        };
        let Some(user) = c.session.as_ref().map(|s| s.user) else {
            return;
        };
        if c.typing_bucket.try_take(now).is_err() {
            self.counters.typing_dropped += 1;
            return;
        }
        match convert::target(user, typing.conversation.as_ref()) {
            Some(Target::Persisted(key @ ConversationKey::Single { .. })) => {
                let peers = key.peer_of(UserId(user)).filter(|p| p.0 != user);
                self.deliver_typing(conn, user, key, typing.typing, peers.map(|p| p.0));
            }
            Some(Target::Persisted(key @ ConversationKey::Group(_))) => {
                if self.pending.len() >= COURTESY_SHED_PENDING {
                    self.counters.typing_dropped += 1;
                    return;
                }
                self.storage(
                    Request::Members { conversation: key },
                    Pending::Typing(TypingCtx {
                        conn,
                        user,
                        key,
                        typing: typing.typing,
                    }),
                );
            }
            Some(Target::Chatroom(room_id)) => self.typing_in_chatroom(conn, user, room_id, typing),
            // Followers do not see the account typing; nothing else is a conversation.
            Some(Target::Persisted(ConversationKey::PublicAccount(_))) | None => {
                self.counters.typing_dropped += 1;
            }
        }
    }

    /// The member list of a group arrived: forward the notice if the sender is a member
    /// and the group is small enough.
    pub(super) fn on_typing_members(
        &mut self,
        ctx: TypingCtx,
        result: Result<Reply, StorageError>,
    ) {
        let members = match result {
            Ok(Reply::Members(members)) => members,
            _ => {
                self.counters.typing_dropped += 1;
                return;
            }
        };
        let is_member = members.iter().any(|m: &Member| m.user.0 == ctx.user);
        if !is_member || members.len() > self.config.typing_max_audience {
            self.counters.typing_dropped += 1;
            return;
        }
        let audience = members
            .iter()
            .map(|m| m.user.0)
            .filter(|&u| u != ctx.user)
            .collect::<Vec<_>>();
        self.deliver_typing(ctx.conn, ctx.user, ctx.key, ctx.typing, audience);
    }

    /// Sends the notice to every online connection of `audience` (not the sender's). A
    /// group's id is the same for every member, and a 1:1 chat has one member to tell,
    /// so one frame serves them all.
    fn deliver_typing(
        &mut self,
        sender: ConnId,
        user: u64,
        key: ConversationKey,
        typing: bool,
        audience: impl IntoIterator<Item = u64>,
    ) {
        let except = Some(sender);
        let mut users = std::mem::take(&mut self.scratch_users);
        users.clear();
        users.extend(audience);
        if let Some(&viewer) = users.first()
            && users.iter().any(|&u| self.reachable(u, except))
        {
            let notice = pb::TypingNotice {
                conversation: Some(convert::wire_id(viewer, key)),
                user,
                typing,
                expires_ms: TYPING_EXPIRES_MS,
            };
            if let Some(bytes) = self.encode(&petrel_proto::Frame::new(0, notice)) {
                self.deliver(Push {
                    users: &users,
                    except,
                    kind: PushKind::Typing,
                    bytes,
                });
            }
        }
        self.scratch_users = users;
    }
}
