//! Streaming frame decoder and batching encoder.
//!
//! TCP delivers a byte stream, not frames: one read may end in the middle of a header or
//! body ("half packet") or hold several frames at once ("sticky packets"). The
//! [`FrameDecoder`] is fed whatever arrived — appended to a `BytesMut` read buffer — and
//! hands back complete frames one at a time, in order, without copying bodies (a body is
//! split off the read buffer as a reference-counted [`Bytes`]).
//!
//! The decoder never buffers more than one header plus `max_body_len` bytes of a frame:
//! the length is checked as soon as the 16 header bytes are present.
//!
//! Performance-critical path: called for every frame on every connection. It does not
//! allocate (apart from what prost allocates for string fields of the decoded message),
//! lock or log.
//!
//! ```
//! use bytes::BytesMut;
//! use petrel_proto::{codec::FrameEncoder, pb, Frame, FrameDecoder};
//!
//! let mut wire = BytesMut::new();
//! let encoder = FrameEncoder::default();
//! encoder.encode(&Frame::new(1, pb::Ping { client_time_ms: 7 }), &mut wire).unwrap();
//! encoder.encode(&Frame::new(2, pb::Ping { client_time_ms: 8 }), &mut wire).unwrap();
//!
//! // Feed the bytes in two arbitrary pieces.
//! let mut decoder = FrameDecoder::default();
//! let mut read_buf = BytesMut::new();
//! read_buf.extend_from_slice(&wire[..20]);
//! let first = decoder.decode(&mut read_buf).unwrap().unwrap();
//! assert_eq!(first.request_id, 1);
//! assert!(decoder.decode(&mut read_buf).unwrap().is_none()); // half of frame 2
//! read_buf.extend_from_slice(&wire[20..]);
//! assert_eq!(decoder.decode(&mut read_buf).unwrap().unwrap().request_id, 2);
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::FrameError;
use crate::frame::{Body, Frame};
use crate::header::{DEFAULT_MAX_BODY_LEN, FrameHeader, HEADER_LEN, HeaderRepr};

/// Decoder limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest body accepted, in bytes. A header announcing more is a fatal
    /// [`FrameError::Oversize`]. Default 64 KiB.
    pub max_body_len: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_body_len: DEFAULT_MAX_BODY_LEN,
        }
    }
}

/// A complete frame whose body has not been decoded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The validated header.
    pub header: HeaderRepr,
    /// Exactly `header.body_len` bytes of protobuf, shared with the read buffer.
    pub body: Bytes,
}

impl RawFrame {
    /// Decodes the protobuf body into a typed [`Frame`].
    pub fn decode_body(self) -> Result<Frame, FrameError> {
        let HeaderRepr {
            frame_type,
            flags,
            request_id,
            ..
        } = self.header;
        let body = Body::decode(frame_type, self.body).map_err(|e| FrameError::InvalidBody {
            frame_type,
            request_id,
            reason: e.to_string(),
        })?;
        Ok(Frame {
            flags,
            request_id,
            body,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for a complete header.
    Header,
    /// Header parsed; waiting for its body.
    Body(HeaderRepr),
    /// Discarding the body of a frame with an unknown type.
    Skip(usize),
    /// A fatal error happened; the stream is out of sync for good.
    Failed(FrameError),
}

/// Turns a byte stream into frames. One per connection.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    config: DecoderConfig,
    state: State,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DecoderConfig::default())
    }
}

impl FrameDecoder {
    /// A decoder with the given limits.
    pub fn new(config: DecoderConfig) -> FrameDecoder {
        FrameDecoder {
            config,
            state: State::Header,
        }
    }

    /// The decoder's limits.
    pub fn config(&self) -> DecoderConfig {
        self.config
    }

    /// Whether a fatal error has been returned (every later call returns it again).
    pub fn has_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// Bytes that must still arrive before the next frame can be returned, given what is
    /// already in `buf`. A transport may use it to size its next read.
    pub fn bytes_needed(&self, buf: &BytesMut) -> usize {
        match &self.state {
            State::Header => HEADER_LEN.saturating_sub(buf.len()),
            State::Body(h) => (h.body_len as usize).saturating_sub(buf.len()),
            State::Skip(n) => n.saturating_sub(buf.len()) + HEADER_LEN,
            State::Failed(_) => 0,
        }
    }

    /// Takes the next complete frame off the front of `buf`, without decoding its body.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame (call again after more bytes
    /// arrive); the partial bytes stay in `buf`. Frames of an unknown type are consumed and
    /// reported as the non-fatal [`FrameError::UnknownType`] as soon as their header is
    /// seen; their body is discarded as it arrives.
    pub fn decode_raw(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        loop {
            match &self.state {
                State::Failed(err) => return Err(err.clone()),
                State::Skip(remaining) => {
                    let n = (*remaining).min(buf.len());
                    buf.advance(n);
                    let left = remaining - n;
                    if left > 0 {
                        self.state = State::Skip(left);
                        return Ok(None);
                    }
                    self.state = State::Header;
                }
                State::Header => {
                    let Ok(view) = FrameHeader::new_checked(&buf[..]) else {
                        return Ok(None);
                    };
                    match HeaderRepr::parse(&view, self.config.max_body_len) {
                        Ok(header) => {
                            buf.advance(HEADER_LEN);
                            self.state = State::Body(header);
                        }
                        Err(err @ FrameError::UnknownType { body_len, .. }) => {
                            buf.advance(HEADER_LEN);
                            self.state = State::Skip(body_len as usize);
                            return Err(err);
                        }
                        Err(err) => {
                            self.state = State::Failed(err.clone());
                            return Err(err);
                        }
                    }
                }
                State::Body(header) => {
                    let len = header.body_len as usize;
                    if buf.len() < len {
                        return Ok(None);
                    }
                    let frame = RawFrame {
                        header: *header,
                        body: buf.split_to(len).freeze(),
                    };
                    self.state = State::Header;
                    return Ok(Some(frame));
                }
            }
        }
    }

    /// Takes the next complete frame off the front of `buf` and decodes its body.
    ///
    /// Like [`FrameDecoder::decode_raw`], plus [`FrameError::InvalidBody`] (non-fatal: the
    /// frame was consumed) when the body is not valid protobuf for its type.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode_raw(buf)? {
            Some(raw) => raw.decode_body().map(Some),
            None => Ok(None),
        }
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body is longer than the receiver accepts.
    #[error("frame body of {len} bytes exceeds the maximum of {max} bytes")]
    BodyTooLarge {
        /// Encoded body length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The destination buffer has no room for the frame (fixed-size buffers only; a
    /// `BytesMut` or `Vec` grows).
    #[error("destination buffer has room for {available} bytes, frame needs {needed}")]
    BufferFull {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer can take.
        available: usize,
    },
}

/// Appends encoded frames to a caller-supplied buffer, so a transport can batch every
/// frame for a connection into one write.
#[derive(Debug, Clone, Copy)]
pub struct FrameEncoder {
    max_body_len: u32,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        FrameEncoder::new(DEFAULT_MAX_BODY_LEN)
    }
}

impl FrameEncoder {
    /// An encoder that refuses bodies longer than `max_body_len` (the peer's limit).
    pub const fn new(max_body_len: u32) -> FrameEncoder {
        FrameEncoder { max_body_len }
    }

    /// Appends `frame` (header + body) to `dst` and returns the bytes written. On error
    /// nothing is written.
    pub fn encode(&self, frame: &Frame, dst: &mut impl BufMut) -> Result<usize, EncodeError> {
        let header = frame.header()?;
        if header.body_len > self.max_body_len {
            return Err(EncodeError::BodyTooLarge {
                len: header.body_len as usize,
                max: self.max_body_len,
            });
        }
        let needed = HEADER_LEN + header.body_len as usize;
        if dst.remaining_mut() < needed {
            return Err(EncodeError::BufferFull {
                needed,
                available: dst.remaining_mut(),
            });
        }
        dst.put_slice(&header.to_bytes());
        frame.body.encode_raw(dst);
        Ok(needed)
    }

    /// Encodes `frame` into a new buffer (convenience for tests and one-off frames; hot
    /// paths should append to a reused buffer with [`FrameEncoder::encode`]).
    pub fn encode_to_bytes(&self, frame: &Frame) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(frame, &mut buf)?;
        Ok(buf.freeze())
    }
}
