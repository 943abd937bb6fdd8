//! Received-frame classification: Ethernet → ARP or IPv4 → TCP, with checked views.
//!
//! Built on smoltcp's `wire` module (checked views, then typed reprs). Every frame the AF_XDP
//! socket delivers goes through [`classify`] exactly once, which either hands back what the
//! dataplane needs next — an ARP packet for our address, or a whole IPv4 packet carrying a
//! valid TCP segment for our address, ready for smoltcp's `Medium::Ip` interface — or says
//! why the frame is dropped.
//!
//! **No-panic contract:** `classify` accepts any byte slice, of any length and content,
//! and returns; every header access goes through a view whose length was checked first.
//! Malformed frames (truncated Ethernet/IP/TCP, impossible lengths, bad checksums, IP
//! fragments, garbage TCP options, sources no reply can go to) are reported as a
//! [`Malformed`] reason and counted by
//! [`RxCounters`]; the dataplane drops them.
//!
//! Checksums are verified here, in software, once: a veth peer with tx checksum offload on
//! sends partial checksums and every segment fails (see scripts/veth-lab.sh).
//!
//! Performance-critical path: no allocation, no logging.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Cidr, Ipv4Packet, TcpPacket, TcpRepr,
};

const IPV4_MIN_HEADER: usize = 20;
const TCP_MIN_HEADER: usize = 20;

/// What a received frame is, when it is for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// An Ethernet/IPv4 ARP packet whose target is our address.
    Arp {
        /// The Ethernet source.
        src_mac: EthernetAddress,
        /// The parsed ARP packet.
        arp: ArpRepr,
    },
    /// A TCP segment for our address with valid IP and TCP checksums.
    Tcp {
        /// The Ethernet source (the next hop back; feeds the neighbour table).
        src_mac: EthernetAddress,
        /// The IP source.
        src: Ipv4Address,
        /// The whole IPv4 packet (header + segment), trimmed to its total length (Ethernet
        /// padding removed): what a `Medium::Ip` smoltcp interface receives.
        ip_packet: &'a [u8],
    },
    /// Well-formed but not ours (another ethertype, address or protocol). The XDP filter
    /// should never send these; counted so a filter/userspace mismatch shows.
    NotOurs,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// ARP for our address that is truncated or not Ethernet/IPv4.
    BadArp,
    /// Shorter than a minimal IPv4 header.
    TruncatedIp,
    /// IPv4 version not 4, header length under 20, or total length not matching the frame.
    BadIpLength,
    /// IPv4 header checksum wrong.
    BadIpChecksum,
    /// An IPv4 fragment (Petrel does not reassemble).
    IpFragment,
    /// TCP header shorter than 20 bytes or than its data offset.
    TruncatedTcp,
    /// TCP checksum wrong.
    BadTcpChecksum,
    /// Unparseable TCP options, a zero port, or an impossible flag combination.
    BadTcpHeader,
    /// A TCP segment from an address no reply can go to: unspecified (0.0.0.0),
    /// broadcast or multicast (RFC 1122 §3.2.1.3, §4.2.3.10). smoltcp would answer a SYN
    /// from 0.0.0.0 and then panic on the unspecified destination of its SYN-ACK (found
    /// by the `xdp_ingress` fuzz target): one packet stopped a dataplane core.
    BadSourceAddress,
}

impl Malformed {
    /// Number of reasons.
    pub const COUNT: usize = 10;
}

/// Per-reason counts of what [`classify`] returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// ARP packets for us.
    pub arp: u64,
    /// Valid TCP segments for us.
    pub tcp: u64,
    /// Well-formed frames not for us.
    pub not_ours: u64,
    /// Dropped frames, indexed by `Malformed as usize`.
    pub malformed: [u64; Malformed::COUNT],
}

impl RxCounters {
    /// Counts one classification result.
    pub fn record(&mut self, result: &Result<Inbound<'_>, Malformed>) {
        match result {
            Ok(Inbound::Arp { .. }) => self.arp += 1,
            Ok(Inbound::Tcp { .. }) => self.tcp += 1,
            Ok(Inbound::NotOurs) => self.not_ours += 1,
            Err(reason) => self.malformed[*reason as usize] += 1,
        }
    }

    /// Frames dropped for `reason`.
    pub fn malformed(&self, reason: Malformed) -> u64 {
        self.malformed[reason as usize]
    }

    /// All dropped frames.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}

/// Classifies one received Ethernet frame for the host whose IPv4 address is `ours`.
pub fn classify(frame: &[u8], ours: Ipv4Address) -> Result<Inbound<'_>, Malformed> {
    classify_for(frame, Ipv4Cidr::new(ours, 32))
}

/// Classifies one received Ethernet frame for a host that owns every address of `ours`
/// (the load generator's userspace-TCP client owns a whole source network).
pub fn classify_for(frame: &[u8], ours: Ipv4Cidr) -> Result<Inbound<'_>, Malformed> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Malformed::TruncatedEthernet)?;
    let src_mac = eth.src_addr();
    match eth.ethertype() {
        EthernetProtocol::Arp => classify_arp(eth.payload(), src_mac, ours),
        EthernetProtocol::Ipv4 => classify_ipv4(eth.payload(), src_mac, ours),
        _ => Ok(Inbound::NotOurs),
    }
}

fn classify_arp(
    payload: &[u8],
    src_mac: EthernetAddress,
    ours: Ipv4Cidr,
) -> Result<Inbound<'_>, Malformed> {
    let packet = ArpPacket::new_checked(payload).map_err(|_| Malformed::BadArp)?;
    let arp = ArpRepr::parse(&packet).map_err(|_| Malformed::BadArp)?;
    let ArpRepr::EthernetIpv4 {
        target_protocol_addr,
        ..
    } = arp
    else {
        return Err(Malformed::BadArp);
    };
    if !ours.contains_addr(&target_protocol_addr) {
        return Ok(Inbound::NotOurs);
    }
    Ok(Inbound::Arp { src_mac, arp })
}

fn classify_ipv4(
    payload: &[u8],
    src_mac: EthernetAddress,
    ours: Ipv4Cidr,
) -> Result<Inbound<'_>, Malformed> {
    if payload.len() < IPV4_MIN_HEADER {
        return Err(Malformed::TruncatedIp);
    }
    // smoltcp's length check does not reject a header length under 20; we do.
    let unchecked = Ipv4Packet::new_unchecked(payload);
    if unchecked.version() != 4 || usize::from(unchecked.header_len()) < IPV4_MIN_HEADER {
        return Err(Malformed::BadIpLength);
    }
    let ip = Ipv4Packet::new_checked(payload).map_err(|_| Malformed::BadIpLength)?;
    if !ip.verify_checksum() {
        return Err(Malformed::BadIpChecksum);
    }
    let dst = ip.dst_addr();
    if !ours.contains_addr(&dst) || ip.next_header() != IpProtocol::Tcp {
        return Ok(Inbound::NotOurs);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(Malformed::IpFragment);
    }
    let total = usize::from(ip.total_len());
    let src = ip.src_addr();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return Err(Malformed::BadSourceAddress);
    }
    let segment = ip.payload();
    if segment.len() < TCP_MIN_HEADER {
        return Err(Malformed::TruncatedTcp);
    }
    let tcp = TcpPacket::new_checked(segment).map_err(|_| Malformed::TruncatedTcp)?;
    let (src_ip, dst_ip) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    if !tcp.verify_checksum(&src_ip, &dst_ip) {
        return Err(Malformed::BadTcpChecksum);
    }
    // Checksum verified above; the repr parse checks ports, flags and every option.
    TcpRepr::parse(&tcp, &src_ip, &dst_ip, &ChecksumCapabilities::ignored())
        .map_err(|_| Malformed::BadTcpHeader)?;
    Ok(Inbound::Tcp {
        src_mac,
        src,
        // `new_checked` proved total_len <= payload.len().
        ip_packet: payload.get(..total).ok_or(Malformed::BadIpLength)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use smoltcp::wire::{
        ArpOperation, ETHERNET_HEADER_LEN, EthernetRepr, Ipv4Repr, TcpControl, TcpSeqNumber,
    };

    use super::*;

    pub(crate) const OURS: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);
    pub(crate) const PEER: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
    pub(crate) const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
    pub(crate) const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);

    /// A valid Ethernet + IPv4 + TCP SYN frame from PEER to `dst`:9500, with an MSS option,
    /// checksums filled in, and `pad` zero bytes of Ethernet padding after it.
    pub(crate) fn syn_frame(dst: Ipv4Address, pad: usize) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 9500,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 64240,
            window_scale: Some(7),
            max_seg_size: Some(1460),
            sack_permitted: true,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: PEER,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: PEER_MAC,
            dst_addr: OUR_MAC,
            ethertype: EthernetProtocol::Ipv4,
        };
        let len = ETHERNET_HEADER_LEN + ip.buffer_len() + tcp.buffer_len();
        let mut buf = vec![0u8; len + pad];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
        tcp.emit(
            &mut segment,
            &IpAddress::Ipv4(PEER),
            &IpAddress::Ipv4(dst),
            &ChecksumCapabilities::default(),
        );
        buf
    }

    pub(crate) fn arp_request(target: Ipv4Address) -> Vec<u8> {
        let mut buf = vec![0u8; crate::xdp::neighbour::ARP_FRAME_LEN];
        let len = crate::xdp::neighbour::arp_request(PEER_MAC, PEER, target, &mut buf)
            .expect("an ARP frame fits");
        buf.truncate(len);
        buf
    }

    const IP: usize = ETHERNET_HEADER_LEN;
    const TCP: usize = ETHERNET_HEADER_LEN + 20;

    /// Recomputes the IPv4 header checksum after a deliberate edit.
    fn fix_ip_checksum(buf: &mut [u8]) {
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[IP..]);
        ip.fill_checksum();
    }

    fn fix_tcp_checksum(buf: &mut [u8]) {
        let end = IP + usize::from(Ipv4Packet::new_unchecked(&buf[IP..]).total_len());
        let mut tcp = TcpPacket::new_unchecked(&mut buf[TCP..end]);
        tcp.fill_checksum(&IpAddress::Ipv4(PEER), &IpAddress::Ipv4(OURS));
    }

    #[test]
    fn a_valid_syn_is_tcp_for_us_with_padding_trimmed() {
        let frame = syn_frame(OURS, 6);
        let result = classify(&frame, OURS);
        let Ok(Inbound::Tcp {
            src_mac,
            src,
            ip_packet,
        }) = result
        else {
            panic!("expected TCP, got {result:?}");
        };
        assert_eq!(src_mac, PEER_MAC);
        assert_eq!(src, PEER);
        assert_eq!(ip_packet.len(), frame.len() - 6 - ETHERNET_HEADER_LEN);
    }

    #[test]
    fn other_addresses_protocols_and_ethertypes_are_not_ours() {
        assert_eq!(classify(&syn_frame(PEER, 0), OURS), Ok(Inbound::NotOurs));
        let mut udp = syn_frame(OURS, 0);
        udp[IP + 9] = 17;
        fix_ip_checksum(&mut udp);
        assert_eq!(classify(&udp, OURS), Ok(Inbound::NotOurs));
        let mut ipv6 = syn_frame(OURS, 0);
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(classify(&ipv6, OURS), Ok(Inbound::NotOurs));
        assert_eq!(classify(&arp_request(PEER), OURS), Ok(Inbound::NotOurs));
    }

    #[test]
    fn a_host_owning_a_prefix_takes_tcp_and_arp_for_any_address_in_it() {
        // OURS is 10.77.0.1; a /16 starting at it owns 10.77.200.9 as well.
        let prefix = Ipv4Cidr::new(OURS, 16);
        let other = Ipv4Address::new(10, 77, 200, 9);
        let mut frame = syn_frame(other, 0);
        // The fixture's TCP checksum was computed for `other` already.
        assert!(matches!(
            classify_for(&frame, prefix),
            Ok(Inbound::Tcp { .. })
        ));
        assert!(matches!(
            classify_for(&arp_request(other), prefix),
            Ok(Inbound::Arp { .. })
        ));
        // Outside the prefix: not ours, as for a single address.
        let outside = Ipv4Address::new(10, 78, 0, 1);
        assert_eq!(
            classify_for(&syn_frame(outside, 0), prefix),
            Ok(Inbound::NotOurs)
        );
        // The TCP checksum is checked against the packet's own destination: moved to
        // another address of the prefix, the segment no longer verifies.
        frame[IP + 19] ^= 1;
        fix_ip_checksum(&mut frame);
        assert_eq!(classify_for(&frame, prefix), Err(Malformed::BadTcpChecksum));
    }

    #[test]
    fn arp_for_our_address_is_returned_parsed() {
        let frame = arp_request(OURS);
        let Ok(Inbound::Arp { src_mac, arp }) = classify(&frame, OURS) else {
            panic!("expected ARP");
        };
        assert_eq!(src_mac, PEER_MAC);
        assert!(matches!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_protocol_addr: PEER,
                ..
            }
        ));
    }

    #[test]
    fn truncated_ethernet_is_dropped() {
        let frame = syn_frame(OURS, 0);
        for len in 0..ETHERNET_HEADER_LEN {
            assert_eq!(
                classify(&frame[..len], OURS),
                Err(Malformed::TruncatedEthernet)
            );
        }
    }

    #[test]
    fn truncated_or_non_ipv4_arp_is_dropped() {
        let frame = arp_request(OURS);
        assert_eq!(classify(&frame[..20], OURS), Err(Malformed::BadArp));
        let mut ipx = frame.clone();
        ipx[IP + 2..IP + 4].copy_from_slice(&[0x81, 0x37]); // protocol type: not IPv4
        assert_eq!(classify(&ipx, OURS), Err(Malformed::BadArp));
    }

    #[test]
    fn truncated_ip_is_dropped() {
        let frame = syn_frame(OURS, 0);
        assert_eq!(
            classify(&frame[..IP + 19], OURS),
            Err(Malformed::TruncatedIp)
        );
        assert_eq!(classify(&frame[..IP], OURS), Err(Malformed::TruncatedIp));
    }

    #[test]
    fn impossible_ip_lengths_are_dropped() {
        // Total length beyond the frame (a truncated packet).
        let frame = syn_frame(OURS, 0);
        assert_eq!(
            classify(&frame[..frame.len() - 1], OURS),
            Err(Malformed::BadIpLength)
        );
        // Header length under 20 bytes.
        let mut short_ihl = frame.clone();
        short_ihl[IP] = 0x44;
        fix_ip_checksum(&mut short_ihl);
        assert_eq!(classify(&short_ihl, OURS), Err(Malformed::BadIpLength));
        // Header length beyond the total length.
        let mut long_ihl = frame.clone();
        long_ihl[IP] = 0x4f;
        assert_eq!(classify(&long_ihl, OURS), Err(Malformed::BadIpLength));
        // Total length under the header length.
        let mut tiny_total = frame.clone();
        tiny_total[IP + 2..IP + 4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(classify(&tiny_total, OURS), Err(Malformed::BadIpLength));
        // Version 6 in an IPv4 ethertype.
        let mut v6 = frame;
        v6[IP] = 0x65;
        assert_eq!(classify(&v6, OURS), Err(Malformed::BadIpLength));
    }

    #[test]
    fn bad_ip_checksum_is_dropped() {
        let mut frame = syn_frame(OURS, 0);
        frame[IP + 8] ^= 0x01; // TTL changed, checksum not
        assert_eq!(classify(&frame, OURS), Err(Malformed::BadIpChecksum));
    }

    #[test]
    fn ip_fragments_are_dropped() {
        for flags_offset in [0x2000u16 /* MF */, 0x0001 /* offset 8 */, 0x2010] {
            let mut frame = syn_frame(OURS, 0);
            frame[IP + 6..IP + 8].copy_from_slice(&flags_offset.to_be_bytes());
            fix_ip_checksum(&mut frame);
            assert_eq!(classify(&frame, OURS), Err(Malformed::IpFragment));
        }
        // Don't-fragment alone is fine.
        let mut df = syn_frame(OURS, 0);
        df[IP + 6..IP + 8].copy_from_slice(&0x4000u16.to_be_bytes());
        fix_ip_checksum(&mut df);
        assert!(matches!(classify(&df, OURS), Ok(Inbound::Tcp { .. })));
    }

    #[test]
    fn truncated_tcp_is_dropped() {
        // An IP packet carrying 19 bytes of TCP.
        let mut frame = syn_frame(OURS, 0);
        frame.truncate(TCP + 19);
        frame[IP + 2..IP + 4].copy_from_slice(&(20u16 + 19).to_be_bytes());
        fix_ip_checksum(&mut frame);
        assert_eq!(classify(&frame, OURS), Err(Malformed::TruncatedTcp));
        // A data offset pointing past the segment.
        let mut frame = syn_frame(OURS, 0);
        frame[TCP + 12] = 0xf0;
        assert_eq!(classify(&frame, OURS), Err(Malformed::TruncatedTcp));
        // A data offset under 5 words.
        let mut frame = syn_frame(OURS, 0);
        frame[TCP + 12] = 0x40;
        assert_eq!(classify(&frame, OURS), Err(Malformed::TruncatedTcp));
    }

    #[test]
    fn segments_from_unanswerable_sources_are_dropped() {
        // The xdp_ingress fuzz target's crash: a SYN from 0.0.0.0 made smoltcp panic on
        // the unspecified destination of its SYN-ACK.
        for src in [
            Ipv4Address::UNSPECIFIED,
            Ipv4Address::BROADCAST,
            Ipv4Address::new(224, 0, 0, 1),
        ] {
            let mut frame = syn_frame(OURS, 0);
            frame[IP + 12..IP + 16].copy_from_slice(&src.octets());
            fix_ip_checksum(&mut frame);
            let end = IP + usize::from(Ipv4Packet::new_unchecked(&frame[IP..]).total_len());
            TcpPacket::new_unchecked(&mut frame[TCP..end])
                .fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(OURS));
            assert_eq!(
                classify(&frame, OURS),
                Err(Malformed::BadSourceAddress),
                "{src}"
            );
        }
    }

    #[test]
    fn bad_tcp_checksum_is_dropped() {
        let mut frame = syn_frame(OURS, 0);
        frame[TCP + 4] ^= 0x80; // sequence number changed, checksum not
        assert_eq!(classify(&frame, OURS), Err(Malformed::BadTcpChecksum));
    }

    #[test]
    fn garbage_tcp_options_are_dropped() {
        let mut frame = syn_frame(OURS, 0);
        // The first option is MSS (kind 2, length 4); claim length 1, which is impossible.
        assert_eq!(frame[TCP + 20], 2);
        frame[TCP + 21] = 1;
        fix_tcp_checksum(&mut frame);
        assert_eq!(classify(&frame, OURS), Err(Malformed::BadTcpHeader));
        // An option running past the header.
        let mut frame = syn_frame(OURS, 0);
        frame[TCP + 21] = 40;
        fix_tcp_checksum(&mut frame);
        assert_eq!(classify(&frame, OURS), Err(Malformed::BadTcpHeader));
        // Port zero.
        let mut frame = syn_frame(OURS, 0);
        frame[TCP..TCP + 2].copy_from_slice(&[0, 0]);
        fix_tcp_checksum(&mut frame);
        assert_eq!(classify(&frame, OURS), Err(Malformed::BadTcpHeader));
    }

    #[test]
    fn counters_count_each_reason() {
        let mut counters = RxCounters::default();
        let good = syn_frame(OURS, 0);
        let mut bad = good.clone();
        bad[TCP + 4] ^= 1;
        for frame in [&good[..], &bad[..], &good[..3], &arp_request(OURS)[..]] {
            counters.record(&classify(frame, OURS));
        }
        assert_eq!(counters.tcp, 1);
        assert_eq!(counters.arp, 1);
        assert_eq!(counters.malformed(Malformed::BadTcpChecksum), 1);
        assert_eq!(counters.malformed(Malformed::TruncatedEthernet), 1);
        assert_eq!(counters.malformed_total(), 2);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every prefix and many single-byte corruptions of valid frames, plus random
        // frames: classify must return every time.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for base in [syn_frame(OURS, 4), arp_request(OURS)] {
            for len in 0..=base.len() {
                let _ = classify(&base[..len], OURS);
            }
            for _ in 0..20_000 {
                let mut frame = base.clone();
                for _ in 0..1 + next() % 3 {
                    let i = (next() as usize) % frame.len();
                    frame[i] = next() as u8;
                }
                let _ = classify(&frame, OURS);
            }
        }
        for _ in 0..20_000 {
            let len = (next() % 128) as usize;
            let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 14 {
                frame[12..14].copy_from_slice(&[0x08, 0x00]);
            }
            let _ = classify(&frame, OURS);
        }
    }
}
