//! A DPDK port configured with one rx/tx queue pair per core, its queues, its counters
//! and its `rte_flow` steering rules.

use std::io;
use std::mem::ManuallyDrop;
use std::net::Ipv4Addr;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::Eal;
use super::ffi::{self, RteFlow, RteMbuf, RteMempool};
use super::mbuf::{Mbuf, Mempool};
use crate::sys::cvt;

/// How a port is set up.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    /// rx/tx queue pairs (one per core).
    pub queues: u16,
    /// Descriptors per rx queue (the driver may adjust).
    pub rx_desc: u16,
    /// Descriptors per tx queue (the driver may adjust).
    pub tx_desc: u16,
    /// Mbufs in each queue's pool (rx ring + what is in flight in the poller).
    pub mbufs_per_queue: u32,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            mbufs_per_queue: 8191,
        }
    }
}

/// The port's counters (`rte_eth_stats_get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Packets the NIC dropped because an rx ring was full (the poller fell behind).
    pub imissed: u64,
    /// Erroneous received packets.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// Receptions that found no free mbuf.
    pub rx_nombuf: u64,
}

/// Ports this process has claimed: one [`Port`] at a time per port id, so safe code cannot
/// reconfigure a port while its queues are being polled (a data race inside the driver).
static CLAIMED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// The claim on one port id, released on drop.
#[derive(Debug)]
struct Claim(u16);

impl Claim {
    fn take(id: u16) -> io::Result<Claim> {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if claimed.contains(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("dpdk: port {id} is already started in this process"),
            ));
        }
        claimed.push(id);
        Ok(Claim(id))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        claimed.retain(|&id| id != self.0);
    }
}

/// Stops and closes the port when the last handle (port, queue or flow rule) goes, then
/// releases its claim.
#[derive(Debug)]
struct PortInner {
    id: u16,
    /// Dropped after `drop` closed the port.
    _claim: Claim,
}

impl Drop for PortInner {
    fn drop(&mut self) {
        // SAFETY: the port was started by us; no queue or flow handle is left (this is
        // the last reference), so nothing polls it any more.
        if let Err(e) = cvt(unsafe { ffi::petrel_dpdk_port_stop(self.id) }) {
            tracing::debug!(port = self.id, error = %e, "dpdk: port stop failed");
        }
        // SAFETY: as above; the port is stopped.
        if let Err(e) = cvt(unsafe { ffi::petrel_dpdk_port_close(self.id) }) {
            tracing::debug!(port = self.id, error = %e, "dpdk: port close failed");
        }
    }
}

/// A started port. Its queues are handed out once by [`Port::start`].
#[derive(Debug, Clone)]
pub struct Port {
    inner: Arc<PortInner>,
}

impl Port {
    /// Configures port `id` with `config.queues` queue pairs, one fresh mbuf pool each
    /// (on the port's NUMA socket), starts it and returns it with its queues.
    pub fn start(eal: &Eal, id: u16, config: PortConfig) -> io::Result<(Port, Vec<PortQueue>)> {
        let claim = Claim::take(id)?;
        let (max_rx, max_tx) = max_queues(id)?;
        if config.queues == 0 || config.queues > max_rx.min(max_tx) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "dpdk: port {id} has {} rx/tx queue pairs, {} asked",
                    max_rx.min(max_tx),
                    config.queues
                ),
            ));
        }
        // SAFETY: an integer argument; an unknown port gives -1 (any socket).
        let socket = unsafe { ffi::petrel_dpdk_port_socket(id) };
        let mut pools = Vec::with_capacity(usize::from(config.queues));
        for q in 0..config.queues {
            let label = format!("p{id}q{q}");
            pools.push(Mempool::create(
                eal,
                &label,
                config.mbufs_per_queue,
                256,
                socket,
            )?);
        }
        let raw: Vec<*mut RteMempool> = pools.iter().map(|p| p.as_ptr()).collect();
        // SAFETY: `raw` holds `queues` valid pools that live as long as the process.
        cvt(unsafe {
            ffi::petrel_dpdk_port_configure(
                id,
                config.queues,
                config.rx_desc,
                config.tx_desc,
                raw.as_ptr(),
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("dpdk: configuring port {id}: {e}")))?;
        // SAFETY: the port is configured with its queues set up.
        cvt(unsafe { ffi::petrel_dpdk_port_start(id) })
            .map_err(|e| io::Error::new(e.kind(), format!("dpdk: starting port {id}: {e}")))?;
        let port = Port {
            inner: Arc::new(PortInner { id, _claim: claim }),
        };
        let queues = pools
            .into_iter()
            .enumerate()
            .map(|(q, pool)| PortQueue {
                port: port.inner.clone(),
                queue: q as u16,
                pool,
            })
            .collect();
        Ok((port, queues))
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        self.inner.id
    }

    /// The port's MAC address.
    pub fn mac(&self) -> io::Result<[u8; 6]> {
        port_mac(self.inner.id)
    }

    /// The port's counters.
    pub fn stats(&self) -> io::Result<PortStats> {
        port_stats(self.inner.id)
    }

    /// Steers IPv4 TCP to `addr:tcp_port` to rx queue `queue` with an `rte_flow` rule,
    /// removed when the returned rule is dropped. Devices without `rte_flow` (most vdevs)
    /// answer `ENOTSUP`/`ENOSYS`.
    pub fn steer(&self, addr: Ipv4Addr, tcp_port: u16, queue: u16) -> io::Result<FlowRule> {
        // SAFETY: integers; the port is started.
        let flow = unsafe {
            ffi::petrel_dpdk_flow_steer(
                self.inner.id,
                u32::from(addr).to_be(),
                tcp_port.to_be(),
                queue,
            )
        };
        let flow = NonNull::new(flow).ok_or_else(io::Error::last_os_error)?;
        Ok(FlowRule {
            port: self.inner.clone(),
            flow,
        })
    }
}

/// The rx and tx queue limits of port `id`.
pub fn max_queues(id: u16) -> io::Result<(u16, u16)> {
    let (mut rx, mut tx) = (0u16, 0u16);
    // SAFETY: two live u16s for the results.
    cvt(unsafe { ffi::petrel_dpdk_port_max_queues(id, &mut rx, &mut tx) })?;
    Ok((rx, tx))
}

/// The MAC address of port `id`.
pub fn port_mac(id: u16) -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: `mac` has the 6 bytes the call writes.
    cvt(unsafe { ffi::petrel_dpdk_port_mac(id, mac.as_mut_ptr()) })?;
    Ok(mac)
}

fn port_stats(id: u16) -> io::Result<PortStats> {
    let mut c = ffi::PortStatsC::default();
    // SAFETY: `c` is a live struct of the layout the shim writes (checked by a test).
    cvt(unsafe { ffi::petrel_dpdk_port_stats(id, &mut c) })?;
    Ok(PortStats {
        ipackets: c.ipackets,
        opackets: c.opackets,
        imissed: c.imissed,
        ierrors: c.ierrors,
        oerrors: c.oerrors,
        rx_nombuf: c.rx_nombuf,
    })
}

/// An installed `rte_flow` rule, destroyed on drop (before its port closes: it holds it).
#[derive(Debug)]
pub struct FlowRule {
    port: Arc<PortInner>,
    flow: NonNull<RteFlow>,
}

// SAFETY: the rule is only a handle passed back to rte_flow_destroy, which may be called
// from any thread.
unsafe impl Send for FlowRule {}
// SAFETY: `&FlowRule` allows nothing.
unsafe impl Sync for FlowRule {}

impl Drop for FlowRule {
    fn drop(&mut self) {
        // SAFETY: the flow was created on this port, which is still open (we hold it),
        // and is destroyed once, here.
        if let Err(e) =
            cvt(unsafe { ffi::petrel_dpdk_flow_destroy(self.port.id, self.flow.as_ptr()) })
        {
            tracing::warn!(port = self.port.id, error = %e, "dpdk: removing the rte_flow rule failed");
        }
    }
}

/// One rx/tx queue pair of a started port and the pool its receptions come from; used by
/// one core at a time (DPDK queues are not thread-safe: handed out once, not `Clone`,
/// bursts take `&mut self`).
#[derive(Debug)]
pub struct PortQueue {
    port: Arc<PortInner>,
    queue: u16,
    pool: &'static Mempool,
}

impl PortQueue {
    /// The port id.
    pub fn port(&self) -> u16 {
        self.port.id
    }

    /// The queue index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The pool this queue receives into and [`PortQueue::alloc`] takes from.
    pub fn pool(&self) -> &'static Mempool {
        self.pool
    }

    /// A free mbuf to build a packet in.
    pub fn alloc(&self) -> Option<Mbuf> {
        self.pool.alloc()
    }

    /// Appends up to `max` received packets to `out`; returns how many.
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: u16) -> usize {
        out.reserve(usize::from(max));
        let spare = out.spare_capacity_mut();
        let n = u16::try_from(spare.len()).unwrap_or(u16::MAX).min(max);
        // SAFETY: `spare` has room for `n` pointers; the driver writes at most `n` and
        // returns how many. `Mbuf` is a transparent non-null pointer, and the driver only
        // hands out valid mbufs, whose ownership passes to us.
        let got = unsafe {
            ffi::petrel_dpdk_rx_burst(
                self.port.id,
                self.queue,
                spare.as_mut_ptr().cast::<*mut RteMbuf>(),
                n,
            )
        };
        let got = usize::from(got);
        let len = out.len();
        // SAFETY: the first `got` spare slots were just initialised with owned mbufs.
        unsafe { out.set_len(len + got) };
        got
    }

    /// Offers `packets` to the driver, front first; the ones it took leave `packets`
    /// (the driver owns and frees them now), the rest stay, in order. Returns how many
    /// it took.
    pub fn tx_burst(&mut self, packets: &mut Vec<Mbuf>) -> usize {
        let n = u16::try_from(packets.len()).unwrap_or(u16::MAX);
        // SAFETY: `packets` holds at least `n` owned mbufs laid out as pointers (`Mbuf`
        // is transparent). The driver takes ownership of the first `sent`; they are
        // forgotten below so they are never freed here.
        let sent = unsafe {
            ffi::petrel_dpdk_tx_burst(
                self.port.id,
                self.queue,
                packets.as_mut_ptr().cast::<*mut RteMbuf>(),
                n,
            )
        };
        let sent = usize::from(sent).min(packets.len());
        for taken in packets.drain(..sent) {
            let _ = ManuallyDrop::new(taken);
        }
        sent
    }

    /// The port's counters.
    pub fn port_stats(&self) -> io::Result<PortStats> {
        port_stats(self.port.id)
    }
}
