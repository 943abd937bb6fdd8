//! Operator requests from the deployment's own backend (the server HTTP API, issue 19):
//! [`ApiRequest`] in through [`crate::Control::handle_api`], [`ApiOutcome`] out through
//! [`crate::Control::poll_api_reply`], correlated by an [`ApiId`] the driver chooses.
//!
//! This is the same sans-IO contract as [`crate::Event`] / [`crate::Action`]: the control
//! plane neither knows HTTP nor holds a channel. A request that needs storage leaves as an
//! ordinary [`crate::Action::Storage`]; its reply is queued once the completion arrives
//! (so, like an `Ack`, a reply to a write is only ever given after the write is durable).
//! Requests acting for a user (a send, a group operation) go through the same storage
//! requests and fan-out as the protocol's frames, so online devices get the same pushes
//! and conversation events; the API is not a second implementation of them.

use std::time::Duration;

use petrel_proto::pb;
use petrel_storage::{ConversationKey, Member, StoredMessage};

use crate::time::Timestamp;
use crate::token::TOKEN_ID_LEN;

/// Correlates an [`ApiRequest`] with its [`ApiOutcome`]; chosen by the driver (any
/// value, unique among its requests in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiId(pub u64);

/// Largest batch of users one [`ApiRequest::Presence`] may ask about.
pub const MAX_PRESENCE_BATCH: usize = 100;

/// An operator request.
#[derive(Debug, Clone)]
pub enum ApiRequest {
    /// Mint a login token with the plane's active key.
    IssueToken {
        /// The user.
        user: u64,
        /// The device id (at most 128 bytes).
        device: String,
        /// The platform class.
        platform: pb::Platform,
        /// Lifetime.
        ttl: Duration,
    },
    /// Revoke one token (by its text; its signature must verify, its expiry need not be
    /// in the future) and end the sessions using it.
    RevokeToken {
        /// The token text.
        token: String,
    },
    /// Revoke every token of the user's live sessions and end them.
    RevokeUser {
        /// The user.
        user: u64,
    },
    /// The user's logged-in devices.
    Sessions {
        /// The user.
        user: u64,
    },
    /// Kick the user's sessions (`Kick{Admin}`), or only those of one device.
    Kick {
        /// The user.
        user: u64,
        /// Only this device, if set.
        device: Option<String>,
        /// Text of the `Kick` frame.
        message: String,
    },
    /// Online state and last activity of up to [`MAX_PRESENCE_BATCH`] users.
    Presence {
        /// The users.
        users: Vec<u64>,
    },
    /// Send a message as `sender` (exactly-once by `client_msg_id` per conversation, like
    /// `SendMessage`); pushed live to every online device of every recipient, the
    /// sender's included.
    Send {
        /// Who sends it (a participant of the conversation).
        sender: u64,
        /// The sender device recorded with the message.
        device: String,
        /// The conversation.
        conversation: ConversationKey,
        /// Non-zero idempotency id.
        client_msg_id: u64,
        /// What it says.
        content: pb::Content,
    },
    /// A page of a conversation's history as `user` sees it (a participant).
    History {
        /// The reader.
        user: u64,
        /// The conversation.
        conversation: ConversationKey,
        /// Messages below this seq; 0 = from the newest.
        before_seq: u64,
        /// Most messages (0 or above the plane's history limit: the limit).
        limit: u32,
    },
    /// A group or public-account operation done by `actor`, with the protocol's role
    /// checks (inside storage) and `ConversationEvent`s to affected online devices.
    Conversation {
        /// Who does it.
        actor: u64,
        /// What.
        op: ApiConversationOp,
    },
    /// Members (or followers) of a persisted conversation with their roles. No
    /// membership check: the backend may look at any conversation.
    Members {
        /// The conversation.
        conversation: ConversationKey,
    },
    /// How many participants other than its sender have read a message, as `user` (a
    /// participant) asks.
    ReadCount {
        /// Who asks.
        user: u64,
        /// The conversation, as `user` names it.
        conversation: ConversationKey,
        /// The message.
        seq: u64,
    },
    /// An operator operation on a chatroom (in memory, like chatrooms themselves). With
    /// several cores only the room's owner can answer it: the driver hands it to the
    /// control plane of core [`crate::chatroom::room_owner`]`(room, core_count)`, which
    /// tells the other cores of their connections it takes out of the room.
    Chatroom {
        /// The room.
        room: u64,
        /// What.
        op: ApiChatroomOp,
    },
}

/// The operations of [`ApiRequest::Chatroom`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ApiChatroomOp {
    /// Who is in it now.
    Members,
    /// Take every connection of `user` out of it (each gets `ConversationEvent`
    /// MEMBERS_REMOVED naming the user; the SDK stops rejoining it).
    Kick {
        /// The user.
        user: u64,
    },
    /// Take everyone out (`ConversationEvent` DISSOLVED), forget its recent messages,
    /// and refuse joins (`NOT_FOUND`) until it is opened.
    Close,
    /// Let it be joined again after a close (joining creates rooms; nothing else to do).
    Open,
}

/// The group and public-account operations of [`ApiRequest::Conversation`].
#[derive(Debug, Clone)]
pub enum ApiConversationOp {
    /// Create a group; the actor becomes its owner.
    CreateGroup {
        /// Display name.
        name: String,
        /// Initial plain members.
        members: Vec<u64>,
    },
    /// Add plain members (owner or admin).
    AddMembers {
        /// The group.
        group: u64,
        /// Users to add.
        users: Vec<u64>,
    },
    /// Remove members (role rules apply).
    RemoveMembers {
        /// The group.
        group: u64,
        /// Users to remove.
        users: Vec<u64>,
    },
    /// The actor leaves the group.
    Leave {
        /// The group.
        group: u64,
    },
    /// Set a member's role (owner only; `Owner` transfers ownership).
    SetRole {
        /// The group.
        group: u64,
        /// The member.
        user: u64,
        /// The new role.
        role: petrel_storage::Role,
    },
    /// Recall a message (its sender within the recall window; a group's owner or admins
    /// at any time).
    Recall {
        /// The conversation, as the actor names it.
        conversation: petrel_storage::ConversationKey,
        /// The message.
        seq: u64,
    },
    /// Replace a message's content (its sender, within the edit window).
    Edit {
        /// The conversation, as the actor names it.
        conversation: petrel_storage::ConversationKey,
        /// The message.
        seq: u64,
        /// The new encoded `Content`.
        content: bytes::Bytes,
    },
    /// Dissolve a group (owner only).
    Dissolve {
        /// The group.
        group: u64,
    },
    /// Mute a member (`user`) or the whole group (`user` `None`) for `duration_ms`
    /// from now; 0 lifts it (owner or admin; the removal rules say whom).
    Mute {
        /// The group.
        group: u64,
        /// The member, or `None` for every plain member.
        user: Option<u64>,
        /// How long; 0 lifts the mute.
        duration_ms: u64,
    },
    /// Create a public account; the actor publishes it.
    CreatePublicAccount {
        /// Display name.
        name: String,
    },
    /// The actor follows an account.
    Follow {
        /// The account.
        account: u64,
    },
    /// The actor unfollows an account.
    Unfollow {
        /// The account.
        account: u64,
    },
}

/// One logged-in device, for [`ApiReply::Sessions`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// Server-assigned session id.
    pub session_id: u64,
    /// The device id.
    pub device: String,
    /// Platform class (`pb::Platform` value).
    pub platform: i32,
    /// When the connection opened.
    pub connected_at: Timestamp,
    /// When a frame last arrived on it.
    pub last_activity: Timestamp,
    /// When the session's newest token expires.
    pub expires_at: Timestamp,
}

/// One user's presence, for [`ApiReply::Presence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// The user.
    pub user: u64,
    /// Logged-in devices right now.
    pub devices: usize,
    /// Last recorded activity (login, send) in ms since the epoch, if any.
    pub last_active_ms: Option<u64>,
}

/// The answer to a successful [`ApiRequest`].
#[derive(Debug, Clone)]
pub enum ApiReply {
    /// From `IssueToken`.
    Token {
        /// The token text.
        token: String,
        /// Its id (the revocation key).
        token_id: [u8; TOKEN_ID_LEN],
        /// When it expires.
        expires_at: Timestamp,
    },
    /// From `RevokeToken`, `RevokeUser` and `Kick`: sessions ended.
    Ended {
        /// How many.
        sessions: usize,
    },
    /// From `Sessions`.
    Sessions(Vec<SessionInfo>),
    /// From `Presence`, in the order asked.
    Presence(Vec<Presence>),
    /// From `Send`, once the message is durable.
    Sent {
        /// Its seq in the conversation.
        seq: u64,
        /// Server time of the append.
        server_time_ms: u64,
        /// True if `client_msg_id` was stored before (nothing new was stored or pushed).
        duplicate: bool,
    },
    /// From `History`: ascending seq.
    History {
        /// The messages.
        messages: Vec<StoredMessage>,
        /// Lowest seq still stored (0 if empty).
        first_seq: u64,
        /// Older messages remain below the page.
        has_more: bool,
    },
    /// From `CreateGroup` / `CreatePublicAccount`.
    Created(ConversationKey),
    /// From `Chatroom`: the users in the room (`Members`), or taken out of it (`Kick`,
    /// `Close`); `closed` says whether it is closed now.
    Chatroom {
        /// The users.
        users: Vec<u64>,
        /// Whether joins are refused now.
        closed: bool,
    },
    /// From `ReadCount`.
    ReadCount {
        /// Participants other than the sender at or past the message.
        read: u64,
        /// Participants other than the sender.
        of: u64,
    },
    /// From `Edit`.
    Edited {
        /// The conversation.
        conversation: ConversationKey,
        /// The edited message.
        seq: u64,
        /// When.
        edited_at_ms: u64,
    },
    /// From `Recall`.
    Recalled {
        /// The conversation.
        conversation: ConversationKey,
        /// The recalled message.
        seq: u64,
        /// Who recalled it (an earlier recall's, if it already was).
        by: u64,
        /// When.
        at_ms: u64,
    },
    /// From the membership operations.
    Membership {
        /// The conversation.
        conversation: ConversationKey,
        /// Users whose membership or role actually changed.
        changed: Vec<u64>,
        /// Members after the change.
        members: Vec<Member>,
    },
    /// From `Members`.
    Members(Vec<Member>),
}

/// Why an [`ApiRequest`] failed: a protocol error code (docs/PROTOCOL.md) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The code, as in the protocol's `Error` frame.
    pub code: pb::ErrorCode,
    /// What went wrong, for a human.
    pub message: String,
    /// For `STORAGE_FULL`, `SHUTTING_DOWN`: how long to wait before retrying.
    pub retry_after_ms: u32,
}

impl ApiError {
    /// An error with no retry hint.
    pub fn new(code: pb::ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }
}

/// The outcome of one request, as [`crate::Control::poll_api_reply`] returns it.
pub type ApiOutcome = (ApiId, Result<ApiReply, ApiError>);
