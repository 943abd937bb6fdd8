//! What the control planes of two cores tell each other.
//!
//! A server whose cores each own the sessions of their own connections runs one
//! [`crate::Control`] per core ([`crate::Config::core_count`] > 1). They share nothing
//! but these messages, which the driver carries between them on the rings between cores
//! ([`crate::Action::ToCore`] out, [`crate::Event::FromCore`] in):
//!
//! - **Presence and logins.** Every login on a core is told to every other core
//!   ([`RemoteLogin`]), and so is the close of a user's last session there. Each control
//!   plane keeps, per user, the set of other cores with a session (a bitmask), so that
//!   a conversation's push goes only to cores where one of its users is online, and a
//!   user online on another core is not reported offline. Each other core answers a
//!   login with [`CoreMessage::LoginSeen`], and the login's `LoginResult` is held until
//!   every core has: a client that has its `LoginResult` is known to every core.
//! - **The multi-device policy across cores.** Of two sessions of one user that the
//!   policy does not let live side by side (same device; same platform under
//!   `OnePerPlatform`), the later login wins on every core alike: by `Login.attempt`
//!   for two numbered logins of one device, else by login time, then core index. A core
//!   that hears of a login kicks its own sessions that lose to it, and tells the login's
//!   core to kick the login if one of its own wins ([`CoreMessage::Replace`]).
//! - **Revocations.** A token revoked on one core (and stored there) is refused by every
//!   core from the moment the notice arrives, and the sessions using it end.
//! - **Pushes.** A push for users with sessions on another core travels there as one
//!   [`RemotePush`] — users, the connection to leave out, the encoded frame and its
//!   [`PushKind`] — and that core delivers it to its own connections with the receiver's
//!   policy (congestion is known only there).
//! - **Chatrooms.** Each room is owned by one core, [`crate::chatroom::room_owner`]
//!   (`room_id % core_count`), which holds its seq counter, recent backlog, closed flag
//!   and every member across cores. A connection's own core keeps its seats and a local
//!   index of its members per room; it sends the owner what its connections do in a room
//!   it does not own — join ([`CoreMessage::RoomJoin`]), leave or close
//!   ([`CoreMessage::RoomLeft`]), send ([`CoreMessage::RoomSend`]), typing
//!   ([`CoreMessage::RoomTyping`]), member list ([`CoreMessage::RoomList`]) — and the
//!   owner answers with the encoded response ([`CoreMessage::RoomJoined`],
//!   [`CoreMessage::RoomReply`]). A message is sequenced and encoded once by the owner
//!   and sent as one [`CoreMessage::RoomPush`] to each other core with members, which
//!   delivers it to its own (skipping congested ones, who get a `Gap` later). An
//!   operator's close or kick, answered by the owner (the driver routes an API chatroom
//!   call there), reaches the removed members' cores as [`CoreMessage::RoomRemoved`].
//!   Since messages between two cores arrive in order, a member core's view of its
//!   connections' seats follows the owner's: a join's answer that finds its seat gone
//!   (the connection left or closed meanwhile) tells the owner to remove it again.
//!   Between cluster nodes an answer may never come (the owner's node went down, or
//!   NATS lost the request or the answer): the asking core answers such a request
//!   `SERVER_BUSY` itself when the owner becomes unreachable or after
//!   [`crate::Config::room_answer_timeout`], and drops an answer that comes after that —
//!   each request is answered once.
//!
//! Presence is eventually consistent; what keeps a new session from missing a message:
//! - **The held `LoginResult`.** A message whose append completes on core A before A
//!   learned of a new session on core B is not pushed to it; but A acknowledged the
//!   login only after learning of it, and B sends `LoginResult` only after every core
//!   acknowledged — so that message was durable before the client could ask for its
//!   first sync, which returns it, and every append completing later is pushed. While
//!   its `LoginResult` is held a session gets no pushes (the sync after it returns what
//!   they carried; a chatroom needs a join, which needs the `LoginResult`). Requests a
//!   client sends before its `LoginResult` arrives are served as usual, so their
//!   answers may come first; the SDK waits for it.
//! - A user whose last session just closed on B still counts as online on A until the
//!   notice arrives: a message in between sends no offline notice (`OfflineMessage`).
//!
//! No stored message is lost either way: it is in storage, and every sync returns it.
//!
//! **Cores of other nodes.** In a cluster (docs/CLUSTER.md) every core of every node has
//! one index and these messages travel between nodes too. A core that cannot be reached
//! — its node is down, or not heard from yet — is told to the control plane
//! ([`crate::Event::CoresDown`]): nothing more is sent to it, no login waits for its
//! `LoginSeen`, its users no longer count as online here, its connections leave the rooms
//! this core owns, and requests for the rooms it owns are answered `SERVER_BUSY`. When it
//! is back ([`crate::Event::CoresUp`], a restarted node with no sessions), it is told of
//! every session here as if each had just logged in.

use std::sync::Arc;

use bytes::Bytes;
use petrel_conn::ConnId;
use petrel_proto::{FrameType, pb};
use petrel_storage::ConversationKey;

/// Most cores one server's control planes can span (the presence bitmask).
pub const MAX_CORES: u8 = 64;

/// Longest a login's `LoginResult` waits for the other cores' `LoginSeen`: past it the
/// login is answered anyway. On one server the rings never lose a message and it never
/// matters; between cluster nodes a notice can be lost (NATS is at most once), and a
/// client must not wait for ever. Answered early, the session may miss pushes of the
/// cores that had not heard of it — its next sync returns those messages.
pub const LOGIN_HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What a push carries, which decides what happens at a congested receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A session that just logged in on the sending core: what the other cores need to
/// apply the multi-device policy to their own sessions of the user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteLogin {
    /// The user.
    pub user: u64,
    /// The device id.
    pub device: Arc<str>,
    /// Platform class (`pb::Platform` value).
    pub platform: i32,
    /// The login's `Login.attempt` (0: not numbered).
    pub attempt: u64,
    /// When it logged in, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Its connection (on the sending core).
    pub conn: ConnId,
}

/// A chatroom request of a connection on the sending core, for the room's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomRequest {
    /// The room.
    pub room: u64,
    /// The connection (on the sending core).
    pub conn: ConnId,
    /// The request id to answer.
    pub rid: u32,
    /// The connection's user.
    pub user: u64,
}

/// A message a connection on the sending core sends to a room the receiving core owns,
/// checked there already (content, mentions, the sender's seat).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomSend {
    /// The room, the sender's connection, its request id and user.
    pub request: RoomRequest,
    /// The sender's device id.
    pub device: Arc<str>,
    /// The client's id of the message.
    pub client_msg_id: u64,
    /// The encoded content, as it came.
    pub content: Bytes,
    /// The seq it replies to (unchecked in a room).
    pub reply_to: u64,
    /// The users it mentions (unchecked in a room).
    pub mentions: Vec<u64>,
    /// Server time of the send, in milliseconds since the Unix epoch (the sender's
    /// core's clock, as on a one-core server).
    pub server_time_ms: u64,
}

/// What a [`CoreMessage::RoomPush`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RoomPushKind {
    /// A message of the room with this seq: a congested member skips it and is owed a
    /// `Gap`.
    Message {
        /// The room's seq of the message.
        seq: u64,
    },
    /// A typing notice: a congested member simply misses it.
    Typing,
}

/// One message from one core's control plane to another's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CoreMessage {
    /// A session logged in on the sending core: the user is online there now, and each
    /// core replaces its own sessions the login wins over (same device, or same
    /// platform under `OnePerPlatform`), or has the sending core replace this one if
    /// one of its own wins ([`CoreMessage::Replace`]).
    LoggedIn(RemoteLogin),
    /// The receiving core's login on `conn` ([`CoreMessage::LoggedIn`]) is known here
    /// now: once every other core has said so, its `LoginResult` is sent.
    LoginSeen {
        /// The receiving core's connection.
        conn: ConnId,
    },
    /// The sending core has no session of `user` left.
    Offline {
        /// The user.
        user: u64,
    },
    /// A session of the receiving core (on `conn`) lost to a login on the sending core:
    /// kick it with `REPLACED` if it is still there.
    Replace {
        /// The receiving core's connection.
        conn: ConnId,
    },
    /// The sending core revoked a token (logout with `revoke_token`, or the API) and
    /// stored the revocation: refuse it from now on and end the sessions that use it.
    Revoked {
        /// The token id.
        token_id: [u8; crate::token::TOKEN_ID_LEN],
        /// Until when the revocation matters (the token's expiry), in milliseconds.
        expires_at_ms: u64,
    },
    /// A push to deliver to the receiving core's connections.
    Push(RemotePush),
    /// A connection of the sending core asks to join a room the receiving core owns:
    /// refused if the room is closed, else it becomes a member; answered with
    /// [`CoreMessage::RoomJoined`]. (The sending core checked its seat limit and holds
    /// the seat meanwhile.)
    RoomJoin(RoomRequest),
    /// The owner's answer to [`CoreMessage::RoomJoin`]: the encoded response for `conn`
    /// (`ConversationOpResult` with members and recent messages if `seated`, else an
    /// `Error`). If seated, the member core indexes the seat for deliveries — or, if the
    /// connection no longer holds it (left or closed meanwhile), tells the owner to
    /// remove it ([`CoreMessage::RoomLeft`]); if refused, it drops the seat.
    RoomJoined {
        /// The room.
        room: u64,
        /// The connection (on the receiving core).
        conn: ConnId,
        /// The join's request id.
        rid: u32,
        /// Whether the owner made it a member.
        seated: bool,
        /// The encoded response frame.
        bytes: Bytes,
    },
    /// A connection of the sending core left a room the receiving core owns (or
    /// closed): take it out of the members.
    RoomLeft {
        /// The room.
        room: u64,
        /// The connection (on the sending core).
        conn: ConnId,
    },
    /// A message to a room the receiving core owns: it assigns the seq, answers the
    /// sender with [`CoreMessage::RoomReply`] (the `Ack`, or `NotAMember` if the sender
    /// is no longer in the room), remembers it for late joiners and delivers it to every
    /// other member ([`CoreMessage::RoomPush`] for other cores').
    RoomSend(RoomSend),
    /// A typing notice to a room the receiving core owns: delivered to the other
    /// members like a message, without a seq or an answer (dropped if the sender is not
    /// a member or the room is over `typing_max_audience`).
    RoomTyping {
        /// The room.
        room: u64,
        /// The typing connection (on the sending core).
        conn: ConnId,
        /// Its user.
        user: u64,
        /// Started (true) or stopped (false).
        typing: bool,
    },
    /// A connection of the sending core asks for the members of a room the receiving
    /// core owns: answered with [`CoreMessage::RoomReply`].
    RoomList(RoomRequest),
    /// An encoded answer from a room's owner to a request of a connection on the
    /// receiving core: send it as it is.
    RoomReply {
        /// The connection (on the receiving core).
        conn: ConnId,
        /// The request id it answers.
        rid: u32,
        /// The frame's type (for the counters).
        #[serde(with = "wire::frame_type")]
        frame_type: FrameType,
        /// The encoded frame.
        bytes: Bytes,
    },
    /// A room push from the room's owner: the receiving core's members of `room` but
    /// `except` get it, a congested one skipping it (and owed a `Gap` for a message).
    RoomPush {
        /// The room.
        room: u64,
        /// What it is.
        kind: RoomPushKind,
        /// The connection that caused it (it has its answer already).
        except: Option<ConnId>,
        /// The encoded frame, shared by every receiver.
        bytes: Bytes,
    },
    /// The room's owner took these connections of the receiving core out of `room` (an
    /// operator's close or kick): they drop their seats and each gets a
    /// `ConversationEvent` of `kind` naming its user.
    RoomRemoved {
        /// The room.
        room: u64,
        /// The connections (on the receiving core).
        conns: Vec<ConnId>,
        /// `Dissolved` for a close, `MembersRemoved` for a kick.
        #[serde(with = "wire::event_kind")]
        kind: pb::ConversationEventKind,
    },
}

/// How the protocol's enums inside a [`CoreMessage`] travel between the nodes of a
/// cluster: as their numbers, checked on the way in.
mod wire {
    /// A [`petrel_proto::FrameType`] as its type byte.
    pub mod frame_type {
        use petrel_proto::FrameType;
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(t: &FrameType, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u8(*t as u8)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FrameType, D::Error> {
            let byte = u8::deserialize(d)?;
            FrameType::from_u8(byte).ok_or_else(|| D::Error::custom("unknown frame type"))
        }
    }

    /// A [`petrel_proto::pb::ConversationEventKind`] as its protobuf number.
    pub mod event_kind {
        use petrel_proto::pb::ConversationEventKind;
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(
            k: &ConversationEventKind,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.serialize_i32(*k as i32)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<ConversationEventKind, D::Error> {
            let n = i32::deserialize(d)?;
            ConversationEventKind::try_from(n)
                .map_err(|_| D::Error::custom("unknown conversation event kind"))
        }
    }
}
