//! Reads pinned to the last durable state once a WAL flush has failed.
//!
//! With group commit the WAL is flushed by hand (`sync = batch`): a group's writes are in
//! the memtable, and visible to reads, before `FlushWAL` makes them durable. If that
//! flush fails (a full disk), RocksDB marks the database as failed and nothing written
//! since the last successful flush will survive a restart — yet the memtable still
//! shows it. Those writes were refused to their senders, and after the restart their seqs
//! go to other messages, so a reader must never see them.
//!
//! So every `sync_wal` first takes a snapshot of everything applied so far (what the
//! flush is about to make durable), and keeps it once the flush succeeded: the newest
//! *durable* snapshot. After a failed flush the view freezes, and every read uses that
//! snapshot — reads go on serving exactly what a restart will find, and nothing more.
//!
//! This is the crate's one FFI-lifetime module: RocksDB's snapshot handle borrows the
//! `DB`, which lives in the same [`crate::RocksKv`], so the borrow is extended to
//! `'static` here, with the reasons it is sound next to it.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use rocksdb::{DB, ReadOptions, SnapshotWithThreadMode};

/// A snapshot that borrows the `DB` for as long as the [`DurableView`] holding it exists.
type Snapshot = SnapshotWithThreadMode<'static, DB>;

/// The newest durable snapshot, and whether reads are pinned to it.
pub(crate) struct DurableView {
    durable: Mutex<Option<Snapshot>>,
    frozen: AtomicBool,
}

impl DurableView {
    /// A view whose first durable snapshot is everything `db` holds now (what it
    /// recovered at open is durable).
    ///
    /// # Safety
    ///
    /// `db` must stay at its address, and must outlive the view: the caller keeps it in
    /// a `Box` that is dropped after the view (declared after it in the same struct).
    pub(crate) unsafe fn new(db: &DB) -> DurableView {
        DurableView {
            // SAFETY: the caller guarantees `db` outlives this view and does not move;
            // the snapshot is released (in `Drop`, through this reference) before that.
            durable: Mutex::new(Some(unsafe { take(db) })),
            frozen: AtomicBool::new(false),
        }
    }

    /// Runs `flush` (the WAL flush and fsync); if it succeeds, what was applied before it
    /// is the new durable state; if it fails, reads are pinned to the old one for good.
    pub(crate) fn flush<E>(&self, db: &DB, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        if self.frozen.load(Ordering::Acquire) {
            return flush();
        }
        // SAFETY: `db` is the database this view was made for (the same `RocksKv`), so
        // the `new` contract covers this snapshot too.
        let candidate = unsafe { take(db) };
        match flush() {
            Ok(()) => {
                *self.lock() = Some(candidate);
                Ok(())
            }
            Err(e) => {
                drop(candidate);
                self.frozen.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Runs `read` with `ro`, pinned to the last durable snapshot once a flush has failed
    /// (the lock then keeps the snapshot alive for the read; before, reads take no lock).
    pub(crate) fn read<T>(&self, mut ro: ReadOptions, read: impl FnOnce(ReadOptions) -> T) -> T {
        if !self.frozen.load(Ordering::Acquire) {
            return read(ro);
        }
        let guard = self.lock();
        if let Some(snapshot) = guard.as_ref() {
            ro.set_snapshot(snapshot);
        }
        read(ro)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Snapshot>> {
        self.durable.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A snapshot of `db` with its borrow extended to `'static`.
///
/// # Safety
///
/// `db` must outlive the returned snapshot and stay at its address.
unsafe fn take(db: &DB) -> Snapshot {
    // SAFETY: the caller guarantees the `DB` outlives the snapshot and does not move, so
    // the reference the snapshot keeps (used once, to release it) stays valid.
    unsafe { std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, Snapshot>(db.snapshot()) }
}
