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
//! A round that fsynced but whose writes the replica log did not take
//! ([`crate::replica`]; `sync_group` answers [`StorageError::Unavailable`]) is not such a
//! failure: its writes are answered `Unavailable` (the client sends again and the dedup
//! keeps one), they stay unsynced for the reads that show them, and the next round ships
//! them first. Nothing later is refused for it.
//!
//! With a sync mode other than `Batch` ([`Committer::start`] without [`SyncRounds`])
//! writes are as durable as the mode promises when `apply_batch` returns, and replies are
//! released at once (`Always` fsyncs inside `apply_batch`, on the loop's thread).
//!
//! **Several committers, one syncer.** A server whose cores each write the partitions
//! they own runs one committer per core over the same engine
//! ([`Committer::start_many`]). They share one syncer thread — one WAL fsync covers
//! every committer's groups applied before it started — and publish watermarks to each
//! other: before applying a group with writes a committer announces it (`applying`), and
//! the syncer records what each fsync made durable (`durable`). A read on one committer
//! cannot know which of another's unsynced writes it shows, so it conservatively waits
//! until every group the other committers had applied when it ran is durable (about one
//! fsync); its own committer's writes are still tracked per conversation. After a failed
//! fsync every committer refuses writes, and a read that may show another committer's
//! failed writes is refused.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Other committers' groups that must be durable first: `(committer, below)`.
    peers: Vec<(usize, u64)>,
    submitted: Instant,
}

/// One committer's watermarks, read by the others (see the module docs).
#[derive(Debug)]
struct Marks {
    /// Every group with writes that may be visible has an id below this (stored before
    /// the group is applied).
    applying: AtomicU64,
    /// Every group below this is durable (stored by the syncer after the fsync).
    durable: AtomicU64,
    /// The first group whose fsync failed (`u64::MAX`: none).
    failed_from: AtomicU64,
    /// Some read of this committer waits for another committer's fsync: the syncer wakes
    /// its loop after every round.
    waits_on_peers: AtomicBool,
}

impl Marks {
    fn new() -> Marks {
        Marks {
            applying: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            failed_from: AtomicU64::new(u64::MAX),
            waits_on_peers: AtomicBool::new(false),
        }
    }
}

/// What the committers over one engine share: the syncer's requests, each committer's
/// watermarks, and the syncer thread.
struct Shared {
    requests: SyncRequests,
    marks: Box<[Marks]>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Committers not yet shut down or dropped; the last one joins the thread.
    open: AtomicUsize,
    /// An fsync failed: every committer refuses writes from its next group on, whether
    /// or not it had a group in that round.
    failed: AtomicBool,
    /// Why the first failed fsync failed (set before `failed`), so that the other
    /// committers refuse writes with the same cause — a full disk stays a full disk.
    cause: Mutex<Option<String>>,
}

impl Shared {
    /// Whether every `(committer, below)` is durable (`Ok(true)`), still waited for
    /// (`Ok(false)`), or failed (`Err`).
    fn peers_durable(&self, peers: &[(usize, u64)]) -> Result<bool, ()> {
        let mut ready = true;
        for &(j, below) in peers {
            let m = &self.marks[j];
            if m.durable.load(Ordering::SeqCst) >= below {
                continue;
            }
            if m.failed_from.load(Ordering::SeqCst) < below {
                return Err(());
            }
            ready = false;
        }
        Ok(ready)
    }
}

/// The loop's side of group commit. See the module docs.
pub struct Committer<E: GroupEngine + 'static, T> {
    engine: Arc<E>,
    /// The watermarks and syncer this committer shares with the others over `engine`.
    shared: Arc<Shared>,
    /// This committer's index in `shared`.
    index: usize,
    /// Completed fsyncs of this committer's groups, while a syncer thread serves it.
    syncer: Option<Receiver<(u64, Result<(), StorageError>)>>,
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
    /// Groups the replica log did not take: below this id, and not durable since,
    /// writes are answered `Unavailable`.
    unavailable_below: u64,
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
        Self::start_many(engine, sync_rounds, vec![wake])?
            .pop()
            .ok_or_else(|| StorageError::Backend("no committer started".into()))
    }

    /// One committer per `wakes` entry over the same engine — one per core that writes
    /// its own partitions — sharing one syncer thread (with `sync_rounds`) and their
    /// watermarks (see the module docs). `wakes[i]` wakes the loop of committer `i`.
    pub fn start_many(
        engine: Arc<E>,
        sync_rounds: Option<SyncRounds>,
        wakes: Vec<WakeLoop>,
    ) -> Result<Vec<Self>, StorageError> {
        let n = wakes.len();
        let stats: Vec<Arc<CommitStats>> =
            (0..n).map(|_| Arc::new(CommitStats::default())).collect();
        let shared = Arc::new(Shared {
            requests: SyncRequests::new(n),
            marks: (0..n).map(|_| Marks::new()).collect(),
            thread: Mutex::new(None),
            open: AtomicUsize::new(n),
            failed: AtomicBool::new(false),
            cause: Mutex::new(None),
        });
        let mut dones: Vec<Option<Receiver<_>>> = (0..n).map(|_| None).collect();
        if let Some(rounds) = sync_rounds {
            let mut senders = Vec::with_capacity(n);
            for done in &mut dones {
                let (tx, rx) = crossbeam_channel::unbounded();
                senders.push(Some(tx));
                *done = Some(rx);
            }
            let handle = std::thread::Builder::new()
                .name("petrel-syncer".into())
                .spawn({
                    let engine = Arc::clone(&engine);
                    let shared = Arc::clone(&shared);
                    let stats = stats.clone();
                    move || syncer_loop(&*engine, rounds, &shared, senders, &wakes, &stats)
                })?;
            *shared.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        }
        Ok(dones
            .into_iter()
            .zip(stats)
            .enumerate()
            .map(|(index, (syncer, stats))| Committer {
                engine: Arc::clone(&engine),
                shared: Arc::clone(&shared),
                index,
                syncer,
                groups: VecDeque::new(),
                reads: VecDeque::new(),
                unsynced: Unsynced::default(),
                next_group: 0,
                durable_below: 0,
                failed_below: 0,
                unavailable_below: 0,
                failed: None,
                failed_from: None,
                in_flight: 0,
                stats,
                scratch: Scratch::default(),
            })
            .collect())
    }

    /// The syncer thread, while it runs (`None` without sync rounds): for the server to
    /// give it a scheduling policy that lets it run the moment its fsync returns.
    pub fn syncer_thread(&self) -> Option<std::os::unix::thread::RawPthread> {
        use std::os::unix::thread::JoinHandleExt;
        self.shared
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(JoinHandleExt::as_pthread_t)
    }

    /// Whether other committers share this one's engine and their writes can be seen
    /// before they are durable (there is a syncer), so reads watch each other's
    /// watermarks. Without a syncer every write is as durable as the sync mode promises
    /// once applied.
    fn has_peers(&self) -> bool {
        self.shared.marks.len() > 1 && self.syncer.is_some()
    }

    /// The other committers' groups applied and not yet durable: what a read evaluated
    /// now may show of theirs. A committer whose fsync already failed is not waited for:
    /// it applies no write any more, and what its failed round applied will never be
    /// durable — a read evaluated after the failure is answered, as a committer answers
    /// reads evaluated after its own failure; reads that were waiting for the round are
    /// refused (`peers_durable`), so a failure never leaves reads of other cores hanging
    /// or refused for good.
    fn peer_needs(&self) -> Vec<(usize, u64)> {
        let mut needs = Vec::new();
        for (j, m) in self.shared.marks.iter().enumerate() {
            if j == self.index || m.failed_from.load(Ordering::SeqCst) != u64::MAX {
                continue;
            }
            let applying = m.applying.load(Ordering::SeqCst);
            if applying > m.durable.load(Ordering::SeqCst) {
                needs.push((j, applying));
            }
        }
        needs
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
        if self.failed.is_none() && self.shared.failed.load(Ordering::SeqCst) {
            let cause = self
                .shared
                .cause
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_default();
            self.failed = Some(StorageError::Backend(format!(
                "a WAL sync of another core's writes failed: {cause}"
            )));
        }
        let mut has_writes = false;
        for (tag, request) in batch.drain(..) {
            let kind = classify(&request);
            let refused = kind.is_ok() && self.failed.is_some();
            has_writes |= kind.is_ok() && !refused;
            tags.push(tag);
            kinds.push((kind, refused));
            if !refused {
                requests.push(request);
            }
        }
        let peers = self.has_peers();
        if peers && has_writes {
            // Before the writes can be seen: another committer's read that sees them
            // then also sees this, and waits for the group's fsync.
            self.shared.marks[self.index]
                .applying
                .store(id + 1, Ordering::SeqCst);
        }
        self.engine.apply_group(&mut requests, &mut replies);
        // What the reads of this group may show of the other committers' writes.
        let peer_needs = if peers { self.peer_needs() } else { Vec::new() };
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
                    if !peer_needs.is_empty() {
                        self.shared.marks[self.index]
                            .waits_on_peers
                            .store(true, Ordering::SeqCst);
                    }
                    self.reads.push_back(WaitingRead {
                        tag,
                        reply,
                        need,
                        peers: peer_needs.clone(),
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
        // A group whose writes all failed needs no fsync of its own — unless the other
        // committers were told it may have writes, and wait for it to be durable.
        match &self.syncer {
            Some(_) if wrote || (peers && has_writes) => {
                if !self.shared.requests.ask(self.index, id) {
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
            let ready =
                front.id < self.durable_below || !front.wrote || front.id < self.unavailable_below;
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
            } else if group.id >= self.durable_below {
                // Released because the replica log did not take it.
                for reply in group.replies.iter_mut().filter(|r| r.is_ok()) {
                    *reply = Err(StorageError::Unavailable);
                }
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
            let mut on_peers = false;
            while waiting > 0 {
                waiting -= 1;
                let Some(read) = self.reads.pop_front() else {
                    break;
                };
                let peers = self.shared.peers_durable(&read.peers);
                if read.need.is_none_or(|g| g < durable_below) && peers != Ok(false) {
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
                        _ if peers.is_err() => Err(StorageError::Backend(
                            "read refused: it may show another core's writes whose WAL sync \
                             failed"
                                .into(),
                        )),
                        _ => read.reply,
                    };
                    release(read.tag, reply);
                } else {
                    on_peers |= !read.peers.is_empty();
                    self.reads.push_back(read);
                }
            }
            if !on_peers && self.has_peers() {
                self.shared.marks[self.index]
                    .waits_on_peers
                    .store(false, Ordering::SeqCst);
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
            .is_some_and(|g| g.id < durable_below || !g.wrote || g.id < self.unavailable_below)
            || self.reads.iter().any(|r| {
                r.need.is_none_or(|g| g < durable_below)
                    && self.shared.peers_durable(&r.peers) != Ok(false)
            })
    }

    fn collect_syncs(&mut self) {
        let Some(done) = &self.syncer else {
            return;
        };
        let mut failure = None;
        loop {
            match done.try_recv() {
                Ok((through, Ok(()))) => {
                    self.durable_below = self.durable_below.max(through + 1);
                }
                Ok((through, Err(StorageError::Unavailable))) => {
                    self.unavailable_below = self.unavailable_below.max(through + 1);
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
    /// replies; the last committer to shut down stops the syncer.
    pub fn shutdown(mut self, mut release: impl FnMut(T, Result<Reply, StorageError>)) {
        if let Some(done) = self.syncer.take() {
            self.shared.requests.close(self.index);
            // The syncer answers what was asked, then drops this committer's sender.
            while let Ok((through, result)) = done.recv() {
                match result {
                    Ok(()) => self.durable_below = self.durable_below.max(through + 1),
                    Err(e) => {
                        self.failed_below = self.failed_below.max(through + 1);
                        self.durable_below = self.durable_below.max(through + 1);
                        self.failed.get_or_insert(e);
                    }
                }
            }
            self.leave();
            // Anything not covered by a completed sync was never made durable.
            let unsynced = self.next_group;
            if self.durable_below < unsynced {
                // A read held for one of those groups may show its writes.
                self.failed_from.get_or_insert(self.durable_below);
                self.failed_below = unsynced;
                self.durable_below = unsynced;
                self.failed.get_or_insert(StorageError::Closed);
            }
        }
        self.take_ready(&mut release);
        // Reads still waiting for another committer's fsync get no answer from it now.
        for read in self.reads.drain(..) {
            self.in_flight -= 1;
            release(read.tag, Err(StorageError::Closed));
        }
    }

    /// This committer is done with the syncer: the last one out joins its thread.
    fn leave(&self) {
        if self.shared.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            let thread = self
                .shared
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
    }
}

impl<E: GroupEngine + 'static, T> Drop for Committer<E, T> {
    fn drop(&mut self) {
        if self.syncer.take().is_some() {
            self.shared.requests.close(self.index);
            self.leave();
        }
    }
}

/// The committers' requests to the syncer: per committer, the newest group waiting to be
/// made durable (one fsync covers every group before it too, of every committer). A mutex
/// and a condvar rather than a channel: the syncer may run real-time (`SCHED_FIFO`), and
/// a channel's blocking receive spins and calls `sched_yield` before it sleeps — for a
/// real-time thread a busy loop that the per-core loop sharing its CPU cannot interrupt
/// (measured: the syncer took 6.6 of 8 seconds of that CPU). std's mutex spins without
/// yielding, briefly, and the condvar sleeps in the kernel.
struct SyncRequests {
    state: Mutex<Requested>,
    asked: Condvar,
}

struct Requested {
    /// Per committer: the newest group asked for and not yet taken by the syncer.
    through: Vec<Option<u64>>,
    /// Per committer: no more requests (the syncer finishes what was asked, then drops
    /// the committer's sender).
    closed: Vec<bool>,
    /// Per committer: its closing was handed to the syncer.
    finished: Vec<bool>,
}

impl SyncRequests {
    fn new(committers: usize) -> SyncRequests {
        SyncRequests {
            state: Mutex::new(Requested {
                through: vec![None; committers],
                closed: vec![false; committers],
                finished: vec![false; committers],
            }),
            asked: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Requested> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Committer `i` asks for every group of its up to `id` to be made durable. False
    /// once it closed.
    fn ask(&self, i: usize, id: u64) -> bool {
        let mut state = self.lock();
        if state.closed[i] {
            return false;
        }
        state.through[i] = Some(state.through[i].map_or(id, |t| t.max(id)));
        drop(state);
        self.asked.notify_one();
        true
    }

    fn close(&self, i: usize) {
        self.lock().closed[i] = true;
        self.asked.notify_one();
    }

    /// Adds the requests made since `taken` was filled (newer groups of the same
    /// committers, or other committers).
    fn newest(&self, taken: &mut Vec<(usize, u64)>) {
        let mut state = self.lock();
        for (i, through) in state.through.iter_mut().enumerate() {
            let Some(t) = through.take() else {
                continue;
            };
            match taken.iter_mut().find(|(j, _)| *j == i) {
                Some((_, old)) => *old = (*old).max(t),
                None => taken.push((i, t)),
            }
        }
    }

    /// Waits for requests: fills `taken` with `(committer, newest group)` and `closing`
    /// with the committers that closed with nothing left to do. False once every
    /// committer closed.
    fn next(
        &self,
        taken: &mut Vec<(usize, u64)>,
        closing: &mut Vec<usize>,
        until: Option<Instant>,
    ) -> bool {
        let mut state = self.lock();
        loop {
            let state_ref = &mut *state;
            for (i, through) in state_ref.through.iter_mut().enumerate() {
                if let Some(t) = through.take() {
                    taken.push((i, t));
                }
            }
            for (i, (closed, finished)) in state_ref
                .closed
                .iter()
                .zip(state_ref.finished.iter_mut())
                .enumerate()
            {
                if *closed && !*finished {
                    *finished = true;
                    closing.push(i);
                }
            }
            if !taken.is_empty() || !closing.is_empty() {
                return true;
            }
            if state_ref.finished.iter().all(|f| *f) {
                return false;
            }
            state = match until {
                None => self
                    .asked
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // Time for the round the caller has waiting.
                        return true;
                    }
                    self.asked
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// The same failure again, for another committer (a `StorageError` is not `Clone`; an
/// I/O error keeps its kind, so a full disk is still recognised as one).
fn copy_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Io(io) => StorageError::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => StorageError::Backend(other.to_string()),
    }
}

/// How soon a round the replica log did not take is tried again when nothing else asks.
const UNSHIPPED_RETRY: Duration = Duration::from_millis(200);

/// A committer's sender of completed fsyncs; `None` once it closed.
type Done = Option<Sender<(u64, Result<(), StorageError>)>>;

fn syncer_loop<E: GroupEngine + ?Sized>(
    engine: &E,
    rounds: SyncRounds,
    shared: &Shared,
    mut done: Vec<Done>,
    wakes: &[WakeLoop],
    stats: &[Arc<CommitStats>],
) {
    let mut last_start: Option<Instant> = None;
    let mut taken = Vec::new();
    let mut closing = Vec::new();
    // After a failed fsync the WAL's state is unknown: every later request fails too.
    let mut failure: Option<StorageError> = None;
    // Rounds the replica log did not take, tried again (with whatever else was asked)
    // at `retry_at` at the latest, so the reads that show their writes are released.
    let mut retry: Vec<(usize, u64)> = Vec::new();
    let mut retry_at: Option<Instant> = None;
    // Every group asked for so far, by every committer, shares each fsync.
    while shared.requests.next(&mut taken, &mut closing, retry_at) {
        retry_at = None;
        for (i, through) in retry.drain(..) {
            match taken.iter_mut().find(|t| t.0 == i) {
                Some(t) => t.1 = t.1.max(through),
                None => taken.push((i, through)),
            }
        }
        if !taken.is_empty() {
            if let Some(last) = last_start {
                let since = last.elapsed();
                if since < rounds.min_interval {
                    // Let this round gather what arrives until the interval is up.
                    std::thread::sleep(rounds.min_interval - since);
                    shared.requests.newest(&mut taken);
                }
            }
            let started = Instant::now();
            last_start = Some(started);
            let result = match &failure {
                Some(e) => Err(copy_error(e)),
                None => {
                    let result = engine.sync_group();
                    // Once per round (in its first committer's stats), so that the
                    // committers' stats summed count a shared fsync once.
                    if let Some(&(first, _)) = taken.first() {
                        stats[first].record_sync(started.elapsed());
                        if result.is_ok() {
                            stats[first].groups.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    result
                }
            };
            let mut first_error = result.err();
            if matches!(first_error, Some(StorageError::Unavailable)) {
                // Fsynced here, not taken by the replica log: the writes are answered
                // `Unavailable` now, nothing is refused after it, and the round is tried
                // again shortly (with the next one, if sooner): its success is what
                // releases the reads that show them.
                for &(i, through) in &taken {
                    if let Some(tx) = &done[i] {
                        let _ = tx.send((through, Err(StorageError::Unavailable)));
                    }
                    wakes[i]();
                }
                retry.append(&mut taken);
                retry_at = Some(Instant::now() + UNSHIPPED_RETRY);
                for i in closing.drain(..) {
                    done[i] = None;
                    wakes[i]();
                }
                continue;
            }
            if let Some(e) = &first_error {
                failure.get_or_insert_with(|| copy_error(e));
                shared
                    .cause
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(|| e.to_string());
                shared.failed.store(true, Ordering::SeqCst);
            }
            let last = taken.len() - 1;
            for (k, &(i, through)) in taken.iter().enumerate() {
                let marks = &shared.marks[i];
                let mine = if first_error.is_none() {
                    marks.durable.fetch_max(through + 1, Ordering::SeqCst);
                    Ok(())
                } else {
                    marks
                        .failed_from
                        .fetch_min(marks.durable.load(Ordering::SeqCst), Ordering::SeqCst);
                    // The original error for the last committer, copies for the others.
                    Err(if k == last {
                        first_error.take().unwrap_or(StorageError::Closed)
                    } else {
                        first_error
                            .as_ref()
                            .map_or(StorageError::Closed, copy_error)
                    })
                };
                if let Some(tx) = &done[i] {
                    let _ = tx.send((through, mine));
                }
                wakes[i]();
            }
            // Reads of the other committers may have waited for this round.
            for (j, marks) in shared.marks.iter().enumerate() {
                if marks.waits_on_peers.load(Ordering::SeqCst) && !taken.iter().any(|t| t.0 == j) {
                    wakes[j]();
                }
            }
            taken.clear();
        }
        for i in closing.drain(..) {
            done[i] = None;
            wakes[i]();
        }
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
        /// Fsync, then answer as a replica log that did not take the round.
        unreplicated: AtomicBool,
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
                unreplicated: AtomicBool::new(false),
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
            } else if self.unreplicated.load(Ordering::SeqCst) {
                Err(StorageError::Unavailable)
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
    fn a_round_the_replica_log_did_not_take_is_answered_unavailable_and_refuses_nothing_after() {
        let engine = Probe::new();
        engine.unreplicated.store(true, Ordering::SeqCst);
        let mut c =
            Committer::start(engine.clone(), Some(SyncRounds::default()), Arc::new(|| {})).unwrap();
        c.commit(&mut vec![(1, append(1, 1))]);
        let out = released_within(&mut c, 1);
        assert!(
            matches!(out[0].1, Err(StorageError::Unavailable)),
            "{:?}",
            out[0].1
        );
        assert!(c.failure().is_none(), "not a failed fsync");

        // The log is back: the next write (the same one, sent again) is acked.
        engine.unreplicated.store(false, Ordering::SeqCst);
        c.commit(&mut vec![(2, append(1, 1)), (3, append(1, 2))]);
        let out = released_within(&mut c, 2);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
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

    fn two(engine: &Arc<Probe>, rounds: Option<SyncRounds>) -> [Committer<Probe, u32>; 2] {
        let mut both = Committer::start_many(
            engine.clone(),
            rounds,
            vec![Arc::new(|| {}), Arc::new(|| {})],
        )
        .unwrap();
        let b = both.pop().unwrap();
        let a = both.pop().unwrap();
        [a, b]
    }

    fn wait_for_fsync_entry(engine: &Probe) {
        while engine.entered.lock().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn committers_share_fsyncs_and_a_read_waits_for_another_committers_writes() {
        let engine = Probe::new();
        let held = engine.hold.lock().unwrap();
        let [mut a, mut b] = two(&engine, Some(SyncRounds::default()));
        // A's first group: the syncer takes it and waits in the held fsync.
        a.commit(&mut vec![(1, append(1, 1))]);
        wait_for_fsync_entry(&engine);
        // Meanwhile A writes again, B writes elsewhere, and B reads A's conversation: the
        // page shows A's unsynced appends, which B's own bookkeeping knows nothing of.
        a.commit(&mut vec![(2, append(1, 2))]);
        b.commit(&mut vec![(10, append(3, 1)), (11, history(2, 1))]);
        assert!(!b.has_ready());
        assert_eq!(b.take_ready(|_, _| panic!("released before durable")), 0);
        drop(held);
        let out_a = released_within(&mut a, 2);
        let out_b = released_within(&mut b, 2);
        let tags = |out: &[(u32, Result<Reply, StorageError>)]| {
            out.iter().map(|(t, r)| (*t, r.is_ok())).collect::<Vec<_>>()
        };
        assert_eq!(tags(&out_a), [(1, true), (2, true)]);
        assert_eq!(tags(&out_b), [(10, true), (11, true)]);
        assert!(matches!(&out_b[1].1, Ok(Reply::History(p)) if p.messages.len() == 2));
        // The first fsync was A's alone; the second covered A's second group and B's.
        assert_eq!(engine.syncs.load(Ordering::SeqCst), 2);
        assert_eq!((a.in_flight(), b.in_flight()), (0, 0));
    }

    #[test]
    fn a_failed_fsync_fails_every_committer_and_refuses_reads_of_failed_writes() {
        let engine = Probe::new();
        engine.fail.store(true, Ordering::SeqCst);
        let held = engine.hold.lock().unwrap();
        let [mut a, mut b] = two(&engine, Some(SyncRounds::default()));
        a.commit(&mut vec![(1, append(1, 1))]);
        // B's read is evaluated while A's round is still in its fsync: it may show A's
        // append, so it waits for that round. (A read evaluated after the failure is
        // answered — checked at the end — so the fsync is held until the read is in.)
        wait_for_fsync_entry(&engine);
        b.commit(&mut vec![(2, history(2, 1))]);
        drop(held);
        let out = released_within(&mut a, 1);
        assert!(out[0].1.is_err(), "never an ack");
        let out = released_within(&mut b, 1);
        let err = out[0]
            .1
            .as_ref()
            .expect_err("it may show the failed append");
        assert!(err.to_string().contains("another core"), "{err}");
        // B had not written yet: its first write fails without another fsync, and B
        // refuses writes from then on.
        engine.fail.store(false, Ordering::SeqCst);
        b.commit(&mut vec![(3, append(3, 1))]);
        let refused = released_within(&mut b, 1).remove(0).1.expect_err("refused");
        // With the first failure's cause: a full disk is reported as one on every core.
        assert!(
            refused.to_string().contains("injected fsync failure"),
            "{refused}"
        );
        assert!(b.failure().is_some());
        assert_eq!(engine.syncs.load(Ordering::SeqCst), 1);
        // Reads keep working on both: a read evaluated after the failure waits for no
        // failed round and is answered.
        b.commit(&mut vec![(4, history(2, 1))]);
        assert!(
            released_within(&mut b, 1)[0].1.is_ok(),
            "reads after the failure"
        );
        a.commit(&mut vec![(5, history(1, 2))]);
        assert!(
            released_within(&mut a, 1)[0].1.is_ok(),
            "reads after the failure"
        );
    }

    #[test]
    fn one_committer_shuts_down_while_the_other_keeps_syncing() {
        let engine = Probe::new();
        let [mut a, mut b] = two(&engine, Some(SyncRounds::default()));
        a.commit(&mut vec![(1, append(1, 1))]);
        let mut got = Vec::new();
        a.shutdown(|t, r| got.push((t, r.is_ok())));
        assert_eq!(got, [(1, true)]);
        assert!(b.syncer_thread().is_some(), "the syncer still runs for B");
        b.commit(&mut vec![(2, append(3, 1))]);
        assert!(released_within(&mut b, 1)[0].1.is_ok());
        let mut got = Vec::new();
        b.commit(&mut vec![(3, append(3, 2))]);
        b.shutdown(|t, r| got.push((t, r.is_ok())));
        assert_eq!(got, [(3, true)]);
    }

    #[test]
    fn without_sync_rounds_no_read_waits_for_another_committer() {
        let engine = Probe::new();
        let [mut a, mut b] = two(&engine, None);
        a.commit(&mut vec![(1, append(1, 1))]);
        b.commit(&mut vec![(2, history(2, 1))]);
        let mut got = Vec::new();
        b.take_ready(|t, r| got.push((t, r.is_ok())));
        assert_eq!(got, [(2, true)]);
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
