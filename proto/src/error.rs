//! Everything that can be wrong with a byte stream or a frame.

use crate::frame_type::FrameType;

/// A frame could not be decoded or encoded.
///
/// [`FrameError::is_fatal`] tells a transport whether the stream is still in sync: after
/// a fatal error frame boundaries are lost and the connection must be closed (after
/// sending an error frame); after a non-fatal one the offending frame has been consumed
/// and decoding can continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer is shorter than the structure being read. The streaming decoder never
    /// returns this (it waits for more bytes); checked views over fixed buffers do.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The stream does not start with the magic bytes "PT": not a Petrel peer, or the
    /// stream lost sync.
    #[error("bad magic {found:02x?}, expected \"PT\" (50 54)")]
    BadMagic {
        /// The two bytes found instead.
        found: [u8; 2],
    },
    /// The peer speaks a protocol version this build does not.
    #[error(
        "unsupported protocol version {found}, this build speaks version {}",
        crate::header::VERSION
    )]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A flag bit or reserved byte that version 1 requires to be zero is set.
    #[error("reserved header bits set (flags {flags:#04x}, reserved {reserved:02x?})")]
    ReservedBits {
        /// The flags byte.
        flags: u8,
        /// The three reserved bytes.
        reserved: [u8; 3],
    },
    /// The header announces a body longer than the configured maximum. Detected from the
    /// header alone, before any body byte is buffered.
    #[error("frame body of {len} bytes exceeds the maximum of {max} bytes")]
    Oversize {
        /// Announced body length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// The frame type byte is not defined by this protocol version. The body has been
    /// skipped; the stream is still in sync.
    #[error(
        "unknown frame type {frame_type:#04x} (request id {request_id}, {body_len}-byte body skipped)"
    )]
    UnknownType {
        /// The type byte.
        frame_type: u8,
        /// The request id, so the receiver can answer with an error frame.
        request_id: u32,
        /// The body length that was skipped.
        body_len: u32,
    },
    /// The body is not a valid protobuf encoding of the type's message. The frame has been
    /// consumed; the stream is still in sync.
    #[error("invalid {} body (request id {request_id}): {reason}", frame_type.message_name())]
    InvalidBody {
        /// The frame's type.
        frame_type: FrameType,
        /// The request id, so the receiver can answer with an error frame.
        request_id: u32,
        /// What prost reported.
        reason: String,
    },
}

impl FrameError {
    /// Whether the stream lost sync, so the connection must be closed.
    pub const fn is_fatal(&self) -> bool {
        !matches!(
            self,
            FrameError::UnknownType { .. } | FrameError::InvalidBody { .. }
        )
    }

    /// The request id of the offending frame, where one was readable.
    pub const fn request_id(&self) -> Option<u32> {
        match self {
            FrameError::UnknownType { request_id, .. }
            | FrameError::InvalidBody { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }

    /// The protocol error code a server reports for this error in an `Error` frame.
    pub const fn error_code(&self) -> crate::pb::ErrorCode {
        use crate::pb::ErrorCode;
        match self {
            FrameError::Truncated { .. } | FrameError::InvalidBody { .. } => ErrorCode::InvalidBody,
            FrameError::BadMagic { .. } => ErrorCode::BadMagic,
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::ReservedBits { .. } => ErrorCode::ReservedBits,
            FrameError::Oversize { .. } => ErrorCode::FrameTooLarge,
            FrameError::UnknownType { .. } => ErrorCode::UnknownFrameType,
        }
    }
}
