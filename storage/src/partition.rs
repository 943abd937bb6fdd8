//! Logical partitions: the unit of ownership of a database's conversations.
//!
//! A database has a fixed number of partitions, chosen when it is created and recorded
//! in `meta` (a database from before partitions has one). Every conversation belongs to
//! exactly one, by a hash of its key that never changes ([`Partitions::of`]), and so does
//! everything written for it: its messages, dedup entries, member lists — and the inbox
//! entries it writes, because a user's inbox is one sequence **per partition**
//! (`user | partition | inbox_seq`). Two writers that own different partitions therefore
//! never allocate the same key, which is what lets each core of a server write its own
//! conversations (docs/ARCHITECTURE.md, "More than one core"); changing how many cores
//! run moves no data, as long as there are at least as many partitions as cores.
//!
//! A device's place in its user's inbox is then one position per partition
//! ([`InboxCursor`]), which crosses the wire as an opaque token.
//!
//! **Layouts.** A one-partition database keeps the original 16-byte inbox key
//! `user | inbox_seq`; a partitioned one uses 18 bytes, `user | partition:u16 |
//! inbox_seq`. The length tells them apart, so a key of the wrong layout is an error,
//! never a wrong answer.

use crate::error::DecodeError;
use crate::model::{ConversationKey, UserId};

/// Partitions of a database created with the default configuration.
pub const DEFAULT_PARTITIONS: u16 = 16;
/// Most partitions a database may have.
pub const MAX_PARTITIONS: u16 = 1024;

/// One partition's index, below its database's [`Partitions::count`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Partition(pub u16);

/// How many partitions a database has, and the layouts that follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitions(u16);

/// Length of a one-partition inbox key.
const LEGACY_INBOX_LEN: usize = 16;
/// Length of a partitioned inbox key.
const INBOX_LEN: usize = 18;

/// An encoded inbox key (or prefix), on the stack.
#[derive(Clone, Copy, Debug)]
pub struct InboxKey {
    bytes: [u8; INBOX_LEN],
    len: u8,
}

impl AsRef<[u8]> for InboxKey {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::ops::Deref for InboxKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

impl Partitions {
    /// The one partition of a database from before partitions.
    pub const ONE: Partitions = Partitions(1);

    /// `count` partitions: 1 to [`MAX_PARTITIONS`].
    pub fn new(count: u16) -> Option<Partitions> {
        (1..=MAX_PARTITIONS)
            .contains(&count)
            .then_some(Partitions(count))
    }

    /// `count` brought into 1..=[`MAX_PARTITIONS`].
    pub fn clamped(count: u16) -> Partitions {
        Partitions(count.clamp(1, MAX_PARTITIONS))
    }

    /// How many there are.
    pub fn count(self) -> u16 {
        self.0
    }

    /// Every partition, in order.
    pub fn all(self) -> impl Iterator<Item = Partition> {
        (0..self.0).map(Partition)
    }

    /// The partition a conversation belongs to, forever. Groups and public accounts by
    /// their id modulo the count (so an allocator can hand out ids of a partition of its
    /// choice: `n · count + p`), 1:1 chats by a mix of both user ids.
    pub fn of(self, c: ConversationKey) -> Partition {
        let n = u64::from(self.0);
        let h = match c {
            ConversationKey::Group(id) | ConversationKey::PublicAccount(id) => id,
            ConversationKey::Single { lo, hi } => mix(lo.0 ^ mix(hi.0)),
        };
        Partition((h % n) as u16)
    }

    fn partitioned(self) -> bool {
        self.0 > 1
    }

    /// The inbox key of `user`'s entry `seq` in partition `p`.
    pub fn inbox_key(self, user: UserId, p: Partition, seq: u64) -> InboxKey {
        let mut key = self.inbox_prefix(user, p);
        let at = usize::from(key.len);
        key.bytes[at..at + 8].copy_from_slice(&seq.to_be_bytes());
        key.len += 8;
        key
    }

    /// The prefix of every inbox key of `user` in partition `p` (with one partition:
    /// of every inbox key of `user`).
    pub fn inbox_prefix(self, user: UserId, p: Partition) -> InboxKey {
        let mut key = InboxKey {
            bytes: [0; INBOX_LEN],
            len: 8,
        };
        key.bytes[..8].copy_from_slice(&user.0.to_be_bytes());
        if self.partitioned() {
            key.bytes[8..10].copy_from_slice(&p.0.to_be_bytes());
            key.len = 10;
        }
        key
    }

    /// `(user, partition, inbox_seq)` of an inbox key of this layout.
    pub fn decode_inbox(self, key: &[u8]) -> Result<(UserId, Partition, u64), DecodeError> {
        let be = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
        match (self.partitioned(), key.len()) {
            (false, LEGACY_INBOX_LEN) => Ok((UserId(be(&key[..8])), Partition(0), be(&key[8..]))),
            (true, INBOX_LEN) => {
                let p = u16::from_be_bytes([key[8], key[9]]);
                if p >= self.0 {
                    return Err(DecodeError::Tag {
                        what: "inbox partition",
                        tag: u8::try_from(p).unwrap_or(u8::MAX),
                    });
                }
                Ok((UserId(be(&key[..8])), Partition(p), be(&key[10..])))
            }
            (_, got) => Err(DecodeError::Length {
                what: "inbox key",
                expected: if self.partitioned() {
                    INBOX_LEN
                } else {
                    LEGACY_INBOX_LEN
                },
                got,
            }),
        }
    }
}

/// A set of partitions (of one database), iterated in ascending order: what a group of
/// appends locks. A bitset on the stack: no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSet([u64; MAX_PARTITIONS as usize / 64]);

impl Default for PartitionSet {
    fn default() -> Self {
        PartitionSet([0; MAX_PARTITIONS as usize / 64])
    }
}

impl PartitionSet {
    /// Adds `p`.
    pub fn insert(&mut self, p: Partition) {
        let i = usize::from(p.0);
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    /// Whether `p` is in the set.
    pub fn contains(&self, p: Partition) -> bool {
        let i = usize::from(p.0);
        self.0
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// The partitions in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = Partition> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64u16)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| Partition(w as u16 * 64 + b))
        })
    }
}

/// splitmix64's finaliser: a cheap, well-distributed 64-bit mix. Part of the on-disk
/// format (it places 1:1 chats in partitions): never change it. (The recent-id filter's
/// fingerprints use it too, and the control plane spreads heartbeat intervals with it.)
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A device's position in its user's inbox: the last inbox seq it has processed in each
/// partition, and the database it was given by. Empty for a device that never completed
/// a sync.
///
/// On the wire a one-partition position is the plain `inbox_cursor` number (as before
/// partitions); a partitioned one is the opaque token of [`InboxCursor::to_token`],
/// which also carries the database's *epoch* (a random number recorded when the database
/// was created). A position that does not fit the database — another partition count, or
/// another epoch: the database was recreated, and positions of the old one mean nothing
/// in it — is treated like a new device's: a full sync from the per-conversation
/// cursors, slower but never lossy.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxCursor {
    /// The database's epoch (0: unknown, a plain one-partition cursor).
    epoch: u64,
    positions: Vec<u64>,
}

/// First byte of a token: its format.
const TOKEN_VERSION: u8 = 1;
/// Longest token: version, epoch, count and ten bytes per partition.
pub const MAX_TOKEN_LEN: usize = 1 + 10 + 3 + 10 * MAX_PARTITIONS as usize;

/// Why an inbox token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this server writes (version, length or varints).
    #[error("malformed inbox position token")]
    Malformed,
}

impl InboxCursor {
    /// A new device's position.
    pub fn new_device() -> InboxCursor {
        InboxCursor::default()
    }

    /// A one-partition position (`inbox_cursor` on the wire; 0 = new device).
    pub fn single(seq: u64) -> InboxCursor {
        if seq == 0 {
            InboxCursor::new_device()
        } else {
            InboxCursor {
                epoch: 0,
                positions: vec![seq],
            }
        }
    }

    /// One position per partition, in partition order, in the database of `epoch`.
    pub fn from_positions(epoch: u64, positions: Vec<u64>) -> InboxCursor {
        if positions.iter().all(|&s| s == 0) {
            InboxCursor::new_device()
        } else {
            InboxCursor { epoch, positions }
        }
    }

    /// Whether this is a device that never completed a sync.
    pub fn is_new_device(&self) -> bool {
        self.positions.is_empty()
    }

    /// The positions, one per partition (empty for a new device).
    pub fn positions(&self) -> &[u64] {
        &self.positions
    }

    /// The epoch of the database that gave this position (0: unknown).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position as the one-partition wire number, if it is one (0 for a new device).
    pub fn as_single(&self) -> Option<u64> {
        match self.positions.as_slice() {
            [] => Some(0),
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The opaque wire token: a version byte, then the epoch, the count and each
    /// position as LEB128 varints. Empty for a new device.
    pub fn to_token(&self) -> Vec<u8> {
        if self.positions.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(12 + 3 * self.positions.len());
        out.push(TOKEN_VERSION);
        put_varint(&mut out, self.epoch);
        put_varint(&mut out, self.positions.len() as u64);
        for &s in &self.positions {
            put_varint(&mut out, s);
        }
        out
    }

    /// Parses a token of [`InboxCursor::to_token`] (empty = new device).
    pub fn from_token(token: &[u8]) -> Result<InboxCursor, TokenError> {
        let Some((&version, mut rest)) = token.split_first() else {
            return Ok(InboxCursor::new_device());
        };
        if version != TOKEN_VERSION || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let epoch = take_varint(&mut rest)?;
        let count = take_varint(&mut rest)?;
        if count == 0 || count > u64::from(MAX_PARTITIONS) {
            return Err(TokenError::Malformed);
        }
        let mut positions = Vec::with_capacity(count as usize);
        for _ in 0..count {
            positions.push(take_varint(&mut rest)?);
        }
        if !rest.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(InboxCursor::from_positions(epoch, positions))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, TokenError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(TokenError::Malformed)?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(TokenError::Malformed);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(a: u64, b: u64) -> ConversationKey {
        ConversationKey::single(UserId(a), UserId(b))
    }

    #[test]
    fn one_partition_keeps_the_original_inbox_layout() {
        let p = Partitions::ONE;
        let key = p.inbox_key(UserId(7), Partition(0), 9);
        assert_eq!(&key[..], &crate::keys::u64_u64(7, 9)[..]);
        assert_eq!(
            &p.inbox_prefix(UserId(7), Partition(0))[..],
            &7u64.to_be_bytes()
        );
        assert_eq!(p.decode_inbox(&key).unwrap(), (UserId(7), Partition(0), 9));
        assert_eq!(p.of(single(1, 2)), Partition(0));
    }

    #[test]
    fn partitioned_keys_sort_by_user_then_partition_then_seq() {
        let p = Partitions::new(16).unwrap();
        let a = p.inbox_key(UserId(7), Partition(3), u64::MAX);
        let b = p.inbox_key(UserId(7), Partition(4), 1);
        let c = p.inbox_key(UserId(8), Partition(0), 1);
        assert!(a[..] < b[..] && b[..] < c[..]);
        assert!(a.starts_with(&p.inbox_prefix(UserId(7), Partition(3))));
        assert_eq!(p.decode_inbox(&b).unwrap(), (UserId(7), Partition(4), 1));
        // The other layout, or a partition out of range, is an error.
        assert!(p.decode_inbox(&crate::keys::u64_u64(7, 1)).is_err());
        assert!(Partitions::ONE.decode_inbox(&b).is_err());
        let mut bad = b;
        bad.bytes[8..10].copy_from_slice(&16u16.to_be_bytes());
        assert!(p.decode_inbox(&bad).is_err());
    }

    #[test]
    fn placement_is_fixed_and_spreads() {
        let p = Partitions::new(16).unwrap();
        // Part of the on-disk format: these values must never change.
        assert_eq!(p.of(ConversationKey::Group(35)), Partition(3));
        assert_eq!(p.of(ConversationKey::PublicAccount(16)), Partition(0));
        assert_eq!(p.of(single(1, 2)), Partition(5));
        assert_eq!(p.of(single(3, 1)), Partition(3));
        assert_eq!(p.of(single(7, 1000)), Partition(10));
        let mut used = [0u32; 16];
        for a in 1..=200u64 {
            for b in a + 1..=a + 5 {
                used[usize::from(p.of(single(a, b)).0)] += 1;
            }
        }
        // 1,000 chats over 16 partitions: every one gets a fair share.
        assert!(used.iter().all(|&n| (30..=100).contains(&n)), "{used:?}");
    }

    #[test]
    fn a_partition_set_iterates_ascending() {
        let mut set = PartitionSet::default();
        for p in [900, 3, 64, 3, 0, 1023] {
            set.insert(Partition(p));
        }
        let got: Vec<u16> = set.iter().map(|p| p.0).collect();
        assert_eq!(got, [0, 3, 64, 900, 1023]);
        assert_eq!(PartitionSet::default().iter().count(), 0);
    }

    #[test]
    fn counts_out_of_range_are_refused() {
        assert_eq!(Partitions::new(0), None);
        assert_eq!(Partitions::new(MAX_PARTITIONS + 1), None);
        assert_eq!(Partitions::new(1), Some(Partitions::ONE));
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        for cursor in [
            InboxCursor::new_device(),
            InboxCursor::from_positions(u64::MAX, vec![0, 5, u64::MAX, 128]),
            InboxCursor::single(3),
        ] {
            assert_eq!(InboxCursor::from_token(&cursor.to_token()).unwrap(), cursor);
        }
        // The golden vector `sync_response_partitioned` (proto/tests/vectors) carries this.
        assert_eq!(
            InboxCursor::from_positions(5, vec![0, 7, 0, 131]).to_token(),
            [1, 5, 4, 0, 7, 0, 0x83, 1]
        );
        assert!(InboxCursor::from_positions(9, vec![0, 0]).is_new_device());
        assert_eq!(InboxCursor::single(0).as_single(), Some(0));
        assert_eq!(InboxCursor::from_positions(9, vec![1, 2]).as_single(), None);
        let good = InboxCursor::from_positions(9, vec![1, 300]).to_token();
        for bad in [
            vec![2, 9, 1, 1],                 // unknown version
            vec![1, 9, 0],                    // no partitions
            vec![1, 9, 2, 1],                 // one position short
            [good.clone(), vec![0]].concat(), // trailing byte
            vec![
                1, 9, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // > u64
            vec![1, 0x80],                    // cut varint
        ] {
            assert_eq!(
                InboxCursor::from_token(&bad),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }
}
