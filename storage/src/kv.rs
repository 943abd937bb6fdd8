//! The key-value boundary between the domain logic and a concrete backend.
//!
//! Like TiKV's `engine_traits`, this trait has no RocksDB types in it: the domain logic
//! (`engine::Store`) is written once against [`Kv`], and each backend — an ordered
//! in-memory map ([`crate::mem::MemKv`]) or RocksDB (`petrel_storage_rocks::RocksKv`) —
//! supplies ordered column families, point reads, bounded scans and atomic batches.

use crate::cf::Cf;
use crate::error::StorageError;

/// Puts and deletes collected for one atomic write.
pub trait Batch {
    /// Queue a put.
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]);
    /// Queue a delete.
    fn delete(&mut self, cf: Cf, key: &[u8]);
    /// Queue a delete of every key in `[start, end)` (one range tombstone in RocksDB, so
    /// later seeks over the range stay cheap before compaction drops it).
    fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]);
    /// Bytes of keys and values queued (for write-amplification accounting).
    fn payload_bytes(&self) -> usize;
}

/// A scan callback: gets each key and value, returns `Ok(false)` to stop.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StorageError> + 'a;

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending key order from `start`.
    Forward,
    /// Descending key order from just below `end`.
    Reverse,
}

/// An ordered, column-family-partitioned key-value store with atomic batches.
pub trait Kv: Send + Sync {
    /// The batch type this backend writes atomically.
    type Batch<'a>: Batch
    where
        Self: 'a;

    /// Start an empty batch.
    fn batch(&self) -> Self::Batch<'_>;

    /// Apply a batch atomically; if `sync`, the WAL is fsynced before returning.
    fn write(&self, batch: Self::Batch<'_>, sync: bool) -> Result<(), StorageError>;

    /// Make every write applied so far durable (one WAL fsync) and, for a replicated
    /// backend ([`crate::replica::Replicated`]), held by its replica log.
    fn sync_wal(&self) -> Result<(), StorageError>;

    /// Make every write applied so far held by the replica log, without an fsync here
    /// (what `sync_wal` adds to the fsync; used when the sync mode does no group fsync).
    /// Nothing to do for a backend without one.
    fn replicate(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Point read.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Visit keys in `[start, end)` in `dir` order, at most `limit` of them, stopping
    /// early when `visit` returns `Ok(false)`. `visit` must not call back into the store.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        dir: Direction,
        limit: usize,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StorageError>;

    /// First key in `[start, end)`, if any (where a timeline or an inbox starts after
    /// retention; where a retention walk goes next).
    fn first_key(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.edge_key(cf, start, end, Direction::Forward)
    }

    /// Last key in `[start, end)`, if any (recovers counters: last seq, last inbox seq).
    fn last_key(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.edge_key(cf, start, end, Direction::Reverse)
    }

    /// The first key of `[start, end)` in `dir` order, if any.
    fn edge_key(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        dir: Direction,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let mut found = None;
        self.scan(cf, start, end, dir, 1, &mut |k, _| {
            found = Some(k.to_vec());
            Ok(false)
        })?;
        Ok(found)
    }
}
