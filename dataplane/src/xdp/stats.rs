//! The AF_XDP transport's counters: what each poller's classifier and userspace TCP
//! dropped, the sockets' kernel statistics, and a cloneable view of them for the metrics
//! endpoint. Pollers publish with relaxed atomics once per batch; readers sum over queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::filter::{FilterCounters, FilterError, XdpFilter};
use super::shards::CookieStats;
use super::wire::{Malformed, RxCounters};
use crate::sys::xsk::XskStatistics;

/// Segments the userspace TCP dropped before smoltcp saw them, summed over pollers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpDrops {
    /// SYNs for a shard already holding its most connections (the client retries).
    pub refused_syns: u64,
    /// SYNs dropped while the core was over its CPU budget (admission control; the
    /// client retries).
    pub shed_syns: u64,
    /// Segments for a shard whose receive queue was full (TCP retransmits them).
    pub queue_full: u64,
    /// SYNs while the core held its share of `max_connections` (the client retries).
    pub capacity_syns: u64,
}

/// The SYN handshake of the userspace TCP, summed over cores: the cookie counters
/// ([`CookieStats`]) and the half-open connections held now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynStats {
    /// Cookies sent, connections opened from them, cookies refused, SYNs dropped past
    /// the backlog with cookies off.
    pub cookies: CookieStats,
    /// Half-open (SYN-RECEIVED) connections now.
    pub half_open: u64,
}

/// The kernel's counters of the AF_XDP sockets (`XDP_STATISTICS`), summed over queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketDrops {
    /// Frames the kernel dropped on the way to a socket (other than the reasons below).
    pub rx_dropped: u64,
    /// Frames dropped because a socket's rx ring was full (its poller fell behind).
    pub rx_ring_full: u64,
    /// Times a frame arrived with no fill-ring frame to put it in.
    pub fill_ring_empty: u64,
    /// Invalid rx or tx descriptors (a bug, if ever non-zero).
    pub invalid_descs: u64,
}

impl SocketDrops {
    /// Adds one socket's kernel statistics.
    pub fn add(&mut self, stats: &XskStatistics) {
        self.rx_dropped += stats.rx_dropped;
        self.rx_ring_full += stats.rx_ring_full;
        self.fill_ring_empty += stats.rx_fill_ring_empty_descs;
        self.invalid_descs += stats.rx_invalid_descs + stats.tx_invalid_descs;
    }
}

/// What one poller's classifier saw, published with relaxed atomics once per batch.
#[derive(Debug, Default)]
pub(crate) struct SharedRxCounters {
    arp: AtomicU64,
    tcp: AtomicU64,
    not_ours: AtomicU64,
    malformed: [AtomicU64; Malformed::COUNT],
    refused_syns: AtomicU64,
    shed_syns: AtomicU64,
    queue_full: AtomicU64,
    capacity_syns: AtomicU64,
    /// The core's SYN handshake, as last published (on its first queue only).
    cookies_sent: AtomicU64,
    cookies_opened: AtomicU64,
    cookies_rejected: AtomicU64,
    backlog_full: AtomicU64,
    half_open: AtomicU64,
    /// The socket's kernel statistics as last read (`XDP_STATISTICS`, once a second).
    kernel_rx_dropped: AtomicU64,
    kernel_rx_ring_full: AtomicU64,
    kernel_fill_ring_empty: AtomicU64,
    kernel_invalid_descs: AtomicU64,
}

impl SharedRxCounters {
    /// Publishes the device's drop counters as last read.
    pub(crate) fn set_kernel(&self, drops: SocketDrops) {
        self.kernel_rx_dropped
            .store(drops.rx_dropped, Ordering::Relaxed);
        self.kernel_rx_ring_full
            .store(drops.rx_ring_full, Ordering::Relaxed);
        self.kernel_fill_ring_empty
            .store(drops.fill_ring_empty, Ordering::Relaxed);
        self.kernel_invalid_descs
            .store(drops.invalid_descs, Ordering::Relaxed);
    }

    /// Publishes the core's SYN handshake counters (cumulative) and half-open count.
    pub(crate) fn set_cookies(&self, cookies: CookieStats, half_open: usize) {
        self.cookies_sent.store(cookies.sent, Ordering::Relaxed);
        self.cookies_opened.store(cookies.opened, Ordering::Relaxed);
        self.cookies_rejected
            .store(cookies.rejected, Ordering::Relaxed);
        self.backlog_full
            .store(cookies.backlog_full, Ordering::Relaxed);
        self.half_open.store(half_open as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_drops(&self, drops: TcpDrops) {
        if drops.refused_syns > 0 {
            self.refused_syns
                .fetch_add(drops.refused_syns, Ordering::Relaxed);
        }
        if drops.shed_syns > 0 {
            self.shed_syns.fetch_add(drops.shed_syns, Ordering::Relaxed);
        }
        if drops.capacity_syns > 0 {
            self.capacity_syns
                .fetch_add(drops.capacity_syns, Ordering::Relaxed);
        }
        if drops.queue_full > 0 {
            self.queue_full
                .fetch_add(drops.queue_full, Ordering::Relaxed);
        }
    }

    pub(crate) fn add(&self, batch: &RxCounters) {
        self.arp.fetch_add(batch.arp, Ordering::Relaxed);
        self.tcp.fetch_add(batch.tcp, Ordering::Relaxed);
        self.not_ours.fetch_add(batch.not_ours, Ordering::Relaxed);
        for (total, n) in self.malformed.iter().zip(batch.malformed) {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn add_to(&self, sum: &mut RxCounters) {
        sum.arp += self.arp.load(Ordering::Relaxed);
        sum.tcp += self.tcp.load(Ordering::Relaxed);
        sum.not_ours += self.not_ours.load(Ordering::Relaxed);
        for (total, n) in sum.malformed.iter_mut().zip(&self.malformed) {
            *total += n.load(Ordering::Relaxed);
        }
    }
}

/// A cheap, cloneable view of a transport's counters for another thread (the metrics
/// endpoint), usable while the transport runs and after it stopped.
#[derive(Debug, Clone)]
pub struct XdpStats {
    pub(crate) filter: Arc<XdpFilter>,
    pub(crate) queues: QueueStats,
}

impl XdpStats {
    /// The filter program's counters.
    pub fn filter_counters(&self) -> Result<FilterCounters, FilterError> {
        self.filter.counters()
    }

    /// What the pollers' classifier saw, summed over queues.
    pub fn rx_counters(&self) -> RxCounters {
        self.queues.rx_counters()
    }

    /// What the kernel counted on the AF_XDP sockets (read once a second), summed over
    /// queues.
    pub fn socket_drops(&self) -> SocketDrops {
        self.queues.device_drops()
    }

    /// Segments the userspace TCP dropped (full shards, overload, full queues), summed
    /// over queues.
    pub fn tcp_drops(&self) -> TcpDrops {
        self.queues.tcp_drops()
    }

    /// The SYN handshake (cookies, half-open connections), summed over cores.
    pub fn syn_stats(&self) -> SynStats {
        self.queues.syn_stats()
    }
}

/// The pollers' counters, whichever the device (AF_XDP, DPDK): cloneable, for another
/// thread.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub(crate) rx_counters: Vec<Arc<SharedRxCounters>>,
}

impl QueueStats {
    /// What the pollers' classifier saw, summed over queues.
    pub fn rx_counters(&self) -> RxCounters {
        let mut sum = RxCounters::default();
        for counters in &self.rx_counters {
            counters.add_to(&mut sum);
        }
        sum
    }

    /// What the devices counted (AF_XDP: the kernel's socket statistics; DPDK: the port's
    /// missed, erroneous and no-mbuf receptions), read once a second, summed over queues.
    pub fn device_drops(&self) -> SocketDrops {
        let mut sum = SocketDrops::default();
        for c in &self.rx_counters {
            sum.rx_dropped += c.kernel_rx_dropped.load(Ordering::Relaxed);
            sum.rx_ring_full += c.kernel_rx_ring_full.load(Ordering::Relaxed);
            sum.fill_ring_empty += c.kernel_fill_ring_empty.load(Ordering::Relaxed);
            sum.invalid_descs += c.kernel_invalid_descs.load(Ordering::Relaxed);
        }
        sum
    }

    /// The SYN handshake (cookies, half-open connections), summed over cores.
    pub fn syn_stats(&self) -> SynStats {
        let mut sum = SynStats::default();
        for c in &self.rx_counters {
            sum.cookies.sent += c.cookies_sent.load(Ordering::Relaxed);
            sum.cookies.opened += c.cookies_opened.load(Ordering::Relaxed);
            sum.cookies.rejected += c.cookies_rejected.load(Ordering::Relaxed);
            sum.cookies.backlog_full += c.backlog_full.load(Ordering::Relaxed);
            sum.half_open += c.half_open.load(Ordering::Relaxed);
        }
        sum
    }

    /// Segments the userspace TCP dropped (full shards, full queues), summed over queues.
    pub fn tcp_drops(&self) -> TcpDrops {
        let mut sum = TcpDrops::default();
        for counters in &self.rx_counters {
            sum.refused_syns += counters.refused_syns.load(Ordering::Relaxed);
            sum.shed_syns += counters.shed_syns.load(Ordering::Relaxed);
            sum.queue_full += counters.queue_full.load(Ordering::Relaxed);
            sum.capacity_syns += counters.capacity_syns.load(Ordering::Relaxed);
        }
        sum
    }
}
