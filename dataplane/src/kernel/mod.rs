//! Kernel-socket transport: one [`KernelCore`] per core over ordinary TCP sockets.
//!
//! ```text
//!            ┌──────────── core 0: one thread, the server's loop ─────────────┐
//! clients ──▶│ SO_REUSEPORT listener(s) │ KernelCore: epoll, accept, read,      │
//!   TCP      │                          │ FrameDecoder ─▶ control ─▶ storage    │
//!            │                          │ ◀─ batched writev ◀─ actions          │
//!            └────────────────────────────────────────────────────────────────┘
//!            ┌──────────── core 1 ─────────────┐
//!            │ ... same, own listener ...       │
//! ```
//!
//! Every core binds its own listening socket to each listen address with `SO_REUSEPORT`,
//! so the kernel spreads incoming connections across cores (the seed platform's "port
//! multiplexing") and no accept lock is shared. A connection lives on the core that
//! accepted it; its [`ConnId`](petrel_conn::ConnId) carries that core and its slab slot.
//! The cores own no threads: the server's per-core loop drives each through
//! [`CoreIo`](crate::boundary::CoreIo).
//!
//! A connection whose queued output stays over [`KernelConfig::max_outbound_bytes`]
//! after a write is congested: it is not read until it drains to half of that, and once
//! the driver has noted that, `max_outbound_bytes` more queued closes it, so memory never
//! grows because a client stops reading (`crate::framed`).

mod conn;
mod event_loop;
mod listener;

use std::io;
use std::net::SocketAddr;

use petrel_proto::DecoderConfig;

pub use self::event_loop::KernelCore;

/// Settings of the kernel-socket transport.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Addresses to listen on; every core listens on each. Port 0 picks a free port
    /// (the same one for every core); [`bind`] returns the bound addresses.
    pub listen: Vec<SocketAddr>,
    /// CPU ids of the cores, one [`KernelCore`] per entry (`None`: unpinned). Pinning is
    /// done by whoever runs each core's loop.
    pub cores: Vec<Option<usize>>,
    /// Most connections the whole transport holds; further accepts are closed at once.
    pub max_connections: usize,
    /// Bytes queued for one connection past which it is congested (this much more after
    /// the driver noted it: closed as a slow consumer).
    pub max_outbound_bytes: usize,
    /// Frame decoder limits.
    pub decoder: DecoderConfig,
    /// Listen backlog per socket.
    pub backlog: i32,
    /// TLS with this acceptor (`None`: plaintext): on the `tls_listen` addresses, or on
    /// every `listen` address when `tls_listen` is empty.
    pub tls: Option<crate::tls::TlsAcceptor>,
    /// Addresses that speak TLS beside the plaintext `listen` ones (with `tls` set).
    pub tls_listen: Vec<SocketAddr>,
    /// Listen addresses (of `listen` or `tls_listen`) whose connections start with a
    /// PROXY protocol header from a load balancer ([`crate::proxy_header`]).
    pub proxy_listen: Vec<SocketAddr>,
    /// PROXY header counters and the per-address connection limit.
    pub peers: crate::PeerPolicy,
    /// WebSocket with this acceptor on the `ws_listen` addresses.
    pub websocket: Option<crate::WsAcceptor>,
    /// Listen addresses (of `listen` or `tls_listen`) that speak WebSocket (inside TLS
    /// on a TLS one).
    pub ws_listen: Vec<SocketAddr>,
    /// The index of the first core: core `i` is `first_core + i` in its connections'
    /// ids (`ConnId::core`). 0 on one server; a cluster node's first global core
    /// otherwise, so a connection id names its core across the cluster.
    pub first_core: u8,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 9500))],
            cores: vec![None],
            max_connections: 1_000_000,
            max_outbound_bytes: 1 << 20,
            decoder: DecoderConfig::default(),
            backlog: 4096,
            tls: None,
            tls_listen: Vec::new(),
            proxy_listen: Vec::new(),
            peers: crate::PeerPolicy::default(),
            websocket: None,
            ws_listen: Vec::new(),
            first_core: 0,
        }
    }
}

/// Binds every listener and builds one [`KernelCore`] per configured core (index `i`
/// for `config.cores[i]`; pinning is the caller's, which runs each core's loop). Returns
/// the cores and the addresses actually bound (the real port when 0 was configured).
pub fn bind(config: &KernelConfig) -> io::Result<(Vec<KernelCore>, Vec<SocketAddr>)> {
    if config.cores.is_empty() || config.cores.len() > 256 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the kernel transport needs between 1 and 256 cores",
        ));
    }
    if !config.tls_listen.is_empty() && config.tls.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS listen addresses need a TLS acceptor",
        ));
    }
    // Plaintext listeners first, then the TLS ones; with no separate TLS addresses, the
    // acceptor (if any) serves every listener.
    let addrs: Vec<SocketAddr> = config
        .listen
        .iter()
        .chain(&config.tls_listen)
        .copied()
        .collect();
    let tls_from = if config.tls_listen.is_empty() {
        0
    } else {
        config.listen.len()
    };
    if let Some(stray) = config.proxy_listen.iter().find(|a| !addrs.contains(a)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("PROXY protocol address {stray} is not one of the listen addresses"),
        ));
    }
    if !config.ws_listen.is_empty() && config.websocket.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "WebSocket listen addresses need a WebSocket acceptor",
        ));
    }
    if let Some(stray) = config.ws_listen.iter().find(|a| !addrs.contains(a)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("WebSocket address {stray} is not one of the listen addresses"),
        ));
    }
    let ws_listeners: Vec<bool> = addrs.iter().map(|a| config.ws_listen.contains(a)).collect();
    let proxy_listeners: Vec<bool> = addrs
        .iter()
        .map(|a| config.proxy_listen.contains(a))
        .collect();
    let per_core = listener::bind_reuseport(&addrs, config.cores.len(), config.backlog)?;
    let local_addrs = per_core
        .first()
        .map(|ls| ls.iter().filter_map(|l| l.local_addr().ok()).collect())
        .unwrap_or_default();
    let max_per_core = config.max_connections.div_ceil(config.cores.len());
    let cores = per_core
        .into_iter()
        .enumerate()
        .map(|(index, listeners)| {
            KernelCore::new(event_loop::CoreSettings {
                index: config.first_core.wrapping_add(index as u8),
                listeners,
                max_connections: max_per_core,
                max_outbound_bytes: config.max_outbound_bytes,
                decoder: config.decoder,
                tls: config.tls.clone(),
                tls_from,
                proxy_listeners: proxy_listeners.clone(),
                peers: config.peers.clone(),
                websocket: config.websocket.clone(),
                ws_listeners: ws_listeners.clone(),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok((cores, local_addrs))
}
