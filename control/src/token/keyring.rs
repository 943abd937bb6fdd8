//! Signing keys: which key signs new tokens, and which keys still verify old ones.
//!
//! # Key file format
//!
//! UTF-8 text, one key per line: `<key-id> <hex-secret>`. Blank lines and lines starting
//! with `#` are ignored. The **first** key signs new tokens; all keys verify. Key ids are
//! 1 to 32 characters of `[A-Za-z0-9._-]`, unique within the file; secrets are at least
//! [`MIN_SECRET_LEN`] bytes (32 recommended: `openssl rand -hex 32`).
//!
//! ```text
//! # active key first
//! 2026-11 4f1c...e2
//! 2026-05 9ab0...17
//! ```
//!
//! To rotate: put a new key at the top, keep the previous one below it until every
//! token it signed has expired, then remove it. Reading the file is the caller's job
//! (this crate does no I/O): pass its text to [`KeyRing::parse`].

use std::fmt;

use hmac::{Hmac, KeyInit};
use sha2::Sha256;

use super::MAX_KEY_ID_LEN;

/// Shortest accepted secret, in bytes (128 bits).
pub const MIN_SECRET_LEN: usize = 16;

/// A keyed HMAC-SHA256 state, cloned for every MAC so the key is hashed only once.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The server's signing keys.
#[derive(Clone)]
pub struct KeyRing {
    /// `keys[0]` is the active signing key.
    keys: Vec<(String, HmacSha256)>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("KeyRing")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

/// A key file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The file holds no key.
    #[error("key file holds no key")]
    Empty,
    /// A line is not `<key-id> <hex-secret>`.
    #[error("key file line {line}: expected `<key-id> <hex-secret>`")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A key id is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("key file line {line}: key id must be 1..=32 characters of [A-Za-z0-9._-]")]
    BadKeyId {
        /// 1-based line number.
        line: usize,
    },
    /// A secret is not hex or is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("key file line {line}: secret must be at least 16 bytes of hex")]
    BadSecret {
        /// 1-based line number.
        line: usize,
    },
    /// A key id appears twice.
    #[error("key file line {line}: duplicate key id {key_id:?}")]
    DuplicateKeyId {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The repeated id.
        key_id: String,
    },
}

impl KeyRing {
    /// Parses a key file (format in the module docs).
    pub fn parse(text: &str) -> Result<KeyRing, KeyFileError> {
        let mut ring = KeyRing { keys: Vec::new() };
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut parts = trimmed.split_whitespace();
            let (Some(kid), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(KeyFileError::Syntax { line });
            };
            let secret = hex::decode(secret).map_err(|_| KeyFileError::BadSecret { line })?;
            ring.insert(kid, &secret).map_err(|e| e.at_line(line))?;
        }
        if ring.keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        Ok(ring)
    }

    /// A ring with one key, `key_id`, which signs (for tests and single-key setups).
    pub fn single(key_id: &str, secret: &[u8]) -> Result<KeyRing, KeyFileError> {
        let mut ring = KeyRing { keys: Vec::new() };
        ring.insert(key_id, secret)?;
        Ok(ring)
    }

    fn insert(&mut self, kid: &str, secret: &[u8]) -> Result<(), KeyFileError> {
        let valid_id = !kid.is_empty()
            && kid.len() <= MAX_KEY_ID_LEN
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid_id {
            return Err(KeyFileError::BadKeyId { line: 0 });
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyFileError::BadSecret { line: 0 });
        }
        if self.get(kid).is_some() {
            return Err(KeyFileError::DuplicateKeyId {
                line: 0,
                key_id: kid.to_owned(),
            });
        }
        let mac =
            HmacSha256::new_from_slice(secret).map_err(|_| KeyFileError::BadSecret { line: 0 })?;
        self.keys.push((kid.to_owned(), mac));
        Ok(())
    }

    /// The active signing key's id and keyed MAC state.
    pub(crate) fn active(&self) -> (&str, &HmacSha256) {
        // `parse`/`single` never build an empty ring.
        let (kid, mac) = &self.keys[0];
        (kid, mac)
    }

    /// The id of the key that signs new tokens.
    pub fn active_key_id(&self) -> &str {
        self.active().0
    }

    /// Every key id, active first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }

    /// The keyed MAC state for `key_id`.
    pub(crate) fn get(&self, key_id: &str) -> Option<&HmacSha256> {
        self.keys
            .iter()
            .find(|(kid, _)| kid == key_id)
            .map(|(_, mac)| mac)
    }
}

impl KeyFileError {
    fn at_line(self, line: usize) -> KeyFileError {
        match self {
            KeyFileError::Empty => KeyFileError::Empty,
            KeyFileError::Syntax { .. } => KeyFileError::Syntax { line },
            KeyFileError::BadKeyId { .. } => KeyFileError::BadKeyId { line },
            KeyFileError::BadSecret { .. } => KeyFileError::BadSecret { line },
            KeyFileError::DuplicateKeyId { key_id, .. } => {
                KeyFileError::DuplicateKeyId { line, key_id }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn first_key_is_active_and_comments_are_skipped() {
        let ring = KeyRing::parse(&format!("# c\n\nnew {S}\n  old {S}00  \n")).unwrap();
        assert_eq!(ring.active_key_id(), "new");
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), ["new", "old"]);
        assert!(
            !format!("{ring:?}").contains(S),
            "Debug must not print secrets"
        );
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(
            KeyRing::parse("# nothing\n").unwrap_err(),
            KeyFileError::Empty
        );
        assert_eq!(
            KeyRing::parse(&format!("a {S}\nb\n")).unwrap_err(),
            KeyFileError::Syntax { line: 2 }
        );
        assert_eq!(
            KeyRing::parse(&format!("bad/id {S}\n")).unwrap_err(),
            KeyFileError::BadKeyId { line: 1 }
        );
        assert_eq!(
            KeyRing::parse("a 0011\n").unwrap_err(),
            KeyFileError::BadSecret { line: 1 }
        );
        assert_eq!(
            KeyRing::parse("a zz112233445566778899aabbccddeeff\n").unwrap_err(),
            KeyFileError::BadSecret { line: 1 }
        );
        assert!(matches!(
            KeyRing::parse(&format!("a {S}\na {S}\n")).unwrap_err(),
            KeyFileError::DuplicateKeyId { line: 2, .. }
        ));
    }
}
