//! # petrel-control — the brain of the server, with no I/O
//!
//! **Owns:** sessions (login with signed tokens, multi-device policy, heartbeats, login
//! deadline, rate limits), token minting and verification, and message routing for the
//! four scenarios — 1:1 chat, group chat, chatroom and public account — plus sync,
//! history and conversation operations.
//!
//! **Must never:** read a clock, touch a socket or a file, spawn a thread, or block.
//! Time arrives as a [`Timestamp`] with every input; frames leave as encoded bytes in
//! [`Action::Send`]; storage work leaves as [`Action::Storage`] and comes back as
//! [`Event::Storage`]. The same [`Control`] runs under the kernel-socket transport, the
//! AF_XDP dataplane and the deterministic simulator in `tests/sim.rs`.
//!
//! **Layers:** below it, `petrel-proto` (frames) and the transports (`petrel-dataplane`,
//! the binary's socket loop) that produce [`Event`]s; beside it, `petrel-storage`,
//! whose `Request`/`Reply` it speaks. The binary (`src/main.rs`) wires them together.
//!
//! Read it in this order:
//! 1. [`time`], [`ConnId`] (from `petrel-conn`) — the two ids every input carries.
//! 2. [`event`] — [`Event`] in, [`Action`] out.
//! 3. [`Control`] (module `plane`) — the state machine and its calling order.
//! 4. [`token`] — token format, key ring, cache, revocation list.
//! 5. [`session`], [`timers`], [`rate_limit`] — per-connection state.
//! 6. [`chatroom`], [`convert`] — in-memory rooms; wire ↔ storage translation.
//! 7. [`config`], [`counters`] — knobs and metrics.
//! 8. [`api`] — operator requests of the deployment's backend (the server HTTP API).
//!
//! The event/action interface is described for transport authors in
//! `docs/ARCHITECTURE.md`, section "Control plane: events and actions".
#![deny(unsafe_code)]

pub mod admission;
pub mod api;
pub mod chatroom;
pub mod config;
pub mod conn_table;
pub mod convert;
pub mod counters;
pub mod event;
mod plane;
pub mod rate_limit;
pub mod remote;
pub mod session;
pub mod time;
pub mod timers;
pub mod token;

pub use admission::{AdmissionConfig, Refusal, Round};
pub use config::{Config, MultiDevicePolicy, RateLimit};
pub use counters::Counters;
pub use event::{Action, CloseReason, Event, OfflineMessage, Revocation, Ticket};
pub use petrel_conn::ConnId;
pub use plane::{Control, TYPING_EXPIRES_MS};
pub use remote::{
    CoreMessage, PushKind, RemoteLogin, RemotePush, RoomPushKind, RoomRequest, RoomSend,
};
pub use time::Timestamp;
pub use token::{Claims, IssuedToken, KeyRing, TokenError, TokenSpec};
