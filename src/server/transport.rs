//! Starting the configured dataplane: kernel sockets, AF_XDP or DPDK (cargo feature
//! `dpdk`). Each hands out one [`CoreIo`](petrel_dataplane::CoreIo) per core, so the
//! per-core loops (`super::core_loop`) do not care which one runs.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
#[cfg(feature = "dpdk")]
use petrel_dataplane::dpdk::transport::{DpdkConfig, DpdkCore, DpdkTransport};
use petrel_dataplane::kernel::{self, KernelConfig, KernelCore};
use petrel_dataplane::sys::ifaddrs;
use petrel_dataplane::xdp::filter::AttachMode;
use petrel_dataplane::xdp::poller::XdpCore;
use petrel_dataplane::xdp::tcp::ShardConfig;
use petrel_dataplane::xdp::transport::{XdpConfig, XdpTransport};
use petrel_dataplane::{CoreIo, PeerPolicy, TlsAcceptor, Wake, WsAcceptor};
use petrel_proto::DecoderConfig;

use super::config::{CONNECTIONS_PER_SHARD, DataplaneKind, ServeConfig, XdpMode};
use super::metrics;

/// Fewest and most shards per queue the automatic sizing picks.
const MIN_AUTO_SHARDS: usize = 16;
const MAX_AUTO_SHARDS: usize = 65_536;

/// The cores of the running dataplane, for the per-core loops.
pub enum Cores {
    /// One per kernel-socket core.
    Kernel(Vec<KernelCore>),
    /// One per AF_XDP queue.
    Xdp(Vec<XdpCore>),
    /// One per DPDK queue.
    #[cfg(feature = "dpdk")]
    Dpdk(Vec<DpdkCore>),
}

impl Cores {
    /// Every core's waker, in core order.
    pub fn wakers(&self) -> Vec<std::sync::Arc<dyn Wake>> {
        match self {
            Cores::Kernel(c) => c.iter().map(CoreIo::waker).collect(),
            Cores::Xdp(c) => c.iter().map(CoreIo::waker).collect(),
            #[cfg(feature = "dpdk")]
            Cores::Dpdk(c) => c.iter().map(CoreIo::waker).collect(),
        }
    }

    /// The waker of core 0, the home core.
    pub fn home_waker(&self) -> Option<std::sync::Arc<dyn Wake>> {
        match self {
            Cores::Kernel(c) => c.first().map(CoreIo::waker),
            Cores::Xdp(c) => c.first().map(CoreIo::waker),
            #[cfg(feature = "dpdk")]
            Cores::Dpdk(c) => c.first().map(CoreIo::waker),
        }
    }
}

/// The running dataplane: what is shared while its cores run.
pub enum Transport {
    /// Kernel sockets; the bound addresses.
    Kernel(Vec<SocketAddr>),
    /// AF_XDP: the filter, rule and counters; the served address.
    Xdp(XdpTransport, SocketAddr),
    /// DPDK: the port, rule and counters; the served address.
    #[cfg(feature = "dpdk")]
    Dpdk(DpdkTransport, SocketAddr),
}

impl Transport {
    /// Starts the dataplane `config` names. Returns it, its cores, and the CPU each
    /// core's loop is pinned to.
    /// `tls`: every client connection speaks TLS with it.
    /// `peers`: the PROXY header counters and per-address limit.
    pub fn start(
        config: &ServeConfig,
        tls: Option<&TlsAcceptor>,
        peers: &PeerPolicy,
        websocket: Option<&WsAcceptor>,
    ) -> anyhow::Result<(Transport, Cores, Vec<Option<usize>>)> {
        let decoder = DecoderConfig {
            max_body_len: config.max_frame_body,
        };
        let tls = tls.cloned();
        let peers = peers.clone();
        // The kernel-bypass dataplanes serve one address: it speaks PROXY or it does not.
        let proxy_protocol = !config.proxy_protocol.is_empty();
        let websocket = websocket.cloned();
        match config.dataplane {
            DataplaneKind::Kernel => {
                let cpus = kernel_cores(&config.cores);
                let (cores, addrs) = kernel::bind(&KernelConfig {
                    listen: config.listen.clone(),
                    cores: cpus.clone(),
                    max_connections: config.max_connections,
                    max_outbound_bytes: config.max_outbound_bytes,
                    decoder,
                    tls,
                    tls_listen: config
                        .tls
                        .as_ref()
                        .map(|t| t.listen.clone())
                        .unwrap_or_default(),
                    proxy_listen: config.proxy_protocol.clone(),
                    peers,
                    websocket,
                    ws_listen: config.websocket.clone(),
                    first_core: first_core(config, cpus.len())?,
                    ..KernelConfig::default()
                })
                .context("cannot start the kernel-socket dataplane")?;
                Ok((Transport::Kernel(addrs), Cores::Kernel(cores), cpus))
            }
            DataplaneKind::Xdp => {
                let mut xdp = XdpConfig {
                    tls,
                    proxy_protocol,
                    peers,
                    websocket,
                    ..xdp_config(config, decoder)?
                };
                xdp.first_core = first_core(config, xdp.cores.len())?;
                let addr = SocketAddr::from((xdp.addr, xdp.port));
                let (transport, cores) = XdpTransport::start(&xdp).with_context(|| {
                    format!(
                        "cannot start the AF_XDP dataplane on {} (needs root)",
                        xdp.iface
                    )
                })?;
                Ok((
                    Transport::Xdp(transport, addr),
                    Cores::Xdp(cores),
                    xdp.cores,
                ))
            }
            #[cfg(feature = "dpdk")]
            DataplaneKind::Dpdk => {
                let mut dpdk = DpdkConfig {
                    tls,
                    proxy_protocol,
                    peers,
                    websocket,
                    ..dpdk_config(config, decoder)?
                };
                dpdk.first_core = first_core(config, dpdk.cores.len())?;
                let addr = SocketAddr::from((dpdk.addr, dpdk.port));
                let (transport, cores) = DpdkTransport::start(&dpdk).with_context(|| {
                    format!(
                        "cannot start the DPDK dataplane with EAL arguments {:?} (needs root)",
                        dpdk.eal_args
                    )
                })?;
                Ok((
                    Transport::Dpdk(transport, addr),
                    Cores::Dpdk(cores),
                    dpdk.cores,
                ))
            }
            #[cfg(not(feature = "dpdk"))]
            DataplaneKind::Dpdk => bail!(
                "dpdk: this petrel was built without the `dpdk` cargo feature; rebuild it with \
                 `cargo build --features dpdk` (needs libdpdk-dev: scripts/setup.sh)"
            ),
        }
    }

    /// The addresses clients connect to (a port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        match self {
            Transport::Kernel(addrs) => addrs.clone(),
            Transport::Xdp(_, addr) => vec![*addr],
            #[cfg(feature = "dpdk")]
            Transport::Dpdk(_, addr) => vec![*addr],
        }
    }

    /// The dataplane's name in metrics labels.
    pub fn metrics_label(&self) -> &'static str {
        match self {
            Transport::Kernel(_) => "kernel",
            Transport::Xdp(..) => "xdp",
            #[cfg(feature = "dpdk")]
            Transport::Dpdk(..) => "dpdk",
        }
    }

    /// Reads the dataplane's own counters at scrape time (AF_XDP only; the kernel
    /// transport has none beyond what the home core publishes).
    pub fn metrics_source(&self) -> Option<metrics::TransportSource> {
        #[cfg(feature = "dpdk")]
        if let Transport::Dpdk(t, _) = self {
            let stats = t.stats();
            return Some(Box::new(move || metrics::TransportSnapshot {
                filter: None,
                rx: Some(stats.rx_counters()),
                tcp: Some(stats.tcp_drops()),
                syn: Some(stats.syn_stats()),
                sockets: Some(stats.device_drops()),
            }));
        }
        let Transport::Xdp(t, _) = self else {
            return None;
        };
        let stats = t.stats();
        Some(Box::new(move || metrics::TransportSnapshot {
            filter: stats.filter_counters().ok(),
            rx: Some(stats.rx_counters()),
            tcp: Some(stats.tcp_drops()),
            syn: Some(stats.syn_stats()),
            sockets: Some(stats.socket_drops()),
        }))
    }

    /// A short name for logs and the start-up line.
    pub fn describe(&self) -> &'static str {
        match self {
            Transport::Kernel(_) => "kernel sockets",
            Transport::Xdp(..) => "AF_XDP, userspace TCP",
            #[cfg(feature = "dpdk")]
            Transport::Dpdk(..) => "DPDK, userspace TCP",
        }
    }

    /// Logs the dataplane's own counters (AF_XDP: the filter's verdicts and the
    /// classifier's drops) once, at shutdown.
    pub fn log_counters(&self) {
        if let Transport::Xdp(t, _) = self {
            match t.filter_counters() {
                Ok(filter) => tracing::info!(?filter, rx = ?t.rx_counters(), "AF_XDP counters"),
                Err(e) => tracing::warn!(error = %e, "cannot read the XDP filter's counters"),
            }
        }
        #[cfg(feature = "dpdk")]
        if let Transport::Dpdk(t, _) = self {
            let stats = t.stats();
            tracing::info!(
                device = t.device(),
                port = ?t.port_stats().ok(),
                rx = ?stats.rx_counters(),
                "DPDK counters"
            );
        }
    }
}

/// The cluster index of this node's first core (0 when it is no cluster): node *n* of
/// a cluster whose nodes run `cores` cores each numbers its cores from `n × cores`, so a
/// connection id names its core across the cluster.
fn first_core(config: &ServeConfig, cores: usize) -> anyhow::Result<u8> {
    let Some(cluster) = &config.cluster else {
        return Ok(0);
    };
    u8::try_from(usize::from(cluster.node) * cores)
        .ok()
        .filter(|&first| {
            usize::from(first) + cores <= usize::from(petrel_control::remote::MAX_CORES)
        })
        .with_context(|| {
            format!(
                "node {} of a cluster running {cores} cores per node passes {} cores",
                cluster.node,
                petrel_control::remote::MAX_CORES
            )
        })
}

/// How many cores the dataplane `config` names will run (what [`Transport::start`]
/// starts), known before it starts: a cluster node's layout needs it to open its
/// database with the partitions it owns.
pub fn planned_cores(config: &ServeConfig) -> anyhow::Result<usize> {
    let decoder = DecoderConfig {
        max_body_len: config.max_frame_body,
    };
    Ok(match config.dataplane {
        DataplaneKind::Kernel => kernel_cores(&config.cores).len(),
        DataplaneKind::Xdp => xdp_config(config, decoder)?.cores.len(),
        #[cfg(feature = "dpdk")]
        DataplaneKind::Dpdk => dpdk_config(config, decoder)?.cores.len(),
        #[cfg(not(feature = "dpdk"))]
        DataplaneKind::Dpdk => 1,
    })
}

/// `--cores` for the kernel transport: one loop per listed CPU, or one per available CPU.
fn kernel_cores(cores: &[usize]) -> Vec<Option<usize>> {
    if !cores.is_empty() {
        return cores.iter().copied().map(Some).collect();
    }
    let cpus = petrel_dataplane::pin::available_cpus();
    if cpus.is_empty() {
        vec![None]
    } else {
        cpus.into_iter().map(Some).collect()
    }
}

/// The AF_XDP transport's settings from `petrel serve`'s.
fn xdp_config(config: &ServeConfig, decoder: DecoderConfig) -> anyhow::Result<XdpConfig> {
    let iface = config
        .xdp
        .iface
        .as_deref()
        .context("--dataplane xdp needs --iface")?;
    let SocketAddr::V4(listen) = config.listen[0] else {
        bail!("--dataplane xdp listens on IPv4 only");
    };
    let addr = *listen.ip();
    let queues = if config.xdp.queues.is_empty() {
        petrel_dataplane::xdp::rx_queues(iface)?
    } else {
        config.xdp.queues.clone()
    };
    // One loop per CPU, never more loops than queues: a CPU with several queues serves
    // them from one loop (two busy loops sharing a CPU wait for each other's time slice).
    let cores: Vec<Option<usize>> = if config.cores.is_empty() {
        let cpus = petrel_dataplane::pin::available_cpus();
        if cpus.is_empty() {
            vec![None; queues.len()]
        } else {
            cpus.into_iter().take(queues.len()).map(Some).collect()
        }
    } else if config.cores.len() <= queues.len() {
        config.cores.iter().copied().map(Some).collect()
    } else {
        bail!(
            "--cores names more CPUs than there are queues to serve ({} cores, queues \
             {queues:?}): each core serves at least one queue",
            config.cores.len()
        );
    };
    // Where the kernel has the address, it answers ARP and Petrel takes only the TCP
    // port; otherwise Petrel owns the address and answers ARP itself.
    let kernel_addrs = ifaddrs::ipv4_addrs(iface)
        .with_context(|| format!("cannot read the addresses of {iface}"))?;
    let (own_arp, prefix_len) = match kernel_addrs.iter().find(|net| net.addr == addr) {
        Some(net) => (false, net.prefix_len),
        None => (true, on_link_prefix(addr, &kernel_addrs)),
    };
    let (shards_per_queue, per_shard) = shard_sizing(config, queues.len());

    let mut xdp = XdpConfig::new(iface, addr, listen.port());
    xdp.prefix_len = prefix_len;
    xdp.queues = queues;
    xdp.cores = cores;
    xdp.attach = match config.xdp.mode {
        XdpMode::Auto => AttachMode::Auto,
        XdpMode::Native => AttachMode::Driver,
        XdpMode::Generic => AttachMode::Generic,
    };
    xdp.own_arp = own_arp;
    xdp.shards_per_queue = shards_per_queue;
    xdp.max_connections_per_shard = per_shard;
    xdp.max_connections_per_core = config.max_connections.div_ceil(xdp.cores.len().max(1));
    xdp.syn_backlog = config.xdp.syn_backlog;
    xdp.syn_cookies = config.xdp.syn_cookies;
    xdp.shard = ShardConfig {
        addr,
        prefix_len,
        port: listen.port(),
        rx_buffer: config.xdp.tcp_rx_buffer,
        tx_buffer: config.xdp.tcp_tx_buffer,
        ..ShardConfig::default()
    };
    xdp.max_outbound_bytes = config.max_outbound_bytes;
    xdp.decoder = decoder;
    Ok(xdp)
}

/// Shards per queue and most connections per shard for `queues` queues: as configured,
/// or sized from `max_connections`.
fn shard_sizing(config: &ServeConfig, queues: usize) -> (usize, usize) {
    let per_queue = config.max_connections.div_ceil(queues);
    let shards_per_queue = config.xdp.shards_per_queue.unwrap_or_else(|| {
        per_queue
            .div_ceil(CONNECTIONS_PER_SHARD)
            .clamp(MIN_AUTO_SHARDS, MAX_AUTO_SHARDS)
    });
    // The 4-tuple hash does not fill shards evenly: twice the mean, plus some.
    let per_shard = per_queue.div_ceil(shards_per_queue) * 2 + 16;
    (shards_per_queue, per_shard)
}

/// The DPDK transport's settings from `petrel serve`'s: one queue per `--cores` CPU (one
/// queue on the first available CPU without `--cores`), the userspace TCP sized as for
/// AF_XDP.
#[cfg(feature = "dpdk")]
fn dpdk_config(config: &ServeConfig, decoder: DecoderConfig) -> anyhow::Result<DpdkConfig> {
    let SocketAddr::V4(listen) = config.listen[0] else {
        bail!("--dataplane dpdk listens on IPv4 only");
    };
    let cores: Vec<Option<usize>> = if config.cores.is_empty() {
        vec![petrel_dataplane::pin::available_cpus().first().copied()]
    } else {
        config.cores.iter().copied().map(Some).collect()
    };
    let (shards_per_queue, per_shard) = shard_sizing(config, cores.len());
    let mut dpdk = DpdkConfig::new(config.dpdk.args.clone(), *listen.ip(), listen.port());
    dpdk.device = config.dpdk.device.clone();
    dpdk.cores = cores;
    dpdk.port_config.mbufs_per_queue = config.dpdk.mbufs_per_queue;
    dpdk.shards_per_queue = shards_per_queue;
    dpdk.max_connections_per_shard = per_shard;
    dpdk.max_connections_per_core = config.max_connections.div_ceil(dpdk.cores.len().max(1));
    dpdk.syn_backlog = config.xdp.syn_backlog;
    dpdk.syn_cookies = config.xdp.syn_cookies;
    dpdk.shard = ShardConfig {
        addr: dpdk.addr,
        prefix_len: dpdk.prefix_len,
        port: listen.port(),
        rx_buffer: config.xdp.tcp_rx_buffer,
        tx_buffer: config.xdp.tcp_tx_buffer,
        ..ShardConfig::default()
    };
    dpdk.max_outbound_bytes = config.max_outbound_bytes;
    dpdk.decoder = decoder;
    Ok(dpdk)
}

/// The prefix of the kernel's subnet on the interface that contains `addr`, or /24.
fn on_link_prefix(addr: Ipv4Addr, kernel_addrs: &[ifaddrs::Ipv4Net]) -> u8 {
    kernel_addrs
        .iter()
        .find(|net| {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(net.prefix_len))
                .unwrap_or(0);
            u32::from(net.addr) & mask == u32::from(addr) & mask
        })
        .map_or(24, |net| net.prefix_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_on_link_prefix_comes_from_the_kernel_subnet_containing_the_address() {
        let nets = [ifaddrs::Ipv4Net {
            addr: Ipv4Addr::new(10, 77, 0, 1),
            prefix_len: 16,
        }];
        assert_eq!(on_link_prefix(Ipv4Addr::new(10, 77, 9, 9), &nets), 16);
        assert_eq!(on_link_prefix(Ipv4Addr::new(10, 78, 0, 1), &nets), 24);
    }
}
