//! # petrel-dataplane — bytes in from the network, bytes out to it
//!
//! The dataplane owns connections and moves bytes; it never interprets them beyond
//! framing. It reads from the network, cuts the stream into frames with
//! `petrel-proto`'s decoder, hands connection events and frames to the control plane
//! (`petrel-control`), and writes back whatever the control plane asks it to send.
//!
//! Two transports will implement one boundary, so the control plane never knows which it
//! runs on:
//! - **kernel sockets**: one pinned epoll event loop per core with `SO_REUSEPORT`
//!   listeners — the portable fallback (the `petrel serve` issue);
//! - **AF_XDP + userspace TCP (smoltcp)**: one socket per NIC queue, polled by a pinned
//!   core, with an XDP program that passes everything that isn't Petrel's to the kernel
//!   (the AF_XDP issue).
//!
//! Neither exists yet: this crate is a placeholder so the workspace has its final shape.
//! It must never make routing or storage decisions; those belong to the control plane.
#![deny(unsafe_code)]
