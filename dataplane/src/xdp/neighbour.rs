//! L2 for the AF_XDP dataplane: ARP replies for our address and a neighbour table.
//!
//! smoltcp runs with `Medium::Ip`, so the dataplane does Ethernet itself: it answers ARP
//! requests for Petrel's address (when the XDP filter redirects ARP to it), and it learns
//! which MAC address reaches each IPv4 peer from ARP packets and from the source of every
//! valid TCP frame, so a reply can be framed without asking. Sans-IO: time comes in as a
//! parameter (milliseconds of any monotonic clock), nothing here reads a clock.
//!
//! Performance-critical path: learning from a frame whose peer is known is one hash lookup
//! and a store; the table never grows past its capacity.

use std::collections::HashMap;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, Ipv4Address,
};

/// Bytes of an Ethernet + ARP (Ethernet/IPv4) frame, before padding.
pub const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 28;

/// Builds the ARP reply to `request` into `buf` if it asks for `our_ip`; returns the frame
/// length. `None` if `request` is not a request for `our_ip` or `buf` is too short.
pub fn arp_reply(
    request: &ArpRepr,
    our_mac: EthernetAddress,
    our_ip: Ipv4Address,
    buf: &mut [u8],
) -> Option<usize> {
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = *request
    else {
        return None;
    };
    if target_protocol_addr != our_ip
        || !source_hardware_addr.is_unicast()
        || buf.len() < ARP_FRAME_LEN
    {
        return None;
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: our_mac,
        source_protocol_addr: our_ip,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let eth = EthernetRepr {
        src_addr: our_mac,
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    };
    let frame_buf = buf.get_mut(..ARP_FRAME_LEN)?;
    let mut frame = EthernetFrame::new_checked(frame_buf).ok()?;
    eth.emit(&mut frame);
    let mut packet = ArpPacket::new_checked(frame.payload_mut()).ok()?;
    reply.emit(&mut packet);
    Some(ARP_FRAME_LEN)
}

/// Builds an ARP request "who has `target`, tell `our_ip`" (broadcast) into `buf`;
/// returns the frame length, or `None` if `buf` is too short.
pub fn arp_request(
    our_mac: EthernetAddress,
    our_ip: Ipv4Address,
    target: Ipv4Address,
    buf: &mut [u8],
) -> Option<usize> {
    let request = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: our_mac,
        source_protocol_addr: our_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let frame_buf = buf.get_mut(..ARP_FRAME_LEN)?;
    let mut frame = EthernetFrame::new_checked(frame_buf).ok()?;
    EthernetRepr {
        src_addr: our_mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut frame);
    request.emit(&mut ArpPacket::new_checked(frame.payload_mut()).ok()?);
    Some(ARP_FRAME_LEN)
}

/// Settings of a [`NeighbourTable`].
#[derive(Debug, Clone, Copy)]
pub struct NeighbourConfig {
    /// Most entries held.
    pub capacity: usize,
    /// How long an entry stays valid after it was last confirmed, in milliseconds.
    pub ttl_ms: u64,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        NeighbourConfig {
            capacity: 4096,
            ttl_ms: 5 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: EthernetAddress,
    confirmed_ms: u64,
}

/// IPv4 → MAC, learned from traffic, bounded, with expiry.
#[derive(Debug)]
pub struct NeighbourTable {
    config: NeighbourConfig,
    entries: HashMap<Ipv4Address, Entry>,
    refused: u64,
}

impl NeighbourTable {
    /// An empty table.
    pub fn new(config: NeighbourConfig) -> NeighbourTable {
        NeighbourTable {
            config,
            entries: HashMap::with_capacity(config.capacity.min(1024)),
            refused: 0,
        }
    }

    /// Records that `ip` is reached through `mac` (seen at `now_ms`). Broadcast, multicast
    /// and all-zero MACs and addresses are ignored. A full table first drops expired
    /// entries, then the oldest one.
    pub fn learn(&mut self, ip: Ipv4Address, mac: EthernetAddress, now_ms: u64) {
        if !mac.is_unicast()
            || mac == EthernetAddress([0; 6])
            || ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
        {
            self.refused += 1;
            return;
        }
        if let Some(entry) = self.entries.get_mut(&ip) {
            entry.mac = mac;
            entry.confirmed_ms = now_ms;
            return;
        }
        if self.config.capacity == 0 {
            self.refused += 1;
            return;
        }
        if self.entries.len() >= self.config.capacity {
            self.evict(now_ms);
        }
        self.entries.insert(
            ip,
            Entry {
                mac,
                confirmed_ms: now_ms,
            },
        );
    }

    /// Learns from an ARP packet (request or reply) sent by a neighbour.
    pub fn learn_arp(&mut self, arp: &ArpRepr, now_ms: u64) {
        let ArpRepr::EthernetIpv4 {
            source_hardware_addr,
            source_protocol_addr,
            ..
        } = *arp
        else {
            return;
        };
        self.learn(source_protocol_addr, source_hardware_addr, now_ms);
    }

    /// The MAC for `ip`, if known and not expired.
    pub fn lookup(&self, ip: Ipv4Address, now_ms: u64) -> Option<EthernetAddress> {
        self.entries
            .get(&ip)
            .filter(|e| now_ms.saturating_sub(e.confirmed_ms) < self.config.ttl_ms)
            .map(|e| e.mac)
    }

    /// The MAC last learned for `ip`, even if expired. The dataplane only answers peers that
    /// talked to it, and does not send ARP requests of its own yet, so for a connection idle
    /// longer than the TTL the last known MAC is the best there is.
    pub fn lookup_any(&self, ip: Ipv4Address) -> Option<EthernetAddress> {
        self.entries.get(&ip).map(|e| e.mac)
    }

    /// Number of entries (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Learn attempts refused (unusable address, or capacity 0).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Makes room for one entry. O(n), only when full.
    fn evict(&mut self, now_ms: u64) {
        let ttl = self.config.ttl_ms;
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.confirmed_ms) < ttl);
        if self.entries.len() >= self.config.capacity
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.confirmed_ms)
                .map(|(ip, _)| *ip)
        {
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::wire::tests::{OUR_MAC, OURS, PEER, PEER_MAC, arp_request};
    use crate::xdp::wire::{Inbound, classify};

    fn parsed_request(target: Ipv4Address) -> ArpRepr {
        match classify(&arp_request(target), target) {
            Ok(Inbound::Arp { arp, .. }) => arp,
            other => panic!("expected ARP, got {other:?}"),
        }
    }

    #[test]
    fn answers_a_request_for_our_address_with_our_mac() {
        let request = parsed_request(OURS);
        let mut buf = [0u8; 64];
        let len = arp_reply(&request, OUR_MAC, OURS, &mut buf).unwrap();
        assert_eq!(len, ARP_FRAME_LEN);

        let frame = EthernetFrame::new_checked(&buf[..len]).unwrap();
        assert_eq!(frame.dst_addr(), PEER_MAC);
        assert_eq!(frame.src_addr(), OUR_MAC);
        let reply = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
        assert_eq!(
            reply,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: OUR_MAC,
                source_protocol_addr: OURS,
                target_hardware_addr: PEER_MAC,
                target_protocol_addr: PEER,
            }
        );
    }

    #[test]
    fn ignores_requests_for_others_replies_and_short_buffers() {
        let mut buf = [0u8; 64];
        assert_eq!(
            arp_reply(&parsed_request(PEER), OUR_MAC, OURS, &mut buf),
            None
        );
        let reply_to_us = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: PEER_MAC,
            source_protocol_addr: PEER,
            target_hardware_addr: OUR_MAC,
            target_protocol_addr: OURS,
        };
        assert_eq!(arp_reply(&reply_to_us, OUR_MAC, OURS, &mut buf), None);
        let mut short = [0u8; ARP_FRAME_LEN - 1];
        assert_eq!(
            arp_reply(&parsed_request(OURS), OUR_MAC, OURS, &mut short),
            None
        );
        let spoofed = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress::BROADCAST,
            source_protocol_addr: PEER,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: OURS,
        };
        assert_eq!(arp_reply(&spoofed, OUR_MAC, OURS, &mut buf), None);
    }

    #[test]
    fn learns_from_arp_and_expires() {
        let mut table = NeighbourTable::new(NeighbourConfig {
            capacity: 8,
            ttl_ms: 1000,
        });
        table.learn_arp(&parsed_request(OURS), 100);
        assert_eq!(table.lookup(PEER, 100), Some(PEER_MAC));
        assert_eq!(table.lookup(PEER, 1099), Some(PEER_MAC));
        assert_eq!(table.lookup(PEER, 1100), None);
        assert_eq!(table.lookup_any(PEER), Some(PEER_MAC), "stale but known");
        // A frame confirms it again.
        table.learn(PEER, PEER_MAC, 1100);
        assert_eq!(table.lookup(PEER, 1500), Some(PEER_MAC));
    }

    #[test]
    fn a_new_mac_replaces_the_old_one() {
        let mut table = NeighbourTable::new(NeighbourConfig::default());
        table.learn(PEER, PEER_MAC, 0);
        let moved = EthernetAddress([0x02, 0, 0, 0, 0, 9]);
        table.learn(PEER, moved, 1);
        assert_eq!(table.lookup(PEER, 1), Some(moved));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn unusable_addresses_are_refused() {
        let mut table = NeighbourTable::new(NeighbourConfig::default());
        table.learn(PEER, EthernetAddress::BROADCAST, 0);
        table.learn(PEER, EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]), 0);
        table.learn(Ipv4Address::BROADCAST, PEER_MAC, 0);
        table.learn(Ipv4Address::UNSPECIFIED, PEER_MAC, 0);
        assert!(table.is_empty());
        assert_eq!(table.refused(), 4);
    }

    #[test]
    fn capacity_is_a_hard_bound_oldest_goes_first() {
        let mut table = NeighbourTable::new(NeighbourConfig {
            capacity: 3,
            ttl_ms: 1_000_000,
        });
        for i in 0..10u8 {
            table.learn(Ipv4Address::new(10, 77, 0, 10 + i), PEER_MAC, u64::from(i));
            assert!(table.len() <= 3);
        }
        assert_eq!(
            table.lookup(Ipv4Address::new(10, 77, 0, 19), 10),
            Some(PEER_MAC)
        );
        assert_eq!(table.lookup(Ipv4Address::new(10, 77, 0, 10), 10), None);
    }
}
