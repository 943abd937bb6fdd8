//! Group commit: a dedicated writer thread turns many small requests into few durable
//! groups, so callers (the control plane's driver on a dataplane core) never block on
//! fsync.
//!
//! ```text
//! callers ──submit(request, completion)──▶ channel ──▶ writer thread
//!                                                     │ take up to N requests, waiting at
//!                                                     │ most M µs for more after the first;
//!                                                     │ Engine::apply_batch (not yet durable)
//!                                                     ▼
//!                                                  syncer thread
//!                                                     │ take every group waiting;
//!                                                     │ Engine::make_durable (one WAL fsync
//!                                                     │ in SyncMode::Batch)
//! completion(reply) ◀─────────────────────────────────┘ only after that fsync returned
//! ```
//!
//! The writer applies group k+1 while the syncer fsyncs group k, so the disk and the
//! CPU work overlap; under load several groups share one fsync. Nobody is told "done"
//! before their write is durable: completions run only after a `make_durable` that
//! started after the write was applied. If the fsync fails, every write in those groups
//! is completed with an error. Replies keep submission order. Completions run on the
//! syncer thread, so they must be quick (send on a channel, wake a core).
//!
//! The submission queue holds at most [`CommitQueueConfig::max_queued`] requests: a
//! `submit` beyond that blocks its caller until the writer catches up (back-pressure
//! on the producer, never unbounded memory); [`CommitQueue::queued`] shows the depth.
//! Between writer and syncer at most [`SYNC_QUEUE_GROUPS`] groups wait, so
//! applied-but-not-durable work stays bounded when the disk is slow.
//!
//! [`CommitStats`] records how long each request took from `submit` to its completion (the
//! latency a client's Ack waits for storage) in a fixed-bucket histogram of relaxed
//! atomics, written by the syncer thread only and read by whoever exports metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::api::{Engine, Reply, Request, fail_not_durable};
use crate::error::StorageError;

/// A completion callback: receives the reply once it is durable.
pub type Completion = Box<dyn FnOnce(Result<Reply, StorageError>) + Send + 'static>;

/// Group-commit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitQueueConfig {
    /// Most requests applied per WAL fsync (N).
    pub max_batch: usize,
    /// Longest the writer waits for more requests after the first one of a batch (M).
    pub max_wait: Duration,
    /// Most requests waiting for the writer; `submit` blocks while this many wait.
    pub max_queued: usize,
}

impl Default for CommitQueueConfig {
    fn default() -> Self {
        CommitQueueConfig {
            max_batch: 512,
            max_wait: Duration::from_micros(100),
            max_queued: 65_536,
        }
    }
}

struct Job {
    request: Request,
    done: Completion,
    submitted: Instant,
}

/// An applied group waiting for its fsync.
struct Applied {
    writes: Vec<bool>,
    replies: Vec<Result<Reply, StorageError>>,
    completions: Vec<Completion>,
    submitted: Vec<Instant>,
}

/// Upper bounds of [`CommitStats`]' latency buckets, in microseconds (the last bucket,
/// +Inf, is implicit).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Submit-to-completion latency of every request, as a histogram. Shared with the
/// metrics exporter through [`CommitQueue::stats`].
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
    pub(crate) groups: AtomicU64,
    /// How long each durability round's WAL sync took (one per round; count = `groups`).
    sync_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sync_sum_us: AtomicU64,
    /// How long applying each group took on the loop's thread (the RocksDB write batch
    /// and its WAL write, before any fsync); a slow apply stalls every connection of
    /// that loop, so it shows here apart from the disk's sync time.
    apply_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    apply_sum_us: AtomicU64,
}

/// A copy of [`CommitStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStatsSnapshot {
    /// Requests per bucket (not cumulative), bounds [`LATENCY_BUCKETS_US`] then +Inf.
    pub buckets: Vec<u64>,
    /// Requests completed.
    pub count: u64,
    /// Sum of their latencies, microseconds.
    pub sum_us: u64,
    /// Durability rounds (one WAL fsync each in `SyncMode::Batch`) completed.
    pub groups: u64,
    /// Rounds per bucket of how long their WAL sync took (not cumulative), bounds
    /// [`LATENCY_BUCKETS_US`] then +Inf; rounds recorded by a syncer that times them.
    pub sync_buckets: Vec<u64>,
    /// Sum of those syncs' durations, microseconds.
    pub sync_sum_us: u64,
    /// Groups per bucket of how long applying them took on the loop's thread (not
    /// cumulative), bounds [`LATENCY_BUCKETS_US`] then +Inf; groups of a committer.
    pub apply_buckets: Vec<u64>,
    /// Sum of those applies' durations, microseconds.
    pub apply_sum_us: u64,
}

impl CommitStatsSnapshot {
    /// Adds `other` to this one: the stats of several committers (one per core) as one.
    /// Durability rounds are recorded once each, by the round's first committer, so the
    /// sum counts a shared fsync once.
    pub fn absorb(&mut self, other: &CommitStatsSnapshot) {
        fn add(mine: &mut Vec<u64>, theirs: &[u64]) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
        add(&mut self.buckets, &other.buckets);
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.groups += other.groups;
        add(&mut self.sync_buckets, &other.sync_buckets);
        self.sync_sum_us += other.sync_sum_us;
        add(&mut self.apply_buckets, &other.apply_buckets);
        self.apply_sum_us += other.apply_sum_us;
    }
}

impl CommitStats {
    fn record(&self, latency: Duration) {
        self.record_many(latency, 1);
    }

    /// Records `n` requests that each took `latency` (one group released together).
    pub(crate) fn record_many(&self, latency: Duration, n: usize) {
        let n = n as u64;
        let us = bucket_add(&self.buckets, latency, n);
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_us
            .fetch_add(us.saturating_mul(n), Ordering::Relaxed);
    }

    /// Records how long one durability round's WAL sync took (the disk's share of every
    /// durable latency, next to the commit latency it bounds).
    pub(crate) fn record_sync(&self, took: Duration) {
        let us = bucket_add(&self.sync_buckets, took, 1);
        self.sync_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records how long applying one group took on the loop's thread.
    pub(crate) fn record_apply(&self, took: Duration) {
        let us = bucket_add(&self.apply_buckets, took, 1);
        self.apply_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The current values (each read on its own: a scrape racing the syncer may see a
    /// count one round ahead of the buckets).
    pub fn snapshot(&self) -> CommitStatsSnapshot {
        CommitStatsSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            groups: self.groups.load(Ordering::Relaxed),
            sync_buckets: self
                .sync_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sync_sum_us: self.sync_sum_us.load(Ordering::Relaxed),
            apply_buckets: self
                .apply_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            apply_sum_us: self.apply_sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Adds `n` to the bucket of [`LATENCY_BUCKETS_US`] (then +Inf) that `latency` falls in;
/// returns the latency in microseconds.
fn bucket_add(buckets: &[AtomicU64], latency: Duration, n: u64) -> u64 {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let i = LATENCY_BUCKETS_US
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(LATENCY_BUCKETS_US.len());
    buckets[i].fetch_add(n, Ordering::Relaxed);
    us
}

/// Most applied groups waiting for the syncer before the writer pauses.
pub const SYNC_QUEUE_GROUPS: usize = 4;

/// Handle to the writer and syncer threads. Dropping it (or calling
/// [`CommitQueue::shutdown`]) finishes every request already submitted, then stops them.
pub struct CommitQueue {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<CommitStats>,
}

impl std::fmt::Debug for CommitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitQueue")
            .field("running", &self.tx.is_some())
            .finish()
    }
}

impl CommitQueue {
    /// Start the writer and syncer threads for `engine`.
    pub fn start<E: Engine + 'static>(
        engine: Arc<E>,
        config: CommitQueueConfig,
    ) -> Result<Self, StorageError> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.max_queued.max(1));
        let (applied_tx, applied_rx) = crossbeam_channel::bounded::<Applied>(SYNC_QUEUE_GROUPS);
        let syncer_engine = Arc::clone(&engine);
        let stats = Arc::new(CommitStats::default());
        let syncer_stats = Arc::clone(&stats);
        let syncer = std::thread::Builder::new()
            .name("petrel-storage-syncer".into())
            .spawn(move || syncer_loop(&*syncer_engine, &applied_rx, &syncer_stats))?;
        let writer = std::thread::Builder::new()
            .name("petrel-storage-writer".into())
            .spawn(move || writer_loop(&*engine, &rx, &applied_tx, config));
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                // The syncer stops once its channel's sender (moved into the failed
                // closure, now dropped) is gone.
                let _ = syncer.join();
                return Err(e.into());
            }
        };
        Ok(CommitQueue {
            tx: Some(tx),
            threads: vec![writer, syncer],
            stats,
        })
    }

    /// The latency histogram, for metrics.
    pub fn stats(&self) -> Arc<CommitStats> {
        Arc::clone(&self.stats)
    }

    /// Queue a request; `done` is called with its reply once durable. Blocks while
    /// `max_queued` requests wait for the writer (back-pressure).
    /// Fails with [`StorageError::Closed`] if the writer has stopped.
    pub fn submit(
        &self,
        request: Request,
        done: impl FnOnce(Result<Reply, StorageError>) + Send + 'static,
    ) -> Result<(), StorageError> {
        let tx = self.tx.as_ref().ok_or(StorageError::Closed)?;
        tx.send(Job {
            request,
            done: Box::new(done),
            submitted: Instant::now(),
        })
        .map_err(|_| StorageError::Closed)
    }

    /// Requests submitted and not yet taken by the writer (at most `max_queued`).
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    /// Queue a request whose reply is sent to `to` tagged with `ticket` (for a driver
    /// that polls one channel for all completions).
    pub fn submit_to(
        &self,
        request: Request,
        ticket: u64,
        to: Sender<(u64, Result<Reply, StorageError>)>,
    ) -> Result<(), StorageError> {
        self.submit(request, move |reply| {
            // The receiver may have gone away (driver shut down); nothing to tell then.
            let _ = to.send((ticket, reply));
        })
    }

    /// Finish every submitted request, then stop the writer thread.
    pub fn shutdown(mut self) -> Result<(), StorageError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StorageError> {
        drop(self.tx.take());
        let mut result = Ok(());
        // Writer first (it closes the syncer's channel when it ends), then the syncer.
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                result = Err(StorageError::Backend(
                    "storage commit thread panicked".into(),
                ));
            }
        }
        result
    }
}

impl Drop for CommitQueue {
    fn drop(&mut self) {
        // Errors here can only be a writer panic, already reported by the panic hook.
        let _ = self.stop();
    }
}

fn writer_loop<E: Engine + ?Sized>(
    engine: &E,
    rx: &Receiver<Job>,
    to_syncer: &Sender<Applied>,
    config: CommitQueueConfig,
) {
    let max_batch = config.max_batch.max(1);
    while let Ok(first) = rx.recv() {
        let mut requests = Vec::with_capacity(max_batch);
        let mut completions: Vec<Completion> = Vec::with_capacity(max_batch);
        let mut submitted = Vec::with_capacity(max_batch);
        requests.push(first.request);
        completions.push(first.done);
        submitted.push(first.submitted);
        let deadline = Instant::now() + config.max_wait;
        while requests.len() < max_batch {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => match rx.recv_deadline(deadline) {
                    Ok(job) => job,
                    // Timeout: send what we have. Disconnected: the outer `recv` ends the
                    // loop after this group.
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            requests.push(job.request);
            completions.push(job.done);
            submitted.push(job.submitted);
        }
        let writes: Vec<bool> = requests.iter().map(Request::is_write).collect();
        let replies = engine.apply_batch(requests);
        let applied = Applied {
            writes,
            replies,
            completions,
            submitted,
        };
        if let Err(crossbeam_channel::SendError(lost)) = to_syncer.send(applied) {
            // The syncer is gone (it panicked): these writes will never be made durable.
            fail_all(
                lost,
                "storage syncer thread stopped; write not known durable",
            );
        }
    }
}

fn syncer_loop<E: Engine + ?Sized>(engine: &E, rx: &Receiver<Applied>, stats: &CommitStats) {
    let mut groups = Vec::with_capacity(SYNC_QUEUE_GROUPS + 1);
    while let Ok(first) = rx.recv() {
        groups.push(first);
        groups.extend(rx.try_iter());
        let wrote = groups.iter().any(|g| {
            g.writes
                .iter()
                .zip(&g.replies)
                .any(|(w, r)| *w && r.is_ok())
        });
        let synced = if wrote { engine.make_durable() } else { Ok(()) };
        let now = Instant::now();
        stats.groups.fetch_add(1, Ordering::Relaxed);
        for mut g in groups.drain(..) {
            if let Err(e) = &synced {
                fail_not_durable(&g.writes, &mut g.replies, e);
            }
            for at in &g.submitted {
                stats.record(now.saturating_duration_since(*at));
            }
            for (done, reply) in g.completions.into_iter().zip(g.replies) {
                done(reply);
            }
        }
    }
}

fn fail_all(group: Applied, why: &str) {
    for (done, (write, reply)) in group
        .completions
        .into_iter()
        .zip(group.writes.into_iter().zip(group.replies))
    {
        done(if write && reply.is_ok() {
            Err(StorageError::Backend(why.to_owned()))
        } else {
            reply
        });
    }
}
