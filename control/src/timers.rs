//! Connection deadlines: a binary heap with lazy deletion.
//!
//! Every connection has at most three entries: its login deadline (armed when it
//! opens), its idle deadline (armed when it opens, re-armed when it fires for a
//! connection that has been active since) and its session expiry (armed at login,
//! re-armed when it fires for a session that renewed its token since). Frames never touch the heap: receiving one only updates
//! the connection's `last_activity`. When an entry expires the control plane checks it
//! against the connection's current state and either acts (close), re-arms it once at
//! `last_activity + idle_timeout`, or drops it (the connection is gone or logged in).
//! So a tick costs O(expired · log n), never O(connections), and the heap holds at most
//! 3 entries per connection plus a few of the plane's own (housekeeping, retention,
//! held logins, the sweep of chatroom requests waiting for another core).
//!
//! Why a heap rather than a hashed timer wheel: deadlines here are few per connection
//! and re-armed rarely (once per idle timeout, not per frame), so a heap's O(log n)
//! insert costs little, and it has no tick granularity to tune or overflow lists for
//! long deadlines.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::time::Timestamp;
use petrel_conn::ConnId;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// The connection must have logged in by now.
    LoginDeadline(ConnId),
    /// The connection must have been heard from since `deadline - idle_timeout`.
    Idle(ConnId),
    /// The session's newest token expires now (unless renewed since).
    SessionExpiry(ConnId),
    /// Periodic upkeep (pruning the revocation list).
    Housekeeping,
    /// Ask storage for the revocation list again after a failed load.
    RetryLoadRevoked,
    /// Ask storage for the next retention step.
    Trim,
    /// The login on this connection has waited [`crate::remote::LOGIN_HOLD_LIMIT`] for
    /// other cores' `LoginSeen`: answer it anyway (a notice was lost between nodes).
    HeldLogin(ConnId),
    /// Chatroom requests waiting for a room owner on another core may be overdue
    /// (`Config::room_answer_timeout`): answer those `SERVER_BUSY`. One entry, armed
    /// while any request waits.
    RoomAnswers,
}

/// Pending deadlines, earliest first.
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(Timestamp, TimerKind)>>,
}

impl TimerQueue {
    /// Arms `kind` to fire at `deadline`.
    pub fn arm(&mut self, deadline: Timestamp, kind: TimerKind) {
        self.heap.push(Reverse((deadline, kind)));
    }

    /// The earliest pending deadline (which may turn out stale when it fires).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes and returns one entry due at or before `now`.
    pub fn pop_expired(&mut self, now: Timestamp) -> Option<(Timestamp, TimerKind)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Removes the earliest entry without checking its deadline (for discarding stale
    /// entries).
    pub fn pop_front(&mut self) -> Option<(Timestamp, TimerKind)> {
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// The earliest entry, if any.
    pub fn peek(&self) -> Option<(Timestamp, TimerKind)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    /// Number of armed entries (including stale ones).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_expired_in_deadline_order() {
        let mut q = TimerQueue::default();
        let c = ConnId::new(0, 1);
        q.arm(Timestamp(30), TimerKind::Idle(c));
        q.arm(Timestamp(10), TimerKind::LoginDeadline(c));
        q.arm(Timestamp(20), TimerKind::Housekeeping);
        assert_eq!(q.next_deadline(), Some(Timestamp(10)));
        assert_eq!(
            q.pop_expired(Timestamp(25)),
            Some((Timestamp(10), TimerKind::LoginDeadline(c)))
        );
        assert_eq!(
            q.pop_expired(Timestamp(25)),
            Some((Timestamp(20), TimerKind::Housekeeping))
        );
        assert_eq!(q.pop_expired(Timestamp(25)), None);
        assert_eq!(q.len(), 1);
    }
}
