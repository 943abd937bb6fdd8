//! Setting up the AF_XDP transport: the XDP filter loaded, configured and attached, one
//! AF_XDP socket bound per queue, the port steered to a lone queue, and one
//! [`XdpCore`] per core (serving one or more of the queues) handed to the caller, whose per-core loops drive them (see
//! [`super::poller`]; counters in [`super::stats`]).

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_proto::DecoderConfig;
use smoltcp::wire::EthernetAddress;

use super::filter::{AttachMode, FilterConfig, FilterCounters, FilterError, XdpFilter};
use super::poller::{CoreSettings, MAX_QUEUES_PER_CORE, Queue, XdpCore};
use super::stats::SharedRxCounters;
pub use super::stats::{SocketDrops, SynStats, TcpDrops, XdpStats};
use super::syn_cookie::DEFAULT_SYN_BACKLOG;
use super::tcp::ShardConfig;
use super::wire::RxCounters;
use crate::sys::ethtool::{self, NtupleRule};
use crate::sys::xsk::{Xsk, XskConfig};

/// Settings of the AF_XDP transport.
#[derive(Debug, Clone)]
pub struct XdpConfig {
    /// The interface to serve on.
    pub iface: String,
    /// Petrel's IPv4 address on it.
    pub addr: Ipv4Addr,
    /// Prefix length of the on-link subnet.
    pub prefix_len: u8,
    /// The TCP port.
    pub port: u16,
    /// rx queues to serve.
    pub queues: Vec<u32>,
    /// One entry per core (poller), with the CPU its loop is to be pinned to (`None`:
    /// unpinned). At most one per queue; queue `i` is served by core `i % cores.len()`,
    /// so fewer cores than queues means a core reads several sockets in one loop.
    pub cores: Vec<Option<usize>>,
    /// Native, generic, or native with fallback.
    pub attach: AttachMode,
    /// Answer ARP for `addr` (Petrel owns an address the kernel does not have).
    pub own_arp: bool,
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
    /// Bytes queued for one connection past which it is congested: not read until it
    /// drains to half of that; this much more after the driver noted it: reset as a slow
    /// consumer.
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
    /// AF_XDP socket settings.
    pub xsk: XskConfig,
    /// The index of the first core: core `i` is `first_core + i` in its connections'
    /// ids (`ConnId::core`). 0 on one server; a cluster node's first global core
    /// otherwise, so a connection id names its core across the cluster.
    pub first_core: u8,
}

impl XdpConfig {
    /// Defaults for serving `addr:port` on `iface`, queue 0, unpinned.
    pub fn new(iface: &str, addr: Ipv4Addr, port: u16) -> XdpConfig {
        XdpConfig {
            iface: iface.to_owned(),
            addr,
            prefix_len: 24,
            port,
            queues: vec![0],
            cores: vec![None],
            attach: AttachMode::Auto,
            own_arp: false,
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
            max_outbound_bytes: 1 << 20,
            decoder: DecoderConfig::default(),
            tls: None,
            proxy_protocol: false,
            peers: crate::PeerPolicy::default(),
            websocket: None,
            xsk: XskConfig::default(),
            first_core: 0,
        }
    }
}

impl XdpConfig {
    /// What the pollers need of it.
    pub(crate) fn core_settings(&self) -> CoreSettings {
        CoreSettings {
            addr: self.addr,
            prefix_len: self.prefix_len,
            port: self.port,
            own_arp: self.own_arp,
            shards_per_queue: self.shards_per_queue,
            max_connections_per_shard: self.max_connections_per_shard,
            max_connections_per_core: self.max_connections_per_core,
            syn_backlog: self.syn_backlog,
            syn_cookies: self.syn_cookies,
            shard: self.shard,
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
pub enum XdpError {
    /// The XDP filter failed to load, configure or attach.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// An AF_XDP socket, eventfd, thread or the interface's MAC address failed.
    #[error("AF_XDP transport: {0}")]
    Io(#[from] io::Error),
    /// The configuration is inconsistent.
    #[error("AF_XDP transport config: {0}")]
    Config(&'static str),
}

/// The AF_XDP transport's shared parts while its cores run: the attached filter, the
/// ntuple rule and the counters. Drop the [`XdpCore`]s first (their sockets), then this:
/// the filter detaches and the rule is deleted when it is dropped.
#[derive(Debug)]
pub struct XdpTransport {
    /// Deleted when the transport is dropped.
    _ntuple: Option<NtupleRule>,
    rx_counters: Vec<Arc<SharedRxCounters>>,
    // Dropped last: the cores' sockets must be gone before the filter detaches. (A
    // [`XdpStats`] handle may keep it attached a little longer; with no socket left the
    // program passes everything to the kernel.)
    filter: Arc<XdpFilter>,
}

impl XdpTransport {
    /// Loads and attaches the filter and binds one AF_XDP socket per queue. Returns the
    /// transport and one core per entry of `config.cores` (index `i`, serving the queues
    /// `config.queues[j]` with `j % cores == i`); pinning each core's loop to
    /// `config.cores[i]` is the caller's job.
    pub fn start(config: &XdpConfig) -> Result<(XdpTransport, Vec<XdpCore>), XdpError> {
        if config.queues.is_empty() || config.queues.len() > 256 {
            return Err(XdpError::Config("between 1 and 256 queues"));
        }
        if config.cores.is_empty() || config.cores.len() > config.queues.len() {
            return Err(XdpError::Config(
                "between 1 core and one core per queue (a core serves one or more queues)",
            ));
        }
        if config.queues.len().div_ceil(config.cores.len()) > MAX_QUEUES_PER_CORE {
            return Err(XdpError::Config("too many queues per core"));
        }
        let our_mac = interface_mac(&config.iface)?;
        let mut filter = XdpFilter::load()?;
        filter.configure(&FilterConfig {
            addr: config.addr,
            prefix_len: 32,
            ports: vec![config.port],
            own_arp: config.own_arp,
        })?;
        let mode = filter.attach(&config.iface, config.attach)?;
        tracing::info!(iface = %config.iface, ?mode, "XDP filter attached");
        let if_index = crate::sys::if_index(&config.iface)?;
        let ntuple = steer(config);

        let mut per_core: Vec<Vec<Queue>> = config.cores.iter().map(|_| Vec::new()).collect();
        let mut rx_counters = Vec::new();
        for (i, &queue) in config.queues.iter().enumerate() {
            let xsk = bind_retrying(if_index, queue, config.xsk)?;
            filter.register_socket(queue, &xsk)?;
            let counters = Arc::new(SharedRxCounters::default());
            rx_counters.push(counters.clone());
            per_core[i % config.cores.len()].push(Queue {
                device: xsk,
                rx_counters: counters,
            });
        }
        let settings = config.core_settings();
        let mut cores = Vec::with_capacity(per_core.len());
        for (index, queues) in per_core.into_iter().enumerate() {
            cores.push(XdpCore::new(
                config.first_core.wrapping_add(index as u8),
                queues,
                our_mac,
                &settings,
            )?);
        }
        let transport = XdpTransport {
            _ntuple: ntuple,
            rx_counters,
            filter: Arc::new(filter),
        };
        Ok((transport, cores))
    }

    /// A handle on the counters for another thread.
    pub fn stats(&self) -> XdpStats {
        XdpStats {
            filter: self.filter.clone(),
            queues: super::stats::QueueStats {
                rx_counters: self.rx_counters.clone(),
            },
        }
    }

    /// The filter program's counters.
    pub fn filter_counters(&self) -> Result<FilterCounters, FilterError> {
        self.filter.counters()
    }

    /// What the cores' frame classifier saw, summed over queues: frames for us, and the
    /// malformed ones dropped, by reason.
    pub fn rx_counters(&self) -> RxCounters {
        self.stats().rx_counters()
    }
}

/// With one queue, steers Petrel's port to it with an ntuple rule, so RSS cannot spread the
/// port's flows to queues nobody serves. (With several queues every queue has a poller and
/// RSS spreads connections over them; per-port steering needs one port per queue, not
/// configurable yet.) NICs without ntuple filters are reported once and left to RSS.
fn steer(config: &XdpConfig) -> Option<NtupleRule> {
    let [queue] = config.queues[..] else {
        return None;
    };
    match ethtool::steer_tcp_port(&config.iface, Some(config.addr), config.port, queue) {
        Ok(rule) => {
            tracing::info!(iface = %config.iface, port = config.port, queue, location = rule.location(), "ntuple rule installed");
            Some(rule)
        }
        Err(e) if ethtool::is_unsupported(&e) => {
            tracing::info!(iface = %config.iface, "no ntuple filters on this NIC; relying on RSS (serve every rx queue)");
            None
        }
        Err(e) => {
            tracing::warn!(iface = %config.iface, error = %e, "could not install the ntuple rule; relying on RSS");
            None
        }
    }
}

/// How long a bind answered `EBUSY` is retried.
const BIND_RETRY_LIMIT: Duration = Duration::from_secs(3);

/// Binds queue `queue`'s socket, retrying for a moment while the kernel answers `EBUSY`:
/// it releases a closed socket's hold on the queue asynchronously, so a server restarted
/// right after its predecessor exited can find the queue still taken.
pub(crate) fn bind_retrying(if_index: u32, queue: u32, config: XskConfig) -> io::Result<Xsk> {
    let deadline = Instant::now() + BIND_RETRY_LIMIT;
    loop {
        match Xsk::bind(if_index, queue, config) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                tracing::debug!(queue, "AF_XDP queue still busy; retrying the bind");
                std::thread::sleep(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// The MAC address of `iface`, from sysfs.
pub(crate) fn interface_mac(iface: &str) -> io::Result<EthernetAddress> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| io::Error::other(format!("bad MAC address {text:?} for {iface}")))?;
    }
    Ok(EthernetAddress(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: &XdpConfig) -> String {
        match XdpTransport::start(config) {
            Err(XdpError::Config(why)) => why.to_owned(),
            Err(e) => panic!("expected a config error, got {e}"),
            Ok(_) => panic!("expected a config error, got a running transport"),
        }
    }

    #[test]
    fn every_core_serves_at_least_one_queue() {
        // Checked before anything touches the interface (which does not exist here).
        let mut config = XdpConfig::new("petrel-no-such0", Ipv4Addr::LOCALHOST, 9500);
        config.queues = vec![0];
        config.cores = vec![Some(0), Some(1)];
        assert!(refused(&config).contains("one core per queue"));
        config.cores = Vec::new();
        assert!(refused(&config).contains("between 1 core"));
    }
}
