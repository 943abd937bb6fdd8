//! A bounded cache of tokens whose signature already verified.
//!
//! Keyed by the SHA-256 of the token text: fixed 32-byte keys whatever the token length,
//! no token text kept in memory, and collisions are as unlikely as forging SHA-256. A hit
//! skips base64 decoding, parsing and the MAC; it never skips the expiry and revocation
//! checks, which depend on `now` and on the current revocation list. Least recently used
//! entries are evicted first. Replacing the key ring must [`VerifiedTokens::clear`] the
//! cache (a retired key's tokens must fail again).

use std::num::NonZeroUsize;

use lru::LruCache;
use sha2::{Digest, Sha256};

use super::{Claims, KeyRing, RevocationList, TokenError, check_validity, verify_signature};
use crate::time::Timestamp;

/// LRU cache of verified claims, keyed by SHA-256 of the token text.
#[derive(Debug)]
pub struct VerifiedTokens {
    cache: LruCache<[u8; 32], Claims>,
    hits: u64,
    misses: u64,
}

impl VerifiedTokens {
    /// A cache holding at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens {
            cache: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            hits: 0,
            misses: 0,
        }
    }

    /// Verifies `token` like [`super::verify`], using and filling the cache.
    pub fn verify(
        &mut self,
        token: &str,
        now: Timestamp,
        ring: &KeyRing,
        revoked: &RevocationList,
    ) -> Result<Claims, TokenError> {
        if token.len() > super::MAX_TOKEN_TEXT_LEN {
            // Rejected before hashing: an oversized token costs nothing to refuse.
            self.misses += 1;
            return Err(TokenError::Malformed("too long"));
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.cache.get(&key) {
            self.hits += 1;
            check_validity(claims, now, revoked)?;
            return Ok(claims.clone());
        }
        self.misses += 1;
        let claims = verify_signature(token, ring)?;
        check_validity(&claims, now, revoked)?;
        self.cache.put(key, claims.clone());
        Ok(claims)
    }

    /// Drops every entry (call after replacing the key ring).
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    /// Verifications answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Verifications that computed the MAC.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Tokens currently cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use petrel_proto::pb;

    use super::*;
    use crate::token::{TokenSpec, mint};

    #[test]
    fn hits_skip_the_mac_but_not_expiry_or_revocation() {
        let ring = KeyRing::single("k", &[9; 32]).unwrap();
        let issued = mint(
            &ring,
            &TokenSpec {
                user: 1,
                device: "d",
                platform: pb::Platform::Web,
                issued_at: Timestamp(0),
                ttl: Duration::from_secs(10),
                token_id: [5; 16],
            },
        )
        .unwrap();
        let mut cache = VerifiedTokens::new(2);
        let mut revoked = RevocationList::default();
        cache
            .verify(&issued.token, Timestamp(1), &ring, &revoked)
            .unwrap();
        cache
            .verify(&issued.token, Timestamp(2), &ring, &revoked)
            .unwrap();
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        assert!(matches!(
            cache.verify(&issued.token, Timestamp(10_000), &ring, &revoked),
            Err(TokenError::Expired { .. })
        ));
        revoked.insert([5; 16], Timestamp(10_000));
        assert_eq!(
            cache.verify(&issued.token, Timestamp(3), &ring, &revoked),
            Err(TokenError::Revoked([5; 16]))
        );
        // Failures are not cached.
        assert!(
            cache
                .verify("garbage", Timestamp(3), &ring, &revoked)
                .is_err()
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn capacity_is_bounded() {
        let ring = KeyRing::single("k", &[9; 32]).unwrap();
        let mut cache = VerifiedTokens::new(3);
        for id in 0..10 {
            let t = mint(
                &ring,
                &TokenSpec {
                    user: id,
                    device: "d",
                    platform: pb::Platform::Web,
                    issued_at: Timestamp(0),
                    ttl: Duration::from_secs(10),
                    token_id: [id as u8; 16],
                },
            )
            .unwrap();
            cache
                .verify(&t.token, Timestamp(1), &ring, &RevocationList::default())
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
    }
}
