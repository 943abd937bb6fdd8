//! Who is asking: `Authorization: Bearer <token>` checked with the control plane's
//! token verifier and the server's key ring — the same tokens as the IM connection.
//!
//! Checked on every request: the layout, the key id, the signature, the expiry (against
//! this host's clock) and the revocation list. The revocation list is the one the
//! control plane persists in the database (logout with `revoke_token`); the service
//! rereads it at most every [`REVOCATION_REFRESH`], so a revoked token keeps working
//! here for up to that long after the revocation. Not checked: whether the device is
//! still logged in on the IM connection (a token is valid until it expires or is
//! revoked, as for a login).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use petrel_control::token::{self, RevocationList};
use petrel_control::{Claims, KeyRing, TokenError};

use super::error::ApiError;

/// How long a loaded revocation list is used before it is read again.
pub const REVOCATION_REFRESH: Duration = Duration::from_secs(2);

/// Reads the current revocation list (from the database) at `now_ms`.
pub type RevocationSource = Box<dyn Fn(u64) -> Result<RevocationList, String> + Send + Sync>;

/// Verifies bearer tokens.
pub struct Authenticator {
    ring: KeyRing,
    source: RevocationSource,
    revoked: Mutex<(Option<Instant>, Arc<RevocationList>)>,
}

impl Authenticator {
    /// An authenticator with the server's key ring and its revocation source.
    pub fn new(ring: KeyRing, source: RevocationSource) -> Authenticator {
        Authenticator {
            ring,
            source,
            revoked: Mutex::new((None, Arc::new(RevocationList::default()))),
        }
    }

    fn revocations(&self, now_ms: u64) -> Arc<RevocationList> {
        let mut guard = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = guard.0.is_some_and(|at| at.elapsed() < REVOCATION_REFRESH);
        if !fresh {
            match (self.source)(now_ms) {
                Ok(list) => *guard = (Some(Instant::now()), Arc::new(list)),
                // Keep the last list rather than let every token in: refusing all
                // requests because the database hiccupped would be worse.
                Err(error) => tracing::warn!(%error, "media: cannot reread the revocation list"),
            }
        }
        guard.1.clone()
    }

    /// The claims of the request's bearer token, or 401.
    pub fn check(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let value = headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let text = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        let now = crate::server::now();
        let revoked = self.revocations(now.as_millis());
        token::verify(text, now, &self.ring, &revoked).map_err(|e| {
            ApiError::unauthorized(match e {
                TokenError::Expired { .. } => "token expired".to_owned(),
                TokenError::Revoked(_) => "token revoked".to_owned(),
                other => other.to_string(),
            })
        })
    }
}
