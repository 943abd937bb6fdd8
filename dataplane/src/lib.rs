//! # petrel-dataplane — bytes in from the network, bytes out to it
//!
//! The dataplane owns connections and moves bytes; it never interprets them beyond
//! framing. It reads from the network, cuts the stream into frames with `petrel-proto`'s
//! decoder, hands connection events and frames to the control plane (`petrel-control`)
//! as [`petrel_control::Event`]s, and writes back what the control plane's
//! [`petrel_control::Action`]s ask it to send. It must never make routing, session or
//! storage decisions: those belong to the control plane.
//!
//! ## The transport boundary
//! Every transport implements the same boundary, so the control plane never knows which
//! one it runs on:
//! - **in**: `Opened`, `Frame`, `FrameError`, `Flushed` and `Closed` events, sent over a
//!   bounded crossbeam channel to the thread that runs the control plane (a full channel
//!   makes the transport stop reading: back-pressure, never unbounded memory);
//! - **out**: [`CoreCommand`]s (send bytes, close, shut down), routed by the
//!   [`Router`] straight to the core that owns the connection — a
//!   [`petrel_control::ConnId`] carries its core in its top bits.
//!
//! ## Transports
//! - [`kernel`]: kernel sockets — one pinned mio/epoll event loop per core, each with its
//!   own `SO_REUSEPORT` listener on every listen address so the kernel spreads
//!   connections across cores. The portable fallback and the baseline.
//! - [`xdp`]: AF_XDP + userspace TCP (smoltcp): an XDP filter program, one AF_XDP socket
//!   and pinned poller per NIC queue, smoltcp shards, Ethernet/ARP done here
//!   ([`xdp::transport::XdpTransport`]). First version, tested on the veth lab; not yet
//!   selectable in `petrel serve` (see its docs for what is missing).
//!
//! [`pin`] pins threads to cores. `sys` is the one module allowed `unsafe` code (raw
//! kernel interfaces, each block with a `// SAFETY:` comment); everything else is safe Rust.
#![deny(unsafe_code)]

pub mod boundary;
pub mod kernel;
pub mod pin;
#[allow(unsafe_code)]
pub mod sys;
pub mod xdp;

pub use boundary::{CoreCommand, CoreHandle, Router};
