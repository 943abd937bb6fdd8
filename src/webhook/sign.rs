//! Signing a call: `Petrel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` with the configured secret, so a receiver can check that a call comes
//! from this server and is recent (it should refuse a `t` more than a few minutes old).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "petrel-signature";

/// The header's value for `body` sent at `unix_secs`.
pub fn signature(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_time_and_body() {
        let secret = b"0123456789abcdef";
        let a = signature(secret, 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="), "{a}");
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(a, signature(secret, 1_700_000_000, b"{}"));
        assert_ne!(a, signature(secret, 1_700_000_001, b"{}"));
        assert_ne!(a, signature(secret, 1_700_000_000, b"{ }"));
        assert_ne!(a, signature(b"fedcba9876543210", 1_700_000_000, b"{}"));
    }
}
