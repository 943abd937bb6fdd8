//! Key encodings for every column family, in one module.
//!
//! All ids are fixed-width big-endian, so the byte order of encoded keys equals the
//! logical order of `(prefix, id, seq)` tuples: a timeline scan is a range scan, and
//! "the last seq of a conversation" is one reverse seek. Layouts (see docs/STORAGE.md):
//!
//! ```text
//! conversation (17) = tag:u8 | a:u64 | b:u64     tag 1 single(lo,hi) 2 group(id,0) 3 public(id,0)
//! messages          = conversation(17) | seq:u64                       (25)
//! inbox             = user:u64 | partition:u16 | inbox_seq:u64        (18)
//!   (a one-partition database: user:u64 | inbox_seq:u64                (16);
//!    encoded by `partition::Partitions`, which knows the layout)
//! dedup             = sender:u64 | conversation(17) | client_msg_id:u64 (33)
//!   (legacy, read only: sender:u64 | client_msg_id:u64                  (16))
//! members           = conversation(17) | user:u64                      (25)
//! user_conversations= user:u64 | conversation(17)                      (25)
//! cursors           = user:u64 | conversation(17)                      (25)
//! activity          = user:u64                                         (8)
//! revoked           = token_id:[u8;16]                                 (16)
//! conversations     = conversation(17)                                 (17)
//! mentions          = user:u64 | conversation(17) | seq:u64            (33)
//! ```
//!
//! Encoders write into fixed-size arrays (no allocation); decoders check the length
//! once and return a typed [`DecodeError`], never panic.

use crate::error::DecodeError;
use crate::model::{ConversationKey, UserId};

/// Encoded length of a conversation key.
pub const CONV_LEN: usize = 17;
/// Length of a `conversation | u64` or `user | conversation` key.
pub const CONV_U64_LEN: usize = CONV_LEN + 8;
/// Length of a `u64 | u64` key.
pub const U64_U64_LEN: usize = 16;
/// Length of a dedup key: `sender | conversation | client_msg_id`.
pub const DEDUP_KEY_LEN: usize = 8 + CONV_LEN + 8;

const TAG_SINGLE: u8 = 1;
const TAG_GROUP: u8 = 2;
const TAG_PUBLIC: u8 = 3;

/// Encode a conversation key into 17 bytes.
pub fn conversation(c: ConversationKey) -> [u8; CONV_LEN] {
    let (tag, a, b) = match c {
        ConversationKey::Single { lo, hi } => (TAG_SINGLE, lo.0, hi.0),
        ConversationKey::Group(id) => (TAG_GROUP, id, 0),
        ConversationKey::PublicAccount(id) => (TAG_PUBLIC, id, 0),
    };
    let mut out = [0u8; CONV_LEN];
    out[0] = tag;
    out[1..9].copy_from_slice(&a.to_be_bytes());
    out[9..17].copy_from_slice(&b.to_be_bytes());
    out
}

/// Decode a 17-byte conversation key.
pub fn decode_conversation(bytes: &[u8]) -> Result<ConversationKey, DecodeError> {
    let b = exact::<CONV_LEN>("conversation", bytes)?;
    let a = be_u64(&b[1..9]);
    let second = be_u64(&b[9..17]);
    match b[0] {
        TAG_SINGLE if a <= second => Ok(ConversationKey::Single {
            lo: UserId(a),
            hi: UserId(second),
        }),
        TAG_GROUP if second == 0 => Ok(ConversationKey::Group(a)),
        TAG_PUBLIC if second == 0 => Ok(ConversationKey::PublicAccount(a)),
        tag => Err(DecodeError::Tag {
            what: "conversation",
            tag,
        }),
    }
}

/// `conversation | n`: message keys (n = seq) and member keys (n = user id).
pub fn conversation_u64(c: ConversationKey, n: u64) -> [u8; CONV_U64_LEN] {
    let mut out = [0u8; CONV_U64_LEN];
    out[..CONV_LEN].copy_from_slice(&conversation(c));
    out[CONV_LEN..].copy_from_slice(&n.to_be_bytes());
    out
}

/// Decode `conversation | n`.
pub fn decode_conversation_u64(bytes: &[u8]) -> Result<(ConversationKey, u64), DecodeError> {
    let b = exact::<CONV_U64_LEN>("conversation|u64", bytes)?;
    Ok((decode_conversation(&b[..CONV_LEN])?, be_u64(&b[CONV_LEN..])))
}

/// `user | conversation`: reverse-membership and cursor keys.
pub fn user_conversation(u: UserId, c: ConversationKey) -> [u8; CONV_U64_LEN] {
    let mut out = [0u8; CONV_U64_LEN];
    out[..8].copy_from_slice(&u.0.to_be_bytes());
    out[8..].copy_from_slice(&conversation(c));
    out
}

/// Length of a mention key.
pub const MENTION_LEN: usize = 8 + CONV_LEN + 8;

/// `user | conversation | seq`: an unread mention of `user` by message `seq`.
pub fn mention(u: UserId, c: ConversationKey, seq: u64) -> [u8; MENTION_LEN] {
    let mut out = [0u8; MENTION_LEN];
    out[..CONV_U64_LEN].copy_from_slice(&user_conversation(u, c));
    out[CONV_U64_LEN..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// Decode `user | conversation`.
pub fn decode_user_conversation(bytes: &[u8]) -> Result<(UserId, ConversationKey), DecodeError> {
    let b = exact::<CONV_U64_LEN>("user|conversation", bytes)?;
    Ok((UserId(be_u64(&b[..8])), decode_conversation(&b[8..])?))
}

/// Dedup key `sender | conversation | client_msg_id`: a retried id is the same message
/// only in the same conversation, and all of a sender's entries share the 8-byte prefix
/// (one range scan loads them into the writer's recent-id filter).
pub fn dedup(sender: UserId, c: ConversationKey, client_msg_id: u64) -> [u8; DEDUP_KEY_LEN] {
    let mut out = [0u8; DEDUP_KEY_LEN];
    out[..8].copy_from_slice(&sender.0.to_be_bytes());
    out[8..8 + CONV_LEN].copy_from_slice(&conversation(c));
    out[8 + CONV_LEN..].copy_from_slice(&client_msg_id.to_be_bytes());
    out
}

/// Decode a dedup key into `(sender, conversation, client_msg_id)`.
pub fn decode_dedup(bytes: &[u8]) -> Result<(UserId, ConversationKey, u64), DecodeError> {
    let b = exact::<DEDUP_KEY_LEN>("dedup key", bytes)?;
    Ok((
        UserId(be_u64(&b[..8])),
        decode_conversation(&b[8..8 + CONV_LEN])?,
        be_u64(&b[8 + CONV_LEN..]),
    ))
}

/// `a | b` for inbox (user, inbox seq) keys, and the legacy dedup key (sender, client
/// msg id) written before dedup became per conversation.
pub fn u64_u64(a: u64, b: u64) -> [u8; U64_U64_LEN] {
    let mut out = [0u8; U64_U64_LEN];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

/// Decode `a | b`.
pub fn decode_u64_u64(bytes: &[u8]) -> Result<(u64, u64), DecodeError> {
    let b = exact::<U64_U64_LEN>("u64|u64", bytes)?;
    Ok((be_u64(&b[..8]), be_u64(&b[8..])))
}

/// A single big-endian u64 (activity keys, counter values).
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Decode a big-endian u64.
pub fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64, DecodeError> {
    Ok(u64::from_be_bytes(exact::<8>(what, bytes)?))
}

/// Exclusive upper bound of all keys starting with `prefix`: the prefix with its last
/// non-0xFF byte incremented, or, for an all-0xFF prefix, 64 bytes of 0xFF (longer than
/// any key in this crate, so it still bounds every key with that prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xFF; 64]
}

/// Meta key holding the last allocated group id.
pub const META_LAST_GROUP: &[u8] = b"last_group_id";
/// Meta key holding the last allocated public-account id.
pub const META_LAST_PUBLIC: &[u8] = b"last_public_id";
/// Meta key holding the database's partition count (u64), written when it was created;
/// absent in a database from before partitions, which has one.
pub const META_PARTITIONS: &[u8] = b"partitions";
/// Meta key holding the database's epoch (u64, random, written when it is first opened
/// by a build that knows it): inbox positions carry it.
pub const META_EPOCH: &[u8] = b"epoch";
/// Meta key holding the server time (ms) before which legacy `sender | client_msg_id`
/// dedup keys may have been written; 0 when the database never held any (see
/// `engine::append`).
pub const META_LEGACY_DEDUP_BEFORE: &[u8] = b"legacy_dedup_before_ms";

/// Check an exact length and return the bytes as an array.
pub(crate) fn exact<const N: usize>(
    what: &'static str,
    bytes: &[u8],
) -> Result<[u8; N], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::Length {
        what,
        expected: N,
        got: bytes.len(),
    })
}

/// Big-endian u64 from exactly 8 bytes (callers slice fixed ranges of checked arrays).
pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convs() -> Vec<ConversationKey> {
        let mut v = Vec::new();
        for a in [0u64, 1, 255, 256, 1 << 32, u64::MAX - 1, u64::MAX] {
            v.push(ConversationKey::Group(a));
            v.push(ConversationKey::PublicAccount(a));
            for b in [0u64, 7, 256, u64::MAX] {
                v.push(ConversationKey::single(UserId(a), UserId(b)));
            }
        }
        v
    }

    #[test]
    fn conversation_roundtrip_and_order_matches_logical_order() {
        let mut cs = convs();
        cs.sort();
        cs.dedup();
        let encoded: Vec<_> = cs.iter().map(|c| conversation(*c)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(
            encoded, sorted,
            "byte order must equal ConversationKey order"
        );
        for c in &cs {
            assert_eq!(decode_conversation(&conversation(*c)), Ok(*c));
        }
    }

    #[test]
    fn timeline_keys_sort_by_conversation_then_seq() {
        let seqs = [0u64, 1, 2, 255, 256, 65_535, 65_536, 1 << 40, u64::MAX];
        let mut logical = Vec::new();
        for c in convs() {
            for s in seqs {
                logical.push((c, s));
            }
        }
        logical.sort();
        logical.dedup();
        let encoded: Vec<_> = logical
            .iter()
            .map(|(c, s)| conversation_u64(*c, *s))
            .collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for ((c, s), k) in logical.iter().zip(&encoded) {
            assert_eq!(decode_conversation_u64(k), Ok((*c, *s)));
        }
    }

    #[test]
    fn user_keys_sort_by_user_then_second_field() {
        let ids = [0u64, 1, 255, 256, 1 << 33, u64::MAX];
        let mut logical = Vec::new();
        for a in ids {
            for b in ids {
                logical.push((a, b));
            }
        }
        logical.sort();
        let encoded: Vec<_> = logical.iter().map(|(a, b)| u64_u64(*a, *b)).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(decode_u64_u64(&encoded[3]), Ok(logical[3]));

        let mut uc: Vec<_> = ids
            .iter()
            .flat_map(|u| convs().into_iter().map(move |c| (UserId(*u), c)))
            .collect();
        uc.sort();
        uc.dedup();
        let enc: Vec<_> = uc.iter().map(|(u, c)| user_conversation(*u, *c)).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(decode_user_conversation(&enc[5]), Ok(uc[5]));
    }

    #[test]
    fn dedup_keys_group_by_sender_and_roundtrip() {
        let mut logical = Vec::new();
        for s in [0u64, 1, 256, u64::MAX] {
            for c in convs() {
                for id in [0u64, 1, u64::MAX] {
                    logical.push((UserId(s), c, id));
                }
            }
        }
        logical.sort();
        logical.dedup();
        let encoded: Vec<_> = logical
            .iter()
            .map(|(s, c, id)| dedup(*s, *c, *id))
            .collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for (l, k) in logical.iter().zip(&encoded) {
            assert_eq!(decode_dedup(k), Ok(*l));
            // Every entry of a sender lies in its 8-byte prefix range.
            let p = l.0.0.to_be_bytes();
            assert!(k.starts_with(&p) && k.as_slice() < prefix_end(&p).as_slice());
        }
        assert!(decode_dedup(&[0; 16]).is_err());
    }

    #[test]
    fn decode_errors_are_typed() {
        assert_eq!(
            decode_conversation(&[1, 2, 3]),
            Err(DecodeError::Length {
                what: "conversation",
                expected: 17,
                got: 3
            })
        );
        let mut bad = conversation(ConversationKey::Group(5));
        bad[0] = 9;
        assert_eq!(
            decode_conversation(&bad),
            Err(DecodeError::Tag {
                what: "conversation",
                tag: 9
            })
        );
        // A single chat whose halves are out of canonical order is corrupt.
        let mut swapped = [0u8; CONV_LEN];
        swapped[0] = TAG_SINGLE;
        swapped[1..9].copy_from_slice(&9u64.to_be_bytes());
        swapped[9..].copy_from_slice(&3u64.to_be_bytes());
        assert!(matches!(
            decode_conversation(&swapped),
            Err(DecodeError::Tag { .. })
        ));
        assert!(decode_u64_u64(&[0; 15]).is_err());
        assert!(decode_conversation_u64(&[0; 26]).is_err());
        assert!(decode_user_conversation(&[0; 24]).is_err());
        assert!(decode_u64("activity", &[0; 7]).is_err());
    }

    #[test]
    fn prefix_end_bounds_every_key_with_the_prefix() {
        let c = ConversationKey::Group(5);
        let end = prefix_end(&conversation(c));
        assert!(conversation_u64(c, u64::MAX).as_slice() < end.as_slice());
        assert!(conversation_u64(ConversationKey::Group(6), 0).as_slice() >= end.as_slice());
        let top = prefix_end(&u64::MAX.to_be_bytes());
        assert!(user_conversation(UserId(u64::MAX), c).as_slice() < top.as_slice());
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }
}
