//! The token target's fixed key ring and its "mint, then edit one byte" input.

use std::time::Duration;

use petrel_control::Timestamp;
use petrel_control::token::{KeyRing, TOKEN_ID_LEN, TokenSpec};
use petrel_proto::pb;

use crate::input::{Reader, Writer};

/// Two keys: `main` signs, `old` still verifies (both take part in every check).
pub const KEY_FILE: &str = "\
main 6d61696e2d7365637265742d6b65792d666f722d66757a7a696e672121212121
old 6f6c642d7365637265742d6b65792d666f722d66757a7a696e67212121212121
";

/// A token id on the target's revocation list.
pub const REVOKED_ID: [u8; TOKEN_ID_LEN] = [0xee; TOKEN_ID_LEN];

/// The target's key ring.
pub fn ring() -> KeyRing {
    KeyRing::parse(KEY_FILE).expect("the fuzz key file parses")
}

/// The same keys with `key_id` first (signing), or `None` for a key id not in the ring.
pub fn ring_signing(key_id: &str) -> Option<KeyRing> {
    let line = KEY_FILE
        .lines()
        .find(|line| line.split(' ').next() == Some(key_id))?;
    let rest: String = KEY_FILE
        .lines()
        .filter(|other| *other != line)
        .map(|other| format!("{other}\n"))
        .collect();
    Some(KeyRing::parse(&format!("{line}\n{rest}")).expect("reordered key file parses"))
}

/// A token spec and one single-byte edit of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditedToken {
    /// The user.
    pub user: u64,
    /// `pb::Platform` value (taken modulo the number of platforms).
    pub platform: u8,
    /// Issue time, ms.
    pub issued_at: u64,
    /// Lifetime, ms.
    pub ttl_ms: u32,
    /// Token id.
    pub token_id: [u8; TOKEN_ID_LEN],
    /// Device id (up to 255 bytes, so too-long ids are tried too; lossy UTF-8).
    pub device: String,
    /// Which byte of the token text to change (modulo its length).
    pub position: u16,
    /// The new byte: with the top bit set, a base64url character (low 6 bits), so most
    /// edits still decode; otherwise the ASCII byte itself.
    pub byte: u8,
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl EditedToken {
    /// Reads one from fuzz input.
    pub fn decode(data: &[u8]) -> EditedToken {
        let mut r = Reader::new(data);
        EditedToken {
            user: r.u64(),
            platform: r.u8(),
            issued_at: r.u64(),
            ttl_ms: r.u32(),
            token_id: r.array(),
            position: r.u16(),
            byte: r.u8(),
            device: String::from_utf8_lossy(r.bytes(255)).into_owned(),
        }
    }

    /// Writes it in the format [`EditedToken::decode`] reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.user)
            .u8(self.platform)
            .u64(self.issued_at)
            .u32(self.ttl_ms)
            .raw(&self.token_id)
            .u16(self.position)
            .u8(self.byte)
            .bytes(self.device.as_bytes());
        w.0
    }

    /// What to mint.
    pub fn spec(&self) -> TokenSpec<'_> {
        TokenSpec {
            user: self.user,
            device: &self.device,
            platform: pb::Platform::try_from(i32::from(self.platform % 6))
                .expect("0..6 are platforms"),
            issued_at: Timestamp(self.issued_at),
            ttl: Duration::from_millis(u64::from(self.ttl_ms)),
            token_id: self.token_id,
        }
    }

    /// `token` with the edit applied, or `None` when the edit changes nothing or leaves
    /// text that is not UTF-8 (a `Login.token` is a protobuf string: always UTF-8).
    pub fn apply(&self, token: &str) -> Option<String> {
        let mut bytes = token.as_bytes().to_vec();
        let at = usize::from(self.position) % bytes.len().max(1);
        let new = if self.byte & 0x80 != 0 {
            BASE64URL[usize::from(self.byte & 0x3f)]
        } else {
            self.byte
        };
        let old = bytes.get_mut(at)?;
        if *old == new {
            return None;
        }
        *old = new;
        String::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_round_trips_and_changes_exactly_one_byte() {
        let edit = EditedToken {
            user: 5,
            platform: 1,
            issued_at: 1_000,
            ttl_ms: 60_000,
            token_id: [3; 16],
            device: "phone".into(),
            position: 2,
            byte: 0x80 | 26, // 'a'
        };
        assert_eq!(EditedToken::decode(&edit.encode()), edit);
        assert_eq!(edit.apply("AAAA").as_deref(), Some("AAaA"));
        assert_eq!(edit.apply("AAaA"), None);
    }

    #[test]
    fn ring_signing_puts_the_key_first() {
        let old = ring_signing("old").unwrap();
        assert_eq!(old.key_ids().next(), Some("old"));
        assert_eq!(old.key_ids().count(), 2);
        assert!(ring_signing("nope").is_none());
    }
}
