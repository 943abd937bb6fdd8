//! Setting up the DPDK transport: the EAL initialised from the configured arguments, the
//! port configured with one rx/tx queue pair and one mbuf pool per core, Petrel's port
//! steered to queue 0 with `rte_flow` where the device has it (else RSS, or one queue),
//! and one [`DpdkCore`] per core handed to the caller — the same poller as AF_XDP
//! ([`crate::xdp::poller::XdpCore`]) over a [`BurstDevice`].
//!
//! The port belongs to Petrel entirely (no kernel behind it): ARP for our address is
//! answered by the pollers, TCP to our port goes to the shards, and everything else is
//! dropped and counted by the classifier (`not_ours`) — no exception path to the kernel;
//! see docs/ARCHITECTURE.md for the trade-off.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;

use petrel_proto::DecoderConfig;
use smoltcp::wire::EthernetAddress;

use super::device::BurstDevice;
use crate::sys::dpdk::port::{self, PortConfig};
use crate::sys::dpdk::{Eal, FlowRule, Port, PortQueue, PortStats};
use crate::xdp::poller::{CoreSettings, MAX_QUEUES_PER_CORE, Queue, XdpCore};
use crate::xdp::stats::{QueueStats, SharedRxCounters};
use crate::xdp::syn_cookie::DEFAULT_SYN_BACKLOG;
use crate::xdp::tcp::ShardConfig;

/// One core's poller on the DPDK port: the AF_XDP poller over a DPDK queue.
pub type DpdkCore = XdpCore<BurstDevice<PortQueue>>;

/// Settings of the DPDK transport.
#[derive(Debug, Clone)]
pub struct DpdkConfig {
    /// EAL arguments (without a program name), e.g. `-l 1 --no-huge -m 256 --no-pci
    /// --vdev=net_af_packet0,iface=veth1`.
    pub eal_args: Vec<String>,
    /// The port: a device name (`net_af_packet0`, a PCI address such as `0000:03:00.0`);
    /// `None`: the first `--vdev`'s name if there is one, else port 0.
    pub device: Option<String>,
    /// Petrel's IPv4 address on the port.
    pub addr: Ipv4Addr,
    /// Prefix length of the on-link subnet.
    pub prefix_len: u8,
    /// The TCP port.
    pub port: u16,
    /// One entry per core (one rx/tx queue pair each), with the CPU its loop is to be
    /// pinned to (`None`: unpinned).
    pub cores: Vec<Option<usize>>,
    /// Descriptors and mbufs per queue.
    pub port_config: PortConfig,
    /// smoltcp shards per queue.
    pub shards_per_queue: usize,
    /// Most connections per shard.
    pub max_connections_per_shard: usize,
    /// Most connections on each core (its share of the server's `max_connections`);
    /// SYNs beyond are dropped and counted.
    pub max_connections_per_core: usize,
    /// Most half-open connections per core; SYNs past it get SYN cookies (or are dropped
    /// with `syn_cookies` off). See [`crate::xdp::syn_cookie`].
    pub syn_backlog: usize,
    /// Answer SYNs past `syn_backlog` with SYN cookies.
    pub syn_cookies: bool,
    /// Per-connection smoltcp buffers and queue limits.
    pub shard: ShardConfig,
    /// Bytes queued for one connection past which it is congested (this much more after
    /// the driver noted it: closed as a slow consumer).
    pub max_outbound_bytes: usize,
    /// Frame decoder limits.
    pub decoder: DecoderConfig,
    /// The port speaks TLS with this acceptor (`None`: plaintext).
    pub tls: Option<crate::tls::TlsAcceptor>,
    /// The port's connections start with a PROXY protocol header from a load balancer
    /// ([`crate::proxy_header`]).
    pub proxy_protocol: bool,
    /// PROXY header counters and the per-address connection limit.
    pub peers: crate::PeerPolicy,
    /// The port speaks WebSocket with this acceptor (inside TLS, with `tls` too).
    pub websocket: Option<crate::WsAcceptor>,
    /// The index of the first core: core `i` is `first_core + i` in its connections'
    /// ids (`ConnId::core`). 0 on one server; a cluster node's first global core
    /// otherwise, so a connection id names its core across the cluster.
    pub first_core: u8,
}

impl DpdkConfig {
    /// Defaults for serving `addr:port` on the device the EAL arguments name, one
    /// unpinned core.
    pub fn new(eal_args: Vec<String>, addr: Ipv4Addr, port: u16) -> DpdkConfig {
        DpdkConfig {
            eal_args,
            device: None,
            addr,
            prefix_len: 24,
            port,
            cores: vec![None],
            port_config: PortConfig::default(),
            shards_per_queue: 64,
            max_connections_per_shard: 4096,
            max_connections_per_core: usize::MAX,
            syn_backlog: DEFAULT_SYN_BACKLOG,
            syn_cookies: true,
            shard: ShardConfig {
                addr,
                port,
                ..ShardConfig::default()
            },
            max_outbound_bytes: 4 << 20,
            decoder: DecoderConfig::default(),
            tls: None,
            proxy_protocol: false,
            peers: crate::PeerPolicy::default(),
            websocket: None,
            first_core: 0,
        }
    }

    /// The device the port is looked up by: `device`, else the first `--vdev`'s name.
    pub fn device_name(&self) -> Option<String> {
        if let Some(device) = &self.device {
            return Some(device.clone());
        }
        let mut args = self.eal_args.iter();
        while let Some(arg) = args.next() {
            let value = if let Some(v) = arg.strip_prefix("--vdev=") {
                v
            } else if arg == "--vdev" {
                args.next().map_or("", String::as_str)
            } else {
                continue;
            };
            return value.split(',').next().map(str::to_owned);
        }
        None
    }

    fn core_settings(&self) -> CoreSettings {
        CoreSettings {
            addr: self.addr,
            prefix_len: self.prefix_len,
            port: self.port,
            // The port is Petrel's alone: nobody else answers ARP.
            own_arp: true,
            shards_per_queue: self.shards_per_queue,
            max_connections_per_shard: self.max_connections_per_shard,
            max_connections_per_core: self.max_connections_per_core,
            syn_backlog: self.syn_backlog,
            syn_cookies: self.syn_cookies,
            shard: ShardConfig {
                addr: self.addr,
                port: self.port,
                ..self.shard
            },
            max_outbound_bytes: self.max_outbound_bytes,
            decoder: self.decoder,
            tls: self.tls.clone(),
            proxy_protocol: self.proxy_protocol,
            peers: self.peers.clone(),
            websocket: self.websocket.clone(),
        }
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// The EAL, the port, a pool or an eventfd failed.
    #[error("dpdk: {0}")]
    Io(#[from] io::Error),
    /// The configuration is inconsistent.
    #[error("dpdk config: {0}")]
    Config(&'static str),
}

/// The DPDK transport's shared parts while its cores run: the port (stopped and closed
/// once it and every core's queue are dropped), the steering rule and the counters.
#[derive(Debug)]
pub struct DpdkTransport {
    /// Removed when the transport is dropped (before the port closes: it holds it).
    _flow: Option<FlowRule>,
    port: Port,
    device: String,
    rx_counters: Vec<Arc<SharedRxCounters>>,
}

impl DpdkTransport {
    /// Initialises the EAL (once per process), configures and starts the port with one
    /// queue pair per entry of `config.cores`, and returns the transport and one core per
    /// queue; pinning each core's loop to `config.cores[i]` is the caller's job.
    pub fn start(config: &DpdkConfig) -> Result<(DpdkTransport, Vec<DpdkCore>), DpdkError> {
        if config.cores.is_empty() || config.cores.len() > 256 {
            return Err(DpdkError::Config(
                "between 1 and 256 cores (one queue each)",
            ));
        }
        let eal = Eal::init(&config.eal_args)?;
        let (device, id) = match config.device_name() {
            Some(name) => {
                let id = eal.port_by_name(&name)?;
                (name, id)
            }
            None if eal.port_count() > 0 => ("port 0".to_owned(), 0),
            None => {
                return Err(DpdkError::Config(
                    "no DPDK port: give --vdev=... or a PCI device in the EAL arguments",
                ));
            }
        };
        let queues = u16::try_from(config.cores.len()).unwrap_or(u16::MAX);
        let (port, port_queues) = Port::start(
            eal,
            id,
            PortConfig {
                queues,
                ..config.port_config
            },
        )?;
        let mac = EthernetAddress(port.mac()?);
        tracing::info!(%device, port = id, %mac, queues, "DPDK port started");
        let flow = steer(&port, &device, config);
        let settings = config.core_settings();
        let mut rx_counters = Vec::with_capacity(port_queues.len());
        let mut cores = Vec::with_capacity(port_queues.len());
        for (index, queue) in port_queues.into_iter().enumerate() {
            let counters = Arc::new(SharedRxCounters::default());
            rx_counters.push(counters.clone());
            let queues = vec![Queue {
                device: BurstDevice::new(queue),
                rx_counters: counters,
            }];
            debug_assert!(queues.len() <= MAX_QUEUES_PER_CORE);
            cores.push(XdpCore::new(
                config.first_core.wrapping_add(index as u8),
                queues,
                mac,
                &settings,
            )?);
        }
        let transport = DpdkTransport {
            _flow: flow,
            port,
            device,
            rx_counters,
        };
        Ok((transport, cores))
    }

    /// The port's device name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The port's MAC address.
    pub fn mac(&self) -> io::Result<EthernetAddress> {
        self.port.mac().map(EthernetAddress)
    }

    /// The port's own counters.
    pub fn port_stats(&self) -> io::Result<PortStats> {
        self.port.stats()
    }

    /// A handle on the pollers' counters for another thread.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            rx_counters: self.rx_counters.clone(),
        }
    }
}

/// With one queue, as the AF_XDP transport's ntuple rule: an `rte_flow` rule sends TCP to
/// Petrel's address and port to queue 0 (it matters on NICs whose queues are shared, such
/// as a bifurcated mlx5 port where the kernel keeps the other queues); removed when the
/// transport is dropped. With several queues every one has a poller and RSS spreads the
/// connections. Devices without `rte_flow` (vdevs) are said once in the log.
fn steer(port: &Port, device: &str, config: &DpdkConfig) -> Option<FlowRule> {
    if config.cores.len() > 1 {
        tracing::info!(%device, queues = config.cores.len(), "DPDK: RSS spreads connections over the queues");
        return None;
    }
    match port.steer(config.addr, config.port, 0) {
        Ok(rule) => {
            tracing::info!(%device, port = config.port, "DPDK: rte_flow rule steers the port to queue 0");
            Some(rule)
        }
        Err(e) => {
            tracing::info!(%device, error = %e, "DPDK: no rte_flow on this device; one queue takes everything");
            None
        }
    }
}

/// The MAC address of port `id` (for `petrel doctor`).
pub fn port_mac(id: u16) -> io::Result<EthernetAddress> {
    port::port_mac(id).map(EthernetAddress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> DpdkConfig {
        let args = args.iter().map(|a| a.to_string()).collect();
        DpdkConfig::new(args, Ipv4Addr::new(10, 0, 0, 1), 9500)
    }

    #[test]
    fn the_port_is_the_configured_device_else_the_first_vdev() {
        let vdev = config(&[
            "-l",
            "1",
            "--vdev=net_af_packet0,iface=veth1",
            "--vdev=net_null0",
        ]);
        assert_eq!(vdev.device_name().as_deref(), Some("net_af_packet0"));
        let spaced = config(&["--vdev", "net_null3", "--no-pci"]);
        assert_eq!(spaced.device_name().as_deref(), Some("net_null3"));
        let mut pci = config(&["-l", "1", "-a", "0000:03:00.0", "--vdev=net_null0"]);
        pci.device = Some("0000:03:00.0".into());
        assert_eq!(pci.device_name().as_deref(), Some("0000:03:00.0"));
        assert_eq!(config(&["-l", "1", "--in-memory"]).device_name(), None);
    }

    #[test]
    fn the_pollers_own_arp_and_use_the_configured_address_and_port() {
        let settings = config(&[]).core_settings();
        assert!(settings.own_arp, "nobody else answers ARP on a DPDK port");
        assert_eq!(settings.shard.addr, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(settings.shard.port, 9500);
    }

    #[test]
    fn no_core_is_a_config_error_before_the_eal_starts() {
        let mut c = config(&["--no-pci"]);
        c.cores.clear();
        match DpdkTransport::start(&c) {
            Err(DpdkError::Config(why)) => assert!(why.contains("between 1 and 256")),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
