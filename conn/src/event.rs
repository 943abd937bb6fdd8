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
    /// Bytes of earlier sends were handed to the network (the kernel socket, or the
    /// userspace TCP socket's buffer).
    Flushed {
        /// The connection.
        conn: ConnId,
        /// Bytes written since the last report.
        bytes: u64,
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
            | TransportEvent::Flushed { conn, .. }
            | TransportEvent::Closed { conn } => *conn,
        }
    }
}
