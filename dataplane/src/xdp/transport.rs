//! The AF_XDP transport: one pinned poller per NIC queue, behind the same boundary as
//! [`crate::kernel::KernelTransport`] (`Event`s out on a bounded channel, `CoreCommand`s
//! in through a [`Router`]).
//!
//! Per wake-up a poller: receives a batch of frames (ARP answered or learned, TCP pushed to
//! its shard), applies queued commands, writes queued output into smoltcp sockets, polls
//! the shards with work or an expired timer (their packets are framed and transmitted),
//! reports accepted and closed connections, and reads what arrived on the connections of
//! the shards it polled through each one's `FrameDecoder`. Then it sleeps on the socket and
//! its eventfd until the next frame, command or shard timer.
//!
//! Performance-critical path. No locks shared between pollers, no logging above debug per
//! packet. First version: see the crate docs for what is measured and what is missing.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use petrel_control::{ConnId, Event};
use petrel_proto::{DecoderConfig, FrameDecoder};
use slab::Slab;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{ArpRepr, EthernetAddress, Ipv4Cidr, Ipv4Packet};

use super::filter::{AttachMode, FilterConfig, FilterCounters, FilterError, XdpFilter};
use super::neighbour::{NeighbourConfig, NeighbourTable, arp_reply};
use super::rx::Intake;
use super::shards::{ShardSet, ShardSetConfig};
use super::tcp::{ShardConfig, frame_ipv4};
use super::wire::{Malformed, RxCounters};
use crate::boundary::{CoreCommand, CoreHandle, Router, Wake};
use crate::sys::ethtool::{self, NtupleRule};
use crate::sys::event::{EventFd, wait};
use crate::sys::xsk::{Xsk, XskConfig, XskStatistics};

/// Frames taken off the rx ring per batch.
const RX_BATCH: u32 = 64;
/// Batches a round takes at most before the shards run: a round that takes one batch
/// while a storm arrives lets the rx ring hold every frame and the fill ring run dry.
const RX_BATCHES_PER_ROUND: usize = 16;
/// Longest sleep when no shard timer is due (the poller also re-checks shutdown).
const MAX_SLEEP_MS: u64 = 100;
/// How long a stopping poller keeps flushing before it closes regardless.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(3);
/// How long a connection we closed may take to finish (FIN handshake) before it is reset.
const LINGER_MS: u64 = 10_000;
/// How often lingering connections are checked.
const LINGER_CHECK_MS: u64 = 5;
/// How often a poller reads its socket's kernel statistics (one getsockopt).
const STATISTICS_INTERVAL_MS: u64 = 1000;

/// Settings of the AF_XDP transport.
#[derive(Debug, Clone)]
pub struct XdpConfig {
    /// The interface to serve on.
    pub iface: String,
    /// Petrel's IPv4 address on it.
    pub addr: Ipv4Addr,
    /// Prefix length of the on-link subnet.
    pub prefix_len: u8,
    /// The TCP port.
    pub port: u16,
    /// rx queues to serve, one poller each.
    pub queues: Vec<u32>,
    /// CPU to pin each queue's poller to (same length as `queues`; `None`: unpinned).
    pub cores: Vec<Option<usize>>,
    /// Native, generic, or native with fallback.
    pub attach: AttachMode,
    /// Answer ARP for `addr` (Petrel owns an address the kernel does not have).
    pub own_arp: bool,
    /// smoltcp shards per queue.
    pub shards_per_queue: usize,
    /// Most connections per shard.
    pub max_connections_per_shard: usize,
    /// Per-connection smoltcp buffers and queue limits.
    pub shard: ShardConfig,
    /// Most bytes queued for one connection before it is closed as a slow consumer.
    pub max_outbound_bytes: usize,
    /// Frame decoder limits.
    pub decoder: DecoderConfig,
    /// AF_XDP socket settings.
    pub xsk: XskConfig,
}

impl XdpConfig {
    /// Defaults for serving `addr:port` on `iface`, queue 0, unpinned.
    pub fn new(iface: &str, addr: Ipv4Addr, port: u16) -> XdpConfig {
        XdpConfig {
            iface: iface.to_owned(),
            addr,
            prefix_len: 24,
            port,
            queues: vec![0],
            cores: vec![None],
            attach: AttachMode::Auto,
            own_arp: false,
            shards_per_queue: 64,
            max_connections_per_shard: 4096,
            shard: ShardConfig {
                addr,
                port,
                ..ShardConfig::default()
            },
            max_outbound_bytes: 4 << 20,
            decoder: DecoderConfig::default(),
            xsk: XskConfig::default(),
        }
    }
}

/// Segments the userspace TCP dropped before smoltcp saw them, summed over pollers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpDrops {
    /// SYNs for a shard already holding its most connections (the client retries).
    pub refused_syns: u64,
    /// Segments for a shard whose receive queue was full (TCP retransmits them).
    pub queue_full: u64,
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
struct SharedRxCounters {
    arp: AtomicU64,
    tcp: AtomicU64,
    not_ours: AtomicU64,
    malformed: [AtomicU64; Malformed::COUNT],
    refused_syns: AtomicU64,
    queue_full: AtomicU64,
    /// The socket's kernel statistics as last read (`XDP_STATISTICS`, once a second).
    kernel_rx_dropped: AtomicU64,
    kernel_rx_ring_full: AtomicU64,
    kernel_fill_ring_empty: AtomicU64,
    kernel_invalid_descs: AtomicU64,
}

impl SharedRxCounters {
    fn set_kernel(&self, stats: &XskStatistics) {
        let mut drops = SocketDrops::default();
        drops.add(stats);
        self.kernel_rx_dropped
            .store(drops.rx_dropped, Ordering::Relaxed);
        self.kernel_rx_ring_full
            .store(drops.rx_ring_full, Ordering::Relaxed);
        self.kernel_fill_ring_empty
            .store(drops.fill_ring_empty, Ordering::Relaxed);
        self.kernel_invalid_descs
            .store(drops.invalid_descs, Ordering::Relaxed);
    }

    fn add_drops(&self, drops: TcpDrops) {
        if drops.refused_syns > 0 {
            self.refused_syns
                .fetch_add(drops.refused_syns, Ordering::Relaxed);
        }
        if drops.queue_full > 0 {
            self.queue_full
                .fetch_add(drops.queue_full, Ordering::Relaxed);
        }
    }

    fn add(&self, batch: &RxCounters) {
        self.arp.fetch_add(batch.arp, Ordering::Relaxed);
        self.tcp.fetch_add(batch.tcp, Ordering::Relaxed);
        self.not_ours.fetch_add(batch.not_ours, Ordering::Relaxed);
        for (total, n) in self.malformed.iter().zip(batch.malformed) {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn add_to(&self, sum: &mut RxCounters) {
        sum.arp += self.arp.load(Ordering::Relaxed);
        sum.tcp += self.tcp.load(Ordering::Relaxed);
        sum.not_ours += self.not_ours.load(Ordering::Relaxed);
        for (total, n) in sum.malformed.iter_mut().zip(&self.malformed) {
            *total += n.load(Ordering::Relaxed);
        }
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The XDP filter failed to load, configure or attach.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// An AF_XDP socket, eventfd, thread or the interface's MAC address failed.
    #[error("AF_XDP transport: {0}")]
    Io(#[from] io::Error),
    /// The configuration is inconsistent.
    #[error("AF_XDP transport config: {0}")]
    Config(&'static str),
}

/// A running AF_XDP transport. [`XdpTransport::join`] after [`Router::shutdown_all`];
/// the filter is detached when the transport is dropped.
#[derive(Debug)]
pub struct XdpTransport {
    handles: Vec<CoreHandle>,
    /// Deleted when the transport is dropped.
    _ntuple: Option<NtupleRule>,
    rx_counters: Vec<Arc<SharedRxCounters>>,
    threads: Vec<JoinHandle<()>>,
    // Dropped last: the pollers' sockets must be gone before the filter detaches. (A
    // [`XdpStats`] handle may keep it attached a little longer; with no socket left the
    // program passes everything to the kernel.)
    filter: Arc<XdpFilter>,
}

/// A cheap, cloneable view of a transport's counters for another thread (the metrics
/// endpoint), usable while the transport runs and after it stopped.
#[derive(Debug, Clone)]
pub struct XdpStats {
    filter: Arc<XdpFilter>,
    rx_counters: Vec<Arc<SharedRxCounters>>,
}

impl XdpStats {
    /// The filter program's counters.
    pub fn filter_counters(&self) -> Result<FilterCounters, FilterError> {
        self.filter.counters()
    }

    /// What the pollers' classifier saw, summed over queues.
    pub fn rx_counters(&self) -> RxCounters {
        let mut sum = RxCounters::default();
        for counters in &self.rx_counters {
            counters.add_to(&mut sum);
        }
        sum
    }

    /// What the kernel counted on the AF_XDP sockets (read once a second), summed over
    /// queues.
    pub fn socket_drops(&self) -> SocketDrops {
        let mut sum = SocketDrops::default();
        for c in &self.rx_counters {
            sum.rx_dropped += c.kernel_rx_dropped.load(Ordering::Relaxed);
            sum.rx_ring_full += c.kernel_rx_ring_full.load(Ordering::Relaxed);
            sum.fill_ring_empty += c.kernel_fill_ring_empty.load(Ordering::Relaxed);
            sum.invalid_descs += c.kernel_invalid_descs.load(Ordering::Relaxed);
        }
        sum
    }

    /// Segments the userspace TCP dropped (full shards, full queues), summed over queues.
    pub fn tcp_drops(&self) -> TcpDrops {
        let mut sum = TcpDrops::default();
        for counters in &self.rx_counters {
            sum.refused_syns += counters.refused_syns.load(Ordering::Relaxed);
            sum.queue_full += counters.queue_full.load(Ordering::Relaxed);
        }
        sum
    }
}

impl XdpTransport {
    /// Loads and attaches the filter, binds one AF_XDP socket per queue and starts one
    /// poller thread per queue.
    pub fn start(config: XdpConfig, events: Sender<Event>) -> Result<XdpTransport, XdpError> {
        if config.queues.is_empty() || config.queues.len() > 256 {
            return Err(XdpError::Config("between 1 and 256 queues"));
        }
        if config.cores.len() != config.queues.len() {
            return Err(XdpError::Config("one core entry per queue"));
        }
        let our_mac = interface_mac(&config.iface)?;
        let mut filter = XdpFilter::load()?;
        filter.configure(&FilterConfig {
            addr: config.addr,
            prefix_len: 32,
            ports: vec![config.port],
            own_arp: config.own_arp,
        })?;
        let mode = filter.attach(&config.iface, config.attach)?;
        tracing::info!(iface = %config.iface, ?mode, "XDP filter attached");
        let if_index = crate::sys::if_index(&config.iface)?;
        let ntuple = steer(&config);

        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let mut rx_counters = Vec::new();
        for (index, (&queue, &cpu)) in config.queues.iter().zip(&config.cores).enumerate() {
            let xsk = bind_retrying(if_index, queue, config.xsk)?;
            filter.register_socket(queue, &xsk)?;
            let event = Arc::new(EventFd::new()?);
            let (tx, rx) = crossbeam_channel::unbounded();
            handles.push(CoreHandle::new(tx, event.clone() as Arc<dyn Wake>));
            let counters = Arc::new(SharedRxCounters::default());
            rx_counters.push(counters.clone());
            let poller = Poller::new(
                index as u8,
                PollerLinks {
                    xsk,
                    event,
                    commands: rx,
                    events: events.clone(),
                    rx_counters: counters,
                },
                our_mac,
                &config,
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("petrel-xdp-{index}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            crate::pin::pin_current_thread(cpu);
                        }
                        let mut poller = poller;
                        poller.run();
                    })?,
            );
        }
        Ok(XdpTransport {
            handles,
            _ntuple: ntuple,
            rx_counters,
            threads,
            filter: Arc::new(filter),
        })
    }

    /// A router for the control-plane thread.
    pub fn router(&self) -> Router {
        Router::new(self.handles.clone())
    }

    /// A handle on the counters for another thread.
    pub fn stats(&self) -> XdpStats {
        XdpStats {
            filter: self.filter.clone(),
            rx_counters: self.rx_counters.clone(),
        }
    }

    /// The filter program's counters.
    pub fn filter_counters(&self) -> Result<FilterCounters, FilterError> {
        self.filter.counters()
    }

    /// What the pollers' frame classifier saw, summed over queues: frames for us, and the
    /// malformed ones dropped, by reason.
    pub fn rx_counters(&self) -> RxCounters {
        self.stats().rx_counters()
    }

    /// Waits for every poller to exit (after [`Router::shutdown_all`]), then detaches the
    /// filter.
    pub fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("an AF_XDP poller thread panicked");
            }
        }
    }
}

/// With one queue, steers Petrel's port to it with an ntuple rule, so RSS cannot spread the
/// port's flows to queues nobody serves. (With several queues every queue has a poller and
/// RSS spreads connections over them; per-port steering needs one port per queue, not
/// configurable yet.) NICs without ntuple filters are reported once and left to RSS.
fn steer(config: &XdpConfig) -> Option<NtupleRule> {
    let [queue] = config.queues[..] else {
        return None;
    };
    match ethtool::steer_tcp_port(&config.iface, Some(config.addr), config.port, queue) {
        Ok(rule) => {
            tracing::info!(iface = %config.iface, port = config.port, queue, location = rule.location(), "ntuple rule installed");
            Some(rule)
        }
        Err(e) if ethtool::is_unsupported(&e) => {
            tracing::info!(iface = %config.iface, "no ntuple filters on this NIC; relying on RSS (serve every rx queue)");
            None
        }
        Err(e) => {
            tracing::warn!(iface = %config.iface, error = %e, "could not install the ntuple rule; relying on RSS");
            None
        }
    }
}

/// How long a bind answered `EBUSY` is retried.
const BIND_RETRY_LIMIT: Duration = Duration::from_secs(3);

/// Binds queue `queue`'s socket, retrying for a moment while the kernel answers `EBUSY`:
/// it releases a closed socket's hold on the queue asynchronously, so a server restarted
/// right after its predecessor exited can find the queue still taken.
pub(crate) fn bind_retrying(if_index: u32, queue: u32, config: XskConfig) -> io::Result<Xsk> {
    let deadline = Instant::now() + BIND_RETRY_LIMIT;
    loop {
        match Xsk::bind(if_index, queue, config) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                tracing::debug!(queue, "AF_XDP queue still busy; retrying the bind");
                std::thread::sleep(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// The MAC address of `iface`, from sysfs.
pub(crate) fn interface_mac(iface: &str) -> io::Result<EthernetAddress> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| io::Error::other(format!("bad MAC address {text:?} for {iface}")))?;
    }
    Ok(EthernetAddress(mac))
}

/// What connects a poller to its queue and to the rest of the process.
struct PollerLinks {
    xsk: Xsk,
    event: Arc<EventFd>,
    commands: Receiver<CoreCommand>,
    events: Sender<Event>,
    rx_counters: Arc<SharedRxCounters>,
}

/// One connection on a poller.
struct Conn {
    id: ConnId,
    shard: usize,
    handle: SocketHandle,
    read_buf: BytesMut,
    decoder: FrameDecoder,
    read_stopped: bool,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    closing: bool,
    dirty: bool,
}

struct Poller {
    index: u8,
    xsk: Xsk,
    event: Arc<EventFd>,
    commands: Receiver<CoreCommand>,
    events: Sender<Event>,
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    own_arp: bool,
    max_outbound_bytes: usize,
    decoder: DecoderConfig,
    shards: ShardSet,
    neighbours: NeighbourTable,
    conns: Slab<Conn>,
    keys: HashMap<ConnId, usize>,
    by_socket: HashMap<(usize, SocketHandle), usize>,
    next_local: u64,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    arp_requests: Vec<ArpRepr>,
    rx_counters: Arc<SharedRxCounters>,
    handles: Vec<SocketHandle>,
    polled: Vec<usize>,
    read_keys: Vec<usize>,
    start: Instant,
    shutdown_started: Option<Instant>,
    control_gone: bool,
    /// Connections we closed that smoltcp still holds (FIN sent, not yet done).
    lingering: HashMap<(usize, SocketHandle), Linger>,
    next_linger_check: u64,
    next_statistics: u64,
}

/// A connection closed on our side, waiting for TCP to finish.
#[derive(Debug, Clone, Copy)]
struct Linger {
    /// Reset at this time (ms) if still not done.
    deadline: u64,
    /// We had stopped reading it (a fatal frame error): whatever it sends is never read.
    read_stopped: bool,
}

impl Poller {
    fn new(index: u8, links: PollerLinks, our_mac: EthernetAddress, config: &XdpConfig) -> Poller {
        let PollerLinks {
            xsk,
            event,
            commands,
            events,
            rx_counters,
        } = links;
        let seed = std::collections::hash_map::RandomState::new();
        let seed = std::hash::BuildHasher::hash_one(&seed, index);
        Poller {
            index,
            xsk,
            event,
            commands,
            events,
            our_mac,
            our_ip: config.addr,
            own_arp: config.own_arp,
            max_outbound_bytes: config.max_outbound_bytes,
            decoder: config.decoder,
            shards: ShardSet::new(
                ShardSetConfig {
                    shards: config.shards_per_queue,
                    max_connections_per_shard: config.max_connections_per_shard,
                    seed,
                    shard: ShardConfig {
                        addr: config.addr,
                        prefix_len: config.prefix_len,
                        port: config.port,
                        ..config.shard
                    },
                },
                0,
            ),
            neighbours: NeighbourTable::new(NeighbourConfig::default()),
            conns: Slab::new(),
            keys: HashMap::new(),
            by_socket: HashMap::new(),
            next_local: 0,
            dirty: Vec::new(),
            scratch: vec![0; 64 * 1024],
            arp_requests: Vec::new(),
            rx_counters,
            handles: Vec::new(),
            polled: Vec::new(),
            read_keys: Vec::new(),
            start: Instant::now(),
            shutdown_started: None,
            control_gone: false,
            lingering: HashMap::new(),
            next_linger_check: 0,
            next_statistics: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(&mut self) {
        loop {
            let now = self.now_ms();
            self.receive(now);
            self.drain_commands();
            self.write_dirty();
            self.poll_shards(now);
            self.report_connections();
            self.reap_lingering(now);
            if now >= self.next_statistics {
                self.next_statistics = now + STATISTICS_INTERVAL_MS;
                if let Ok(stats) = self.xsk.statistics() {
                    self.rx_counters.set_kernel(&stats);
                }
            }
            // Reading frees receive window and may close: the shards read from are marked
            // and polled on the next round, without sleeping.
            self.read_polled();
            if let Err(e) = self.xsk.flush_tx() {
                tracing::debug!(queue = self.index, error = %e, "AF_XDP tx kick failed");
            }
            if self.control_gone {
                self.begin_shutdown();
            }
            if let Some(started) = self.shutdown_started
                && (self.conns.is_empty() || started.elapsed() > SHUTDOWN_FLUSH_LIMIT)
            {
                match self.xsk.statistics() {
                    Ok(stats) => tracing::info!(
                        queue = self.index,
                        ?stats,
                        counters = ?self.xsk.counters(),
                        refused_syns = self.shards.refused_syns(),
                        duplicate_syns = self.shards.duplicate_syns(),
                        "AF_XDP poller stopped"
                    ),
                    Err(e) => tracing::debug!(queue = self.index, error = %e, "no XDP statistics"),
                }
                return;
            }
            let timeout = match self.shards.poll_at() {
                Some(at) => at.saturating_sub(self.now_ms()).min(MAX_SLEEP_MS),
                None => MAX_SLEEP_MS,
            };
            let timeout = if self.shards.has_dirty() {
                0
            } else if self.xsk.tx_pending() > 0 {
                // The kernel did not take every queued frame (busy): try again very soon.
                1
            } else if self.shutdown_started.is_some() {
                timeout.min(10)
            } else {
                timeout
            };
            match wait(
                std::os::fd::AsFd::as_fd(&self.xsk),
                &self.event,
                timeout as i32,
            ) {
                Ok(ready) if ready.woken => {
                    let _ = self.event.drain();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(queue = self.index, error = %e, "poll failed; poller stops");
                    return;
                }
            }
        }
    }

    fn emit(&mut self, event: Event) -> bool {
        if !self.control_gone && self.events.send(event).is_err() {
            self.control_gone = true;
        }
        !self.control_gone
    }

    /// What arrived, up to [`RX_BATCHES_PER_ROUND`] batches: ARP learned (and answered
    /// when we own the address), TCP to its shard.
    fn receive(&mut self, now: u64) {
        let Poller {
            xsk,
            shards,
            neighbours,
            arp_requests,
            our_ip,
            own_arp,
            ..
        } = self;
        let mut batch = RxCounters::default();
        let mut drops = TcpDrops::default();
        let mut intake = Intake {
            ours: Ipv4Cidr::new(*our_ip, 32),
            answer_arp: *own_arp,
            now_ms: now,
            shards,
            neighbours,
            arp_requests,
            counters: &mut batch,
            drops: &mut drops,
        };
        let mut handle = |frame: &[u8]| intake.take(frame);
        for _ in 0..RX_BATCHES_PER_ROUND {
            // Each batch also refills the fill ring with the frames it released.
            if xsk.receive(RX_BATCH, &mut handle) < RX_BATCH {
                break;
            }
        }
        self.rx_counters.add(&batch);
        self.rx_counters.add_drops(drops);
        for request in self.arp_requests.drain(..) {
            let (mac, ip) = (self.our_mac, self.our_ip);
            self.xsk.send(|buf| arp_reply(&request, mac, ip, buf));
        }
    }

    fn poll_shards(&mut self, now: u64) {
        let Poller {
            xsk,
            shards,
            neighbours,
            our_mac,
            ..
        } = self;
        shards.poll(now, |_, packet| {
            let Ok(dst) = Ipv4Packet::new_checked(packet).map(|p| p.dst_addr()) else {
                return;
            };
            // A peer we never heard from cannot be answered (we only answer, never dial).
            // An expired entry is still used: an idle connection's peer is refreshed only
            // when it sends again (no ARP probing yet).
            if let Some(mac) = neighbours
                .lookup(dst, now)
                .or_else(|| neighbours.lookup_any(dst))
            {
                xsk.send(|buf| frame_ipv4(packet, *our_mac, mac, buf));
            }
        });
    }

    /// Emits `Closed` for connections smoltcp removed and `Opened` for new ones.
    fn report_connections(&mut self) {
        let mut polled = std::mem::take(&mut self.polled);
        polled.clear();
        polled.extend_from_slice(self.shards.last_polled());
        for &shard in &polled {
            let Some(s) = self.shards.shard_mut(shard) else {
                continue;
            };
            let mut handles = std::mem::take(&mut self.handles);
            s.take_closed(&mut handles);
            for handle in handles.drain(..) {
                if let Some(&key) = self.by_socket.get(&(shard, handle)) {
                    self.forget(key);
                }
                // Removed by smoltcp before its handle can be reused: forget the linger.
                self.lingering.remove(&(shard, handle));
            }
            if let Some(s) = self.shards.shard_mut(shard) {
                s.take_accepted(&mut handles);
            }
            for handle in handles.drain(..) {
                if self.shutdown_started.is_some() {
                    if let Some(socket) = self
                        .shards
                        .shard_mut(shard)
                        .and_then(|s| s.connection_mut(handle))
                    {
                        socket.abort();
                    }
                    continue;
                }
                let id = ConnId::new(self.index, self.next_local);
                self.next_local += 1;
                let key = self.conns.insert(Conn {
                    id,
                    shard,
                    handle,
                    read_buf: BytesMut::new(),
                    decoder: FrameDecoder::new(self.decoder),
                    read_stopped: false,
                    out: VecDeque::new(),
                    out_bytes: 0,
                    closing: false,
                    dirty: false,
                });
                self.keys.insert(id, key);
                self.by_socket.insert((shard, handle), key);
                self.emit(Event::Opened { conn: id });
            }
            self.handles = handles;
        }
        self.polled = polled;
    }

    /// Reads the connections of the shards just polled that have data (or the peer's FIN)
    /// through their decoders. Cost: a look at the connections of those shards only, never
    /// all of the poller's.
    fn read_polled(&mut self) {
        let mut polled = std::mem::take(&mut self.polled);
        polled.clear();
        polled.extend_from_slice(self.shards.last_polled());
        let mut keys = std::mem::take(&mut self.read_keys);
        for &shard in &polled {
            keys.clear();
            if let Some(s) = self.shards.shard_mut(shard) {
                // Only those with data or the peer's FIN: reading every connection of a
                // polled shard was a sixth of a poller's time at a million connections.
                keys.extend(
                    s.connection_handles()
                        .iter()
                        .filter(|handle| s.wants_read(**handle))
                        .filter_map(|handle| self.by_socket.get(&(shard, *handle)).copied()),
                );
            }
            for &key in &keys {
                self.read_conn(key);
            }
        }
        self.polled = polled;
        self.read_keys = keys;
    }

    fn read_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(socket) = self
            .shards
            .shard_mut(conn.shard)
            .and_then(|s| s.connection_mut(conn.handle))
        else {
            return;
        };
        let mut pending = Vec::new();
        let mut progressed = false;
        if !conn.read_stopped {
            while socket.can_recv() {
                let n = match socket.recv_slice(&mut self.scratch) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                progressed = true;
                conn.read_buf.extend_from_slice(&self.scratch[..n]);
                loop {
                    match conn.decoder.decode(&mut conn.read_buf) {
                        Ok(Some(frame)) => pending.push(Event::Frame {
                            conn: conn.id,
                            frame,
                        }),
                        Ok(None) => break,
                        Err(error) => {
                            let fatal = error.is_fatal();
                            pending.push(Event::FrameError {
                                conn: conn.id,
                                error,
                            });
                            if fatal {
                                conn.read_stopped = true;
                                conn.read_buf = BytesMut::new();
                                break;
                            }
                        }
                    }
                }
                if conn.read_stopped {
                    break;
                }
            }
            if conn.read_buf.is_empty() {
                conn.read_buf = BytesMut::new();
            }
        }
        // The peer finished sending (its FIN arrived while we were established): finish our
        // side too once our output is written.
        if socket.state() == tcp::State::CloseWait && !conn.closing {
            conn.closing = true;
            progressed = true;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        if progressed {
            let shard = conn.shard;
            self.shards.mark_dirty(shard);
        }
        for event in pending {
            if !self.emit(event) {
                return;
            }
        }
    }

    fn drain_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(CoreCommand::Send { conn, bytes }) => {
                    let Some(&key) = self.keys.get(&conn) else {
                        continue;
                    };
                    let c = &mut self.conns[key];
                    if !bytes.is_empty() {
                        c.out_bytes += bytes.len();
                        c.out.push_back(bytes);
                    }
                    if c.out_bytes > self.max_outbound_bytes {
                        tracing::debug!(%conn, queued = c.out_bytes, "outbound limit exceeded; closing");
                        self.abort(key);
                    } else {
                        self.mark_dirty(key);
                    }
                }
                Ok(CoreCommand::Close { conn }) => {
                    if let Some(&key) = self.keys.get(&conn) {
                        self.conns[key].closing = true;
                        self.mark_dirty(key);
                    }
                }
                Ok(CoreCommand::Shutdown) => self.begin_shutdown(),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.begin_shutdown();
                    return;
                }
            }
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_started.is_some() {
            return;
        }
        self.shutdown_started = Some(Instant::now());
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.conns[key].closing = true;
            self.mark_dirty(key);
        }
    }

    /// Resets a connection at once (slow consumer).
    fn abort(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out.clear();
        conn.out_bytes = 0;
        if let Some(socket) = self
            .shards
            .shard_mut(conn.shard)
            .and_then(|s| s.connection_mut(conn.handle))
        {
            socket.abort();
        }
        let shard = conn.shard;
        self.shards.mark_dirty(shard);
    }

    /// Moves queued output into the smoltcp sockets (as much as their buffers take) and
    /// closes connections that asked for it once their output is in.
    fn write_dirty(&mut self) {
        let now = self.now_ms();
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut still_dirty = Vec::new();
        let mut finished = Vec::new();
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            let Some(socket) = self
                .shards
                .shard_mut(conn.shard)
                .and_then(|s| s.connection_mut(conn.handle))
            else {
                continue;
            };
            if !socket.may_send() && socket.state() != tcp::State::SynReceived {
                // Our side is closed or reset: queued output can never go out.
                conn.out.clear();
                conn.out_bytes = 0;
            }
            let mut written = 0usize;
            while let Some(front) = conn.out.front_mut() {
                let n = socket.send_slice(front).unwrap_or(0);
                if n == 0 {
                    break;
                }
                written += n;
                if n == front.len() {
                    conn.out.pop_front();
                } else {
                    front.advance(n);
                }
            }
            conn.out_bytes -= written;
            let mut changed = written > 0;
            if conn.out.is_empty() && conn.closing {
                // FIN after the buffered output. smoltcp keeps the socket (FIN-WAIT,
                // TIME-WAIT) until it is done; the connection is over for the control plane
                // now, as with the kernel transport. `reap_lingering` resets it if the peer
                // keeps sending into a connection nobody reads, or never finishes.
                socket.close();
                self.lingering.insert(
                    (conn.shard, conn.handle),
                    Linger {
                        deadline: now + LINGER_MS,
                        read_stopped: conn.read_stopped,
                    },
                );
                finished.push(key);
                changed = true;
            } else if !conn.out.is_empty() {
                // The socket buffer is full: try again on a later round (ACKs arriving
                // wake this poller and free buffer space).
                conn.dirty = true;
                still_dirty.push(key);
            }
            let (id, shard) = (conn.id, conn.shard);
            if changed {
                self.shards.mark_dirty(shard);
            }
            if written > 0 {
                self.emit(Event::Flushed {
                    conn: id,
                    bytes: written as u64,
                });
            }
        }
        dirty.clear();
        dirty.extend(still_dirty);
        self.dirty = dirty;
        for key in finished {
            self.forget(key);
        }
    }

    /// Resets connections we closed that will not finish cleanly, as a kernel does on
    /// `close` with unread data: once our output is acknowledged, a peer that sent data
    /// after our FIN (or whose data we had stopped reading) is reset, so its writes fail
    /// instead of blocking on a zero window forever; and any connection still not done
    /// [`LINGER_MS`] after our FIN is reset too. Checked every [`LINGER_CHECK_MS`].
    fn reap_lingering(&mut self, now: u64) {
        if self.lingering.is_empty() || now < self.next_linger_check {
            return;
        }
        self.next_linger_check = now + LINGER_CHECK_MS;
        let Poller {
            lingering, shards, ..
        } = self;
        lingering.retain(|&(shard, handle), linger| {
            let Some(socket) = shards
                .shard_mut(shard)
                .and_then(|s| s.connection_mut(handle))
            else {
                return false;
            };
            let unread = linger.read_stopped || socket.recv_queue() > 0;
            let reset = (unread && socket.send_queue() == 0) || now >= linger.deadline;
            if reset {
                socket.abort();
                shards.mark_dirty(shard);
            }
            !reset
        });
    }

    /// Drops our record of a connection and reports it closed. Its smoltcp socket may live
    /// on in the shard until TCP is done with it; its later removal finds no record.
    fn forget(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        self.keys.remove(&conn.id);
        self.by_socket.remove(&(conn.shard, conn.handle));
        self.emit(Event::Closed { conn: conn.id });
    }
}
