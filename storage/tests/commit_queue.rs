//! Group commit: completions arrive only after their write is durable, many requests share
//! one WAL sync, and replies reach the right ticket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use petrel_storage::cf::Cf;
use petrel_storage::kv::{Direction, Kv, Visitor};
use petrel_storage::mem::{MemBatch, MemKv};
use petrel_storage::{
    AppendRequest, CommitQueue, CommitQueueConfig, ConversationKey, Reply, Request, StorageConfig,
    StorageError, Store, SyncMode, UserId,
};

/// An in-memory backend that counts writes and WAL syncs.
#[derive(Default)]
struct CountingKv {
    inner: MemKv,
    syncs: AtomicU64,
    synced_writes: AtomicU64,
    /// Messages applied so far.
    applied: AtomicU64,
    /// Messages known durable: `applied` as it was when the last sync started.
    durable: AtomicU64,
}

impl Kv for CountingKv {
    type Batch<'a> = MemBatch;
    fn batch(&self) -> MemBatch {
        self.inner.batch()
    }
    fn write(&self, batch: MemBatch, sync: bool) -> Result<(), StorageError> {
        self.inner.write(batch, sync)?;
        if sync {
            self.synced_writes.fetch_add(1, Ordering::SeqCst);
        }
        // A group's appends share one write: count the messages stored, not the writes.
        let mut rows = 0u64;
        self.inner.scan(
            Cf::Messages,
            &[],
            &[0xFF; 32],
            Direction::Forward,
            usize::MAX,
            &mut |_, _| {
                rows += 1;
                Ok(true)
            },
        )?;
        self.applied.store(rows, Ordering::SeqCst);
        Ok(())
    }
    fn sync_wal(&self) -> Result<(), StorageError> {
        let upto = self.applied.load(Ordering::SeqCst);
        // A slow disk, so the writer really runs ahead of the syncer.
        std::thread::sleep(Duration::from_micros(300));
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.durable.fetch_max(upto, Ordering::SeqCst);
        Ok(())
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
}

/// A group-commit store over the counting, slow-syncing backend.
fn slow_batch_store() -> Arc<Store<CountingKv>> {
    Arc::new(
        Store::with_kv(
            CountingKv::default(),
            StorageConfig {
                sync: SyncMode::Batch,
                ..StorageConfig::default()
            },
        )
        .expect("open"),
    )
}

fn append(sender: u64, peer: u64, cmid: u64) -> Request {
    Request::Append(AppendRequest {
        sender: UserId(sender),
        sender_device: "d".into(),
        client_msg_id: cmid,
        conversation: ConversationKey::single(UserId(sender), UserId(peer)),
        payload: Bytes::from_static(b"hello"),
        now_ms: 1_000,
        refs: Default::default(),
    })
}

#[test]
fn completions_come_after_one_shared_sync() {
    let store = slow_batch_store();
    let queue = CommitQueue::start(
        Arc::clone(&store),
        CommitQueueConfig {
            max_batch: 64,
            max_wait: Duration::from_millis(2),
            ..CommitQueueConfig::default()
        },
    )
    .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = 1_000u64;
    for cmid in 0..n {
        let store = Arc::clone(&store);
        let tx = tx.clone();
        queue
            .submit(append(1 + cmid % 4, 10, cmid), move |reply| {
                // Appends are applied in submission order: append `cmid` is message
                // number cmid + 1, and must be durable when we are told.
                let durable = store.kv().durable.load(Ordering::SeqCst);
                tx.send((cmid, reply, durable)).unwrap();
            })
            .unwrap();
    }
    let mut seqs = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for _ in 0..n {
        let (cmid, reply, durable) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(
            durable > cmid,
            "append {cmid} completed before it was synced"
        );
        let Ok(Reply::Appended(out)) = reply else {
            panic!("append failed: {reply:?}")
        };
        seqs.entry(1 + cmid % 4).or_default().push(out.seq);
    }
    // Per conversation, submission order is seq order: 1..=250.
    for (_, s) in seqs {
        assert_eq!(s, (1..=250).collect::<Vec<_>>());
    }
    // Every request's latency is recorded before its completion runs, and none can be
    // shorter than the 300 µs fsync it waited for.
    let stats = queue.stats().snapshot();
    assert_eq!(stats.count, n);
    assert_eq!(stats.buckets.iter().sum::<u64>(), n);
    assert_eq!(
        stats.buckets.len(),
        petrel_storage::LATENCY_BUCKETS_US.len() + 1
    );
    assert_eq!(stats.buckets[..3], [0, 0, 0], "{stats:?}");
    assert!(stats.sum_us >= 300 * n, "{stats:?}");
    queue.shutdown().unwrap();
    let kv = store.kv();
    assert_eq!(
        kv.synced_writes.load(Ordering::SeqCst),
        0,
        "no per-write fsync"
    );
    let syncs = kv.syncs.load(Ordering::SeqCst);
    // Several groups (of at most 64) may share one sync while the previous one runs.
    assert!(syncs >= 1);
    assert!(
        syncs < n / 2,
        "groups formed: {syncs} syncs for {n} appends"
    );
    assert_eq!(stats.groups, syncs, "one durability round per sync");
}

#[test]
fn tickets_route_replies_and_shutdown_drains() {
    let store = Arc::new(petrel_storage::MemEngine::new(StorageConfig::default()));
    let queue = CommitQueue::start(Arc::clone(&store), CommitQueueConfig::default()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    queue.submit_to(append(1, 2, 7), 70, tx.clone()).unwrap();
    queue.submit_to(append(1, 2, 7), 71, tx.clone()).unwrap();
    queue.submit_to(append(3, 4, 8), 80, tx.clone()).unwrap();
    queue
        .submit_to(
            Request::Members {
                conversation: ConversationKey::Group(5),
            },
            90,
            tx,
        )
        .unwrap();
    queue.shutdown().unwrap();
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got.len(), 4, "shutdown finished every submitted request");
    assert!(matches!(&got[0], (70, Ok(Reply::Appended(o))) if o.seq == 1 && !o.duplicate));
    assert!(matches!(&got[1], (71, Ok(Reply::Appended(o))) if o.seq == 1 && o.duplicate));
    assert!(matches!(&got[2], (80, Ok(Reply::Appended(o))) if o.seq == 1));
    assert!(matches!(&got[3], (90, Err(StorageError::NotFound(_)))));
}

#[test]
fn intake_is_bounded_and_a_full_queue_blocks_the_producer() {
    // The slow disk keeps the writer behind a fast producer.
    let store = slow_batch_store();
    let queue = CommitQueue::start(
        Arc::clone(&store),
        CommitQueueConfig {
            max_batch: 4,
            max_queued: 8,
            ..CommitQueueConfig::default()
        },
    )
    .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = 400u64;
    let mut deepest = 0;
    for cmid in 0..n {
        queue
            .submit_to(append(1, 2, cmid), cmid, tx.clone())
            .unwrap();
        deepest = deepest.max(queue.queued());
    }
    assert!(deepest <= 8, "queue depth {deepest} passed its bound of 8");
    queue.shutdown().unwrap();
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got.len() as u64, n, "every request completed");
    assert!(got.iter().all(|(_, r)| matches!(r, Ok(Reply::Appended(_)))));
}
