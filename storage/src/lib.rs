//! # petrel-storage
//!
//! Everything Petrel must keep across a restart: conversation timelines, per-user
//! inboxes and news markers, memberships and roles, read cursors, user activity and
//! revoked tokens. See `docs/STORAGE.md` for the model and every key layout.
//!
//! This crate does not depend on RocksDB: it holds the model, the requests and replies,
//! the [`Kv`](kv::Kv) boundary and the logic over it, the in-memory engine and group
//! commit. The RocksDB engine is the `petrel-storage-rocks` crate (one more [`kv::Kv`]
//! implementation), which only the server binary and the tests that need a real
//! database depend on — so the control plane, the dataplane and their tests never
//! compile RocksDB's C++.
//!
//! **Owns:** the persisted model and its invariants — per-conversation seqs that are
//! gap-free and never reused, exactly-once append by `(sender, conversation,
//! client_msg_id)`, membership/permission checks done atomically with the write they
//! guard, and durability (an append is acknowledged only once it is in the WAL, per [`SyncMode`]).
//!
//! **Must never:** parse protocol frames (payloads are opaque bytes; no dependency on
//! `petrel-proto`), touch a socket, or make policy decisions that belong to the control
//! plane (who gets a live push is returned, not delivered).
//!
//! **Layers, in reading order:**
//! - [`model`], [`config`], [`error`] — plain types;
//! - [`api`] — the [`Request`]/[`Reply`] enums and the [`Engine`] trait;
//! - [`cf`], [`keys`], [`values`] — column families and byte layouts of every key and value;
//!   [`partition`] — which partition a conversation belongs to, and the partitioned inbox;
//! - [`kv`] — the key-value boundary; [`mem`] is its in-memory backend; [`replica`]
//!   wraps any backend so each write is also a record in a replica log;
//! - [`engine`] — the domain logic ([`engine::Store`]), written once over [`kv::Kv`];
//!   [`recent_ids`] is its bounded in-memory dedup filter;
//! - [`commit`] — group commit (writer + syncer threads): submit now, completion once
//!   durable;
//! - [`committer`] — group commit for a run-to-completion loop: the loop applies each
//!   group itself, a syncer thread fsyncs, replies are released once durable (what
//!   `petrel serve` uses).
//!
//! The next layer up is `petrel-control`, which emits [`Request`]s as actions and
//! receives [`Reply`]s as events; its driver runs them on an engine.
#![deny(unsafe_code)]

pub mod api;
pub mod cf;
pub mod commit;
pub mod committer;
pub mod config;
pub mod engine;
pub mod error;
pub mod keys;
pub mod kv;
pub mod mem;
pub mod model;
pub mod partition;
pub mod recent_ids;
pub mod replica;
pub mod unsynced;
pub mod values;

pub use api::{
    AppendOutcome, AppendRequest, EditOutcome, Engine, HistoryPage, InboxCursor, MembershipChange,
    READ_COUNT_MAX_MEMBERS, RecallOutcome, Recipients, Reply, Request, SyncPage, SyncRequest,
    TrimReport,
};
pub use commit::{
    CommitQueue, CommitQueueConfig, CommitStats, CommitStatsSnapshot, Completion,
    LATENCY_BUCKETS_US,
};
pub use committer::{Committer, GroupEngine, SyncRounds, WakeLoop};
pub use config::{DiffusionMode, Retention, StorageConfig, SyncMode};
pub use engine::{Erasures, Store, StoreStats, WriterCacheStats};
pub use error::{DecodeError, StorageError, WireError};
pub use mem::MemEngine;
pub use model::{
    ConversationKey, ConversationState, Member, Recall, Refs, RevokedToken, Role, StoredMessage,
    TokenId, UserId,
};
pub use recent_ids::RecentIdsStats;
