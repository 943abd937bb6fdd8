//! A checked view over an encoded `petrel.v1.Content`: what a server needs to know about
//! a message's content without decoding it.
//!
//! [`ContentView::new_checked`] walks the protobuf bytes once, without allocating, and
//! accepts them only if [`crate::pb::Content`]'s decoder would accept them *and* they say
//! something: a known body (text, image, emoji, voice, video), and a text that is not
//! empty. So every content a server stores decodes on every client. What it checks, per
//! field of `content.proto`: the wire type, varints (at most ten bytes), lengths within
//! the buffer, and UTF-8 in every string. Unknown fields are skipped, as protobuf's
//! forward compatibility asks, and kept in the bytes; the deprecated group wire types (3
//! and 4) are refused.
//!
//! A content whose only body field is one this version does not know (a newer client's
//! new content type) has no body here and is refused: storing it would show every
//! older client an empty message.

use std::fmt;

/// Which body a content carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    /// `Text`
    Text,
    /// `Image`
    Image,
    /// `Emoji`
    Emoji,
    /// `Voice`
    Voice,
    /// `Video`
    Video,
}

impl ContentKind {
    /// The body for a `Content` field number.
    fn from_field(field: u32) -> Option<ContentKind> {
        Some(match field {
            1 => ContentKind::Text,
            2 => ContentKind::Image,
            3 => ContentKind::Emoji,
            4 => ContentKind::Voice,
            5 => ContentKind::Video,
            _ => return None,
        })
    }
}

/// Why content bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    /// Not a valid encoding of `Content` (the reason names the broken part).
    Malformed(&'static str),
    /// No body at all, or only a body type this server does not know.
    NoBody,
    /// A text whose text is empty.
    EmptyText,
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentError::Malformed(why) => write!(f, "content is not a valid Content: {why}"),
            ContentError::NoBody => f.write_str(
                "content has no body (empty, or a content type this server does not know)",
            ),
            ContentError::EmptyText => f.write_str("text content is empty"),
        }
    }
}

impl std::error::Error for ContentError {}

/// Encoded content that passed [`ContentView::new_checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentView<'a> {
    bytes: &'a [u8],
    kind: ContentKind,
}

impl<'a> ContentView<'a> {
    /// Checks `bytes` (see the module documentation).
    pub fn new_checked(bytes: &'a [u8]) -> Result<ContentView<'a>, ContentError> {
        let mut reader = Reader { buf: bytes };
        // Protobuf merges: for a oneof the last body field wins, and a second occurrence
        // of the same body merges into it (so a text's last `text` field counts).
        let mut kind = None;
        let mut text_empty = true;
        while let Some((field, wire)) = reader.key()? {
            let Some(body) = ContentKind::from_field(field) else {
                reader.skip(wire)?;
                continue;
            };
            let nested = reader.message(wire)?;
            if kind != Some(body) {
                kind = Some(body);
                text_empty = true;
            }
            match body {
                ContentKind::Text => check_text(nested, &mut text_empty)?,
                // Image { media = 1; width = 2; height = 3; }
                ContentKind::Image => check_media_holder(nested, 1, &[], &[2, 3])?,
                // Video { media = 1; width = 2; height = 3; duration_ms = 4; }
                ContentKind::Video => check_media_holder(nested, 1, &[], &[2, 3, 4])?,
                // Voice { media = 1; duration_ms = 2; }
                ContentKind::Voice => check_media_holder(nested, 1, &[], &[2])?,
                // Emoji { code = 1; pack = 2; media = 3; }
                ContentKind::Emoji => check_media_holder(nested, 3, &[1, 2], &[])?,
            }
        }
        match kind {
            None => Err(ContentError::NoBody),
            Some(ContentKind::Text) if text_empty => Err(ContentError::EmptyText),
            Some(kind) => Ok(ContentView { bytes, kind }),
        }
    }

    /// The body this content carries.
    pub fn kind(&self) -> ContentKind {
        self.kind
    }

    /// The checked bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// `Text { string text = 1; repeated uint64 mentions = 2; }`
fn check_text(bytes: &[u8], text_empty: &mut bool) -> Result<(), ContentError> {
    let mut reader = Reader { buf: bytes };
    while let Some((field, wire)) = reader.key()? {
        match field {
            1 => *text_empty = reader.string(wire)?.is_empty(),
            2 => reader.repeated_varint(wire)?,
            _ => reader.skip(wire)?,
        }
    }
    Ok(())
}

/// `Image`, `Voice`, `Video` and `Emoji`: a `Media` at field `media`, strings at
/// `strings`, varints (dimensions, durations) at `varints`.
fn check_media_holder(
    bytes: &[u8],
    media: u32,
    strings: &[u32],
    varints: &[u32],
) -> Result<(), ContentError> {
    let mut reader = Reader { buf: bytes };
    while let Some((field, wire)) = reader.key()? {
        if field == media {
            check_media(reader.message(wire)?)?;
        } else if strings.contains(&field) {
            reader.string(wire)?;
        } else if varints.contains(&field) {
            reader.varint_field(wire)?;
        } else {
            reader.skip(wire)?;
        }
    }
    Ok(())
}

/// `Media { string uri = 1; uint64 size = 2; string mime_type = 3;
/// string thumbnail_base64 = 4; string thumbnail_mime_type = 5; }`
fn check_media(bytes: &[u8]) -> Result<(), ContentError> {
    let mut reader = Reader { buf: bytes };
    while let Some((field, wire)) = reader.key()? {
        match field {
            1 | 3 | 4 | 5 => {
                reader.string(wire)?;
            }
            2 => reader.varint_field(wire)?,
            _ => reader.skip(wire)?,
        }
    }
    Ok(())
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn malformed(why: &'static str) -> ContentError {
    ContentError::Malformed(why)
}

/// A cursor over protobuf bytes; every method checks before it reads.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The next field's number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, ContentError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| malformed("field key too large"))?;
        let field = key >> 3;
        if field == 0 {
            return Err(malformed("field number 0"));
        }
        Ok(Some((field, (key & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64, ContentError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(malformed("truncated varint"));
            };
            self.buf = rest;
            if i == 9 && byte > 1 {
                return Err(malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint longer than ten bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ContentError> {
        if n > self.buf.len() {
            return Err(malformed("length past the end"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], ContentError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| malformed("length past the end"))?;
        self.take(len)
    }

    /// A field that must be an embedded message.
    fn message(&mut self, wire: u8) -> Result<&'a [u8], ContentError> {
        if wire != LEN {
            return Err(malformed("message field with a wrong wire type"));
        }
        self.length_delimited()
    }

    /// A field that must be a UTF-8 string.
    fn string(&mut self, wire: u8) -> Result<&'a str, ContentError> {
        if wire != LEN {
            return Err(malformed("string field with a wrong wire type"));
        }
        std::str::from_utf8(self.length_delimited()?).map_err(|_| malformed("string not UTF-8"))
    }

    /// A scalar varint field (uint32, uint64).
    fn varint_field(&mut self, wire: u8) -> Result<(), ContentError> {
        if wire != VARINT {
            return Err(malformed("integer field with a wrong wire type"));
        }
        self.varint().map(drop)
    }

    /// A repeated varint field: one varint, or a packed run of them.
    fn repeated_varint(&mut self, wire: u8) -> Result<(), ContentError> {
        match wire {
            VARINT => self.varint().map(drop),
            LEN => {
                let mut packed = Reader {
                    buf: self.length_delimited()?,
                };
                while !packed.buf.is_empty() {
                    packed.varint()?;
                }
                Ok(())
            }
            _ => Err(malformed("repeated integer field with a wrong wire type")),
        }
    }

    /// Skips a field this version does not know.
    fn skip(&mut self, wire: u8) -> Result<(), ContentError> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.length_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            _ => Err(malformed("group or unknown wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message as _;

    fn media() -> pb::Media {
        pb::Media {
            uri: "https://media.example/a.jpg".into(),
            size: 12_345,
            mime_type: "image/jpeg".into(),
            thumbnail_base64: "AAAA".into(),
            thumbnail_mime_type: "image/jpeg".into(),
        }
    }

    fn check(content: &pb::Content) -> Result<ContentKind, ContentError> {
        let bytes = content.encode_to_vec();
        ContentView::new_checked(&bytes).map(|v| v.kind())
    }

    #[test]
    fn every_body_kind_is_recognised() {
        use pb::content::Body;
        let cases = [
            (
                Body::Text(pb::Text {
                    text: "hi".into(),
                    mentions: vec![1, 300, u64::MAX],
                }),
                ContentKind::Text,
            ),
            (
                Body::Image(pb::Image {
                    media: Some(media()),
                    width: 640,
                    height: 480,
                }),
                ContentKind::Image,
            ),
            (
                Body::Emoji(pb::Emoji {
                    code: "🐦".into(),
                    pack: "birds".into(),
                    media: Some(media()),
                }),
                ContentKind::Emoji,
            ),
            (
                Body::Voice(pb::Voice {
                    media: Some(media()),
                    duration_ms: 3_000,
                }),
                ContentKind::Voice,
            ),
            (
                Body::Video(pb::Video {
                    media: Some(media()),
                    width: 1,
                    height: 2,
                    duration_ms: 3,
                }),
                ContentKind::Video,
            ),
        ];
        for (body, kind) in cases {
            assert_eq!(check(&pb::Content { body: Some(body) }), Ok(kind));
        }
    }

    #[test]
    fn empty_and_bodiless_content_is_refused() {
        assert_eq!(
            check(&pb::Content { body: None }),
            Err(ContentError::NoBody)
        );
        let empty_text = pb::Content {
            body: Some(pb::content::Body::Text(pb::Text::default())),
        };
        assert_eq!(check(&empty_text), Err(ContentError::EmptyText));
        // Field 9: a content type from the future, and nothing else.
        assert_eq!(
            ContentView::new_checked(&[0x4a, 0x01, 0x00]),
            Err(ContentError::NoBody)
        );
    }

    #[test]
    fn the_last_body_wins_as_in_protobuf() {
        let image = pb::Content {
            body: Some(pb::content::Body::Image(pb::Image::default())),
        };
        let text = pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: "x".into(),
                mentions: vec![],
            })),
        };
        let mut both = text.encode_to_vec();
        both.extend(image.encode_to_vec());
        assert_eq!(
            ContentView::new_checked(&both).map(|v| v.kind()),
            Ok(ContentKind::Image)
        );
        assert!(matches!(
            pb::Content::decode(&both[..]).unwrap().body,
            Some(pb::content::Body::Image(_))
        ));
    }

    #[test]
    fn broken_encodings_are_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x0a, 0x05, 0x0a, 0x01], "length past the end"),
            (&[0x0a, 0x03, 0x0a, 0x01, 0xff], "string not UTF-8"),
            (&[0x08, 0x01], "message field with a wrong wire type"),
            (&[0x00], "field number 0"),
            (&[0x4b], "group or unknown wire type"),
            (&[0x0a, 0x02, 0x10, 0x80], "truncated varint"),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                ContentView::new_checked(bytes),
                Err(ContentError::Malformed(why)),
                "{bytes:02x?}"
            );
            assert!(pb::Content::decode(*bytes).is_err());
        }
    }
}
