//! The DPDK dataplane (cargo feature `dpdk`): a DPDK-owned port, one rx/tx queue pair per
//! core, under the *same* poller, shards, userspace TCP, ARP and boundary as AF_XDP.
//!
//! Only the device differs: [`device::BurstDevice`] implements
//! [`crate::xdp::device::Device`] over a port queue's `rte_eth_rx_burst` /
//! `rte_eth_tx_burst` and mbufs, where AF_XDP has its UMEM and rings. One packet's path:
//!
//! ```text
//! NIC rx queue q (DPDK PMD, no kernel) ─▶ rte_eth_rx_burst (sys::dpdk::PortQueue)
//!   ─▶ BurstDevice::receive: each mbuf's bytes to the poller, then the mbuf freed
//!   ─▶ xdp::rx::Intake: ARP answered, TCP to its smoltcp shard, the rest dropped+counted
//!   ─▶ FrameDecoder ─▶ TransportEvent::Frame ─▶ the core's loop
//! replies: smoltcp ─▶ frame_ipv4 into a fresh mbuf (BurstDevice::send)
//!   ─▶ rte_eth_tx_burst on flush (what the driver refuses waits, in order)
//! ```
//!
//! - [`device`]: the burst device and the traits it is unit-tested through;
//! - [`transport`]: EAL, port, pools and cores set up from [`transport::DpdkConfig`].
//!
//! The unsafe part (EAL, ports, mbufs over the C shim in `vendor/dpdk`) is
//! [`crate::sys::dpdk`].
//!
//! **Not written yet**: an exception path to the kernel (non-Petrel traffic is dropped
//! and counted), IPv6, multi-segment (jumbo) frames, rx interrupts (a DPDK poller in
//! adaptive or interrupt mode looks at its queue every millisecond when idle).

pub mod device;
pub mod transport;
