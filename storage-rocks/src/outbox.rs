//! A durable first-in, first-out queue of opaque records in a small RocksDB database of
//! its own: the server's webhook queue (`src/webhook/`).
//!
//! **Why a database of its own.** The queue has one owner (the webhook thread), which
//! writes and fsyncs it on its own schedule; in the messaging database it would be a
//! second writer beside the core loop's group commit and would share its fsyncs. Its
//! records are transient (delivered within seconds, normally), so it is not part of
//! `petrel admin backup`.
//!
//! **Layout.** Column family `queue`: key = the record's id (u64 big-endian, assigned in
//! push order, never reused while the database lives), value = the record. Column family
//! `dead`: records given up on ([`Outbox::bury`]), same keys. The default column family
//! holds `next_id`, written with every push, so ids are not reused once the queue empties;
//! the lengths are counted at open.
//!
//! **Durability.** [`Outbox::push`] and [`Outbox::bury`] are synced (fdatasync of the
//! WAL) before they return: a pushed record survives a crash of the machine.
//! [`Outbox::remove`] is written but not synced: it survives the process (killed or
//! not), and after a machine crash a delivered record may be delivered once more — which
//! is why records carry their id to the receiver.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use petrel_storage::StorageError;

use crate::backend;

const QUEUE: &str = "queue";
const DEAD: &str = "dead";
const NEXT_ID: &[u8] = b"next_id";

/// The durable queue. See the module docs.
pub struct Outbox {
    db: DB,
    next_id: u64,
    len: usize,
    dead_len: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.db.path())
            .field("len", &self.len)
            .field("dead_len", &self.dead_len)
            .finish()
    }
}

fn id_of(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::Backend(format!("outbox key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

impl Outbox {
    /// Opens (creating if needed) the queue at `path`.
    pub fn open(path: &Path) -> Result<Outbox, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // A small queue: small memtables, few log files.
        options.set_write_buffer_size(4 << 20);
        options.set_keep_log_file_num(2);
        let cfs = [QUEUE, DEAD].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(backend)?;
        let mut outbox = Outbox {
            db,
            next_id: 1,
            len: 0,
            dead_len: 0,
        };
        if let Some(stored) = outbox.db.get(NEXT_ID).map_err(backend)? {
            outbox.next_id = id_of(&stored)?;
        }
        let mut counts = [0; 2];
        for (name, count) in [QUEUE, DEAD].into_iter().zip(&mut counts) {
            let cf = outbox.cf(name)?;
            for item in outbox.db.iterator_cf(cf, IteratorMode::Start) {
                let (key, _) = item.map_err(backend)?;
                *count += 1;
                outbox.next_id = outbox.next_id.max(id_of(&key)? + 1);
            }
        }
        [outbox.len, outbox.dead_len] = counts;
        Ok(outbox)
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Backend(format!("outbox column family {name} missing")))
    }

    /// Records waiting to be delivered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records given up on.
    pub fn dead_len(&self) -> usize {
        self.dead_len
    }

    /// Appends `count` records, each rendered by `render` from the id it gets, as one
    /// synced write. Returns the ids given.
    pub fn push(
        &mut self,
        count: usize,
        mut render: impl FnMut(usize, u64) -> Vec<u8>,
    ) -> Result<std::ops::Range<u64>, StorageError> {
        let first = self.next_id;
        if count == 0 {
            return Ok(first..first);
        }
        let cf = self.cf(QUEUE)?;
        let mut batch = WriteBatch::default();
        for i in 0..count {
            let id = first + i as u64;
            batch.put_cf(cf, id.to_be_bytes(), render(i, id));
        }
        let next = first + count as u64;
        batch.put(NEXT_ID, next.to_be_bytes());
        self.db.write_opt(batch, &synced()).map_err(backend)?;
        self.next_id = next;
        self.len += count;
        Ok(first..self.next_id)
    }

    /// Up to `max` of the oldest waiting records, oldest first.
    pub fn peek(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.scan(QUEUE, max)
    }

    /// Up to `max` of the oldest records given up on.
    pub fn dead(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.scan(DEAD, max)
    }

    fn scan(&self, name: &str, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let cf = self.cf(name)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start).take(max) {
            let (key, value) = item.map_err(backend)?;
            out.push((id_of(&key)?, value.into_vec()));
        }
        Ok(out)
    }

    /// Deletes delivered records (not synced; see the module docs).
    pub fn remove(&mut self, ids: &[u64]) -> Result<(), StorageError> {
        let cf = self.cf(QUEUE)?;
        let mut batch = WriteBatch::default();
        for id in ids {
            batch.delete_cf(cf, id.to_be_bytes());
        }
        self.db.write(batch).map_err(backend)?;
        self.len = self.len.saturating_sub(ids.len());
        Ok(())
    }

    /// Moves records from the queue to the dead letters, synced.
    pub fn bury(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        let (queue, dead) = (self.cf(QUEUE)?, self.cf(DEAD)?);
        let mut batch = WriteBatch::default();
        for (id, value) in records {
            batch.delete_cf(queue, id.to_be_bytes());
            batch.put_cf(dead, id.to_be_bytes(), value);
        }
        self.db.write_opt(batch, &synced()).map_err(backend)?;
        self.len = self.len.saturating_sub(records.len());
        self.dead_len += records.len();
        Ok(())
    }

    /// Moves up to `max` dead letters back to the tail of the queue (new ids, so the
    /// receiver sees them as new deliveries of the same events), synced. Returns how many.
    pub fn revive(&mut self, max: usize) -> Result<usize, StorageError> {
        let records = self.dead(max)?;
        let (queue, dead) = (self.cf(QUEUE)?, self.cf(DEAD)?);
        let mut batch = WriteBatch::default();
        for (i, (id, value)) in records.iter().enumerate() {
            batch.delete_cf(dead, id.to_be_bytes());
            batch.put_cf(queue, (self.next_id + i as u64).to_be_bytes(), value);
        }
        let next = self.next_id + records.len() as u64;
        batch.put(NEXT_ID, next.to_be_bytes());
        self.db.write_opt(batch, &synced()).map_err(backend)?;
        self.next_id = next;
        self.len += records.len();
        self.dead_len = self.dead_len.saturating_sub(records.len());
        Ok(records.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(records: &[(u64, Vec<u8>)]) -> Vec<String> {
        records
            .iter()
            .map(|(id, v)| format!("{id}:{}", String::from_utf8_lossy(v)))
            .collect()
    }

    #[test]
    fn records_come_out_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let mut outbox = Outbox::open(&path).unwrap();
        let ids = outbox
            .push(3, |i, id| format!("r{i}@{id}").into_bytes())
            .unwrap();
        assert_eq!(ids, 1..4);
        assert_eq!(values(&outbox.peek(2).unwrap()), ["1:r0@1", "2:r1@2"]);
        outbox.remove(&[1]).unwrap();
        drop(outbox);

        let mut outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.len(), 2);
        assert_eq!(values(&outbox.peek(10).unwrap()), ["2:r1@2", "3:r2@3"]);
        // Ids are never reused, even after the newest record is gone.
        outbox.remove(&[2, 3]).unwrap();
        drop(outbox);
        let mut outbox = Outbox::open(&path).unwrap();
        assert!(outbox.is_empty());
        let next = outbox.push(1, |_, _| b"x".to_vec()).unwrap();
        assert_eq!(next, 4..5);
    }

    #[test]
    fn buried_records_wait_apart_and_can_be_revived_at_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let mut outbox = Outbox::open(&path).unwrap();
        outbox.push(2, |i, _| vec![b'a' + i as u8]).unwrap();
        let head = outbox.peek(1).unwrap();
        outbox.bury(&head).unwrap();
        assert_eq!((outbox.len(), outbox.dead_len()), (1, 1));
        assert_eq!(values(&outbox.dead(10).unwrap()), ["1:a"]);
        assert_eq!(values(&outbox.peek(10).unwrap()), ["2:b"]);
        drop(outbox);

        let mut outbox = Outbox::open(&path).unwrap();
        assert_eq!((outbox.len(), outbox.dead_len()), (1, 1));
        assert_eq!(outbox.revive(10).unwrap(), 1);
        assert_eq!(values(&outbox.peek(10).unwrap()), ["2:b", "3:a"]);
        assert_eq!(outbox.dead_len(), 0);
    }
}
