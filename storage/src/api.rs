//! The storage API: one [`Request`] enum, one [`Reply`] enum, and the [`Engine`] trait
//! that every engine (RocksDB, in-memory) implements.
//!
//! The control plane is sans-IO: it emits `Request`s as actions, a driver runs them
//! (directly with [`Engine::execute`], or through the group-commit queue so no
//! dataplane core waits on fsync) and feeds the `Reply` back as an event.
//!
//! Every membership and permission check happens inside the engine's single writer,
//! atomically with the write it guards.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::StorageError;
use crate::model::{
    ConversationKey, ConversationState, Member, Recall, Refs, RevokedToken, Role, StoredMessage,
    TokenId, UserId,
};
pub use crate::partition::InboxCursor;

/// Who receives an append: inline for a 1:1 chat's two users, on the heap for more.
pub type Recipients = smallvec::SmallVec<[UserId; 2]>;

/// Append one message to a conversation (exactly-once by `(sender, conversation,
/// client_msg_id)`: the same id in another conversation is another message).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppendRequest {
    /// Who sends it; must be a participant (the owner, for a public account).
    pub sender: UserId,
    /// The sending device (opaque): shared with the session that sends, so a request
    /// costs a reference count, not a copy of the string.
    pub sender_device: Arc<str>,
    /// The client's idempotency id.
    pub client_msg_id: u64,
    /// Target conversation.
    pub conversation: ConversationKey,
    /// Encoded protobuf `Content`.
    pub payload: Bytes,
    /// Current time (ms since epoch); becomes `server_time_ms` and drives dedup expiry
    /// and hybrid activity decisions.
    pub now_ms: u64,
    /// The seq it replies to and the users it mentions, as the client sent them:
    /// `reply_to` must be below the new seq ([`StorageError::Invalid`] otherwise); mentions
    /// of non-members and of the sender are dropped.
    pub refs: Refs,
}

/// Result of an append.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppendOutcome {
    /// The conversation appended to (always the request's: dedup is per conversation).
    pub conversation: ConversationKey,
    /// The assigned (or, for a duplicate, originally assigned) seq.
    pub seq: u64,
    /// The assigned (or original) server time.
    pub server_time_ms: u64,
    /// True if this was a retry of an append already stored; nothing new was written.
    pub duplicate: bool,
    /// Who should get a live push: both users of a 1:1 chat, all group members, or the
    /// followers and owner of a public account (the sender included, for their other
    /// devices). Empty for a duplicate (the original append already produced pushes).
    /// Inline up to two: a 1:1 append allocates none.
    pub recipients: Recipients,
    /// What the stored message replies to and the members it mentions, as stored (the
    /// request's mentions less non-members and the sender). Empty for a duplicate.
    pub refs: Refs,
}

/// Result of a recall.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecallOutcome {
    /// The conversation.
    pub conversation: ConversationKey,
    /// The recalled message.
    pub seq: u64,
    /// Who sent it.
    pub sender: UserId,
    /// Who recalled it and when (the earlier recall, if it already was).
    pub recall: Recall,
    /// Who should be told live: the conversation's participants now (both users of a
    /// 1:1 chat, group members, an account's followers and owner).
    pub recipients: Vec<UserId>,
}

/// Largest conversation whose read count is counted (one cursor read per member).
pub const READ_COUNT_MAX_MEMBERS: usize = 10_000;

/// Result of an edit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EditOutcome {
    /// The message as stored now (new content, `edited_at_ms` set).
    pub message: StoredMessage,
    /// Who should get the new version live: the conversation's participants now.
    pub recipients: Vec<UserId>,
}

/// Incremental sync for one device.
///
/// Contract: a device keeps its own inbox position (an [`InboxCursor`]: one position per
/// partition) and per-conversation cursors (the highest seq it holds). A device with no
/// inbox position has never completed a sync (a new device): it gets every message of
/// every conversation the user belongs to, except those at or below the cursors it
/// passes. Otherwise only conversations with news since its position are examined, so
/// the cost is O(conversations changed) plus one seek per partition. Page until
/// `has_more` is false, passing back the returned position and the per-conversation
/// maxima of the messages received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncRequest {
    /// The user syncing.
    pub user: UserId,
    /// The device's inbox position (empty = never synced).
    pub inbox: InboxCursor,
    /// The device's per-conversation positions: it holds everything up to `after_seq`.
    pub cursors: Vec<(ConversationKey, u64)>,
    /// Most messages to return (capped by the engine's `max_page`).
    pub limit: usize,
    /// Current time (ms since epoch). Advances the engine's expiry clock; a sync does not
    /// count as activity by itself (send `TouchActivity` for that).
    pub now_ms: u64,
}

/// One page of a sync.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SyncPage {
    /// New messages, ascending seq within each conversation, no gaps after the
    /// device's cursor.
    pub messages: Vec<StoredMessage>,
    /// The inbox position to pass next time.
    pub inbox: InboxCursor,
    /// True if the page was cut short; call again.
    pub has_more: bool,
    /// State of every conversation examined in this page (for unread counts).
    pub conversations: Vec<ConversationState>,
}

/// One history page.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HistoryPage {
    /// Messages below the request's `before_seq`, ascending seq.
    pub messages: Vec<StoredMessage>,
    /// Lowest seq the conversation still stores (0 if it is empty): when a page ends
    /// above 1, this says whether older messages exist or were removed by retention.
    pub first_seq: u64,
    /// Older messages of the page were left out on the way (a cluster node cuts a page
    /// too large to send another): there are more below the oldest one here, however
    /// few this page holds. Engines never set it.
    pub cut: bool,
}

/// What one retention step removed ([`Request::Trim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrimReport {
    /// Messages deleted.
    pub messages: u64,
    /// Inbox entries deleted.
    pub inbox_entries: u64,
    /// True if this step finished a pass over every conversation and inbox (the next
    /// step starts a new pass); false if the step ran out of its key budget.
    pub pass_complete: bool,
}

/// What a membership operation changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MembershipChange {
    /// The group or public account.
    pub conversation: ConversationKey,
    /// Users whose membership actually changed (already-members / non-members skipped).
    pub changed: Vec<UserId>,
    /// The membership after the change.
    pub members: Vec<Member>,
}

/// Every request the control plane can make of storage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// Append a message. Reply: [`Reply::Appended`].
    Append(AppendRequest),
    /// Create a group owned by `owner` with the given initial members. Reply: [`Reply::Created`].
    CreateGroup {
        /// The owner (becomes `Role::Owner`).
        owner: UserId,
        /// Display name.
        name: String,
        /// Initial plain members (the owner may be listed; duplicates are ignored).
        members: Vec<UserId>,
        /// Current time.
        now_ms: u64,
    },
    /// Add plain members (owner or admin only). Reply: [`Reply::Membership`].
    AddMembers {
        /// Who asks.
        actor: UserId,
        /// The group.
        group: u64,
        /// Users to add.
        users: Vec<UserId>,
        /// Current time.
        now_ms: u64,
    },
    /// Remove members (owner: anyone but themself; admin: plain members only).
    /// Reply: [`Reply::Membership`].
    RemoveMembers {
        /// Who asks.
        actor: UserId,
        /// The group.
        group: u64,
        /// Users to remove.
        users: Vec<UserId>,
    },
    /// Leave a group (the owner must transfer ownership first). Reply: [`Reply::Membership`].
    Leave {
        /// Who leaves.
        user: UserId,
        /// The group.
        group: u64,
    },
    /// Set a member's role (owner only; setting `Owner` transfers ownership and the old
    /// owner becomes an admin). Reply: [`Reply::Membership`].
    SetRole {
        /// Who asks.
        actor: UserId,
        /// The group.
        group: u64,
        /// The member whose role changes.
        user: UserId,
        /// The new role.
        role: Role,
    },
    /// Recall message `seq` of `conversation`: its content is replaced by a tombstone
    /// (who, when) under the same key, so history and sync show the recall in its place
    /// and never the content again. Allowed for its sender within `window_ms` of its
    /// server time, and for a group's owner or admins (a public account's owner) at any
    /// time. Recalling a recalled message answers the first recall again (to whoever may
    /// recall it, even past the window: a retry after a lost answer).
    /// Reply: [`Reply::Recalled`].
    Recall {
        /// Who asks.
        actor: UserId,
        /// The conversation.
        conversation: ConversationKey,
        /// The message.
        seq: u64,
        /// How long after sending the sender may recall.
        window_ms: u64,
        /// Current time.
        now_ms: u64,
    },
    /// How many participants other than its sender have read message `seq` of
    /// `conversation` (their read position is at or past it), and of how many. Any
    /// participant may ask; a conversation over [`READ_COUNT_MAX_MEMBERS`] members is
    /// `Invalid`. Reply: [`Reply::ReadCount`].
    ReadCount {
        /// Who asks (a participant).
        user: UserId,
        /// The conversation.
        conversation: ConversationKey,
        /// The message.
        seq: u64,
    },
    /// Replace the content of message `seq` of `conversation` by `payload` (an encoded
    /// `Content`): its sender only, within `window_ms` of its server time, and not once
    /// recalled. History and sync return the latest version with its edit time.
    /// Reply: [`Reply::Edited`].
    Edit {
        /// Who asks (must be the sender).
        actor: UserId,
        /// The conversation.
        conversation: ConversationKey,
        /// The message.
        seq: u64,
        /// The new content.
        payload: Bytes,
        /// How long after sending the sender may edit.
        window_ms: u64,
        /// Current time.
        now_ms: u64,
    },
    /// Dissolve a group (owner only): every membership, read cursor and mute goes, the
    /// group's metadata goes (so every later request naming it is `NotFound`, and its id
    /// is never given again), and its messages are deleted (one range delete; the space
    /// comes back with compaction). Inbox entries that pointed at them lead nowhere and
    /// sync skips them. Reply: [`Reply::Membership`] (`changed`: every former member).
    Dissolve {
        /// Who asks (must be the owner).
        actor: UserId,
        /// The group.
        group: u64,
    },
    /// Mute one member of a group (`user`), or the whole group (`user: None`), until
    /// `until_ms`; `until_ms` 0 (or a time already past) unmutes. The owner or an admin
    /// mutes; an admin mutes plain members only, and nobody mutes the owner. A muted
    /// member's appends fail with `Muted`; a muted group refuses every member's appends
    /// except its owner's and admins'. Removing a member drops their mute.
    /// Reply: [`Reply::Membership`] (`changed`: the muted member, or empty for the whole
    /// group; `members`: who to tell).
    Mute {
        /// Who asks.
        actor: UserId,
        /// The group.
        group: u64,
        /// The member, or `None` for the whole group.
        user: Option<UserId>,
        /// When the mute ends (ms since the epoch); 0 unmutes.
        until_ms: u64,
        /// Current time: a mute already over is removed rather than stored.
        now_ms: u64,
    },
    /// Create a public account published by `owner`. Reply: [`Reply::Created`].
    CreatePublicAccount {
        /// The publisher.
        owner: UserId,
        /// Display name.
        name: String,
        /// Current time.
        now_ms: u64,
    },
    /// Follow a public account. Reply: [`Reply::Membership`].
    Follow {
        /// The follower.
        user: UserId,
        /// The account.
        account: u64,
        /// Current time.
        now_ms: u64,
    },
    /// Unfollow a public account (the owner cannot). Reply: [`Reply::Membership`].
    Unfollow {
        /// The follower.
        user: UserId,
        /// The account.
        account: u64,
    },
    /// Participants of a conversation with roles. Reply: [`Reply::Members`].
    Members {
        /// The conversation.
        conversation: ConversationKey,
    },
    /// One user's role in a conversation (`None` if not a participant). Reply: [`Reply::Role`].
    RoleOf {
        /// The conversation.
        conversation: ConversationKey,
        /// The user.
        user: UserId,
    },
    /// Conversations a user participates in (groups, followed accounts, 1:1 chats with at
    /// least one message). Reply: [`Reply::Conversations`].
    ConversationsOf {
        /// The user.
        user: UserId,
    },
    /// Incremental sync for one device. Reply: [`Reply::Synced`].
    Sync(SyncRequest),
    /// Up to `limit` messages with seq below `before_seq` (use `u64::MAX` for the newest),
    /// returned in ascending seq order. Reply: [`Reply::History`].
    History {
        /// Who reads (must be a participant).
        user: UserId,
        /// The conversation.
        conversation: ConversationKey,
        /// Exclusive upper bound.
        before_seq: u64,
        /// Most messages to return (capped by `max_page`).
        limit: usize,
    },
    /// Advance the user's read position (never moves backwards; clamped to `last_seq`).
    /// Reply: [`Reply::State`].
    MarkRead {
        /// The reader.
        user: UserId,
        /// The conversation.
        conversation: ConversationKey,
        /// Highest seq read.
        seq: u64,
    },
    /// Record that the user is active now (login, send, sync). Reply: [`Reply::Done`].
    TouchActivity {
        /// The user.
        user: UserId,
        /// Current time.
        now_ms: u64,
    },
    /// When the user was last active. Reply: [`Reply::LastActive`].
    LastActive {
        /// The user.
        user: UserId,
    },
    /// Put a token on the revocation list until it would expire anyway. Reply: [`Reply::Done`].
    RevokeToken {
        /// The token id.
        token: TokenId,
        /// The token's own expiry.
        expires_at_ms: u64,
    },
    /// Every revoked token not yet expired at `now_ms` (control plane loads this at start).
    /// Reply: [`Reply::Revoked`].
    LoadRevoked {
        /// Current time.
        now_ms: u64,
    },
    /// One bounded step of retention: delete messages and inbox entries past their
    /// retention or cap (`StorageConfig::retention`, `inbox_max_entries`,
    /// `inbox_retention_ms`), at most `trim_step_keys` keys examined, resuming where the
    /// previous step stopped. Reply: [`Reply::Trimmed`].
    Trim {
        /// Current time.
        now_ms: u64,
    },
}

impl Request {
    /// The conversation whose partition's writer state this request writes under — its
    /// seq counter, member map, dedup entries, inbox heads — if it writes one: the
    /// request a server with one writer per partition must send to that partition's
    /// owner ([`crate::partition::Partitions::of`]). `None` for reads and for writes that belong
    /// to no conversation's partition (activity, revocations, retention, and the
    /// creation of a conversation, whose id is not known until it is allocated).
    pub fn partition_conversation(&self) -> Option<ConversationKey> {
        match self {
            Request::Append(req) => Some(req.conversation),
            Request::AddMembers { group, .. }
            | Request::RemoveMembers { group, .. }
            | Request::Leave { group, .. }
            | Request::SetRole { group, .. }
            | Request::Dissolve { group, .. }
            | Request::Mute { group, .. } => Some(ConversationKey::Group(*group)),
            Request::Follow { account, .. } | Request::Unfollow { account, .. } => {
                Some(ConversationKey::PublicAccount(*account))
            }
            Request::Recall { conversation, .. }
            | Request::Edit { conversation, .. }
            | Request::MarkRead { conversation, .. } => Some(*conversation),
            Request::CreateGroup { .. }
            | Request::CreatePublicAccount { .. }
            | Request::Members { .. }
            | Request::RoleOf { .. }
            | Request::ConversationsOf { .. }
            | Request::Sync(_)
            | Request::History { .. }
            | Request::ReadCount { .. }
            | Request::TouchActivity { .. }
            | Request::LastActive { .. }
            | Request::RevokeToken { .. }
            | Request::LoadRevoked { .. }
            | Request::Trim { .. } => None,
        }
    }

    /// The conversation a read of one conversation reads (history, members, a role, a
    /// read count): what a cluster node whose database does not hold that conversation's
    /// partition must ask its owner node for (docs/CLUSTER.md). `None` for writes and for
    /// reads that span conversations (sync, conversation lists, activity).
    pub fn conversation_read(&self) -> Option<ConversationKey> {
        match self {
            Request::History { conversation, .. }
            | Request::Members { conversation }
            | Request::RoleOf { conversation, .. }
            | Request::ReadCount { conversation, .. } => Some(*conversation),
            _ => None,
        }
    }

    /// True if the request may write (and so takes part in the WAL sync of its batch).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Request::Members { .. }
                | Request::RoleOf { .. }
                | Request::ConversationsOf { .. }
                | Request::Sync(_)
                | Request::History { .. }
                | Request::LastActive { .. }
                | Request::LoadRevoked { .. }
                | Request::ReadCount { .. }
        )
    }
}

/// The reply to a [`Request`]; each request documents its variant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// From `Append`.
    Appended(AppendOutcome),
    /// From `CreateGroup` / `CreatePublicAccount`: the new conversation.
    Created(ConversationKey),
    /// From membership changes.
    Membership(MembershipChange),
    /// From `Members`.
    Members(Vec<Member>),
    /// From `RoleOf`.
    Role(Option<Role>),
    /// From `ConversationsOf`.
    Conversations(Vec<ConversationKey>),
    /// From `Sync`.
    Synced(SyncPage),
    /// From `History`.
    History(HistoryPage),
    /// From `MarkRead`.
    State(ConversationState),
    /// From `LastActive`: ms since epoch, `None` if never seen.
    LastActive(Option<u64>),
    /// From `LoadRevoked`.
    Revoked(Vec<RevokedToken>),
    /// From `Trim`.
    Trimmed(TrimReport),
    /// From `Recall`.
    Recalled(RecallOutcome),
    /// From `Edit`.
    Edited(EditOutcome),
    /// From `ReadCount`: (read, of).
    ReadCount(u64, u64),
    /// From requests with nothing to report.
    Done,
}

/// A storage engine. Methods are synchronous and take `&self`; engines serialise writes
/// internally (one writer) and may serve reads concurrently.
///
/// Durability: each write method returns only once its write is durable according to
/// the engine's [`crate::SyncMode`]. [`Engine::execute_batch`] applies many requests and
/// makes them durable together (one WAL fsync), which is what the group-commit queue uses.
pub trait Engine: Send + Sync {
    /// Append a message exactly once.
    fn append(&self, req: AppendRequest) -> Result<AppendOutcome, StorageError>;
    /// Create a group; returns its key.
    fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError>;
    /// Add plain members (owner or admin).
    fn add_members(
        &self,
        actor: UserId,
        group: u64,
        users: &[UserId],
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError>;
    /// Remove members (role rules apply).
    fn remove_members(
        &self,
        actor: UserId,
        group: u64,
        users: &[UserId],
    ) -> Result<MembershipChange, StorageError>;
    /// Leave a group.
    fn leave(&self, user: UserId, group: u64) -> Result<MembershipChange, StorageError>;
    /// Set a member's role (owner only).
    fn set_role(
        &self,
        actor: UserId,
        group: u64,
        user: UserId,
        role: Role,
    ) -> Result<MembershipChange, StorageError>;
    /// Read count of a message (see [`Request::ReadCount`]): (read, of).
    fn read_count(
        &self,
        user: UserId,
        conversation: ConversationKey,
        seq: u64,
    ) -> Result<(u64, u64), StorageError>;
    /// Edit a message (see [`Request::Edit`]).
    fn edit(
        &self,
        actor: UserId,
        conversation: ConversationKey,
        seq: u64,
        payload: Bytes,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<EditOutcome, StorageError>;
    /// Recall a message (see [`Request::Recall`]).
    fn recall(
        &self,
        actor: UserId,
        conversation: ConversationKey,
        seq: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<RecallOutcome, StorageError>;
    /// Dissolve a group (see [`Request::Dissolve`]).
    fn dissolve(&self, actor: UserId, group: u64) -> Result<MembershipChange, StorageError>;
    /// Mute a member (or the whole group: `user` `None`) until `until_ms` (see
    /// [`Request::Mute`]).
    fn mute(
        &self,
        actor: UserId,
        group: u64,
        user: Option<UserId>,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError>;
    /// Create a public account; returns its key.
    fn create_public_account(
        &self,
        owner: UserId,
        name: &str,
        now_ms: u64,
    ) -> Result<ConversationKey, StorageError>;
    /// Follow a public account.
    fn follow(
        &self,
        user: UserId,
        account: u64,
        now_ms: u64,
    ) -> Result<MembershipChange, StorageError>;
    /// Unfollow a public account.
    fn unfollow(&self, user: UserId, account: u64) -> Result<MembershipChange, StorageError>;
    /// Participants with roles (1:1 chats: both users as `Member`).
    fn members(&self, conversation: ConversationKey) -> Result<Vec<Member>, StorageError>;
    /// One user's role, `None` if not a participant.
    fn role_of(
        &self,
        conversation: ConversationKey,
        user: UserId,
    ) -> Result<Option<Role>, StorageError>;
    /// Conversations the user participates in.
    fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationKey>, StorageError>;
    /// One sync page for a device.
    fn sync(&self, req: &SyncRequest) -> Result<SyncPage, StorageError>;
    /// A history page (ascending seq, all below `before_seq`).
    fn history(
        &self,
        user: UserId,
        conversation: ConversationKey,
        before_seq: u64,
        limit: usize,
    ) -> Result<HistoryPage, StorageError>;
    /// Advance a read cursor.
    fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationKey,
        seq: u64,
    ) -> Result<ConversationState, StorageError>;
    /// Record activity.
    fn touch_activity(&self, user: UserId, now_ms: u64) -> Result<(), StorageError>;
    /// Last recorded activity.
    fn last_active(&self, user: UserId) -> Result<Option<u64>, StorageError>;
    /// Revoke a token.
    fn revoke_token(&self, token: TokenId, expires_at_ms: u64) -> Result<(), StorageError>;
    /// Unexpired revoked tokens.
    fn load_revoked(&self, now_ms: u64) -> Result<Vec<RevokedToken>, StorageError>;
    /// One bounded retention step (see [`Request::Trim`]).
    fn trim(&self, now_ms: u64) -> Result<TrimReport, StorageError>;

    /// Apply `requests` in order and make all their writes durable together (one WAL
    /// fsync in `SyncMode::Batch`) before returning; replies are in request order.
    /// If the final sync fails, every write reply is replaced by the error.
    fn execute_batch(&self, requests: Vec<Request>) -> Vec<Result<Reply, StorageError>>;

    /// Apply `requests` in order without waiting for durability: their writes become
    /// durable at the next [`Engine::make_durable`], and nobody may be told about them
    /// before that returns. Lets the commit queue apply one group while the previous
    /// group's fsync runs. The default is [`Engine::execute_batch`] (already durable).
    fn apply_batch(&self, requests: Vec<Request>) -> Vec<Result<Reply, StorageError>> {
        self.execute_batch(requests)
    }

    /// [`Engine::apply_batch`] into the caller's buffers: drains `requests` and appends
    /// one reply per request to `replies`, so a caller that keeps both allocates nothing
    /// per group (the committer does). The default goes through `apply_batch`.
    fn apply_batch_into(
        &self,
        requests: &mut Vec<Request>,
        replies: &mut Vec<Result<Reply, StorageError>>,
    ) {
        replies.extend(self.apply_batch(std::mem::take(requests)));
    }

    /// Make every write applied so far durable: one WAL fsync in `SyncMode::Batch`; in
    /// the other modes writes are already as durable as the mode promises.
    fn make_durable(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Run one request (durable per the engine's sync mode on return).
    fn execute(&self, request: Request) -> Result<Reply, StorageError> {
        dispatch(self, request)
    }
}

/// After a failed WAL sync: replace every successful write reply by an error, because
/// the write may not survive a crash. `writes[i]` says whether request `i` was a write.
pub fn fail_not_durable(
    writes: &[bool],
    replies: &mut [Result<Reply, StorageError>],
    cause: &StorageError,
) {
    for (w, r) in writes.iter().zip(replies.iter_mut()) {
        if *w && r.is_ok() {
            *r = Err(cause.for_group_writes("WAL sync failed, write not durable"));
        }
    }
}

/// Route a request to the matching typed [`Engine`] method.
pub fn dispatch<E: Engine + ?Sized>(engine: &E, request: Request) -> Result<Reply, StorageError> {
    Ok(match request {
        Request::Append(req) => Reply::Appended(engine.append(req)?),
        Request::CreateGroup {
            owner,
            name,
            members,
            now_ms,
        } => Reply::Created(engine.create_group(owner, &name, &members, now_ms)?),
        Request::AddMembers {
            actor,
            group,
            users,
            now_ms,
        } => Reply::Membership(engine.add_members(actor, group, &users, now_ms)?),
        Request::RemoveMembers {
            actor,
            group,
            users,
        } => Reply::Membership(engine.remove_members(actor, group, &users)?),
        Request::Leave { user, group } => Reply::Membership(engine.leave(user, group)?),
        Request::SetRole {
            actor,
            group,
            user,
            role,
        } => Reply::Membership(engine.set_role(actor, group, user, role)?),
        Request::Dissolve { actor, group } => Reply::Membership(engine.dissolve(actor, group)?),
        Request::Recall {
            actor,
            conversation,
            seq,
            window_ms,
            now_ms,
        } => Reply::Recalled(engine.recall(actor, conversation, seq, window_ms, now_ms)?),
        Request::Edit {
            actor,
            conversation,
            seq,
            payload,
            window_ms,
            now_ms,
        } => Reply::Edited(engine.edit(actor, conversation, seq, payload, window_ms, now_ms)?),
        Request::ReadCount {
            user,
            conversation,
            seq,
        } => {
            let (read, of) = engine.read_count(user, conversation, seq)?;
            Reply::ReadCount(read, of)
        }
        Request::Mute {
            actor,
            group,
            user,
            until_ms,
            now_ms,
        } => Reply::Membership(engine.mute(actor, group, user, until_ms, now_ms)?),
        Request::CreatePublicAccount {
            owner,
            name,
            now_ms,
        } => Reply::Created(engine.create_public_account(owner, &name, now_ms)?),
        Request::Follow {
            user,
            account,
            now_ms,
        } => Reply::Membership(engine.follow(user, account, now_ms)?),
        Request::Unfollow { user, account } => Reply::Membership(engine.unfollow(user, account)?),
        Request::Members { conversation } => Reply::Members(engine.members(conversation)?),
        Request::RoleOf { conversation, user } => Reply::Role(engine.role_of(conversation, user)?),
        Request::ConversationsOf { user } => Reply::Conversations(engine.conversations_of(user)?),
        Request::Sync(req) => Reply::Synced(engine.sync(&req)?),
        Request::History {
            user,
            conversation,
            before_seq,
            limit,
        } => Reply::History(engine.history(user, conversation, before_seq, limit)?),
        Request::MarkRead {
            user,
            conversation,
            seq,
        } => Reply::State(engine.mark_read(user, conversation, seq)?),
        Request::TouchActivity { user, now_ms } => {
            engine.touch_activity(user, now_ms)?;
            Reply::Done
        }
        Request::LastActive { user } => Reply::LastActive(engine.last_active(user)?),
        Request::RevokeToken {
            token,
            expires_at_ms,
        } => {
            engine.revoke_token(token, expires_at_ms)?;
            Reply::Done
        }
        Request::LoadRevoked { now_ms } => Reply::Revoked(engine.load_revoked(now_ms)?),
        Request::Trim { now_ms } => Reply::Trimmed(engine.trim(now_ms)?),
    })
}
