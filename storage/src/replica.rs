//! Replication of the write stream: every atomic batch a database applies is also a
//! **record** in a replica log kept elsewhere (in Petrel, a JetStream stream with
//! replicas across a NATS cluster), and nothing is acknowledged before the log has it.
//! A database that lost its disk, or its last writes, is rebuilt from the log.
//!
//! [`Replicated`] wraps any [`Kv`] backend, so the domain logic (`engine::Store`) does
//! not know replication exists — like a write-ahead log one level out:
//!
//! ```text
//! Kv::write(batch)   ── under one lock, so local order is record order ──
//!                     record n = the batch's puts and deletes, encoded
//!                     batch += ReplicaLog[n] = record, Meta[replica_through] = n
//!                     inner.write(batch)          (one atomic write, as before)
//! Kv::sync_wal()      inner.sync_wal()            (the group's fsync, as before)
//!                     ship every record not yet in the log, in order; wait for the
//!                     log's acknowledgement; delete their ReplicaLog copies
//!                     ── only now are the group's writes released to their callers ──
//! ```
//!
//! The local copy in `ReplicaLog` (same atomic write as the data) is what makes a
//! crash at any point safe: at the next open ([`Replicated::open`]) the database and
//! the log are compared by record number —
//! - the log is ahead (the disk lost unsynced writes, or the whole disk was replaced):
//!   its records after the database's `replica_through` are applied, in order;
//! - the database is ahead (it wrote records the log never acknowledged, so nobody was
//!   told they were stored): the copies are shipped now, so a write a client later sees
//!   (a dedup hit, a sync) is never one the log lacks.
//!
//! A database that already holds data when it meets an empty log (replication turned
//! on, or the log deleted to start again) is written to it as a snapshot (every column
//! family, in records of about [`SEED_RECORD_BYTES`]) before it serves; a snapshot cut
//! short (the log unreachable meanwhile) starts over at the next open. A log that
//! holds records is refused when the database never recorded one, or was written
//! without it since.
//!
//! A **standby** ([`Replicated::open_standby`], [`Replicated::follow`]) is a database
//! that follows a log another process writes, applying its records as they come, and
//! writes nothing until it is promoted (the engine is built over it): its next record
//! follows the log's last. On a standby the log is the truth, so a database that
//! diverged from it (records the log does not hold, or holds otherwise) is emptied and
//! rebuilt; the same database opened as a primary is refused instead of having the
//! log applied on top of writes the log replaced.
//!
//! A direct engine call is a group of one: `Store` ships it before it returns
//! (`Kv::replicate`). `Kv::write` never waits for the log, so it keeps meaning "applied
//! if and only if `Ok`"; a log that does not answer makes `sync_wal` and `replicate`
//! fail with [`StorageError::Unavailable`], with the writes stored here and queued for
//! the next round.
//!
//! The log numbers records from 1 with no gaps, and refuses a record whose number
//! does not follow its last ([`ReplicaLog::append`]): a second process writing the same
//! log is fenced off instead of interleaving.
//!
//! **Records** are a checked byte format ([`RecordView`] validates before anything is
//! applied): `'W' 1 count(u32 LE)` then exactly `count` operations
//! `kind cf len(u32 LE) key [len(u32 LE) value]`, and nothing after them.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::cf::Cf;
use crate::error::{DecodeError, StorageError};
use crate::keys;
use crate::kv::{Batch, Direction, Kv, Visitor};

const MAGIC: u8 = b'W';
const VERSION: u8 = 1;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const DELETE_RANGE: u8 = 3;

/// Meta key holding the number of the last record this database applied.
pub const META_REPLICA_THROUGH: &[u8] = b"replica_through";
/// Meta key present while a first snapshot into the log is being written.
pub const META_REPLICA_SEEDING: &[u8] = b"replica_seeding";
/// Meta key written by the first write made without the log to a database that had
/// one: the log no longer holds everything, and opening with it again is refused.
pub const META_REPLICA_LEFT: &[u8] = b"replica_left";

/// Meta key naming the log this database follows ([`ReplicaLog::identity`]): a database
/// is never levelled with another log, even one of the same name made again.
pub const META_REPLICA_LOG: &[u8] = b"replica_log";

/// Past every key of every column family (each is shorter than 64 bytes), so a scan
/// from `[]` to it sees the whole column family.
const ALL_KEYS_END: [u8; 64] = [0xff; 64];

/// Roughly how large each record of a first snapshot is.
pub const SEED_RECORD_BYTES: usize = 256 << 10;

/// Most bytes of records written but not yet acknowledged by the log; past it writes
/// are refused ([`StorageError::Unavailable`]) until the log answers again, so a log that
/// is down cannot make the queue grow without bound.
pub const MAX_UNSHIPPED_BYTES: usize = 256 << 20;

const HEADER_LEN: usize = 6;

/// One write's operations, encoded as a record.
#[derive(Debug, Clone)]
pub struct RecordBuf {
    bytes: Vec<u8>,
    ops: u32,
}

impl Default for RecordBuf {
    fn default() -> RecordBuf {
        RecordBuf::new()
    }
}

impl RecordBuf {
    /// An empty record.
    pub fn new() -> RecordBuf {
        RecordBuf {
            bytes: vec![MAGIC, VERSION, 0, 0, 0, 0],
            ops: 0,
        }
    }

    /// Whether it holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    fn field(&mut self, bytes: &[u8]) {
        // Keys and values are far below 4 GiB (messages are at most 64 KiB).
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(bytes);
    }

    fn op(&mut self, kind: u8, cf: Cf, a: &[u8], b: Option<&[u8]>) {
        self.ops += 1;
        // Fewer than 256 column families (`Cf::ALL`).
        self.bytes.push(kind);
        self.bytes.push(cf.index() as u8);
        self.field(a);
        if let Some(b) = b {
            self.field(b);
        }
    }

    /// Record a put.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.op(PUT, cf, key, Some(value));
    }

    /// Record a delete.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.op(DELETE, cf, key, None);
    }

    /// Record a range delete of `[start, end)`.
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.op(DELETE_RANGE, cf, start, Some(end));
    }

    /// The encoded record.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.bytes[2..HEADER_LEN].copy_from_slice(&self.ops.to_le_bytes());
        self.bytes
    }
}

/// One operation of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// `cf[key] = value`.
    Put(Cf, &'a [u8], &'a [u8]),
    /// Remove `cf[key]`.
    Delete(Cf, &'a [u8]),
    /// Remove every key of `cf` in `[start, end)`.
    DeleteRange(Cf, &'a [u8], &'a [u8]),
}

/// A checked view of an encoded record: iterating yields its operations, or the first
/// way it is malformed.
#[derive(Debug, Clone)]
pub struct RecordView<'a> {
    rest: &'a [u8],
    /// Operations still to read.
    left: u32,
}

const WHAT: &str = "replica record";

impl<'a> RecordView<'a> {
    /// Checks the header.
    pub fn new(bytes: &'a [u8]) -> Result<RecordView<'a>, DecodeError> {
        match bytes {
            [MAGIC, VERSION, a, b, c, d, rest @ ..] => Ok(RecordView {
                rest,
                left: u32::from_le_bytes([*a, *b, *c, *d]),
            }),
            [MAGIC, VERSION, ..] => Err(DecodeError::Length {
                what: WHAT,
                expected: HEADER_LEN,
                got: bytes.len(),
            }),
            [MAGIC, version, ..] => Err(DecodeError::Version {
                what: WHAT,
                version: *version,
            }),
            [tag, ..] => Err(DecodeError::Tag {
                what: WHAT,
                tag: *tag,
            }),
            [] => Err(DecodeError::Length {
                what: WHAT,
                expected: HEADER_LEN,
                got: 0,
            }),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Length {
                what: WHAT,
                expected: n,
                got: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn field(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        self.take(len as usize)
    }

    fn next_op(&mut self) -> Result<Op<'a>, DecodeError> {
        let head = self.take(2)?;
        let cf = *Cf::ALL.get(usize::from(head[1])).ok_or(DecodeError::Tag {
            what: "replica record column family",
            tag: head[1],
        })?;
        match head[0] {
            PUT => Ok(Op::Put(cf, self.field()?, self.field()?)),
            DELETE => Ok(Op::Delete(cf, self.field()?)),
            DELETE_RANGE => Ok(Op::DeleteRange(cf, self.field()?, self.field()?)),
            tag => Err(DecodeError::Tag {
                what: "replica record operation",
                tag,
            }),
        }
    }
}

impl<'a> Iterator for RecordView<'a> {
    type Item = Result<Op<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            // Bytes after the last operation: a malformed record.
            let trailing = self.rest.len();
            self.rest = &[];
            return (trailing > 0).then_some(Err(DecodeError::Length {
                what: WHAT,
                expected: 0,
                got: trailing,
            }));
        }
        self.left -= 1;
        let op = self.next_op();
        if op.is_err() {
            (self.rest, self.left) = (&[], 0);
        }
        Some(op)
    }
}

/// Queue every operation of `record` on `batch`; nothing is queued when the record is
/// malformed.
pub fn replay<B: Batch>(record: &[u8], batch: &mut B) -> Result<(), StorageError> {
    for op in RecordView::new(record)? {
        op?;
    }
    for op in RecordView::new(record)?.flatten() {
        match op {
            Op::Put(cf, k, v) => batch.put(cf, k, v),
            Op::Delete(cf, k) => batch.delete(cf, k),
            Op::DeleteRange(cf, s, e) => batch.delete_range(cf, s, e),
        }
    }
    Ok(())
}

/// A reader of records: gets each record's number and bytes, in order.
pub type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StorageError> + 'a;

/// Where records are kept: an append-only log numbered from 1 without gaps.
pub trait ReplicaLog: Send + Sync {
    /// The number of the last whole record the log holds (0: none).
    fn last(&self) -> Result<u64, StorageError>;

    /// Store record `number`, which must follow the log's last; returns once the log
    /// holds it durably. A log whose last record is not `number - 1` refuses it.
    fn append(&self, number: u64, record: &[u8]) -> Result<(), StorageError>;

    /// Store `records` in order (each number following the one before): returns how
    /// many of the first ones the log now holds, and what stopped the others. A log
    /// reached over a network sends them all before waiting for any.
    fn append_all(&self, records: &[(u64, Vec<u8>)]) -> (usize, Result<(), StorageError>) {
        for (stored, (n, record)) in records.iter().enumerate() {
            if let Err(e) = self.append(*n, record) {
                return (stored, Err(e));
            }
        }
        (records.len(), Ok(()))
    }

    /// Drop every record (a snapshot into the log that was cut short starts over).
    fn clear(&self) -> Result<(), StorageError>;

    /// Names this log: its name, a space, then what tells apart the logs of that name
    /// (one deleted and made again has another). A database records the log it is level
    /// with and is never levelled with another.
    fn identity(&self) -> String;

    /// Visit every whole record after `after`, in order.
    fn read_after(&self, after: u64, visit: &mut RecordVisitor<'_>) -> Result<(), StorageError>;
}

/// A replica log in memory (tests and the simulator): it can be told to fail.
#[derive(Debug)]
pub struct MemLog {
    records: Mutex<Vec<Vec<u8>>>,
    failing: std::sync::atomic::AtomicBool,
    /// Its identity: one number per log made in this process.
    id: u64,
}

impl Default for MemLog {
    fn default() -> MemLog {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        MemLog {
            records: Mutex::default(),
            failing: std::sync::atomic::AtomicBool::default(),
            id: MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl MemLog {
    /// Make every later call fail (`true`) or work again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drop every record after the first `keep` (a log that lost its tail).
    pub fn truncate(&self, keep: usize) {
        lock(&self.records).truncate(keep);
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::Unavailable);
        }
        Ok(())
    }
}

impl ReplicaLog for MemLog {
    fn last(&self) -> Result<u64, StorageError> {
        self.check()?;
        Ok(lock(&self.records).len() as u64)
    }

    fn append(&self, number: u64, record: &[u8]) -> Result<(), StorageError> {
        self.check()?;
        let mut records = lock(&self.records);
        if number != records.len() as u64 + 1 {
            return Err(StorageError::Backend(format!(
                "replica log holds {} records; record {number} does not follow",
                records.len()
            )));
        }
        records.push(record.to_vec());
        Ok(())
    }

    fn clear(&self) -> Result<(), StorageError> {
        self.check()?;
        lock(&self.records).clear();
        Ok(())
    }

    fn identity(&self) -> String {
        format!("memory-log {}", self.id)
    }

    fn read_after(&self, after: u64, visit: &mut RecordVisitor<'_>) -> Result<(), StorageError> {
        self.check()?;
        let records = lock(&self.records).clone();
        for (i, record) in records.iter().enumerate().skip(after as usize) {
            visit(i as u64 + 1, record)?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind, still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What [`Replicated::open`] did to bring the database and the log level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Records applied from the log (the database was behind it).
    pub applied: u64,
    /// Records shipped from the database's own copies (the log was behind it).
    pub shipped: u64,
    /// Snapshot records written because the log was empty and the database was not.
    pub seeded: u64,
    /// The last record both now hold.
    pub through: u64,
    /// A standby's database that had diverged from the log was emptied and rebuilt from
    /// it ([`Replicated::open_standby`]); says why.
    pub rebuilt: Option<&'static str>,
}

/// Records written locally and not yet acknowledged by the log.
#[derive(Debug, Default)]
struct Shipping {
    /// The last record number written to the local database.
    written: u64,
    /// Every record up to this one is in the log.
    acked: u64,
    /// Written, not acknowledged, in order.
    queue: VecDeque<(u64, Vec<u8>)>,
    queued_bytes: usize,
    /// A thread is shipping the queue's head now.
    busy: bool,
}

struct Shipper {
    log: Arc<dyn ReplicaLog>,
    state: Mutex<Shipping>,
    /// Signalled whenever a shipping round ends.
    done: Condvar,
}

/// A shipping round in progress. One that ends by a panic (in the log) still clears
/// `busy` and wakes the waiting threads; its records are gone from the queue, so the
/// next ones do not follow in the log and are refused, until a restart ships the local
/// copies. A round that ends normally disarms it.
struct BusyRound<'a> {
    shipper: &'a Shipper,
    armed: bool,
}

impl Drop for BusyRound<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.shipper.state).busy = false;
            self.shipper.done.notify_all();
        }
    }
}

/// A [`Kv`] backend whose writes are also records in a [`ReplicaLog`] (module docs);
/// without a log ([`Replicated::plain`]) it is the backend unchanged.
pub struct Replicated<K> {
    inner: K,
    shipper: Option<Shipper>,
    /// Without a log, on a database that had one: the next write marks it
    /// ([`META_REPLICA_LEFT`]).
    unmarked: std::sync::atomic::AtomicBool,
    /// Opened as a standby and not promoted yet: it follows the log and writes nothing.
    standby: std::sync::atomic::AtomicBool,
}

impl<K: std::fmt::Debug> std::fmt::Debug for Replicated<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicated")
            .field("inner", &self.inner)
            .field("replicated", &self.shipper.is_some())
            .finish()
    }
}

/// A batch of a [`Replicated`] backend: the backend's batch, and the same operations as
/// a record when there is a log.
pub struct ReplicatedBatch<'a, K: Kv + 'a> {
    inner: K::Batch<'a>,
    record: Option<RecordBuf>,
}

impl<'a, K: Kv + 'a> Batch for ReplicatedBatch<'a, K> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put(cf, key, value);
        if let Some(r) = &mut self.record {
            r.put(cf, key, value);
        }
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete(cf, key);
        if let Some(r) = &mut self.record {
            r.delete(cf, key);
        }
    }

    fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.inner.delete_range(cf, start, end);
        if let Some(r) = &mut self.record {
            r.delete_range(cf, start, end);
        }
    }

    fn payload_bytes(&self) -> usize {
        self.inner.payload_bytes()
    }
}

impl<K: Kv> Replicated<K> {
    /// The backend without replication. A database that had a log is marked by its
    /// first write, so that the log is not taken for complete again.
    pub fn plain(inner: K) -> Replicated<K> {
        let had_log = matches!(inner.get(Cf::Meta, META_REPLICA_THROUGH), Ok(Some(_)))
            && !matches!(inner.get(Cf::Meta, META_REPLICA_LEFT), Ok(Some(_)));
        Replicated {
            inner,
            shipper: None,
            unmarked: std::sync::atomic::AtomicBool::new(had_log),
            standby: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The backend with every write also recorded in `log`, after bringing the two
    /// level (module docs): records the database lacks are applied, records the log
    /// lacks are shipped, and an empty log gets a snapshot of a database with data.
    /// An error when they cannot be levelled (the log lost records this database
    /// holds no copy of, or an earlier snapshot was interrupted).
    pub fn open(
        inner: K,
        log: Arc<dyn ReplicaLog>,
    ) -> Result<(Replicated<K>, CatchUp), StorageError> {
        let through = read_through(&inner)?;
        let last = log.last()?;
        let mut catch = CatchUp::default();
        // A log of the same name made again, empty, is seeded from this database.
        check_identity(&inner, &*log, last == 0)?;
        if last == 0 {
            // A new log (or one deleted to start again): it gets the whole database.
            if holds_data(&inner)? {
                catch.seeded = seed(&inner, &*log)?;
            }
        } else if inner.get(Cf::Meta, META_REPLICA_LEFT)?.is_some() {
            return Err(StorageError::Backend(
                "this database was written without its replica log (replication was turned \
                 off), so the log misses those writes: delete the log (the node's JetStream \
                 stream) to have it seeded again from the database"
                    .into(),
            ));
        } else if inner.get(Cf::Meta, META_REPLICA_SEEDING)?.is_some() {
            // An earlier snapshot into the log was cut short: it starts over.
            log.clear()?;
            catch.seeded = seed(&inner, &*log)?;
        } else if through == 0 && holds_data(&inner)? {
            return Err(StorageError::Backend(format!(
                "this database holds data but no record of the replica log, which holds \
                 {last} records: the log is another database's (check the node index and the \
                 cluster name), or the database was never replicated. Move the database aside \
                 to rebuild it from the log, or delete the log to seed it from the database"
            )));
        } else if copies_differ(&inner, &*log)? {
            return Err(StorageError::Backend(
                "the replica log holds other records where this database holds writes of \
                 its own that the log never took: another process wrote the log since (a \
                 standby promoted in its place). Start this one as the node's standby, which \
                 rebuilds it from the log, or move the database aside to rebuild it from the \
                 log as the node"
                    .into(),
            ));
        } else if last < through {
            catch.shipped = ship_own_copies(&inner, &*log, last, through)?;
        } else if last > through {
            catch.applied = apply_from(&inner, &*log, through, last)?;
        }
        catch.through = drop_copies(&inner)?;
        record_identity(&inner, &*log)?;
        Ok((Replicated::levelled(inner, log, catch.through), catch))
    }

    /// A **standby**'s database: it follows a log that another process (the node's
    /// primary) writes, and never writes the log itself until it is promoted. Its
    /// database is brought level by applying the log's records only; one that diverged
    /// from the log — records the log does not hold or holds otherwise (a primary that
    /// stopped with writes the log never took, and was then succeeded), data without a
    /// record of the log, a snapshot cut short, writes made without the log — is
    /// emptied and rebuilt from the log ([`CatchUp::rebuilt`] says why): on a standby
    /// the log is the truth, and what it lacks was never acknowledged to anyone.
    ///
    /// Until it is promoted nothing may write through the returned backend but
    /// [`Replicated::follow`]; after it, it is an ordinary replicated backend whose
    /// first record follows the log's last.
    pub fn open_standby(
        inner: K,
        log: Arc<dyn ReplicaLog>,
    ) -> Result<(Replicated<K>, CatchUp), StorageError> {
        let last = log.last()?;
        // A standby never takes another log for its own, not even an empty one of the
        // same name: its database is moved aside by hand, not emptied for it.
        check_identity(&inner, &*log, false)?;
        let mut catch = CatchUp::default();
        if let Some(why) = diverged(&inner, &*log, last)? {
            let mut batch = inner.batch();
            for cf in Cf::ALL {
                batch.delete_range(cf, &[], &ALL_KEYS_END);
            }
            inner.write(batch, true)?;
            catch.rebuilt = Some(why);
        }
        let through = read_through(&inner)?;
        if last > through {
            catch.applied = apply_from(&inner, &*log, through, last)?;
        }
        catch.through = drop_copies(&inner)?;
        record_identity(&inner, &*log)?;
        let standby = Replicated::levelled(inner, log, catch.through);
        standby
            .standby
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok((standby, catch))
    }

    /// A standby's database ([`Replicated::open_standby`]) takes the records its log
    /// gained since; returns how many. An error on a backend that writes the log
    /// itself (not opened as a standby, or promoted since), or when the log now ends
    /// before this database (it was purged or replaced: start the standby again).
    pub fn follow(&self) -> Result<u64, StorageError> {
        let Some(shipper) = &self.shipper else {
            return Err(StorageError::Backend(
                "a database without a replica log follows none".into(),
            ));
        };
        if !self.standby.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::Backend(
                "a database that writes its replica log follows no other writer of it".into(),
            ));
        }
        let last = shipper.log.last()?;
        let mut state = lock(&shipper.state);
        let through = state.written;
        if last < through {
            return Err(StorageError::Backend(format!(
                "the replica log now ends at record {last}, before this standby's {through}: \
                 it was purged or replaced; start the standby again to rebuild from it"
            )));
        }
        if last == through {
            return Ok(0);
        }
        let applied = apply_from(&self.inner, &*shipper.log, through, last);
        // Each record applied moved the database's mark, also when a later one failed.
        let now = read_through(&self.inner)?;
        (state.written, state.acked) = (now, now);
        applied
    }

    /// A standby's backend is promoted: it writes the log from now on, and follows it
    /// no more.
    pub fn promote(&self) {
        self.standby
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The backend over `inner`, level with `log` through record `through`.
    fn levelled(inner: K, log: Arc<dyn ReplicaLog>, through: u64) -> Replicated<K> {
        let shipper = Shipper {
            log,
            state: Mutex::new(Shipping {
                written: through,
                acked: through,
                ..Shipping::default()
            }),
            done: Condvar::new(),
        };
        Replicated {
            inner,
            shipper: Some(shipper),
            unmarked: std::sync::atomic::AtomicBool::new(false),
            standby: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Hands the wrapped backend back.
    pub fn into_inner(self) -> K {
        self.inner
    }

    /// Whether writes are replicated.
    pub fn is_replicated(&self) -> bool {
        self.shipper.is_some()
    }

    /// `(written, acknowledged)`: the last record written locally and the last the log
    /// holds (for metrics); `None` without a log.
    pub fn replica_marks(&self) -> Option<(u64, u64)> {
        let s = lock(&self.shipper.as_ref()?.state);
        Some((s.written, s.acked))
    }

    /// Ship every record written so far, waiting for the log to hold it.
    fn ship_through(&self, shipper: &Shipper) -> Result<(), StorageError> {
        let mut state = lock(&shipper.state);
        let target = state.written;
        loop {
            if state.acked >= target {
                return Ok(());
            }
            if state.busy {
                state = shipper
                    .done
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            let round: Vec<(u64, Vec<u8>)> = state.queue.drain(..).collect();
            state.busy = true;
            drop(state);
            let mut busy = BusyRound {
                shipper,
                armed: true,
            };
            let (shipped, result) = shipper.log.append_all(&round);
            if shipped > 0 {
                // The copies are no longer needed. Not synced, and its failure is
                // harmless: the next open deletes every copy the log already holds.
                let mut batch = self.inner.batch();
                for (n, _) in &round[..shipped] {
                    batch.delete(Cf::ReplicaLog, &keys::u64_key(*n));
                }
                let _ = self.inner.write(batch, false);
            }
            let shipped_bytes: usize = round[..shipped].iter().map(|(_, r)| r.len()).sum();
            state = lock(&shipper.state);
            if let Some((n, _)) = round[..shipped].last() {
                state.acked = *n;
            }
            // The round's records stayed counted while it ran; the rest go back in front.
            state.queued_bytes = state.queued_bytes.saturating_sub(shipped_bytes);
            for (n, record) in round.into_iter().skip(shipped).rev() {
                state.queue.push_front((n, record));
            }
            // In the same critical section as the state it leaves behind.
            state.busy = false;
            busy.armed = false;
            shipper.done.notify_all();
            result?;
        }
    }
}

impl<K: Kv> Kv for Replicated<K> {
    type Batch<'a>
        = ReplicatedBatch<'a, K>
    where
        Self: 'a;

    fn batch(&self) -> ReplicatedBatch<'_, K> {
        ReplicatedBatch {
            inner: self.inner.batch(),
            record: self.shipper.as_ref().map(|_| RecordBuf::new()),
        }
    }

    fn write(&self, batch: ReplicatedBatch<'_, K>, sync: bool) -> Result<(), StorageError> {
        let (Some(shipper), Some(record)) = (&self.shipper, batch.record) else {
            let mut inner = batch.inner;
            if self.unmarked.load(std::sync::atomic::Ordering::Relaxed) {
                inner.put(Cf::Meta, META_REPLICA_LEFT, &[]);
                self.inner.write(inner, sync)?;
                self.unmarked
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            return self.inner.write(inner, sync);
        };
        if record.is_empty() {
            return self.inner.write(batch.inner, sync);
        }
        let mut inner = batch.inner;
        let record = record.into_bytes();
        {
            let mut state = lock(&shipper.state);
            if state.queued_bytes + record.len() > MAX_UNSHIPPED_BYTES {
                return Err(StorageError::Unavailable);
            }
            let n = state.written + 1;
            inner.put(Cf::ReplicaLog, &keys::u64_key(n), &record);
            inner.put(Cf::Meta, META_REPLICA_THROUGH, &keys::u64_key(n));
            // Under the lock: records are numbered in the order they are applied.
            self.inner.write(inner, sync)?;
            state.written = n;
            state.queued_bytes += record.len();
            state.queue.push_back((n, record));
        }
        // Applied if and only if `Ok`, as for any backend: shipping is `sync_wal`'s and
        // `replicate`'s, whose failure leaves the write stored here and queued.
        Ok(())
    }

    fn sync_wal(&self) -> Result<(), StorageError> {
        self.inner.sync_wal()?;
        self.replicate()
    }

    fn replicate(&self) -> Result<(), StorageError> {
        match &self.shipper {
            Some(shipper) => self.ship_through(shipper),
            None => Ok(()),
        }
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(cf, key)
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
        self.inner.scan(cf, start, end, dir, limit, visit)
    }

    fn edge_key(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        dir: Direction,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.edge_key(cf, start, end, dir)
    }
}

/// Refuses a log other than the one this database recorded following; with
/// `remade_ok`, one of the same name made again (an empty log a primary seeds).
fn check_identity<K: Kv>(
    kv: &K,
    log: &dyn ReplicaLog,
    remade_ok: bool,
) -> Result<(), StorageError> {
    let Some(recorded) = kv.get(Cf::Meta, META_REPLICA_LOG)? else {
        return Ok(());
    };
    let identity = log.identity();
    let recorded = String::from_utf8_lossy(&recorded);
    let name = |id: &str| id.split(' ').next().unwrap_or_default().to_owned();
    if recorded == identity || (remade_ok && name(&recorded) == name(&identity)) {
        return Ok(());
    }
    Err(StorageError::Backend(format!(
        "this database follows the replica log {recorded:?}, not {identity:?}: the log is \
         another node's (check the node index and the cluster name), or was deleted and \
         made again. Move the database aside to rebuild it from this log"
    )))
}

/// Records which log this database is level with (a synced write only when that
/// changes: the first open with a log, or a new log seeded).
fn record_identity<K: Kv>(kv: &K, log: &dyn ReplicaLog) -> Result<(), StorageError> {
    let identity = log.identity();
    if kv.get(Cf::Meta, META_REPLICA_LOG)?.as_deref() == Some(identity.as_bytes()) {
        return Ok(());
    }
    let mut batch = kv.batch();
    batch.put(Cf::Meta, META_REPLICA_LOG, identity.as_bytes());
    kv.write(batch, true)
}

/// Once the log holds every record: drops the local copies; returns the database's
/// last record.
fn drop_copies<K: Kv>(kv: &K) -> Result<u64, StorageError> {
    let mut batch = kv.batch();
    batch.delete_range(Cf::ReplicaLog, &keys::u64_key(0), &ALL_KEYS_END);
    kv.write(batch, false)?;
    read_through(kv)
}

/// Why a standby's database can no longer follow the log (whose last whole record is
/// `last`) by applying what follows its own last record; `None` when it can.
fn diverged<K: Kv>(
    kv: &K,
    log: &dyn ReplicaLog,
    last: u64,
) -> Result<Option<&'static str>, StorageError> {
    if kv.get(Cf::Meta, META_REPLICA_LEFT)?.is_some() {
        return Ok(Some("it was written without the log"));
    }
    if kv.get(Cf::Meta, META_REPLICA_SEEDING)?.is_some() {
        return Ok(Some("a snapshot of it into the log was cut short"));
    }
    let through = read_through(kv)?;
    if through == 0 {
        return Ok(holds_data(kv)?.then_some("it holds data but no record of the log"));
    }
    if through > last {
        return Ok(Some(
            "it holds records the log does not (written by a primary, never acknowledged)",
        ));
    }
    Ok(copies_differ(kv, log)?.then_some(
        "the log holds other records where it holds its own (a primary succeeded by another)",
    ))
}

/// Whether the log holds, at the number of a record this database wrote and kept a copy
/// of, another record (its writer stopped before the log took it, and another writer
/// went on).
fn copies_differ<K: Kv>(kv: &K, log: &dyn ReplicaLog) -> Result<bool, StorageError> {
    let copies = local_copies(kv, 0)?;
    let Some(&(first, _)) = copies.first() else {
        return Ok(false);
    };
    let mut differs = false;
    log.read_after(first.saturating_sub(1), &mut |n, record| {
        if let Ok(i) = copies.binary_search_by_key(&n, |(c, _)| *c) {
            differs |= copies[i].1 != record;
        }
        Ok(())
    })?;
    Ok(differs)
}

/// The database's local copies of records (written, not known to be in the log), from
/// record `from` on, in order.
fn local_copies<K: Kv>(kv: &K, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let mut copies = Vec::new();
    kv.scan(
        Cf::ReplicaLog,
        &keys::u64_key(from),
        &ALL_KEYS_END,
        Direction::Forward,
        usize::MAX,
        &mut |k, v| {
            copies.push((keys::decode_u64(WHAT, k)?, v.to_vec()));
            Ok(true)
        },
    )?;
    Ok(copies)
}

fn read_through<K: Kv>(kv: &K) -> Result<u64, StorageError> {
    match kv.get(Cf::Meta, META_REPLICA_THROUGH)? {
        Some(v) => Ok(keys::decode_u64(WHAT, &v)?),
        None => Ok(0),
    }
}

/// The log ends at `last`, before this database's `through`: ship the copies of the
/// records after `last`, which were written here and never acknowledged.
fn ship_own_copies<K: Kv>(
    kv: &K,
    log: &dyn ReplicaLog,
    last: u64,
    through: u64,
) -> Result<u64, StorageError> {
    let mut copies = local_copies(kv, last + 1)?;
    // The copies that follow the log's last record without a gap, shipped as one round.
    let run = copies
        .iter()
        .zip(last + 1..)
        .take_while(|((n, _), next)| n == next)
        .count();
    copies.truncate(run);
    let next = last + 1 + run as u64;
    if next != through + 1 {
        return Err(StorageError::Backend(format!(
            "the replica log ends at record {last}, this database holds writes through record \
             {through}, and its copies of records {next}..={through} are gone: the log was \
             deleted or belongs to another database. Move the database aside to rebuild it \
             from the log, or delete the log to start a new one from the database"
        )));
    }
    log.append_all(&copies).1?;
    Ok(next - last - 1)
}

/// The database ends at `through`, before the log's `last`: apply the log's records
/// after it, each in one atomic write, then sync.
fn apply_from<K: Kv>(
    kv: &K,
    log: &dyn ReplicaLog,
    through: u64,
    last: u64,
) -> Result<u64, StorageError> {
    let mut expected = through + 1;
    log.read_after(through, &mut |n, record| {
        if n != expected {
            return Err(StorageError::Backend(format!(
                "replica log: record {n} where {expected} was expected"
            )));
        }
        let mut batch = kv.batch();
        replay(record, &mut batch)?;
        batch.put(Cf::Meta, META_REPLICA_THROUGH, &keys::u64_key(n));
        kv.write(batch, false)?;
        expected += 1;
        Ok(())
    })?;
    kv.sync_wal()?;
    if expected <= last {
        return Err(StorageError::Backend(format!(
            "replica log: said it ends at record {last}, gave records up to {}",
            expected - 1
        )));
    }
    Ok(expected - through - 1)
}

/// The meta keys about replication itself, which are this database's alone and never
/// in a record.
const REPLICA_META: [&[u8]; 4] = [
    META_REPLICA_SEEDING,
    META_REPLICA_THROUGH,
    META_REPLICA_LEFT,
    META_REPLICA_LOG,
];

/// Whether the database holds anything but its replication meta keys.
fn holds_data<K: Kv>(kv: &K) -> Result<bool, StorageError> {
    for cf in Cf::ALL {
        let found = match cf {
            Cf::ReplicaLog => false,
            Cf::Meta => {
                let mut found = false;
                kv.scan(
                    cf,
                    &[],
                    &ALL_KEYS_END,
                    Direction::Forward,
                    usize::MAX,
                    &mut |k, _| {
                        found = !REPLICA_META.contains(&k);
                        Ok(!found)
                    },
                )?;
                found
            }
            _ => kv.first_key(cf, &[], &ALL_KEYS_END)?.is_some(),
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Write the whole database to the empty log as records of puts.
fn seed<K: Kv>(kv: &K, log: &dyn ReplicaLog) -> Result<u64, StorageError> {
    let mut batch = kv.batch();
    batch.put(Cf::Meta, META_REPLICA_SEEDING, &[]);
    // The log being seeded is this database's from now on, so a snapshot cut short
    // starts over in it.
    batch.put(Cf::Meta, META_REPLICA_LOG, log.identity().as_bytes());
    kv.write(batch, true)?;
    let mut n = 0;
    let mut record = RecordBuf::new();
    let flush = |record: &mut RecordBuf, n: &mut u64| -> Result<(), StorageError> {
        *n += 1;
        log.append(*n, &std::mem::take(record).into_bytes())?;
        Ok(())
    };
    for cf in Cf::ALL {
        if cf == Cf::ReplicaLog {
            continue;
        }
        let mut failed = None;
        kv.scan(
            cf,
            &[],
            &ALL_KEYS_END,
            Direction::Forward,
            usize::MAX,
            &mut |k, v| {
                if cf == Cf::Meta && REPLICA_META.contains(&k) {
                    return Ok(true);
                }
                record.put(cf, k, v);
                if record.len() >= SEED_RECORD_BYTES
                    && let Err(e) = flush(&mut record, &mut n)
                {
                    failed = Some(e);
                    return Ok(false);
                }
                Ok(true)
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if !record.is_empty() {
        flush(&mut record, &mut n)?;
    }
    let mut batch = kv.batch();
    batch.put(Cf::Meta, META_REPLICA_THROUGH, &keys::u64_key(n));
    batch.delete(Cf::Meta, META_REPLICA_SEEDING);
    batch.delete(Cf::Meta, META_REPLICA_LEFT);
    kv.write(batch, true)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_malformed_ones_are_refused() {
        let mut r = RecordBuf::new();
        assert!(r.is_empty());
        r.put(Cf::Messages, b"k1", b"v1");
        r.delete(Cf::Inbox, b"k2");
        r.delete_range(Cf::Mentions, b"a", b"b");
        let bytes = r.into_bytes();
        let ops: Vec<Op<'_>> = RecordView::new(&bytes)
            .expect("header")
            .collect::<Result<_, _>>()
            .expect("ops");
        assert_eq!(
            ops,
            [
                Op::Put(Cf::Messages, b"k1", b"v1"),
                Op::Delete(Cf::Inbox, b"k2"),
                Op::DeleteRange(Cf::Mentions, b"a", b"b"),
            ]
        );
        // Every truncation is an error, never a panic or a shorter record.
        assert!(RecordView::new(&bytes[..5]).is_err());
        for cut in HEADER_LEN..bytes.len() {
            let view = RecordView::new(&bytes[..cut]).expect("header");
            assert!(view.clone().any(|op| op.is_err()), "cut at {cut}");
        }
        assert!(RecordView::new(&[]).is_err());
        assert!(RecordView::new(b"X\x01").is_err());
        assert!(RecordView::new(b"W\x09").is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(
            RecordView::new(&trailing)
                .expect("header")
                .any(|op| op.is_err())
        );
        let bad_cf = [MAGIC, VERSION, 1, 0, 0, 0, PUT, 200, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(
            RecordView::new(&bad_cf)
                .expect("header")
                .any(|op| op.is_err())
        );
        let bad_kind = [MAGIC, VERSION, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0];
        assert!(
            RecordView::new(&bad_kind)
                .expect("header")
                .any(|op| op.is_err())
        );
        // A malformed record queues nothing.
        let mut batch = crate::mem::MemKv::default().batch();
        assert!(replay(&bytes[..bytes.len() - 1], &mut batch).is_err());
        assert_eq!(batch.payload_bytes(), 0);
    }
}
