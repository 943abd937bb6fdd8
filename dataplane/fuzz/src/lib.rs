//! The AF_XDP ingress without a NIC: whole Ethernet frames in, through the same
//! per-frame path the pollers run ([`petrel_dataplane::xdp::rx::Intake`]: classify,
//! learn the neighbour, ARP, userspace-TCP shards), then the shards polled, what they
//! transmit framed in Ethernet as the poller does, and what connections receive cut into
//! Petrel frames.
//!
//! A fuzz input is a sequence of [`Record`]s ([`decode`]): a frame (optionally with its
//! IPv4 and TCP checksums recomputed, so mutations get past the checksum checks and reach
//! smoltcp), or an application write, close or abort on an accepted connection; each
//! record also moves the clock. [`Lab::feed`] runs one record and checks, every time:
//! - nothing panics; the classifier's per-reason counts add up to the frames taken;
//! - every packet the shards transmit is a valid IPv4/TCP packet within the MTU, and
//!   framed in Ethernet it is one the peer's classifier accepts as TCP for it;
//! - every ARP request for us gets a reply the requester's classifier accepts as ARP;
//! - state stays bounded: no shard over its connection limit, the neighbour table within
//!   its capacity, no connection's read buffer over one frame;
//! - the connections reported accepted minus those reported closed are exactly the
//!   shards' live connections (no leaked or phantom connection).
//!
//! `examples/make_seeds.rs` plays the peer with the same [`Lab`] to write real seeds: a
//! handshake whose ACK matches the SYN-ACK, a Petrel frame in a data segment, FIN.

use std::collections::BTreeMap;

use bytes::BytesMut;
use petrel_dataplane::xdp::neighbour::{ARP_FRAME_LEN, NeighbourConfig, NeighbourTable, arp_reply};
use petrel_dataplane::xdp::rx::Intake;
use petrel_dataplane::xdp::shards::{ShardSet, ShardSetConfig};
use petrel_dataplane::xdp::stats::TcpDrops;
use petrel_dataplane::xdp::syn_cookie::CookieSynAck;
use petrel_dataplane::xdp::tcp::{ShardConfig, frame_ipv4};
use petrel_dataplane::xdp::wire::{Inbound, RxCounters, classify_for};
use petrel_proto::{DecoderConfig, FrameDecoder};
use smoltcp::iface::SocketHandle;
use smoltcp::wire::{
    ArpRepr, ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress,
    Ipv4Address, Ipv4Cidr, Ipv4Packet, TcpPacket,
};

/// Our address (the server's).
pub const OURS: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);
/// Our MAC.
pub const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
/// The peer the seeds play.
pub const PEER: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
/// The peer's MAC.
pub const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
/// The port the shards listen on.
pub const PORT: u16 = 9500;
/// Most connections per shard (small, so the limit is reached).
pub const MAX_PER_SHARD: usize = 3;
/// Neighbour table capacity (small, so eviction happens).
pub const NEIGHBOURS: usize = 8;
/// Largest Petrel frame body a connection's decoder accepts.
const MAX_BODY: u32 = 2048;
/// Clock steps a record can take, ms.
const STEPS_MS: [u64; 8] = [0, 1, 3, 10, 50, 300, 1_000, 10_000];

/// One input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A received Ethernet frame.
    Frame {
        /// Recompute the IPv4 header and TCP checksums first (when the lengths allow).
        fix_checksums: bool,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// The application writes `len` bytes of a Petrel frame to accepted connection `conn`
    /// (an index into the live connections, modulo their number).
    Write {
        /// Connection index.
        conn: u8,
        /// How many bytes.
        len: u8,
    },
    /// The application closes connection `conn` (FIN after the queued data).
    Close {
        /// Connection index.
        conn: u8,
    },
    /// The application aborts connection `conn` (RST).
    Abort {
        /// Connection index.
        conn: u8,
    },
    /// Nothing but time.
    Idle,
}

/// One record with its clock step (index into 0, 1, 3, 10, 50, 300, 1,000, 10,000 ms)
/// and whether the shards are polled after it (false: the next record joins the same
/// receive batch, so several segments meet smoltcp in one poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    /// Clock step index (0..8).
    pub step: u8,
    /// Poll after this record.
    pub poll: bool,
    /// The record.
    pub record: Record,
}

/// Reads records until the input runs out (at most 128).
pub fn decode(data: &[u8]) -> Vec<Timed> {
    let mut at = 0;
    let mut byte = || {
        let b = data.get(at).copied();
        at += 1;
        b
    };
    let mut records = Vec::new();
    while records.len() < 128 {
        let Some(ctrl) = byte() else { break };
        let step = ctrl >> 5;
        let record = match ctrl & 7 {
            0..=3 => {
                let len = usize::from(u16::from_le_bytes([
                    byte().unwrap_or(0),
                    byte().unwrap_or(0),
                ]))
                .min(2048);
                let mut bytes = Vec::with_capacity(len);
                for _ in 0..len {
                    match byte() {
                        Some(b) => bytes.push(b),
                        None => break,
                    }
                }
                Record::Frame {
                    fix_checksums: ctrl & 1 == 1,
                    bytes,
                }
            }
            4 => Record::Write {
                conn: byte().unwrap_or(0),
                len: byte().unwrap_or(0),
            },
            5 => Record::Close {
                conn: byte().unwrap_or(0),
            },
            6 => Record::Abort {
                conn: byte().unwrap_or(0),
            },
            _ => Record::Idle,
        };
        records.push(Timed {
            step,
            poll: ctrl & 0x08 == 0,
            record,
        });
    }
    records
}

/// Writes records in the format [`decode`] reads.
pub fn encode(records: &[Timed]) -> Vec<u8> {
    let mut out = Vec::new();
    for Timed { step, poll, record } in records {
        let step = ((step & 7) << 5) | if *poll { 0 } else { 0x08 };
        match record {
            Record::Frame {
                fix_checksums,
                bytes,
            } => {
                out.push(step | u8::from(*fix_checksums));
                out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Record::Write { conn, len } => out.extend_from_slice(&[step | 4, *conn, *len]),
            Record::Close { conn } => out.extend_from_slice(&[step | 5, *conn]),
            Record::Abort { conn } => out.extend_from_slice(&[step | 6, *conn]),
            Record::Idle => out.push(step | 7),
        }
    }
    out
}

/// Recomputes the IPv4 header checksum and, if the segment is long enough, the TCP
/// checksum of an Ethernet/IPv4 frame; leaves anything else alone.
pub fn fix_checksums(frame: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(&mut *frame) else {
        return;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    if usize::from(ip.header_len()) < 20 {
        return;
    }
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.more_frags() || ip.frag_offset() != 0 {
        return;
    }
    if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    }
}

/// What one connection has received.
#[derive(Debug)]
struct Reader {
    buf: BytesMut,
    decoder: FrameDecoder,
    stopped: bool,
}

/// The server's ingress and its shards, with the checks of the module docs.
pub struct Lab {
    now: u64,
    shards: ShardSet,
    neighbours: NeighbourTable,
    arp_requests: Vec<ArpRepr>,
    cookie_replies: Vec<(EthernetAddress, CookieSynAck)>,
    counters: RxCounters,
    drops: TcpDrops,
    frames_taken: u64,
    /// Accepted and not yet closed, per (shard, socket).
    conns: BTreeMap<(usize, SocketHandle), Reader>,
    scratch: Vec<u8>,
    /// Petrel frames decoded from connections so far.
    pub frames_decoded: u64,
    /// Decode errors so far.
    pub frame_errors: u64,
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Lab {
    /// A server with two small shards listening on [`OURS`]:[`PORT`], at time 0.
    pub fn new() -> Lab {
        let config = ShardSetConfig {
            shards: 2,
            max_connections_per_shard: MAX_PER_SHARD,
            // Below the shards' sum, so fuzzed SYNs also meet the core's limit.
            max_connections: 2 * MAX_PER_SHARD - 1,
            seed: 42,
            // Tiny, so fuzzed SYNs reach the cookie path and fuzzed ACKs are checked.
            syn_backlog: 2,
            syn_cookies: true,
            shard: ShardConfig {
                addr: OURS,
                prefix_len: 24,
                port: PORT,
                rx_buffer: 1024,
                tx_buffer: 1024,
                max_queued: 8,
                ..ShardConfig::default()
            },
        };
        Lab {
            now: 0,
            shards: ShardSet::new(config, 0),
            neighbours: NeighbourTable::new(NeighbourConfig {
                capacity: NEIGHBOURS,
                ttl_ms: 60_000,
            }),
            arp_requests: Vec::new(),
            cookie_replies: Vec::new(),
            counters: RxCounters::default(),
            drops: TcpDrops::default(),
            frames_taken: 0,
            conns: BTreeMap::new(),
            scratch: vec![0; 1500],
            frames_decoded: 0,
            frame_errors: 0,
        }
    }

    /// Live connections (accepted, not yet closed).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Runs one record (after moving the clock), polls unless the record is batched with
    /// the next, and checks everything; returns the Ethernet frames transmitted (TCP and
    /// ARP replies), in order.
    pub fn feed(&mut self, timed: &Timed) -> Vec<Vec<u8>> {
        let Timed { step, poll, record } = timed;
        self.now += STEPS_MS[usize::from(step & 7)];
        match record {
            Record::Frame {
                fix_checksums: fix,
                bytes,
            } => {
                let mut frame = bytes.clone();
                if *fix {
                    fix_checksums(&mut frame);
                }
                self.take(&frame);
            }
            Record::Write { conn, len } => {
                if let Some((shard, handle)) = self.pick(*conn) {
                    // A Ping frame's bytes, cut to `len`: whole or partial frames out.
                    let frame = [
                        b'P', b'T', 1, 0x03, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 8, 1,
                    ];
                    let n = usize::from(*len).min(frame.len());
                    if let Some(socket) = self
                        .shards
                        .shard_mut(shard)
                        .and_then(|s| s.connection_mut(handle))
                    {
                        let _ = socket.send_slice(&frame[..n]);
                    }
                    self.shards.mark_dirty(shard);
                }
            }
            Record::Close { conn } | Record::Abort { conn } => {
                if let Some((shard, handle)) = self.pick(*conn) {
                    if let Some(socket) = self
                        .shards
                        .shard_mut(shard)
                        .and_then(|s| s.connection_mut(handle))
                    {
                        if matches!(record, Record::Close { .. }) {
                            socket.close();
                        } else {
                            socket.abort();
                        }
                    }
                    self.shards.mark_dirty(shard);
                }
            }
            Record::Idle => {}
        }
        let sent = if *poll { self.poll() } else { Vec::new() };
        self.check();
        sent
    }

    /// Polls until nothing is due for a minute of simulated time (timers fire, queued
    /// data goes out, lingering connections finish) and checks again.
    pub fn settle(&mut self) {
        for _ in 0..64 {
            self.now += 1_000;
            self.poll();
            self.check();
        }
    }

    fn pick(&self, conn: u8) -> Option<(usize, SocketHandle)> {
        let n = self.conns.len();
        (n > 0).then(|| {
            *self
                .conns
                .keys()
                .nth(usize::from(conn) % n)
                .expect("in range")
        })
    }

    fn take(&mut self, frame: &[u8]) {
        let mut intake = Intake {
            ours: Ipv4Cidr::new(OURS, 32),
            answer_arp: true,
            now_ms: self.now,
            shards: &mut self.shards,
            neighbours: &mut self.neighbours,
            arp_requests: &mut self.arp_requests,
            cookie_replies: &mut self.cookie_replies,
            counters: &mut self.counters,
            drops: &mut self.drops,
        };
        intake.take(frame);
        self.frames_taken += 1;
    }

    fn poll(&mut self) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        // ARP replies first, as the poller sends them after the batch.
        for request in self.arp_requests.drain(..) {
            let mut buf = [0u8; ARP_FRAME_LEN];
            if let Some(len) = arp_reply(&request, OUR_MAC, OURS, &mut buf) {
                let ArpRepr::EthernetIpv4 {
                    source_protocol_addr: requester,
                    ..
                } = request
                else {
                    unreachable!("Intake keeps Ethernet/IPv4 ARP only");
                };
                let seen = classify_for(&buf[..len], Ipv4Cidr::new(requester, 32));
                assert!(
                    matches!(seen, Ok(Inbound::Arp { .. })),
                    "our ARP reply is not ARP to its requester: {seen:?}"
                );
                sent.push(buf[..len].to_vec());
            }
        }
        // Then the SYN cookies' SYN-ACKs, to the MAC each SYN came from.
        for (mac, reply) in self.cookie_replies.drain(..) {
            let mut buf = [0u8; 128];
            let len = reply.write_frame(OUR_MAC, mac, &mut buf).expect("a SYN-ACK fits");
            let seen = classify_for(&buf[..len], Ipv4Cidr::new(reply.tuple.remote, 32));
            assert!(
                matches!(seen, Ok(Inbound::Tcp { .. })),
                "the peer's classifier refuses our cookie SYN-ACK: {seen:?}"
            );
            sent.push(buf[..len].to_vec());
        }
        let now = self.now;
        let neighbours = &self.neighbours;
        self.shards.poll(now, |_, packet| {
            let ip = Ipv4Packet::new_checked(packet).expect("the shards send IPv4");
            assert!(packet.len() <= 1500, "a packet over the MTU");
            assert!(ip.verify_checksum(), "a bad IPv4 checksum out");
            let dst = ip.dst_addr();
            let Some(mac) = neighbours
                .lookup(dst, now)
                .or_else(|| neighbours.lookup_any(dst))
            else {
                return; // the poller drops it too: we never heard from that peer
            };
            let mut buf = vec![0u8; ETHERNET_HEADER_LEN + packet.len()];
            let len = frame_ipv4(packet, OUR_MAC, mac, &mut buf).expect("the frame fits");
            let seen = classify_for(&buf[..len], Ipv4Cidr::new(dst, 32));
            assert!(
                matches!(seen, Ok(Inbound::Tcp { .. })),
                "the peer's classifier refuses what we sent: {seen:?}"
            );
            sent.push(buf[..len].to_vec());
        });
        self.report_connections();
        self.read();
        sent
    }

    /// Accepted and closed connections of the shards just polled, as the poller reports
    /// them (closed first: smoltcp reuses handles).
    fn report_connections(&mut self) {
        let polled = self.shards.last_polled().to_vec();
        let mut handles = Vec::new();
        for shard in polled {
            let s = self.shards.shard_mut(shard).expect("a polled shard exists");
            handles.clear();
            s.take_closed(&mut handles);
            for &handle in &handles {
                // As the poller: a handle it never registered is ignored.
                self.conns.remove(&(shard, handle));
            }
            handles.clear();
            s.take_accepted(&mut handles);
            for &handle in &handles {
                let fresh = Reader {
                    buf: BytesMut::new(),
                    decoder: FrameDecoder::new(DecoderConfig {
                        max_body_len: MAX_BODY,
                    }),
                    stopped: false,
                };
                assert!(
                    self.conns.insert((shard, handle), fresh).is_none(),
                    "accepted a connection twice"
                );
            }
        }
    }

    /// What connections of the polled shards received, through Petrel's frame decoder.
    fn read(&mut self) {
        let polled = self.shards.last_polled().to_vec();
        for shard in polled {
            let s = self.shards.shard_mut(shard).expect("a polled shard exists");
            let handles: Vec<SocketHandle> = s
                .connection_handles()
                .iter()
                .copied()
                .filter(|h| s.wants_read(*h))
                .collect();
            for handle in handles {
                let reader = self
                    .conns
                    .get_mut(&(shard, handle))
                    .expect("a live connection was reported accepted");
                let socket = s.connection_mut(handle).expect("a live connection");
                while !reader.stopped && socket.can_recv() {
                    let n = match socket.recv_slice(&mut self.scratch) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    reader.buf.extend_from_slice(&self.scratch[..n]);
                    loop {
                        match reader.decoder.decode(&mut reader.buf) {
                            Ok(Some(_)) => self.frames_decoded += 1,
                            Ok(None) => break,
                            Err(e) => {
                                self.frame_errors += 1;
                                if e.is_fatal() {
                                    reader.stopped = true;
                                    reader.buf = BytesMut::new();
                                    break;
                                }
                            }
                        }
                    }
                    assert!(reader.buf.len() <= 16 + MAX_BODY as usize);
                }
            }
        }
    }

    fn check(&mut self) {
        let c = &self.counters;
        assert_eq!(
            c.arp + c.tcp + c.not_ours + c.malformed_total(),
            self.frames_taken,
            "a classified frame was not counted"
        );
        assert!(
            self.neighbours.len() <= NEIGHBOURS,
            "the neighbour table grew past its capacity"
        );
        let mut live = 0;
        for shard in 0..self.shards.len() {
            let s = self.shards.shard_mut(shard).expect("in range");
            assert!(
                s.connection_count() <= MAX_PER_SHARD,
                "a shard over its limit"
            );
            for &handle in s.connection_handles() {
                assert!(
                    self.conns.contains_key(&(shard, handle)),
                    "a live connection that was never reported accepted"
                );
                live += 1;
            }
        }
        assert_eq!(
            live,
            self.conns.len(),
            "a reported connection the shards no longer have"
        );
    }
}
