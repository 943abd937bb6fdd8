//! Group commit for a run-to-completion loop: the loop applies each group itself, a
//! syncer thread makes it durable, and the loop releases the group's replies once it is.
//!
//! ```text
//!  per-core loop (one thread)                         syncer thread
//!  ──────────────────────────                         ─────────────
//!  commit(group k):  Engine::apply_batch  ──sync k──▶ take every request waiting,
//!                    (not yet durable)                Engine::make_durable (one WAL
//!  … keeps serving connections …                      fsync in SyncMode::Batch)
//!  take_ready():     replies of groups ◀──durable k── wake the loop
//!                    ≤ k, in order
//! ```
//!
//! Unlike [`crate::CommitQueue`] there is no writer thread: the requests of one loop
//! iteration are one group, applied on the loop's own core without a hand-off, and the
//! loop never waits for the disk. Nobody may be told about a write before the fsync that
//! covers it returned: write replies are released in group order, each group's once its
//! fsync (and so every one before it) has returned. Reads do not queue behind appends:
//! a sync or history page waits only for the fsync of the unsynced writes it actually
//! shows ([`crate::unsynced`]), so a page of a quiet conversation is answered while the
//! appends of busy ones wait for the disk. Other reads wait for every write before them.
//!
//! If an fsync fails, every write of the groups it covered is answered with an error
//! (never an ack), and the committer refuses every later write with an error naming the
//! cause — after a failed fsync the WAL's state is unknown, so only a restart (which
//! replays the WAL) can be trusted. Reads still run.
//!
//! With a sync mode other than `Batch` ([`Committer::start`] without [`SyncRounds`])
//! writes are as durable as the mode promises when `apply_batch` returns, and replies are
//! released at once (`Always` fsyncs inside `apply_batch`, on the loop's thread).
//!
//! **Pacing.** An fsync is not free for the CPU: on a virtual machine each one costs its
//! thread ~85 µs (the virtio kick is a VM exit, then the interrupt and the wake-ups),
//! and a syncer that starts the next fsync the moment the last returns syncs one or two
//! messages at a time under steady load — at 10,000 msg/s it took ~50 % of the CPU it
//! shares with its loop. [`SyncRounds::min_interval`] spaces fsync *starts* at least that
//! far apart: under load every round covers more groups for the same cost, at low load
//! (rounds further apart than the interval anyway) nothing waits. The price is latency
//! (up to one interval per ack), so the server's default is no spacing.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::api::{Engine, Reply, Request, fail_not_durable};
use crate::commit::CommitStats;
use crate::error::StorageError;
use crate::unsynced::{ReadKind, Unsynced, WriteKind, classify};

/// What a [`Committer`] needs of an engine: apply a group, make it durable. Every
/// [`Engine`] is one.
pub trait GroupEngine: Send + Sync {
    /// See [`Engine::apply_batch_into`]: drains `requests`, appends a reply per request.
    fn apply_group(
        &self,
        requests: &mut Vec<Request>,
        replies: &mut Vec<Result<Reply, StorageError>>,
    );
    /// See [`Engine::make_durable`].
    fn sync_group(&self) -> Result<(), StorageError>;
}

impl<E: Engine + ?Sized> GroupEngine for E {
    fn apply_group(
        &self,
        requests: &mut Vec<Request>,
        replies: &mut Vec<Result<Reply, StorageError>>,
    ) {
        self.apply_batch_into(requests, replies);
    }
    fn sync_group(&self) -> Result<(), StorageError> {
        self.make_durable()
    }
}

/// Called by the syncer thread after each fsync, to wake the loop (must be quick: write
/// an eventfd).
pub type WakeLoop = Arc<dyn Fn() + Send + Sync>;

/// The writes of one applied group, waiting for release.
struct Group<T> {
    id: u64,
    tags: Vec<T>,
    replies: Vec<Result<Reply, StorageError>>,
    submitted: Instant,
    /// Whether any write of the group succeeded (and so needs the fsync).
    wrote: bool,
}

/// An answered read waiting for the fsync of the writes it shows.
struct WaitingRead<T> {
    tag: T,
    reply: Result<Reply, StorageError>,
    /// The write group that must be durable first, if any.
    need: Option<u64>,
    submitted: Instant,
}

/// The loop's side of group commit. See the module docs.
pub struct Committer<E: GroupEngine + 'static, T> {
    engine: Arc<E>,
    syncer: Option<Syncer>,
    groups: VecDeque<Group<T>>,
    reads: VecDeque<WaitingRead<T>>,
    unsynced: Unsynced,
    next_group: u64,
    /// Every group with an id below this is durable.
    durable_below: u64,
    /// Groups whose fsync failed: below this id, writes are answered with `failed`.
    failed_below: u64,
    /// Why writes are refused (after a failed fsync).
    failed: Option<StorageError>,
    /// The first group whose fsync failed: a read held for it or a later group may show
    /// writes that will never be durable, so it is answered with the failure instead.
    failed_from: Option<u64>,
    in_flight: usize,
    stats: Arc<CommitStats>,
    /// Buffers reused by every group, so a group allocates nothing once they have grown
    /// (issue 14: no allocation per message on the 1:1 path).
    scratch: Scratch<T>,
}

/// [`Committer::commit`]'s buffers, and the released groups' vectors for the next
/// groups (at most [`GROUP_POOL`] kept).
struct Scratch<T> {
    requests: Vec<Request>,
    replies: Vec<Result<Reply, StorageError>>,
    tags: Vec<T>,
    kinds: Vec<(Result<WriteKind, ReadKind>, bool)>,
    groups: Vec<GroupBuffers<T>>,
}

/// A group's tags and replies.
type GroupBuffers<T> = (Vec<T>, Vec<Result<Reply, StorageError>>);

/// Released groups' vectors kept for reuse.
const GROUP_POOL: usize = 64;

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch {
            requests: Vec::new(),
            replies: Vec::new(),
            tags: Vec::new(),
            kinds: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<T> Scratch<T> {
    /// Keeps a released group's (emptied) vectors for a later group.
    fn recycle(&mut self, (mut tags, mut replies): GroupBuffers<T>) {
        if self.groups.len() < GROUP_POOL {
            tags.clear();
            replies.clear();
            self.groups.push((tags, replies));
        }
    }
}

impl<E: GroupEngine + 'static, T> std::fmt::Debug for Committer<E, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("groups", &self.groups.len())
            .field("reads", &self.reads.len())
            .field("in_flight", &self.in_flight)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

struct Syncer {
    requests: Arc<SyncRequests>,
    done: Receiver<(u64, Result<(), StorageError>)>,
    thread: Option<JoinHandle<()>>,
}

/// How the syncer makes groups durable (the engine is in `SyncMode::Batch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncRounds {
    /// Shortest time from one fsync's start to the next one's (see the module's
    /// "Pacing"); zero starts each as soon as the last returned.
    pub min_interval: Duration,
}

impl<E: GroupEngine + 'static, T> Committer<E, T> {
    /// A committer over `engine`. With `sync_rounds` (the engine is in `SyncMode::Batch`)
    /// a syncer thread is started that calls `wake` after every fsync; without, replies
    /// are released as soon as a group is applied.
    pub fn start(
        engine: Arc<E>,
        sync_rounds: Option<SyncRounds>,
        wake: WakeLoop,
    ) -> Result<Self, StorageError> {
        let stats = Arc::new(CommitStats::default());
        let syncer = if let Some(rounds) = sync_rounds {
            let requests = Arc::new(SyncRequests::default());
            let (done_tx, done_rx) = crossbeam_channel::unbounded();
            let engine = Arc::clone(&engine);
            let thread = std::thread::Builder::new()
                .name("petrel-syncer".into())
                .spawn({
                    let stats = Arc::clone(&stats);
                    let requests = Arc::clone(&requests);
                    move || syncer_loop(&*engine, rounds, &requests, &done_tx, &*wake, &stats)
                })?;
            Some(Syncer {
                requests,
                done: done_rx,
                thread: Some(thread),
            })
        } else {
            None
        };
        Ok(Committer {
            engine,
            syncer,
            groups: VecDeque::new(),
            reads: VecDeque::new(),
            unsynced: Unsynced::default(),
            next_group: 0,
            durable_below: 0,
            failed_below: 0,
            failed: None,
            failed_from: None,
            in_flight: 0,
            stats,
            scratch: Scratch::default(),
        })
    }

    /// The syncer thread, while it runs (`None` without sync rounds): for the server to
    /// give it a scheduling policy that lets it run the moment its fsync returns.
    pub fn syncer_thread(&self) -> Option<std::os::unix::thread::RawPthread> {
        use std::os::unix::thread::JoinHandleExt;
        self.syncer
            .as_ref()
            .and_then(|s| s.thread.as_ref())
            .map(JoinHandleExt::as_pthread_t)
    }

    /// Submit-to-release latencies and durability rounds, for metrics.
    pub fn stats(&self) -> Arc<CommitStats> {
        Arc::clone(&self.stats)
    }

    /// Requests committed and not yet released by [`Committer::take_ready`].
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether writes are refused after a failed fsync, and why.
    pub fn failure(&self) -> Option<&StorageError> {
        self.failed.as_ref()
    }

    /// Applies `batch` (drained) as one group now, in order, and asks the syncer to make
    /// it durable. Its replies come out of [`Committer::take_ready`], tagged.
    pub fn commit(&mut self, batch: &mut Vec<(T, Request)>) {
        if batch.is_empty() {
            return;
        }
        let submitted = Instant::now();
        let id = self.next_group;
        let mut tags = std::mem::take(&mut self.scratch.tags);
        let mut kinds = std::mem::take(&mut self.scratch.kinds);
        let mut requests = std::mem::take(&mut self.scratch.requests);
        let mut replies = std::mem::take(&mut self.scratch.replies);
        for (tag, request) in batch.drain(..) {
            let kind = classify(&request);
            let refused = kind.is_ok() && self.failed.is_some();
            tags.push(tag);
            kinds.push((kind, refused));
            if !refused {
                requests.push(request);
            }
        }
        self.engine.apply_group(&mut requests, &mut replies);
        requests.clear();
        self.scratch.requests = requests;
        self.stats.record_apply(submitted.elapsed());
        let (mut group_tags, mut group_replies) = self.scratch.groups.pop().unwrap_or_default();
        let mut wrote = false;
        let mut applied = replies.drain(..);
        for (tag, (kind, refused)) in tags.drain(..).zip(kinds.drain(..)) {
            let reply = if refused {
                Err(self.refusal())
            } else {
                applied.next().unwrap_or_else(|| {
                    Err(StorageError::Backend(
                        "engine returned too few replies".into(),
                    ))
                })
            };
            match kind {
                Ok(write) => {
                    if let Ok(r) = &reply {
                        self.unsynced.record(id, write, r);
                        wrote = true;
                    }
                    group_tags.push(tag);
                    group_replies.push(reply);
                }
                Err(read) => {
                    // Evaluated here, in request order: a read sees the writes applied
                    // before it (earlier groups and earlier in this one), never later ones.
                    let need = reply
                        .as_ref()
                        .ok()
                        .and_then(|r| self.unsynced.needed_by(r, read));
                    self.reads.push_back(WaitingRead {
                        tag,
                        reply,
                        need,
                        submitted,
                    });
                    self.in_flight += 1;
                }
            }
        }
        drop(applied);
        replies.clear();
        self.scratch.replies = replies;
        self.scratch.tags = tags;
        self.scratch.kinds = kinds;
        self.next_group += 1;
        if group_tags.is_empty() {
            if self.syncer.is_none() {
                self.durable_below = self.next_group;
            }
            self.scratch.recycle((group_tags, group_replies));
            return;
        }
        self.in_flight += group_tags.len();
        self.groups.push_back(Group {
            id,
            tags: group_tags,
            replies: group_replies,
            submitted,
            wrote,
        });
        match &self.syncer {
            Some(syncer) if wrote => {
                if !syncer.requests.ask(id) {
                    self.sync_failed(
                        id + 1,
                        StorageError::Backend("storage syncer thread stopped".into()),
                    );
                }
            }
            // Nothing to make durable in this group, or the mode makes writes durable as
            // they are applied.
            _ => {
                if self.syncer.is_none() {
                    self.durable_below = self.next_group;
                    self.unsynced.durable(self.durable_below);
                }
            }
        }
    }

    /// The error for a write refused after a failed fsync.
    fn refusal(&self) -> StorageError {
        StorageError::Backend(format!(
            "storage refuses writes until the server is restarted: an earlier WAL sync \
             failed ({})",
            self.failed
                .as_ref()
                .map_or_else(|| "unknown".to_string(), ToString::to_string)
        ))
    }

    /// Releases the replies that may be told now: writes in group order once durable,
    /// reads once what they show is durable. Calls `release(tag, reply)` for each and
    /// returns how many were released.
    pub fn take_ready(&mut self, mut release: impl FnMut(T, Result<Reply, StorageError>)) -> usize {
        self.collect_syncs();
        let mut released = 0;
        while let Some(front) = self.groups.front() {
            // A group whose writes all failed has nothing to wait for.
            let ready = front.id < self.durable_below || !front.wrote;
            if !ready {
                break;
            }
            let Some(mut group) = self.groups.pop_front() else {
                break;
            };
            if group.id < self.failed_below
                && let Some(cause) = &self.failed
            {
                let writes = vec![true; group.replies.len()];
                fail_not_durable(&writes, &mut group.replies, cause);
            }
            let now = Instant::now();
            self.stats.record_many(
                now.saturating_duration_since(group.submitted),
                group.tags.len(),
            );
            released += group.tags.len();
            for (tag, reply) in group.tags.drain(..).zip(group.replies.drain(..)) {
                release(tag, reply);
            }
            self.scratch.recycle((group.tags, group.replies));
        }
        if !self.reads.is_empty() {
            let durable_below = self.durable_below;
            let now = Instant::now();
            let mut waiting = self.reads.len();
            while waiting > 0 {
                waiting -= 1;
                let Some(read) = self.reads.pop_front() else {
                    break;
                };
                if read.need.is_none_or(|g| g < durable_below) {
                    self.stats
                        .record_many(now.saturating_duration_since(read.submitted), 1);
                    released += 1;
                    let shows_failed = read
                        .need
                        .is_some_and(|g| self.failed_from.is_some_and(|f| g >= f));
                    let reply = match (&self.failed, shows_failed) {
                        (Some(cause), true) => Err(StorageError::Backend(format!(
                            "read refused: it may show writes whose WAL sync failed ({cause})"
                        ))),
                        _ => read.reply,
                    };
                    release(read.tag, reply);
                } else {
                    self.reads.push_back(read);
                }
            }
        }
        self.in_flight -= released;
        released
    }

    /// Whether [`Committer::take_ready`] would release something now.
    pub fn has_ready(&mut self) -> bool {
        self.collect_syncs();
        let durable_below = self.durable_below;
        self.groups
            .front()
            .is_some_and(|g| g.id < durable_below || !g.wrote)
            || self
                .reads
                .iter()
                .any(|r| r.need.is_none_or(|g| g < durable_below))
    }

    fn collect_syncs(&mut self) {
        let Some(syncer) = &self.syncer else {
            return;
        };
        let mut failure = None;
        loop {
            match syncer.done.try_recv() {
                Ok((through, Ok(()))) => {
                    self.durable_below = self.durable_below.max(through + 1);
                    self.stats.groups.fetch_add(1, Ordering::Relaxed);
                }
                Ok((through, Err(e))) => failure = Some((through + 1, e)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    failure = Some((
                        self.next_group,
                        StorageError::Backend("storage syncer thread stopped".into()),
                    ));
                    break;
                }
            }
        }
        if let Some((below, e)) = failure {
            self.sync_failed(below, e);
        }
        self.unsynced.durable(self.durable_below);
    }

    fn sync_failed(&mut self, below: u64, cause: StorageError) {
        self.failed_from.get_or_insert(self.durable_below);
        self.failed_below = self.failed_below.max(below);
        self.durable_below = self.durable_below.max(below);
        if self.failed.is_none() {
            self.failed = Some(cause);
        }
    }

    /// Waits until every committed group is durable (or failed) and releases their
    /// replies, then stops the syncer.
    pub fn shutdown(mut self, mut release: impl FnMut(T, Result<Reply, StorageError>)) {
        if let Some(syncer) = &mut self.syncer {
            syncer.requests.close();
            while let Ok((through, result)) = syncer.done.recv() {
                match result {
                    Ok(()) => self.durable_below = self.durable_below.max(through + 1),
                    Err(e) => {
                        self.failed_below = self.failed_below.max(through + 1);
                        self.durable_below = self.durable_below.max(through + 1);
                        self.failed.get_or_insert(e);
                    }
                }
            }
            if let Some(thread) = syncer.thread.take() {
                let _ = thread.join();
            }
            // Anything not covered by a completed sync was never made durable.
            let unsynced = self.next_group;
            if self.durable_below < unsynced {
                self.failed_below = unsynced;
                self.durable_below = unsynced;
                self.failed.get_or_insert(StorageError::Closed);
            }
            self.syncer = None;
        }
        self.take_ready(&mut release);
    }
}

impl<E: GroupEngine + 'static, T> Drop for Committer<E, T> {
    fn drop(&mut self) {
        if let Some(syncer) = &mut self.syncer {
            syncer.requests.close();
            if let Some(thread) = syncer.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The loop's requests to the syncer: the newest group waiting to be made durable (one
/// fsync covers every group before it too). A mutex and a condvar rather than a channel:
/// the syncer may run real-time (`SCHED_FIFO`), and a channel's blocking receive spins
/// and calls `sched_yield` before it sleeps — for a real-time thread a busy loop that the
/// per-core loop sharing its CPU cannot interrupt (measured: the syncer took 6.6 of 8
/// seconds of that CPU). std's mutex spins without yielding, briefly, and the condvar
/// sleeps in the kernel.
#[derive(Default)]
struct SyncRequests {
    state: Mutex<Requested>,
    asked: Condvar,
}

#[derive(Default)]
struct Requested {
    /// The newest group asked for and not yet taken by the syncer.
    through: Option<u64>,
    /// No more requests: the syncer finishes what was asked, then stops.
    closed: bool,
}

impl SyncRequests {
    /// Asks for every group up to `id` to be made durable. False once closed.
    fn ask(&self, id: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return false;
        }
        state.through = Some(state.through.map_or(id, |t| t.max(id)));
        drop(state);
        self.asked.notify_one();
        true
    }

    fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.asked.notify_one();
    }

    /// The newest group asked for since [`SyncRequests::next`] returned `through`.
    fn newest(&self, through: u64) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.through.take().map_or(through, |t| t.max(through))
    }

    /// Waits for a request; returns the newest group asked for, or `None` once closed
    /// with nothing left.
    fn next(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(through) = state.through.take() {
                return Some(through);
            }
            if state.closed {
                return None;
            }
            state = self
                .asked
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

fn syncer_loop<E: GroupEngine + ?Sized>(
    engine: &E,
    rounds: SyncRounds,
    requests: &SyncRequests,
    done: &Sender<(u64, Result<(), StorageError>)>,
    wake: &(dyn Fn() + Send + Sync),
    stats: &CommitStats,
) {
    let mut last_start: Option<Instant> = None;
    // Every group asked for so far shares each fsync.
    while let Some(mut through) = requests.next() {
        if let Some(last) = last_start {
            let since = last.elapsed();
            if since < rounds.min_interval {
                // Let this round gather what arrives until the interval is up.
                std::thread::sleep(rounds.min_interval - since);
                through = requests.newest(through);
            }
        }
        let started = Instant::now();
        last_start = Some(started);
        let result = engine.sync_group();
        stats.record_sync(started.elapsed());
        if done.send((through, result)).is_err() {
            return;
        }
        wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use crate::api::AppendRequest;
    use crate::config::StorageConfig;
    use crate::mem::MemEngine;
    use crate::model::{ConversationKey, UserId};

    /// An engine that counts fsyncs and can be told to fail them or hold them.
    struct Probe {
        inner: MemEngine,
        syncs: AtomicUsize,
        fail: AtomicBool,
        hold: Mutex<()>,
        /// When the latest `sync_group` call began.
        entered: Mutex<Option<std::time::Instant>>,
    }

    impl Probe {
        fn new() -> Arc<Probe> {
            Arc::new(Probe {
                inner: MemEngine::new(StorageConfig::default()),
                syncs: AtomicUsize::new(0),
                fail: AtomicBool::new(false),
                hold: Mutex::new(()),
                entered: Mutex::new(None),
            })
        }
    }

    impl GroupEngine for Probe {
        fn apply_group(
            &self,
            requests: &mut Vec<Request>,
            replies: &mut Vec<Result<Reply, StorageError>>,
        ) {
            replies.extend(self.inner.execute_batch(std::mem::take(requests)));
        }
        fn sync_group(&self) -> Result<(), StorageError> {
            *self.entered.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
            let _held = self.hold.lock().unwrap_or_else(|e| e.into_inner());
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                Err(StorageError::Backend("injected fsync failure".into()))
            } else {
                Ok(())
            }
        }
    }

    fn append(sender: u64, id: u64) -> Request {
        Request::Append(AppendRequest {
            sender: UserId(sender),
            sender_device: "d".into(),
            client_msg_id: id,
            conversation: ConversationKey::single(UserId(sender), UserId(2)),
            payload: bytes::Bytes::from_static(b"x"),
            now_ms: 1,
            refs: Default::default(),
        })
    }

    fn released_within(
        c: &mut Committer<Probe, u32>,
        want: usize,
    ) -> Vec<(u32, Result<Reply, StorageError>)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < want && Instant::now() < deadline {
            c.take_ready(|t, r| out.push((t, r)));
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    #[test]
    fn paced_rounds_start_an_interval_apart_and_share_one_fsync() {
        let engine = Probe::new();
        let interval = Duration::from_millis(50);
        let rounds = SyncRounds {
            min_interval: interval,
        };
        let mut c = Committer::start(engine.clone(), Some(rounds), Arc::new(|| {})).unwrap();
        c.commit(&mut vec![(1, append(1, 1))]);
        assert_eq!(released_within(&mut c, 1).len(), 1);
        let first = engine.entered.lock().unwrap().expect("one fsync ran");
        // Three groups right after the first round: they wait for the interval, then
        // share one fsync.
        for k in 2..=4 {
            c.commit(&mut vec![(k, append(1, u64::from(k)))]);
        }
        let got = released_within(&mut c, 3);
        assert_eq!(
            got.iter().map(|(t, r)| (*t, r.is_ok())).collect::<Vec<_>>(),
            [(2, true), (3, true), (4, true)]
        );
        assert_eq!(engine.syncs.load(Ordering::SeqCst), 2);
        let second = engine.entered.lock().unwrap().expect("two fsyncs ran");
        assert!(second.duration_since(first) >= interval);
    }

    #[test]
    fn replies_wait_for_the_fsync_and_come_out_in_order() {
        let engine = Probe::new();
        let held = engine.hold.lock().unwrap();
        let mut c =
            Committer::start(engine.clone(), Some(SyncRounds::default()), Arc::new(|| {})).unwrap();
        c.commit(&mut vec![(1, append(1, 1)), (2, append(1, 2))]);
        c.commit(&mut vec![(3, Request::LastActive { user: UserId(1) })]);
        std::thread::sleep(Duration::from_millis(20));
        // Nothing is released while the fsync is held, not even the read behind it.
        assert_eq!(c.take_ready(|_, _| panic!("released before durable")), 0);
        assert_eq!(c.in_flight(), 3);
        let entered = loop {
            if let Some(t) = *engine.entered.lock().unwrap() {
                break t;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let held_for = entered.elapsed();
        drop(held);
        let out = released_within(&mut c, 3);
        let tags: Vec<u32> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![1, 2, 3]);
        assert!(out.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(c.in_flight(), 0);
        assert!(engine.syncs.load(Ordering::SeqCst) >= 1);
        // Every sync was timed, and the held one for at least as long as it was held.
        let stats = c.stats().snapshot();
        let syncs: u64 = stats.sync_buckets.iter().sum();
        assert_eq!(syncs, engine.syncs.load(Ordering::SeqCst) as u64);
        assert!(
            stats.sync_sum_us >= held_for.as_micros() as u64,
            "{stats:?} held {held_for:?}"
        );
    }

    fn history(user: u64, peer: u64) -> Request {
        Request::History {
            user: UserId(user),
            conversation: ConversationKey::single(UserId(user), UserId(peer)),
            before_seq: u64::MAX,
            limit: 10,
        }
    }

    #[test]
    fn a_page_of_a_quiet_conversation_does_not_wait_for_appends_elsewhere() {
        let engine = Probe::new();
        let mut c =
            Committer::start(engine.clone(), Some(SyncRounds::default()), Arc::new(|| {})).unwrap();
        // Conversation 2–3 gets a message, made durable.
        c.commit(&mut vec![(1, append(3, 1))]);
        assert_eq!(released_within(&mut c, 1).len(), 1);
        let held = engine.hold.lock().unwrap();
        // An append to 1–2 waits for its fsync; a page of 2–3 read after it does not.
        c.commit(&mut vec![(2, append(1, 1)), (3, history(3, 2))]);
        let mut got = Vec::new();
        c.take_ready(|t, r| got.push((t, r)));
        assert_eq!(got.len(), 1, "only the quiet page is out");
        assert_eq!(got[0].0, 3);
        assert!(matches!(&got[0].1, Ok(Reply::History(p)) if p.messages.len() == 1));
        // A page that shows the unsynced append waits for it.
        c.commit(&mut vec![(4, history(1, 2))]);
        assert!(!c.has_ready());
        assert_eq!(c.take_ready(|_, _| panic!("shown before durable")), 0);
        drop(held);
        let out = released_within(&mut c, 2);
        let tags: Vec<u32> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tags,
            vec![2, 4],
            "the append's ack, then the page that shows it"
        );
        assert!(matches!(&out[1].1, Ok(Reply::History(p)) if p.messages.len() == 1));
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_read_only_group_with_nothing_unsynced_before_it_is_released_at_once() {
        let engine = Probe::new();
        let _held = engine.hold.lock().unwrap();
        let mut c =
            Committer::start(engine.clone(), Some(SyncRounds::default()), Arc::new(|| {})).unwrap();
        c.commit(&mut vec![(7, Request::LastActive { user: UserId(1) })]);
        let mut got = Vec::new();
        c.take_ready(|t, r| got.push((t, r.is_ok())));
        assert_eq!(got, vec![(7, true)]);
        assert_eq!(engine.syncs.load(Ordering::SeqCst), 0, "no fsync for reads");
    }

    #[test]
    fn a_failed_fsync_is_never_an_ack_and_later_writes_are_refused() {
        let engine = Probe::new();
        engine.fail.store(true, Ordering::SeqCst);
        let mut c =
            Committer::start(engine.clone(), Some(SyncRounds::default()), Arc::new(|| {})).unwrap();
        c.commit(&mut vec![
            (1, append(1, 1)),
            (2, Request::LastActive { user: UserId(1) }),
        ]);
        let out = released_within(&mut c, 2);
        assert_eq!(out.len(), 2);
        assert!(
            out[0].1.is_err(),
            "the write of the failed group is an error"
        );
        // The read waited for the failed group, so it may show its refused write (the
        // memtable has it): it is refused too. Later reads answer (the engine pins them
        // to the last durable state).
        let err = out[1].1.as_ref().expect_err("a read that waited for it");
        assert!(err.to_string().contains("read refused"), "{err}");
        assert!(c.failure().is_some());

        engine.fail.store(false, Ordering::SeqCst);
        c.commit(&mut vec![
            (3, append(1, 2)),
            (4, Request::LastActive { user: UserId(1) }),
        ]);
        let out = released_within(&mut c, 2);
        let err = out[0].1.as_ref().expect_err("writes stay refused");
        assert!(err.to_string().contains("restarted"), "{err}");
        assert!(out[1].1.is_ok());
    }

    #[test]
    fn without_sync_rounds_replies_are_released_as_applied() {
        let engine = Probe::new();
        let mut c = Committer::start(engine.clone(), None, Arc::new(|| {})).unwrap();
        c.commit(&mut vec![(1, append(1, 1))]);
        assert!(c.has_ready());
        let mut n = 0;
        c.take_ready(|_, r| {
            assert!(r.is_ok());
            n += 1;
        });
        assert_eq!(n, 1);
        assert_eq!(engine.syncs.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn shutdown_waits_for_the_last_fsync() {
        let engine = Probe::new();
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let mut c = Committer::start(
            engine.clone(),
            Some(SyncRounds::default()),
            Arc::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        c.commit(&mut vec![(1, append(1, 1))]);
        let mut got = Vec::new();
        c.shutdown(|t, r| got.push((t, r.is_ok())));
        assert_eq!(got, vec![(1, true)]);
        assert!(woken.load(Ordering::SeqCst) >= 1);
    }
}
