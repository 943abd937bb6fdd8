//! Token keys for SDK tests: a key file written before the server starts (passed as
//! `key_file`), so tests can mint tokens with any lifetime, and SDK client helpers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use petrel_control::{KeyRing, TokenSpec};
use petrel_proto::pb;
use petrel_sdk::{Client, ClientConfig, Events, Token, token_fn};

/// A signing key in a temporary file.
pub struct Keys {
    ring: KeyRing,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Keys {
    pub fn generate() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        let secret: [u8; 32] = rand::random();
        let text = format!("sdk-test {}\n", hex::encode(secret));
        std::fs::write(&path, &text).expect("write key file");
        Keys {
            ring: KeyRing::parse(&text).expect("key ring"),
            path,
            _dir: dir,
        }
    }

    /// The keys of an existing key file (a server's own), copied.
    #[allow(dead_code)] // Only the cluster tests read a server's own key file.
    pub fn load(from: &std::path::Path) -> Keys {
        let text = std::fs::read_to_string(from).expect("read key file");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, &text).expect("write key file");
        Keys {
            ring: KeyRing::parse(&text).expect("key ring"),
            path,
            _dir: dir,
        }
    }

    /// The line to add to the server's config.
    pub fn server_config(&self) -> String {
        format!("key_file = {:?}\n", self.path.display().to_string())
    }

    /// A token for `user` on `device` (a desktop) valid for `ttl`.
    pub fn mint(&self, user: u64, device: &str, ttl: Duration) -> Token {
        self.mint_on(user, device, pb::Platform::Desktop, ttl)
    }

    /// A token for `user` on `device` of `platform` valid for `ttl`.
    pub fn mint_on(&self, user: u64, device: &str, platform: pb::Platform, ttl: Duration) -> Token {
        let issued = petrel_control::token::mint(
            &self.ring,
            &TokenSpec {
                user,
                device,
                platform,
                issued_at: crate::common::server::now(),
                ttl,
                token_id: rand::random(),
            },
        )
        .expect("mint");
        Token {
            token: issued.token,
            expires_at_ms: issued.claims.expires_at.as_millis(),
        }
    }

    /// A provider minting `ttl` tokens, and a count of its calls.
    pub fn provider(
        self: &Arc<Self>,
        user: u64,
        device: &str,
        ttl: Duration,
    ) -> (impl petrel_sdk::TokenProvider + use<>, Arc<AtomicUsize>) {
        self.provider_on(user, device, pb::Platform::Desktop, ttl)
    }

    /// A provider minting `ttl` tokens for `platform`, and a count of its calls.
    pub fn provider_on(
        self: &Arc<Self>,
        user: u64,
        device: &str,
        platform: pb::Platform,
        ttl: Duration,
    ) -> (impl petrel_sdk::TokenProvider + use<>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (keys, device, counter) = (self.clone(), device.to_owned(), calls.clone());
        let provider = token_fn(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(keys.mint_on(user, &device, platform, ttl))
        });
        (provider, calls)
    }
}

/// Test settings: fast back-off so restarts are quick.
pub fn test_config(user: u64, endpoints: Vec<String>) -> ClientConfig {
    let mut c = ClientConfig::new(user, format!("dev-{user}"), endpoints);
    c.backoff.base = Duration::from_millis(50);
    c.backoff.cap = Duration::from_millis(500);
    c.backoff.stable_after = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(2);
    c.jitter_seed = Some(user);
    c
}

/// Starts a client for `user` with an hour-long token.
pub fn start(keys: &Arc<Keys>, config: ClientConfig) -> (Client, Events, Arc<AtomicUsize>) {
    let (provider, calls) =
        keys.provider(config.user_id, &config.device_id, Duration::from_secs(3600));
    let (client, events) = Client::start(config, provider).expect("start client");
    (client, events, calls)
}
