//! Open-loop send schedule: message *k* is due at `start + k / rate`, whatever happened
//! to messages before it. Latency is measured from that scheduled time, not from when
//! the client got round to sending, so a server that stalls shows the stall in every
//! message that should have gone out meanwhile (no coordinated omission).
//!
//! Pure arithmetic on nanosecond timestamps; the engine asks [`OpenLoop::due`] how many
//! messages are due by now and sends them, each stamped with its
//! [`OpenLoop::scheduled_at`].

/// Messages due at a fixed rate from a start time.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    start_ns: u64,
    rate_per_sec: f64,
    /// Index of the next message not yet handed out.
    next: u64,
    /// No message is scheduled at or after this time.
    end_ns: u64,
}

impl OpenLoop {
    /// `rate_per_sec` messages per second from `start_ns` until `end_ns` (exclusive).
    /// `rate_per_sec` must be positive and finite (the caller validates it).
    pub fn new(start_ns: u64, end_ns: u64, rate_per_sec: f64) -> OpenLoop {
        debug_assert!(rate_per_sec > 0.0 && rate_per_sec.is_finite());
        OpenLoop {
            start_ns,
            rate_per_sec,
            next: 0,
            end_ns,
        }
    }

    /// When message `k` is due.
    pub fn scheduled_at(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * 1e9 / self.rate_per_sec) as u64
    }

    /// The indices of the messages due by `now_ns` that were not handed out yet (at most
    /// `limit` of them, so one late wake-up cannot build an unbounded burst in memory).
    pub fn due(&mut self, now_ns: u64, limit: u64) -> std::ops::Range<u64> {
        let first = self.next;
        let mut last = first;
        while last - first < limit {
            let at = self.scheduled_at(last);
            if at > now_ns || at >= self.end_ns {
                break;
            }
            last += 1;
        }
        self.next = last;
        first..last
    }

    /// When the next message is due (for sleeping until then), or `None` when finished.
    pub fn next_due(&self) -> Option<u64> {
        let at = self.scheduled_at(self.next);
        (at < self.end_ns).then_some(at)
    }
}

/// Spreads one heartbeat per connection evenly over each interval: by time `t` after the
/// start, `floor(t / interval × n)` pings are due in total, handed out round-robin.
#[derive(Debug, Clone)]
pub struct HeartbeatWheel {
    start_ns: u64,
    interval_ns: u64,
    connections: u64,
    issued: u64,
}

impl HeartbeatWheel {
    /// `connections` pings per `interval_ns`, starting at `start_ns`.
    pub fn new(start_ns: u64, interval_ns: u64, connections: u64) -> HeartbeatWheel {
        HeartbeatWheel {
            start_ns,
            interval_ns: interval_ns.max(1),
            connections,
            issued: 0,
        }
    }

    /// Connection indices (modulo `connections`) to ping now, at most `limit`.
    pub fn due(&mut self, now_ns: u64, limit: u64) -> impl Iterator<Item = usize> + use<> {
        let elapsed = now_ns.saturating_sub(self.start_ns) as u128;
        let total = (elapsed * self.connections as u128 / self.interval_ns as u128) as u64;
        let first = self.issued;
        let last = total.min(first + limit);
        self.issued = last.max(first);
        let n = self.connections.max(1);
        (first..last).map(move |i| (i % n) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_follows_the_clock_not_the_sender() {
        // 1,000/s from t = 1 s: one message per millisecond.
        let mut s = OpenLoop::new(1_000_000_000, 2_000_000_000, 1000.0);
        assert_eq!(s.due(999_999_999, 100), 0..0);
        assert_eq!(s.due(1_000_000_000, 100), 0..1);
        // A client that wakes 10 ms late gets the 10 messages it missed, each with its own
        // scheduled time.
        assert_eq!(s.due(1_010_000_000, 100), 1..11);
        assert_eq!(s.scheduled_at(5), 1_005_000_000);
        assert_eq!(s.next_due(), Some(1_011_000_000));
    }

    #[test]
    fn due_is_capped_and_catches_up_later() {
        let mut s = OpenLoop::new(0, u64::MAX, 1_000_000.0);
        assert_eq!(s.due(1_000_000, 100), 0..100);
        assert_eq!(s.due(1_000_000, 100), 100..200);
    }

    #[test]
    fn schedule_ends_at_the_end_time() {
        let mut s = OpenLoop::new(0, 10_000_000, 1000.0); // 10 ms at 1,000/s
        assert_eq!(s.due(u64::MAX / 2, 1000), 0..10);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn heartbeats_are_spread_over_the_interval() {
        let mut w = HeartbeatWheel::new(0, 1_000, 10);
        assert_eq!(w.due(99, 100).count(), 0);
        assert_eq!(w.due(100, 100).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.due(550, 100).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        // The second round starts again at connection 0.
        assert_eq!(
            w.due(1_100, 100).collect::<Vec<_>>(),
            vec![5, 6, 7, 8, 9, 0]
        );
        assert_eq!(w.due(100_000, 3).count(), 3);
    }
}
