//! What the SDK tells the app: messages, acks, kicks and connection state changes.
//!
//! Events arrive on the [`crate::Events`] receiver returned by [`crate::Client::start`],
//! in the order the SDK produced them. Messages of one persisted conversation come in
//! ascending seq order, each exactly once (also across reconnects and restarts of the
//! app with the same store).

use std::time::Duration;

use petrel_proto::pb;

/// A conversation as the local user sees it (`kind` + id; for one-to-one chats the id is
/// the peer's user id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationKey {
    /// The conversation kind.
    pub kind: pb::ConversationKind,
    /// Peer user id (single), group, chatroom or public-account id.
    pub id: u64,
}

impl ConversationKey {
    /// A one-to-one chat with `peer`.
    pub const fn single(peer: u64) -> Self {
        ConversationKey {
            kind: pb::ConversationKind::Single,
            id: peer,
        }
    }
    /// A group.
    pub const fn group(id: u64) -> Self {
        ConversationKey {
            kind: pb::ConversationKind::Group,
            id,
        }
    }
    /// A chatroom (online only, never stored).
    pub const fn chatroom(id: u64) -> Self {
        ConversationKey {
            kind: pb::ConversationKind::Chatroom,
            id,
        }
    }
    /// A public account.
    pub const fn public_account(id: u64) -> Self {
        ConversationKey {
            kind: pb::ConversationKind::PublicAccount,
            id,
        }
    }

    /// The wire form.
    pub fn to_wire(self) -> pb::ConversationId {
        pb::ConversationId {
            kind: self.kind as i32,
            id: self.id,
        }
    }

    /// From the wire form; `None` for a missing id or an unknown kind.
    pub fn from_wire(id: Option<&pb::ConversationId>) -> Option<Self> {
        let id = id?;
        let kind = pb::ConversationKind::try_from(id.kind).ok()?;
        (kind != pb::ConversationKind::Unspecified).then_some(ConversationKey { kind, id: id.id })
    }

    /// Whether the server stores this conversation (everything but chatrooms).
    pub fn is_persisted(self) -> bool {
        self.kind != pb::ConversationKind::Chatroom
    }
}

/// A message in a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Where it was posted.
    pub conversation: ConversationKey,
    /// Its position in the conversation (gap-free from 1 for persisted kinds).
    pub seq: u64,
    /// Who sent it.
    pub sender: u64,
    /// The sender's device.
    pub sender_device: String,
    /// The sender's client message id.
    pub client_msg_id: u64,
    /// Server receive time, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// What it says (empty once recalled).
    pub content: pb::Content,
    /// Set once it was recalled: who and when. Its place stays; its content is gone.
    pub recalled: Option<Recalled>,
    /// When its sender last edited it (`content` is the latest version).
    pub edited_at_ms: Option<u64>,
    /// The seq of the message it replies to in the same conversation, if any.
    pub reply_to: Option<u64>,
    /// The users it mentions (members only, as the server stored them).
    pub mentions: Vec<u64>,
}

/// Who recalled a message and when ([`Message::recalled`], [`Event::Recalled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recalled {
    /// The sender, or a group owner or admin.
    pub by: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

impl Recalled {
    /// The recall a push or stored message carries, if any (`recalled_by` 0: none).
    pub fn of(push: &pb::MessagePush) -> Option<Recalled> {
        (push.recalled_by != 0).then_some(Recalled {
            by: push.recalled_by,
            at_ms: push.recalled_at_ms,
        })
    }
}

impl Message {
    /// The text of a text message, if it is one.
    pub fn text(&self) -> Option<&str> {
        match self.content.body.as_ref()? {
            pb::content::Body::Text(t) => Some(&t.text),
            _ => None,
        }
    }
}

/// The connection's state as the app should show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a connection to `endpoint` (attempt counts since the last stable session).
    Connecting {
        /// The `host:port` being tried.
        endpoint: String,
        /// Attempts since the back-off was last reset.
        attempt: u32,
    },
    /// Logged in: queued sends are going out and the sync from the stored cursors has
    /// started (its messages arrive as [`Event::Message`]s).
    Connected {
        /// The endpoint the session runs on.
        endpoint: String,
        /// The server's session id.
        session_id: u64,
    },
    /// The connection ended; the SDK will try again after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// The back-off delay before the next attempt.
        retry_in: Duration,
    },
    /// The SDK will not reconnect by itself (kicked, auth failed twice, or shut down);
    /// [`crate::Client::reconnect_now`] starts again.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Something the app should know about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection state changed.
    State(ConnectionState),
    /// A new message from someone else (or from this user's other devices).
    Message(Message),
    /// The server stored a message this device sent.
    Acked {
        /// The id [`crate::Client::send`] returned.
        client_msg_id: u64,
        /// Where it went.
        conversation: ConversationKey,
        /// Its seq.
        seq: u64,
    },
    /// The server refused a message for good; it has left the outbox.
    SendFailed {
        /// The id [`crate::Client::send`] returned.
        client_msg_id: u64,
        /// Why.
        code: pb::ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// Messages `from_seq..=to_seq` will never reach this device. In a chatroom: it fell
    /// too far behind the room (the server does not wait for slow members, and chatrooms
    /// are not stored, so they cannot be fetched). In a stored conversation: the server's
    /// retention removed them before this device synced. Show "some messages were
    /// skipped" / "earlier messages are no longer available".
    Gap {
        /// The chatroom.
        conversation: ConversationKey,
        /// First skipped seq.
        from_seq: u64,
        /// Last skipped seq (inclusive).
        to_seq: u64,
    },
    /// The server closed the session on purpose.
    Kicked {
        /// Why.
        reason: pb::KickReason,
        /// The server's explanation.
        message: String,
    },
    /// Membership, roles or read position changed in a conversation.
    Conversation(pb::ConversationEvent),
    /// Message `seq` of `conversation` was recalled (by its sender, or a group owner or
    /// admin): the local store already dropped its content; show "recalled" in its place.
    /// A device that was offline learns it at its next sync instead, as
    /// [`Message::recalled`].
    Recalled {
        /// The conversation.
        conversation: ConversationKey,
        /// The recalled message.
        seq: u64,
        /// Who recalled it and when (when: as the event arrived).
        recall: Recalled,
    },
    /// A message was edited by its sender: the local store holds the new content
    /// already; show it in the message's place (marked as edited).
    Edited(Message),
    /// Another member (`reader`) read `conversation` up to `seq`: a read receipt, in 1:1
    /// chats and in groups up to the server's receipt size (docs/PROTOCOL.md 5.6). This
    /// user's own read position and unread counts are not affected.
    ReadReceipt {
        /// Where.
        conversation: crate::ConversationKey,
        /// Who read.
        reader: u64,
        /// Up to which seq (inclusive).
        seq: u64,
    },
    /// Another member (`user`) has every message of `conversation` up to `seq` on one of
    /// their devices: a delivery receipt ("delivered", before "read"), in 1:1 chats and in
    /// groups up to the server's receipt size (docs/PROTOCOL.md 5.6). Live only: a
    /// device that was offline does not get the receipts it missed.
    DeliveryReceipt {
        /// Where.
        conversation: crate::ConversationKey,
        /// Whose device.
        user: u64,
        /// Up to which seq (inclusive).
        seq: u64,
    },
    /// Another member started (`typing`) or stopped typing in a conversation. Show it
    /// until a `typing: false`, a message from `user` in `conversation`, or `expires`
    /// without a new one. Never stored, and best effort: the server drops indicators
    /// when it or this device is busy.
    Typing {
        /// Where.
        conversation: crate::ConversationKey,
        /// Who.
        user: u64,
        /// Started (true) or stopped (false).
        typing: bool,
        /// How long to show it without a new one.
        expires: std::time::Duration,
    },
    /// The token was renewed over the live connection.
    TokenRenewed {
        /// When the new token expires, ms since the Unix epoch.
        expires_at_ms: u64,
    },
}
