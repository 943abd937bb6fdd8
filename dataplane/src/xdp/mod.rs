//! The AF_XDP dataplane (the fast path): NIC queues owned through AF_XDP sockets, TCP in
//! user space (smoltcp), Ethernet and ARP done here.
//!
//! It implements the same transport boundary as [`crate::kernel`]
//! ([`crate::boundary::CoreIo`]: the same `TransportEvent`s out, the same sends and
//! closes in), so the control plane never knows which one it runs on. One packet's path:
//!
//! ```text
//! NIC rx queue q ─▶ XDP filter (vendor/xdp): Petrel's TCP/ARP? ─no─▶ kernel stack (SSH, ...)
//!                          │ yes: XSKMAP[q]
//!                          ▼
//!   AF_XDP socket q (sys) ─▶ rx ring ─▶ FrameAllocator::received (umem)
//!                          ─▶ wire::classify ─▶ ARP: neighbour::arp_reply, reuse frame for tx
//!                                            └─▶ TCP: neighbour table learns the source MAC,
//!                                                the IPv4 packet goes to smoltcp (Medium::Ip)
//!                                                ─▶ FrameDecoder ─▶ TransportEvent::Frame
//!                                                ─▶ the core's loop: control, storage
//! ```
//!
//! Written so far (each piece unit-tested without a NIC):
//! - [`filter`]: loads, configures and attaches the XDP filter program, reads its counters;
//! - [`umem`]: UMEM frame ownership bookkeeping (fill / rx / tx / completion);
//! - [`ring`]: AF_XDP ring index arithmetic;
//! - [`wire`]: checked classification of received frames; malformed ones dropped and counted;
//! - [`rx`]: one received frame's path (classify, learn the neighbour, ARP, to its shard),
//!   shared by the pollers, the client and the `xdp_ingress` fuzz target;
//! - [`neighbour`]: ARP replies for our address and the neighbour table;
//! - [`tcp`]: one smoltcp shard (`Medium::Ip`) with a re-armed listener, and Ethernet
//!   framing of what it sends;
//! - [`shards`]: many shards per core by 4-tuple hash, polling only those with work or an
//!   expired timer, refusing SYNs for a full shard;
//! - [`transport`]: setup — [`transport::XdpTransport::start`] attaches the filter, binds
//!   one socket per queue and returns one [`poller::XdpCore`] per core;
//! - [`device`]: the [`device::Device`] a poller reads and writes — an AF_XDP socket here,
//!   a DPDK port queue in [`crate::dpdk`] (feature `dpdk`), under the same poller;
//! - [`poller`]: [`poller::XdpCore`], one core's poller of one or more queues behind the
//!   same boundary as the kernel transport, driven by `petrel serve --dataplane xdp`'s
//!   per-core loop (busy, adaptive or interrupt polling) and tested end to end on the veth
//!   lab;
//! - [`rx_queues`]: the interface's rx queues, from sysfs;
//! - [`stats`]: the classifier's, userspace TCP's and the sockets' kernel counters;
//! - `client` (cargo feature `client`, which the load generator turns on and the server
//!   does not): `XdpClient`, the same pieces pointed the other way — outgoing connections
//!   from a whole source network, for `petrel bench --client-mode xdp`.
//!
//! The AF_XDP socket itself is [`crate::sys::xsk::Xsk`] (receive and single-frame
//! transmit), in `sys`, the one module where unsafe code may live.
//!
//! **Not written yet**: per-port ntuple steering with several queues (one queue is
//! steered), in-place replies, zero-copy binds, IPv6. (TCP buffers exist only while a
//! connection is polled or written to: [`buffers`].)

pub mod buffers;
#[cfg(feature = "client")]
pub mod client;
pub mod device;
pub mod filter;
pub mod neighbour;
pub mod poller;
pub mod ring;
pub mod rx;
pub mod shards;
pub mod stats;
pub mod syn_cookie;
pub mod tcp;
pub mod transport;
pub mod umem;
pub mod wire;

/// The rx queues of `iface` (`/sys/class/net/IF/queues/rx-N`), sorted. `/sys` shows the
/// network namespace it was mounted in: run inside the interface's namespace with
/// `ip netns exec`.
pub fn rx_queues(iface: &str) -> std::io::Result<Vec<u32>> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot list the queues of {iface} ({dir}): {e}"),
        )
    })?;
    let mut queues: Vec<u32> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_prefix("rx-")?.parse().ok()
        })
        .collect();
    queues.sort_unstable();
    if queues.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{iface} has no rx queues in {dir}"),
        ));
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_rx_queues_and_a_missing_interface_is_an_error() {
        assert!(!super::rx_queues("lo").unwrap().is_empty());
        let e = super::rx_queues("petrel-no-such0").unwrap_err();
        assert!(e.to_string().contains("petrel-no-such0"), "{e}");
    }
}
