//! # petrel-sdk — the client library apps embed
//!
//! The client side of Petrel's wire protocol (`petrel-proto`): token caching and renewal,
//! heartbeats, reconnection with exponential back-off and jitter across backup endpoints,
//! a local SQLite store with an outbox, and sync from cursors. It talks to a server only
//! through frames; it shares no code with the server's control plane.
//!
//! Not written yet: this crate is a placeholder so the workspace has its final shape; the
//! client SDK issue fills it.
#![deny(unsafe_code)]
