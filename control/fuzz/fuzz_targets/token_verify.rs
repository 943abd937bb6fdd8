//! Fuzz target: the token parser and verifier, with a fixed key ring.
//!
//! The first input byte picks a mode:
//! - even: the rest is token *text* (as a client would put it in `Login.token`), given to
//!   the uncached [`token::verify`] and to the server's cached [`VerifiedTokens`]. Both
//!   must return, agree, and accept only a token that is exactly what [`token::mint`]
//!   writes for the claims it carries (no second spelling of one token: the base64 decoder
//!   rejects padding and non-zero trailing bits, and the MAC covers every other byte).
//! - odd: the rest is a token *spec* plus one edit ([`petrel_control_fuzz::token`]). The
//!   spec is minted; the token must verify to exactly the minted claims (or be expired
//!   when its lifetime is zero, or revoked when its id is on the list). Then one byte of
//!   the text is replaced by a different one. What is guaranteed, and asserted: the edited
//!   text is never accepted, and is refused by the layout, key or MAC check — never only
//!   by the expiry or revocation check, which would mean a changed token passed the MAC.
//!   (A changed canonical base64 text decodes to changed bytes or not at all; changed
//!   bytes change the signed part or the MAC itself, and HMAC-SHA256 forgery is out of
//!   reach of a fuzzer.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_control::Timestamp;
use petrel_control::token::{self, RevocationList, TokenError, VerifiedTokens};
use petrel_control_fuzz::token::{EditedToken, REVOKED_ID, ring, ring_signing};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = ring();
    let mut revoked = RevocationList::default();
    revoked.insert(REVOKED_ID, Timestamp(u64::MAX));
    if mode % 2 == 0 {
        text(rest, &keys, &revoked);
    } else {
        minted(rest, &keys, &revoked);
    }
});

fn text(rest: &[u8], keys: &token::KeyRing, revoked: &RevocationList) {
    let text = String::from_utf8_lossy(rest);
    let now = Timestamp(0);
    let plain = token::verify(&text, now, keys, revoked);
    let mut cache = VerifiedTokens::new(4);
    let cached = cache.verify(&text, now, keys, revoked);
    assert_eq!(plain, cached, "the cached path disagrees for {text:?}");
    // A second lookup is a cache hit for an accepted token and must say the same.
    assert_eq!(cache.verify(&text, now, keys, revoked), plain);
    if let Ok(claims) = plain {
        assert!(
            claims.expires_at >= claims.issued_at,
            "accepted a token mint cannot write"
        );
        let signer = ring_signing(&claims.key_id).expect("an accepted key id is in the ring");
        let again = token::mint(
            &signer,
            &token::TokenSpec {
                user: claims.user,
                device: &claims.device,
                platform: petrel_proto::pb::Platform::try_from(claims.platform)
                    .expect("an accepted platform is one mint can write"),
                issued_at: claims.issued_at,
                ttl: claims.expires_at.saturating_since(claims.issued_at),
                token_id: claims.token_id,
            },
        )
        .expect("accepted claims can be minted again");
        assert_eq!(again.token, text, "accepted a second spelling of a token");
        assert_eq!(again.claims, claims);
    }
}

fn minted(rest: &[u8], keys: &token::KeyRing, revoked: &RevocationList) {
    let edited = EditedToken::decode(rest);
    let spec = edited.spec();
    let issued = match token::mint(keys, &spec) {
        Ok(issued) => issued,
        Err(TokenError::InvalidClaims(_)) => {
            assert!(spec.device.len() > token::MAX_DEVICE_LEN);
            return;
        }
        Err(e) => panic!("mint failed: {e:?}"),
    };
    assert!(issued.token.len() <= token::MAX_TOKEN_TEXT_LEN);
    let now = spec.issued_at;
    match token::verify(&issued.token, now, keys, revoked) {
        Ok(claims) => assert_eq!(claims, issued.claims),
        Err(TokenError::Expired { .. }) => assert_eq!(issued.claims.expires_at, now),
        Err(TokenError::Revoked(id)) => assert_eq!(id, REVOKED_ID),
        Err(e) => panic!("a freshly minted token is refused: {e:?}"),
    }
    let Some(changed) = edited.apply(&issued.token) else {
        return;
    };
    match token::verify(&changed, now, keys, revoked) {
        Err(TokenError::Malformed(_) | TokenError::UnknownKey(_) | TokenError::BadSignature) => {}
        other => panic!(
            "an edited token {changed:?} (from {:?}) got {other:?}",
            issued.token
        ),
    }
}
