//! Tunables of the control plane, with the defaults the issue specifies.

use std::time::Duration;

/// How many live sessions one user may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiDevicePolicy {
    /// One session per platform class (`pb::Platform`): a second phone login replaces
    /// the first phone (which gets `Kick{Replaced}` and is closed) but leaves the desktop
    /// alone.
    OnePerPlatform,
    /// Any number of sessions.
    Unlimited,
}

/// Token-bucket limit on the requests one connection may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in a burst (bucket size).
    pub burst: u32,
    /// Sustained requests per second (refill rate). 0 disables the limit.
    pub per_second: u32,
}

/// Control-plane configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A connection must log in within this time of opening or is closed. Default 10 s.
    pub login_deadline: Duration,
    /// The longest ping interval announced to clients in `LoginResult`. Default 50 s.
    pub heartbeat_interval: Duration,
    /// How far below `heartbeat_interval` a session's announced interval may be, in
    /// percent of it (0 to 50): each session gets its own interval in that range
    /// ([`Config::heartbeat_for`]), so the clients of a reconnect storm do not ping in
    /// waves forever after. Default 20 (40 to 50 s).
    pub heartbeat_jitter_percent: u8,
    /// A logged-in connection silent for longer than this is kicked (`Kick{Idle}`).
    /// Default 3 heartbeat intervals (150 s).
    pub idle_timeout: Duration,
    /// Multi-device policy. Default one session per platform class.
    pub multi_device: MultiDevicePolicy,
    /// Limit on the requests of one logged-in connection (every frame but `Ping` and
    /// `Logout`). Default burst 50, 20 per second.
    pub rate_limit: RateLimit,
    /// After [`crate::Control::begin_shutdown`], how long the plane keeps answering new
    /// requests with `Error(ShuttingDown)` before [`crate::Control::is_drained`] can
    /// report true, so requests already on the wire get an answer rather than only the
    /// shutdown kick. Default 200 ms.
    pub shutdown_grace: Duration,
    /// Whether a session ends when its token expires without renewal (the client gets
    /// `Error(TokenExpired)` and is closed). Default true.
    pub enforce_token_expiry: bool,
    /// Lifetime of tokens minted by `RenewToken`. Default 24 h.
    pub renew_ttl: Duration,
    /// Verified tokens remembered by the token cache. Default 65 536.
    pub token_cache_capacity: usize,
    /// Chatrooms one connection may be in at once; joining more is refused with
    /// `PermissionDenied`. Default 32.
    pub max_rooms_per_conn: usize,
    /// Messages each chatroom keeps for late joiners. Default 50 (0 keeps none).
    pub chatroom_recent: usize,
    /// Longest a chatroom request (join, send, member list) waits for the answer of the
    /// room's owner on another core before it is answered `SERVER_BUSY` (and the
    /// owner's answer, if it still comes, dropped). On one server the answer always
    /// comes within it; between cluster nodes the request or the answer can be lost.
    /// Default 3 s; a cluster node sets its `request_timeout_ms`.
    pub room_answer_timeout: Duration,
    /// Largest (and default) page of a `SyncRequest`. Default 200 messages.
    pub sync_page_limit: u32,
    /// Largest (and default) page of a `HistoryRequest`. Default 100 messages.
    pub history_page_limit: u32,
    /// Largest encoded `Content` a `SendMessage` may carry, in bytes; larger ones get
    /// `ContentTooLarge`. Default 60 KiB, leaving room for the push's other fields
    /// within the protocol's 64 KiB frame body limit.
    pub max_content_len: usize,
    /// Seed for ids the control plane invents (token ids of renewed tokens). The driver
    /// should pass a random value at start; tests pass a fixed one.
    pub id_seed: u64,
    /// Typing indicators one connection may send: a burst, then a sustained rate. Over
    /// it they are dropped (never answered). Default burst 3, one a second.
    pub typing_rate: RateLimit,
    /// Largest conversation (members, or connections of a chatroom) that typing
    /// indicators are forwarded in; larger ones drop them. Default 500.
    pub typing_max_audience: usize,
    /// Largest group whose members get each other's read receipts; 0 turns group
    /// receipts off (1:1 chats always have them). Default 100.
    pub read_receipt_max_group: usize,
    /// How often a storage retention pass starts (`Request::Trim` steps until the pass
    /// is complete, `TRIM_STEP_PAUSE` apart). Default 60 s; zero never trims.
    pub trim_interval: Duration,
    /// Emit [`crate::Action::OfflineMessage`] for every stored message that has
    /// recipients with no online session (the driver turns them into webhook calls).
    /// Default off: no per-message work when nobody listens.
    pub offline_notices: bool,
    /// How long after sending its sender may recall a message (`RecallMessage`); a
    /// group's owner and admins may at any time. Default 2 minutes.
    pub recall_window: Duration,
    /// How long after sending its sender may edit a message (`EditMessage`). Default
    /// 2 days.
    pub edit_window: Duration,
    /// Which core this control plane runs on, of `core_count` (default 0 of 1). With
    /// more than one, each core's control plane owns the sessions of its own
    /// connections and tells the others about them ([`crate::remote`]).
    pub core_index: u8,
    /// How many cores run a control plane (1 to [`crate::remote::MAX_CORES`]; clamped
    /// into that range, and an index outside it is taken as 0).
    pub core_count: u8,
    /// When this core refuses new logins (and the loop new connections) to keep
    /// serving the sessions it has ([`crate::admission`]).
    pub admission: crate::admission::AdmissionConfig,
}

impl Default for Config {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_secs(50);
        Config {
            login_deadline: Duration::from_secs(10),
            heartbeat_interval,
            heartbeat_jitter_percent: 20,
            idle_timeout: heartbeat_interval * 3,
            multi_device: MultiDevicePolicy::OnePerPlatform,
            rate_limit: RateLimit {
                burst: 50,
                per_second: 20,
            },
            shutdown_grace: Duration::from_millis(200),
            enforce_token_expiry: true,
            renew_ttl: Duration::from_secs(24 * 3600),
            token_cache_capacity: 65_536,
            max_rooms_per_conn: 32,
            chatroom_recent: 50,
            room_answer_timeout: Duration::from_secs(3),
            sync_page_limit: 200,
            history_page_limit: 100,
            max_content_len: 60 * 1024,
            id_seed: 0x5EED,
            trim_interval: Duration::from_secs(60),
            typing_rate: RateLimit {
                burst: 3,
                per_second: 1,
            },
            typing_max_audience: 500,
            read_receipt_max_group: 100,
            offline_notices: false,
            recall_window: Duration::from_secs(120),
            edit_window: Duration::from_secs(2 * 24 * 3600),
            core_index: 0,
            core_count: 1,
            admission: crate::admission::AdmissionConfig::default(),
        }
    }
}

/// Most `heartbeat_jitter_percent` honoured.
pub const MAX_HEARTBEAT_JITTER_PERCENT: u8 = 50;

impl Config {
    /// The ping interval announced to session `session_id`, in whole seconds: spread
    /// evenly over `[heartbeat_interval × (1 − jitter), heartbeat_interval]` by a hash of
    /// the session id (deterministic, no clock and no RNG, like the rest of the plane),
    /// never above `heartbeat_interval` (which `idle_timeout` is sized by) and never
    /// below one second.
    pub fn heartbeat_for(&self, session_id: u64) -> u32 {
        let longest = self.heartbeat_interval.as_secs();
        let percent = u64::from(
            self.heartbeat_jitter_percent
                .min(MAX_HEARTBEAT_JITTER_PERCENT),
        );
        let spread = longest.saturating_mul(percent) / 100;
        let below = if spread == 0 {
            0
        } else {
            // storage's splitmix64: consecutive session ids land far apart.
            petrel_storage::partition::mix(session_id) % (spread + 1)
        };
        u32::try_from(longest - below).unwrap_or(u32::MAX).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_heartbeats_spread_over_the_jitter_range_and_never_exceed_the_interval() {
        let config = Config::default();
        let mut seen = std::collections::BTreeMap::new();
        for session in 1..=10_000u64 {
            let s = config.heartbeat_for(session);
            assert!((40..=50).contains(&s), "session {session}: {s} s");
            assert_eq!(s, config.heartbeat_for(session), "deterministic");
            *seen.entry(s).or_insert(0u32) += 1;
        }
        // Eleven whole seconds, each about a tenth of the sessions.
        assert_eq!(seen.len(), 11, "{seen:?}");
        assert!(
            seen.values().all(|&n| (700..=1_100).contains(&n)),
            "{seen:?}"
        );
    }

    #[test]
    fn no_jitter_announces_the_interval_and_tiny_intervals_stay_positive() {
        let mut config = Config {
            heartbeat_jitter_percent: 0,
            ..Config::default()
        };
        assert!((1..100).all(|s| config.heartbeat_for(s) == 50));
        config.heartbeat_interval = Duration::from_secs(1);
        config.heartbeat_jitter_percent = 50;
        assert!((1..100).all(|s| config.heartbeat_for(s) == 1));
        config.heartbeat_interval = Duration::ZERO;
        assert!((1..100).all(|s| config.heartbeat_for(s) == 1));
        config.heartbeat_interval = Duration::from_secs(100);
        config.heartbeat_jitter_percent = 200;
        assert!((1..1000).all(|s| (50..=100).contains(&config.heartbeat_for(s))));
    }
}
