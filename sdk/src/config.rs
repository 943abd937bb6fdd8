//! What an app tells the SDK: who it is, where the servers are, timings and file paths.

use std::path::PathBuf;
use std::time::Duration;

use petrel_proto::pb;

use crate::backoff::BackoffConfig;
use crate::error::SdkError;

/// Client settings. Build one with [`ClientConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// This user's id.
    pub user_id: u64,
    /// This device's id (the token is minted for user + device).
    pub device_id: String,
    /// Platform class, for the server's multi-device policy.
    pub platform: pb::Platform,
    /// Server addresses as `host:port`, primary first, then backups: where the client
    /// connects when it has no `directory`, or none answers.
    pub endpoints: Vec<String>,
    /// The server's dispatch directories (any node's `[dispatch] addr`), asked in order
    /// at start and after a round of failed connects: their answer (this user's pool,
    /// then the backup domains) comes before `endpoints`. `https://host:port` with
    /// `tls` (same roots and server name as the servers; the request carries the
    /// token), `http://host:port` without. Empty (the default): `endpoints` only.
    pub directory: Vec<String>,
    /// Failed connects in a row after which the directory is asked again (at least one
    /// try of every endpoint in the list). Default 3.
    pub directory_after_failures: u32,
    /// Reconnection back-off.
    pub backoff: BackoffConfig,
    /// Seed for the back-off jitter and nothing else; `None` draws one at start.
    pub jitter_seed: Option<u64>,
    /// Ping interval. Default 50 s (the server's announced interval wins if shorter).
    pub heartbeat_interval: Duration,
    /// A Ping unanswered this long means the connection is dead. Default 10 s.
    pub pong_timeout: Duration,
    /// TCP connect timeout per attempt. Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for the server to answer Login. Default 10 s.
    pub login_timeout: Duration,
    /// Time allowed for the server to answer any other request. Default 15 s.
    pub request_timeout: Duration,
    /// Renew the token this long before it expires (or halfway through its remaining
    /// life, whichever comes first). Default 10 minutes.
    pub renew_before: Duration,
    /// SQLite database for the local store; `None` keeps it in memory (lost on exit).
    pub store_path: Option<PathBuf>,
    /// Token cache file (written with mode 0600); `None` keeps the token in memory only.
    pub token_cache_path: Option<PathBuf>,
    /// Sends in flight at once (unacknowledged `SendMessage` frames). Default 32.
    pub send_window: usize,
    /// Messages per sync page asked for (0 = server default).
    pub sync_page_limit: u32,
    /// Sent in `Login.client_version`.
    pub client_version: String,
    /// Tell the other members when this device has stored their messages (delivery
    /// receipts, `MarkDelivered`). Default on; off for users who hide it.
    pub send_delivery_receipts: bool,
    /// Speak TLS to the servers (their listeners have `[tls]`); `None`: plaintext.
    pub tls: Option<crate::stream::TlsConfig>,
}

impl ClientConfig {
    /// Defaults for `user_id` on `device_id`, connecting to `endpoints` in order.
    pub fn new(user_id: u64, device_id: impl Into<String>, endpoints: Vec<String>) -> Self {
        ClientConfig {
            user_id,
            device_id: device_id.into(),
            platform: pb::Platform::Desktop,
            endpoints,
            directory: Vec::new(),
            directory_after_failures: 3,
            backoff: BackoffConfig::default(),
            jitter_seed: None,
            heartbeat_interval: Duration::from_secs(50),
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            renew_before: Duration::from_secs(600),
            store_path: None,
            token_cache_path: None,
            send_window: 32,
            sync_page_limit: 0,
            client_version: concat!("petrel-sdk-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            send_delivery_receipts: true,
            tls: None,
        }
    }

    /// Checks the settings a client cannot run without.
    pub fn validate(&self) -> Result<(), SdkError> {
        let bad = |why: &str| Err(SdkError::Config(why.to_owned()));
        if self.endpoints.is_empty() {
            return bad("at least one endpoint is needed");
        }
        if self.user_id == 0 {
            return bad("user_id must not be 0");
        }
        if self.device_id.is_empty() {
            return bad("device_id must not be empty");
        }
        if self.heartbeat_interval.is_zero() || self.pong_timeout.is_zero() {
            return bad("heartbeat_interval and pong_timeout must be positive");
        }
        for url in &self.directory {
            crate::directory::check_url(url, self.tls.is_some()).map_err(SdkError::Config)?;
        }
        if self.directory_after_failures == 0 {
            return bad("directory_after_failures must be at least 1");
        }
        if self.send_window == 0 {
            return bad("send_window must be at least 1");
        }
        if self.backoff.base.is_zero() || self.backoff.cap < self.backoff.base {
            return bad("backoff.base must be positive and no larger than backoff.cap");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_required_field_is_checked() {
        let ok = ClientConfig::new(1, "d", vec!["127.0.0.1:9500".into()]);
        assert!(ok.validate().is_ok());
        assert_eq!(ok.heartbeat_interval, Duration::from_secs(50));
        let mut c = ok.clone();
        c.endpoints.clear();
        assert!(matches!(c.validate(), Err(SdkError::Config(_))));
        let mut c = ok.clone();
        c.user_id = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.device_id.clear();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.backoff.cap = Duration::ZERO;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.directory = vec!["https://dir.example".into()];
        assert!(c.validate().is_err(), "an https directory needs tls");
        let mut c = ok.clone();
        c.directory = vec!["dir.example:80".into()];
        assert!(c.validate().is_err(), "a directory URL needs a scheme");
        let mut c = ok;
        c.send_window = 0;
        assert!(c.validate().is_err());
    }
}
