//! Per-connection token bucket.
//!
//! Integer arithmetic in milli-tokens: a request costs 1000; the bucket refills
//! `per_second` milli-tokens per millisecond, up to `burst × 1000`. Refilling is lazy (on
//! each request, from the time elapsed), so an idle connection costs nothing.

use crate::config::RateLimit;
use crate::time::Timestamp;

const COST: u64 = 1000;

/// One connection's bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    milli_tokens: u64,
    last: Timestamp,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Timestamp) -> TokenBucket {
        TokenBucket {
            limit,
            milli_tokens: u64::from(limit.burst) * COST,
            last: now,
        }
    }

    /// Takes one request's worth. `Err(retry_after_ms)` when the bucket is empty: the
    /// time until one request's worth has refilled.
    pub fn try_take(&mut self, now: Timestamp) -> Result<(), u32> {
        if self.limit.per_second == 0 {
            return Ok(());
        }
        let rate = u64::from(self.limit.per_second);
        let elapsed = now.as_millis().saturating_sub(self.last.as_millis());
        self.last = self.last.max(now);
        let cap = u64::from(self.limit.burst) * COST;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(cap);
        if self.milli_tokens >= COST {
            self.milli_tokens -= COST;
            Ok(())
        } else {
            let missing = COST - self.milli_tokens;
            let wait = missing.div_ceil(rate);
            Err(u32::try_from(wait).unwrap_or(u32::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limit = RateLimit {
            burst: 3,
            per_second: 10,
        };
        let mut b = TokenBucket::new(limit, Timestamp(0));
        for _ in 0..3 {
            b.try_take(Timestamp(0)).unwrap();
        }
        assert_eq!(b.try_take(Timestamp(0)), Err(100));
        assert_eq!(b.try_take(Timestamp(40)), Err(60));
        b.try_take(Timestamp(100)).unwrap();
        // A long pause refills only up to the burst.
        let later = Timestamp(1_000_000);
        for _ in 0..3 {
            b.try_take(later).unwrap();
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut b = TokenBucket::new(
            RateLimit {
                burst: 0,
                per_second: 0,
            },
            Timestamp(0),
        );
        for _ in 0..1000 {
            b.try_take(Timestamp(0)).unwrap();
        }
    }
}
