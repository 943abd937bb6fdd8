//! The 16-byte frame header: a checked view over bytes, and its typed representation.
//!
//! ```text
//!  0       1       2       3       4       5       6       7
//! +-------+-------+-------+-------+-------+-------+-------+-------+
//! | 0x50  | 0x54  |version| type  | flags |   reserved (zero)     |
//! +-------+-------+-------+-------+-------+-------+-------+-------+
//! |      request id (u32, BE)     |      body length (u32, BE)    |
//! +-------+-------+-------+-------+-------+-------+-------+-------+
//!  8       9       10      11      12      13      14      15
//! ```
//!
//! All multi-byte fields are big-endian (network byte order). Following smoltcp's `wire`
//! module, [`FrameHeader`] wraps any `AsRef<[u8]>` and only exposes field accessors after
//! [`FrameHeader::new_checked`] has proved the buffer is long enough, so no accessor can
//! panic. [`HeaderRepr::parse`] then validates the *values* (magic, version, type,
//! reserved bits, length limit) and yields plain Rust values; [`HeaderRepr::emit`] writes
//! them back.

use crate::error::FrameError;
use crate::frame_type::FrameType;

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 16;
/// The two magic bytes that open every frame: ASCII "PT".
pub const MAGIC: [u8; 2] = *b"PT";
/// The only protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Default maximum body length (64 KiB).
pub const DEFAULT_MAX_BODY_LEN: u32 = 64 * 1024;

/// Byte ranges of every header field.
mod field {
    use core::ops::Range;

    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const TYPE: usize = 3;
    pub const FLAGS: usize = 4;
    pub const RESERVED: Range<usize> = 5..8;
    pub const REQUEST_ID: Range<usize> = 8..12;
    pub const BODY_LEN: Range<usize> = 12..16;
}

/// Header flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameFlags(u8);

impl FrameFlags {
    /// No flags.
    pub const NONE: FrameFlags = FrameFlags(0);
    /// The frame answers the request that carried the same request id.
    pub const RESPONSE: FrameFlags = FrameFlags(0x01);
    /// Every bit this version defines. The others are reserved and must be zero.
    pub const KNOWN: u8 = 0x01;

    /// The raw flag byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Flags from a raw byte, or `None` if a reserved bit is set.
    pub const fn from_bits(bits: u8) -> Option<FrameFlags> {
        if bits & !Self::KNOWN == 0 {
            Some(FrameFlags(bits))
        } else {
            None
        }
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: FrameFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the RESPONSE bit is set.
    pub const fn is_response(self) -> bool {
        self.contains(Self::RESPONSE)
    }
}

/// A read-only (or, for `emit`, writable) view of a frame header inside a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FrameHeader<T> {
    /// Wraps `buffer` without checking its length. Accessors may panic on a short buffer;
    /// use [`FrameHeader::new_checked`] for untrusted input.
    pub const fn new_unchecked(buffer: T) -> FrameHeader<T> {
        FrameHeader { buffer }
    }

    /// Wraps `buffer` after checking it holds at least [`HEADER_LEN`] bytes, so that no
    /// accessor can panic.
    pub fn new_checked(buffer: T) -> Result<FrameHeader<T>, FrameError> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(FrameError::Truncated {
                needed: HEADER_LEN,
                available: len,
            });
        }
        Ok(FrameHeader { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The two magic bytes.
    pub fn magic(&self) -> [u8; 2] {
        let b = self.buffer.as_ref();
        [b[field::MAGIC.start], b[field::MAGIC.start + 1]]
    }

    /// Protocol version byte.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// Raw frame type byte.
    pub fn frame_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Raw flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The three reserved bytes (zero in version 1).
    pub fn reserved(&self) -> [u8; 3] {
        let b = &self.buffer.as_ref()[field::RESERVED];
        [b[0], b[1], b[2]]
    }

    /// Request id.
    pub fn request_id(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::REQUEST_ID])
    }

    /// Body length in bytes.
    pub fn body_len(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::BODY_LEN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FrameHeader<T> {
    fn set_u32(&mut self, range: core::ops::Range<usize>, value: u32) {
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(bytes);
    u32::from_be_bytes(raw)
}

/// A parsed, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderRepr {
    /// What the body is.
    pub frame_type: FrameType,
    /// Flag bits.
    pub flags: FrameFlags,
    /// Correlates a request with its response.
    pub request_id: u32,
    /// Length of the protobuf body that follows the header.
    pub body_len: u32,
}

impl HeaderRepr {
    /// Validates a header's values: magic, version, reserved bits and body length (against
    /// `max_body_len`) are checked first, so a stream that is not Petrel, or announces a
    /// huge body, is rejected before its type is looked at. An unknown frame type is
    /// reported as [`FrameError::UnknownType`] together with the body length, so the
    /// decoder can skip that body and stay in sync.
    pub fn parse<T: AsRef<[u8]>>(
        header: &FrameHeader<T>,
        max_body_len: u32,
    ) -> Result<HeaderRepr, FrameError> {
        let magic = header.magic();
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if header.version() != VERSION {
            return Err(FrameError::UnsupportedVersion {
                found: header.version(),
            });
        }
        let flags = FrameFlags::from_bits(header.flags()).ok_or(FrameError::ReservedBits {
            flags: header.flags(),
            reserved: header.reserved(),
        })?;
        if header.reserved() != [0; 3] {
            return Err(FrameError::ReservedBits {
                flags: header.flags(),
                reserved: header.reserved(),
            });
        }
        let body_len = header.body_len();
        if body_len > max_body_len {
            return Err(FrameError::Oversize {
                len: body_len,
                max: max_body_len,
            });
        }
        let frame_type =
            FrameType::from_u8(header.frame_type()).ok_or(FrameError::UnknownType {
                frame_type: header.frame_type(),
                request_id: header.request_id(),
                body_len,
            })?;
        Ok(HeaderRepr {
            frame_type,
            flags,
            request_id: header.request_id(),
            body_len,
        })
    }

    /// Writes this header into the first [`HEADER_LEN`] bytes of `header`'s buffer.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`]; callers pass a checked view or a
    /// `[u8; HEADER_LEN]`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut FrameHeader<T>) {
        let b = header.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION] = VERSION;
        b[field::TYPE] = self.frame_type as u8;
        b[field::FLAGS] = self.flags.bits();
        b[field::RESERVED].fill(0);
        header.set_u32(field::REQUEST_ID, self.request_id);
        header.set_u32(field::BODY_LEN, self.body_len);
    }

    /// The header as 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        self.emit(&mut FrameHeader::new_unchecked(&mut bytes[..]));
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeaderRepr {
        HeaderRepr {
            frame_type: FrameType::Ping,
            flags: FrameFlags::NONE,
            request_id: 0x0102_0304,
            body_len: 0x0000_0a0b,
        }
    }

    #[test]
    fn emits_fields_in_network_byte_order() {
        let bytes = sample().to_bytes();
        assert_eq!(
            bytes,
            [
                b'P',
                b'T',
                1,
                FrameType::Ping as u8,
                0,
                0,
                0,
                0,
                1,
                2,
                3,
                4,
                0,
                0,
                0x0a,
                0x0b
            ]
        );
    }

    #[test]
    fn parse_round_trips_emit() {
        let bytes = sample().to_bytes();
        let view = FrameHeader::new_checked(&bytes[..]).unwrap();
        assert_eq!(HeaderRepr::parse(&view, DEFAULT_MAX_BODY_LEN), Ok(sample()));
    }

    #[test]
    fn short_buffer_is_truncated_not_a_panic() {
        for len in 0..HEADER_LEN {
            let bytes = vec![0u8; len];
            assert_eq!(
                FrameHeader::new_checked(&bytes[..]).unwrap_err(),
                FrameError::Truncated {
                    needed: HEADER_LEN,
                    available: len
                }
            );
        }
    }

    #[test]
    fn each_bad_field_has_its_own_error() {
        let good = sample().to_bytes();
        let parse = |bytes: [u8; HEADER_LEN]| {
            HeaderRepr::parse(&FrameHeader::new_checked(&bytes[..]).unwrap(), 4096)
        };

        let mut bad_magic = good;
        bad_magic[0] = b'X';
        assert_eq!(
            parse(bad_magic),
            Err(FrameError::BadMagic {
                found: [b'X', b'T']
            })
        );

        let mut bad_version = good;
        bad_version[2] = 9;
        assert_eq!(
            parse(bad_version),
            Err(FrameError::UnsupportedVersion { found: 9 })
        );

        let mut bad_flags = good;
        bad_flags[4] = 0x80;
        assert!(matches!(
            parse(bad_flags),
            Err(FrameError::ReservedBits { flags: 0x80, .. })
        ));

        let mut bad_reserved = good;
        bad_reserved[6] = 1;
        assert!(matches!(
            parse(bad_reserved),
            Err(FrameError::ReservedBits {
                reserved: [0, 1, 0],
                ..
            })
        ));

        let mut oversize = good;
        oversize[12..16].copy_from_slice(&4097u32.to_be_bytes());
        assert_eq!(
            parse(oversize),
            Err(FrameError::Oversize {
                len: 4097,
                max: 4096
            })
        );

        let mut unknown = good;
        unknown[3] = 0xee;
        assert_eq!(
            parse(unknown),
            Err(FrameError::UnknownType {
                frame_type: 0xee,
                request_id: 0x0102_0304,
                body_len: 0x0a0b
            })
        );
    }

    #[test]
    fn oversize_is_reported_before_unknown_type() {
        let mut bytes = sample().to_bytes();
        bytes[3] = 0xee;
        bytes[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        let view = FrameHeader::new_checked(&bytes[..]).unwrap();
        assert!(matches!(
            HeaderRepr::parse(&view, DEFAULT_MAX_BODY_LEN),
            Err(FrameError::Oversize { .. })
        ));
    }
}
