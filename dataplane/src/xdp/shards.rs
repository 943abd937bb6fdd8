//! Many small smoltcp shards per core, chosen by a hash of the 4-tuple.
//!
//! smoltcp scans every socket of an interface for each packet and each egress poll, so one
//! interface with 100,000 sockets would be O(n) per packet. A [`ShardSet`] splits a core's
//! connections over many [`TcpShard`]s; a packet goes to the shard its 4-tuple hashes to,
//! and only shards with something to do are polled: those that received a packet or were
//! marked dirty (the application wrote to one of their sockets), and those whose smoltcp
//! timer (`poll_at`) has expired. Timers sit in a min-heap with lazy deletion (a timer
//! wheel is the planned refinement). Each shard is bounded: a SYN for a full shard is
//! refused (dropped, counted; the client retries) instead of growing it. smoltcp's
//! listener has no backlog, so a second SYN for a shard within one poll is held back and
//! delivered after the listener is re-armed, in the same [`ShardSet::poll`] call.
//!
//! A retransmitted SYN of a connection the shard already has (its SYN-ACK was lost) is
//! dropped, not given to the re-armed listener: smoltcp hands a packet to the first socket
//! that accepts it, so the listener could take it and open a second half-open connection
//! for the same 4-tuple, whose different sequence numbers then reset the client's
//! connection. The existing socket retransmits its SYN-ACK on its own timer. (Found by a
//! million-connection storm with the AF_XDP load generator: 806,102 logged in, then a
//! reset.)
//!
//! Sans-IO: time is milliseconds passed in. Performance-critical path: no allocation per
//! packet after warm-up (the heap and dirty list keep their capacity).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddrV4;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{Ipv4Packet, TcpOption, TcpPacket};

use super::buffers::BufferPool;
use super::syn_cookie::{self, CookieSynAck, SYN_PACKET_LEN, SynCookies, Tuple};
use super::tcp::{ShardConfig, TcpShard};

/// Free buffer pairs a core keeps for reuse (about 1.5 MiB at the default sizes): enough
/// for the connections that are busy in one round; more are freed.
const MAX_FREE_BUFFER_PAIRS: usize = 256;

/// Settings of a [`ShardSet`].
#[derive(Debug, Clone, Copy)]
pub struct ShardSetConfig {
    /// Number of shards (at least 1).
    pub shards: usize,
    /// Most connections per shard; SYNs beyond are refused.
    pub max_connections_per_shard: usize,
    /// Most connections over all shards (the core's share of the server's
    /// `max_connections`); SYNs beyond are refused ([`RxVerdict::AtCapacity`]).
    pub max_connections: usize,
    /// Seed of the 4-tuple hash (random per process, so a client cannot aim at one shard).
    pub seed: u64,
    /// Most half-open (SYN-RECEIVED) connections over all shards. Past it a SYN is
    /// answered with a SYN cookie ([`super::syn_cookie`]) when `syn_cookies` is on, and
    /// dropped ([`RxVerdict::BacklogFull`]) when it is off. 0 with cookies on: every SYN
    /// gets a cookie.
    pub syn_backlog: usize,
    /// Answer SYNs past the backlog with cookies (a flood of spoofed SYNs then costs no
    /// memory and locks no real client out).
    pub syn_cookies: bool,
    /// Settings of every shard.
    pub shard: ShardConfig,
}

/// What happened to a packet given to [`ShardSet::push_rx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxVerdict {
    /// Queued in shard `0`.
    Queued(usize),
    /// A SYN for a full shard: dropped and counted.
    RefusedSyn,
    /// A SYN while the set holds its most connections ([`ShardSetConfig::max_connections`]):
    /// dropped and counted (the client's SYN retransmissions find room when some leave).
    AtCapacity,
    /// A SYN while new connections are not admitted ([`ShardSet::set_admitting`]: the
    /// core is over its CPU budget): dropped and counted; the client's SYN
    /// retransmission (1 s, then doubling) is its back-off.
    ShedSyn,
    /// A SYN for a shard whose listener already has one this round: delivered after the
    /// next poll re-arms it.
    Deferred,
    /// The shard's receive queue was full: dropped (TCP retransmits).
    QueueFull,
    /// A SYN past the half-open backlog: to be answered with this cookie SYN-ACK (by the
    /// caller, to the MAC the SYN came from); nothing was stored.
    Cookie(CookieSynAck),
    /// An ACK that carried a valid cookie: its connection was opened in shard `0`.
    OpenedFromCookie(usize),
    /// A SYN past the half-open backlog with cookies off: dropped (the client retries).
    BacklogFull,
    /// A SYN for a 4-tuple the shard already has a connection for (a retransmission):
    /// dropped; that connection's SYN-ACK retransmission answers it.
    DuplicateSyn,
    /// Not an IPv4 TCP packet (the dataplane should have classified it first).
    NotTcp,
}

/// Why [`ShardSet::connect`] opened nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The shard the 4-tuple hashes to holds its most connections already.
    #[error("the userspace TCP shard for this 4-tuple is full")]
    ShardFull,
    /// The set holds its most connections already.
    #[error("the userspace TCP holds its most connections already")]
    AtCapacity,
    /// smoltcp refused the endpoints (a zero port or an unspecified address).
    #[error("userspace TCP refused the endpoints: {0:?}")]
    Tcp(tcp::ConnectError),
}

impl From<tcp::ConnectError> for OpenError {
    fn from(e: tcp::ConnectError) -> OpenError {
        OpenError::Tcp(e)
    }
}

/// A core's shards, with dirty tracking and timers.
#[derive(Debug)]
pub struct ShardSet {
    config: ShardSetConfig,
    shards: Vec<TcpShard>,
    dirty: Vec<bool>,
    dirty_list: Vec<usize>,
    /// The `poll_at` each shard last reported; heap entries that disagree are stale.
    next_at: Vec<Option<u64>>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// Indexes of the shards the last `poll` polled.
    last_polled: Vec<usize>,
    /// Whether a shard is in `last_polled` (an O(1) test: thousands of shards can be
    /// polled in one round).
    in_last_polled: Vec<bool>,
    /// Shards whose listener has a SYN queued for the next poll.
    syn_pending: Vec<bool>,
    /// SYNs waiting for their shard's listener to be re-armed.
    deferred: Vec<Vec<u8>>,
    deferred_pool: Vec<Vec<u8>>,
    refused_syns: u64,
    duplicate_syns: u64,
    polls: u64,
    /// Half-open connections over all shards (the sum of [`TcpShard::half_open`]).
    half_open: usize,
    /// Connections over all shards (the sum of [`TcpShard::connection_count`]).
    connections: usize,
    /// SYNs refused at [`ShardSetConfig::max_connections`].
    capacity_syns: u64,
    /// SYNs queued for a listener or deferred, not yet polled: half-open connections to
    /// be, counted against the backlog so one receive batch cannot overshoot it.
    pending_syns: usize,
    cookies: SynCookies,
    /// When the last cookie was issued: ACKs of unknown connections are checked for a
    /// cookie only while one can still be valid.
    last_cookie_ms: Option<u64>,
    cookie_stats: CookieStats,
    /// Where the SYN a valid cookie stands for is rebuilt.
    syn_scratch: [u8; SYN_PACKET_LEN],
    /// The TCP buffers the shards' sockets are lent while they need them.
    pool: BufferPool,
    /// Whether new connections are taken ([`ShardSet::set_admitting`]).
    admitting: bool,
}

impl ShardSet {
    /// `config.shards` empty shards.
    pub fn new(config: ShardSetConfig, now_ms: u64) -> ShardSet {
        let n = config.shards.max(1);
        ShardSet {
            config,
            shards: (0..n)
                .map(|i| {
                    let shard = ShardConfig {
                        random_seed: mix(config.seed ^ mix(i as u64 + 1)),
                        ..config.shard
                    };
                    TcpShard::new(shard, now_ms)
                })
                .collect(),
            dirty: vec![false; n],
            dirty_list: Vec::with_capacity(n),
            next_at: vec![None; n],
            timers: BinaryHeap::with_capacity(n),
            last_polled: Vec::with_capacity(n),
            in_last_polled: vec![false; n],
            syn_pending: vec![false; n],
            deferred: Vec::new(),
            deferred_pool: Vec::new(),
            refused_syns: 0,
            duplicate_syns: 0,
            polls: 0,
            half_open: 0,
            connections: 0,
            capacity_syns: 0,
            pending_syns: 0,
            cookies: SynCookies::new(),
            last_cookie_ms: None,
            cookie_stats: CookieStats::default(),
            syn_scratch: [0; SYN_PACKET_LEN],
            pool: BufferPool::new(
                config.shard.rx_buffer,
                config.shard.tx_buffer,
                MAX_FREE_BUFFER_PAIRS,
            ),
            admitting: true,
        }
    }

    /// The shard a packet with this 4-tuple belongs to.
    pub fn shard_for(&self, src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> usize {
        let addrs = (u64::from(u32::from_be_bytes(src)) << 32) | u64::from(u32::from_be_bytes(dst));
        let ports = (u64::from(src_port) << 16) | u64::from(dst_port);
        let tuple = addrs ^ ports.rotate_left(40);
        (mix(tuple ^ self.config.seed) % self.shards.len() as u64) as usize
    }

    /// Routes one IPv4 TCP packet (as `wire::classify` returns it), received at `now_ms`,
    /// to its shard.
    pub fn push_rx(&mut self, ip_packet: &[u8], now_ms: u64) -> RxVerdict {
        let Ok(ip) = Ipv4Packet::new_checked(ip_packet) else {
            return RxVerdict::NotTcp;
        };
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return RxVerdict::NotTcp;
        };
        let index = self.shard_for(
            ip.src_addr().octets(),
            tcp.src_port(),
            ip.dst_addr().octets(),
            tcp.dst_port(),
        );
        let shard = &mut self.shards[index];
        if tcp.syn() && !tcp.ack() {
            if shard.has_connection(ip.src_addr(), tcp.src_port(), tcp.dst_port()) {
                self.duplicate_syns += 1;
                return RxVerdict::DuplicateSyn;
            }
            if !self.admitting {
                return RxVerdict::ShedSyn;
            }
            if shard.connection_count() >= self.config.max_connections_per_shard {
                self.refused_syns += 1;
                return RxVerdict::RefusedSyn;
            }
            // SYNs already queued will be connections too.
            if self.connections + self.pending_syns >= self.config.max_connections {
                self.capacity_syns += 1;
                return RxVerdict::AtCapacity;
            }
            if self.half_open + self.pending_syns >= self.config.syn_backlog
                && self.listens_on(tcp.dst_port())
                && !tcp.rst()
                && !tcp.fin()
            {
                if !self.config.syn_cookies {
                    self.cookie_stats.backlog_full += 1;
                    return RxVerdict::BacklogFull;
                }
                return RxVerdict::Cookie(self.issue_cookie(&ip, &tcp, now_ms));
            }
            // smoltcp's listener has no backlog: a second SYN in the same poll would be
            // answered with RST. Hold it until the listener is re-armed.
            if self.syn_pending[index] {
                if self.deferred.len() >= self.config.shard.max_queued {
                    return RxVerdict::QueueFull;
                }
                let mut buf = self.deferred_pool.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(ip_packet);
                self.deferred.push(buf);
                self.pending_syns += 1;
                return RxVerdict::Deferred;
            }
            self.syn_pending[index] = true;
            self.pending_syns += 1;
        } else if tcp.ack()
            && !tcp.rst()
            && !tcp.syn()
            && self.cookies_may_be_valid(now_ms)
            && self.listens_on(tcp.dst_port())
            && !self.shards[index].has_connection(ip.src_addr(), tcp.src_port(), tcp.dst_port())
            && let Some(verdict) = self.try_cookie(index, &ip, &tcp, ip_packet, now_ms)
        {
            return verdict;
        }
        let shard = &mut self.shards[index];
        if !shard.push_rx(ip_packet) {
            return RxVerdict::QueueFull;
        }
        self.mark_dirty(index);
        RxVerdict::Queued(index)
    }

    /// Runs `f` on shard `index` (with the buffer pool) and keeps the set's half-open and
    /// connection counts in step with what it did.
    fn counted<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut TcpShard, &mut BufferPool) -> R,
    ) -> R {
        let shard = &mut self.shards[index];
        let before = (shard.half_open(), shard.connection_count());
        let result = f(shard, &mut self.pool);
        self.half_open = self.half_open - before.0 + shard.half_open();
        self.connections = self.connections - before.1 + shard.connection_count();
        result
    }

    /// Shard `index`'s listener has been polled: its queued SYN (if any) is no longer
    /// pending.
    fn clear_syn_pending(&mut self, index: usize) {
        if std::mem::take(&mut self.syn_pending[index]) {
            self.pending_syns = self.pending_syns.saturating_sub(1);
        }
    }

    /// Whether the shards listen on `port` (a client's set listens on nothing).
    fn listens_on(&self, port: u16) -> bool {
        self.config.shard.port != 0 && port == self.config.shard.port
    }

    /// Whether a cookie issued lately could still be valid at `now_ms`.
    fn cookies_may_be_valid(&self, now_ms: u64) -> bool {
        self.last_cookie_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < 2 * syn_cookie::PERIOD_MS)
    }

    /// The cookie SYN-ACK for a SYN past the backlog.
    fn issue_cookie(
        &mut self,
        ip: &Ipv4Packet<&[u8]>,
        tcp: &TcpPacket<&[u8]>,
        now_ms: u64,
    ) -> CookieSynAck {
        let tuple = Tuple::of_received(ip, tcp);
        let client_isn = tcp.seq_number().0 as u32;
        let cookie = self.cookies.issue(&tuple, client_isn, syn_mss(tcp), now_ms);
        self.last_cookie_ms = Some(now_ms);
        self.cookie_stats.sent += 1;
        let shard = &self.config.shard;
        CookieSynAck {
            tuple,
            client_isn,
            cookie,
            our_mss: u16::try_from(shard.mtu.saturating_sub(40)).unwrap_or(u16::MAX),
            window: u16::try_from(shard.rx_buffer).unwrap_or(u16::MAX),
        }
    }

    /// For an ACK of no known connection: if it carries a valid cookie, opens its
    /// connection in shard `index` (`Some` verdict); if not, `None` (smoltcp answers it
    /// with a reset, as any stray segment).
    fn try_cookie(
        &mut self,
        index: usize,
        ip: &Ipv4Packet<&[u8]>,
        tcp: &TcpPacket<&[u8]>,
        ip_packet: &[u8],
        now_ms: u64,
    ) -> Option<RxVerdict> {
        let tuple = Tuple::of_received(ip, tcp);
        let client_isn = (tcp.seq_number().0 as u32).wrapping_sub(1);
        let cookie = (tcp.ack_number().0 as u32).wrapping_sub(1);
        let mss = match self.cookies.check(&tuple, client_isn, cookie, now_ms) {
            Ok(mss) => mss,
            Err(_) => {
                self.cookie_stats.rejected += 1;
                return None;
            }
        };
        if !self.admitting {
            return Some(RxVerdict::ShedSyn);
        }
        if self.shards[index].connection_count() >= self.config.max_connections_per_shard {
            self.refused_syns += 1;
            return Some(RxVerdict::RefusedSyn);
        }
        if self.connections + self.pending_syns >= self.config.max_connections {
            self.capacity_syns += 1;
            return Some(RxVerdict::AtCapacity);
        }
        // The SYN the cookie stands for, as the client sent it (less the options a cookie
        // cannot carry); its window is the ACK's, which is unscaled as no scaling was agreed.
        let from = tuple.reversed();
        let len = syn_cookie::write_syn(
            &from,
            client_isn,
            None,
            mss,
            tcp.window_len(),
            &mut self.syn_scratch,
        )?;
        let syn = self.syn_scratch;
        let opened = self.counted(index, |shard, pool| {
            shard.open_from_cookie(now_ms, &syn[..len], ip_packet, cookie, pool)
        });
        // The listener was re-armed by the poll that took the SYN (and any SYN queued
        // before it).
        self.clear_syn_pending(index);
        self.mark_dirty(index);
        if !opened {
            return Some(RxVerdict::QueueFull);
        }
        self.cookie_stats.opened += 1;
        Some(RxVerdict::OpenedFromCookie(index))
    }

    /// Opens a connection from `local` to `remote` (a client's active open) in the shard
    /// the replies' 4-tuple hashes to, so they find it; the SYN leaves on the next poll.
    /// Returns the shard and the socket's handle there.
    pub fn connect(
        &mut self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<(usize, SocketHandle), OpenError> {
        // The replies' source is `remote`: the same tuple order as `push_rx` hashes.
        let index = self.shard_for(
            remote.ip().octets(),
            remote.port(),
            local.ip().octets(),
            local.port(),
        );
        if self.shards[index].connection_count() >= self.config.max_connections_per_shard {
            return Err(OpenError::ShardFull);
        }
        if self.connections >= self.config.max_connections {
            return Err(OpenError::AtCapacity);
        }
        let handle = self.counted(index, |shard, _| shard.connect(local, remote))?;
        self.mark_dirty(index);
        Ok((index, handle))
    }

    /// Marks shard `index` for the next poll (e.g. after writing to one of its sockets).
    pub fn mark_dirty(&mut self, index: usize) {
        if let Some(dirty) = self.dirty.get_mut(index)
            && !*dirty
        {
            *dirty = true;
            self.dirty_list.push(index);
        }
    }

    /// Polls every dirty shard and every shard whose timer expired at `now_ms`, then hands
    /// each packet they emit to `transmit`, with the index of the shard that sent it. SYNs deferred because their shard's listener
    /// was taken are then delivered and their shards polled again, until none is left.
    /// Returns how many shard polls ran.
    pub fn poll(&mut self, now_ms: u64, mut transmit: impl FnMut(usize, &[u8])) -> usize {
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            if self.next_at[index] == Some(at) {
                self.next_at[index] = None;
                self.mark_dirty(index);
            }
        }
        for &index in &self.last_polled {
            self.in_last_polled[index] = false;
        }
        self.last_polled.clear();
        let mut polled = self.poll_dirty(now_ms, &mut transmit);
        // Each round re-arms the listeners the previous SYNs took, so at least one deferred
        // SYN per shard goes through per round.
        while !self.deferred.is_empty() {
            let mut batch = std::mem::take(&mut self.deferred);
            for packet in batch.drain(..) {
                self.pending_syns = self.pending_syns.saturating_sub(1);
                // May defer again (into `self.deferred`) when two wait for one shard, or
                // meet a full backlog: then its cookie SYN-ACK leaves here (its sender's
                // MAC was learned when the SYN was deferred).
                if let RxVerdict::Cookie(reply) = self.push_rx(&packet, now_ms)
                    && let Some(len) = reply.write_packet(&mut self.syn_scratch)
                {
                    let t = reply.tuple;
                    let index = self.shard_for(
                        t.remote.octets(),
                        t.remote_port,
                        t.local.octets(),
                        t.local_port,
                    );
                    transmit(index, &self.syn_scratch[..len]);
                }
                self.deferred_pool.push(packet);
            }
            if self.deferred.is_empty() {
                self.deferred = batch; // keep the allocation
            }
            polled += self.poll_dirty(now_ms, &mut transmit);
        }
        polled
    }

    fn poll_dirty(&mut self, now_ms: u64, transmit: &mut impl FnMut(usize, &[u8])) -> usize {
        let mut polled = 0;
        let mut list = std::mem::take(&mut self.dirty_list);
        for &index in &list {
            self.dirty[index] = false;
            self.clear_syn_pending(index);
            self.counted(index, |shard, pool| shard.poll(now_ms, pool));
            let shard = &mut self.shards[index];
            while let Some(packet) = shard.pop_tx() {
                transmit(index, &packet);
                shard.recycle_tx(packet);
            }
            let at = shard.poll_at(now_ms);
            if at != self.next_at[index] {
                self.next_at[index] = at;
                if let Some(at) = at {
                    self.timers.push(Reverse((at, index)));
                }
            }
            if !self.in_last_polled[index] {
                self.in_last_polled[index] = true;
                self.last_polled.push(index);
            }
            polled += 1;
        }
        list.clear();
        self.dirty_list = list;
        self.polls += polled as u64;
        polled
    }

    /// The shards the last [`ShardSet::poll`] polled: the only ones whose sockets can have
    /// changed since.
    pub fn last_polled(&self) -> &[usize] {
        &self.last_polled
    }

    /// Connection `handle` of shard `index`, lent buffers to write to. The shard is
    /// marked for the next poll, which sends what was written (and takes the buffers back
    /// once it is acknowledged, or at once if nothing was written).
    pub fn writable(
        &mut self,
        index: usize,
        handle: SocketHandle,
    ) -> Option<&mut tcp::Socket<'static>> {
        self.mark_dirty(index);
        self.shards.get_mut(index)?.lend(handle, &mut self.pool)
    }

    /// Whether some shard is marked for the next poll (the caller should not sleep).
    pub fn has_dirty(&self) -> bool {
        !self.dirty_list.is_empty()
    }

    /// The earliest shard timer, if any (when to call [`ShardSet::poll`] next at the latest).
    /// The top of the timer heap, after dropping its stale entries: O(log n), not a scan of
    /// every shard (a million connections are 60,000 shards, and this runs every round).
    pub fn poll_at(&mut self) -> Option<u64> {
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if self.next_at[index] == Some(at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Shard `index`, to read or write its connections (then [`ShardSet::mark_dirty`]).
    pub fn shard_mut(&mut self, index: usize) -> Option<&mut TcpShard> {
        self.shards.get_mut(index)
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: a set has at least one shard.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether SYNs of new connections are taken (true) or dropped as
    /// [`RxVerdict::ShedSyn`] (false: the owner's core is over its budget). Segments of
    /// connections the set already has are never affected.
    pub fn set_admitting(&mut self, admitting: bool) {
        self.admitting = admitting;
    }

    /// SYNs refused because their shard was full.
    pub fn refused_syns(&self) -> u64 {
        self.refused_syns
    }

    /// Retransmitted SYNs dropped because their connection already exists.
    pub fn duplicate_syns(&self) -> u64 {
        self.duplicate_syns
    }

    /// Shard polls so far.
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// SYNs refused because the set held its most connections.
    pub fn capacity_syns(&self) -> u64 {
        self.capacity_syns
    }

    /// Connections over all shards.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Half-open (SYN-RECEIVED) connections over all shards.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    /// What the SYN-cookie handshake did so far.
    pub fn cookie_stats(&self) -> CookieStats {
        self.cookie_stats
    }
}

/// Counters of the SYN-cookie handshake of one [`ShardSet`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CookieStats {
    /// SYNs answered with a cookie (the backlog was full).
    pub sent: u64,
    /// Connections opened by an ACK with a valid cookie.
    pub opened: u64,
    /// ACKs of unknown connections whose cookie was expired or forged (reset by smoltcp).
    pub rejected: u64,
    /// SYNs dropped because the backlog was full and cookies are off.
    pub backlog_full: u64,
}

/// The MSS option of a SYN, if it has one.
fn syn_mss(tcp: &TcpPacket<&[u8]>) -> Option<u16> {
    let mut options = tcp.options();
    while !options.is_empty() {
        let (rest, option) = TcpOption::parse(options).ok()?;
        match option {
            TcpOption::EndOfList => return None,
            TcpOption::MaxSegmentSize(mss) => return Some(mss),
            _ => options = rest,
        }
    }
    None
}

/// A 64-bit finaliser (splitmix64): every input bit affects every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::ETHERNET_HEADER_LEN;

    use super::*;
    use crate::xdp::wire::tests::{OURS, PEER, syn_frame};

    fn set(shards: usize, max: usize) -> ShardSet {
        set_with_backlog(shards, max, 1024)
    }

    /// A server's set whose half-open backlog is `backlog` (past it: cookies).
    fn set_with_backlog(shards: usize, max: usize, backlog: usize) -> ShardSet {
        ShardSet::new(
            ShardSetConfig {
                shards,
                max_connections_per_shard: max,
                max_connections: usize::MAX,
                seed: 42,
                syn_backlog: backlog,
                syn_cookies: true,
                shard: ShardConfig {
                    addr: OURS,
                    ..ShardConfig::default()
                },
            },
            0,
        )
    }

    /// A client's set: no listener, AnyIP for 10.78.0.0/16.
    fn client_set(shards: usize, max: usize) -> ShardSet {
        ShardSet::new(
            ShardSetConfig {
                shards,
                max_connections_per_shard: max,
                max_connections: usize::MAX,
                seed: 7,
                syn_backlog: 1024,
                syn_cookies: true,
                shard: ShardConfig {
                    addr: std::net::Ipv4Addr::new(10, 78, 0, 1),
                    prefix_len: 16,
                    port: 0,
                    any_ip: true,
                    ..ShardConfig::default()
                },
            },
            0,
        )
    }

    /// The fixture SYN from source port `port`, checksums fixed.
    fn syn_from(port: u16) -> Vec<u8> {
        let mut frame = syn_frame(OURS, 0);
        let packet = &mut frame[ETHERNET_HEADER_LEN..];
        let (src, dst) = {
            let ip = Ipv4Packet::new_unchecked(&*packet);
            (ip.src_addr(), ip.dst_addr())
        };
        let mut ip = Ipv4Packet::new_unchecked(packet);
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_src_port(port);
        tcp.fill_checksum(&src.into(), &dst.into());
        frame[ETHERNET_HEADER_LEN..].to_vec()
    }

    /// The initial sequence number of the SYN-ACK a set with hash seed `seed` answers
    /// the fixture SYN with.
    fn syn_ack_isn(seed: u64) -> u32 {
        let mut set = ShardSet::new(
            ShardSetConfig {
                shards: 4,
                max_connections_per_shard: 10,
                max_connections: usize::MAX,
                seed,
                syn_backlog: 1024,
                syn_cookies: true,
                shard: ShardConfig {
                    addr: OURS,
                    ..ShardConfig::default()
                },
            },
            0,
        );
        assert!(matches!(
            set.push_rx(&syn_from(40000), 0),
            RxVerdict::Queued(_)
        ));
        let mut isn = None;
        set.poll(1, |_, packet| {
            let ip = Ipv4Packet::new_checked(packet).expect("ip");
            let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
            isn = Some(tcp.seq_number().0 as u32);
        });
        isn.expect("a SYN-ACK")
    }

    #[test]
    fn initial_sequence_numbers_differ_between_sets_and_shards() {
        // Before, every shard of every process used smoltcp's seed 0: the same numbers.
        let isns: Vec<u32> = (1..=8u64).map(|seed| syn_ack_isn(seed * 0x9e37)).collect();
        let mut distinct = isns.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() >= 7, "{isns:?}");
        // The same seed gives the same numbers (deterministic tests stay possible).
        assert_eq!(syn_ack_isn(5), syn_ack_isn(5));
    }

    #[test]
    fn one_tuple_always_maps_to_one_shard_and_tuples_spread() {
        let set = set(16, 10);
        let a = set.shard_for([10, 0, 0, 2], 40000, [10, 0, 0, 1], 9500);
        assert_eq!(a, set.shard_for([10, 0, 0, 2], 40000, [10, 0, 0, 1], 9500));
        let mut used = [0u32; 16];
        for port in 30000..34000u16 {
            used[set.shard_for([10, 0, 0, 2], port, [10, 0, 0, 1], 9500)] += 1;
        }
        // 4,000 tuples over 16 shards: every shard gets a fair share (250 ± 40%).
        assert!(used.iter().all(|n| (150..=350).contains(n)), "{used:?}");
    }

    #[test]
    fn only_shards_with_work_are_polled() {
        let mut set = set(8, 10);
        let mut sent = 0;
        assert_eq!(set.poll(0, |_, _| sent += 1), 0);
        let RxVerdict::Queued(index) = set.push_rx(&syn_from(40000), 0) else {
            panic!("SYN not queued");
        };
        assert_eq!(set.poll(1, |_, _| sent += 1), 1);
        assert_eq!(set.last_polled(), &[index]);
        assert_eq!(sent, 1, "the SYN-ACK");
        assert_eq!(set.shard_mut(index).unwrap().connection_count(), 1);
        // Nothing new and no timer due yet: nothing is polled.
        assert_eq!(set.poll(2, |_, _| sent += 1), 0);
    }

    #[test]
    fn an_expired_timer_polls_its_shard_and_retransmits() {
        let mut set = set(4, 10);
        set.push_rx(&syn_from(40000), 0);
        let mut sent = 0;
        set.poll(0, |_, _| sent += 1);
        let at = set.poll_at().expect("a SYN-ACK retransmit timer");
        assert!(at > 0);
        assert_eq!(set.poll(at - 1, |_, _| sent += 1), 0);
        // Past the retransmission timeout the SYN-ACK goes out again.
        let mut later = at;
        while sent < 2 && later < at + 5_000 {
            set.poll(later, |_, _| sent += 1);
            later += 100;
        }
        assert_eq!(sent, 2);
    }

    #[test]
    fn a_full_shard_refuses_syns_and_counts_them() {
        let mut set = set(1, 2);
        for port in [40000, 40001] {
            assert!(matches!(
                set.push_rx(&syn_from(port), 0),
                RxVerdict::Queued(0)
            ));
            set.poll(0, |_, _| {});
        }
        assert_eq!(set.push_rx(&syn_from(40002), 0), RxVerdict::RefusedSyn);
        assert_eq!(set.refused_syns(), 1);
        assert_eq!(set.shard_mut(0).unwrap().connection_count(), 2);
    }

    #[test]
    fn a_core_over_budget_sheds_new_syns_but_keeps_its_connections() {
        let mut set = set(1, 100);
        assert!(matches!(
            set.push_rx(&syn_from(40000), 0),
            RxVerdict::Queued(0)
        ));
        set.poll(1, |_, _| {});
        set.set_admitting(false);
        assert_eq!(set.push_rx(&syn_from(40001), 0), RxVerdict::ShedSyn);
        // The connection the set has still gets its segments (here its SYN again).
        assert_eq!(set.push_rx(&syn_from(40000), 0), RxVerdict::DuplicateSyn);
        assert_eq!(set.shard_mut(0).unwrap().connection_count(), 1);
        set.set_admitting(true);
        assert!(matches!(
            set.push_rx(&syn_from(40001), 0),
            RxVerdict::Queued(0)
        ));
    }

    #[test]
    fn simultaneous_syns_for_one_shard_are_all_accepted() {
        // One shard, so every SYN meets the same listener within one poll.
        let mut set = set(1, 100);
        let mut verdicts = Vec::new();
        for port in 40000..40005 {
            verdicts.push(set.push_rx(&syn_from(port), 0));
        }
        assert_eq!(verdicts[0], RxVerdict::Queued(0));
        assert!(verdicts[1..].iter().all(|v| *v == RxVerdict::Deferred));
        let mut syn_acks = 0;
        let mut resets = 0;
        set.poll(1, |_, packet| {
            let ip = Ipv4Packet::new_checked(packet).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            if tcp.rst() {
                resets += 1;
            } else if tcp.syn() && tcp.ack() {
                syn_acks += 1;
            }
        });
        assert_eq!((syn_acks, resets), (5, 0));
        assert_eq!(set.shard_mut(0).unwrap().connection_count(), 5);
        assert_eq!(set.last_polled(), &[0]);
    }

    #[test]
    fn an_active_open_lands_where_the_replies_hash_and_completes() {
        use std::net::{Ipv4Addr, SocketAddrV4};
        let mut server = set(8, 100);
        let mut client = client_set(16, 100);
        let remote = SocketAddrV4::new(OURS, 9500);
        let mut opened = Vec::new();
        for k in 0..40u16 {
            let local = SocketAddrV4::new(Ipv4Addr::new(10, 78, 1, (k % 4) as u8), 2000 + k);
            opened.push(client.connect(local, remote).unwrap());
        }
        for now in 1..10 {
            let mut to_server = Vec::new();
            client.poll(now, |_, p| to_server.push(p.to_vec()));
            for p in &to_server {
                server.push_rx(p, now);
            }
            let mut to_client = Vec::new();
            server.poll(now, |_, p| to_client.push(p.to_vec()));
            for p in &to_client {
                // A reply for a shard other than the one that connected would be reset.
                assert!(matches!(client.push_rx(p, now), RxVerdict::Queued(_)));
            }
        }
        for (shard, handle) in opened {
            let socket = client
                .shard_mut(shard)
                .unwrap()
                .connection_mut(handle)
                .unwrap();
            assert_eq!(socket.state(), tcp::State::Established);
        }
    }

    #[test]
    fn an_active_open_into_a_full_shard_is_refused() {
        use std::net::{Ipv4Addr, SocketAddrV4};
        let mut client = client_set(1, 1);
        let remote = SocketAddrV4::new(OURS, 9500);
        let local = |port| SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 1), port);
        client.connect(local(2000), remote).unwrap();
        assert_eq!(
            client.connect(local(2001), remote),
            Err(OpenError::ShardFull)
        );
    }

    #[test]
    fn a_retransmitted_syn_does_not_open_a_second_connection() {
        let mut set = set(1, 100);
        let mut syn_acks = Vec::new();
        assert!(matches!(
            set.push_rx(&syn_from(40000), 0),
            RxVerdict::Queued(0)
        ));
        set.poll(1, |_, p| syn_acks.push(p.to_vec()));
        // The SYN-ACK was lost; the client sends its SYN again, once after the poll and
        // once twice within one poll.
        assert_eq!(set.push_rx(&syn_from(40000), 0), RxVerdict::DuplicateSyn);
        assert!(matches!(
            set.push_rx(&syn_from(40001), 0),
            RxVerdict::Queued(0)
        ));
        assert_eq!(set.push_rx(&syn_from(40001), 0), RxVerdict::Deferred);
        set.poll(2, |_, p| syn_acks.push(p.to_vec()));
        assert_eq!(set.shard_mut(0).unwrap().connection_count(), 2);
        assert_eq!(set.duplicate_syns(), 2);
        assert_eq!(syn_acks.len(), 2, "one SYN-ACK per connection, no reset");
    }

    #[test]
    fn garbage_is_not_tcp() {
        let mut set = set(2, 2);
        assert_eq!(set.push_rx(&[0x45, 0, 0], 0), RxVerdict::NotTcp);
        assert_eq!(set.push_rx(&[], 0), RxVerdict::NotTcp);
    }

    /// One exchange between a client's set and a server's: the client's packets to the
    /// server, the server's (its shards' and its cookie SYN-ACKs) back. Returns the
    /// server's verdicts.
    fn exchange(client: &mut ShardSet, server: &mut ShardSet, now: u64) -> Vec<RxVerdict> {
        let mut to_server = Vec::new();
        client.poll(now, |_, p| to_server.push(p.to_vec()));
        let mut to_client = Vec::new();
        let mut verdicts = Vec::new();
        for p in &to_server {
            let verdict = server.push_rx(p, now);
            if let RxVerdict::Cookie(reply) = verdict {
                let mut frame = [0u8; 128];
                let mac = smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]);
                let len = reply.write_frame(mac, mac, &mut frame).unwrap();
                to_client.push(frame[ETHERNET_HEADER_LEN..len].to_vec());
            }
            verdicts.push(verdict);
        }
        server.poll(now, |_, p| to_client.push(p.to_vec()));
        for p in &to_client {
            client.push_rx(p, now);
        }
        verdicts
    }

    fn established(set: &mut ShardSet, (shard, handle): (usize, SocketHandle)) -> bool {
        set.shard_mut(shard)
            .and_then(|s| s.connection_mut(handle))
            .is_some_and(|s| s.state() == tcp::State::Established)
    }

    #[test]
    fn past_the_backlog_a_syn_gets_a_cookie_and_no_state_and_the_ack_opens_the_connection() {
        use std::net::{Ipv4Addr, SocketAddrV4};
        let mut server = set_with_backlog(4, 100, 0);
        let mut client = client_set(4, 100);
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 78, 1, 1), 2000);
        let conn = client
            .connect(local, SocketAddrV4::new(OURS, 9500))
            .unwrap();
        // The SYN: a cookie, no socket.
        let verdicts = exchange(&mut client, &mut server, 1);
        assert!(
            matches!(verdicts[..], [RxVerdict::Cookie(_)]),
            "{verdicts:?}"
        );
        assert_eq!(server.half_open(), 0);
        assert_eq!(
            (0..4)
                .map(|i| server.shard_mut(i).unwrap().connection_count())
                .sum::<usize>(),
            0
        );
        // The ACK opens the connection.
        let verdicts = exchange(&mut client, &mut server, 2);
        assert!(
            matches!(verdicts[..], [RxVerdict::OpenedFromCookie(_)]),
            "{verdicts:?}"
        );
        assert!(
            established(&mut client, conn),
            "the client took the cookie SYN-ACK"
        );
        let mut accepted = Vec::new();
        let index = server.shard_for(local.ip().octets(), 2000, OURS.octets(), 9500);
        server
            .shard_mut(index)
            .unwrap()
            .take_accepted(&mut accepted);
        assert_eq!(accepted.len(), 1);
        let on_server = (index, accepted[0]);
        assert!(established(&mut server, on_server));
        assert_eq!(server.half_open(), 0);
        assert_eq!(
            server.cookie_stats(),
            CookieStats {
                sent: 1,
                opened: 1,
                rejected: 0,
                backlog_full: 0
            }
        );

        // Data both ways, across the two sequence spaces, more than a window's worth so
        // acknowledgements and window updates are translated too.
        let payload: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let (mut sent_up, mut sent_down) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        for now in 3..400 {
            let s = client.writable(conn.0, conn.1).unwrap();
            sent_up += s.send_slice(&payload[sent_up..]).unwrap();
            s.recv(|b| {
                got_down.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
            client.mark_dirty(conn.0);
            let s = server.writable(on_server.0, on_server.1).unwrap();
            sent_down += s.send_slice(&payload[sent_down..]).unwrap();
            s.recv(|b| {
                got_up.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
            server.mark_dirty(on_server.0);
            exchange(&mut client, &mut server, now);
            if got_up.len() == payload.len() && got_down.len() == payload.len() {
                break;
            }
        }
        assert!(
            got_up == payload,
            "client → server: {} of {} bytes",
            got_up.len(),
            payload.len()
        );
        assert!(
            got_down == payload,
            "server → client: {} of {} bytes",
            got_down.len(),
            payload.len()
        );

        // The server resets the connection: its RST leaves in the client's sequence space
        // (translated as smoltcp emits it, though the socket is gone by then), so the
        // client accepts it and its connection ends.
        server
            .shard_mut(on_server.0)
            .unwrap()
            .connection_mut(on_server.1)
            .unwrap()
            .abort();
        server.mark_dirty(on_server.0);
        for now in 400..410 {
            exchange(&mut client, &mut server, now);
        }
        assert!(
            client
                .shard_mut(conn.0)
                .unwrap()
                .connection_mut(conn.1)
                .is_none(),
            "the client's connection ended on the server's reset"
        );
    }

    #[test]
    fn a_retransmitted_syn_queued_before_the_cookie_ack_does_not_break_the_connection() {
        use std::net::{Ipv4Addr, SocketAddrV4};
        let mut server = set_with_backlog(4, 100, 0);
        let mut client = client_set(4, 100);
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 78, 1, 1), 2001);
        let conn = client
            .connect(local, SocketAddrV4::new(OURS, 9500))
            .unwrap();
        let mut syn = Vec::new();
        client.poll(1, |_, p| syn = p.to_vec());
        let RxVerdict::Cookie(reply) = server.push_rx(&syn, 1) else {
            panic!("a cookie was expected");
        };
        let mut syn_ack = [0u8; SYN_PACKET_LEN];
        let len = reply.write_packet(&mut syn_ack).unwrap();
        client.push_rx(&syn_ack[..len], 1);
        // The SYN is retransmitted while the backlog has room: queued for smoltcp, in the
        // same batch as the client's ACK of the cookie.
        server.config.syn_backlog = 1024;
        assert!(matches!(server.push_rx(&syn, 2), RxVerdict::Queued(_)));
        let mut acks = Vec::new();
        client.poll(2, |_, p| acks.push(p.to_vec()));
        let verdicts: Vec<_> = acks.iter().map(|a| server.push_rx(a, 2)).collect();
        assert!(
            verdicts.contains(&RxVerdict::OpenedFromCookie(server.shard_for(
                local.ip().octets(),
                2001,
                OURS.octets(),
                9500
            ))),
            "{verdicts:?}"
        );
        for now in 3..10 {
            exchange(&mut client, &mut server, now);
        }
        assert!(
            established(&mut client, conn),
            "no reset reached the client"
        );
        let index = server.shard_for(local.ip().octets(), 2001, OURS.octets(), 9500);
        let shard = server.shard_mut(index).unwrap();
        assert_eq!(
            shard.connection_count(),
            1,
            "one connection for the 4-tuple"
        );
        let mut accepted = Vec::new();
        shard.take_accepted(&mut accepted);
        let on_server = (index, *accepted.last().unwrap());
        assert!(established(&mut server, on_server));
        // And it carries data.
        let sent = client
            .writable(conn.0, conn.1)
            .unwrap()
            .send_slice(b"hello")
            .unwrap();
        assert_eq!(sent, 5);
        for now in 10..15 {
            exchange(&mut client, &mut server, now);
        }
        let mut buf = [0u8; 8];
        let n = server
            .shard_mut(on_server.0)
            .unwrap()
            .connection_mut(on_server.1)
            .unwrap()
            .recv_slice(&mut buf)
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(server.half_open(), 0);
    }

    /// An ACK from `port` acknowledging `ack` with sequence number `seq`, checksums right.
    fn ack_from(port: u16, seq: u32, ack: u32) -> Vec<u8> {
        let from = Tuple {
            remote: OURS,
            remote_port: 9500,
            local: PEER,
            local_port: port,
        };
        // A SYN-ACK layout with the SYN flag cleared is an ACK with an MSS option.
        let mut buf = vec![0u8; SYN_PACKET_LEN];
        let len = syn_cookie::write_syn(&from, seq, Some(ack), 1460, 4096, &mut buf).unwrap();
        buf.truncate(len);
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        let mut segment = TcpPacket::new_unchecked(ip.payload_mut());
        segment.set_syn(false);
        segment.fill_checksum(&PEER.into(), &OURS.into());
        buf
    }

    #[test]
    fn forged_expired_and_replayed_cookie_acks_open_nothing_more() {
        let mut server = set_with_backlog(2, 100, 0);
        let RxVerdict::Cookie(reply) = server.push_rx(&syn_from(40000), 1_000) else {
            panic!("a cookie was expected");
        };
        let isn = reply.client_isn;
        // Forged: a wrong cookie, or the right one for another ISN.
        let forged = ack_from(40000, isn.wrapping_add(1), reply.cookie.wrapping_add(2));
        assert!(
            matches!(server.push_rx(&forged, 1_001), RxVerdict::Queued(_)),
            "handed to smoltcp, which resets it"
        );
        let other_isn = ack_from(40000, isn.wrapping_add(2), reply.cookie.wrapping_add(1));
        assert!(matches!(
            server.push_rx(&other_isn, 1_001),
            RxVerdict::Queued(_)
        ));
        // Expired: two periods later.
        let good = ack_from(40000, isn.wrapping_add(1), reply.cookie.wrapping_add(1));
        let late = 1_000 + 2 * syn_cookie::PERIOD_MS;
        // (Another SYN keeps cookies in use, so the late ACK is checked at all.)
        assert!(matches!(
            server.push_rx(&syn_from(40001), late - 1),
            RxVerdict::Cookie(_)
        ));
        assert!(matches!(server.push_rx(&good, late), RxVerdict::Queued(_)));
        assert_eq!(server.cookie_stats().rejected, 3);
        server.poll(late, |_, _| {});
        assert_eq!(
            (0..2)
                .map(|i| server.shard_mut(i).unwrap().connection_count())
                .sum::<usize>(),
            0
        );
        // Valid: opens one connection; the same ACK replayed opens no second one.
        assert!(matches!(
            server.push_rx(&good, 1_002),
            RxVerdict::OpenedFromCookie(_)
        ));
        server.poll(1_002, |_, _| {});
        assert!(matches!(server.push_rx(&good, 1_003), RxVerdict::Queued(_)));
        server.poll(1_003, |_, _| {});
        assert_eq!(server.cookie_stats().opened, 1);
        assert_eq!(
            (0..2)
                .map(|i| server.shard_mut(i).unwrap().connection_count())
                .sum::<usize>(),
            1
        );
    }

    #[test]
    fn past_max_connections_syns_are_refused_until_one_leaves() {
        let mut server = set(8, 100);
        server.config.max_connections = 3;
        let mut verdicts = Vec::new();
        for port in 40000..40005u16 {
            verdicts.push(server.push_rx(&syn_from(port), 1));
            server.poll(1, |_, _| {});
        }
        let refused = verdicts
            .iter()
            .filter(|v| **v == RxVerdict::AtCapacity)
            .count();
        assert_eq!(refused, 2, "{verdicts:?}");
        assert_eq!((server.connections(), server.capacity_syns()), (3, 2));
        // One connection goes: a SYN gets in again.
        let (index, handle) = (0..8)
            .find_map(|i| {
                let shard = server.shard_mut(i)?;
                let mut accepted = Vec::new();
                shard.take_accepted(&mut accepted);
                accepted.first().map(|h| (i, *h))
            })
            .expect("an accepted connection");
        server
            .shard_mut(index)
            .unwrap()
            .connection_mut(handle)
            .unwrap()
            .abort();
        server.mark_dirty(index);
        server.poll(2, |_, _| {});
        assert_eq!(server.connections(), 2);
        assert!(matches!(
            server.push_rx(&syn_from(40009), 3),
            RxVerdict::Queued(_)
        ));
    }

    #[test]
    fn a_flood_of_syns_holds_at_most_the_backlog_half_open() {
        let mut server = set_with_backlog(8, 10_000, 16);
        for port in 1000..3000u16 {
            match server.push_rx(&syn_from(port), 5) {
                RxVerdict::Cookie(_) => {}
                RxVerdict::Queued(_) | RxVerdict::Deferred => {}
                other => panic!("{other:?}"),
            }
            if port % 64 == 0 {
                server.poll(5, |_, _| {});
            }
        }
        server.poll(5, |_, _| {});
        let held: usize = (0..8)
            .map(|i| server.shard_mut(i).unwrap().connection_count())
            .sum();
        assert!(server.half_open() <= 16, "{} half-open", server.half_open());
        assert_eq!(held, server.half_open());
        // Deferred SYNs that met a full backlog got their cookies in `poll`.
        assert_eq!(server.cookie_stats().sent as usize + held, 2000);
        // With cookies off the rest are dropped instead.
        let mut strict = set_with_backlog(8, 10_000, 16);
        strict.config.syn_cookies = false;
        for port in 1000..1100u16 {
            strict.push_rx(&syn_from(port), 5);
            strict.poll(5, |_, _| {});
        }
        assert_eq!(strict.half_open(), 16);
        assert_eq!(strict.cookie_stats().backlog_full, 84);
    }
}
