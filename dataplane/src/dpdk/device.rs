//! The DPDK device under the poller: a port queue's bursts as a [`Device`].
//!
//! [`BurstDevice`] is written against two small traits, [`BurstQueue`] (rx/tx burst,
//! allocate) and [`PacketBuf`] (one buffer's bytes), so its logic — receive a burst and
//! free it, build a frame in a fresh buffer, keep what the driver did not take for the
//! next flush, in order — is unit-tested with in-memory buffers, without an EAL. The
//! real queue is [`PortQueue`] with [`Mbuf`]s.
//!
//! Performance-critical path: the rx and tx vectors are allocated once; nothing is
//! logged per packet.

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys::dpdk::{Mbuf, PortQueue};
use crate::xdp::device::Device;
use crate::xdp::stats::SocketDrops;

/// Packets asked of the driver per rx burst.
const RX_BURST: u16 = 64;
/// Frames queued before a flush is forced (one tx burst's worth).
const TX_BURST: usize = 64;
/// Most frames kept waiting for a driver that does not take them; more are dropped (TCP
/// retransmits) rather than holding every mbuf of the pool.
const TX_BACKLOG: usize = 1024;

/// One packet buffer: an mbuf, or a test's vector.
pub trait PacketBuf {
    /// The packet's bytes (first segment).
    fn data(&self) -> &[u8];
    /// Every byte a packet can take, to build one in.
    fn room_mut(&mut self) -> &mut [u8];
    /// Sets the packet's length within the room.
    fn set_len(&mut self, len: usize);
    /// Whether the packet is one segment.
    fn is_contiguous(&self) -> bool;
}

/// One rx/tx queue pair of a port.
pub trait BurstQueue {
    /// Its buffers.
    type Buf: PacketBuf;
    /// Appends up to `max` received packets to `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Self::Buf>, max: u16) -> usize;
    /// Offers `packets`, front first; removes the ones taken and returns how many.
    fn tx_burst(&mut self, packets: &mut Vec<Self::Buf>) -> usize;
    /// A free buffer, or `None` when the pool is empty.
    fn alloc(&mut self) -> Option<Self::Buf>;
    /// The port's drop counters, for the one queue that reports them.
    fn drops(&self) -> Option<SocketDrops>;
}

impl PacketBuf for Mbuf {
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }
    fn room_mut(&mut self) -> &mut [u8] {
        Mbuf::room_mut(self)
    }
    fn set_len(&mut self, len: usize) {
        Mbuf::set_len(self, len);
    }
    fn is_contiguous(&self) -> bool {
        Mbuf::is_contiguous(self)
    }
}

impl BurstQueue for PortQueue {
    type Buf = Mbuf;

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: u16) -> usize {
        PortQueue::rx_burst(self, out, max)
    }

    fn tx_burst(&mut self, packets: &mut Vec<Mbuf>) -> usize {
        PortQueue::tx_burst(self, packets)
    }

    fn alloc(&mut self) -> Option<Mbuf> {
        PortQueue::alloc(self)
    }

    fn drops(&self) -> Option<SocketDrops> {
        // Port-wide counters: reported by queue 0 only, so the sum over queues is right.
        if self.queue() != 0 {
            return None;
        }
        let stats = self.port_stats().ok()?;
        Some(SocketDrops {
            rx_dropped: stats.ierrors,
            rx_ring_full: stats.imissed,
            fill_ring_empty: stats.rx_nombuf,
            invalid_descs: 0,
        })
    }
}

/// What a [`BurstDevice`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BurstCounters {
    /// Packets handed to the poller.
    pub received: u64,
    /// Multi-segment packets dropped unread (jumbo frames).
    pub segmented: u64,
    /// Frames queued for transmission.
    pub sent: u64,
    /// Frames not sent: no free buffer.
    pub no_buffer: u64,
    /// Frames not sent: the driver kept refusing and the backlog was full.
    pub backlog_full: u64,
}

/// A port queue as the poller's [`Device`]. See the module docs.
#[derive(Debug)]
pub struct BurstDevice<Q: BurstQueue> {
    queue: Q,
    rx: Vec<Q::Buf>,
    tx: Vec<Q::Buf>,
    counters: BurstCounters,
}

impl<Q: BurstQueue> BurstDevice<Q> {
    /// The device over `queue`.
    pub fn new(queue: Q) -> BurstDevice<Q> {
        BurstDevice {
            queue,
            rx: Vec::with_capacity(usize::from(RX_BURST)),
            tx: Vec::with_capacity(TX_BACKLOG),
            counters: BurstCounters::default(),
        }
    }

    /// Its counters.
    pub fn counters(&self) -> BurstCounters {
        self.counters
    }

    /// The queue under it.
    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// Offers the queued frames to the driver until it takes none.
    fn offer(&mut self) {
        while !self.tx.is_empty() && self.queue.tx_burst(&mut self.tx) > 0 {}
    }
}

impl<Q: BurstQueue> Device for BurstDevice<Q> {
    const KIND: &'static str = "DPDK queue";

    fn receive(&mut self, max: u32, mut handle: impl FnMut(&[u8])) -> u32 {
        let mut handed = 0u32;
        while handed < max {
            let ask = u16::try_from(max - handed)
                .unwrap_or(u16::MAX)
                .min(RX_BURST);
            if self.queue.rx_burst(&mut self.rx, ask) == 0 {
                break;
            }
            // Each buffer is dropped (freed) as the drain passes it.
            for buf in self.rx.drain(..) {
                if buf.is_contiguous() {
                    handle(buf.data());
                    handed += 1;
                } else {
                    self.counters.segmented += 1;
                }
            }
        }
        self.counters.received += u64::from(handed);
        handed
    }

    fn send(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        if self.tx.len() >= TX_BURST {
            self.offer();
        }
        if self.tx.len() >= TX_BACKLOG {
            self.counters.backlog_full += 1;
            return false;
        }
        let Some(mut buf) = self.queue.alloc() else {
            self.counters.no_buffer += 1;
            return false;
        };
        let room = buf.room_mut();
        let room_len = room.len();
        match build(room) {
            Some(len) if len > 0 && len <= room_len => {
                buf.set_len(len);
                self.tx.push(buf);
                self.counters.sent += 1;
                true
            }
            // Declined: the buffer is dropped here, back to its pool.
            _ => false,
        }
    }

    fn tx_pending(&self) -> u32 {
        u32::try_from(self.tx.len()).unwrap_or(u32::MAX)
    }

    fn flush_tx(&mut self) -> io::Result<()> {
        self.offer();
        Ok(())
    }

    fn readable_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn kick_rx(&self) -> io::Result<()> {
        Ok(())
    }

    fn drops(&self) -> Option<SocketDrops> {
        self.queue.drops()
    }

    fn log_stopped(&self, core: u8, index: usize) {
        tracing::info!(core, queue = index, counters = ?self.counters, drops = ?self.queue.drops(), "DPDK queue stopped");
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory [`BurstQueue`] whose buffers count their allocations and frees, so
    //! tests can check every buffer is freed exactly once.

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Buffers out of the pool minus buffers returned (never negative if each is freed
    /// once).
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Outstanding(Arc<AtomicI64>);

    impl Outstanding {
        pub(crate) fn get(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[derive(Debug)]
    pub(crate) struct FakeBuf {
        bytes: Vec<u8>,
        len: usize,
        segments: u8,
        outstanding: Outstanding,
    }

    impl Drop for FakeBuf {
        fn drop(&mut self) {
            self.outstanding.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl PacketBuf for FakeBuf {
        fn data(&self) -> &[u8] {
            &self.bytes[..self.len]
        }
        fn room_mut(&mut self) -> &mut [u8] {
            &mut self.bytes
        }
        fn set_len(&mut self, len: usize) {
            self.len = len.min(self.bytes.len());
        }
        fn is_contiguous(&self) -> bool {
            self.segments == 1
        }
    }

    /// Frames waiting to be received, with their segment counts.
    type Arriving = VecDeque<(Vec<u8>, u8)>;

    /// Both directions of a fake link, shared with the test while the queue is inside a
    /// poller: `inbox` is what arrives (bytes, segments), `wire` what was transmitted.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Link {
        pub(crate) inbox: Arc<Mutex<Arriving>>,
        pub(crate) wire: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Link {
        pub(crate) fn arrive(&self, frame: Vec<u8>, segments: u8) {
            self.inbox.lock().unwrap().push_back((frame, segments));
        }

        pub(crate) fn waiting(&self) -> usize {
            self.inbox.lock().unwrap().len()
        }

        pub(crate) fn take_sent(&self) -> Vec<Vec<u8>> {
            std::mem::take(&mut *self.wire.lock().unwrap())
        }
    }

    /// A port queue on a [`Link`], with a pool of `pool` buffers.
    #[derive(Debug, Default)]
    pub(crate) struct FakeQueue {
        pub(crate) link: Link,
        /// How many packets the next tx bursts take in total (`usize::MAX`: all).
        pub(crate) tx_room: usize,
        /// Buffers left in the pool.
        pub(crate) pool: usize,
        pub(crate) outstanding: Outstanding,
    }

    impl FakeQueue {
        pub(crate) fn new(pool: usize) -> FakeQueue {
            FakeQueue {
                tx_room: usize::MAX,
                pool,
                ..FakeQueue::default()
            }
        }

        fn buf(&mut self, bytes: Vec<u8>, len: usize, segments: u8) -> FakeBuf {
            self.outstanding.0.fetch_add(1, Ordering::SeqCst);
            FakeBuf {
                bytes,
                len,
                segments,
                outstanding: self.outstanding.clone(),
            }
        }
    }

    impl BurstQueue for FakeQueue {
        type Buf = FakeBuf;

        fn rx_burst(&mut self, out: &mut Vec<FakeBuf>, max: u16) -> usize {
            let inbox = self.link.inbox.clone();
            let mut inbox = inbox.lock().unwrap();
            let n = inbox.len().min(usize::from(max));
            for _ in 0..n {
                let (bytes, segments) = inbox.pop_front().unwrap_or_default();
                let len = bytes.len();
                let buf = self.buf(bytes, len, segments);
                out.push(buf);
            }
            n
        }

        fn tx_burst(&mut self, packets: &mut Vec<FakeBuf>) -> usize {
            let n = packets.len().min(self.tx_room);
            self.tx_room = self.tx_room.saturating_sub(n);
            for buf in packets.drain(..n) {
                // The "driver" frees it after transmitting.
                self.link.wire.lock().unwrap().push(buf.data().to_vec());
            }
            n
        }

        fn alloc(&mut self) -> Option<FakeBuf> {
            self.pool = self.pool.checked_sub(1)?;
            Some(self.buf(vec![0; 2048], 0, 1))
        }

        fn drops(&self) -> Option<SocketDrops> {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeQueue;
    use super::*;

    #[test]
    fn received_packets_are_handed_over_and_freed_and_chained_ones_dropped() {
        let queue = FakeQueue::new(0);
        queue.link.arrive(vec![1, 2, 3], 1);
        queue.link.arrive(vec![4; 3000], 2);
        queue.link.arrive(vec![5], 1);
        let outstanding = queue.outstanding.clone();
        let mut device = BurstDevice::new(queue);
        let mut seen = Vec::new();
        assert_eq!(device.receive(64, |frame| seen.push(frame.to_vec())), 2);
        assert_eq!(seen, vec![vec![1, 2, 3], vec![5]]);
        assert_eq!(outstanding.get(), 0, "every received buffer freed once");
        assert_eq!(device.counters().segmented, 1);
        assert_eq!(device.receive(64, |_| panic!("nothing left")), 0);
    }

    #[test]
    fn receive_stops_at_max_and_leaves_the_rest_on_the_queue() {
        let queue = FakeQueue::new(0);
        for i in 0..200u8 {
            queue.link.arrive(vec![i], 1);
        }
        let mut device = BurstDevice::new(queue);
        let mut n = 0;
        assert_eq!(device.receive(100, |_| n += 1), 100);
        assert_eq!(n, 100);
        assert_eq!(device.queue().link.waiting(), 100);
    }

    #[test]
    fn a_built_frame_is_sized_and_a_declined_one_returns_its_buffer() {
        let queue = FakeQueue::new(8);
        let outstanding = queue.outstanding.clone();
        let mut device = BurstDevice::new(queue);
        assert!(device.send(|buf| {
            buf[..4].copy_from_slice(b"ping");
            Some(4)
        }));
        assert!(!device.send(|_| None));
        assert!(
            !device.send(|buf| Some(buf.len() + 1)),
            "longer than the room"
        );
        assert!(!device.send(|_| Some(0)));
        assert_eq!(outstanding.get(), 1, "only the queued frame is out");
        assert_eq!(device.tx_pending(), 1);
        device.flush_tx().unwrap();
        assert_eq!(device.queue().link.take_sent(), vec![b"ping".to_vec()]);
        assert_eq!(device.tx_pending(), 0);
        assert_eq!(outstanding.get(), 0, "the driver freed what it sent");
    }

    #[test]
    fn what_the_driver_does_not_take_waits_in_order_for_the_next_flush() {
        let mut queue = FakeQueue::new(16);
        queue.tx_room = 2;
        let outstanding = queue.outstanding.clone();
        let mut device = BurstDevice::new(queue);
        for i in 0..5u8 {
            assert!(device.send(|buf| {
                buf[0] = i;
                Some(1)
            }));
        }
        device.flush_tx().unwrap();
        assert_eq!(device.tx_pending(), 3);
        device.queue.tx_room = usize::MAX;
        device.flush_tx().unwrap();
        let sent: Vec<u8> = device
            .queue()
            .link
            .take_sent()
            .iter()
            .map(|f| f[0])
            .collect();
        assert_eq!(sent, vec![0, 1, 2, 3, 4]);
        assert_eq!(outstanding.get(), 0);
    }

    #[test]
    fn an_empty_pool_or_a_stuck_driver_refuses_and_counts() {
        let mut device = BurstDevice::new(FakeQueue::new(1));
        assert!(device.send(|_| Some(1)));
        assert!(!device.send(|_| Some(1)));
        assert_eq!(device.counters().no_buffer, 1);

        let mut queue = FakeQueue::new(TX_BACKLOG + 10);
        queue.tx_room = 0;
        let outstanding = queue.outstanding.clone();
        let mut device = BurstDevice::new(queue);
        for _ in 0..TX_BACKLOG {
            assert!(device.send(|_| Some(1)));
        }
        assert!(!device.send(|_| Some(1)));
        assert_eq!(device.counters().backlog_full, 1);
        drop(device);
        assert_eq!(
            outstanding.get(),
            0,
            "dropping the device frees its backlog"
        );
    }

    /// The glue end to end, without an EAL: a poller over a burst device answers ARP for
    /// its address, answers a SYN with a SYN-ACK framed for the sender's MAC, drops and
    /// counts what is not its own, and every buffer is freed once.
    #[test]
    fn the_poller_over_a_burst_device_answers_arp_and_syns_and_drops_the_rest() {
        use petrel_proto::DecoderConfig;
        use smoltcp::wire::{
            ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, IpProtocol,
            Ipv4Packet, TcpPacket,
        };

        use crate::boundary::CoreIo;
        use crate::xdp::neighbour::arp_request;
        use crate::xdp::poller::{CoreSettings, Queue, XdpCore};
        use crate::xdp::stats::SharedRxCounters;
        use crate::xdp::tcp::ShardConfig;
        use crate::xdp::wire::tests::{OUR_MAC, OURS, PEER, PEER_MAC, syn_frame};

        let queue = FakeQueue::new(64);
        let (link, outstanding) = (queue.link.clone(), queue.outstanding.clone());
        let counters = std::sync::Arc::new(SharedRxCounters::default());
        let settings = CoreSettings {
            addr: OURS,
            prefix_len: 24,
            port: 9500,
            own_arp: true,
            shards_per_queue: 4,
            max_connections_per_shard: 16,
            max_connections_per_core: usize::MAX,
            syn_backlog: 1024,
            syn_cookies: true,
            shard: ShardConfig {
                addr: OURS,
                port: 9500,
                ..ShardConfig::default()
            },
            max_outbound_bytes: 1 << 20,
            decoder: DecoderConfig::default(),
            tls: None,
            proxy_protocol: false,
            peers: crate::PeerPolicy::default(),
            websocket: None,
        };
        let queues = vec![Queue {
            device: BurstDevice::new(queue),
            rx_counters: counters.clone(),
        }];
        let mut core = XdpCore::new(0, queues, OUR_MAC, &settings).unwrap();
        let mut events = Vec::new();

        let mut arp = vec![0u8; 64];
        let n = arp_request(PEER_MAC, PEER, OURS, &mut arp).unwrap();
        arp.truncate(n);
        link.arrive(arp, 1);
        let mut udp = syn_frame(OURS, 0);
        let mut ip = Ipv4Packet::new_unchecked(&mut udp[14..]);
        ip.set_next_header(IpProtocol::Udp);
        ip.fill_checksum();
        link.arrive(udp, 1);
        core.receive(&mut events);
        let sent = link.take_sent();
        assert_eq!(sent.len(), 1, "one ARP reply: {sent:?}");
        let frame = EthernetFrame::new_checked(&sent[0][..]).unwrap();
        assert_eq!(frame.ethertype(), EthernetProtocol::Arp);
        assert_eq!(frame.dst_addr(), PEER_MAC);
        match ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap() {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(source_hardware_addr, OUR_MAC);
                assert_eq!(source_protocol_addr, OURS);
            }
            other => panic!("not an IPv4 ARP reply: {other:?}"),
        }

        link.arrive(syn_frame(OURS, 0), 1);
        core.receive(&mut events);
        let sent = link.take_sent();
        assert_eq!(sent.len(), 1, "one SYN-ACK: {sent:?}");
        let frame = EthernetFrame::new_checked(&sent[0][..]).unwrap();
        assert_eq!((frame.src_addr(), frame.dst_addr()), (OUR_MAC, PEER_MAC));
        let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OURS, PEER));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.syn() && tcp.ack() && tcp.dst_port() == 40000);

        let mut seen = crate::xdp::wire::RxCounters::default();
        counters.add_to(&mut seen);
        assert_eq!((seen.arp, seen.tcp, seen.not_ours), (1, 1, 1), "{seen:?}");
        drop(core);
        assert_eq!(outstanding.get(), 0, "every buffer freed exactly once");
    }
}
