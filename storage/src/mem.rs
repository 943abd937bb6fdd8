//! In-memory backend: one `BTreeMap` per column family behind a `RwLock`.
//!
//! Used by control-plane tests and the simulator, and run through the same conformance
//! suite as RocksDB. Nothing survives a drop; `sync_wal` is a no-op.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use crate::cf::Cf;
use crate::config::StorageConfig;
use crate::engine::Store;
use crate::error::StorageError;
use crate::kv::{Batch, Direction, Kv, Visitor};

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// Ordered maps, one per column family.
#[derive(Debug, Default)]
pub struct MemKv {
    tables: RwLock<[Table; Cf::ALL.len()]>,
}

/// The in-memory engine.
pub type MemEngine = Store<MemKv>;

impl MemEngine {
    /// A fresh, empty in-memory engine with `config.partitions` partitions (recorded
    /// in it, like a new database's, so it can be opened again from its backend).
    pub fn new(config: StorageConfig) -> Self {
        let kv = MemKv::default();
        let wanted = crate::partition::Partitions::clamped(config.partitions);
        // An empty in-memory backend cannot fail to record it.
        let partitions = crate::engine::decide_partitions(&kv, wanted).unwrap_or(wanted);
        let epoch = crate::engine::decide_epoch(&kv).unwrap_or(1);
        Store::with_partitions(kv, config, Default::default(), partitions, epoch)
    }
}

/// One queued operation.
#[derive(Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// A batch of owned operations.
#[derive(Debug, Default)]
pub struct MemBatch {
    ops: Vec<(Cf, Op)>,
    bytes: usize,
}

impl Batch for MemBatch {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.bytes += key.len() + value.len();
        self.ops.push((cf, Op::Put(key.to_vec(), value.to_vec())));
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.bytes += key.len();
        self.ops.push((cf, Op::Delete(key.to_vec())));
    }

    fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.bytes += start.len() + end.len();
        self.ops
            .push((cf, Op::DeleteRange(start.to_vec(), end.to_vec())));
    }

    fn payload_bytes(&self) -> usize {
        self.bytes
    }
}

fn poisoned() -> StorageError {
    StorageError::Backend("in-memory table lock poisoned".into())
}

impl Kv for MemKv {
    type Batch<'a> = MemBatch;

    fn batch(&self) -> MemBatch {
        MemBatch::default()
    }

    fn write(&self, batch: MemBatch, _sync: bool) -> Result<(), StorageError> {
        let mut tables = self.tables.write().map_err(|_| poisoned())?;
        for (cf, op) in batch.ops {
            let table = &mut tables[cf.index()];
            match op {
                Op::Put(k, v) => {
                    table.insert(k, v);
                }
                Op::Delete(k) => {
                    table.remove(&k);
                }
                Op::DeleteRange(start, end) => {
                    if start < end {
                        let doomed: Vec<Vec<u8>> = table
                            .range::<[u8], _>((
                                Bound::Included(&start[..]),
                                Bound::Excluded(&end[..]),
                            ))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            table.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn sync_wal(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let tables = self.tables.read().map_err(|_| poisoned())?;
        Ok(tables[cf.index()].get(key).cloned())
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
        if start >= end {
            return Ok(());
        }
        let tables = self.tables.read().map_err(|_| poisoned())?;
        let range =
            tables[cf.index()].range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let mut visit_all = |it: &mut dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>| {
            for (k, v) in it.take(limit) {
                if !visit(k, v)? {
                    break;
                }
            }
            Ok(())
        };
        match dir {
            Direction::Forward => visit_all(&mut range.into_iter()),
            Direction::Reverse => visit_all(&mut range.rev()),
        }
    }
}
