//! # petrel-conn — what crosses the transport boundary
//!
//! The smallest crate of the workspace, so that the transports (`petrel-dataplane`) and
//! the control plane (`petrel-control`) can agree on connections without knowing each
//! other:
//! - [`ConnId`] names one connection for its whole life and says which core owns it;
//! - [`TransportEvent`] is what a transport reports about its connections (opened, a
//!   decoded frame, a decode error, bytes flushed, closed).
//!
//! Commands go the other way as plain method calls on the core's transport (send bytes,
//! close), made by the server's per-core loop — see `docs/ARCHITECTURE.md`. No I/O here.
#![deny(unsafe_code)]

mod event;
mod id;

pub use event::TransportEvent;
pub use id::ConnId;
