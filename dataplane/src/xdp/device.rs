//! The device under a poller: where frames come from and go to. The poller
//! ([`super::poller`]), the shards, userspace TCP, ARP and the neighbour table are the
//! same for every device; only this differs. Two implementations:
//!
//! - [`Xsk`], an AF_XDP socket (UMEM frames, the four rings; the kernel woken through the
//!   socket's descriptor);
//! - `crate::dpdk::device::BurstDevice` (feature `dpdk`), a DPDK port queue (mbufs,
//!   `rte_eth_rx_burst`/`rte_eth_tx_burst`; no descriptor to sleep on).
//!
//! Performance-critical path: the calls are generic (monomorphised), never dynamic.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use super::stats::SocketDrops;
use crate::sys::xsk::Xsk;

/// One queue of a device, read and written by one poller.
pub trait Device {
    /// What the logs call it ("AF_XDP socket", "DPDK queue").
    const KIND: &'static str;

    /// Hands up to `max` received frames to `handle`, one at a time; their buffers are
    /// reusable when it returns. Returns how many were handed over.
    fn receive(&mut self, max: u32, handle: impl FnMut(&[u8])) -> u32;

    /// Builds one outgoing frame with `build` in a free buffer and queues it. `build` gets
    /// the whole buffer and returns the frame's length, or `None` to send nothing. Returns
    /// false when nothing was queued. [`Device::flush_tx`] after a batch.
    fn send(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool;

    /// Frames queued that the device has not taken yet.
    fn tx_pending(&self) -> u32;

    /// Hands what is queued to the device.
    fn flush_tx(&mut self) -> io::Result<()>;

    /// A descriptor that becomes readable when frames arrive, to sleep on; `None` for a
    /// device that must be polled (the poller then sleeps in short ticks).
    fn readable_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Before a busy poll: whatever the device needs to keep receiving without a sleep
    /// (AF_XDP: the wake-up the kernel asked for to use the fill ring).
    fn kick_rx(&self) -> io::Result<()>;

    /// The device's own drop counters, if it has them for this queue (read about once a
    /// second for the metrics).
    fn drops(&self) -> Option<SocketDrops>;

    /// Logs its counters when the poller stops.
    fn log_stopped(&self, core: u8, index: usize);
}

impl Device for Xsk {
    const KIND: &'static str = "AF_XDP socket";

    fn receive(&mut self, max: u32, handle: impl FnMut(&[u8])) -> u32 {
        Xsk::receive(self, max, handle)
    }

    fn send(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        Xsk::send(self, build)
    }

    fn tx_pending(&self) -> u32 {
        Xsk::tx_pending(self)
    }

    fn flush_tx(&mut self) -> io::Result<()> {
        Xsk::flush_tx(self)
    }

    fn readable_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }

    fn kick_rx(&self) -> io::Result<()> {
        if self.fill_needs_wakeup() {
            self.wait_readable(0)?;
        }
        Ok(())
    }

    fn drops(&self) -> Option<SocketDrops> {
        let mut drops = SocketDrops::default();
        drops.add(&self.statistics().ok()?);
        Some(drops)
    }

    fn log_stopped(&self, core: u8, index: usize) {
        match self.statistics() {
            Ok(stats) => tracing::info!(
                core,
                socket = index,
                ?stats,
                counters = ?self.counters(),
                "AF_XDP socket stopped"
            ),
            Err(e) => tracing::debug!(core, error = %e, "no XDP statistics"),
        }
    }
}
