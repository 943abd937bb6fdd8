//! Webhooks for the deployment's backend (docs/API.md, "Webhooks"): a call for every
//! stored message that reached recipients with no online session, so the backend can
//! send a phone push (APNs, FCM).
//!
//! **Where it runs.** The home core's loop hands each
//! [`petrel_control::Action::OfflineMessage`] to [`Webhooks::offer`] (a `try_send` on a
//! bounded channel: the loop never waits; full → dropped and counted). One thread,
//! `petrel-webhook`, with a one-thread tokio runtime ([`dispatch`]), owns everything
//! else: it writes the events to a durable queue (`data_dir/webhooks`, a small RocksDB of
//! its own: `petrel_storage_rocks::outbox`), sends them oldest first in batches, signed
//! ([`sign`]), and deletes them when the receiver answers 2xx. A failed call is retried
//! with exponential back-off and jitter; after `max_attempts` calls the batch's events
//! become dead letters (kept on disk, counted, logged).
//!
//! **Guarantees.** An event is queued after its message is durable and pushed. A graceful
//! stop writes every event handed over to the queue; what is queued survives restarts and
//! crashes and is sent after them. Each event reaches the receiver in exactly one
//! acknowledged call, except after a crash of the machine (not just the process), when
//! a call may repeat: events carry the queue's `id` for that. An event handed over in the
//! last moments before the process is killed (not yet written to the queue) is lost.
//!
//! **Modules.** [`config`] (the `[webhook]` table), [`event`] (the JSON), [`sign`]
//! (HMAC), [`stats`] (metrics), [`dispatch`] (the thread).

pub mod config;
pub mod dispatch;
pub mod event;
pub mod sign;
pub mod stats;

pub use config::{WebhookFile, WebhookSettings};
pub use dispatch::Webhooks;
pub use stats::WebhookStats;
