//! The events a transport reports about its connections.

use petrel_proto::{Frame, FrameError};

use crate::ConnId;

/// Something that happened on a transport's connection. A transport reports them in the
/// order they happened per connection: `Opened` first, `Closed` last, nothing after.
// A decoded frame is large; boxing it would allocate once per message on the hot path,
// while the events live in a reused `Vec` per core.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum TransportEvent {
    /// A connection was accepted. Ids are never reused within a process.
    Opened {
        /// The new connection.
        conn: ConnId,
    },
    /// A complete frame arrived.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The decoded frame.
        frame: Frame,
    },
    /// The frame decoder failed; after a fatal error the transport stops reading the
    /// connection (the stream is out of sync) and waits for a close.
    FrameError {
        /// The connection.
        conn: ConnId,
        /// What the decoder reported.
        error: FrameError,
    },
    /// After a write, the connection's queued output is still over the transport's
    /// outbound limit: its peer reads slower than the server writes. Until `Drained`, the
    /// transport reads nothing more from it (so its requests stop adding answers), and
    /// the control plane pushes nothing more to it. Reported once per crossing.
    Congested {
        /// The connection.
        conn: ConnId,
    },
    /// A congested connection's queue is down to half the limit or less: the transport
    /// reads it again, and pushes may resume.
    Drained {
        /// The connection.
        conn: ConnId,
    },
    /// The client showed it is alive without sending a frame (a WebSocket ping): counts
    /// as a heartbeat, like a protocol `Ping`, but needs no answer (the transport gave it
    /// one).
    Heartbeat {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is gone (peer closed, reset, or after our close).
    Closed {
        /// The connection.
        conn: ConnId,
    },
}

impl TransportEvent {
    /// The connection the event is about.
    pub fn conn(&self) -> ConnId {
        match self {
            TransportEvent::Opened { conn }
            | TransportEvent::Frame { conn, .. }
            | TransportEvent::FrameError { conn, .. }
            | TransportEvent::Congested { conn }
            | TransportEvent::Drained { conn }
            | TransportEvent::Heartbeat { conn }
            | TransportEvent::Closed { conn } => *conn,
        }
    }
}
