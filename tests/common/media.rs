//! Helpers for the media service's tests (tests/media.rs, tests/media_s3.rs): uploads
//! and downloads over plain HTTP with a bearer token, and test bytes.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use super::http::{self, bearer, send};

/// Lowercase hex SHA-256 of `bytes` (a blob's name).
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `len` bytes of seeded noise (incompressible, not any known file type).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut bytes = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// `POST /v1/media?QUERY` with `body` in one request.
pub fn upload(addr: SocketAddr, token: &str, query: &str, body: &[u8]) -> http::Response {
    let auth = bearer(token);
    send(
        addr,
        "POST",
        &format!("/v1/media?{query}"),
        &[(auth.0, &auth.1)],
        body,
        None,
    )
}

/// `GET path` with the token and `extra` headers.
pub fn get(addr: SocketAddr, token: &str, path: &str, extra: &[(&str, &str)]) -> http::Response {
    let auth = bearer(token);
    let mut headers = vec![(auth.0, auth.1.as_str())];
    headers.extend_from_slice(extra);
    send(addr, "GET", path, &headers, b"", None)
}
