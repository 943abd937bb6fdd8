//! The domain logic, written once over the [`Kv`] boundary: [`Store<K>`] implements
//! [`Engine`](crate::Engine) for every backend, so the in-memory and RocksDB engines
//! cannot drift apart.
//!
//! **One writer per partition.** Every mutation of a conversation runs under its
//! partition's `Mutex<WriterState>` ([`crate::partition`]), which also owns the caches
//! the writer needs (last seq per conversation, inbox head per user, member maps,
//! activity, pending news markers, the recent-id dedup filter). Two writers that own
//! different partitions — two cores of a server — never wait for each other; a group of
//! appends locks the partitions it touches in ascending order (so two groups cannot
//! deadlock), and a retention step locks them all. Group and public-account ids come
//! from one allocator (`ids`, taken before any partition). Caches are filled lazily from
//! the database (e.g. a conversation's last seq is one reverse seek); each is bounded
//! per partition (the configured bound divided by the partition count). Appends advance
//! them as they are added to a run's batch, so the next append of the group sees them;
//! if the batch write fails the counters are forgotten and refilled from the database.
//! Reads (sync, history, membership lookups) go to the database without the locks.
//!
//! **Durability** is an argument, not ambient state: a write made through a direct
//! [`Engine`](crate::Engine) method is durable per [`SyncMode`] when it returns;
//! [`Engine::apply_batch`](crate::Engine::apply_batch) writes each run of appends as one
//! batch (and every other write as its own), unsynced in `Batch` mode, and
//! [`Engine::make_durable`](crate::Engine::make_durable) fsyncs the WAL once for all of
//! them (group commit).
//!
//! Per-request paths (`append`, `sync`) are the hot paths: no logging, no global
//! locks besides the writer mutex, keys encoded into stack arrays.

mod account;
mod append;
mod edit;
mod groups;
mod mutes;
mod recall;
mod sync;
mod trait_impl;
mod trim;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cf::Cf;
use crate::config::{StorageConfig, SyncMode};
use crate::error::StorageError;
use crate::keys;
use crate::kv::{Batch, Kv};
use crate::model::{ConversationKey, Member, Role, UserId};
use crate::partition::{Partition, Partitions};
use foldhash::fast::RandomState;
use lru::LruCache;

use crate::recent_ids::{RecentIds, RecentIdsStats};
use crate::values;

/// Members of a group or public account, by user id.
pub(crate) type MemberMap = BTreeMap<UserId, Role>;

/// The writer's caches: LRU maps hashed with foldhash. They are probed once per
/// recipient of every append (a 1,000-member group: thousands of probes), where SipHash
/// showed up as 5 % of the group-append profile.
pub(crate) type Lru<K, V> = LruCache<K, V, RandomState>;

/// One user's conversations with an unconsumed news marker, and that marker's inbox seq.
pub(crate) type PendingNews = HashMap<ConversationKey, u64, RandomState>;

/// State owned by one partition's writer. Every cache is an LRU map trimmed to its bound
/// (`StorageConfig::writer_cache_entries`, `member_cache_conversations`) each time the
/// writer lock is taken — never in the middle of a run, whose unwritten counters live
/// only here. Last seqs, inbox heads, member maps and activity are refilled from the
/// database when dropped; a dropped pending-news entry costs at most one repeated
/// marker (markers are never missing).
#[derive(Debug)]
pub(crate) struct WriterState {
    last_seq: Lru<ConversationKey, u64>,
    /// Last inbox seq of each (user, partition) pair.
    inbox_head: Lru<(UserId, Partition), u64>,
    members: Lru<ConversationKey, Arc<MemberMap>>,
    /// Mutes of groups, cached and bounded like the member maps.
    mutes: Lru<ConversationKey, Arc<mutes::MuteMap>>,
    activity: Lru<UserId, u64>,
    /// Per user: conversations with an unconsumed news marker, and that marker's inbox seq.
    /// While one is pending, further read-diffused appends write no new marker.
    pending_news: Lru<UserId, PendingNews>,
    /// Which `(sender, conversation, client_msg_id)` are certainly new (bounded).
    recent_ids: RecentIds,
    /// Until when a legacy dedup key can still be inside the dedup window: `None` until
    /// first needed (then read from, or decided and written to, `meta`).
    legacy_dedup_before: Option<u64>,
    /// The scratch buffers of a [`append::Run`], kept between runs so a run allocates
    /// nothing once they have grown.
    run_scratch: append::RunScratch,
    max_entries: usize,
    max_member_maps: usize,
    evictions: u64,
}

/// Sizes of the writer's caches and how many entries their bounds dropped, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterCacheStats {
    /// Conversations whose last seq is cached.
    pub last_seqs: u64,
    /// (User, partition) pairs whose inbox head is cached.
    pub inbox_heads: u64,
    /// Groups and public accounts whose member map is cached.
    pub member_maps: u64,
    /// Users whose last activity is cached.
    pub activities: u64,
    /// Users with pending news markers tracked.
    pub pending_news_users: u64,
    /// Entries dropped by the bounds since open (all caches).
    pub evictions: u64,
}

impl WriterCacheStats {
    fn add(&mut self, other: WriterCacheStats) {
        self.last_seqs += other.last_seqs;
        self.inbox_heads += other.inbox_heads;
        self.member_maps += other.member_maps;
        self.activities += other.activities;
        self.pending_news_users += other.pending_news_users;
        self.evictions += other.evictions;
    }
}

/// The last allocated group and public-account ids (`None` until read from `meta`).
#[derive(Debug, Default)]
pub(crate) struct Ids {
    last_group: Option<u64>,
    last_public: Option<u64>,
}

impl WriterState {
    /// One partition's state: each bound of `config` is shared by `partitions`.
    fn new(config: &StorageConfig, partitions: Partitions) -> Self {
        let share = |n: usize| (n / usize::from(partitions.count())).max(1);
        WriterState {
            last_seq: Lru::unbounded_with_hasher(RandomState::default()),
            inbox_head: Lru::unbounded_with_hasher(RandomState::default()),
            members: Lru::unbounded_with_hasher(RandomState::default()),
            mutes: Lru::unbounded_with_hasher(RandomState::default()),
            activity: Lru::unbounded_with_hasher(RandomState::default()),
            pending_news: Lru::unbounded_with_hasher(RandomState::default()),
            recent_ids: RecentIds::new(
                config.dedup_window_ms,
                config.dedup_filter_per_sender,
                share(config.dedup_filter_ids),
            ),
            legacy_dedup_before: None,
            run_scratch: append::RunScratch::default(),
            max_entries: share(config.writer_cache_entries),
            max_member_maps: share(config.member_cache_conversations),
            evictions: 0,
        }
    }

    /// Drop least recently used entries beyond the bounds. Only called when the lock
    /// is taken, so no run's unwritten counter is ever dropped.
    fn trim(&mut self) {
        fn trim_one<K: std::hash::Hash + Eq, V>(c: &mut Lru<K, V>, max: usize) -> u64 {
            let mut n = 0;
            while c.len() > max && c.pop_lru().is_some() {
                n += 1;
            }
            n
        }
        let max = self.max_entries;
        self.evictions += trim_one(&mut self.last_seq, max)
            + trim_one(&mut self.inbox_head, max)
            + trim_one(&mut self.activity, max)
            + trim_one(&mut self.pending_news, max)
            + trim_one(&mut self.members, self.max_member_maps)
            + trim_one(&mut self.mutes, self.max_member_maps);
    }

    fn cache_stats(&self) -> WriterCacheStats {
        WriterCacheStats {
            last_seqs: self.last_seq.len() as u64,
            inbox_heads: self.inbox_head.len() as u64,
            member_maps: self.members.len() as u64,
            activities: self.activity.len() as u64,
            pending_news_users: self.pending_news.len() as u64,
            evictions: self.evictions,
        }
    }

    /// Forget every cached counter after a failed write: the write may or may not have
    /// reached the database, so the caches are refilled from it on next use.
    fn forget_counters(&mut self) {
        self.last_seq.clear();
        self.inbox_head.clear();
        self.pending_news.clear();
    }
}

/// Write counters, for write-amplification measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Messages appended (duplicates excluded).
    pub appends: u64,
    /// Key + value bytes handed to the backend by appends.
    pub append_bytes: u64,
    /// Inbox entries (pointers and news markers) written by appends.
    pub inbox_entries: u64,
}

/// The domain logic over a key-value backend; see the module doc.
pub struct Store<K: Kv> {
    kv: K,
    config: StorageConfig,
    /// The database's partitions, decided when it was created.
    partitions: Partitions,
    /// The database's epoch (random, recorded in `meta`): inbox positions carry it, so
    /// one given by another database — this one recreated — is recognised.
    epoch: u64,
    /// One writer state per partition, by index.
    writers: Box<[Mutex<WriterState>]>,
    /// The group and public-account id allocator (locked before any partition).
    ids: Mutex<Ids>,
    /// Where the next retention step resumes (locked before the partitions).
    trim: Mutex<trim::TrimCursor>,
    /// Serialises activity updates (a read-modify-write that keeps the latest).
    touches: Mutex<()>,
    appends: AtomicU64,
    append_bytes: AtomicU64,
    inbox_entries: AtomicU64,
    /// Latest `now_ms` any request has carried: the engine's notion of "now" for
    /// background expiry (compaction filters), so storage never reads a wall clock and
    /// expiry agrees with the times the control plane passes in.
    clock: Arc<AtomicU64>,
    /// Keys whose earlier values (recalled or edited content) must be purged from the
    /// backend's files: taken by the backend's scrubber ([`Store::take_erasures`]).
    erasures: Mutex<Erasures>,
}

/// Keys overwritten to erase what they held (a recall's content, an edit's previous
/// version), waiting for the backend to purge the old bytes from its files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erasures {
    /// `(column family, key)`, oldest first.
    pub keys: Vec<(Cf, Vec<u8>)>,
    /// More than [`Erasures::MAX_KEYS`] were queued: purge whole column families
    /// (`keys` then names one key of each family concerned).
    pub overflowed: bool,
}

impl Erasures {
    /// Most keys queued one by one; past it the scrubber compacts whole families.
    pub const MAX_KEYS: usize = 10_000;

    /// Nothing to purge.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl<K: Kv + std::fmt::Debug> std::fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The writer caches can hold millions of entries: show only what identifies us.
        f.debug_struct("Store")
            .field("kv", &self.kv)
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// `Some(0)` — no legacy dedup key can exist — for a database whose legacy-dedup horizon
/// is undecided and whose `dedup` table is empty (a fresh one), with the decision written
/// to `meta` (best effort: unwritten, it is decided again later, which only costs reads).
/// `None` leaves it to the first append (see `append::legacy_dedup_before`), so a fresh
/// database's appends never carry that write.
fn fresh_dedup_table<K: Kv>(kv: &K) -> Option<u64> {
    if !matches!(kv.get(Cf::Meta, keys::META_LEGACY_DEDUP_BEFORE), Ok(None)) {
        return None;
    }
    if !matches!(
        kv.first_key(Cf::Dedup, &[], &keys::prefix_end(&[])),
        Ok(None)
    ) {
        return None;
    }
    let mut batch = kv.batch();
    batch.put(Cf::Meta, keys::META_LEGACY_DEDUP_BEFORE, &keys::u64_key(0));
    kv.write(batch, false).ok()?;
    Some(0)
}

/// The database's partitions: as recorded in `meta`; for a database with no record,
/// one if it already holds inbox entries (it is from before partitions, and its keys
/// have the one-partition layout), else `wanted`, recorded now — before any inbox entry
/// can be written, so the record precedes them in the log.
pub(crate) fn decide_partitions<K: Kv>(
    kv: &K,
    wanted: Partitions,
) -> Result<Partitions, StorageError> {
    if let Some(v) = kv.get(Cf::Meta, keys::META_PARTITIONS)? {
        let n = keys::decode_u64("partitions", &v)?;
        return u16::try_from(n)
            .ok()
            .and_then(Partitions::new)
            .ok_or(StorageError::Corrupt(crate::error::DecodeError::Tag {
                what: "partition count",
                tag: u8::try_from(n).unwrap_or(u8::MAX),
            }));
    }
    if kv
        .first_key(Cf::Inbox, &[], &keys::prefix_end(&[]))?
        .is_some()
    {
        return Ok(Partitions::ONE);
    }
    let mut batch = kv.batch();
    batch.put(
        Cf::Meta,
        keys::META_PARTITIONS,
        &keys::u64_key(u64::from(wanted.count())),
    );
    // Unsynced: the first inbox entry's fsync covers it (the log is replayed in order),
    // and a record lost with nothing after it is decided again at the next open.
    kv.write(batch, false)?;
    Ok(wanted)
}

/// The database's epoch: as recorded in `meta`, else a random non-zero number recorded
/// now. (If that write is lost in a crash, the next open picks another: positions given
/// in between get one full sync, never a wrong one.)
pub(crate) fn decide_epoch<K: Kv>(kv: &K) -> Result<u64, StorageError> {
    if let Some(v) = kv.get(Cf::Meta, keys::META_EPOCH)? {
        return Ok(keys::decode_u64("epoch", &v)?);
    }
    // std's hasher keys are random per process: a random number without a new
    // dependency or a clock.
    use std::hash::BuildHasher;
    let epoch = std::collections::hash_map::RandomState::new().hash_one(0x5045_5452_454c_u64) | 1;
    let mut batch = kv.batch();
    batch.put(Cf::Meta, keys::META_EPOCH, &keys::u64_key(epoch));
    kv.write(batch, false)?;
    Ok(epoch)
}

impl<K: Kv> Store<K> {
    /// Open a database on a backend: its partition count is read from it, or decided
    /// and recorded if it is new (`config.partitions`).
    pub fn with_kv(kv: K, config: StorageConfig) -> Result<Self, StorageError> {
        Self::with_kv_and_clock(kv, config, Arc::new(AtomicU64::new(0)))
    }

    /// Like [`Store::with_kv`], for a backend whose background expiry reads `clock` (see
    /// [`Store::clock`]).
    pub fn with_kv_and_clock(
        kv: K,
        config: StorageConfig,
        clock: Arc<AtomicU64>,
    ) -> Result<Self, StorageError> {
        let partitions = decide_partitions(&kv, Partitions::clamped(config.partitions))?;
        let recorded = decide_epoch(&kv)?;
        let epoch = config.epoch.unwrap_or(recorded);
        Ok(Self::with_partitions(kv, config, clock, partitions, epoch))
    }

    /// Wrap a backend whose partition count is already known (an empty in-memory one).
    pub(crate) fn with_partitions(
        kv: K,
        config: StorageConfig,
        clock: Arc<AtomicU64>,
        partitions: Partitions,
        epoch: u64,
    ) -> Self {
        let legacy_dedup_before = fresh_dedup_table(&kv);
        let writers = partitions
            .all()
            .map(|_| {
                let mut w = WriterState::new(&config, partitions);
                w.legacy_dedup_before = legacy_dedup_before;
                Mutex::new(w)
            })
            .collect();
        Store {
            kv,
            writers,
            ids: Mutex::new(Ids::default()),
            trim: Mutex::new(trim::TrimCursor::default()),
            touches: Mutex::new(()),
            config,
            partitions,
            epoch,
            appends: AtomicU64::new(0),
            append_bytes: AtomicU64::new(0),
            inbox_entries: AtomicU64::new(0),
            clock,
            erasures: Mutex::new(Erasures::default()),
        }
    }

    /// Queue `key` of `cf` for purging once its new value is written (see [`Erasures`]).
    pub(crate) fn note_erasure(&self, cf: Cf, key: &[u8]) {
        let Ok(mut e) = self.erasures.lock() else {
            return;
        };
        if e.overflowed {
            if !e.keys.iter().any(|(c, _)| *c == cf) {
                e.keys.push((cf, key.to_vec()));
            }
        } else if e.keys.len() >= Erasures::MAX_KEYS {
            e.overflowed = true;
            e.keys.push((cf, key.to_vec()));
        } else {
            e.keys.push((cf, key.to_vec()));
        }
    }

    /// Takes the queued erasures (the backend's scrubber purges them; an in-memory
    /// backend has nothing to purge and never calls this).
    pub fn take_erasures(&self) -> Erasures {
        self.erasures
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// Puts erasures the scrubber could not complete back in the queue.
    pub fn requeue_erasures(&self, failed: Erasures) {
        for (cf, key) in failed.keys {
            self.note_erasure(cf, &key);
        }
        if failed.overflowed
            && let Ok(mut e) = self.erasures.lock()
        {
            e.overflowed = true;
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// The database's partitions (fixed when it was created).
    pub fn partitions(&self) -> Partitions {
        self.partitions
    }

    /// The database's epoch (see [`crate::partition::InboxCursor`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The backend (for backend-specific operations such as checkpoints).
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// Closes the store and hands the backend back (to open it again, e.g. with
    /// another configuration).
    pub fn into_kv(self) -> K {
        self.kv
    }

    /// The latest request time seen (0 before the first timed request since open).
    pub fn clock(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Advance the clock to `now_ms` if it is later.
    fn observe_time(&self, now_ms: u64) {
        self.clock.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Write counters since open.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            appends: self.appends.load(Ordering::Relaxed),
            append_bytes: self.append_bytes.load(Ordering::Relaxed),
            inbox_entries: self.inbox_entries.load(Ordering::Relaxed),
        }
    }

    /// Take partition `p`'s writer lock (and trim its caches to their bounds: nothing
    /// is pending between two holders of the lock).
    fn lock(&self, p: Partition) -> Result<MutexGuard<'_, WriterState>, StorageError> {
        let mut w = self
            .writers
            .get(usize::from(p.0))
            .ok_or(StorageError::Invalid("no such partition"))?
            .lock()
            .map_err(|_| StorageError::Backend("writer lock poisoned by a panic".into()))?;
        w.trim();
        Ok(w)
    }

    /// Take the writer lock of `c`'s partition.
    fn lock_for(&self, c: ConversationKey) -> Result<MutexGuard<'_, WriterState>, StorageError> {
        self.lock(self.partitions.of(c))
    }

    /// Take every partition's writer lock, in ascending order.
    fn lock_all(&self) -> Result<Vec<MutexGuard<'_, WriterState>>, StorageError> {
        self.partitions.all().map(|p| self.lock(p)).collect()
    }

    /// A lock that holds no writer state (the id allocator, the trim cursor).
    fn lock_plain<'a, T>(m: &'a Mutex<T>) -> Result<MutexGuard<'a, T>, StorageError> {
        m.lock()
            .map_err(|_| StorageError::Backend("writer lock poisoned by a panic".into()))
    }

    /// Sizes and evictions of the writer's caches, over every partition.
    pub fn writer_cache_stats(&self) -> Result<WriterCacheStats, StorageError> {
        let mut total = WriterCacheStats::default();
        for p in self.partitions.all() {
            total.add(self.lock(p)?.cache_stats());
        }
        Ok(total)
    }

    /// Write a batch; if `sync`, the WAL is fsynced before this returns.
    fn commit(&self, batch: K::Batch<'_>, sync: bool) -> Result<(), StorageError> {
        self.kv.write(batch, sync)
    }

    /// Whether a write made by a direct [`Engine`](crate::Engine) call fsyncs before it
    /// returns: in `Batch` mode a direct call is a group of one.
    fn direct_sync(&self) -> bool {
        match self.config.sync {
            SyncMode::Always | SyncMode::Batch => true,
            SyncMode::None => false,
        }
    }

    /// Whether a group applied by `apply_batch` fsyncs its writes itself: only in
    /// `Always`; in `Batch` the next `make_durable` does, in `None` nobody does.
    fn group_sync(&self) -> bool {
        self.config.sync == SyncMode::Always
    }

    /// The writers' recent-id filter counters (dedup reads avoided, sizes), over every
    /// partition.
    pub fn recent_ids_stats(&self) -> Result<RecentIdsStats, StorageError> {
        let mut total = RecentIdsStats::default();
        for p in self.partitions.all() {
            total.add(self.lock(p)?.recent_ids.stats());
        }
        Ok(total)
    }

    /// Last assigned seq of a conversation, read from the database (reverse seek).
    fn stored_last_seq(&self, c: ConversationKey) -> Result<u64, StorageError> {
        let prefix = keys::conversation(c);
        let end = keys::prefix_end(&prefix);
        match self.kv.last_key(Cf::Messages, &prefix, &end)? {
            Some(k) => Ok(keys::decode_conversation_u64(&k)?.1),
            None => Ok(0),
        }
    }

    /// Lowest seq still stored (0 if the conversation is empty): one forward seek.
    fn stored_first_seq(&self, c: ConversationKey) -> Result<u64, StorageError> {
        let prefix = keys::conversation(c);
        let end = keys::prefix_end(&prefix);
        match self.kv.first_key(Cf::Messages, &prefix, &end)? {
            Some(k) => Ok(keys::decode_conversation_u64(&k)?.1),
            None => Ok(0),
        }
    }

    /// Last assigned seq, cached in the writer.
    fn last_seq(&self, w: &mut WriterState, c: ConversationKey) -> Result<u64, StorageError> {
        if let Some(s) = w.last_seq.get(&c) {
            return Ok(*s);
        }
        let s = self.stored_last_seq(c)?;
        w.last_seq.put(c, s);
        Ok(s)
    }

    /// Last inbox seq of a user in a partition, read from the database.
    fn stored_inbox_head(&self, u: UserId, p: Partition) -> Result<u64, StorageError> {
        let prefix = self.partitions.inbox_prefix(u, p);
        let end = keys::prefix_end(&prefix);
        match self.kv.last_key(Cf::Inbox, &prefix, &end)? {
            Some(k) => Ok(self.partitions.decode_inbox(&k)?.2),
            None => Ok(0),
        }
    }

    /// Last inbox seq of a user in a partition, cached in the writer.
    fn inbox_head(
        &self,
        w: &mut WriterState,
        u: UserId,
        p: Partition,
    ) -> Result<u64, StorageError> {
        if let Some(h) = w.inbox_head.get(&(u, p)) {
            return Ok(*h);
        }
        let h = self.stored_inbox_head(u, p)?;
        w.inbox_head.put((u, p), h);
        Ok(h)
    }

    /// Members of a group or public account from the database; `NotFound` if it doesn't exist.
    fn stored_members(&self, c: ConversationKey) -> Result<MemberMap, StorageError> {
        if matches!(c, ConversationKey::Single { .. }) {
            return Err(StorageError::Invalid(
                "1:1 chats have no stored member list",
            ));
        }
        if self
            .kv
            .get(Cf::Conversations, &keys::conversation(c))?
            .is_none()
        {
            return Err(StorageError::NotFound(c));
        }
        let mut map = MemberMap::new();
        self.scan_conversation(Cf::Members, c, |user, v| {
            map.insert(UserId(user), values::decode_role(v)?);
            Ok(())
        })?;
        Ok(map)
    }

    /// Every `conversation | u64` entry of `cf` for conversation `c`, in key order:
    /// `each(the u64, value)`. (Member lists and mutes.)
    fn scan_conversation(
        &self,
        cf: Cf,
        c: ConversationKey,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let prefix = keys::conversation(c);
        let end = keys::prefix_end(&prefix);
        self.kv.scan(
            cf,
            &prefix,
            &end,
            crate::kv::Direction::Forward,
            usize::MAX,
            &mut |k, v| {
                let (_, id) = keys::decode_conversation_u64(k)?;
                each(id, v)?;
                Ok(true)
            },
        )
    }

    /// Members, cached in the writer.
    fn members_of(
        &self,
        w: &mut WriterState,
        c: ConversationKey,
    ) -> Result<Arc<MemberMap>, StorageError> {
        if let Some(m) = w.members.get(&c) {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(self.stored_members(c)?);
        w.members.put(c, Arc::clone(&m));
        Ok(m)
    }

    /// Whether `u` was active within the window at `now_ms` (cached activity).
    fn is_active(&self, w: &mut WriterState, u: UserId, now_ms: u64) -> Result<bool, StorageError> {
        let last = match w.activity.get(&u) {
            Some(t) => *t,
            None => {
                let t = self.stored_activity(u)?.unwrap_or(0);
                w.activity.put(u, t);
                t
            }
        };
        Ok(last != 0 && now_ms.saturating_sub(last) <= self.config.active_window_ms)
    }

    fn stored_activity(&self, u: UserId) -> Result<Option<u64>, StorageError> {
        match self.kv.get(Cf::Activity, &keys::u64_key(u.0))? {
            Some(v) => Ok(Some(keys::decode_u64("activity", &v)?)),
            None => Ok(None),
        }
    }

    /// A participant's role, from the database. 1:1 participants are `Member`s.
    fn stored_role(&self, c: ConversationKey, u: UserId) -> Result<Option<Role>, StorageError> {
        match c {
            ConversationKey::Single { lo, hi } => Ok((u == lo || u == hi).then_some(Role::Member)),
            _ => match self.kv.get(Cf::Members, &keys::conversation_u64(c, u.0))? {
                Some(v) => Ok(Some(values::decode_role(&v)?)),
                None => Ok(None),
            },
        }
    }

    /// `Ok` if `u` participates in `c`, else `NotAMember` (or `NotFound`).
    fn require_participant(&self, c: ConversationKey, u: UserId) -> Result<(), StorageError> {
        if self.stored_role(c, u)?.is_some() {
            return Ok(());
        }
        if !matches!(c, ConversationKey::Single { .. })
            && self
                .kv
                .get(Cf::Conversations, &keys::conversation(c))?
                .is_none()
        {
            return Err(StorageError::NotFound(c));
        }
        Err(StorageError::NotAMember {
            conversation: c,
            user: u,
        })
    }

    fn read_cursor(&self, u: UserId, c: ConversationKey) -> Result<u64, StorageError> {
        match self.kv.get(Cf::Cursors, &keys::user_conversation(u, c))? {
            Some(v) => Ok(keys::decode_u64("cursor", &v)?),
            None => Ok(0),
        }
    }
}

pub(crate) fn member_list(m: &MemberMap) -> Vec<Member> {
    m.iter()
        .map(|(user, role)| Member {
            user: *user,
            role: *role,
        })
        .collect()
}
