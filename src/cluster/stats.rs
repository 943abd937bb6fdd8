//! What a node's cluster layer counts, for the metrics endpoint: the bridge's traffic and
//! what it dropped, the nodes it sees, and the requests other nodes left unanswered.
//! Atomics shared by the bridge thread, the cores and the metrics thread; each is
//! touched once per envelope or per rare event, never per message on a core.

use std::sync::atomic::{AtomicU64, Ordering};

/// The cluster layer's counters (docs/OPERATIONS.md, "Metrics").
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Other nodes that are up now.
    pub nodes_up: AtomicU64,
    /// Times another node went down (silence, goodbye or restart).
    pub nodes_went_down: AtomicU64,
    /// Times another node came up (first heard, or a new process of it).
    pub nodes_came_up: AtomicU64,
    /// Pieces of mail published to other nodes.
    pub parcels_sent: AtomicU64,
    /// Pieces of mail taken from other nodes for this node's cores.
    pub parcels_received: AtomicU64,
    /// Mail not published: its node was down, or NATS did not take messages.
    pub dropped_unreachable: AtomicU64,
    /// Mail from other nodes dropped for a core far behind.
    pub dropped_core_behind: AtomicU64,
    /// Mail from other nodes meant for an earlier process of this node.
    pub dropped_stale: AtomicU64,
    /// Messages on the cluster's subjects that are not an envelope this node reads
    /// (another wire version, a foreign publisher).
    pub undecodable: AtomicU64,
    /// Publishes NATS did not take in time (each pauses mail for a second).
    pub publish_stalls: AtomicU64,
    /// Requests to another node answered `SERVER_BUSY` for want of its answer in time.
    pub requests_timed_out: AtomicU64,
    /// Requests to another node answered `SERVER_BUSY` because it went down.
    pub requests_node_down: AtomicU64,
}

impl ClusterStats {
    /// Adds `n` to `counter`; its new value (for logging the first few of something
    /// and then ever more rarely).
    pub fn add(counter: &AtomicU64, n: u64) -> u64 {
        if n == 0 {
            return counter.load(Ordering::Relaxed);
        }
        counter.fetch_add(n, Ordering::Relaxed).wrapping_add(n)
    }

    /// The value of `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
