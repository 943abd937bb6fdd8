//! # petrel-storage-rocks
//!
//! Petrel's persistent engine: [`RocksKv`] implements `petrel-storage`'s [`Kv`] boundary
//! over embedded RocksDB (one column family per [`Cf`]), and [`RocksEngine`] is the
//! domain logic of `petrel-storage` ([`Store`]) over it. Options are in [`options`].
//!
//! **Owns:** everything that knows RocksDB exists — opening the database, column-family
//! options, compaction filters, checkpoints. **Must never:** hold domain logic (seqs,
//! permissions, diffusion, dedup live in `petrel-storage`, so the in-memory engine and
//! this one cannot disagree; the conformance suite in `tests/conformance.rs` runs both).
//! Only the server binary and the tests that need a real database depend on this crate,
//! so the control plane, the dataplane and their tests build without RocksDB's C++.
//!
//! Every `Kv::write` is one RocksDB `WriteBatch`, so a group's appends (messages, inbox
//! entries, dedup entries) are one WAL record and all or nothing. `sync_wal` is
//! `FlushWAL(sync = true)`: one write of the buffered WAL (in `SyncMode::Batch` the WAL
//! is flushed manually) and one fsync, making every earlier write durable, which is what
//! group commit needs.
//!
//! Once a WAL flush has failed (a full disk), reads are pinned to the last durable
//! snapshot (`durable_view`), so the refused writes still in the memtable are never
//! shown: readers see exactly what a restart will find.
//!
//! [`standby::RocksStandby`] is a standby's database, following a replica log until it
//! is promoted to an engine.
//!
//! [`outbox::Outbox`] is a durable queue in a database of its own (the webhook queue).
//!
//! `src/bin/storage-crash-child.rs` is a test helper for `tests/crash.rs`, not a server.
#![deny(unsafe_code)]

mod durable_view;
pub mod options;
pub mod outbox;
pub mod standby;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    Cache, ColumnFamily, ColumnFamilyDescriptor, DB, ReadOptions, WriteBatch, WriteOptions,
};

use petrel_storage::cf::Cf;
use petrel_storage::keys;
use petrel_storage::kv::{Batch, Direction, Kv, Visitor};
use petrel_storage::replica::{CatchUp, ReplicaLog, Replicated};
use petrel_storage::{StorageConfig, StorageError, Store};

/// The RocksDB engine; its backend replicates every write when opened with a replica
/// log ([`RocksEngineExt::open_replicated`]).
pub type RocksEngine = Store<Replicated<RocksKv>>;

fn backend(e: rocksdb::Error) -> StorageError {
    StorageError::Backend(e.into_string())
}

/// An open RocksDB database with Petrel's column families.
pub struct RocksKv {
    /// Declared before `db`, so it (and its snapshot, which borrows the database) is
    /// dropped first.
    view: durable_view::DurableView,
    /// Boxed so the address the view's snapshot borrows stays put when `RocksKv` moves.
    db: Box<DB>,
}

impl std::fmt::Debug for RocksKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKv")
            .field("path", &self.db.path())
            .finish()
    }
}

impl RocksKv {
    /// Open (creating if needed) the database at `path`. `config` sets the dedup window
    /// of the expiry compaction filter; `clock` is the time they judge expiry by
    /// (the engine's latest request time, see [`Store::clock`]).
    pub fn open(
        path: &Path,
        config: &StorageConfig,
        clock: &Arc<AtomicU64>,
    ) -> Result<Self, StorageError> {
        let cache = Cache::new_lru_cache(options::BLOCK_CACHE_BYTES);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| {
                let options = options::cf_options(*cf, &cache, config, clock).map_err(backend)?;
                Ok(ColumnFamilyDescriptor::new(cf.name(), options))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let db = Box::new(
            DB::open_cf_descriptors(&options::db_options(config), path, cfs).map_err(backend)?,
        );
        #[allow(unsafe_code)]
        // SAFETY: `db` is boxed (its address never changes) and is dropped after `view`
        // (field order of `RocksKv`), which is all `DurableView::new` asks.
        let view = unsafe { durable_view::DurableView::new(&db) };
        Ok(RocksKv { view, db })
    }

    fn handle(&self, cf: Cf) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StorageError::Backend(format!("column family {} missing", cf.name())))
    }

    /// Compact one column family completely (maintenance, tests): runs the expiry
    /// filters over every entry.
    pub fn compact(&self, cf: Cf) -> Result<(), StorageError> {
        let h = self.handle(cf)?;
        self.db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Purge the earlier values of `erasures`' keys from the database files: flush every
    /// column family (the new values reach SST files, and every write-ahead log segment
    /// holding an old value becomes obsolete and is deleted), then compact each key's
    /// range down through the bottom level, which drops the versions the new value
    /// shadows. Compaction rewrites whole files, so this runs on a background thread
    /// (`petrel-scrub`), never on the writer. Old bytes survive only in checkpoints and
    /// backups taken before, and wherever a snapshot still pins them.
    pub fn purge(&self, erasures: &petrel_storage::Erasures) -> Result<(), StorageError> {
        if erasures.is_empty() {
            return Ok(());
        }
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        for cf in Cf::ALL {
            self.db
                .flush_cf_opt(self.handle(cf)?, &flush)
                .map_err(backend)?;
        }
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(false);
        for (cf, ranges) in purge_ranges(erasures) {
            let h = self.handle(cf)?;
            for (start, end) in ranges {
                self.db
                    .compact_range_cf_opt(h, start.as_deref(), end.as_deref(), &compact);
            }
        }
        Ok(())
    }

    /// Write a consistent point-in-time copy of the database to `dir` (which must not
    /// exist). SST files are hard-linked, so this is cheap; the copy opens as a normal
    /// database, e.g. for backups.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(backend)
    }
}

/// Keys queued together in one family beyond this are purged as one range.
const PURGE_KEYS_ONE_BY_ONE: usize = 16;

/// An inclusive key range to compact (`None`: open at that end).
type KeyRange = (Option<Vec<u8>>, Option<Vec<u8>>);

/// What [`RocksKv::purge`] compacts, per column family: `(start, end)` inclusive key
/// ranges (`None`: open). A few keys are compacted one by one (each rewrites only the
/// files that hold it); more than [`PURGE_KEYS_ONE_BY_ONE`] become one range from the
/// smallest to the largest, since one compaction over a range rewrites each file once
/// where many would rewrite the same bottom files again and again; an overflowed queue
/// compacts each family named once, whole.
fn purge_ranges(erasures: &petrel_storage::Erasures) -> Vec<(Cf, Vec<KeyRange>)> {
    let mut by_cf: Vec<(Cf, Vec<&Vec<u8>>)> = Vec::new();
    for (cf, key) in &erasures.keys {
        match by_cf.iter_mut().find(|(c, _)| c == cf) {
            Some((_, keys)) => keys.push(key),
            None => by_cf.push((*cf, vec![key])),
        }
    }
    by_cf
        .into_iter()
        .map(|(cf, mut keys)| {
            keys.sort();
            keys.dedup();
            let ranges = if erasures.overflowed {
                vec![(None, None)]
            } else if keys.len() > PURGE_KEYS_ONE_BY_ONE {
                let (first, last) = (keys[0], keys[keys.len() - 1]);
                vec![(Some(first.clone()), Some(last.clone()))]
            } else {
                keys.iter()
                    .map(|k| (Some((*k).clone()), Some((*k).clone())))
                    .collect()
            };
            (cf, ranges)
        })
        .collect()
}

/// A RocksDB write batch being filled. Column-family handles are resolved once, when
/// the batch is started (one group's appends share a batch), not by name per put.
pub struct RocksBatch<'a> {
    handles: [Option<&'a ColumnFamily>; Cf::ALL.len()],
    batch: WriteBatch,
    bytes: usize,
    missing: Option<Cf>,
}

impl Batch for RocksBatch<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.bytes += key.len() + value.len();
        match self.handles[cf.index()] {
            Some(h) => self.batch.put_cf(h, key, value),
            None => self.missing = Some(cf),
        }
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.bytes += key.len();
        match self.handles[cf.index()] {
            Some(h) => self.batch.delete_cf(h, key),
            None => self.missing = Some(cf),
        }
    }

    fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.bytes += start.len() + end.len();
        match self.handles[cf.index()] {
            Some(h) => self.batch.delete_range_cf(h, start, end),
            None => self.missing = Some(cf),
        }
    }

    fn payload_bytes(&self) -> usize {
        self.bytes
    }
}

impl Kv for RocksKv {
    type Batch<'a> = RocksBatch<'a>;

    fn batch(&self) -> RocksBatch<'_> {
        RocksBatch {
            handles: Cf::ALL.map(|cf| self.db.cf_handle(cf.name())),
            batch: WriteBatch::default(),
            bytes: 0,
            missing: None,
        }
    }

    fn write(&self, batch: RocksBatch<'_>, sync: bool) -> Result<(), StorageError> {
        if let Some(cf) = batch.missing {
            return Err(StorageError::Backend(format!(
                "column family {} missing; batch not written",
                cf.name()
            )));
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch.batch, &opts).map_err(backend)
    }

    fn sync_wal(&self) -> Result<(), StorageError> {
        // After a failed flush, reads show only what was durable before it (see
        // `durable_view`): the refused writes in the memtable never reach a reader.
        self.view
            .flush(&self.db, || self.db.flush_wal(true))
            .map_err(backend)
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let h = self.handle(cf)?;
        let read = |ro: ReadOptions| {
            Ok(self
                .db
                .get_pinned_cf_opt(h, key, &ro)
                .map_err(backend)?
                .map(|v| v.to_vec()))
        };
        self.view.read(ReadOptions::default(), read)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        dir: Direction,
        limit: usize,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StorageError> {
        if start >= end || limit == 0 {
            return Ok(());
        }
        let h = self.handle(cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        // Prefix seeks are only correct when the whole range shares the start's prefix,
        // and reverse seeks start from a key outside it: otherwise seek in total order.
        let within_prefix = dir == Direction::Forward
            && options::prefix_len(cf).is_some_and(|p| {
                start.len() >= p
                    && (end.starts_with(&start[..p]) || end == keys::prefix_end(&start[..p]))
            });
        if within_prefix {
            ro.set_prefix_same_as_start(true);
        } else {
            ro.set_total_order_seek(true);
        }
        let walk = |ro: ReadOptions| {
            let mut it = self.db.raw_iterator_cf_opt(h, ro);
            match dir {
                Direction::Forward => it.seek(start),
                Direction::Reverse => it.seek_to_last(),
            }
            let mut n = 0;
            while n < limit {
                let Some((k, v)) = it.item() else { break };
                n += 1;
                if !visit(k, v)? {
                    return Ok(());
                }
                match dir {
                    Direction::Forward => it.next(),
                    Direction::Reverse => it.prev(),
                }
            }
            it.status().map_err(backend)
        };
        self.view.read(ro, walk)
    }
}

/// Opening and checkpointing a [`RocksEngine`] (a trait because [`Store`] lives in
/// `petrel-storage`): `RocksEngine::open(path, config)` with this trait in scope.
pub trait RocksEngineExt: Sized {
    /// Open (creating if needed) a RocksDB engine at `path`. Counters (last seq per
    /// conversation, inbox heads, id allocators) are recovered lazily from the data on
    /// first use, so open cost does not grow with the number of conversations.
    fn open(path: &Path, config: StorageConfig) -> Result<Self, StorageError>;

    /// Like [`RocksEngineExt::open`], with every write also a record in `log`
    /// (`petrel_storage::replica`): before the engine opens, the database and the log
    /// are brought level — a database that lost writes (or its whole disk) gets them
    /// back from the log — and what that did is returned with the engine.
    fn open_replicated(
        path: &Path,
        config: StorageConfig,
        log: Arc<dyn ReplicaLog>,
    ) -> Result<(Self, CatchUp), StorageError>;

    /// Consistent checkpoint of the whole database into `dir` (see
    /// [`RocksKv::checkpoint`]).
    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError>;

    /// Purge what recalls and edits overwrote since the last call from the database
    /// files ([`RocksKv::purge`]); returns how many keys were purged. Failed purges are
    /// queued again. Slow (flushes and compactions): call it from a background thread.
    fn scrub(&self) -> Result<usize, StorageError>;
}

impl RocksEngineExt for RocksEngine {
    fn open(path: &Path, config: StorageConfig) -> Result<Self, StorageError> {
        let clock = Arc::new(AtomicU64::new(0));
        let kv = RocksKv::open(path, &config, &clock)?;
        Store::with_kv_and_clock(Replicated::plain(kv), config, clock)
    }

    fn open_replicated(
        path: &Path,
        config: StorageConfig,
        log: Arc<dyn ReplicaLog>,
    ) -> Result<(Self, CatchUp), StorageError> {
        let clock = Arc::new(AtomicU64::new(0));
        let kv = RocksKv::open(path, &config, &clock)?;
        let (kv, catch_up) = Replicated::open(kv, log)?;
        Ok((Store::with_kv_and_clock(kv, config, clock)?, catch_up))
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        self.kv().inner().checkpoint(dir)
    }

    fn scrub(&self) -> Result<usize, StorageError> {
        let erasures = self.take_erasures();
        let n = erasures.keys.len();
        if let Err(e) = self.kv().inner().purge(&erasures) {
            self.requeue_erasures(erasures);
            return Err(e);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_storage::Erasures;

    #[test]
    fn few_keys_are_purged_one_by_one_many_as_one_range_an_overflow_whole() {
        let key = |n: u8| vec![n; 4];
        let few = Erasures {
            keys: vec![
                (Cf::Messages, key(3)),
                (Cf::Messages, key(1)),
                (Cf::Messages, key(3)),
            ],
            overflowed: false,
        };
        let ranges = purge_ranges(&few);
        assert_eq!(ranges.len(), 1);
        assert_eq!(
            ranges[0].1,
            vec![(Some(key(1)), Some(key(1))), (Some(key(3)), Some(key(3)))]
        );
        let many = Erasures {
            keys: (0..40).rev().map(|n| (Cf::Messages, key(n))).collect(),
            overflowed: false,
        };
        assert_eq!(
            purge_ranges(&many)[0].1,
            vec![(Some(key(0)), Some(key(39)))]
        );
        let overflowed = Erasures {
            keys: vec![(Cf::Messages, key(1)), (Cf::Messages, key(2))],
            overflowed: true,
        };
        assert_eq!(
            purge_ranges(&overflowed),
            vec![(Cf::Messages, vec![(None, None)])]
        );
    }
}
