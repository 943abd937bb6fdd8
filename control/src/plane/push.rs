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

use super::Control;
use super::messaging::scenario;
use crate::event::Action;
pub(crate) use crate::remote::PushKind;
use crate::remote::{CoreMessage, RemotePush};
use petrel_conn::ConnId;

fn frame_type(kind: PushKind) -> FrameType {
    match kind {
        PushKind::Message(_) | PushKind::Edit => FrameType::MessagePush,
        PushKind::Event => FrameType::ConversationEvent,
        PushKind::Typing => FrameType::TypingNotice,
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
    /// Whether `user` has a session on a connection other than `except`, on this core
    /// or (by presence) another: worth encoding a push for.
    pub(super) fn reachable(&self, user: u64, except: Option<ConnId>) -> bool {
        self.registry
            .user_conns(user)
            .iter()
            .any(|&c| Some(c) != except)
            || self.presence.get(&user).is_some_and(|&cores| cores != 0)
    }

    /// Sends `push` to every connection of its users but `except`, with the policy of
    /// its kind: this core's connections now, and one [`RemotePush`] to each other
    /// core where one of the users has a session. Returns how many of this core's
    /// connections it was queued for.
    pub(super) fn deliver(&mut self, push: Push<'_>) -> u64 {
        if !self.presence.is_empty() {
            self.forward(&push);
        }
        self.deliver_here(push)
    }

    /// Hands `push` to the other cores where its users have sessions.
    fn forward(&mut self, push: &Push<'_>) {
        let cores = push
            .users
            .iter()
            .filter_map(|u| self.presence.get(u))
            .fold(0u64, |all, &c| all | c);
        for core in (0..64u8).filter(|c| cores & (1 << c) != 0) {
            let users: Vec<u64> = push
                .users
                .iter()
                .copied()
                .filter(|u| self.presence.get(u).is_some_and(|&c| c & (1 << core) != 0))
                .collect();
            self.counters.pushes_forwarded += 1;
            self.actions.push_back(Action::ToCore {
                core,
                message: CoreMessage::Push(RemotePush {
                    users,
                    except: push.except,
                    kind: push.kind,
                    bytes: push.bytes.clone(),
                }),
            });
        }
    }

    /// A push another core forwarded: its users' connections on this core get it.
    pub(super) fn deliver_forwarded(&mut self, push: RemotePush) {
        self.deliver_here(Push {
            users: &push.users,
            except: push.except,
            kind: push.kind,
            bytes: push.bytes,
        });
    }

    /// Sends `push` to this core's connections of its users but `except`.
    fn deliver_here(&mut self, push: Push<'_>) -> u64 {
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
        // Not before its LoginResult: the sync the client makes after it returns what
        // this push carries (it is durable already).
        if self.login_held(conn) {
            return false;
        }
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
        if !self.send_bytes(conn, bytes.clone(), frame_type(kind)) {
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
