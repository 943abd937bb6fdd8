//! The revocation list: ids of tokens that must never log in again.
//!
//! Loaded from storage when the control plane starts and extended when a client logs out
//! with `revoke_token` (the control plane also persists the revocation through storage).
//! Each entry remembers when its token expires; past that moment the expiry check
//! rejects the token anyway, so [`RevocationList::prune`] drops the entry.

use std::collections::HashMap;

use super::TOKEN_ID_LEN;
use crate::time::Timestamp;

/// Revoked token ids, each with the expiry of its token.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    ids: HashMap<[u8; TOKEN_ID_LEN], Timestamp>,
}

impl RevocationList {
    /// Whether `token_id` is revoked.
    pub fn contains(&self, token_id: [u8; TOKEN_ID_LEN]) -> bool {
        self.ids.contains_key(&token_id)
    }

    /// Revokes `token_id`, whose token expires at `expires_at`.
    pub fn insert(&mut self, token_id: [u8; TOKEN_ID_LEN], expires_at: Timestamp) {
        self.ids.insert(token_id, expires_at);
    }

    /// Forgets entries whose tokens have expired by `now`. Returns how many were dropped.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.ids.len();
        self.ids.retain(|_, expires_at| *expires_at > now);
        before - self.ids.len()
    }

    /// Every revoked token id with its token's expiry.
    pub fn entries(&self) -> Vec<([u8; TOKEN_ID_LEN], Timestamp)> {
        self.ids.iter().map(|(id, at)| (*id, *at)).collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no token is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_drops_only_expired_entries() {
        let mut list = RevocationList::default();
        list.insert([1; 16], Timestamp(100));
        list.insert([2; 16], Timestamp(200));
        assert_eq!(list.prune(Timestamp(100)), 1);
        assert!(!list.contains([1; 16]));
        assert!(list.contains([2; 16]));
        assert_eq!(list.len(), 1);
    }
}
