//! One or more AF_XDP queues with their userspace TCP shards behind [`CoreIo`]: the
//! poller a core's loop drives.
//!
//! Generic over the [`Device`] under it: an AF_XDP socket ([`Xsk`], the default, hence
//! the name) or a DPDK port queue (feature `dpdk`) — the same shards, TCP, ARP and
//! connection bookkeeping for both. The prose below says "socket" and "ring" for the
//! AF_XDP case; a DPDK queue has bursts instead, and no descriptor to sleep on.
//!
//! A core serves every queue it was given with one set of shards: a one-CPU server on a
//! two-queue NIC runs one loop that reads both sockets, not two loops that take turns on
//! the CPU. Frames from any of its queues go to the same shards (the 4-tuple picks the
//! shard), and its packets leave through whichever of its sockets has the most free tx
//! ring (a NIC transmits from any queue).
//!
//! `receive` takes up to [`RX_BATCHES_PER_ROUND`] batches off each rx ring (ARP answered or
//! learned, TCP pushed to its shard), then pumps: queued output into the smoltcp sockets,
//! the shards with work or an expired timer polled (their packets framed and put on the
//! tx ring), accepted and closed connections reported, and what arrived on the
//! connections of the polled shards read through each one's `FrameDecoder`, then the tx
//! rings kicked. `transmit` pumps again after the loop queued its sends. `wait` sleeps on
//! the sockets and the core's eventfd until the next frame, wake-up or shard timer —
//! or, asked for no wait at all, returns without a system call: the rings are memory
//! the kernel fills, so a busy-polling core sees new frames with no syscall.
//!
//! Performance-critical path. No locks shared between pollers, no logging above debug per
//! packet, no hash per lookup by [`ConnId`] (it carries the slab slot).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_conn::{ConnId, TransportEvent};
use petrel_proto::DecoderConfig;
use slab::Slab;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{ArpRepr, EthernetAddress, Ipv4Cidr, Ipv4Packet};

use super::device::Device;
use super::neighbour::{NeighbourConfig, NeighbourTable, arp_reply};
use super::rx::Intake;
use super::shards::{CookieStats, ShardSet, ShardSetConfig};
use super::stats::{SharedRxCounters, TcpDrops};
use super::syn_cookie::CookieSynAck;
use super::tcp::{ShardConfig, frame_ipv4};
use super::wire::RxCounters;
use crate::boundary::{CoreIo, RoundLoad, Wake};
use crate::framed::Framed;
use crate::peer::{PeerPolicy, Verdict};
use crate::sys::event::{EventFd, WAIT_ANY_MAX, wait, wait_any};
use crate::sys::xsk::Xsk;
use crate::tls::TlsAcceptor;
use crate::websocket::WsAcceptor;

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

/// One connection on a poller: its smoltcp socket and its [`Framed`] half.
struct Conn {
    shard: usize,
    handle: SocketHandle,
    framed: Framed,
    closing: bool,
    dirty: bool,
}

impl Conn {
    /// The server closes it once its output is written (on TLS, after a close_notify).
    fn begin_close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.framed.begin_close();
        }
    }
}

/// A connection closed on our side, waiting for TCP to finish.
#[derive(Debug, Clone, Copy)]
struct Linger {
    /// Reset at this time (ms) if still not done.
    deadline: u64,
    /// We had stopped reading it (a fatal frame error): whatever it sends is never read.
    read_stopped: bool,
}

/// One device queue of a core (an AF_XDP socket, a DPDK queue), with its counters.
pub(crate) struct Queue<D: Device = Xsk> {
    /// The device queue.
    pub(crate) device: D,
    /// What this queue's frames showed, for the metrics.
    pub(crate) rx_counters: Arc<SharedRxCounters>,
}

/// Most queues one core serves (one `poll(2)` watches them and the eventfd).
pub const MAX_QUEUES_PER_CORE: usize = WAIT_ANY_MAX - 1;

/// How long a poller over a device with no descriptor to sleep on (DPDK) sleeps at most
/// between looks at it when its loop asked to sleep longer (adaptive and interrupt
/// polling; busy polling never sleeps).
const POLL_TICK_MS: u64 = 1;

/// What a poller needs to know, whichever the device: the address and port it serves,
/// and the shards' and connections' limits.
#[derive(Debug, Clone)]
pub(crate) struct CoreSettings {
    pub(crate) addr: Ipv4Addr,
    pub(crate) prefix_len: u8,
    pub(crate) port: u16,
    pub(crate) own_arp: bool,
    pub(crate) shards_per_queue: usize,
    pub(crate) max_connections_per_shard: usize,
    pub(crate) max_connections_per_core: usize,
    pub(crate) syn_backlog: usize,
    pub(crate) syn_cookies: bool,
    pub(crate) shard: ShardConfig,
    pub(crate) max_outbound_bytes: usize,
    pub(crate) decoder: DecoderConfig,
    /// The port speaks TLS with this acceptor.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The port's connections start with a PROXY header.
    pub(crate) proxy_protocol: bool,
    /// PROXY header counters and the per-address limit.
    pub(crate) peers: PeerPolicy,
    /// The port speaks WebSocket with this acceptor.
    pub(crate) websocket: Option<WsAcceptor>,
}

/// The poller of one core's device queues (AF_XDP sockets unless `D` says otherwise).
/// See the module docs.
pub struct XdpCore<D: Device = Xsk> {
    index: u8,
    queues: Vec<Queue<D>>,
    /// The queue whose socket this round's packets leave through.
    tx: usize,
    event: Arc<EventFd>,
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    own_arp: bool,
    max_outbound_bytes: usize,
    decoder: DecoderConfig,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    peers: PeerPolicy,
    websocket: Option<WsAcceptor>,
    shards: ShardSet,
    /// What the round since the last `receive` did ([`CoreIo::round_load`]): frames
    /// taken or shards polled, and whether `take_frames` left frames on an rx ring (it
    /// took its most batches).
    load: RoundLoad,
    neighbours: NeighbourTable,
    conns: Slab<Conn>,
    by_socket: HashMap<(usize, SocketHandle), usize>,
    next_generation: u64,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    arp_requests: Vec<ArpRepr>,
    /// SYN cookie SYN-ACKs to send after this round's receive batches.
    cookie_replies: Vec<(EthernetAddress, CookieSynAck)>,
    /// The cookie counters and half-open count as last published to the metrics.
    published_cookies: (CookieStats, usize),
    handles: Vec<SocketHandle>,
    polled: Vec<usize>,
    read_keys: Vec<usize>,
    still_dirty: Vec<usize>,
    finished: Vec<usize>,
    /// Connections that drained this round, to read what waited in their sockets.
    drained: Vec<usize>,
    start: Instant,
    shutdown_started: Option<Instant>,
    /// Connections we closed that smoltcp still holds (FIN sent, not yet done).
    lingering: HashMap<(usize, SocketHandle), Linger>,
    next_linger_check: u64,
    next_statistics: u64,
}

impl<D: Device> std::fmt::Debug for XdpCore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCore")
            .field("index", &self.index)
            .field("queues", &self.queues.len())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<D: Device> XdpCore<D> {
    /// A core serving `queues` (at least one, at most [`MAX_QUEUES_PER_CORE`]) with
    /// `config.shards_per_queue` shards for each.
    pub(crate) fn new(
        index: u8,
        queues: Vec<Queue<D>>,
        our_mac: EthernetAddress,
        config: &CoreSettings,
    ) -> io::Result<XdpCore<D>> {
        if queues.is_empty() || queues.len() > MAX_QUEUES_PER_CORE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a poller serves 1 to {MAX_QUEUES_PER_CORE} queues"),
            ));
        }
        let seed = std::collections::hash_map::RandomState::new();
        let seed = std::hash::BuildHasher::hash_one(&seed, index);
        let shards = config.shards_per_queue.saturating_mul(queues.len());
        Ok(XdpCore {
            index,
            queues,
            tx: 0,
            event: Arc::new(EventFd::new()?),
            our_mac,
            our_ip: config.addr,
            own_arp: config.own_arp,
            max_outbound_bytes: config.max_outbound_bytes,
            decoder: config.decoder,
            tls: config.tls.clone(),
            proxy_protocol: config.proxy_protocol,
            peers: config.peers.clone(),
            websocket: config.websocket.clone(),
            load: RoundLoad::default(),
            shards: ShardSet::new(
                ShardSetConfig {
                    shards,
                    max_connections_per_shard: config.max_connections_per_shard,
                    max_connections: config.max_connections_per_core,
                    syn_backlog: config.syn_backlog,
                    syn_cookies: config.syn_cookies,
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
            next_generation: crate::boundary::first_generation(),
            dirty: Vec::new(),
            scratch: vec![0; 64 * 1024],
            arp_requests: Vec::new(),
            cookie_replies: Vec::new(),
            published_cookies: (CookieStats::default(), 0),
            handles: Vec::new(),
            polled: Vec::new(),
            read_keys: Vec::new(),
            still_dirty: Vec::new(),
            finished: Vec::new(),
            drained: Vec::new(),
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
        (conn.core() == self.index && self.conns.get(key).is_some_and(|c| c.framed.id() == conn))
            .then_some(key)
    }

    /// Output into the sockets, shards polled, connections reported and read, tx kicked.
    fn pump(&mut self, events: &mut Vec<TransportEvent>) {
        let now = self.now_ms();
        self.pick_tx();
        self.write_dirty(now, events);
        self.poll_shards(now);
        self.report_connections(events);
        self.reap_lingering(now);
        if now >= self.next_statistics {
            self.next_statistics = now + STATISTICS_INTERVAL_MS;
            for queue in &self.queues {
                if let Some(drops) = queue.device.drops() {
                    queue.rx_counters.set_kernel(drops);
                }
            }
        }
        // Reading frees receive window and may close: the shards read from are marked
        // and polled on the next pump, without sleeping.
        self.read_polled(events);
        for queue in &mut self.queues {
            if let Err(e) = queue.device.flush_tx() {
                tracing::debug!(core = self.index, error = %e, kind = D::KIND, "tx kick failed");
            }
        }
    }

    /// Sends this round's packets through the socket with the fewest frames waiting for
    /// the kernel (with one queue, always it).
    fn pick_tx(&mut self) {
        if self.queues.len() > 1 {
            self.tx = (0..self.queues.len())
                .min_by_key(|&i| self.queues[i].device.tx_pending())
                .unwrap_or(0);
        }
    }

    /// What arrived, up to [`RX_BATCHES_PER_ROUND`] batches per queue: ARP learned (and
    /// answered when we own the address), TCP to its shard.
    fn take_frames(&mut self, now: u64) {
        let XdpCore {
            queues,
            shards,
            neighbours,
            arp_requests,
            cookie_replies,
            our_ip,
            own_arp,
            load,
            ..
        } = self;
        *load = RoundLoad::default();
        for queue in queues.iter_mut() {
            let mut batch = RxCounters::default();
            let mut drops = TcpDrops::default();
            let mut intake = Intake {
                ours: Ipv4Cidr::new(*our_ip, 32),
                answer_arp: *own_arp,
                now_ms: now,
                shards: &mut *shards,
                neighbours: &mut *neighbours,
                arp_requests: &mut *arp_requests,
                cookie_replies: &mut *cookie_replies,
                counters: &mut batch,
                drops: &mut drops,
            };
            let mut handle = |frame: &[u8]| intake.take(frame);
            let mut taken = 0;
            let mut drained = false;
            for _ in 0..RX_BATCHES_PER_ROUND {
                // Each batch also refills the fill ring with the frames it released.
                let n = queue.device.receive(RX_BATCH, &mut handle);
                taken += n;
                if n < RX_BATCH {
                    drained = true;
                    break;
                }
            }
            load.backlogged |= !drained;
            load.worked |= taken > 0;
            if taken > 0 {
                queue.rx_counters.add(&batch);
                queue.rx_counters.add_drops(drops);
            }
        }
        let xsk = &mut self.queues[self.tx].device;
        for request in self.arp_requests.drain(..) {
            let (mac, ip) = (self.our_mac, self.our_ip);
            xsk.send(|buf| arp_reply(&request, mac, ip, buf));
        }
        for (peer_mac, reply) in self.cookie_replies.drain(..) {
            xsk.send(|buf| reply.write_frame(self.our_mac, peer_mac, buf));
        }
        let cookies = (self.shards.cookie_stats(), self.shards.half_open());
        if cookies != self.published_cookies {
            self.published_cookies = cookies;
            self.queues[0].rx_counters.set_cookies(cookies.0, cookies.1);
        }
    }

    fn poll_shards(&mut self, now: u64) {
        let XdpCore {
            queues,
            tx,
            shards,
            neighbours,
            our_mac,
            ..
        } = self;
        let xsk = &mut queues[*tx].device;
        let polled = shards.poll(now, |_, packet| {
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
        self.load.worked |= polled > 0;
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
                let tls = match self.tls.as_ref().map(TlsAcceptor::session) {
                    None => Ok(None),
                    Some(Ok(session)) => Ok(Some(session)),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cannot start a TLS session; resetting");
                        Err(())
                    }
                };
                // Behind a PROXY port the client is known once its header is read;
                // otherwise it is the TCP peer, limited now.
                let deferred = self.proxy_protocol
                    || self
                        .websocket
                        .as_ref()
                        .is_some_and(WsAcceptor::is_behind_proxy);
                let address = match deferred {
                    true => Verdict::Admit(None),
                    false => match self.peer_of(shard, handle) {
                        Some(peer) => self.peers.admit(peer),
                        None => Verdict::Refuse,
                    },
                };
                let entry = self.conns.vacant_entry();
                let slot = u32::try_from(entry.key());
                let address = match address {
                    Verdict::Admit(address) => Some(address),
                    Verdict::Refuse => None,
                };
                let refused = address.is_none();
                let address = address.flatten();
                if refused || self.shutdown_started.is_some() || slot.is_err() || tls.is_err() {
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
                self.next_generation = self.next_generation.wrapping_add(1);
                let key = entry.key();
                let mut framed = match tls {
                    Ok(Some(session)) => Framed::with_tls(id, self.decoder, session),
                    _ => Framed::new(id, self.decoder),
                };
                if self.proxy_protocol {
                    framed.expect_proxy_header();
                }
                if let Some(ws) = &self.websocket {
                    framed.speak_websocket(ws.session());
                }
                if let Some(address) = address {
                    framed.hold_address(address);
                }
                entry.insert(Conn {
                    shard,
                    handle,
                    framed,
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
        // A congested connection is not read: its data waits in the socket's receive
        // buffer and TCP's window stops the peer. `write_dirty` reads it once it drains.
        while !conn.framed.read_stopped() && !conn.framed.is_congested() && socket.can_recv() {
            let n = match socket.recv_slice(&mut self.scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            progressed = true;
            let before = events.len();
            if let Some(outcome) = conn.framed.ingest(&self.scratch[..n], events) {
                let via = endpoint_addr(socket.remote_endpoint());
                match self.peers.settle(conn.framed.id(), via, outcome) {
                    Verdict::Admit(Some(slot)) => conn.framed.hold_address(slot),
                    Verdict::Admit(None) => {}
                    Verdict::Refuse => {
                        // Nothing it sent counts: not even what came with its header.
                        events.truncate(before);
                        conn.framed.refuse();
                    }
                }
            }
        }
        // A TLS handshake answer to write; a TLS failure (its alert, then close) or a
        // refused PROXY header (closed at once).
        let flush = conn.framed.has_output() || conn.framed.refused();
        if conn.framed.refused() {
            conn.closing = true;
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
        if flush {
            self.mark_dirty(key);
        }
    }

    /// The TCP peer of a shard's connection.
    fn peer_of(&mut self, shard: usize, handle: SocketHandle) -> Option<SocketAddr> {
        let socket = self.shards.shard_mut(shard)?.connection_mut(handle)?;
        Some(endpoint_addr(socket.remote_endpoint()))
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
        conn.framed.clear_output();
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
        let mut drained = std::mem::take(&mut self.drained);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            let Some(socket) = self.shards.writable(conn.shard, conn.handle) else {
                continue;
            };
            if !socket.may_send() && socket.state() != tcp::State::SynReceived {
                // Our side is closed or reset: queued output can never go out.
                conn.framed.clear_output();
            }
            // Into the socket's send buffer until it is full (a smoltcp send never fails
            // but by taking nothing).
            let written = conn
                .framed
                .write_out(true, |slices| {
                    let mut n = 0;
                    for slice in slices {
                        let k = socket.send_slice(slice).unwrap_or(0);
                        n += k;
                        if k < slice.len() {
                            break;
                        }
                    }
                    Ok(n)
                })
                .unwrap_or(0);
            let mut changed = written > 0;
            if !conn.framed.has_output() && conn.closing {
                // FIN after the buffered output. smoltcp keeps the socket (FIN-WAIT,
                // TIME-WAIT) until it is done; the connection is over for the control plane
                // now, as with the kernel transport. `reap_lingering` resets it if the peer
                // keeps sending into a connection nobody reads, or never finishes.
                socket.close();
                self.lingering.insert(
                    (conn.shard, conn.handle),
                    Linger {
                        deadline: now + LINGER_MS,
                        read_stopped: conn.framed.read_stopped(),
                    },
                );
                finished.push(key);
                changed = true;
            } else if conn.framed.has_output() {
                // The socket buffer is full: try again on a later round (ACKs arriving
                // wake this poller and free buffer space).
                conn.dirty = true;
                still_dirty.push(key);
            }
            let shard = conn.shard;
            if changed {
                self.shards.mark_dirty(shard);
            }
            match conn.framed.edge(self.max_outbound_bytes) {
                Some(edge @ TransportEvent::Drained { .. }) => {
                    events.push(edge);
                    drained.push(key);
                }
                Some(edge) => events.push(edge),
                None => {}
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
        // What arrived while they were congested is in their sockets already.
        for &key in &drained {
            self.read_conn(key, events);
        }
        drained.clear();
        self.drained = drained;
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
        events.push(TransportEvent::Closed {
            conn: conn.framed.id(),
        });
    }

    fn log_stopped(&self) {
        for (i, queue) in self.queues.iter().enumerate() {
            queue.device.log_stopped(self.index, i);
        }
        tracing::info!(
            core = self.index,
            refused_syns = self.shards.refused_syns(),
            duplicate_syns = self.shards.duplicate_syns(),
            kind = D::KIND,
            "poller stopped"
        );
    }
}

impl<D: Device + Send> CoreIo for XdpCore<D> {
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
        let limit = self.max_outbound_bytes;
        if self.conns[key].framed.queue(bytes, limit) {
            tracing::debug!(%conn, limit, "outbound limit exceeded; closing");
            self.abort(key);
        } else {
            self.mark_dirty(key);
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(key) = self.key_of(conn) {
            self.conns[key].begin_close();
            self.mark_dirty(key);
        }
    }

    fn note_congestion(&mut self, conn: ConnId) {
        if let Some(key) = self.key_of(conn) {
            self.conns[key].framed.note_congestion();
        }
    }

    fn transmit(&mut self, events: &mut Vec<TransportEvent>) {
        self.pump(events);
    }

    fn round_load(&self) -> RoundLoad {
        self.load
    }

    fn admit_connections(&mut self, admit: bool) {
        self.shards.set_admitting(admit);
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let own = match self.shards.poll_at() {
            Some(at) => at.saturating_sub(self.now_ms()).min(MAX_SLEEP_MS),
            None => MAX_SLEEP_MS,
        };
        let own = if self.shards.has_dirty() {
            0
        } else if self.queues.iter().any(|q| q.device.tx_pending() > 0) {
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
            for queue in &self.queues {
                queue.device.kick_rx()?;
            }
            return Ok(());
        }
        // A device with nothing to sleep on (DPDK) is looked at again after a tick.
        let ms = if self.queues.iter().any(|q| q.device.readable_fd().is_none()) {
            ms.min(POLL_TICK_MS)
        } else {
            ms
        };
        let ms = i32::try_from(ms).unwrap_or(i32::MAX);
        if let [queue] = &self.queues[..]
            && let Some(fd) = queue.device.readable_fd()
        {
            let ready = wait(fd, &self.event, ms)?;
            if ready.woken {
                let _ = self.event.drain();
            }
        } else {
            let sockets = self.queues.iter().filter_map(|q| q.device.readable_fd());
            wait_any(
                sockets.chain(std::iter::once(std::os::fd::AsFd::as_fd(&*self.event))),
                ms,
            )?;
            // Whatever woke us, a pending wake-up is consumed (drain does not block).
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
            self.conns[key].begin_close();
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

/// A smoltcp endpoint as a socket address (unspecified when there is none).
fn endpoint_addr(endpoint: Option<smoltcp::wire::IpEndpoint>) -> SocketAddr {
    endpoint.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |e| {
        SocketAddr::new(IpAddr::from(e.addr), e.port)
    })
}
