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
    /// Login while the core was over its CPU budget (answered `ServerBusy` with a
    /// retry-after; [`crate::admission`]).
    pub overloaded: u64,
    /// Login past the core's logins-per-second budget (answered `ServerBusy`).
    pub login_rate: u64,
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
    /// Chatroom requests answered `SERVER_BUSY` because the room's owner on another
    /// cluster node went down or did not answer in time.
    pub room_answers_lost: u64,
    /// Answers of a room's owner that came after their request was answered that way
    /// (dropped).
    pub room_answers_late: u64,
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

impl FrameCounts {
    /// Adds `other`'s counts to these.
    pub fn absorb(&mut self, other: &FrameCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine += theirs;
        }
    }
}

impl LoginFailures {
    /// Adds `other`'s counts to these (the counters of several control planes, one
    /// per core, summed for one exposition).
    pub fn absorb(&mut self, other: &LoginFailures) {
        // Destructured whole, so a new field cannot be left out of the sum.
        let LoginFailures {
            malformed,
            bad_signature,
            expired,
            unknown_key,
            revoked,
            mismatch,
            not_ready,
            overloaded,
            login_rate,
            already_logged_in,
            stale,
        } = other;
        self.malformed += malformed;
        self.bad_signature += bad_signature;
        self.expired += expired;
        self.unknown_key += unknown_key;
        self.revoked += revoked;
        self.mismatch += mismatch;
        self.not_ready += not_ready;
        self.overloaded += overloaded;
        self.login_rate += login_rate;
        self.already_logged_in += already_logged_in;
        self.stale += stale;
    }
}

impl Kicks {
    /// Adds `other`'s counts to these (the counters of several control planes, one
    /// per core, summed for one exposition).
    pub fn absorb(&mut self, other: &Kicks) {
        // Destructured whole, so a new field cannot be left out of the sum.
        let Kicks {
            replaced,
            idle,
            slow_consumer,
            token_revoked,
            admin,
        } = other;
        self.replaced += replaced;
        self.idle += idle;
        self.slow_consumer += slow_consumer;
        self.token_revoked += token_revoked;
        self.admin += admin;
    }
}

impl ByScenario {
    /// Adds `other`'s counts to these (the counters of several control planes, one
    /// per core, summed for one exposition).
    pub fn absorb(&mut self, other: &ByScenario) {
        // Destructured whole, so a new field cannot be left out of the sum.
        let ByScenario {
            single,
            group,
            chatroom,
            public_account,
        } = other;
        self.single += single;
        self.group += group;
        self.chatroom += chatroom;
        self.public_account += public_account;
    }
}

impl Counters {
    /// Adds `other`'s counts to these (the counters of several control planes, one
    /// per core, summed for one exposition).
    pub fn absorb(&mut self, other: &Counters) {
        // Destructured whole, so a new field cannot be left out of the sum.
        let Counters {
            connections_opened,
            connections_closed,
            logins_ok,
            logins_failed,
            login_timeouts,
            sessions_expired,
            frames_in,
            frames_out,
            frame_errors,
            rate_limited,
            kicks,
            messages_persisted,
            messages_duplicate,
            messages_delivered,
            messages_dropped,
            messages_rejected,
            storage_errors,
            trimmed_messages,
            trimmed_inbox_entries,
            trim_passes,
            encode_errors,
            unknown_tickets,
            token_cache_hits,
            frames_misdirected,
            refused_shutting_down,
            chatroom_gaps,
            room_answers_lost,
            room_answers_late,
            typing_notices,
            typing_dropped,
            read_receipts,
            read_receipts_skipped,
            delivery_receipts,
            congested,
            sessions_revoked,
            offline_notices,
            pushes_forwarded,
            messages_recalled,
            messages_edited,
        } = other;
        self.connections_opened += connections_opened;
        self.connections_closed += connections_closed;
        self.logins_ok += logins_ok;
        self.logins_failed.absorb(logins_failed);
        self.login_timeouts += login_timeouts;
        self.sessions_expired += sessions_expired;
        self.frames_in.absorb(frames_in);
        self.frames_out.absorb(frames_out);
        self.frame_errors += frame_errors;
        self.rate_limited += rate_limited;
        self.kicks.absorb(kicks);
        self.messages_persisted.absorb(messages_persisted);
        self.messages_duplicate += messages_duplicate;
        self.messages_delivered.absorb(messages_delivered);
        self.messages_dropped.absorb(messages_dropped);
        self.messages_rejected += messages_rejected;
        self.storage_errors += storage_errors;
        self.trimmed_messages += trimmed_messages;
        self.trimmed_inbox_entries += trimmed_inbox_entries;
        self.trim_passes += trim_passes;
        self.encode_errors += encode_errors;
        self.unknown_tickets += unknown_tickets;
        self.token_cache_hits += token_cache_hits;
        self.frames_misdirected += frames_misdirected;
        self.refused_shutting_down += refused_shutting_down;
        self.chatroom_gaps += chatroom_gaps;
        self.room_answers_lost += room_answers_lost;
        self.room_answers_late += room_answers_late;
        self.typing_notices += typing_notices;
        self.typing_dropped += typing_dropped;
        self.read_receipts += read_receipts;
        self.read_receipts_skipped += read_receipts_skipped;
        self.delivery_receipts += delivery_receipts;
        self.congested += congested;
        self.sessions_revoked += sessions_revoked;
        self.offline_notices += offline_notices;
        self.pushes_forwarded += pushes_forwarded;
        self.messages_recalled += messages_recalled;
        self.messages_edited += messages_edited;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorbing_sums_every_kind_of_count() {
        let mut a = Counters {
            logins_ok: 2,
            ..Counters::default()
        };
        a.kicks.replaced = 1;
        a.messages_delivered.chatroom = 5;
        a.frames_in.add(FrameType::Ping);
        let mut b = a.clone();
        b.logins_failed.stale = 3;
        b.frames_in.add(FrameType::Ping);
        a.absorb(&b);
        assert_eq!(a.logins_ok, 4);
        assert_eq!(a.kicks.replaced, 2);
        assert_eq!(a.messages_delivered.chatroom, 10);
        assert_eq!(a.logins_failed.stale, 3);
        assert_eq!(a.frames_in.get(FrameType::Ping), 3);
    }
}
