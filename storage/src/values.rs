//! Value encodings for every column family (keys are in `keys`).
//!
//! ```text
//! message    = version:u8(1) | sender:u64 | client_msg_id:u64 | server_time_ms:u64
//!              | device_len:u16 | device:utf8 | [refs] | payload (rest)
//! recalled   = version:u8(2) | the same header and device | recalled_by:u64
//!              | recalled_at_ms:u64          (no payload: the content is erased)
//! edited     = version:u8(3) | the same header and device | [refs] | edited_at_ms:u64
//!              | payload (rest: the latest content)
//! refs       = reply_to:u64 | mention_count:u16 | mention:u64 × count
//!              present iff the version byte has bit 0x80 set (a reply or a mention)
//! inbox      = kind:u8 (1 pointer, 2 news marker) | conversation(17) | seq:u64
//! dedup      = seq:u64 | server_time_ms:u64   (the conversation is in the key)
//!   (legacy, read only: conversation(17) | seq:u64 | server_time_ms:u64)
//! role       = u8 (1 member, 2 admin, 3 owner)
//! info       = version:u8(1) | owner:u64 | created_ms:u64 | name:utf8
//! counters, cursors, activity, revoked = u64 big-endian
//! ```
//!
//! Decoders validate lengths first and return a typed [`DecodeError`]; nothing panics
//! on corrupt input.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::keys::{self, CONV_LEN};
use crate::model::{ConversationKey, Recall, Refs, Role, StoredMessage, UserId};

const MESSAGE_V1: u8 = 1;
/// A recalled message: the header and device of the original, then who and when.
const MESSAGE_RECALLED: u8 = 2;
/// An edited message: the header and device of the original, when, the new content.
const MESSAGE_EDITED: u8 = 3;
const MESSAGE_HEADER: usize = 1 + 8 + 8 + 8 + 2;
/// Version-byte flag: a refs section follows the device.
const HAS_REFS: u8 = 0x80;

/// Encode a message value (conversation and seq live in the key).
pub fn encode_message(
    sender: UserId,
    client_msg_id: u64,
    server_time_ms: u64,
    device: &str,
    refs: &Refs,
    payload: &[u8],
) -> Result<Vec<u8>, crate::StorageError> {
    let mut out = Vec::with_capacity(MESSAGE_HEADER + device.len() + payload.len());
    encode_message_into(
        &mut out,
        sender,
        client_msg_id,
        server_time_ms,
        device,
        refs,
        payload,
    )?;
    Ok(out)
}

/// [`encode_message`] into a reused buffer (cleared first): the append path encodes
/// every message of a group into one scratch buffer instead of allocating per message.
pub fn encode_message_into(
    out: &mut Vec<u8>,
    sender: UserId,
    client_msg_id: u64,
    server_time_ms: u64,
    device: &str,
    refs: &Refs,
    payload: &[u8],
) -> Result<(), crate::StorageError> {
    let dev_len = u16::try_from(device.len())
        .map_err(|_| crate::StorageError::Invalid("sender_device longer than 65535 bytes"))?;
    let mention_count = u16::try_from(refs.mentions.len())
        .map_err(|_| crate::StorageError::Invalid("more than 65535 mentions"))?;
    out.clear();
    out.push(if refs.is_empty() {
        MESSAGE_V1
    } else {
        MESSAGE_V1 | HAS_REFS
    });
    out.extend_from_slice(&sender.0.to_be_bytes());
    out.extend_from_slice(&client_msg_id.to_be_bytes());
    out.extend_from_slice(&server_time_ms.to_be_bytes());
    out.extend_from_slice(&dev_len.to_be_bytes());
    out.extend_from_slice(device.as_bytes());
    if !refs.is_empty() {
        out.extend_from_slice(&refs.reply_to.to_be_bytes());
        out.extend_from_slice(&mention_count.to_be_bytes());
        for m in &refs.mentions {
            out.extend_from_slice(&m.0.to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// `msg`'s header and device under `version` (a recall's or an edit's rewrite), with
/// `refs` and room for `extra` more bytes.
fn rewritten_header(
    version: u8,
    msg: &StoredMessage,
    refs: &Refs,
    extra: usize,
) -> Result<Vec<u8>, crate::StorageError> {
    let mut out = Vec::with_capacity(MESSAGE_HEADER + msg.sender_device.len() + extra);
    encode_message_into(
        &mut out,
        msg.sender,
        msg.client_msg_id,
        msg.server_time_ms,
        &msg.sender_device,
        refs,
        &[],
    )?;
    out[0] = version | (out[0] & HAS_REFS);
    Ok(out)
}

/// The tombstone that replaces `msg` once `recall` happened: the header and device stay
/// (seq, sender and time are still shown), the content does not.
pub fn encode_recalled(
    msg: &StoredMessage,
    recall: Recall,
) -> Result<Vec<u8>, crate::StorageError> {
    // The content is erased, and with it what it quoted and whom it named.
    let mut out = rewritten_header(MESSAGE_RECALLED, msg, &Refs::default(), 16)?;
    out.extend_from_slice(&recall.by.0.to_be_bytes());
    out.extend_from_slice(&recall.at_ms.to_be_bytes());
    Ok(out)
}

/// `msg` with `payload` as its content since `at_ms` (an edit: the header stays).
pub fn encode_edited(
    msg: &StoredMessage,
    payload: &[u8],
    at_ms: u64,
) -> Result<Vec<u8>, crate::StorageError> {
    let mut out = rewritten_header(MESSAGE_EDITED, msg, &msg.refs, 8 + payload.len())?;
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// The server time of an encoded message, without decoding the rest (retention scans).
pub fn message_time_ms(v: &[u8]) -> Result<u64, DecodeError> {
    check_message_header(v)?;
    Ok(keys::be_u64(&v[17..25]))
}

/// Checks a message value's length and version before its header fields are read.
fn check_message_header(v: &[u8]) -> Result<(), DecodeError> {
    const WHAT: &str = "message";
    if v.len() < MESSAGE_HEADER {
        return Err(DecodeError::Length {
            what: WHAT,
            expected: MESSAGE_HEADER,
            got: v.len(),
        });
    }
    if !matches!(
        v[0] & !HAS_REFS,
        MESSAGE_V1 | MESSAGE_RECALLED | MESSAGE_EDITED
    ) {
        return Err(DecodeError::Version {
            what: WHAT,
            version: v[0],
        });
    }
    Ok(())
}

/// Decode a message value read at `conversation | seq`.
pub fn decode_message(
    conversation: ConversationKey,
    seq: u64,
    v: &[u8],
) -> Result<StoredMessage, DecodeError> {
    const WHAT: &str = "message";
    check_message_header(v)?;
    let sender = UserId(keys::be_u64(&v[1..9]));
    let client_msg_id = keys::be_u64(&v[9..17]);
    let server_time_ms = keys::be_u64(&v[17..25]);
    let dev_len = usize::from(u16::from_be_bytes([v[25], v[26]]));
    let rest = &v[MESSAGE_HEADER..];
    if rest.len() < dev_len {
        return Err(DecodeError::Length {
            what: WHAT,
            expected: MESSAGE_HEADER + dev_len,
            got: v.len(),
        });
    }
    let sender_device = std::str::from_utf8(&rest[..dev_len])
        .map_err(|_| DecodeError::Utf8 { what: WHAT })?
        .to_owned();
    let (refs, tail) = if v[0] & HAS_REFS != 0 {
        decode_refs(&rest[dev_len..])?
    } else {
        (Refs::default(), &rest[dev_len..])
    };
    let version = v[0] & !HAS_REFS;
    let mut edited_at_ms = None;
    let (payload, recalled) = if version == MESSAGE_EDITED {
        let Some((at, content)) = tail.split_first_chunk::<8>() else {
            return Err(DecodeError::Length {
                what: "edited message",
                expected: MESSAGE_HEADER + dev_len + 8,
                got: v.len(),
            });
        };
        edited_at_ms = Some(u64::from_be_bytes(*at));
        (Bytes::copy_from_slice(content), None)
    } else if version == MESSAGE_RECALLED {
        let fields: &[u8; 16] = tail.try_into().map_err(|_| DecodeError::Length {
            what: "recalled message",
            expected: MESSAGE_HEADER + dev_len + 16,
            got: v.len(),
        })?;
        let recall = Recall {
            by: UserId(keys::be_u64(&fields[..8])),
            at_ms: keys::be_u64(&fields[8..]),
        };
        (Bytes::new(), Some(recall))
    } else {
        (Bytes::copy_from_slice(tail), None)
    };
    Ok(StoredMessage {
        conversation,
        seq,
        sender,
        sender_device,
        client_msg_id,
        server_time_ms,
        payload,
        recalled,
        edited_at_ms,
        refs,
    })
}

/// A refs section and what follows it.
fn decode_refs(v: &[u8]) -> Result<(Refs, &[u8]), DecodeError> {
    const WHAT: &str = "message refs";
    let short = |expected| DecodeError::Length {
        what: WHAT,
        expected,
        got: v.len(),
    };
    let Some((reply_to, rest)) = v.split_first_chunk::<8>() else {
        return Err(short(10));
    };
    let Some((count, rest)) = rest.split_first_chunk::<2>() else {
        return Err(short(10));
    };
    let count = usize::from(u16::from_be_bytes(*count));
    let Some(ids) = rest.get(..count * 8) else {
        return Err(short(10 + count * 8));
    };
    let refs = Refs {
        reply_to: u64::from_be_bytes(*reply_to),
        mentions: ids
            .chunks_exact(8)
            .map(|c| UserId(keys::be_u64(c)))
            .collect(),
    };
    Ok((refs, &rest[count * 8..]))
}

/// An inbox entry: a pointer to one message, or a "this conversation has news" marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxEntry {
    /// Write diffusion: the message at `(conversation, seq)` is for this user.
    Pointer(ConversationKey, u64),
    /// Read diffusion: the conversation had news (its last seq was `seq` when marked);
    /// read its timeline from the device's cursor to the end.
    News(ConversationKey, u64),
}

/// Encoded length of an inbox entry: tag, conversation, seq and the minute it was
/// written (what retention trims by).
pub const INBOX_LEN: usize = 1 + CONV_LEN + 8 + 4;
/// Length of an entry written before entries carried their time (read, never written).
const INBOX_LEGACY_LEN: usize = 1 + CONV_LEN + 8;
const INBOX_POINTER: u8 = 1;
const INBOX_NEWS: u8 = 2;
const MINUTE_MS: u64 = 60_000;

impl InboxEntry {
    /// Encode into a fixed array, stamped with the minute of `written_ms` (ms since the
    /// Unix epoch; minutes fit a `u32` until the year 10,000).
    pub fn encode(self, written_ms: u64) -> [u8; INBOX_LEN] {
        let (tag, c, s) = match self {
            InboxEntry::Pointer(c, s) => (INBOX_POINTER, c, s),
            InboxEntry::News(c, s) => (INBOX_NEWS, c, s),
        };
        let minute = u32::try_from(written_ms / MINUTE_MS).unwrap_or(u32::MAX);
        let mut out = [0u8; INBOX_LEN];
        out[0] = tag;
        out[1..INBOX_LEGACY_LEN].copy_from_slice(&keys::conversation_u64(c, s));
        out[INBOX_LEGACY_LEN..].copy_from_slice(&minute.to_be_bytes());
        out
    }

    /// Decode an entry of either layout.
    pub fn decode(v: &[u8]) -> Result<Self, DecodeError> {
        let body = Self::body(v)?;
        let (c, s) = keys::decode_conversation_u64(&body[1..])?;
        match body[0] {
            INBOX_POINTER => Ok(InboxEntry::Pointer(c, s)),
            INBOX_NEWS => Ok(InboxEntry::News(c, s)),
            tag => Err(DecodeError::Tag {
                what: "inbox entry",
                tag,
            }),
        }
    }

    /// When an encoded entry was written (ms since the epoch, to the minute); `None` for
    /// an entry from before entries carried their time.
    pub fn written_ms(v: &[u8]) -> Result<Option<u64>, DecodeError> {
        Self::body(v)?;
        if v.len() == INBOX_LEGACY_LEN {
            return Ok(None);
        }
        let minute = u32::from_be_bytes([v[26], v[27], v[28], v[29]]);
        Ok(Some(u64::from(minute) * MINUTE_MS))
    }

    /// The tag, conversation and seq of either layout, length-checked.
    fn body(v: &[u8]) -> Result<&[u8], DecodeError> {
        match v.len() {
            INBOX_LEN | INBOX_LEGACY_LEN => Ok(&v[..INBOX_LEGACY_LEN]),
            got => Err(DecodeError::Length {
                what: "inbox entry",
                expected: INBOX_LEN,
                got,
            }),
        }
    }

    /// The conversation referenced.
    pub fn conversation(self) -> ConversationKey {
        match self {
            InboxEntry::Pointer(c, _) | InboxEntry::News(c, _) => c,
        }
    }
}

/// Where a deduplicated append was stored (the conversation is part of its key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupEntry {
    /// The assigned seq.
    pub seq: u64,
    /// The assigned server time (also the start of the dedup window).
    pub server_time_ms: u64,
}

/// Encoded length of a dedup entry.
pub const DEDUP_LEN: usize = 16;
/// Encoded length of a legacy dedup entry (`conversation | seq | server_time_ms`).
pub const LEGACY_DEDUP_LEN: usize = CONV_LEN + 16;

impl DedupEntry {
    /// Encode.
    pub fn encode(&self) -> [u8; DEDUP_LEN] {
        keys::u64_u64(self.seq, self.server_time_ms)
    }

    /// Decode.
    pub fn decode(v: &[u8]) -> Result<Self, DecodeError> {
        let b = keys::exact::<DEDUP_LEN>("dedup entry", v)?;
        Ok(DedupEntry {
            seq: keys::be_u64(&b[..8]),
            server_time_ms: keys::be_u64(&b[8..]),
        })
    }

    /// Decode a legacy entry (written under a `sender | client_msg_id` key before dedup
    /// became per conversation): the conversation it was stored in, and where.
    pub fn decode_legacy(v: &[u8]) -> Result<(ConversationKey, Self), DecodeError> {
        let b = keys::exact::<LEGACY_DEDUP_LEN>("legacy dedup entry", v)?;
        let (conversation, seq) = keys::decode_conversation_u64(&b[..CONV_LEN + 8])?;
        Ok((
            conversation,
            DedupEntry {
                seq,
                server_time_ms: keys::be_u64(&b[CONV_LEN + 8..]),
            },
        ))
    }

    /// The server time of a current or legacy entry, whichever `v` is (expiry filters).
    pub fn server_time_of(v: &[u8]) -> Result<u64, DecodeError> {
        match v.len() {
            LEGACY_DEDUP_LEN => Ok(Self::decode_legacy(v)?.1.server_time_ms),
            _ => Ok(Self::decode(v)?.server_time_ms),
        }
    }
}

/// Encode a role as one byte.
pub fn encode_role(r: Role) -> [u8; 1] {
    [match r {
        Role::Member => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }]
}

/// Decode a role byte.
pub fn decode_role(v: &[u8]) -> Result<Role, DecodeError> {
    match keys::exact::<1>("role", v)?[0] {
        1 => Ok(Role::Member),
        2 => Ok(Role::Admin),
        3 => Ok(Role::Owner),
        tag => Err(DecodeError::Tag { what: "role", tag }),
    }
}

/// Group / public-account metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Creator / publisher.
    pub owner: UserId,
    /// Creation time.
    pub created_ms: u64,
    /// Display name.
    pub name: String,
}

const INFO_V1: u8 = 1;

impl ConversationInfo {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.name.len());
        out.push(INFO_V1);
        out.extend_from_slice(&self.owner.0.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// Decode.
    pub fn decode(v: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "conversation info";
        if v.len() < 17 {
            return Err(DecodeError::Length {
                what: WHAT,
                expected: 17,
                got: v.len(),
            });
        }
        if v[0] != INFO_V1 {
            return Err(DecodeError::Version {
                what: WHAT,
                version: v[0],
            });
        }
        Ok(ConversationInfo {
            owner: UserId(keys::be_u64(&v[1..9])),
            created_ms: keys::be_u64(&v[9..17]),
            name: std::str::from_utf8(&v[17..])
                .map_err(|_| DecodeError::Utf8 { what: WHAT })?
                .to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_survive_an_edit_and_leave_with_a_recall() {
        let c = ConversationKey::Group(4);
        let refs = Refs {
            reply_to: 3,
            mentions: vec![UserId(2), UserId(7)],
        };
        let v = encode_message(UserId(9), 77, 1234, "phone", &refs, b"hi @2 @7").unwrap();
        let m = decode_message(c, 5, &v).unwrap();
        assert_eq!((&m.refs, &m.payload[..]), (&refs, &b"hi @2 @7"[..]));
        assert_eq!(message_time_ms(&v), Ok(1234));
        let e = decode_message(c, 5, &encode_edited(&m, b"edited", 3000).unwrap()).unwrap();
        assert_eq!(
            (&e.refs, &e.payload[..], e.edited_at_ms),
            (&refs, &b"edited"[..], Some(3000))
        );
        let r = decode_message(
            c,
            5,
            &encode_recalled(
                &m,
                Recall {
                    by: UserId(9),
                    at_ms: 9,
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(r.refs, Refs::default());
        // A refs section cut short is a length error, never a panic.
        for cut in MESSAGE_HEADER + 5..MESSAGE_HEADER + 5 + 10 + 16 {
            assert!(
                matches!(
                    decode_message(c, 5, &v[..cut]),
                    Err(DecodeError::Length { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn message_roundtrip_and_corruption() {
        let c = ConversationKey::Group(4);
        let v = encode_message(UserId(9), 77, 1234, "phone", &Refs::default(), b"hello").unwrap();
        let m = decode_message(c, 5, &v).unwrap();
        assert_eq!(m.sender, UserId(9));
        assert_eq!(m.client_msg_id, 77);
        assert_eq!(m.server_time_ms, 1234);
        assert_eq!(m.sender_device, "phone");
        assert_eq!(&m.payload[..], b"hello");
        assert_eq!(message_time_ms(&v), Ok(1234));
        assert!(message_time_ms(&v[..10]).is_err());
        assert!(matches!(
            decode_message(c, 5, &v[..10]),
            Err(DecodeError::Length { .. })
        ));
        let mut bad = v.clone();
        bad[0] = 4;
        assert!(matches!(
            decode_message(c, 5, &bad),
            Err(DecodeError::Version { .. })
        ));
        // A recalled message: the header stays, the content is gone, who and when said.
        let recall = Recall {
            by: UserId(4),
            at_ms: 2000,
        };
        let t = encode_recalled(&m, recall).unwrap();
        assert!(!t.windows(5).any(|w| w == b"hello"), "no content bytes");
        let r = decode_message(c, 5, &t).unwrap();
        assert_eq!(
            (r.sender, r.client_msg_id, r.server_time_ms),
            (UserId(9), 77, 1234)
        );
        assert_eq!(r.sender_device, "phone");
        assert!(r.payload.is_empty());
        assert_eq!(r.recalled, Some(recall));
        assert_eq!(message_time_ms(&t), Ok(1234));
        // An edited message: the header stays, the content is the new one.
        let e = decode_message(c, 5, &encode_edited(&m, b"hello again", 3000).unwrap()).unwrap();
        assert_eq!(
            (e.sender, e.server_time_ms, e.edited_at_ms),
            (UserId(9), 1234, Some(3000))
        );
        assert_eq!(&e.payload[..], b"hello again");
        let mut cut = encode_edited(&m, b"", 3000).unwrap();
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            decode_message(c, 5, &cut),
            Err(DecodeError::Length { .. })
        ));
        // Version 2 with anything but the 16 bytes of the recall is corrupt.
        let mut wrong = v.clone();
        wrong[0] = 2;
        assert!(matches!(
            decode_message(c, 5, &wrong),
            Err(DecodeError::Length { .. })
        ));
        let mut short = v[..MESSAGE_HEADER + 2].to_vec();
        short[26] = 200;
        assert!(matches!(
            decode_message(c, 5, &short),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn small_values_roundtrip() {
        let c = ConversationKey::single(UserId(3), UserId(1));
        for e in [InboxEntry::Pointer(c, 9), InboxEntry::News(c, 10)] {
            let v = e.encode(3 * MINUTE_MS + 59_999);
            assert_eq!(InboxEntry::decode(&v), Ok(e));
            assert_eq!(InboxEntry::written_ms(&v), Ok(Some(3 * MINUTE_MS)));
            // An entry from before entries carried their time still reads, timeless.
            assert_eq!(InboxEntry::decode(&v[..INBOX_LEGACY_LEN]), Ok(e));
            assert_eq!(InboxEntry::written_ms(&v[..INBOX_LEGACY_LEN]), Ok(None));
        }
        let mut bad = InboxEntry::Pointer(c, 1).encode(0);
        bad[0] = 0;
        assert!(InboxEntry::decode(&bad).is_err());
        assert!(InboxEntry::decode(&bad[..20]).is_err());
        assert!(InboxEntry::written_ms(&bad[..29]).is_err());
        let d = DedupEntry {
            seq: 4,
            server_time_ms: 99,
        };
        assert_eq!(DedupEntry::decode(&d.encode()), Ok(d));
        assert_eq!(DedupEntry::server_time_of(&d.encode()), Ok(99));
        let mut legacy = keys::conversation_u64(c, 4).to_vec();
        legacy.extend_from_slice(&99u64.to_be_bytes());
        assert_eq!(DedupEntry::decode_legacy(&legacy), Ok((c, d)));
        assert_eq!(DedupEntry::server_time_of(&legacy), Ok(99));
        assert!(DedupEntry::server_time_of(&[0; 5]).is_err());
        for r in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(decode_role(&encode_role(r)), Ok(r));
        }
        assert!(decode_role(&[7]).is_err());
        let info = ConversationInfo {
            owner: UserId(1),
            created_ms: 2,
            name: "team".into(),
        };
        assert_eq!(ConversationInfo::decode(&info.encode()), Ok(info));
        assert!(ConversationInfo::decode(&[1, 2]).is_err());
    }
}
