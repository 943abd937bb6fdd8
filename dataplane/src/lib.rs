//! # petrel-dataplane — bytes in from the network, bytes out to it
//!
//! The dataplane owns connections and moves bytes; it never interprets them beyond
//! framing. It reads from the network, cuts the stream into frames with `petrel-proto`'s
//! decoder, and reports connection events and frames as [`petrel_conn::TransportEvent`]s;
//! it writes back what it is told to send. It knows no control plane, no session and no
//! storage (it does not depend on those crates): routing, session and storage decisions
//! belong to the server's per-core loop, which drives a transport and the control plane
//! on one thread.
//!
//! ## The transport boundary
//! Every transport hands out one [`CoreIo`] per core — wait, receive, send, close,
//! transmit — so the loop above never knows which one it runs on ([`boundary`]). A
//! [`petrel_conn::ConnId`] carries its core and its slab slot. [`boundary::spawn_threaded`]
//! runs a core on a thread of its own behind channels, for tests and tools.
//!
//! ## Transports
//! - [`kernel`]: kernel sockets — one [`kernel::KernelCore`] per core (mio/epoll), each
//!   with its own `SO_REUSEPORT` listener on every listen address so the kernel spreads
//!   connections across cores. The portable fallback and the baseline.
//! - [`xdp`]: AF_XDP + userspace TCP (smoltcp): an XDP filter program, one AF_XDP socket
//!   and [`xdp::poller::XdpCore`] per NIC queue, smoltcp shards, Ethernet/ARP done here
//!   ([`xdp::transport::XdpTransport`] sets it up); also the client end
//!   ([`xdp::client`]) the load generator uses.
//!
//! - `dpdk` (cargo feature `dpdk`): a DPDK-owned port — the same poller, shards and
//!   userspace TCP as `xdp`, over DPDK port queues and mbufs instead of AF_XDP sockets
//!   (`dpdk::transport::DpdkTransport` sets it up).
//!
//! ## TLS
//! [`tls`]: a listener can speak TLS (rustls) on every transport; it runs inside the
//! connection's framed half ([`tls::TlsAcceptor`] given to the transport's config), so the
//! AF_XDP and DPDK loops terminate TLS over their userspace TCP streams themselves.
//!
//! ## WebSocket
//! [`websocket`]: a listener can speak WebSocket (RFC 6455, inside TLS too) for browsers:
//! binary messages carry the frames; it runs in the framed half like TLS
//! ([`websocket::WsAcceptor`] in the transport's config).
//!
//! ## Behind a load balancer
//! [`proxy_header`]: a listener can expect a PROXY protocol header (v1 or v2) before each
//! connection's stream, naming the real client; [`address_limit`] caps connections per
//! client address across the cores; [`peer::PeerPolicy`] applies both, for every
//! transport.
//!
//! [`pin`] pins threads to cores. `sys` is the one module allowed `unsafe` code (raw
//! kernel interfaces, each block with a `// SAFETY:` comment); everything else is safe Rust.
#![deny(unsafe_code)]

pub mod address_limit;
pub mod boundary;
#[cfg(feature = "dpdk")]
pub mod dpdk;
mod framed;
pub mod kernel;
pub mod peer;
pub mod pin;
pub mod proxy_header;
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
pub mod websocket;
pub mod xdp;

pub use address_limit::AddressLimiter;
pub use boundary::{Command, CoreIo, RoundLoad, Threaded, Wake, spawn_threaded};
pub use peer::PeerPolicy;
pub use proxy_header::{ProxyFailure, ProxyStats};
pub use tls::{TlsAcceptor, TlsFailure, TlsStats};
pub use websocket::{WsAcceptor, WsFailure, WsStats};
