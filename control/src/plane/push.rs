//! Pushes: the one way conversation work reaches users' connections.
//!
//! Whatever a conversation produces for its members — a stored message, an edit, a
//! conversation event (membership, recall, read position, receipt), a typing notice —
//! is decided on the conversation side as *which users* get *which encoded frame*, and
//! handed over as a [`Push`]. [`Control::deliver`] is the session side: it expands the
//! users to their connections (leaving out the one that caused the push) and applies
//! the receiver's policy for the push's [`PushKind`], which depends on state only the
//! connection's own core has (is its outbound queue congested?).
//!
//! Both sides run in one `Control` today. This is the seam along which it splits into a
//! session plane per core and a conversation plane per partition owner
//! (docs/ARCHITECTURE.md, "Not done yet"): a push then travels to each core with a
//! session of one of its users, as one batch per core, and that core calls `deliver`.
//! Conversation code therefore asks only [`Control::reachable`] (the future presence
//! directory) and never walks the session registry itself.

use bytes::Bytes;
use petrel_proto::{FrameType, pb};
use petrel_storage::ConversationKey;

use super::Control;
use super::messaging::scenario;
use petrel_conn::ConnId;

/// What a push carries, which decides what happens at a congested receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PushKind {
    /// A stored message of this conversation. A congested receiver is kicked as a slow
    /// consumer: skipping it silently would leave a hole it never learns of, while a
    /// reconnect syncs the message from storage.
    Message(ConversationKey),
    /// The edited version of a stored message. Rare and small: queued even to a
    /// congested receiver (the transport's slow-consumer limit still bounds it).
    Edit,
    /// A conversation event: membership, mute, recall, read position, receipt. Queued
    /// like an edit.
    Event,
    /// A typing notice: ephemeral, so a congested receiver simply misses it.
    Typing,
}

impl PushKind {
    fn frame_type(self) -> FrameType {
        match self {
            PushKind::Message(_) | PushKind::Edit => FrameType::MessagePush,
            PushKind::Event => FrameType::ConversationEvent,
            PushKind::Typing => FrameType::TypingNotice,
        }
    }
}

/// One frame for every online device of some users.
#[derive(Debug)]
pub(super) struct Push<'a> {
    /// The users whose connections get it (each listed once).
    pub users: &'a [u64],
    /// The connection that caused it, which already has its answer.
    pub except: Option<ConnId>,
    pub kind: PushKind,
    /// The encoded frame, shared by every receiver.
    pub bytes: Bytes,
}

impl Control {
    /// Whether `user` has a session on a connection other than `except`: worth
    /// encoding a push for. (With sessions on several cores, the presence directory.)
    pub(super) fn reachable(&self, user: u64, except: Option<ConnId>) -> bool {
        self.registry
            .user_conns(user)
            .iter()
            .any(|&c| Some(c) != except)
    }

    /// Sends `push` to every connection of its users but `except`, with the policy of
    /// its kind. Returns how many connections it was queued for.
    pub(super) fn deliver(&mut self, push: Push<'_>) -> u64 {
        let mut targets = std::mem::take(&mut self.scratch_conns);
        targets.clear();
        for &user in push.users {
            targets.extend(
                self.registry
                    .user_conns(user)
                    .iter()
                    .copied()
                    .filter(|&c| Some(c) != push.except),
            );
        }
        let mut sent = 0;
        for &conn in &targets {
            if self.deliver_to(conn, push.kind, &push.bytes) {
                sent += 1;
            }
        }
        self.scratch_conns = targets;
        sent
    }

    /// Queues `bytes` for one connection under the policy of `kind`; false if it was
    /// not queued (gone, congested).
    pub(super) fn deliver_to(&mut self, conn: ConnId, kind: PushKind, bytes: &Bytes) -> bool {
        let Some(c) = self.registry.get(conn) else {
            if kind == PushKind::Typing {
                self.counters.typing_dropped += 1;
            }
            return false;
        };
        if c.congested {
            match kind {
                PushKind::Message(_) => {
                    self.counters.kicks.slow_consumer += 1;
                    self.kick(
                        conn,
                        pb::KickReason::SlowConsumer,
                        "outbound queue full; reconnect and sync",
                    );
                    return false;
                }
                PushKind::Typing => {
                    self.counters.typing_dropped += 1;
                    return false;
                }
                PushKind::Edit | PushKind::Event => {}
            }
        }
        if !self.send_bytes(conn, bytes.clone(), kind.frame_type()) {
            return false;
        }
        match kind {
            PushKind::Message(key) => *scenario(&mut self.counters.messages_delivered, key) += 1,
            PushKind::Typing => self.counters.typing_notices += 1,
            PushKind::Edit | PushKind::Event => {}
        }
        true
    }
}
