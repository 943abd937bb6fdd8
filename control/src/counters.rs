//! Plain counters the binary can export as metrics.
//!
//! Everything is a `u64` that only grows (except the gauges named as such), updated in
//! place on the hot path with no locking: the control plane is single-threaded, and the
//! driver reads a copy with [`crate::Control::counters`].

use petrel_proto::FrameType;

use crate::token::TokenError;

/// Counts per frame type, indexed by position in [`FrameType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameCounts([u64; FrameType::ALL.len()]);

impl Default for FrameCounts {
    fn default() -> Self {
        FrameCounts([0; FrameType::ALL.len()])
    }
}

impl FrameCounts {
    fn index(t: FrameType) -> usize {
        FrameType::ALL.iter().position(|&x| x == t).unwrap_or(0)
    }

    /// Adds one frame of type `t`.
    pub fn add(&mut self, t: FrameType) {
        self.0[Self::index(t)] += 1;
    }

    /// Frames of type `t`.
    pub fn get(&self, t: FrameType) -> u64 {
        self.0[Self::index(t)]
    }

    /// Every (type, count) pair, including zeros.
    pub fn iter(&self) -> impl Iterator<Item = (FrameType, u64)> + '_ {
        FrameType::ALL.iter().copied().zip(self.0.iter().copied())
    }

    /// Sum over all types.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Counts per routing scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByScenario {
    /// 1:1 chats.
    pub single: u64,
    /// Group chats.
    pub group: u64,
    /// Chatrooms.
    pub chatroom: u64,
    /// Public accounts.
    pub public_account: u64,
}

/// Failed logins, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginFailures {
    /// Token not parseable.
    pub malformed: u64,
    /// MAC did not verify.
    pub bad_signature: u64,
    /// Token past its expiry.
    pub expired: u64,
    /// Key id not in the key ring.
    pub unknown_key: u64,
    /// Token on the revocation list.
    pub revoked: u64,
    /// Token for another user or device than the login names.
    pub mismatch: u64,
    /// Login before the revocation list was loaded (answered `ServerBusy`).
    pub not_ready: u64,
    /// A second login on an already logged-in connection.
    pub already_logged_in: u64,
    /// A device's older login attempt that arrived after a newer one (`STALE_LOGIN`).
    pub stale: u64,
}

impl LoginFailures {
    /// Counts one token rejection.
    pub fn record(&mut self, err: &TokenError) {
        match err {
            TokenError::Malformed(_) | TokenError::InvalidClaims(_) => self.malformed += 1,
            TokenError::BadSignature => self.bad_signature += 1,
            TokenError::Expired { .. } => self.expired += 1,
            TokenError::UnknownKey(_) => self.unknown_key += 1,
            TokenError::Revoked(_) => self.revoked += 1,
            TokenError::Mismatch => self.mismatch += 1,
        }
    }
}

/// Kicks sent, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kicks {
    /// Replaced by a newer login on the same platform.
    pub replaced: u64,
    /// Heartbeat timeout.
    pub idle: u64,
    /// Outbound queue over its limit.
    pub slow_consumer: u64,
    /// Token revoked (a logout with `revoke_token` elsewhere, or an operator revocation).
    pub token_revoked: u64,
    /// Kicked by an operator.
    pub admin: u64,
}

/// Everything the control plane counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections gone (closed by either side).
    pub connections_closed: u64,
    /// Successful logins.
    pub logins_ok: u64,
    /// Failed logins by reason.
    pub logins_failed: LoginFailures,
    /// Connections closed for not logging in within the deadline.
    pub login_timeouts: u64,
    /// Sessions closed because their token expired without renewal.
    pub sessions_expired: u64,
    /// Frames received, by type.
    pub frames_in: FrameCounts,
    /// Frames sent, by type (a fan-out push counts once per receiver).
    pub frames_out: FrameCounts,
    /// Frames that failed to decode (reported by the transport).
    pub frame_errors: u64,
    /// Requests refused by the rate limit.
    pub rate_limited: u64,
    /// Kicks sent, by reason.
    pub kicks: Kicks,
    /// Messages stored (not counting retries of stored messages).
    pub messages_persisted: ByScenario,
    /// Retried sends answered with the seq of the stored original.
    pub messages_duplicate: u64,
    /// Pushes handed to the transport (one per receiving connection).
    pub messages_delivered: ByScenario,
    /// Pushes not delivered because the receiver lagged (chatrooms only, each reported
    /// to it in a `Gap`; persisted conversations kick the receiver instead).
    pub messages_dropped: ByScenario,
    /// Sends refused (not a member, not the owner, unknown conversation, ...).
    pub messages_rejected: u64,
    /// Storage requests that failed with an internal error (backend, corruption, ...).
    pub storage_errors: u64,
    /// Messages deleted by storage retention.
    pub trimmed_messages: u64,
    /// Inbox entries deleted by storage retention.
    pub trimmed_inbox_entries: u64,
    /// Retention passes completed.
    pub trim_passes: u64,
    /// Frames that could not be encoded (bigger than the protocol allows); a bug if
    /// ever non-zero.
    pub encode_errors: u64,
    /// Storage completions for tickets the control plane did not issue.
    pub unknown_tickets: u64,
    /// Token verifications answered from the cache.
    pub token_cache_hits: u64,
    /// Client frames refused for their direction or flags: a server-to-client type
    /// (`UnknownFrameType`) or the RESPONSE flag (`InvalidRequest`).
    pub frames_misdirected: u64,
    /// Requests answered `Error(ShuttingDown)` during a graceful shutdown.
    pub refused_shutting_down: u64,
    /// `Gap` notices sent: runs of chatroom pushes skipped for a lagging member.
    pub chatroom_gaps: u64,
    /// `TypingNotice`s sent (one per receiving connection).
    pub typing_notices: u64,
    /// Typing indicators (or notices to one receiver) dropped: over the sender's typing
    /// limit, not a member, too large an audience, a busy server or a congested receiver.
    pub typing_dropped: u64,
    /// Read receipts sent (`ConversationEvent` READ_RECEIPT, one per receiving connection).
    pub read_receipts: u64,
    /// Group read and delivery receipts not sent because the member list could not be
    /// read or the server had many storage requests outstanding.
    pub read_receipts_skipped: u64,
    /// Delivery receipts sent (`ConversationEvent` DELIVERY_RECEIPT, one per receiving
    /// connection).
    pub delivery_receipts: u64,
    /// Times a connection became congested (its transport's queue stayed over the
    /// outbound limit after a write).
    pub congested: u64,
    /// Sessions ended by [`crate::Control::revoke_sessions`] (also counted in
    /// `kicks.token_revoked`).
    pub sessions_revoked: u64,
    /// Stored messages that had recipients with no online session, handed to the driver
    /// as [`crate::Action::OfflineMessage`] (with `Config::offline_notices`).
    pub offline_notices: u64,
    /// Pushes handed to another core for its connections ([`crate::remote`]).
    pub pushes_forwarded: u64,
    /// Messages recalled (a repeated recall of one message counts again).
    pub messages_recalled: u64,
    /// Message edits stored.
    pub messages_edited: u64,
}
