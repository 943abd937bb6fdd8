//! The client end of the AF_XDP dataplane: many outgoing TCP connections from a whole
//! source network, over AF_XDP sockets on one interface, with no file descriptor per
//! connection. It is what `petrel bench --client-mode xdp` drives load with, so one
//! process can open far more connections than its 20,000 descriptors and a source
//! address's ~64k ports allow.
//!
//! It reuses the server side's pieces: the same XDP filter, configured for a prefix
//! (every TCP segment and ARP request for an address of the source network goes to the
//! socket; the kernel has none of those addresses), the same classifier
//! ([`super::wire::classify_for`]), the same smoltcp shards ([`ShardSet::connect`] is the
//! active open; shards are AnyIP so any address of the network is theirs) and the same
//! Ethernet framing. What differs from the server's poller:
//! - one thread owns everything and the caller drives it ([`XdpClient::poll`]); nothing
//!   crosses threads;
//! - every queue of the interface gets a socket, because a kernel server picks its
//!   transmit queue freely and a veth delivers on the matching rx queue; a connection
//!   always transmits on one queue (its shard's index modulo the queues) so a server that
//!   serves queues separately keeps seeing it on one;
//! - the server's MAC address is resolved with ARP at start (the server must be on the
//!   interface's link); the client answers ARP for every address of its network.
//!
//! Sans-IO where it can be: the protocol work is in the shards; this module is the I/O
//! loop around them. Performance-critical path: no allocation per packet after warm-up.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{ArpRepr, EthernetAddress, Ipv4Cidr};

use super::filter::{AttachMode, FilterConfig, XdpFilter};
use super::neighbour::{NeighbourConfig, NeighbourTable, arp_reply, arp_request};
use super::rx::Intake;
use super::shards::{OpenError, ShardSet, ShardSetConfig};
use super::tcp::{ShardConfig, frame_ipv4};
use super::transport::{SocketDrops, TcpDrops, XdpError, bind_retrying, interface_mac};
use super::wire::RxCounters;
use crate::sys::event::{WAIT_ANY_MAX, wait_any};
use crate::sys::xsk::{Xsk, XskConfig};

/// Frames taken off one rx ring per batch.
const RX_BATCH: u32 = 64;
/// Batches per queue per [`XdpClient::poll`] before the shards get to run.
const RX_BATCHES_PER_POLL: usize = 16;
/// How long [`XdpClient::start`] waits for the server's ARP reply.
const ARP_TIMEOUT: Duration = Duration::from_secs(3);
/// Resets per second [`XdpClient::abort_all`] sends.
pub const ABORT_RATE: f64 = 50_000.0;
/// How often the ARP request is repeated meanwhile.
const ARP_RETRY: Duration = Duration::from_millis(200);

/// Settings of an [`XdpClient`].
#[derive(Debug, Clone)]
pub struct XdpClientConfig {
    /// The interface to send on (the load generator's end of the link).
    pub iface: String,
    /// The source network the client owns (`source_addr/source_prefix_len`): every
    /// address in it is the client's, none may be the kernel's. Its first host address
    /// also asks ARP for the server.
    pub source_addr: Ipv4Addr,
    /// Prefix length of the source network.
    pub source_prefix_len: u8,
    /// The server (on `iface`'s link).
    pub server: SocketAddrV4,
    /// rx queues to take (every rx queue of `iface`: see the module docs).
    pub queues: Vec<u32>,
    /// Native, generic, or native with fallback.
    pub attach: AttachMode,
    /// smoltcp shards.
    pub shards: usize,
    /// Most connections per shard.
    pub max_connections_per_shard: usize,
    /// Per-connection buffers, delayed ACK and queue limits (address and port are set here).
    pub shard: ShardConfig,
    /// AF_XDP socket settings (one socket per queue).
    pub xsk: XskConfig,
}

/// One connection of an [`XdpClient`]: its shard and its socket there. A key is reused
/// by smoltcp once [`XdpClient::poll`] has reported it closed.
pub type ConnKey = (usize, SocketHandle);

/// Where a connection is ([`XdpClient::phase`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnPhase {
    /// The handshake is under way.
    Opening,
    /// Established.
    Open,
    /// Over, or closing (with why).
    Ended(String),
}

/// What [`XdpClient::poll`] found.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// Live connections that need the caller: their handshake finished, they have data
    /// (or the server's FIN) to read, or room opened after a send found none. Only the
    /// shards that ran are looked at, and only these of their connections reported.
    pub touched: Vec<ConnKey>,
    /// Connections that ended (refused, reset, timed out, or closed and done) and are
    /// gone; their keys may be handed out again by the next [`XdpClient::connect`].
    pub closed: Vec<ConnKey>,
}

/// Counters of an [`XdpClient`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpClientStats {
    /// What the classifier saw.
    pub rx: RxCounters,
    /// Segments dropped before smoltcp (full receive queues).
    pub tcp_drops: TcpDrops,
    /// The kernel's counters of the sockets, summed over queues.
    pub sockets: SocketDrops,
    /// Frames not sent because a transmit ring stayed full.
    pub tx_dropped: u64,
}

/// Outgoing userspace-TCP connections over AF_XDP sockets. Dropping it closes the sockets
/// and detaches the filter (connections still open are abandoned: call
/// [`XdpClient::abort_all`] first to reset them).
pub struct XdpClient {
    // Dropped before the filter (field order): the filter must outlive its sockets.
    xsks: Vec<Xsk>,
    _filter: XdpFilter,
    shards: ShardSet,
    neighbours: NeighbourTable,
    our_mac: EthernetAddress,
    source: Ipv4Cidr,
    server: SocketAddrV4,
    server_mac: EthernetAddress,
    start: Instant,
    arp_requests: Vec<ArpRepr>,
    rx: RxCounters,
    tcp_drops: TcpDrops,
    tx_dropped: u64,
    touched: Vec<usize>,
    touched_mark: Vec<bool>,
    handles: Vec<SocketHandle>,
    /// Connections whose handshake is not done yet.
    opening: HashSet<ConnKey>,
    /// Connections a send found without room.
    blocked: HashSet<ConnKey>,
}

impl std::fmt::Debug for XdpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpClient")
            .field("source", &self.source)
            .field("server", &self.server)
            .field("queues", &self.xsks.len())
            .finish_non_exhaustive()
    }
}

impl XdpClient {
    /// Attaches the filter for `config.source` to `config.iface`, binds one AF_XDP socket
    /// per queue and resolves the server's MAC address. Needs root (CAP_NET_ADMIN,
    /// CAP_BPF) and must run in the interface's network namespace.
    pub fn start(config: XdpClientConfig) -> Result<XdpClient, XdpError> {
        let source = Ipv4Cidr::new(config.source_addr, config.source_prefix_len);
        if config.queues.is_empty() || config.queues.len() > WAIT_ANY_MAX {
            return Err(XdpError::Config("between 1 and 64 queues"));
        }
        if !(8..=30).contains(&config.source_prefix_len) {
            return Err(XdpError::Config(
                "the source network must be a prefix between /8 and /30",
            ));
        }
        if source.contains_addr(config.server.ip()) {
            return Err(XdpError::Config(
                "the server's address lies inside the client's source network",
            ));
        }
        let our_mac = interface_mac(&config.iface)?;
        let first = first_host(source);
        let mut filter = XdpFilter::load()?;
        filter.configure(&FilterConfig {
            addr: first,
            prefix_len: source.prefix_len(),
            ports: vec![],
            own_arp: true,
        })?;
        let mode = filter.attach(&config.iface, config.attach)?;
        tracing::info!(iface = %config.iface, ?mode, %source, "XDP client filter attached");
        let if_index = crate::sys::if_index(&config.iface)?;
        let mut xsks = Vec::with_capacity(config.queues.len());
        for &queue in &config.queues {
            let xsk = bind_retrying(if_index, queue, config.xsk)?;
            filter.register_socket(queue, &xsk)?;
            xsks.push(xsk);
        }
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            config.server,
        );
        let shards = ShardSet::new(
            ShardSetConfig {
                shards: config.shards,
                max_connections_per_shard: config.max_connections_per_shard,
                max_connections: usize::MAX,
                // A client's shards listen on nothing: no SYN reaches them.
                syn_backlog: 0,
                syn_cookies: false,
                seed,
                shard: ShardConfig {
                    addr: first,
                    prefix_len: source.prefix_len(),
                    port: 0,
                    any_ip: true,
                    ..config.shard
                },
            },
            0,
        );
        let n = shards.len();
        let mut client = XdpClient {
            xsks,
            _filter: filter,
            shards,
            neighbours: NeighbourTable::new(NeighbourConfig::default()),
            our_mac,
            source,
            server: config.server,
            server_mac: EthernetAddress::BROADCAST,
            start: Instant::now(),
            arp_requests: Vec::new(),
            rx: RxCounters::default(),
            tcp_drops: TcpDrops::default(),
            tx_dropped: 0,
            touched: Vec::with_capacity(n),
            touched_mark: vec![false; n],
            handles: Vec::new(),
            opening: HashSet::new(),
            blocked: HashSet::new(),
        };
        client.server_mac = client.resolve_server()?;
        tracing::info!(server = %config.server, mac = %client.server_mac, "server resolved");
        Ok(client)
    }

    /// Milliseconds since start: the clock the shards run on.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The source network's first host address (the one that asked ARP for the server).
    pub fn first_source(&self) -> Ipv4Addr {
        first_host(self.source)
    }

    /// Opens a connection from `local` (an address of the source network) to the server.
    /// The SYN leaves on the next [`XdpClient::poll`].
    pub fn connect(&mut self, local: SocketAddrV4) -> Result<ConnKey, OpenError> {
        if !self.source.contains_addr(local.ip()) {
            return Err(OpenError::Tcp(tcp::ConnectError::Unaddressable));
        }
        let key = self.shards.connect(local, self.server)?;
        self.opening.insert(key);
        Ok(key)
    }

    fn socket(&mut self, key: ConnKey) -> Option<&mut tcp::Socket<'static>> {
        self.shards.shard_mut(key.0)?.connection_mut(key.1)
    }

    /// Where connection `key` is.
    pub fn phase(&mut self, key: ConnKey) -> ConnPhase {
        match self.socket(key).map(|s| s.state()) {
            None | Some(tcp::State::Closed) => ConnPhase::Ended("closed".into()),
            Some(tcp::State::SynSent | tcp::State::SynReceived) => ConnPhase::Opening,
            Some(tcp::State::Established) => ConnPhase::Open,
            Some(state) => ConnPhase::Ended(format!("TCP state {state}")),
        }
    }

    /// Reads what connection `key` received: `Ok(0)` once the server finished sending,
    /// `WouldBlock` when nothing is waiting. The freed window goes out on the next poll.
    pub fn recv(&mut self, key: ConnKey, buf: &mut [u8]) -> io::Result<usize> {
        let socket = self.socket(key).ok_or(io::ErrorKind::ConnectionReset)?;
        match socket.recv_slice(buf) {
            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => {
                self.shards.mark_dirty(key.0);
                Ok(n)
            }
            Err(tcp::RecvError::Finished) => Ok(0),
            Err(tcp::RecvError::InvalidState) => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Queues bytes on connection `key` (as many as its buffer takes; `WouldBlock` when
    /// none); they leave on the next poll.
    pub fn send(&mut self, key: ConnKey, buf: &[u8]) -> io::Result<usize> {
        let socket = self
            .shards
            .writable(key.0, key.1)
            .ok_or(io::ErrorKind::ConnectionReset)?;
        if !socket.may_send() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        match socket.send_slice(buf) {
            Ok(0) => {
                self.blocked.insert(key);
                Err(io::ErrorKind::WouldBlock.into())
            }
            Ok(n) => {
                self.shards.mark_dirty(key.0);
                Ok(n)
            }
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Resets connection `key` (the RST leaves on the next poll; the key is reported
    /// closed once smoltcp let it go).
    pub fn abort(&mut self, key: ConnKey) {
        if let Some(socket) = self.socket(key) {
            socket.abort();
            self.shards.mark_dirty(key.0);
        }
    }

    /// One round: runs the shards with work (their packets go out), waits up to
    /// `timeout_ms` for frames unless work is left, receives what arrived (ARP answered,
    /// TCP to its shard), runs the shards again and transmits. Fills `out` with what the
    /// caller must look at.
    pub fn poll(&mut self, timeout_ms: u64, out: &mut PollOutcome) -> io::Result<()> {
        out.touched.clear();
        out.closed.clear();
        let now = self.now_ms();
        self.run_shards(now);
        let timeout = if self.shards.has_dirty() || self.xsks.iter().any(|x| x.tx_pending() > 0) {
            0
        } else {
            match self.shards.poll_at() {
                Some(at) => at.saturating_sub(now).min(timeout_ms),
                None => timeout_ms,
            }
        };
        if timeout > 0 {
            self.wait(timeout)?;
        }
        self.receive();
        let now = self.now_ms();
        self.run_shards(now);
        self.collect(out);
        Ok(())
    }

    fn wait(&self, timeout_ms: u64) -> io::Result<()> {
        let fds = self.xsks.iter().map(AsFd::as_fd);
        wait_any(fds, i32::try_from(timeout_ms).unwrap_or(i32::MAX)).map(|_| ())
    }

    /// Counters so far (the sockets' kernel statistics are read now).
    pub fn stats(&self) -> XdpClientStats {
        let mut sockets = SocketDrops::default();
        for xsk in &self.xsks {
            if let Ok(stats) = xsk.statistics() {
                sockets.add(&stats);
            }
        }
        XdpClientStats {
            rx: self.rx,
            tcp_drops: self.tcp_drops,
            sockets,
            tx_dropped: self.tx_dropped,
        }
    }

    /// Resets every connection and sends the resets, a shard at a time and at most
    /// [`ABORT_RATE`] a second: a million resets at once overflow the server's receive
    /// path (its fill ring runs dry and it drops frames for seconds). A reset that finds a
    /// full ring is dropped, and the server times that connection out.
    pub fn abort_all(&mut self) {
        let started = Instant::now();
        let mut sent = 0u64;
        for index in 0..self.shards.len() {
            let Some(shard) = self.shards.shard_mut(index) else {
                continue;
            };
            self.handles.clear();
            self.handles.extend_from_slice(shard.connection_handles());
            for &handle in &self.handles {
                if let Some(socket) = shard.connection_mut(handle) {
                    socket.abort();
                }
            }
            sent += self.handles.len() as u64;
            self.shards.mark_dirty(index);
            let now = self.now_ms();
            self.run_shards(now);
            // Keep to the pace; what arrives meanwhile is taken so the rings keep moving.
            let due = Duration::from_secs_f64(sent as f64 / ABORT_RATE);
            while started.elapsed() < due {
                std::thread::sleep(Duration::from_millis(1));
                self.receive();
            }
        }
        self.touched.clear();
        self.touched_mark.fill(false);
    }

    /// Asks for the server's MAC until it answers or [`ARP_TIMEOUT`] passes.
    fn resolve_server(&mut self) -> Result<EthernetAddress, XdpError> {
        let deadline = Instant::now() + ARP_TIMEOUT;
        let server = *self.server.ip();
        let mut next_request = Instant::now();
        loop {
            if let Some(mac) = self.neighbours.lookup_any(server) {
                return Ok(mac);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(XdpError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no ARP reply from the server {server} within {ARP_TIMEOUT:?}: the \
                         AF_XDP client needs the server on the interface's own link"
                    ),
                )));
            }
            if now >= next_request {
                let (mac, ip) = (self.our_mac, first_host(self.source));
                let xsk = &mut self.xsks[0];
                xsk.send(|buf| arp_request(mac, ip, server, buf));
                let _ = xsk.flush_tx();
                next_request = now + ARP_RETRY;
            }
            self.wait(20).map_err(XdpError::Io)?;
            self.receive();
        }
    }

    /// Takes what every queue received: ARP learned and answered, TCP to its shard.
    fn receive(&mut self) {
        let now_ms = self.now_ms();
        let XdpClient {
            xsks,
            shards,
            neighbours,
            arp_requests,
            source,
            rx,
            tcp_drops,
            ..
        } = self;
        let mut intake = Intake {
            ours: *source,
            answer_arp: true,
            now_ms,
            shards,
            neighbours,
            arp_requests,
            // A client listens on nothing: no SYN of its gets a cookie.
            cookie_replies: &mut Vec::new(),
            counters: rx,
            drops: tcp_drops,
        };
        for xsk in xsks.iter_mut() {
            for _ in 0..RX_BATCHES_PER_POLL {
                if xsk.receive(RX_BATCH, |frame| intake.take(frame)) < RX_BATCH {
                    break;
                }
            }
        }
        let mac = self.our_mac;
        for request in self.arp_requests.drain(..) {
            let ArpRepr::EthernetIpv4 {
                target_protocol_addr,
                ..
            } = request
            else {
                continue;
            };
            // Every address of the network is ours; the classifier checked it is in it.
            self.xsks[0].send(|buf| arp_reply(&request, mac, target_protocol_addr, buf));
        }
    }

    /// Runs the shards with work and transmits what they emit, each shard's packets on
    /// one queue.
    fn run_shards(&mut self, now: u64) {
        let XdpClient {
            xsks,
            shards,
            our_mac,
            server_mac,
            touched,
            touched_mark,
            tx_dropped,
            ..
        } = self;
        let queues = xsks.len();
        shards.poll(now, |shard, packet| {
            let xsk = &mut xsks[shard % queues];
            if !xsk.send(|buf| frame_ipv4(packet, *our_mac, *server_mac, buf)) {
                *tx_dropped += 1;
            }
        });
        for &index in shards.last_polled() {
            if !touched_mark[index] {
                touched_mark[index] = true;
                touched.push(index);
            }
        }
        for xsk in xsks.iter_mut() {
            if let Err(e) = xsk.flush_tx() {
                tracing::debug!(error = %e, "AF_XDP tx kick failed");
            }
        }
    }

    /// Reports the connections of every shard that ran since the last report.
    fn collect(&mut self, out: &mut PollOutcome) {
        for index in self.touched.drain(..) {
            self.touched_mark[index] = false;
            let Some(shard) = self.shards.shard_mut(index) else {
                continue;
            };
            self.handles.clear();
            shard.take_closed(&mut self.handles);
            for &handle in &self.handles {
                let key = (index, handle);
                self.opening.remove(&key);
                self.blocked.remove(&key);
                out.closed.push(key);
            }
            self.handles.clear();
            self.handles.extend_from_slice(shard.connection_handles());
            for &handle in &self.handles {
                let key = (index, handle);
                let Some(socket) = shard.connection_mut(handle) else {
                    continue;
                };
                let opened = !matches!(
                    socket.state(),
                    tcp::State::SynSent | tcp::State::SynReceived
                ) && self.opening.remove(&key);
                let readable = socket.can_recv() || !socket.may_recv();
                let writable = socket.can_send() && self.blocked.remove(&key);
                if opened || readable || writable {
                    out.touched.push(key);
                }
            }
        }
    }
}

/// The first host address of `net` (its network address + 1; `net` is /30 or wider).
fn first_host(net: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network().address()) + 1)
}
