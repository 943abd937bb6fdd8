//! # petrel-sdk — the client library apps embed
//!
//! An async (tokio) client for Petrel's wire protocol (`petrel-proto`). It owns
//! everything between an app and a socket: picking an endpoint and reconnecting with
//! back-off, the login token (cache, renewal, provider), heartbeats, a local SQLite
//! store with an outbox, sync from cursors, and an event stream. It talks to a server
//! only through frames and shares no code with the server's control plane; it must never
//! depend on `petrel-control`, `petrel-storage` or `petrel-dataplane`.
//!
//! Read it in this order:
//! 1. [`config`] — [`ClientConfig`]: user, device, endpoints, timings, file paths.
//! 2. [`backoff`] — where and when to reconnect (pure logic, seeded RNG, injected time).
//! 3. [`token`] — [`TokenProvider`] (the app's login service) and the 0600 token cache.
//! 4. [`store`] — the SQLite store: conversations, messages, cursors, outbox; the
//!    exactly-once, in-order delivery rule.
//! 5. [`conn`] — frames over a tokio byte stream; [`stream`] — that stream: TCP, or TLS
//!    over it ([`TlsConfig`], rustls).
//! 6. `task` (private) — the connection task: login, sync, outbox, heartbeat, renewal,
//!    reconnect.
//! 7. [`client`] — [`Client`], the handle an app calls, and [`event`] — what it hears back.
//! 8. [`media`] — [`MediaClient`]: uploads to and downloads from the media service
//!    (HTTP), giving the [`MediaRef`] an image/voice/video message references.
//!
//! ```no_run
//! # async fn demo() -> Result<(), petrel_sdk::SdkError> {
//! use petrel_sdk::{token_fn, Client, ClientConfig, ConversationKey, Event, Token};
//!
//! let mut config = ClientConfig::new(101, "alice-laptop", vec![
//!     "im1.example.com:9500".into(),
//!     "im2.example.com:9500".into(), // backup
//! ]);
//! config.store_path = Some("alice.sqlite".into());
//! config.token_cache_path = Some("alice.token".into());
//! let provider = token_fn(|| Ok(Token { token: "from your login service".into(), expires_at_ms: 0 }));
//! let (client, mut events) = Client::start(config, provider)?;
//! client.send_text(ConversationKey::single(202), "hi bob")?; // queued until acked
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("{}: {}", m.sender, m.text().unwrap_or("[media]"));
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The next layer up is the app (or `petrel chat`, the terminal client in the `petrel`
//! binary); the next layer down is the server, reached only through `docs/PROTOCOL.md`.
#![deny(unsafe_code)]

pub mod backoff;
pub mod client;
pub mod config;
pub mod conn;
pub mod content;
pub mod directory;
pub mod error;
pub mod event;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod media;
pub mod room_seen;
pub mod store;
pub mod stream;
mod task;
pub mod token;

pub use backoff::{Backoff, BackoffConfig, Reconnector};
pub use client::{Client, Events};
pub use config::ClientConfig;
pub use error::SdkError;
pub use event::{ConnectionState, ConversationKey, Event, Message, Recalled};
pub use media::{MediaClient, MediaKind, MediaRef};
pub use petrel_proto::pb;
pub use store::{ConversationSummary, Refs, Store};
pub use stream::TlsConfig;
pub use token::{Token, TokenCache, TokenProvider, token_fn};
