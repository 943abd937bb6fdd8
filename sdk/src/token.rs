//! Login tokens: where they come from (the app's [`TokenProvider`]) and where they are
//! kept between runs (the [`TokenCache`] file, mode 0600, with the expiry).
//!
//! The SDK logs in with the cached token while it is valid, and renews it over the live
//! connection before it expires (`RenewToken`), so the provider — usually a call to the
//! app's login service — is needed only on first start and after an auth failure. After
//! an auth failure the provider is asked exactly once; if the server refuses that token
//! too, the client stops (state `Stopped`) instead of looping.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::error::SdkError;

/// A login token and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The opaque token string.
    pub token: String,
    /// Expiry, ms since the Unix epoch (0 = unknown).
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// A boxed future, as returned by [`TokenProvider::fetch`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where fresh tokens come from (the app's login service). Called on first start, when
/// the cached token has expired, and once after the server refuses a token.
pub trait TokenProvider: Send + Sync + 'static {
    /// Fetches a token for the configured user and device. The error text is shown in
    /// the `Stopped` state.
    fn fetch(&self) -> BoxFuture<'_, Result<Token, String>>;
}

/// A [`TokenProvider`] made from a synchronous closure (see [`token_fn`]). The closure
/// runs on the client's tokio task, so it must not block for long (no network call);
/// a provider that talks to a login service should implement [`TokenProvider`] with an
/// async `fetch`.
pub struct FnProvider<F>(F);

impl<F> TokenProvider for FnProvider<F>
where
    F: Fn() -> Result<Token, String> + Send + Sync + 'static,
{
    fn fetch(&self) -> BoxFuture<'_, Result<Token, String>> {
        let result = (self.0)();
        Box::pin(async move { result })
    }
}

/// Wraps a closure as a [`TokenProvider`].
pub fn token_fn<F>(f: F) -> FnProvider<F>
where
    F: Fn() -> Result<Token, String> + Send + Sync + 'static,
{
    FnProvider(f)
}

/// The on-disk token cache: `<expires_at_ms>\n<token>\n`, mode 0600, replaced
/// atomically (write to a temporary file, then rename).
#[derive(Debug, Clone)]
pub struct TokenCache {
    path: Option<PathBuf>,
    memory: Option<Token>,
}

impl TokenCache {
    /// A cache at `path`, or in memory only with `None`.
    pub fn new(path: Option<PathBuf>) -> TokenCache {
        TokenCache { path, memory: None }
    }

    /// The cached token if it is still valid at `now_ms` (with `margin_ms` to spare).
    /// A missing, unreadable or malformed file counts as no token.
    pub fn load(&mut self, now_ms: u64, margin_ms: u64) -> Option<Token> {
        if self.memory.is_none()
            && let Some(path) = &self.path
        {
            self.memory = std::fs::read_to_string(path).ok().and_then(|t| parse(&t));
        }
        self.memory
            .clone()
            .filter(|t| t.expires_at_ms == 0 || t.expires_at_ms > now_ms.saturating_add(margin_ms))
    }

    /// Stores `token` (in memory, and on disk if a path is configured).
    pub fn store(&mut self, token: &Token) -> Result<(), SdkError> {
        self.memory = Some(token.clone());
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_private(path, &format!("{}\n{}\n", token.expires_at_ms, token.token)).map_err(
            |source| SdkError::TokenCache {
                path: path.display().to_string(),
                source,
            },
        )
    }

    /// Forgets the token (after the server refused it).
    pub fn clear(&mut self) -> Result<(), SdkError> {
        self.memory = None;
        match &self.path {
            Some(path) => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(SdkError::TokenCache {
                    path: path.display().to_string(),
                    source,
                }),
            },
            None => Ok(()),
        }
    }
}

fn parse(text: &str) -> Option<Token> {
    let mut lines = text.lines();
    let expires_at_ms = lines.next()?.trim().parse().ok()?;
    let token = lines.next()?.trim().to_owned();
    (!token.is_empty()).then_some(Token {
        token,
        expires_at_ms,
    })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // An existing file keeps its old mode on open: force 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_token_reloads_from_a_0600_file_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let mut cache = TokenCache::new(Some(path.clone()));
        assert_eq!(cache.load(0, 0), None);
        let token = Token {
            token: "secret".into(),
            expires_at_ms: 10_000,
        };
        cache.store(&token).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut fresh = TokenCache::new(Some(path.clone()));
        assert_eq!(fresh.load(5_000, 1_000), Some(token.clone()));
        assert_eq!(fresh.load(9_500, 1_000), None, "inside the margin");
        assert!(!format!("{token:?}").contains("secret"));
        fresh.clear().unwrap();
        assert!(!path.exists());
        assert_eq!(TokenCache::new(Some(path)).load(0, 0), None);
    }

    #[test]
    fn a_malformed_cache_file_counts_as_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for junk in ["", "abc\ntoken\n", "123\n\n", "123"] {
            std::fs::write(&path, junk).unwrap();
            assert_eq!(
                TokenCache::new(Some(path.clone())).load(0, 0),
                None,
                "{junk:?}"
            );
        }
    }
}
