//! The API key: read from a file at start (`api_key_file`), required on every request as
//! `Authorization: Bearer KEY`, compared in constant time.
//!
//! Both the expected key and the presented one are hashed with SHA-256 first and the
//! digests compared with `subtle`, so neither the content nor the length of the key leaks
//! through the comparison's timing. A missing or wrong key is `401 unauthorized` with a
//! `WWW-Authenticate: Bearer` header, before any body is read.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::HttpError;

/// Shortest key accepted from the file, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// The expected key, kept as its digest.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// The key in `text` (surrounding whitespace ignored; at least [`MIN_KEY_LEN`] bytes).
    pub fn parse(text: &str) -> anyhow::Result<ApiKey> {
        let key = text.trim();
        anyhow::ensure!(
            key.len() >= MIN_KEY_LEN,
            "the API key must be at least {MIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)"
        );
        anyhow::ensure!(
            key.bytes().all(|b| b.is_ascii_graphic()),
            "the API key must be printable ASCII without spaces (it travels in a header)"
        );
        Ok(ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    /// Reads the key file.
    pub fn load(path: &Path) -> anyhow::Result<ApiKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API key file {}", path.display()))?;
        ApiKey::parse(&text).with_context(|| format!("invalid API key file {}", path.display()))
    }

    /// Whether `presented` is the key, in time independent of both.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// Middleware: lets a request through only with the right bearer key.
pub async fn require_key(State(key): State<Arc<ApiKey>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let message = match presented {
        Some(k) if key.matches(k) => return next.run(request).await,
        Some(_) => "wrong API key",
        None => "missing API key: send `Authorization: Bearer KEY`",
    };
    let mut response =
        HttpError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_themselves_and_short_keys_are_refused() {
        let key = ApiKey::parse("  0123456789abcdef0123\n").unwrap();
        assert!(key.matches(b"0123456789abcdef0123"));
        assert!(!key.matches(b"0123456789abcdef012"));
        assert!(!key.matches(b""));
        assert!(ApiKey::parse("short").is_err());
        assert!(ApiKey::parse("0123456789 abcdef0123").is_err());
    }
}
