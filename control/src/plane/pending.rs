//! What the control plane must do when a storage request completes.
//!
//! Every [`crate::Action::Storage`] leaves one [`Pending`] entry under its ticket. The
//! entry holds the context needed to answer: which connection and request id to reply
//! to (the connection may be gone by then; the reply is then dropped, but fan-out to
//! other users still happens), and for appends the content to push.

use std::sync::Arc;

use bytes::Bytes;

use petrel_proto::pb;
use petrel_storage::{ConversationKey, InboxCursor, Role};

use petrel_conn::ConnId;

/// Outstanding storage requests from which courtesy reads (a group's member list for a
/// typing indicator or a read receipt) are skipped: messages and syncs come first.
pub(crate) const COURTESY_SHED_PENDING: usize = 1_024;

/// The context of one outstanding storage request.
#[derive(Debug)]
pub(crate) enum Pending {
    /// The start-up load of the revocation list.
    LoadRevoked,
    /// A write nobody waits for (activity touch, token revocation); only failures are
    /// counted.
    Background,
    /// A message append.
    Append(AppendCtx),
    /// A conversation operation.
    Op(OpCtx),
    /// A sync page.
    Sync(SyncCtx),
    /// A history page.
    History(HistoryCtx),
    /// A retention step.
    Trim,
    /// A request of the server API.
    Api(super::api::ApiPending),
    /// A group's member list, to forward a typing indicator.
    Typing(TypingCtx),
    /// A group's member list, to send a read receipt.
    Receipt(ReceiptCtx),
}

/// Who asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyTo {
    /// The requesting connection.
    pub conn: ConnId,
    /// The request id to answer.
    pub rid: u32,
    /// The requesting user.
    pub user: u64,
}

/// Context of an append.
#[derive(Debug)]
pub(crate) struct AppendCtx {
    pub to: ReplyTo,
    pub device: Arc<str>,
    pub client_msg_id: u64,
    pub key: ConversationKey,
    /// Encoded `Content`, as received and stored.
    pub content: Bytes,
}

/// Context of a typing indicator waiting for its group's member list.
#[derive(Debug)]
pub(crate) struct TypingCtx {
    /// The typing connection (not told anything).
    pub conn: ConnId,
    pub user: u64,
    pub key: ConversationKey,
    pub typing: bool,
}

/// Context of a read receipt waiting for a group's member list.
#[derive(Debug)]
pub(crate) struct ReceiptCtx {
    /// The reader's connection (not told; its other devices got `READ`).
    pub to: ReplyTo,
    pub key: ConversationKey,
    /// The reader's new read position (or the delivered one).
    pub seq: u64,
    /// Which of the two.
    pub receipt: super::receipts::Receipt,
}

/// Context of a sync request.
#[derive(Debug)]
pub(crate) struct SyncCtx {
    pub to: ReplyTo,
    /// The request's inbox position, returned again if the page has to be cut.
    pub inbox: InboxCursor,
}

/// Context of a history request.
#[derive(Debug)]
pub(crate) struct HistoryCtx {
    pub to: ReplyTo,
    pub limit: usize,
}

/// Context of a conversation operation.
#[derive(Debug)]
pub(crate) struct OpCtx {
    pub to: ReplyTo,
    pub kind: OpKind,
}

/// Which operation, with what the answer needs beyond the storage reply.
#[derive(Debug)]
pub(crate) enum OpKind {
    /// `CreateGroup`; the initial members as requested (storage replies with only the
    /// new key).
    CreateGroup { members: Vec<u64> },
    /// `CreatePublicAccount`.
    CreatePublicAccount,
    /// A group membership change announced as a `ConversationEvent` of `event` kind.
    Membership {
        event: pb::ConversationEventKind,
        role: Option<Role>,
    },
    /// `RecallMessage`: announced as a `ConversationEvent` RECALLED to every participant.
    Recall,
    /// `EditMessage`: the new version pushed to every participant.
    Edit,
    /// `ReadCount` of message `seq`.
    ReadCount { key: ConversationKey, seq: u64 },
    /// `Mute`: announced as a `ConversationEvent` MUTED with `until_ms`.
    Mute { until_ms: u64 },
    /// `Follow` / `Unfollow` (no event: follower lists can be huge).
    Follow,
    /// `MarkRead`.
    MarkRead { key: ConversationKey },
    /// `ListMembers` of a persisted conversation.
    ListMembers { key: ConversationKey },
}
