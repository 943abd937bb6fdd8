//! The webhook's counters, shared with the metrics endpoint (`petrel_webhook_*`,
//! docs/OPERATIONS.md).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges; every field only ever read for metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events written to the queue.
    pub queued: AtomicU64,
    /// Events the receiver acknowledged (a 2xx answer to their call).
    pub delivered: AtomicU64,
    /// Events given up on after `max_attempts` calls (dead letters).
    pub dead: AtomicU64,
    /// Events not queued: the hand-over channel or the queue was full, or the queue could
    /// not be written.
    pub dropped: AtomicU64,
    /// Calls answered 2xx.
    pub calls_ok: AtomicU64,
    /// Calls that failed: no connection, a timeout, or a non-2xx answer.
    pub calls_failed: AtomicU64,
    /// Events waiting in the queue now.
    pub queue_depth: AtomicU64,
    /// Dead letters kept now.
    pub dead_depth: AtomicU64,
}

impl WebhookStats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Reads a field.
    pub fn get(field: &AtomicU64) -> u64 {
        field.load(Ordering::Relaxed)
    }
}
