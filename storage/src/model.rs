//! Model types shared by every engine: users, conversation keys, roles and stored messages.
//!
//! These types carry no storage details; key encodings live in `keys`, and the
//! message payload is opaque bytes (the encoded protobuf `Content` — this crate
//! does not depend on `petrel-proto`).

use bytes::Bytes;

/// A user id as assigned by the account system.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct UserId(pub u64);

/// Identifies one persisted conversation timeline.
///
/// Chatrooms are ephemeral and online-only, so they have no key here and are
/// never persisted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ConversationKey {
    /// A 1:1 chat: the unordered pair of users, stored canonically with `lo <= hi`
    /// so both sides find the same timeline. Build it with [`ConversationKey::single`].
    Single {
        /// The smaller user id of the pair.
        lo: UserId,
        /// The larger user id of the pair.
        hi: UserId,
    },
    /// A group chat by group id.
    Group(u64),
    /// A public account (one publisher, many followers) by account id.
    PublicAccount(u64),
}

impl ConversationKey {
    /// The canonical key of the 1:1 chat between `a` and `b`, in either order.
    pub fn single(a: UserId, b: UserId) -> Self {
        if a <= b {
            ConversationKey::Single { lo: a, hi: b }
        } else {
            ConversationKey::Single { lo: b, hi: a }
        }
    }

    /// For a 1:1 chat seen by `viewer`, the other participant (the wire-level id of a
    /// SINGLE conversation). `None` for groups, public accounts, or a non-participant.
    pub fn peer_of(&self, viewer: UserId) -> Option<UserId> {
        match *self {
            ConversationKey::Single { lo, hi } if viewer == lo => Some(hi),
            ConversationKey::Single { lo, hi } if viewer == hi => Some(lo),
            _ => None,
        }
    }
}

/// A member's role in a group (public-account followers are `Member`, the
/// publisher is `Owner`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Role {
    /// Can send and read.
    Member,
    /// Can also add and remove plain members.
    Admin,
    /// Can do everything, including setting roles. Exactly one per group.
    Owner,
}

/// A member of a conversation with their role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The member.
    pub user: UserId,
    /// Their role.
    pub role: Role,
}

/// Who recalled a message, and when (its content is gone; see `Request::Recall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Recall {
    /// The sender, or a group owner or admin.
    pub by: UserId,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// One message as persisted in a conversation timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    /// The timeline it belongs to.
    pub conversation: ConversationKey,
    /// Its per-conversation sequence number (1-based, gap-free, never reused).
    pub seq: u64,
    /// Who sent it.
    pub sender: UserId,
    /// The sending device's id (opaque to storage).
    pub sender_device: String,
    /// The client's idempotency id, unique per sender (exactly-once key).
    pub client_msg_id: u64,
    /// Server-assigned time of the append, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// Opaque content: the encoded protobuf `Content`; empty once recalled.
    pub payload: Bytes,
    /// Set once the message was recalled: its seq stays, its content is gone.
    pub recalled: Option<Recall>,
    /// When its sender last edited it (`payload` is then the latest content).
    pub edited_at_ms: Option<u64>,
    /// What it replies to and whom it mentions (cleared by a recall).
    pub refs: Refs,
}

/// A message's references to other messages and users: the seq it replies to in the
/// same conversation (0: none) and the members it mentions (sorted, no duplicates, never
/// the sender). Both are part of the stored message; mentions also count per mentioned
/// member until they read past the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Refs {
    /// Seq of the quoted message (0: none).
    pub reply_to: u64,
    /// Mentioned members.
    pub mentions: Vec<UserId>,
}

impl Refs {
    /// Most mentions one message may carry.
    pub const MAX_MENTIONS: usize = 100;

    /// No reply, no mention.
    pub fn is_empty(&self) -> bool {
        self.reply_to == 0 && self.mentions.is_empty()
    }
}

/// A user's view of one conversation: how far it goes and how far they have read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConversationState {
    /// The conversation.
    pub key: ConversationKey,
    /// Highest assigned seq (0 if empty).
    pub last_seq: u64,
    /// The user's read position (0 if never read). `last_seq - read_seq` is the unread count.
    pub read_seq: u64,
    /// Lowest seq still stored (0 if the conversation is empty): messages below it were
    /// removed by retention. The newest message is never removed, so `first_seq <=
    /// last_seq` and the stored messages are exactly `first_seq..=last_seq`.
    pub first_seq: u64,
    /// Messages above `read_seq` that mention the user, counted up to
    /// [`ConversationState::MENTIONS_COUNTED`].
    pub unread_mentions: u32,
}

impl ConversationState {
    /// Unread mentions are counted up to this many (a client shows "999+").
    pub const MENTIONS_COUNTED: u32 = 1000;

    /// Messages after the read position.
    pub fn unread(&self) -> u64 {
        self.last_seq.saturating_sub(self.read_seq)
    }
}

/// A 16-byte token id on the revocation list.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TokenId(pub [u8; 16]);

/// A revoked token and when its revocation may be forgotten (the token's own expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevokedToken {
    /// The token id.
    pub token: TokenId,
    /// Milliseconds since the Unix epoch after which the token is expired anyway.
    pub expires_at_ms: u64,
}
