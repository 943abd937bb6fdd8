//! A typed frame: the header's fields plus a decoded [`Body`].
//!
//! [`Frame`] is what the control plane sees. The header's `frame_type` is not stored
//! separately: it is always `body.frame_type()`, so the two can never disagree.

pub use crate::frame_type::Body;
use crate::header::{FrameFlags, HeaderRepr};

/// A complete, decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Flag bits (e.g. [`FrameFlags::RESPONSE`]).
    pub flags: FrameFlags,
    /// Correlates a request with its response; 0 for unsolicited frames.
    pub request_id: u32,
    /// The protobuf body.
    pub body: Body,
}

impl Frame {
    /// A request (or unsolicited push) with no flags.
    pub fn new(request_id: u32, body: impl Into<Body>) -> Frame {
        Frame {
            flags: FrameFlags::NONE,
            request_id,
            body: body.into(),
        }
    }

    /// A response to the request with `request_id` (RESPONSE flag set).
    pub fn response(request_id: u32, body: impl Into<Body>) -> Frame {
        Frame {
            flags: FrameFlags::RESPONSE,
            request_id,
            body: body.into(),
        }
    }

    /// The header this frame encodes with. Fails if the body does not fit the u32 length
    /// field.
    pub fn header(&self) -> Result<HeaderRepr, crate::codec::EncodeError> {
        let len = self.body.encoded_len();
        let body_len = u32::try_from(len)
            .map_err(|_| crate::codec::EncodeError::BodyTooLarge { len, max: u32::MAX })?;
        Ok(HeaderRepr {
            frame_type: self.body.frame_type(),
            flags: self.flags,
            request_id: self.request_id,
            body_len,
        })
    }
}
