//! The control plane's inputs ([`Event`]) and outputs ([`Action`]).
//!
//! See [`crate::Control`] for the calling order, and `docs/ARCHITECTURE.md`
//! ("Control plane: events and actions") for how transports and the storage driver use
//! them.

use crate::remote::CoreMessage;
use bytes::Bytes;
use petrel_proto::{Frame, FrameError, pb};
use petrel_storage::{ConversationKey, Reply, Request, StorageError};

use petrel_conn::{ConnId, TransportEvent};

/// Correlates a [`Action::Storage`] request with its [`Event::Storage`] completion.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Ticket(pub u64);

/// Something that happened, reported by the driver.
#[derive(Debug)]
pub enum Event {
    /// A transport accepted a connection. Ids are never reused within a process.
    Opened {
        /// The new connection.
        conn: ConnId,
    },
    /// A complete frame arrived on `conn`.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The decoded frame.
        frame: Frame,
    },
    /// The transport's frame decoder failed on `conn`. The control plane answers with an
    /// `Error` frame carrying [`FrameError::error_code`], and closes the connection if
    /// [`FrameError::is_fatal`].
    FrameError {
        /// The connection.
        conn: ConnId,
        /// What the decoder reported.
        error: FrameError,
    },
    /// `conn`'s output queued in the transport stayed over the transport's outbound limit
    /// after a write: its peer reads slower than it is sent to. Until [`Event::Drained`],
    /// a push of a persisted conversation kicks it (`Kick{SlowConsumer}`; it re-syncs
    /// after reconnecting) and chatroom pushes skip it (a `Gap` reports them later).
    Congested {
        /// The connection.
        conn: ConnId,
    },
    /// A congested connection's queue drained (to half the limit): pushes resume, after
    /// the `Gap`s it is owed.
    Drained {
        /// The connection.
        conn: ConnId,
    },
    /// The client showed it is alive without a frame (a WebSocket ping, answered by the
    /// transport): a heartbeat, like a `Ping` frame.
    Heartbeat {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is gone (peer closed, reset, or after an [`Action::Close`]).
    /// Events for unknown connections are ignored.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// A storage request finished.
    Storage {
        /// The ticket of the [`Action::Storage`] that asked for it.
        ticket: Ticket,
        /// Its outcome.
        result: Result<Reply, StorageError>,
    },
    /// Nothing happened but time passed: the driver reached
    /// [`crate::Control::poll_timeout`].
    Tick,
    /// Another core's control plane told this one something ([`crate::remote`]).
    FromCore {
        /// The sending core.
        core: u8,
        /// What it said.
        message: CoreMessage,
    },
    /// These cores (bit = core index) cannot be reached: their cluster node stopped
    /// answering, or has not been heard from yet ([`crate::remote`], "Cores of other
    /// nodes"). Their users no longer count as online there, and no login waits for them.
    CoresDown {
        /// The cores, as a bitmask.
        cores: u64,
    },
    /// These cores (bit = core index) can be reached again — their node (re)started with
    /// no sessions: every session here is announced to them.
    CoresUp {
        /// The cores, as a bitmask.
        cores: u64,
    },
}

impl From<TransportEvent> for Event {
    fn from(event: TransportEvent) -> Event {
        match event {
            TransportEvent::Opened { conn } => Event::Opened { conn },
            TransportEvent::Frame { conn, frame } => Event::Frame { conn, frame },
            TransportEvent::FrameError { conn, error } => Event::FrameError { conn, error },
            TransportEvent::Congested { conn } => Event::Congested { conn },
            TransportEvent::Drained { conn } => Event::Drained { conn },
            TransportEvent::Heartbeat { conn } => Event::Heartbeat { conn },
            TransportEvent::Closed { conn } => Event::Closed { conn },
        }
    }
}

/// Which sessions [`crate::Control::revoke_sessions`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Every live session of this user (and the tokens they use).
    User(u64),
    /// The token with this id (whether or not a session uses it), and every live session
    /// that logged in with it or was renewed to it.
    Token {
        /// The token id (the revocation key inside the token).
        token_id: [u8; crate::token::TOKEN_ID_LEN],
        /// When the token expires; the revocation is kept until then.
        expires_at: crate::Timestamp,
    },
}

/// Why the control plane closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No login within the login deadline.
    LoginTimeout,
    /// A request frame arrived before login.
    NotLoggedIn,
    /// The login was refused: its token (a token code), or because the server is
    /// shutting down (`ShuttingDown`); the code was sent in an `Error` frame first.
    LoginRejected(pb::ErrorCode),
    /// The session was kicked (a `Kick` frame was sent first).
    Kicked(pb::KickReason),
    /// The client logged out.
    Logout,
    /// The byte stream lost sync (an `Error` frame was sent first).
    FatalFrameError(pb::ErrorCode),
    /// A connection that had not logged in sent a frame the decoder rejected (unknown
    /// type, invalid body) or one not valid from a client (a server-to-client type, the
    /// RESPONSE flag); an `Error` frame was sent first.
    BadFrameBeforeLogin(pb::ErrorCode),
    /// Every token of the session expired without a renewal (an `Error(TokenExpired)`
    /// frame was sent first).
    SessionExpired,
}

/// Something the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Append `bytes` (one or more encoded frames) to `conn`'s outbound stream. A fan-out
    /// push shares one buffer among all its receivers.
    Send {
        /// The connection.
        conn: ConnId,
        /// Encoded frames.
        bytes: Bytes,
    },
    /// Flush what was already sent to `conn`, then close it. The control plane has
    /// already forgotten the connection; a later [`Event::Closed`] for it is ignored.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// The control plane has taken one [`Event::Congested`] of `conn` into account:
    /// what it sends to `conn` after this action, it sends knowing. Emitted once per
    /// `Congested`, for every connection, in order with the sends; the transport
    /// measures its slow-consumer limit from here, so pushes that were already on their
    /// way (on a ring from another core) do not close the connection.
    NoteCongestion {
        /// The connection.
        conn: ConnId,
    },
    /// A stored message reached recipients that have no online session (only with
    /// [`crate::Config::offline_notices`]): the driver tells the deployment's backend
    /// (a webhook), which sends a phone push. Emitted after the message is durable, once
    /// per message, never for duplicates.
    OfflineMessage(Box<OfflineMessage>),
    /// Hand `message` to core `core`'s control plane (as [`Event::FromCore`]), on the
    /// ring between the two cores; only with [`crate::Config::core_count`] > 1.
    ToCore {
        /// The receiving core.
        core: u8,
        /// What to tell it.
        message: CoreMessage,
    },
    /// Run `request` on the storage engine and report the result as
    /// [`Event::Storage`] with the same ticket. Requests may run concurrently and
    /// complete in any order, but two requests of one connection must be applied in
    /// the order they were emitted (the group-commit queue preserves order).
    Storage {
        /// Correlation id.
        ticket: Ticket,
        /// The request.
        request: Request,
    },
}

/// A stored message and who of its recipients had no online session when it was pushed
/// ([`Action::OfflineMessage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// The conversation (a 1:1 chat has one offline recipient at most: the peer).
    pub conversation: ConversationKey,
    /// The message's seq in it.
    pub seq: u64,
    /// Who sent it.
    pub sender: u64,
    /// The sending device.
    pub sender_device: String,
    /// The sender's idempotency id.
    pub client_msg_id: u64,
    /// When it was stored (ms since epoch).
    pub server_time_ms: u64,
    /// The encoded `Content`, as stored.
    pub content: Bytes,
    /// The seq it replies to (0: none).
    pub reply_to: u64,
    /// The members it mentions (a notification service shows those even for muted
    /// conversations).
    pub mentions: Vec<u64>,
    /// Recipients with no online session, the sender never among them.
    pub recipients: Vec<u64>,
}
