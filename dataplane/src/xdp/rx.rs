//! What the dataplane does with one received frame, the same for the server's pollers
//! ([`super::transport`]) and the load generator's client ([`super::client`]): classify
//! it, hand a TCP segment to its shard, learn the sender's MAC, keep an ARP request or a
//! SYN cookie's SYN-ACK to be answered. Performance-critical path: no allocation, no
//! logging.
//!
//! A SYN that is answered with a cookie, shed or refused teaches the neighbour table
//! nothing: the cookie's SYN-ACK goes back to the MAC the SYN came from, and a flood of
//! spoofed sources must not push real peers out of the (bounded) table. The sender is
//! learned once its ACK proves the cookie.
//!
//! Public (not only to the pollers) so the fuzz target in `dataplane/fuzz` drives
//! exactly this path with whole Ethernet frames, without an AF_XDP socket.

use smoltcp::wire::{ArpOperation, ArpRepr, EthernetAddress, Ipv4Cidr};

use super::neighbour::NeighbourTable;
use super::shards::{RxVerdict, ShardSet};
use super::syn_cookie::CookieSynAck;
use super::transport::TcpDrops;
use super::wire::{Inbound, RxCounters, classify_for};

/// Where received frames go, borrowed from their owner for one batch.
pub struct Intake<'a> {
    /// The addresses that are ours (a server's one address, a client's network).
    pub ours: Ipv4Cidr,
    /// Keep ARP requests for `ours` to answer (we, not the kernel, own the addresses).
    pub answer_arp: bool,
    /// The owner's clock, milliseconds.
    pub now_ms: u64,
    /// Where TCP segments go.
    pub shards: &'a mut ShardSet,
    /// Learns the sender's MAC of every TCP segment and ARP packet for us.
    pub neighbours: &'a mut NeighbourTable,
    /// ARP requests to answer after the batch.
    pub arp_requests: &'a mut Vec<ArpRepr>,
    /// SYN cookie SYN-ACKs to send after the batch, with the MAC each SYN came from.
    pub cookie_replies: &'a mut Vec<(EthernetAddress, CookieSynAck)>,
    /// What [`classify_for`] said, per reason.
    pub counters: &'a mut RxCounters,
    /// Segments the shards refused.
    pub drops: &'a mut TcpDrops,
}

impl Intake<'_> {
    /// Takes one frame.
    pub fn take(&mut self, frame: &[u8]) {
        let result = classify_for(frame, self.ours);
        self.counters.record(&result);
        match result {
            Ok(Inbound::Tcp {
                src_mac,
                src,
                ip_packet,
            }) => {
                let learn = match self.shards.push_rx(ip_packet, self.now_ms) {
                    RxVerdict::RefusedSyn => {
                        self.drops.refused_syns += 1;
                        false
                    }
                    RxVerdict::ShedSyn => {
                        self.drops.shed_syns += 1;
                        false
                    }
                    RxVerdict::AtCapacity => {
                        self.drops.capacity_syns += 1;
                        false
                    }
                    RxVerdict::Cookie(reply) => {
                        self.cookie_replies.push((src_mac, reply));
                        false
                    }
                    RxVerdict::BacklogFull => false,
                    RxVerdict::QueueFull => {
                        self.drops.queue_full += 1;
                        true
                    }
                    RxVerdict::Queued(_)
                    | RxVerdict::OpenedFromCookie(_)
                    | RxVerdict::Deferred
                    | RxVerdict::DuplicateSyn
                    | RxVerdict::NotTcp => true,
                };
                if learn {
                    self.neighbours.learn(src, src_mac, self.now_ms);
                }
            }
            Ok(Inbound::Arp { arp, .. }) => {
                self.neighbours.learn_arp(&arp, self.now_ms);
                let request = matches!(
                    arp,
                    ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Request,
                        ..
                    }
                );
                if self.answer_arp && request {
                    self.arp_requests.push(arp);
                }
            }
            // Counted above; dropped.
            Ok(Inbound::NotOurs) | Err(_) => {}
        }
    }
}
