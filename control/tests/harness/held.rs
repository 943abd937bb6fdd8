//! Storage under the test's control, for fault schedules.
//!
//! With [`Sim::hold_storage`] set, every storage request the control plane emits waits in
//! a queue. The test then plays the storage driver step by step:
//! - [`Sim::execute`] runs one queued request on the in-memory engine — any request the
//!   driver contract allows next: requests of one connection are applied in emission
//!   order, requests of different connections in any order (`Action::Storage`'s doc) —
//!   or, with a [`StorageFault`], fails it *without applying it* (the engine refused
//!   before writing anything). [`Sim::execute_not_durable`] applies a write and still
//!   fails it, as the commit queue does after a failed WAL sync. Either way the
//!   completion is held, not delivered.
//! - [`Sim::deliver`] hands one held completion to the control plane, in any order: a
//!   completion can be delayed past any number of later ones.
//!
//! Every delivered completion is also logged for [`super::model`], which uses it to
//! know what is durable: a write is durable from the moment its successful completion is
//! delivered.

use petrel_control::{ConnId, Event, Ticket};
use petrel_proto::pb;
use petrel_storage::{ConversationKey, DecodeError, Engine, Reply, Request, StorageError, UserId};

use super::Sim;

/// The client request whose handling emitted a storage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The requesting connection.
    pub conn: ConnId,
    /// The request's id.
    pub rid: u32,
}

/// A storage request the control plane emitted and storage has not executed yet.
#[derive(Debug)]
pub struct Queued {
    pub ticket: Ticket,
    pub request: Request,
    /// `None` for requests no client frame caused (operator actions, timers).
    pub origin: Option<Origin>,
}

/// An executed request whose completion is held.
#[derive(Debug)]
pub struct Completion {
    pub ticket: Ticket,
    pub origin: Option<Origin>,
    /// The request as emitted.
    pub request: Request,
    /// The engine's answer, or the injected failure (then the request was not applied).
    pub result: Result<Reply, StorageError>,
    /// Whether `result` is an injected failure.
    pub injected: bool,
}

/// A completion the control plane has been given.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub ticket: Ticket,
    pub origin: Option<Origin>,
    pub request: Request,
    /// The reply, or the kind of error (injected or the engine's own).
    pub result: Result<Reply, StorageFault>,
    /// Whether the error was injected.
    pub injected: bool,
}

/// How [`Sim::execute_as`] runs a request.
#[derive(Debug, Clone, Copy)]
enum Execution {
    Normal,
    Refused(StorageFault),
    NotDurable,
}

/// One kind of [`StorageError`], injectable into any completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageFault {
    NotAMember,
    NotOwner,
    NotAdmin,
    Protected,
    Muted,
    NoSuchMessage,
    TooLate,
    NotFound,
    Invalid,
    Corrupt,
    Backend,
    Io,
    Closed,
    Overflow,
    Unavailable,
    /// An `Io` error of kind `StorageFull`: the disk is full.
    NoSpace,
}

impl StorageFault {
    /// Every variant of [`StorageError`], one each, and a full disk.
    pub const ALL: [StorageFault; 16] = [
        StorageFault::NotAMember,
        StorageFault::NotOwner,
        StorageFault::NotAdmin,
        StorageFault::Protected,
        StorageFault::Muted,
        StorageFault::NoSuchMessage,
        StorageFault::TooLate,
        StorageFault::NotFound,
        StorageFault::Invalid,
        StorageFault::Corrupt,
        StorageFault::Backend,
        StorageFault::Io,
        StorageFault::Closed,
        StorageFault::Overflow,
        StorageFault::Unavailable,
        StorageFault::NoSpace,
    ];

    /// The error itself. ([`StorageFault::of`] matches [`StorageError`] exhaustively,
    /// so a new variant does not compile until it is listed here and in [`Self::ALL`].)
    pub fn error(self) -> StorageError {
        let conversation = ConversationKey::Group(0);
        let user = UserId(0);
        match self {
            StorageFault::NotAMember => StorageError::NotAMember { conversation, user },
            StorageFault::NotOwner => StorageError::NotOwner { conversation, user },
            StorageFault::NotAdmin => StorageError::NotAdmin { conversation, user },
            StorageFault::Protected => StorageError::Protected {
                conversation,
                target: user,
            },
            StorageFault::Muted => StorageError::Muted {
                conversation,
                user,
                until_ms: 1,
                remaining_ms: 1,
            },
            StorageFault::NoSuchMessage => StorageError::NoSuchMessage {
                conversation,
                seq: 1,
            },
            StorageFault::TooLate => StorageError::TooLate {
                conversation,
                seq: 1,
                action: "recall",
                window_ms: 1,
            },
            StorageFault::NotFound => StorageError::NotFound(conversation),
            StorageFault::Invalid => StorageError::Invalid("injected"),
            StorageFault::Corrupt => StorageError::Corrupt(DecodeError::Tag {
                what: "injected",
                tag: 0xff,
            }),
            StorageFault::Backend => StorageError::Backend("injected".into()),
            StorageFault::Io => StorageError::Io(std::io::Error::other("injected")),
            StorageFault::Closed => StorageError::Closed,
            StorageFault::Overflow => StorageError::Overflow,
            StorageFault::Unavailable => StorageError::Unavailable,
            StorageFault::NoSpace => {
                StorageError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull))
            }
        }
    }

    /// The `Error` code the requester gets: the request's own fault maps to its protocol
    /// code, a storage that is shutting down to `SHUTTING_DOWN` (send it again after
    /// reconnecting), a full disk to `STORAGE_FULL`, anything else to `INTERNAL`
    /// (docs/PROTOCOL.md, 5.7).
    pub fn expected_code(self) -> pb::ErrorCode {
        match self {
            StorageFault::NotAMember => pb::ErrorCode::NotAMember,
            StorageFault::NotOwner | StorageFault::NotAdmin | StorageFault::Protected => {
                pb::ErrorCode::PermissionDenied
            }
            StorageFault::NotFound | StorageFault::NoSuchMessage => pb::ErrorCode::NotFound,
            StorageFault::TooLate => pb::ErrorCode::PermissionDenied,
            StorageFault::Muted => pb::ErrorCode::Muted,
            StorageFault::Invalid => pb::ErrorCode::InvalidRequest,
            StorageFault::Closed => pb::ErrorCode::ShuttingDown,
            StorageFault::NoSpace => pb::ErrorCode::StorageFull,
            StorageFault::Unavailable => pb::ErrorCode::ServerBusy,
            StorageFault::Corrupt
            | StorageFault::Backend
            | StorageFault::Io
            | StorageFault::Overflow => pb::ErrorCode::Internal,
        }
    }

    /// The kind of `error`.
    pub fn of(error: &StorageError) -> StorageFault {
        if error.is_no_space() {
            return StorageFault::NoSpace;
        }
        match error {
            StorageError::NotAMember { .. } => StorageFault::NotAMember,
            StorageError::NotOwner { .. } => StorageFault::NotOwner,
            StorageError::NotAdmin { .. } => StorageFault::NotAdmin,
            StorageError::Protected { .. } => StorageFault::Protected,
            StorageError::NotFound(_) => StorageFault::NotFound,
            StorageError::NoSuchMessage { .. } => StorageFault::NoSuchMessage,
            StorageError::TooLate { .. } => StorageFault::TooLate,
            StorageError::Muted { .. } => StorageFault::Muted,
            StorageError::Invalid(_) => StorageFault::Invalid,
            StorageError::Corrupt(_) => StorageFault::Corrupt,
            StorageError::Backend(_) => StorageFault::Backend,
            StorageError::Io(_) => StorageFault::Io,
            StorageError::Closed => StorageFault::Closed,
            StorageError::Overflow => StorageFault::Overflow,
            StorageError::Unavailable => StorageFault::Unavailable,
        }
    }

    /// Whether the failure is the server's (counted in `Counters::storage_errors` when
    /// it answers a client request) rather than the request's.
    pub fn is_server_fault(self) -> bool {
        matches!(
            self,
            StorageFault::Corrupt
                | StorageFault::Backend
                | StorageFault::Io
                | StorageFault::Closed
                | StorageFault::Overflow
                | StorageFault::Unavailable
                | StorageFault::NoSpace
        )
    }
}

/// Whether the control plane answers a client request when `request` completes (as
/// opposed to a background write or the start-up load, which nobody waits for).
pub fn is_answered(request: &Request) -> bool {
    match request {
        Request::Append(_)
        | Request::CreateGroup { .. }
        | Request::AddMembers { .. }
        | Request::RemoveMembers { .. }
        | Request::Leave { .. }
        | Request::SetRole { .. }
        | Request::Mute { .. }
        | Request::Dissolve { .. }
        | Request::Recall { .. }
        | Request::Edit { .. }
        | Request::ReadCount { .. }
        | Request::CreatePublicAccount { .. }
        | Request::Follow { .. }
        | Request::Unfollow { .. }
        | Request::MarkRead { .. }
        | Request::Members { .. }
        | Request::Sync(_)
        | Request::History { .. } => true,
        Request::RoleOf { .. }
        | Request::ConversationsOf { .. }
        | Request::TouchActivity { .. }
        | Request::LastActive { .. }
        | Request::RevokeToken { .. }
        | Request::LoadRevoked { .. }
        | Request::Trim { .. } => false,
    }
}

impl Sim {
    /// Storage requests emitted and not executed, in emission order.
    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.queue.iter()
    }

    /// Executed requests whose completions are held, in execution order.
    pub fn held(&self) -> &[Completion] {
        &self.held
    }

    /// Positions in [`Sim::queued`] that storage may execute next: the oldest request of
    /// each connection, and every request no connection made.
    pub fn executable(&self) -> Vec<usize> {
        let mut seen = std::collections::HashSet::new();
        self.queue
            .iter()
            .enumerate()
            .filter(|(_, q)| q.origin.is_none_or(|o| seen.insert(o.conn)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Executes executable request number `pick` (modulo their count), or fails it with
    /// `fault` without applying it; its completion is held. Returns whether it was
    /// executed out of emission order, or `None` if nothing was queued.
    pub fn execute(&mut self, pick: usize, fault: Option<StorageFault>) -> Option<bool> {
        self.execute_as(pick, fault.map_or(Execution::Normal, Execution::Refused))
    }

    /// Executes executable request number `pick` (modulo their count) and then fails it
    /// if it wrote, as the commit queue does when the WAL sync after a group fails
    /// (`petrel_storage::api::fail_not_durable`): the write *is* applied — it holds its
    /// seq and dedup entry, later reads see it — but its completion is
    /// `StorageError::Backend`. Reads complete normally.
    pub fn execute_not_durable(&mut self, pick: usize) -> Option<bool> {
        self.execute_as(pick, Execution::NotDurable)
    }

    fn execute_as(&mut self, pick: usize, how: Execution) -> Option<bool> {
        let executable = self.executable();
        if executable.is_empty() {
            return None;
        }
        let index = executable[pick % executable.len()];
        let Queued {
            ticket,
            request,
            origin,
        } = self.queue.remove(index).expect("index from executable()");
        let (result, injected) = match how {
            Execution::Refused(fault) => (Err(fault.error()), true),
            Execution::Normal => (self.storage.execute(request.clone()), false),
            Execution::NotDurable => match self.storage.execute(request.clone()) {
                Ok(_) if request.is_write() => (
                    Err(StorageError::Backend(
                        "WAL sync failed, write not durable: injected".into(),
                    )),
                    true,
                ),
                other => (other, false),
            },
        };
        self.held.push(Completion {
            ticket,
            origin,
            request,
            result,
            injected,
        });
        Some(index > 0)
    }

    /// Delivers held completion number `pick` (modulo their count) to the control plane
    /// and performs what it causes. Returns whether an older completion is still held
    /// (the delivery overtook it), or `None` if nothing was held.
    pub fn deliver(&mut self, pick: usize) -> Option<bool> {
        if self.held.is_empty() {
            return None;
        }
        let index = pick % self.held.len();
        let Completion {
            ticket,
            origin,
            request,
            result,
            injected,
        } = self.held.remove(index);
        self.delivered.push(Delivered {
            ticket,
            origin,
            request,
            result: match &result {
                Ok(reply) => Ok(reply.clone()),
                Err(e) => Err(StorageFault::of(e)),
            },
            injected,
        });
        self.control
            .handle(self.now, Event::Storage { ticket, result });
        self.run();
        Some(index > 0)
    }

    /// Executes every queued request (emission order, no faults) and delivers every
    /// held completion (execution order), until storage is idle.
    pub fn settle(&mut self) {
        while self.execute(0, None).is_some() || self.deliver(0).is_some() {}
    }

    /// The completions delivered since the last call, in delivery order.
    pub fn take_delivered(&mut self) -> Vec<Delivered> {
        std::mem::take(&mut self.delivered)
    }
}
