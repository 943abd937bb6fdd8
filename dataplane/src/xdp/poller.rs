//! One AF_XDP queue with its userspace TCP shards behind [`CoreIo`]: the poller a core's
//! loop drives.
//!
//! `receive` takes up to [`RX_BATCHES_PER_ROUND`] batches off the rx ring (ARP answered or
//! learned, TCP pushed to its shard), then pumps: queued output into the smoltcp sockets,
//! the shards with work or an expired timer polled (their packets framed and put on the
//! tx ring), accepted and closed connections reported, and what arrived on the
//! connections of the polled shards read through each one's `FrameDecoder`, then the tx
//! ring kicked. `transmit` pumps again after the loop queued its sends. `wait` sleeps on
//! the socket and the core's eventfd until the next frame, wake-up or shard timer —
//! or, asked for no wait at all, returns without a system call: the rings are memory
//! the kernel fills, so a busy-polling core sees new frames with no syscall.
//!
//! Performance-critical path. No locks shared between pollers, no logging above debug per
//! packet, no hash per lookup by [`ConnId`] (it carries the slab slot).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use petrel_conn::{ConnId, TransportEvent};
use petrel_proto::{DecoderConfig, FrameDecoder};
use slab::Slab;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{ArpRepr, EthernetAddress, Ipv4Cidr, Ipv4Packet};

use super::neighbour::{NeighbourConfig, NeighbourTable, arp_reply};
use super::rx::Intake;
use super::shards::{ShardSet, ShardSetConfig};
use super::stats::{SharedRxCounters, TcpDrops};
use super::tcp::{ShardConfig, frame_ipv4};
use super::transport::XdpConfig;
use super::wire::RxCounters;
use crate::boundary::{CoreIo, Wake};
use crate::sys::event::{EventFd, wait};
use crate::sys::xsk::Xsk;

/// Frames taken off the rx ring per batch.
const RX_BATCH: u32 = 64;
/// Batches a round takes at most before the shards run: a round that takes one batch
/// while a storm arrives lets the rx ring hold every frame and the fill ring run dry.
const RX_BATCHES_PER_ROUND: usize = 16;
/// Longest sleep when no shard timer is due.
const MAX_SLEEP_MS: u64 = 100;
/// How long a stopping poller keeps flushing before it closes regardless.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(3);
/// How long a connection we closed may take to finish (FIN handshake) before it is reset.
const LINGER_MS: u64 = 10_000;
/// How often lingering connections are checked.
const LINGER_CHECK_MS: u64 = 5;
/// How often a poller reads its socket's kernel statistics (one getsockopt).
const STATISTICS_INTERVAL_MS: u64 = 1000;

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

/// A connection closed on our side, waiting for TCP to finish.
#[derive(Debug, Clone, Copy)]
struct Linger {
    /// Reset at this time (ms) if still not done.
    deadline: u64,
    /// We had stopped reading it (a fatal frame error): whatever it sends is never read.
    read_stopped: bool,
}

/// One AF_XDP queue's poller. See the module docs.
pub struct XdpCore {
    index: u8,
    xsk: Xsk,
    event: Arc<EventFd>,
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    own_arp: bool,
    max_outbound_bytes: usize,
    decoder: DecoderConfig,
    shards: ShardSet,
    neighbours: NeighbourTable,
    conns: Slab<Conn>,
    by_socket: HashMap<(usize, SocketHandle), usize>,
    next_generation: u64,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    arp_requests: Vec<ArpRepr>,
    rx_counters: Arc<SharedRxCounters>,
    handles: Vec<SocketHandle>,
    polled: Vec<usize>,
    read_keys: Vec<usize>,
    still_dirty: Vec<usize>,
    finished: Vec<usize>,
    start: Instant,
    shutdown_started: Option<Instant>,
    /// Connections we closed that smoltcp still holds (FIN sent, not yet done).
    lingering: HashMap<(usize, SocketHandle), Linger>,
    next_linger_check: u64,
    next_statistics: u64,
}

impl std::fmt::Debug for XdpCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCore")
            .field("index", &self.index)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl XdpCore {
    pub(crate) fn new(
        index: u8,
        xsk: Xsk,
        rx_counters: Arc<SharedRxCounters>,
        our_mac: EthernetAddress,
        config: &XdpConfig,
    ) -> io::Result<XdpCore> {
        let seed = std::collections::hash_map::RandomState::new();
        let seed = std::hash::BuildHasher::hash_one(&seed, index);
        Ok(XdpCore {
            index,
            xsk,
            event: Arc::new(EventFd::new()?),
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
            by_socket: HashMap::new(),
            next_generation: 0,
            dirty: Vec::new(),
            scratch: vec![0; 64 * 1024],
            arp_requests: Vec::new(),
            rx_counters,
            handles: Vec::new(),
            polled: Vec::new(),
            read_keys: Vec::new(),
            still_dirty: Vec::new(),
            finished: Vec::new(),
            start: Instant::now(),
            shutdown_started: None,
            lingering: HashMap::new(),
            next_linger_check: 0,
            next_statistics: 0,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection `conn` names, if it is still open.
    fn key_of(&self, conn: ConnId) -> Option<usize> {
        let key = conn.slot();
        (conn.core() == self.index && self.conns.get(key).is_some_and(|c| c.id == conn))
            .then_some(key)
    }

    /// Output into the sockets, shards polled, connections reported and read, tx kicked.
    fn pump(&mut self, events: &mut Vec<TransportEvent>) {
        let now = self.now_ms();
        self.write_dirty(now, events);
        self.poll_shards(now);
        self.report_connections(events);
        self.reap_lingering(now);
        if now >= self.next_statistics {
            self.next_statistics = now + STATISTICS_INTERVAL_MS;
            if let Ok(stats) = self.xsk.statistics() {
                self.rx_counters.set_kernel(&stats);
            }
        }
        // Reading frees receive window and may close: the shards read from are marked
        // and polled on the next pump, without sleeping.
        self.read_polled(events);
        if let Err(e) = self.xsk.flush_tx() {
            tracing::debug!(queue = self.index, error = %e, "AF_XDP tx kick failed");
        }
    }

    /// What arrived, up to [`RX_BATCHES_PER_ROUND`] batches: ARP learned (and answered
    /// when we own the address), TCP to its shard.
    fn take_frames(&mut self, now: u64) {
        let XdpCore {
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
        let mut taken = 0;
        for _ in 0..RX_BATCHES_PER_ROUND {
            // Each batch also refills the fill ring with the frames it released.
            let n = xsk.receive(RX_BATCH, &mut handle);
            taken += n;
            if n < RX_BATCH {
                break;
            }
        }
        if taken > 0 {
            self.rx_counters.add(&batch);
            self.rx_counters.add_drops(drops);
        }
        for request in self.arp_requests.drain(..) {
            let (mac, ip) = (self.our_mac, self.our_ip);
            self.xsk.send(|buf| arp_reply(&request, mac, ip, buf));
        }
    }

    fn poll_shards(&mut self, now: u64) {
        let XdpCore {
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

    /// Reports `Closed` for connections smoltcp removed and `Opened` for new ones.
    fn report_connections(&mut self, events: &mut Vec<TransportEvent>) {
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
                    self.forget(key, events);
                }
                // Removed by smoltcp before its handle can be reused: forget the linger.
                self.lingering.remove(&(shard, handle));
            }
            if let Some(s) = self.shards.shard_mut(shard) {
                s.take_accepted(&mut handles);
            }
            for handle in handles.drain(..) {
                let entry = self.conns.vacant_entry();
                let slot = u32::try_from(entry.key());
                if self.shutdown_started.is_some() || slot.is_err() {
                    if let Some(socket) = self
                        .shards
                        .shard_mut(shard)
                        .and_then(|s| s.connection_mut(handle))
                    {
                        socket.abort();
                    }
                    continue;
                }
                let id = ConnId::from_slot(self.index, slot.unwrap_or(0), self.next_generation);
                self.next_generation += 1;
                let key = entry.key();
                entry.insert(Conn {
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
                self.by_socket.insert((shard, handle), key);
                events.push(TransportEvent::Opened { conn: id });
            }
            self.handles = handles;
        }
        self.polled = polled;
    }

    /// Reads the connections of the shards just polled that have data (or the peer's FIN)
    /// through their decoders. Cost: a look at the connections of those shards only, never
    /// all of the poller's.
    fn read_polled(&mut self, events: &mut Vec<TransportEvent>) {
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
                self.read_conn(key, events);
            }
        }
        self.polled = polled;
        self.read_keys = keys;
    }

    fn read_conn(&mut self, key: usize, events: &mut Vec<TransportEvent>) {
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
                        Ok(Some(frame)) => events.push(TransportEvent::Frame {
                            conn: conn.id,
                            frame,
                        }),
                        Ok(None) => break,
                        Err(error) => {
                            let fatal = error.is_fatal();
                            events.push(TransportEvent::FrameError {
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
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
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
    fn write_dirty(&mut self, now: u64, events: &mut Vec<TransportEvent>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut still_dirty = std::mem::take(&mut self.still_dirty);
        let mut finished = std::mem::take(&mut self.finished);
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
                events.push(TransportEvent::Flushed {
                    conn: id,
                    bytes: written as u64,
                });
            }
        }
        dirty.clear();
        dirty.append(&mut still_dirty);
        self.dirty = dirty;
        self.still_dirty = still_dirty;
        for &key in &finished {
            self.forget(key, events);
        }
        finished.clear();
        self.finished = finished;
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
        let XdpCore {
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
    fn forget(&mut self, key: usize, events: &mut Vec<TransportEvent>) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        self.by_socket.remove(&(conn.shard, conn.handle));
        events.push(TransportEvent::Closed { conn: conn.id });
    }

    fn log_stopped(&self) {
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
    }
}

impl CoreIo for XdpCore {
    fn index(&self) -> u8 {
        self.index
    }

    fn receive(&mut self, events: &mut Vec<TransportEvent>) {
        let now = self.now_ms();
        self.take_frames(now);
        self.pump(events);
    }

    fn send(&mut self, conn: ConnId, bytes: Bytes) {
        let Some(key) = self.key_of(conn) else {
            return;
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

    fn close(&mut self, conn: ConnId) {
        if let Some(key) = self.key_of(conn) {
            self.conns[key].closing = true;
            self.mark_dirty(key);
        }
    }

    fn transmit(&mut self, events: &mut Vec<TransportEvent>) {
        self.pump(events);
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let own = match self.shards.poll_at() {
            Some(at) => at.saturating_sub(self.now_ms()).min(MAX_SLEEP_MS),
            None => MAX_SLEEP_MS,
        };
        let own = if self.shards.has_dirty() {
            0
        } else if self.xsk.tx_pending() > 0 {
            // The kernel did not take every queued frame (busy): try again very soon.
            1
        } else if self.shutdown_started.is_some() {
            own.min(10)
        } else {
            own
        };
        let asked = timeout.map_or(u64::MAX, |t| {
            // Round up: a 300 µs wait is a 1 ms poll, not a spin.
            u64::try_from(t.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
        });
        let ms = own.min(asked);
        if ms == 0 {
            // Busy polling, or work is waiting: the rings need no system call to look at,
            // unless the kernel asked to be woken to use the fill ring.
            if self.xsk.fill_needs_wakeup() {
                self.xsk.wait_readable(0)?;
            }
            return Ok(());
        }
        let ready = wait(
            std::os::fd::AsFd::as_fd(&self.xsk),
            &self.event,
            i32::try_from(ms).unwrap_or(i32::MAX),
        )?;
        if ready.woken {
            let _ = self.event.drain();
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.event.clone()
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

    fn shutdown_done(&mut self, events: &mut Vec<TransportEvent>) -> bool {
        let Some(started) = self.shutdown_started else {
            return false;
        };
        if !self.conns.is_empty() && started.elapsed() <= SHUTDOWN_FLUSH_LIMIT {
            return false;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.forget(key, events);
        }
        self.log_stopped();
        true
    }

    fn connections(&self) -> usize {
        self.conns.len()
    }
}
