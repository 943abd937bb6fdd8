//! What the control planes of two cores tell each other.
//!
//! A server whose cores each own the sessions of their own connections runs one
//! [`crate::Control`] per core ([`crate::Config::core_count`] > 1). They share nothing
//! but these messages, which the driver carries between them on the rings between cores
//! ([`crate::Action::ToCore`] out, [`crate::Event::FromCore`] in):
//!
//! - **Presence.** When the first session of a user opens on a core, and when its last
//!   one closes, that core tells every other core. Each control plane keeps, per user,
//!   the set of other cores with a session (a bitmask), so that a conversation's push
//!   goes only to cores where one of its users is online, and a user online on another
//!   core is not reported offline.
//! - **Pushes.** A push for users with sessions on another core travels there as one
//!   [`RemotePush`] — users, the connection to leave out, the encoded frame and its
//!   [`PushKind`] — and that core delivers it to its own connections with the receiver's
//!   policy (congestion is known only there).
//!
//! Presence is eventually consistent, and that has two edges the driver must close
//! before sessions span cores in production (not done yet):
//! - A message appended on core A after a new device on core B read its first sync, but
//!   before A learned of that session, is neither pushed nor in that sync: the device
//!   sees it only at its next sync or the next seq gap. The fix is an ordering rule for
//!   the driver: answer a login (`LoginResult`) only after every core has taken its
//!   presence in.
//! - A user whose last session just closed on B still counts as online on A until the
//!   notice arrives: a message in between sends no offline notice (`OfflineMessage`).
//!
//! No stored message is lost either way: it is in storage, and every sync returns it.

use bytes::Bytes;
use petrel_conn::ConnId;
use petrel_storage::ConversationKey;

/// Most cores one server's control planes can span (the presence bitmask).
pub const MAX_CORES: u8 = 64;

/// What a push carries, which decides what happens at a congested receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushKind {
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

/// A push for users with sessions on the receiving core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePush {
    /// The users (each once) whose connections on the receiving core get it.
    pub users: Vec<u64>,
    /// The connection that caused it (on the sending core: never one of the receiver's).
    pub except: Option<ConnId>,
    /// What it carries.
    pub kind: PushKind,
    /// The encoded frame.
    pub bytes: Bytes,
}

/// One message from one core's control plane to another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreMessage {
    /// `user` now has a session on the sending core (`online`), or no longer has any.
    Presence {
        /// The user.
        user: u64,
        /// Whether the sending core has a session of theirs.
        online: bool,
    },
    /// A push to deliver to the receiving core's connections.
    Push(RemotePush),
}
