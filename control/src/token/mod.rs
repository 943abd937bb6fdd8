//! Session tokens: HMAC-SHA256-signed claims that log a device in without a storage
//! lookup.
//!
//! A token names exactly one (user, device, platform) and carries its issue time, expiry,
//! a token id (for revocation) and the id of the key that signed it, so signing keys can
//! rotate without logging anybody out: the [`KeyRing`] keeps old keys for verification
//! while a new one signs.
//!
//! # Text form
//!
//! A token is the unpadded base64url (RFC 4648 §5) encoding of this byte layout
//! (integers big-endian):
//!
//! | bytes        | field                                               |
//! |--------------|-----------------------------------------------------|
//! | 1            | format version, `1`                                 |
//! | 1            | key id length `k` (1..=32)                          |
//! | k            | key id (ASCII `[A-Za-z0-9._-]`)                     |
//! | 8            | user id                                             |
//! | 1            | platform (`pb::Platform` value)                     |
//! | 8            | issued at, ms since the Unix epoch                  |
//! | 8            | expires at, ms since the Unix epoch                 |
//! | 16           | token id (unique per issued token; revocation key)  |
//! | 1            | device id length `d` (0..=128)                      |
//! | d            | device id (UTF-8)                                   |
//! | 32           | HMAC-SHA256 over every preceding byte               |
//!
//! # Verification
//!
//! [`verify`] checks, in order: the layout ([`TokenError::Malformed`]), the key id
//! ([`TokenError::UnknownKey`]), the MAC ([`TokenError::BadSignature`]), the expiry
//! ([`TokenError::Expired`]) and the revocation list ([`TokenError::Revoked`]). Each has
//! its own protocol error code ([`TokenError::error_code`]). [`VerifiedTokens`] caches
//! successful verifications so a reconnect storm does not recompute every MAC; expiry
//! and revocation are checked on every cache hit too.
//!
//! Parsing never panics on any input: lengths are checked before every read.

mod cache;
mod keyring;
mod revocation;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac as _;
use petrel_proto::pb;

pub use cache::VerifiedTokens;
pub use keyring::{KeyFileError, KeyRing, MIN_SECRET_LEN};
pub use revocation::RevocationList;

use crate::time::Timestamp;

/// The only token format version this build reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 32;
/// Longest device id a token can carry, in bytes.
pub const MAX_DEVICE_LEN: usize = 128;
/// Length of a token id.
pub const TOKEN_ID_LEN: usize = 16;
/// Bytes of the fixed-width fields between the key id and the device id.
const FIXED_LEN: usize = 8 + 1 + 8 + 8 + TOKEN_ID_LEN + 1;
/// Length of the MAC at the end of a token.
pub const MAC_LEN: usize = 32;
/// Longest token text accepted, in bytes; anything longer is malformed without decoding.
pub const MAX_TOKEN_TEXT_LEN: usize =
    4 * (2 + MAX_KEY_ID_LEN + FIXED_LEN + MAX_DEVICE_LEN + MAC_LEN) / 3 + 4;

/// What a valid token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Id of the key that signed the token.
    pub key_id: String,
    /// The user the token logs in.
    pub user: u64,
    /// The device the token was issued to.
    pub device: String,
    /// The device's platform class (`pb::Platform` value).
    pub platform: i32,
    /// When the token was minted.
    pub issued_at: Timestamp,
    /// First instant at which the token is no longer valid.
    pub expires_at: Timestamp,
    /// Unique id of this token; the revocation list stores these.
    pub token_id: [u8; TOKEN_ID_LEN],
}

/// What to put into a new token (the key id comes from the [`KeyRing`]'s active key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec<'a> {
    /// The user.
    pub user: u64,
    /// The device id, at most [`MAX_DEVICE_LEN`] bytes.
    pub device: &'a str,
    /// The platform class.
    pub platform: pb::Platform,
    /// Issue time (the driver's `now`).
    pub issued_at: Timestamp,
    /// How long the token is valid.
    pub ttl: Duration,
    /// A unique id for this token. Callers outside the control plane should pick it at
    /// random (e.g. `rand::random()`); the control plane derives it from its seed.
    pub token_id: [u8; TOKEN_ID_LEN],
}

/// A freshly minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token text to hand to the client.
    pub token: String,
    /// What it asserts.
    pub claims: Claims,
}

/// Why a token was rejected or could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of a format this build understands.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Signed with a key id this server does not have (retired key, or another cluster).
    #[error("token signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// The MAC does not match: forged or corrupted.
    #[error("token signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired at {expires_at} (now {now})")]
    Expired {
        /// When it expired.
        expires_at: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// On the revocation list (logout with revoke, lost device).
    #[error("token {} has been revoked", hex::encode(.0))]
    Revoked([u8; TOKEN_ID_LEN]),
    /// Valid, but for another user, device or platform than the login names.
    #[error("token is for another user, device or platform than the login names")]
    Mismatch,
    /// The claims to mint cannot be encoded (device id too long, ...).
    #[error("cannot mint token: {0}")]
    InvalidClaims(&'static str),
}

impl TokenError {
    /// The protocol error code a server reports for this error.
    pub const fn error_code(&self) -> pb::ErrorCode {
        match self {
            TokenError::Malformed(_) | TokenError::InvalidClaims(_) => {
                pb::ErrorCode::TokenMalformed
            }
            TokenError::UnknownKey(_) => pb::ErrorCode::TokenUnknownKey,
            TokenError::BadSignature => pb::ErrorCode::TokenBadSignature,
            TokenError::Expired { .. } => pb::ErrorCode::TokenExpired,
            TokenError::Revoked(_) => pb::ErrorCode::TokenRevoked,
            TokenError::Mismatch => pb::ErrorCode::TokenMismatch,
        }
    }

    /// A short stable label, for counters and logs.
    pub const fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired { .. } => "expired",
            TokenError::Revoked(_) => "revoked",
            TokenError::Mismatch => "mismatch",
            TokenError::InvalidClaims(_) => "invalid_claims",
        }
    }
}

/// Mints a token with the ring's active key. This is the function behind
/// `petrel token issue --user U --device D --ttl 24h` and the one a deployment's login
/// service calls.
pub fn mint(ring: &KeyRing, spec: &TokenSpec<'_>) -> Result<IssuedToken, TokenError> {
    if spec.device.len() > MAX_DEVICE_LEN {
        return Err(TokenError::InvalidClaims("device id longer than 128 bytes"));
    }
    let platform = u8::try_from(spec.platform as i32)
        .map_err(|_| TokenError::InvalidClaims("platform out of range"))?;
    let (key_id, mac) = ring.active();
    let expires_at = spec.issued_at.saturating_add(spec.ttl);
    let mut bytes = Vec::with_capacity(2 + key_id.len() + FIXED_LEN + spec.device.len() + MAC_LEN);
    bytes.push(FORMAT_VERSION);
    bytes.push(key_id.len() as u8); // KeyRing guarantees 1..=32.
    bytes.extend_from_slice(key_id.as_bytes());
    bytes.extend_from_slice(&spec.user.to_be_bytes());
    bytes.push(platform);
    bytes.extend_from_slice(&spec.issued_at.as_millis().to_be_bytes());
    bytes.extend_from_slice(&expires_at.as_millis().to_be_bytes());
    bytes.extend_from_slice(&spec.token_id);
    bytes.push(spec.device.len() as u8);
    bytes.extend_from_slice(spec.device.as_bytes());
    let mut mac = mac.clone();
    mac.update(&bytes);
    bytes.extend_from_slice(&mac.finalize().into_bytes());
    Ok(IssuedToken {
        token: URL_SAFE_NO_PAD.encode(&bytes),
        claims: Claims {
            key_id: key_id.to_owned(),
            user: spec.user,
            device: spec.device.to_owned(),
            platform: platform.into(),
            issued_at: spec.issued_at,
            expires_at,
            token_id: spec.token_id,
        },
    })
}

/// Verifies a token's layout, key, signature, expiry and revocation (in that order),
/// without any cache. See [`VerifiedTokens::verify`] for the cached path the server uses.
pub fn verify(
    token: &str,
    now: Timestamp,
    ring: &KeyRing,
    revoked: &RevocationList,
) -> Result<Claims, TokenError> {
    let claims = verify_signature(token, ring)?;
    check_validity(&claims, now, revoked)?;
    Ok(claims)
}

/// Expiry and revocation: the checks that still apply to a cached verification.
pub(crate) fn check_validity(
    claims: &Claims,
    now: Timestamp,
    revoked: &RevocationList,
) -> Result<(), TokenError> {
    if now >= claims.expires_at {
        return Err(TokenError::Expired {
            expires_at: claims.expires_at,
            now,
        });
    }
    if revoked.contains(claims.token_id) {
        return Err(TokenError::Revoked(claims.token_id));
    }
    Ok(())
}

/// Layout, key id and MAC: the checks whose result never changes for a given token and
/// key ring, so their outcome can be cached.
pub(crate) fn verify_signature(token: &str, ring: &KeyRing) -> Result<Claims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Malformed("empty"));
    }
    if token.len() > MAX_TOKEN_TEXT_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed("not base64url"))?;
    let mut r = Reader(&bytes);
    if r.u8()? != FORMAT_VERSION {
        return Err(TokenError::Malformed("unknown format version"));
    }
    let kid_len = usize::from(r.u8()?);
    if kid_len == 0 || kid_len > MAX_KEY_ID_LEN {
        return Err(TokenError::Malformed("bad key id length"));
    }
    let key_id =
        std::str::from_utf8(r.take(kid_len)?).map_err(|_| TokenError::Malformed("key id"))?;
    let user = r.u64()?;
    let platform = r.u8()?;
    let issued_at = Timestamp(r.u64()?);
    let expires_at = Timestamp(r.u64()?);
    let token_id = r.array::<TOKEN_ID_LEN>()?;
    let device_len = usize::from(r.u8()?);
    if device_len > MAX_DEVICE_LEN {
        return Err(TokenError::Malformed("device id too long"));
    }
    let device =
        std::str::from_utf8(r.take(device_len)?).map_err(|_| TokenError::Malformed("device id"))?;
    if r.0.len() != MAC_LEN {
        return Err(TokenError::Malformed("bad length"));
    }
    let signed_len = bytes.len() - MAC_LEN;
    let Some(mac) = ring.get(key_id) else {
        return Err(TokenError::UnknownKey(key_id.to_owned()));
    };
    let mut mac = mac.clone();
    mac.update(&bytes[..signed_len]);
    mac.verify_slice(&bytes[signed_len..])
        .map_err(|_| TokenError::BadSignature)?;
    Ok(Claims {
        key_id: key_id.to_owned(),
        user,
        device: device.to_owned(),
        platform: platform.into(),
        issued_at,
        expires_at,
        token_id,
    })
}

/// A bounds-checked cursor over token bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, TokenError> {
        self.array::<8>().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text).unwrap()
    }

    const K1: &str = "k1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
    const K2: &str = "k2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n";

    fn spec(device: &str) -> TokenSpec<'_> {
        TokenSpec {
            user: 42,
            device,
            platform: pb::Platform::Ios,
            issued_at: Timestamp(1_000),
            ttl: Duration::from_secs(60),
            token_id: [7; 16],
        }
    }

    #[test]
    fn mint_then_verify_round_trips() {
        let r = ring(K1);
        let issued = mint(&r, &spec("phone-1")).unwrap();
        let claims = verify(
            &issued.token,
            Timestamp(2_000),
            &r,
            &RevocationList::default(),
        )
        .unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.expires_at, Timestamp(61_000));
        assert_eq!(claims.platform, pb::Platform::Ios as i32);
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let r = ring(K1);
        let none = RevocationList::default();
        let t = mint(&r, &spec("d")).unwrap().token;

        // Flip one bit of the MAC (the last base64 characters encode it).
        let mut forged = t.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let e = verify(&forged, Timestamp(2_000), &r, &none).unwrap_err();
        assert_eq!(e, TokenError::BadSignature);
        assert_eq!(e.error_code(), pb::ErrorCode::TokenBadSignature);

        let e = verify(&t, Timestamp(61_000), &r, &none).unwrap_err();
        assert_eq!(e.error_code(), pb::ErrorCode::TokenExpired);

        let e = verify(&t, Timestamp(2_000), &ring(K2), &none).unwrap_err();
        assert_eq!(e, TokenError::UnknownKey("k1".into()));
        assert_eq!(e.error_code(), pb::ErrorCode::TokenUnknownKey);

        let mut revoked = RevocationList::default();
        revoked.insert([7; 16], Timestamp(61_000));
        let e = verify(&t, Timestamp(2_000), &r, &revoked).unwrap_err();
        assert_eq!(e.error_code(), pb::ErrorCode::TokenRevoked);

        for bad in ["", "!!!", "AQ", &t[..t.len() - 3], &"A".repeat(10_000)] {
            let e = verify(bad, Timestamp(2_000), &r, &none).unwrap_err();
            assert_eq!(e.error_code(), pb::ErrorCode::TokenMalformed, "{bad:?}");
        }
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = ring(K1);
        let t = mint(&old, &spec("d")).unwrap().token;
        // New key first (signs), old key kept for verification.
        let rotated = ring(&format!("{K2}{K1}"));
        assert!(verify(&t, Timestamp(2_000), &rotated, &RevocationList::default()).is_ok());
        let t2 = mint(&rotated, &spec("d")).unwrap();
        assert_eq!(t2.claims.key_id, "k2");
    }

    #[test]
    fn device_id_too_long_cannot_be_minted() {
        let r = ring(K1);
        let long = "x".repeat(MAX_DEVICE_LEN + 1);
        assert!(matches!(
            mint(&r, &spec(&long)),
            Err(TokenError::InvalidClaims(_))
        ));
        let max = "x".repeat(MAX_DEVICE_LEN);
        let t = mint(&r, &spec(&max)).unwrap().token;
        assert!(t.len() <= MAX_TOKEN_TEXT_LEN);
        assert!(verify(&t, Timestamp(2_000), &r, &RevocationList::default()).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let r = ring(K1);
            let result = verify(&text, Timestamp(0), &r, &RevocationList::default());
            proptest::prop_assert!(result.is_err());
        }

        #[test]
        fn arbitrary_bytes_never_verify(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let r = ring(K1);
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            let result = verify(&text, Timestamp(0), &r, &RevocationList::default());
            proptest::prop_assert!(result.is_err());
        }

        #[test]
        fn any_single_byte_change_is_rejected(pos in 0usize..1000, flip in 1u8..=255) {
            let r = ring(K1);
            let t = mint(&r, &spec("device")).unwrap().token;
            let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
            let pos = pos % raw.len();
            raw[pos] ^= flip;
            let result = verify(&URL_SAFE_NO_PAD.encode(&raw), Timestamp(2_000), &r, &RevocationList::default());
            proptest::prop_assert!(result.is_err());
        }
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let r = ring(K1);
        let t = mint(&r, &spec("device")).unwrap().token;
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for n in 0..raw.len() {
            let cut = URL_SAFE_NO_PAD.encode(&raw[..n]);
            assert!(verify(&cut, Timestamp(2_000), &r, &RevocationList::default()).is_err());
        }
    }
}
