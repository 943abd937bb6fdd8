//! Conformance suite: every test runs against every engine (in-memory and RocksDB) via
//! the `conformance!` macro, so both must behave identically. Failure paths (a group
//! write that fails, an fsync that fails) run each backend behind [`Flaky`], a `Kv`
//! wrapper that counts writes and fails them on demand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_storage::cf::Cf;
use petrel_storage::kv::{Direction, Kv, Visitor};
use petrel_storage::partition::Partitions;
use petrel_storage::{
    AppendOutcome, AppendRequest, Committer, ConversationKey, DiffusionMode, Engine, InboxCursor,
    Refs, Reply, Request, Retention, Role, StorageConfig, StorageError, Store, SyncMode,
    SyncRequest, TokenId, TrimReport, UserId,
};
use petrel_storage_rocks::RocksEngineExt;

/// Opens an engine of one kind, and can reopen it (RocksDB: close and open the same
/// directory; in-memory: the same instance, since nothing is persisted).
trait Harness: Sized {
    type E: Engine;
    /// The backend, for wrapping in [`Flaky`].
    type K: Kv + 'static;
    fn open(config: StorageConfig) -> Self;
    fn engine(&self) -> &Self::E;
    fn reopen(self) -> Self;
    /// A fresh backend (and the directory that must outlive it, if any).
    fn backend(config: &StorageConfig) -> (Self::K, Option<tempfile::TempDir>);
}

/// A backend wrapper that counts batch writes and fails writes or WAL syncs on demand.
struct Flaky<K> {
    inner: K,
    writes: AtomicU64,
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
}

impl<K> Flaky<K> {
    fn new(inner: K) -> Self {
        Flaky {
            inner,
            writes: AtomicU64::new(0),
            fail_writes: AtomicBool::new(false),
            fail_syncs: AtomicBool::new(false),
        }
    }
}

impl<K: Kv> Kv for Flaky<K> {
    type Batch<'a>
        = K::Batch<'a>
    where
        Self: 'a;

    fn batch(&self) -> Self::Batch<'_> {
        self.inner.batch()
    }
    fn write(&self, batch: Self::Batch<'_>, sync: bool) -> Result<(), StorageError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StorageError::Backend("injected write failure".into()));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(batch, sync)
    }
    fn sync_wal(&self) -> Result<(), StorageError> {
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(StorageError::Backend("injected fsync failure".into()));
        }
        self.inner.sync_wal()
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

/// The engine over `H`'s backend behind [`Flaky`].
type FlakyEngine<H> = Store<Flaky<<H as Harness>::K>>;

/// An engine of `H`'s backend behind [`Flaky`] (keep the directory alive with it).
fn flaky<H: Harness>(config: StorageConfig) -> (Arc<FlakyEngine<H>>, Option<tempfile::TempDir>) {
    let (kv, dir) = H::backend(&config);
    (
        Arc::new(Store::with_kv(Flaky::new(kv), config).expect("open")),
        dir,
    )
}

struct Mem(petrel_storage::MemEngine);

impl Harness for Mem {
    type E = petrel_storage::MemEngine;
    type K = petrel_storage::mem::MemKv;
    fn backend(_: &StorageConfig) -> (Self::K, Option<tempfile::TempDir>) {
        (petrel_storage::mem::MemKv::default(), None)
    }
    fn open(config: StorageConfig) -> Self {
        Mem(petrel_storage::MemEngine::new(config))
    }
    fn engine(&self) -> &Self::E {
        &self.0
    }
    fn reopen(self) -> Self {
        self
    }
}

struct Rocks {
    engine: Option<petrel_storage_rocks::RocksEngine>,
    dir: tempfile::TempDir,
    config: StorageConfig,
}

impl Harness for Rocks {
    type E = petrel_storage_rocks::RocksEngine;
    type K = petrel_storage_rocks::RocksKv;
    fn backend(config: &StorageConfig) -> (Self::K, Option<tempfile::TempDir>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(AtomicU64::new(0));
        let kv = petrel_storage_rocks::RocksKv::open(dir.path(), config, &clock).expect("open");
        (kv, Some(dir))
    }
    fn open(config: StorageConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine =
            petrel_storage_rocks::RocksEngine::open(dir.path(), config.clone()).expect("open");
        Rocks {
            engine: Some(engine),
            dir,
            config,
        }
    }
    fn engine(&self) -> &Self::E {
        self.engine.as_ref().expect("open engine")
    }
    fn reopen(mut self) -> Self {
        drop(self.engine.take());
        let engine = petrel_storage_rocks::RocksEngine::open(self.dir.path(), self.config.clone())
            .expect("reopen");
        self.engine = Some(engine);
        self
    }
}

const A: UserId = UserId(1);
const B: UserId = UserId(2);
const C: UserId = UserId(3);
const D: UserId = UserId(4);
const E: UserId = UserId(5);
const T0: u64 = 1_700_000_000_000;

fn config(diffusion: DiffusionMode) -> StorageConfig {
    StorageConfig {
        diffusion,
        sync: SyncMode::None,
        large_group_threshold: 3,
        ..StorageConfig::default()
    }
}

fn send(
    e: &impl Engine,
    sender: UserId,
    conv: ConversationKey,
    cmid: u64,
    now_ms: u64,
) -> Result<AppendOutcome, StorageError> {
    e.append(AppendRequest {
        sender,
        sender_device: "dev".into(),
        client_msg_id: cmid,
        conversation: conv,
        payload: Bytes::from(format!("{conv:?}/{cmid}")),
        now_ms,
        refs: Default::default(),
    })
}

/// A device that syncs and checks the delivery contract: per conversation, messages
/// arrive in ascending seq with no gap after its cursor and no duplicate.
struct Device {
    user: UserId,
    inbox: InboxCursor,
    cursors: BTreeMap<ConversationKey, u64>,
    pages: usize,
}

impl Device {
    fn new(user: UserId) -> Self {
        Device {
            user,
            inbox: InboxCursor::default(),
            cursors: BTreeMap::new(),
            pages: 0,
        }
    }

    /// Sync until `has_more` is false; returns (conversation, seq, payload) received.
    fn sync_all(&mut self, e: &impl Engine, limit: usize) -> Vec<(ConversationKey, u64, Bytes)> {
        let mut got = Vec::new();
        for _ in 0..10_000 {
            let page = e
                .sync(&SyncRequest {
                    user: self.user,
                    inbox: self.inbox.clone(),
                    cursors: self.cursors.iter().map(|(c, s)| (*c, *s)).collect(),
                    limit,
                    now_ms: T0,
                })
                .expect("sync");
            self.pages += 1;
            assert!(page.messages.len() <= limit.max(1));
            // What retention removed is announced, not a gap: skip to the first seq kept.
            for state in &page.conversations {
                let cur = self.cursors.entry(state.key).or_insert(0);
                if state.first_seq > *cur + 1 {
                    *cur = state.first_seq - 1;
                }
            }
            for m in &page.messages {
                let cur = self.cursors.entry(m.conversation).or_insert(0);
                assert_eq!(m.seq, *cur + 1, "gap or duplicate in {:?}", m.conversation);
                *cur = m.seq;
                got.push((m.conversation, m.seq, m.payload.clone()));
            }
            self.inbox = page.inbox;
            if !page.has_more {
                return got;
            }
        }
        panic!("sync never finished");
    }
}

fn seqs_are_gap_free_per_conversation<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    let g = e.create_group(A, "g", &[B, C], T0).unwrap();
    let mut expect = BTreeMap::new();
    for i in 0..30u64 {
        let (conv, sender) = if i % 3 == 0 { (ab, B) } else { (g, C) };
        let out = send(e, sender, conv, 100 + i, T0 + i).unwrap();
        let n = expect.entry(conv).or_insert(0u64);
        *n += 1;
        assert_eq!(out.seq, *n);
        assert!(!out.duplicate);
        assert_eq!(out.server_time_ms, T0 + i);
    }
    let hist = e.history(A, g, u64::MAX, 1000).unwrap();
    let seqs: Vec<u64> = hist.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    // Seqs continue after a reopen: no reuse, no gap.
    let h = h.reopen();
    let out = send(h.engine(), A, ab, 999, T0 + 100).unwrap();
    assert_eq!(out.seq, 11);
    let out = send(h.engine(), A, g, 998, T0 + 100).unwrap();
    assert_eq!(out.seq, 21);
}

fn duplicate_append_returns_original_seq<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    let first = send(e, A, ab, 7, T0).unwrap();
    send(e, B, ab, 7, T0 + 1).unwrap(); // same client id, other sender: not a duplicate
    let retry = send(e, A, ab, 7, T0 + 5_000).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seq, first.seq);
    assert_eq!(retry.server_time_ms, first.server_time_ms);
    assert!(retry.recipients.is_empty());
    assert_eq!(e.history(A, ab, u64::MAX, 100).unwrap().messages.len(), 2);
    // Dedup survives a reopen.
    let h = h.reopen();
    let again = send(h.engine(), A, ab, 7, T0 + 10_000).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
}

/// A sender past the recent-id filter's per-sender bound, with increasing ids, reopened:
/// the filter reloads from an incomplete scan and takes its id ceiling from each
/// conversation's largest stored id (reverse seeks on the backend); ids above it are new,
/// retries below it still find their message.
fn dedup_after_reopen_past_the_filter_bound<H: Harness>() {
    let cfg = StorageConfig {
        dedup_filter_per_sender: 2,
        ..config(DiffusionMode::Hybrid)
    };
    let h = H::open(cfg);
    let ab = ConversationKey::single(A, B);
    let ac = ConversationKey::single(A, C);
    for id in 1..=40u64 {
        let conv = if id % 2 == 0 { ab } else { ac };
        assert!(!send(h.engine(), A, conv, id, T0 + id).unwrap().duplicate);
    }
    let h = h.reopen();
    let e = h.engine();
    let retry = send(e, A, ac, 3, T0 + 100).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seq, 2);
    assert!(send(e, A, ab, 40, T0 + 101).unwrap().duplicate);
    let new = send(e, A, ab, 41, T0 + 102).unwrap();
    assert!(!new.duplicate);
    assert_eq!(new.seq, 21);
    // The same id in the other conversation is another message.
    assert!(!send(e, A, ac, 41, T0 + 103).unwrap().duplicate);
    assert!(send(e, A, ac, 41, T0 + 104).unwrap().duplicate);
}

fn dedup_expires_after_window<H: Harness>() {
    let cfg = StorageConfig {
        dedup_window_ms: 1_000,
        ..config(DiffusionMode::Hybrid)
    };
    let h = H::open(cfg);
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    assert_eq!(send(e, A, ab, 1, T0).unwrap().seq, 1);
    assert!(send(e, A, ab, 1, T0 + 999).unwrap().duplicate);
    let later = send(e, A, ab, 1, T0 + 1_000).unwrap();
    assert!(!later.duplicate);
    assert_eq!(later.seq, 2);
}

fn recipients_and_send_permissions<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let ab = ConversationKey::single(B, A);
    assert_eq!(ab, ConversationKey::single(A, B));
    let out = send(e, A, ab, 1, T0).unwrap();
    assert_eq!(out.recipients.as_slice(), [A, B]);
    assert!(matches!(
        send(e, C, ab, 1, T0),
        Err(StorageError::NotAMember { .. })
    ));
    let g = e.create_group(A, "g", &[B], T0).unwrap();
    let mut r = send(e, B, g, 2, T0).unwrap().recipients;
    r.sort();
    assert_eq!(r.as_slice(), [A, B]);
    assert!(matches!(
        send(e, C, g, 3, T0),
        Err(StorageError::NotAMember { .. })
    ));
    assert!(matches!(
        send(e, A, ConversationKey::Group(999), 4, T0),
        Err(StorageError::NotFound(_))
    ));
    let p = e.create_public_account(A, "news", T0).unwrap();
    e.follow(B, account_id(p), T0).unwrap();
    e.follow(C, account_id(p), T0).unwrap();
    assert!(matches!(
        send(e, B, p, 5, T0),
        Err(StorageError::NotOwner { .. })
    ));
    let mut r = send(e, A, p, 6, T0).unwrap().recipients;
    r.sort();
    assert_eq!(r.as_slice(), [A, B, C]);
    assert!(matches!(
        send(e, A, ConversationKey::PublicAccount(77), 7, T0),
        Err(StorageError::NotFound(_))
    ));
}

fn account_id(c: ConversationKey) -> u64 {
    match c {
        ConversationKey::Group(id) | ConversationKey::PublicAccount(id) => id,
        ConversationKey::Single { .. } => panic!("not a group"),
    }
}

fn group_role_rules<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let g = e.create_group(A, "g", &[B, C], T0).unwrap();
    let id = account_id(g);
    assert_eq!(e.role_of(g, A).unwrap(), Some(Role::Owner));
    assert_eq!(e.role_of(g, B).unwrap(), Some(Role::Member));
    assert_eq!(e.role_of(g, D).unwrap(), None);
    // Plain members cannot manage members or roles.
    assert!(matches!(
        e.add_members(B, id, &[D], T0),
        Err(StorageError::NotAdmin { .. })
    ));
    assert!(matches!(
        e.remove_members(B, id, &[C]),
        Err(StorageError::NotAdmin { .. })
    ));
    assert!(matches!(
        e.set_role(B, id, C, Role::Admin),
        Err(StorageError::NotOwner { .. })
    ));
    assert!(matches!(
        e.add_members(D, id, &[E], T0),
        Err(StorageError::NotAMember { .. })
    ));
    // Owner promotes B; admin B adds and removes plain members.
    e.set_role(A, id, B, Role::Admin).unwrap();
    let ch = e.add_members(B, id, &[D, E, D, C], T0).unwrap();
    assert_eq!(ch.changed, vec![D, E]);
    assert_eq!(ch.members.len(), 5);
    let ch = e.remove_members(B, id, &[E]).unwrap();
    assert_eq!(ch.changed, vec![E]);
    // Admins can't remove the owner or other admins, nor set roles.
    e.set_role(A, id, C, Role::Admin).unwrap();
    assert!(matches!(
        e.remove_members(B, id, &[C]),
        Err(StorageError::Protected { .. })
    ));
    assert!(matches!(
        e.remove_members(B, id, &[A]),
        Err(StorageError::Protected { .. })
    ));
    assert!(matches!(
        e.set_role(B, id, D, Role::Admin),
        Err(StorageError::NotOwner { .. })
    ));
    // The owner removes an admin, cannot leave, and transfers ownership.
    e.remove_members(A, id, &[C]).unwrap();
    assert_eq!(e.role_of(g, C).unwrap(), None);
    assert!(matches!(
        e.leave(A, id),
        Err(StorageError::Protected { .. })
    ));
    assert!(matches!(
        e.remove_members(A, id, &[A]),
        Err(StorageError::Protected { .. })
    ));
    let ch = e.set_role(A, id, D, Role::Owner).unwrap();
    assert_eq!(ch.changed, vec![D, A]);
    assert_eq!(e.role_of(g, D).unwrap(), Some(Role::Owner));
    assert_eq!(e.role_of(g, A).unwrap(), Some(Role::Admin));
    e.leave(A, id).unwrap();
    assert!(matches!(
        e.leave(A, id),
        Err(StorageError::NotAMember { .. })
    ));
    // A removed member can no longer send or read history.
    assert!(matches!(
        send(e, C, g, 1, T0),
        Err(StorageError::NotAMember { .. })
    ));
    assert!(matches!(
        e.history(C, g, u64::MAX, 10),
        Err(StorageError::NotAMember { .. })
    ));
    let mut members: Vec<UserId> = e.members(g).unwrap().iter().map(|m| m.user).collect();
    members.sort();
    assert_eq!(members, vec![B, D]);
    assert!(matches!(
        e.add_members(A, 4242, &[B], T0),
        Err(StorageError::NotFound(_))
    ));
    // Memberships and roles survive a reopen.
    let h = h.reopen();
    assert_eq!(h.engine().role_of(g, D).unwrap(), Some(Role::Owner));
    assert!(h.engine().conversations_of(A).unwrap().is_empty());
    let g2 = h.engine().create_group(B, "second", &[], T0).unwrap();
    assert_ne!(g2, g, "group ids are never reused");
}

/// Mutes: who may mute whom, what a mute refuses (and what not), and that it survives a
/// reopen, ends on its own, and goes with a removed member.
fn group_mute_rules<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let g = e.create_group(A, "g", &[B, C, D], T0).unwrap();
    let id = account_id(g);
    e.set_role(A, id, B, Role::Admin).unwrap();
    // Plain members mute nobody; an admin mutes plain members only; nobody the owner.
    assert!(matches!(
        e.mute(C, id, Some(D), T0 + 1000, T0),
        Err(StorageError::NotAdmin { .. })
    ));
    assert!(matches!(
        e.mute(B, id, Some(A), T0 + 1000, T0),
        Err(StorageError::Protected { .. })
    ));
    assert!(matches!(
        e.mute(A, id, Some(E), T0 + 1000, T0),
        Err(StorageError::NotAMember { .. })
    ));
    e.mute(B, id, Some(C), T0 + 1000, T0).unwrap();
    match send(e, C, g, 1, T0 + 10) {
        Err(StorageError::Muted { user, until_ms, .. }) => {
            assert_eq!((user, until_ms), (C, T0 + 1000));
        }
        other => panic!("a muted member sent: {other:?}"),
    }
    send(e, D, g, 1, T0 + 10).unwrap();
    // The whole group: plain members are refused, the owner and admins are not.
    e.mute(A, id, None, T0 + 2000, T0).unwrap();
    assert!(
        matches!(send(e, D, g, 2, T0 + 20), Err(StorageError::Muted { until_ms, .. }) if until_ms == T0 + 2000)
    );
    send(e, A, g, 1, T0 + 20).unwrap();
    send(e, B, g, 1, T0 + 20).unwrap();
    // Both persist.
    let h = h.reopen();
    let e = h.engine();
    assert!(
        matches!(send(e, C, g, 3, T0 + 30), Err(StorageError::Muted { until_ms, .. }) if until_ms == T0 + 2000)
    );
    // Unmuting the group leaves C's own mute; it ends on its own at its time.
    e.mute(B, id, None, 0, T0 + 40).unwrap();
    send(e, D, g, 4, T0 + 40).unwrap();
    assert!(matches!(
        send(e, C, g, 5, T0 + 40),
        Err(StorageError::Muted { .. })
    ));
    send(e, C, g, 6, T0 + 1000).unwrap();
    // A removed member's mute goes with them: added back, they may send.
    e.mute(A, id, Some(D), T0 + 1_000_000, T0 + 1000).unwrap();
    e.remove_members(A, id, &[D]).unwrap();
    e.add_members(A, id, &[D], T0 + 1000).unwrap();
    send(e, D, g, 7, T0 + 1001).unwrap();
}

/// Dissolving: owner only; afterwards the group is gone for every request, its members
/// no longer list it, a known device's sync skips it, and its id is never given again.
fn dissolving_a_group<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let g = e.create_group(A, "g", &[B, C], T0).unwrap();
    let id = account_id(g);
    let mut device = Device::new(B);
    send(e, A, g, 1, T0).unwrap();
    assert_eq!(device.sync_all(e, 10).len(), 1);
    send(e, C, g, 1, T0).unwrap();
    e.mute(A, id, Some(C), T0 + 10_000, T0).unwrap();
    assert!(matches!(
        e.dissolve(B, id),
        Err(StorageError::NotOwner { .. })
    ));
    assert!(matches!(
        e.dissolve(D, id),
        Err(StorageError::NotAMember { .. })
    ));
    let change = e.dissolve(A, id).unwrap();
    assert_eq!(change.changed, vec![A, B, C]);
    assert!(change.members.is_empty());
    let h = h.reopen();
    let e = h.engine();
    assert!(matches!(
        send(e, A, g, 2, T0),
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(e.members(g), Err(StorageError::NotFound(_))));
    assert!(matches!(
        e.history(B, g, u64::MAX, 10),
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(e.dissolve(A, id), Err(StorageError::NotFound(_))));
    assert!(matches!(
        e.add_members(A, id, &[D], T0),
        Err(StorageError::NotFound(_))
    ));
    for u in [A, B, C] {
        assert!(!e.conversations_of(u).unwrap().contains(&g), "{u:?}");
    }
    // B's device had an inbox entry for C's message: it leads nowhere now.
    let page = e
        .sync(&SyncRequest {
            user: B,
            inbox: device.inbox.clone(),
            cursors: device.cursors.iter().map(|(c, s)| (*c, *s)).collect(),
            limit: 10,
            now_ms: T0,
        })
        .unwrap();
    assert!(page.messages.is_empty(), "{page:?}");
    assert!(page.conversations.iter().all(|s| s.key != g), "{page:?}");
    // A new device of B sees nothing of it either; a new group gets a new id.
    assert!(Device::new(B).sync_all(e, 10).is_empty());
    let next = e.create_group(A, "again", &[B], T0).unwrap();
    assert_ne!(next, g);
}

/// Recall: who may, within which window, and that history and sync show the tombstone
/// in the message's place, never its content, also after a reopen.
fn recall_rules_and_tombstones<H: Harness>() {
    const WINDOW: u64 = 120_000;
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let single = ConversationKey::single(A, B);
    let g = e.create_group(A, "g", &[B, C], T0).unwrap();
    let id = account_id(g);
    e.set_role(A, id, B, Role::Admin).unwrap();
    send(e, A, single, 1, T0).unwrap();
    send(e, B, single, 1, T0).unwrap();
    send(e, C, g, 1, T0).unwrap();
    send(e, C, g, 2, T0).unwrap();
    // 1:1: only the sender, only within the window; the peer cannot.
    assert!(matches!(
        e.recall(B, single, 1, WINDOW, T0 + 10),
        Err(StorageError::NotAdmin { .. })
    ));
    assert!(matches!(
        e.recall(C, single, 1, WINDOW, T0 + 10),
        Err(StorageError::NotAMember { .. })
    ));
    assert!(matches!(
        e.recall(A, single, 1, WINDOW, T0 + WINDOW + 1),
        Err(StorageError::TooLate { .. })
    ));
    assert!(matches!(
        e.recall(A, single, 9, WINDOW, T0),
        Err(StorageError::NoSuchMessage { seq: 9, .. })
    ));
    let r = e.recall(A, single, 1, WINDOW, T0 + 10).unwrap();
    assert_eq!(
        (r.seq, r.sender, r.recall.by, r.recall.at_ms),
        (1, A, A, T0 + 10)
    );
    assert_eq!(r.recipients, vec![A, B]);
    // Again: the first recall, not an error.
    assert_eq!(
        e.recall(A, single, 1, WINDOW, T0 + 20)
            .unwrap()
            .recall
            .at_ms,
        T0 + 10
    );
    // Groups: a plain member other than the sender cannot; an admin can, any time.
    assert!(matches!(
        e.recall(A, g, 1, WINDOW, T0).map(|r| r.recall.by),
        Ok(by) if by == A
    ));
    assert!(matches!(
        e.recall(C, g, 2, WINDOW, T0 + WINDOW + 1),
        Err(StorageError::TooLate { .. })
    ));
    let late = e.recall(B, g, 2, WINDOW, T0 + 10 * WINDOW).unwrap();
    assert_eq!(late.recall.by, B);
    assert_eq!(late.recipients, vec![A, B, C]);

    let h = h.reopen();
    let e = h.engine();
    // History: the seqs stay, the content is gone, the recall is said.
    let page = e.history(B, single, u64::MAX, 10).unwrap();
    let seqs: Vec<(u64, bool, usize)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.recalled.is_some(), m.payload.len()))
        .collect();
    assert_eq!(
        seqs,
        [(1, true, 0), (2, false, page.messages[1].payload.len())]
    );
    assert!(!page.messages[1].payload.is_empty());
    assert_eq!(page.messages[0].sender, A);
    // A new device's sync shows the tombstones too.
    let mut got = std::collections::BTreeMap::new();
    let mut device = Device::new(C);
    for (c, seq, payload) in device.sync_all(e, 100) {
        got.insert((c, seq), payload);
    }
    assert_eq!(got.get(&(g, 1)).map(|p| p.len()), Some(0));
    assert_eq!(got.get(&(g, 2)).map(|p| p.len()), Some(0));
}

/// Edits: only the sender, within the window, never a recalled message; history and sync
/// return the latest version with its edit time, also after a reopen.
fn edit_rules_and_latest_versions<H: Harness>() {
    const WINDOW: u64 = 60_000;
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let g = e.create_group(A, "g", &[B], T0).unwrap();
    send(e, B, g, 1, T0).unwrap();
    send(e, B, g, 2, T0).unwrap();
    let new = || Bytes::from_static(b"edited");
    // Not the sender (not even the owner), not past the window, not a missing seq.
    assert!(matches!(
        e.edit(A, g, 1, new(), WINDOW, T0 + 1),
        Err(StorageError::NotAdmin { .. })
    ));
    assert!(matches!(
        e.edit(B, g, 1, new(), WINDOW, T0 + WINDOW + 1),
        Err(StorageError::TooLate { action: "edit", .. })
    ));
    assert!(matches!(
        e.edit(B, g, 9, new(), WINDOW, T0 + 1),
        Err(StorageError::NoSuchMessage { .. })
    ));
    let out = e.edit(B, g, 1, new(), WINDOW, T0 + 5).unwrap();
    assert_eq!(out.message.edited_at_ms, Some(T0 + 5));
    assert_eq!(&out.message.payload[..], b"edited");
    assert_eq!(out.message.server_time_ms, T0);
    assert_eq!(out.recipients, vec![A, B]);
    // A muted member cannot edit either (no way around the mute).
    e.mute(A, account_id(g), Some(B), T0 + 100, T0 + 5).unwrap();
    assert!(matches!(
        e.edit(B, g, 1, new(), WINDOW, T0 + 6),
        Err(StorageError::Muted { .. })
    ));
    e.mute(A, account_id(g), Some(B), 0, T0 + 6).unwrap();
    // A recalled message cannot be edited.
    e.recall(B, g, 2, WINDOW, T0 + 6).unwrap();
    assert!(matches!(
        e.edit(B, g, 2, new(), WINDOW, T0 + 7),
        Err(StorageError::NoSuchMessage { .. })
    ));
    let h = h.reopen();
    let e = h.engine();
    let page = e.history(A, g, u64::MAX, 10).unwrap();
    assert_eq!(&page.messages[0].payload[..], b"edited");
    assert_eq!(page.messages[0].edited_at_ms, Some(T0 + 5));
    assert_eq!(page.messages[1].edited_at_ms, None);
    let got = Device::new(A).sync_all(e, 10);
    assert_eq!(got[0], (g, 1, new()));
}

/// Read counts: the participants other than the sender at or past the seq, of how many.
fn read_counts<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let g = e.create_group(A, "g", &[B, C, D], T0).unwrap();
    send(e, A, g, 1, T0).unwrap();
    send(e, A, g, 2, T0).unwrap();
    assert_eq!(e.read_count(A, g, 2).unwrap(), (0, 3));
    e.mark_read(B, g, 2).unwrap();
    e.mark_read(C, g, 1).unwrap();
    assert_eq!(e.read_count(A, g, 1).unwrap(), (2, 3));
    assert_eq!(
        e.read_count(B, g, 2).unwrap(),
        (1, 3),
        "any participant may ask"
    );
    assert!(matches!(
        e.read_count(E, g, 2),
        Err(StorageError::NotAMember { .. })
    ));
    assert!(matches!(
        e.read_count(A, g, 9),
        Err(StorageError::NoSuchMessage { .. })
    ));
    let single = ConversationKey::single(A, B);
    send(e, B, single, 1, T0).unwrap();
    assert_eq!(e.read_count(B, single, 1).unwrap(), (0, 1));
    e.mark_read(A, single, 1).unwrap();
    assert_eq!(e.read_count(B, single, 1).unwrap(), (1, 1));
}

fn public_account_follow_rules<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let p = e.create_public_account(A, "news", T0).unwrap();
    let id = account_id(p);
    let ch = e.follow(B, id, T0).unwrap();
    assert_eq!(ch.changed, vec![B]);
    assert!(e.follow(B, id, T0).unwrap().changed.is_empty());
    assert!(matches!(
        e.unfollow(A, id),
        Err(StorageError::Protected { .. })
    ));
    assert!(matches!(
        e.unfollow(C, id),
        Err(StorageError::NotAMember { .. })
    ));
    e.unfollow(B, id).unwrap();
    assert_eq!(e.role_of(p, B).unwrap(), None);
    assert!(matches!(
        e.follow(B, 999, T0),
        Err(StorageError::NotFound(_))
    ));
}

/// Run the same scenario under one diffusion mode; returns what each device received.
fn diffusion_scenario<H: Harness>(mode: DiffusionMode) -> Vec<Vec<(ConversationKey, u64, Bytes)>> {
    let h = H::open(config(mode));
    let e = h.engine();
    // A and B active, C long inactive, D and E never seen.
    e.touch_activity(A, T0).unwrap();
    e.touch_activity(B, T0).unwrap();
    e.touch_activity(C, T0 - 30 * petrel_storage::config::DAY_MS)
        .unwrap();
    let ab = ConversationKey::single(A, B);
    let ac = ConversationKey::single(A, C);
    let small = e.create_group(A, "small", &[B, C], T0).unwrap(); // 3 members: not large
    let large = e.create_group(A, "large", &[B, C, D, E], T0).unwrap(); // 5 > threshold 3
    let p = e.create_public_account(B, "news", T0).unwrap();
    for u in [A, C, D] {
        e.follow(u, account_id(p), T0).unwrap();
    }
    let mut devices: Vec<Device> = [A, B, C, D, E, A].into_iter().map(Device::new).collect();
    let mut received = vec![Vec::new(); devices.len()];
    let mut cmid = 0;
    for round in 0..4u64 {
        for i in 0..7u64 {
            let now = T0 + round * 100 + i;
            cmid += 1;
            send(e, A, ab, cmid, now).unwrap();
            cmid += 1;
            send(e, if i % 2 == 0 { B } else { A }, ab, cmid, now).unwrap();
            cmid += 1;
            send(e, C, ac, cmid, now).unwrap();
            cmid += 1;
            send(e, C, small, cmid, now).unwrap();
            cmid += 1;
            send(e, if i % 2 == 0 { D } else { A }, large, cmid, now).unwrap();
            cmid += 1;
            send(e, B, p, cmid, now).unwrap();
        }
        if round == 1 {
            // A member joins a group that already has history.
            e.add_members(A, account_id(small), &[D], T0).unwrap();
        }
        // Devices sync at different moments (device 5 only at the end).
        for (d, got) in devices.iter_mut().zip(received.iter_mut()).take(5) {
            if (round + d.user.0) % 2 == 0 {
                got.extend(d.sync_all(e, 4));
            }
        }
    }
    for (d, got) in devices.iter_mut().zip(received.iter_mut()) {
        got.extend(d.sync_all(e, 5));
        // Nothing new: a second sync is empty.
        assert!(d.sync_all(e, 5).is_empty());
    }
    for got in &mut received {
        got.sort();
    }
    received
}

fn diffusion_modes_look_identical_to_readers<H: Harness>() {
    let read = diffusion_scenario::<H>(DiffusionMode::Read);
    let write = diffusion_scenario::<H>(DiffusionMode::Write);
    let hybrid = diffusion_scenario::<H>(DiffusionMode::Hybrid);
    assert_eq!(read, write);
    assert_eq!(read, hybrid);
    // And it is the complete set: per user, every message of every conversation joined.
    let counts: Vec<usize> = read.iter().map(Vec::len).collect();
    // A: ab 56 + ac 28 + small 28 + large 28 + p 28; B: ab + small + large + p;
    // C: ac + small + large + p; D: small + large + p; E: large; second A device = A.
    assert_eq!(counts, vec![168, 140, 112, 84, 28, 168]);
}

fn new_device_gets_everything_with_paging<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    let g = e.create_group(B, "g", &[A], T0).unwrap();
    for i in 0..9 {
        send(e, B, ab, i, T0).unwrap();
        send(e, B, g, 100 + i, T0).unwrap();
    }
    let mut dev = Device::new(A);
    let got = dev.sync_all(e, 4);
    assert_eq!(got.len(), 18);
    assert!(dev.pages >= 5, "paged in pages of at most 4");
    assert!(!dev.inbox.is_new_device());
    assert!(dev.sync_all(e, 4).is_empty());
    send(e, B, g, 500, T0).unwrap();
    let got = dev.sync_all(e, 4);
    assert_eq!(
        got.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
        vec![(g, 10)]
    );
    // A user with no conversations gets an empty page.
    let mut lonely = Device::new(E);
    assert!(lonely.sync_all(e, 10).is_empty());
}

/// Replies and mentions: the reply must name an earlier message; mentions keep members
/// other than the sender (sorted, once each), are stored with the message (an edit keeps
/// them, a recall drops them), and count per mentioned member until they read past them
/// — also in a group whose members are muted, where only the owner can post.
fn replies_and_mentions<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let g = e.create_group(A, "g", &[B, C], T0).unwrap();
    let with_refs = |cmid: u64, reply_to: u64, mentions: &[UserId]| AppendRequest {
        sender: A,
        sender_device: "dev".into(),
        client_msg_id: cmid,
        conversation: g,
        payload: Bytes::from(format!("m{cmid}")),
        now_ms: T0,
        refs: Refs {
            reply_to,
            mentions: mentions.to_vec(),
        },
    };
    assert!(matches!(
        e.append(with_refs(1, 1, &[])),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        e.append(with_refs(1, 0, &[B; 101])),
        Err(StorageError::Invalid(_))
    ));
    let first = e
        .append(with_refs(1, 0, &[C, A, UserId(99), B, C]))
        .unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(
        first.refs.mentions,
        vec![B, C],
        "members only, not the sender, once each"
    );
    // The whole group muted: members cannot post, the owner still can, and mentions count.
    e.mute(A, account_id(g), None, T0 + 3_600_000, T0).unwrap();
    let second = e.append(with_refs(2, 1, &[B])).unwrap();
    assert_eq!((second.seq, second.refs.reply_to), (2, 1));
    let third = e.append(with_refs(3, 0, &[])).unwrap();
    assert!(third.refs.is_empty());
    let state_of = |user: UserId| {
        let page = e
            .sync(&SyncRequest {
                user,
                inbox: InboxCursor::default(),
                cursors: vec![],
                limit: 100,
                now_ms: T0,
            })
            .unwrap();
        let state = *page.conversations.iter().find(|s| s.key == g).unwrap();
        (state, page.messages)
    };
    let (b, messages) = state_of(B);
    assert_eq!((b.read_seq, b.unread_mentions), (0, 2));
    assert_eq!(state_of(C).0.unread_mentions, 1);
    assert_eq!(state_of(A).0.unread_mentions, 0);
    let refs: Vec<(u64, u64, Vec<UserId>)> = messages
        .iter()
        .map(|m| (m.seq, m.refs.reply_to, m.refs.mentions.clone()))
        .collect();
    assert_eq!(
        refs,
        vec![(1, 0, vec![B, C]), (2, 1, vec![B]), (3, 0, vec![])]
    );
    // Reading past a mention clears it (on every device: the count lives on the server).
    assert_eq!(e.mark_read(B, g, 1).unwrap().unread_mentions, 1);
    assert_eq!(state_of(B).0.unread_mentions, 1);
    assert_eq!(e.mark_read(B, g, 3).unwrap().unread_mentions, 0);
    // An edit keeps what the message quoted and named; a recall erases both.
    e.edit(A, g, 2, Bytes::from_static(b"edited"), u64::MAX / 2, T0 + 1)
        .unwrap();
    let history = e.history(A, g, u64::MAX, 10).unwrap().messages;
    let two = history.iter().find(|m| m.seq == 2).unwrap();
    assert_eq!((two.refs.reply_to, two.refs.mentions.clone()), (1, vec![B]));
    e.recall(A, g, 1, u64::MAX / 2, T0 + 2).unwrap();
    let history = e.history(A, g, u64::MAX, 10).unwrap().messages;
    assert!(history.iter().find(|m| m.seq == 1).unwrap().refs.is_empty());
    // The recall took Carol's unread mention with it.
    assert_eq!(state_of(C).0.unread_mentions, 0);
    // Removing a member forgets their mentions: none count again if they rejoin.
    e.append(with_refs(4, 0, &[B])).unwrap();
    assert_eq!(state_of(B).0.unread_mentions, 1);
    e.remove_members(A, account_id(g), &[B]).unwrap();
    e.add_members(A, account_id(g), &[B], T0).unwrap();
    assert_eq!(state_of(B).0.unread_mentions, 0);
    // Mentions survive a reopen.
    e.append(with_refs(5, 0, &[C])).unwrap();
    let h = h.reopen();
    let page = h
        .engine()
        .sync(&SyncRequest {
            user: C,
            inbox: InboxCursor::default(),
            cursors: vec![],
            limit: 100,
            now_ms: T0,
        })
        .unwrap();
    assert_eq!(page.conversations[0].unread_mentions, 1);
}

fn sync_reports_conversation_state_and_unread<H: Harness>() {
    let h = H::open(config(DiffusionMode::Write));
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    for i in 0..5 {
        send(e, A, ab, i, T0).unwrap();
    }
    let st = e.mark_read(B, ab, 3).unwrap();
    assert_eq!((st.last_seq, st.read_seq, st.unread()), (5, 3, 2));
    // Never backwards, clamped to the last seq.
    assert_eq!(e.mark_read(B, ab, 1).unwrap().read_seq, 3);
    assert_eq!(e.mark_read(B, ab, 99).unwrap().read_seq, 5);
    assert!(matches!(
        e.mark_read(C, ab, 1),
        Err(StorageError::NotAMember { .. })
    ));
    let page = e
        .sync(&SyncRequest {
            user: B,
            inbox: InboxCursor::default(),
            cursors: vec![(ab, 2)],
            limit: 100,
            now_ms: T0,
        })
        .unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(page.conversations[0].read_seq, 5);
    assert_eq!(page.conversations[0].last_seq, 5);
    // Read positions survive a reopen.
    let h = h.reopen();
    assert_eq!(h.engine().mark_read(B, ab, 0).unwrap().read_seq, 5);
}

fn history_pages_backwards<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    for i in 0..10 {
        send(e, A, ab, i, T0).unwrap();
    }
    let page = e.history(B, ab, u64::MAX, 4).unwrap();
    assert_eq!(page.first_seq, 1);
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    let page = e.history(B, ab, 7, 4).unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    let page = e.history(B, ab, 3, 4).unwrap();
    assert_eq!(page.first_seq, 1);
    let page = page.messages;
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(e.history(B, ab, 1, 4).unwrap().messages.is_empty());
    assert_eq!(page[0].sender, A);
    assert_eq!(page[0].sender_device, "dev");
    assert_eq!(page[0].payload, Bytes::from(format!("{ab:?}/0")));
    assert!(matches!(
        e.history(C, ab, u64::MAX, 4),
        Err(StorageError::NotAMember { .. })
    ));
}

fn removed_member_gets_no_new_messages<H: Harness>() {
    for mode in [
        DiffusionMode::Read,
        DiffusionMode::Write,
        DiffusionMode::Hybrid,
    ] {
        let h = H::open(config(mode));
        let e = h.engine();
        let g = e.create_group(A, "g", &[B], T0).unwrap();
        let mut dev = Device::new(B);
        send(e, A, g, 1, T0).unwrap();
        assert_eq!(dev.sync_all(e, 10).len(), 1);
        send(e, A, g, 2, T0).unwrap();
        e.remove_members(A, account_id(g), &[B]).unwrap();
        send(e, A, g, 3, T0).unwrap();
        let got = dev.sync_all(e, 10);
        assert!(got.iter().all(|m| m.1 < 3), "{mode:?}: got {got:?}");
    }
}

fn revoked_tokens_until_expiry<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    e.revoke_token(TokenId([1; 16]), T0 + 10).unwrap();
    e.revoke_token(TokenId([2; 16]), T0 + 20).unwrap();
    let mut all = e.load_revoked(T0).unwrap();
    all.sort_by_key(|t| t.token);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].token, TokenId([1; 16]));
    let h = h.reopen();
    let later = h.engine().load_revoked(T0 + 15).unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].token, TokenId([2; 16]));
    assert!(h.engine().load_revoked(T0 + 20).unwrap().is_empty());
}

fn activity_is_recorded<H: Harness>() {
    let h = H::open(config(DiffusionMode::Hybrid));
    let e = h.engine();
    assert_eq!(e.last_active(A).unwrap(), None);
    e.touch_activity(A, T0).unwrap();
    e.touch_activity(A, T0 - 5).unwrap(); // never moves backwards
    assert_eq!(e.last_active(A).unwrap(), Some(T0));
    let h = h.reopen();
    assert_eq!(h.engine().last_active(A).unwrap(), Some(T0));
}

fn execute_dispatches_and_batches<H: Harness>() {
    let cfg = StorageConfig {
        sync: SyncMode::Batch,
        ..config(DiffusionMode::Hybrid)
    };
    let h = H::open(cfg);
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    let append = |cmid| {
        Request::Append(AppendRequest {
            sender: A,
            sender_device: "d".into(),
            client_msg_id: cmid,
            conversation: ab,
            payload: Bytes::from_static(b"x"),
            now_ms: T0,
            refs: Default::default(),
        })
    };
    let Reply::Appended(out) = e.execute(append(1)).unwrap() else {
        panic!("wrong reply kind")
    };
    assert_eq!(out.seq, 1);
    let replies = e.execute_batch(vec![
        append(2),
        append(1),
        Request::History {
            user: C,
            conversation: ab,
            before_seq: u64::MAX,
            limit: 10,
        },
        Request::Members { conversation: ab },
        append(3),
    ]);
    assert_eq!(replies.len(), 5);
    assert!(matches!(&replies[0], Ok(Reply::Appended(o)) if o.seq == 2 && !o.duplicate));
    assert!(matches!(&replies[1], Ok(Reply::Appended(o)) if o.seq == 1 && o.duplicate));
    assert!(matches!(&replies[2], Err(StorageError::NotAMember { .. })));
    assert!(matches!(&replies[3], Ok(Reply::Members(m)) if m.len() == 2));
    assert!(matches!(&replies[4], Ok(Reply::Appended(o)) if o.seq == 3));
    let Reply::Conversations(cs) = e.execute(Request::ConversationsOf { user: B }).unwrap() else {
        panic!("wrong reply kind")
    };
    assert_eq!(cs, vec![ab]);
}

fn append_req(sender: UserId, conv: ConversationKey, cmid: u64) -> Request {
    Request::Append(AppendRequest {
        sender,
        sender_device: "dev".into(),
        client_msg_id: cmid,
        conversation: conv,
        payload: Bytes::from(format!("{conv:?}/{cmid}")),
        now_ms: T0,
        refs: Default::default(),
    })
}

fn appended(r: &Result<Reply, StorageError>) -> &AppendOutcome {
    match r {
        Ok(Reply::Appended(o)) => o,
        other => panic!("expected an append, got {other:?}"),
    }
}

fn history_seqs(e: &impl Engine, user: UserId, c: ConversationKey) -> Vec<(u64, Bytes)> {
    e.history(user, c, u64::MAX, 1000)
        .unwrap()
        .messages
        .into_iter()
        .map(|m| (m.seq, m.payload))
        .collect()
}

/// The appends of one group are one backend write, and they see each other: two
/// appends to one conversation get consecutive seqs, a refused request in the middle
/// takes no seq and stores nothing.
fn group_appends_are_one_write_in_order<H: Harness>() {
    let cfg = StorageConfig {
        sync: SyncMode::Batch,
        ..config(DiffusionMode::Hybrid)
    };
    let (e, _dir) = flaky::<H>(cfg);
    let ab = ConversationKey::single(A, B);
    let g = e.create_group(A, "g", &[B], T0).unwrap();
    e.touch_activity(B, T0).unwrap();
    let mut device = Device::new(B);
    device.sync_all(&*e, 100);
    let before = e.kv().writes.load(Ordering::SeqCst);
    let replies = e.execute_batch(vec![
        append_req(A, ab, 1),
        append_req(B, ab, 2),
        append_req(A, g, 3),
        append_req(C, ab, 4), // not a participant: refused, takes no seq
        append_req(A, ab, 5),
        append_req(B, g, 6),
    ]);
    assert_eq!(
        e.kv().writes.load(Ordering::SeqCst) - before,
        1,
        "one backend write for the whole group"
    );
    let seqs: Vec<Option<u64>> = replies
        .iter()
        .map(|r| r.as_ref().ok().map(|_| appended(r).seq))
        .collect();
    assert_eq!(
        seqs,
        vec![Some(1), Some(2), Some(1), None, Some(3), Some(2)]
    );
    assert!(matches!(replies[3], Err(StorageError::NotAMember { .. })));
    let payload = |c: ConversationKey, id: u64| Bytes::from(format!("{c:?}/{id}"));
    assert_eq!(
        history_seqs(&*e, A, ab),
        vec![
            (1, payload(ab, 1)),
            (2, payload(ab, 2)),
            (3, payload(ab, 5))
        ]
    );
    assert_eq!(
        history_seqs(&*e, B, g),
        vec![(1, payload(g, 3)), (2, payload(g, 6))]
    );
    // The recipient's inbox saw the group's writes in order too.
    let got: Vec<(ConversationKey, u64)> = device
        .sync_all(&*e, 100)
        .into_iter()
        .map(|(c, s, _)| (c, s))
        .collect();
    let mut want = vec![(ab, 1), (ab, 2), (ab, 3), (g, 1), (g, 2)];
    let mut sorted = got.clone();
    sorted.sort();
    want.sort();
    assert_eq!(sorted, want);
    // A read inside a group sees the appends before it.
    let replies = e.execute_batch(vec![
        append_req(A, ab, 7),
        Request::History {
            user: B,
            conversation: ab,
            before_seq: u64::MAX,
            limit: 10,
        },
        append_req(A, ab, 8),
    ]);
    assert!(matches!(&replies[1], Ok(Reply::History(p)) if p.messages.len() == 4));
    assert_eq!(appended(&replies[2]).seq, 5);
}

/// A client id retried inside one group is deduplicated against the group's own
/// unwritten append; the same id in another conversation is another message; both
/// survive a reopen.
fn group_internal_dedup<H: Harness>() {
    let cfg = StorageConfig {
        sync: SyncMode::Batch,
        ..config(DiffusionMode::Hybrid)
    };
    let h = H::open(cfg);
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    let ac = ConversationKey::single(A, C);
    let replies = e.execute_batch(vec![
        append_req(A, ab, 7),
        append_req(A, ab, 7),
        append_req(A, ac, 7),
        append_req(A, ab, 8),
        append_req(A, ac, 7),
    ]);
    let first = appended(&replies[0]);
    assert!(!first.duplicate);
    let retry = appended(&replies[1]);
    assert!(retry.duplicate && retry.recipients.is_empty());
    assert_eq!((retry.conversation, retry.seq), (ab, 1));
    assert_eq!(retry.server_time_ms, first.server_time_ms);
    let other = appended(&replies[2]);
    assert!(
        !other.duplicate,
        "same id, other conversation: a new message"
    );
    assert_eq!((other.conversation, other.seq), (ac, 1));
    assert_eq!(appended(&replies[3]).seq, 2);
    let other_retry = appended(&replies[4]);
    assert!(other_retry.duplicate);
    assert_eq!((other_retry.conversation, other_retry.seq), (ac, 1));
    assert_eq!(history_seqs(e, A, ab).len(), 2);
    assert_eq!(history_seqs(e, A, ac).len(), 1);
    // After a reopen the filter is empty and the store answers.
    let h = h.reopen();
    let e = h.engine();
    let again = send(e, A, ab, 7, T0 + 1).unwrap();
    assert!(again.duplicate);
    assert_eq!((again.conversation, again.seq), (ab, 1));
    let again = send(e, A, ac, 7, T0 + 1).unwrap();
    assert!(again.duplicate);
    assert_eq!((again.conversation, again.seq), (ac, 1));
    let fresh = send(e, A, ab, 9, T0 + 1).unwrap();
    assert_eq!((fresh.seq, fresh.duplicate), (3, false));
}

/// A group whose batch write fails: every reply is an error (an in-group duplicate
/// too), nothing is stored, and the next group continues as if it never happened.
fn a_failed_group_write_stores_nothing<H: Harness>() {
    let cfg = StorageConfig {
        sync: SyncMode::Batch,
        ..config(DiffusionMode::Write)
    };
    let (e, _dir) = flaky::<H>(cfg);
    let ab = ConversationKey::single(A, B);
    assert_eq!(send(&*e, A, ab, 1, T0).unwrap().seq, 1);
    e.kv().fail_writes.store(true, Ordering::SeqCst);
    let replies = e.execute_batch(vec![
        append_req(A, ab, 2),
        append_req(B, ab, 3),
        append_req(A, ab, 2),
    ]);
    assert!(replies.iter().all(Result::is_err), "{replies:?}");
    e.kv().fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(history_seqs(&*e, A, ab).len(), 1);
    let replies = e.execute_batch(vec![append_req(A, ab, 2), append_req(B, ab, 3)]);
    let seqs: Vec<(u64, bool)> = replies
        .iter()
        .map(|r| (appended(r).seq, appended(r).duplicate))
        .collect();
    assert_eq!(seqs, vec![(2, false), (3, false)], "no seq was burnt");
    let mut device = Device::new(B);
    let got: Vec<u64> = device.sync_all(&*e, 100).iter().map(|m| m.1).collect();
    assert_eq!(got, vec![1, 2, 3]);
}

/// Through the committer: an fsync error answers every write of its group with an
/// error (never an ack), and every later write is refused until a restart.
fn fsync_error_is_never_an_ack<H: Harness>() {
    let cfg = StorageConfig {
        sync: SyncMode::Batch,
        ..config(DiffusionMode::Hybrid)
    };
    let (e, _dir) = flaky::<H>(cfg);
    let ab = ConversationKey::single(A, B);
    let mut committer =
        Committer::start(Arc::clone(&e), Some(Default::default()), Arc::new(|| {})).unwrap();
    let take = |c: &mut Committer<FlakyEngine<H>, u32>, want: usize| {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < want && Instant::now() < deadline {
            c.take_ready(|t, r| out.push((t, r)));
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    };
    committer.commit(&mut vec![(1, append_req(A, ab, 1))]);
    let ok = take(&mut committer, 1);
    assert_eq!(appended(&ok[0].1).seq, 1);

    e.kv().fail_syncs.store(true, Ordering::SeqCst);
    committer.commit(&mut vec![
        (2, append_req(A, ab, 2)),
        (3, append_req(B, ab, 3)),
        (4, append_req(A, ab, 1)),
    ]);
    let failed = take(&mut committer, 3);
    assert_eq!(failed.len(), 3);
    for (tag, reply) in &failed {
        let err = reply.as_ref().expect_err("no ack after a failed fsync");
        assert!(err.to_string().contains("not durable"), "{tag}: {err}");
    }
    assert!(committer.failure().is_some());

    e.kv().fail_syncs.store(false, Ordering::SeqCst);
    committer.commit(&mut vec![
        (5, append_req(A, ab, 5)),
        (6, Request::Members { conversation: ab }),
    ]);
    let later = take(&mut committer, 2);
    let refused = later[0].1.as_ref().expect_err("writes stay refused");
    assert!(refused.to_string().contains("restarted"), "{refused}");
    assert!(
        matches!(later[1].1, Ok(Reply::Members(_))),
        "reads still answer"
    );
    committer.shutdown(|_, _| {});
}

/// Runs retention steps until a pass completes; returns the summed report and the
/// number of steps.
fn trim_pass(e: &impl Engine, now_ms: u64) -> (TrimReport, usize) {
    let mut total = TrimReport::default();
    for step in 1..=10_000 {
        let r = e.trim(now_ms).expect("trim");
        total.messages += r.messages;
        total.inbox_entries += r.inbox_entries;
        if r.pass_complete {
            return (total, step);
        }
    }
    panic!("a retention pass never completed");
}

/// Messages past their kind's retention are deleted (each conversation keeps its newest),
/// readers are told where history now starts, and seqs are never reused — also after a
/// reopen, which recovers the last seq from what is left.
fn retention_trims_old_messages<H: Harness>() {
    const DAY: u64 = 24 * 60 * 60 * 1000;
    let cfg = StorageConfig {
        retention: Retention {
            single_ms: Some(DAY),
            group_ms: None,
            public_ms: Some(DAY),
        },
        ..config(DiffusionMode::Hybrid)
    };
    let h = H::open(cfg);
    let e = h.engine();
    let (ab, ac) = (ConversationKey::single(A, B), ConversationKey::single(A, C));
    let g = e.create_group(A, "g", &[B, C], T0).unwrap();
    for i in 0..10 {
        send(e, A, ab, i, T0).unwrap();
        send(e, A, g, i, T0).unwrap();
    }
    for i in 10..15 {
        send(e, B, ab, i, T0 + 2 * DAY).unwrap();
    }
    for i in 0..3 {
        send(e, A, ac, i, T0).unwrap();
    }
    let (report, _) = trim_pass(e, T0 + 2 * DAY + 1);
    assert_eq!(
        report.messages,
        10 + 2,
        "ab's 10 old ones, ac's all but its newest"
    );
    let page = e.history(B, ab, u64::MAX, 100).unwrap();
    assert_eq!(page.first_seq, 11);
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (11..=15).collect::<Vec<_>>()
    );
    let older = e.history(B, ab, 11, 4).unwrap();
    assert!(older.messages.is_empty());
    assert_eq!(older.first_seq, 11, "history before 11 is gone");
    assert_eq!(e.history(B, g, u64::MAX, 100).unwrap().messages.len(), 10);
    assert_eq!(
        history_seqs(e, C, ac)
            .iter()
            .map(|m| m.0)
            .collect::<Vec<_>>(),
        vec![3]
    );
    // A new device gets what is left and the state saying where each timeline starts.
    let mut b = Device::new(B);
    let got = b.sync_all(e, 100);
    assert_eq!(got.iter().filter(|m| m.0 == ab).count(), 5);
    assert_eq!(got.iter().filter(|m| m.0 == g).count(), 10);
    // A second pass finds nothing more to do.
    assert_eq!(trim_pass(e, T0 + 2 * DAY + 2).0, TrimReport::default());
    let h = h.reopen();
    let e = h.engine();
    assert_eq!(
        send(e, A, ac, 99, T0 + 3 * DAY).unwrap().seq,
        4,
        "no seq reused"
    );
    assert_eq!(send(e, A, ab, 99, T0 + 3 * DAY).unwrap().seq, 16);
}

/// Inbox entries beyond the per-user cap are trimmed; a device whose inbox cursor fell
/// below what is kept is resynced from its per-conversation cursors and still gets every
/// message exactly once. One partition: one inbox sequence per user.
fn inbox_trimming_falls_back_to_a_full_resync<H: Harness>() {
    let cfg = StorageConfig {
        inbox_max_entries: 3,
        inbox_retention_ms: None,
        partitions: 1,
        ..config(DiffusionMode::Write)
    };
    let h = H::open(cfg);
    let e = h.engine();
    let (ab, bc) = (ConversationKey::single(A, B), ConversationKey::single(B, C));
    send(e, A, ab, 0, T0).unwrap();
    let mut behind = Device::new(B);
    assert_eq!(behind.sync_all(e, 100).len(), 1);
    for i in 1..=10 {
        send(e, A, ab, i, T0).unwrap();
    }
    for i in 0..2 {
        send(e, C, bc, i, T0).unwrap();
    }
    let mut current = Device::new(B);
    assert_eq!(current.sync_all(e, 100).len(), 13);
    // B's inbox held 13 entries; 3 stay. A's held 11 (ab only) and C's 2.
    let (report, _) = trim_pass(e, T0);
    assert_eq!(report.inbox_entries, (13 - 3) + (11 - 3));
    assert_eq!(report.messages, 0, "no message retention configured");
    let got = behind.sync_all(e, 4);
    assert_eq!(got.iter().filter(|m| m.0 == ab).count(), 10, "ab 2..=11");
    assert_eq!(got.iter().filter(|m| m.0 == bc).count(), 2);
    // New appends after the trim continue the inbox, for old and new devices alike.
    send(e, A, ab, 50, T0).unwrap();
    assert_eq!(behind.sync_all(e, 100).len(), 1);
    assert_eq!(current.sync_all(e, 100).len(), 1);
    assert_eq!(Device::new(B).sync_all(e, 100).len(), 14);
}

/// Inbox entries older than the inbox retention go (the newest stays), and a step never
/// examines more than its key budget: a pass over many users takes many steps. One
/// partition: one inbox sequence per user.
fn inbox_retention_by_age_in_bounded_steps<H: Harness>() {
    const DAY: u64 = 24 * 60 * 60 * 1000;
    let cfg = StorageConfig {
        inbox_retention_ms: Some(DAY),
        trim_step_keys: 8,
        partitions: 1,
        ..config(DiffusionMode::Write)
    };
    let h = H::open(cfg);
    let e = h.engine();
    for peer in 100..120u64 {
        for i in 0..3 {
            send(e, A, ConversationKey::single(A, UserId(peer)), i, T0).unwrap();
        }
    }
    send(
        e,
        A,
        ConversationKey::single(A, UserId(100)),
        9,
        T0 + 2 * DAY,
    )
    .unwrap();
    let (report, steps) = trim_pass(e, T0 + 2 * DAY);
    // A: 61 entries, all but the young newest go; each peer: 3 old, the newest stays
    // (peer 100's newest is young).
    assert_eq!(report.inbox_entries, 60 + 19 * 2 + 3);
    assert!(
        steps > 5,
        "a pass over 21 inboxes with 8 keys a step took {steps} steps"
    );
    let mut a = Device::new(A);
    assert_eq!(
        a.sync_all(e, 1000).len(),
        61,
        "messages themselves are kept"
    );
}

/// With partitions, a user's inbox is one sequence per partition and the cap applies to
/// each: a device whose position fell below what one partition keeps is resynced in full
/// and still gets every message exactly once; new appends continue every sequence.
fn partitioned_inbox_trimming_caps_each_partition<H: Harness>() {
    let cfg = StorageConfig {
        inbox_max_entries: 3,
        inbox_retention_ms: None,
        partitions: 16,
        ..config(DiffusionMode::Write)
    };
    let parts = Partitions::new(16).expect("16 partitions");
    let h = H::open(cfg);
    let e = h.engine();
    let ab = ConversationKey::single(A, B);
    // A peer of B whose chat with B lies in another partition than A's.
    let bc = (100..)
        .map(|u| ConversationKey::single(B, UserId(u)))
        .find(|&c| parts.of(c) != parts.of(ab))
        .expect("some chat lands elsewhere");
    let ConversationKey::Single { lo, hi } = bc else {
        unreachable!("a 1:1 key")
    };
    let c = if lo == B { hi } else { lo };
    send(e, A, ab, 0, T0).unwrap();
    let mut behind = Device::new(B);
    assert_eq!(behind.sync_all(e, 100).len(), 1);
    assert_eq!(behind.inbox.positions().len(), 16);
    for i in 1..=10 {
        send(e, A, ab, i, T0).unwrap();
    }
    for i in 0..2 {
        send(e, c, bc, i, T0).unwrap();
    }
    let mut current = Device::new(B);
    assert_eq!(current.sync_all(e, 100).len(), 13);
    // B: 11 entries in ab's partition (3 stay) and 2 in bc's (both stay); A: 11 (3
    // stay); C: 2.
    let (report, _) = trim_pass(e, T0);
    assert_eq!(report.inbox_entries, (11 - 3) + (11 - 3));
    let got = behind.sync_all(e, 4);
    assert_eq!(got.iter().filter(|m| m.0 == ab).count(), 10, "ab 2..=11");
    assert_eq!(got.iter().filter(|m| m.0 == bc).count(), 2);
    send(e, A, ab, 50, T0).unwrap();
    send(e, c, bc, 50, T0).unwrap();
    assert_eq!(behind.sync_all(e, 100).len(), 2);
    assert_eq!(current.sync_all(e, 100).len(), 2);
    assert_eq!(Device::new(B).sync_all(e, 100).len(), 15);
    // A position of another partition count (the database was recreated) is a new
    // device's: every message the per-conversation cursors do not cover, once.
    let mut stranger = Device::new(B);
    stranger.inbox = InboxCursor::single(5);
    assert_eq!(stranger.sync_all(e, 100).len(), 15);
}

macro_rules! conformance {
    ($module:ident, $harness:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn seqs_are_gap_free_per_conversation() {
                super::seqs_are_gap_free_per_conversation::<$harness>();
            }
            #[test]
            fn duplicate_append_returns_original_seq() {
                super::duplicate_append_returns_original_seq::<$harness>();
            }
            #[test]
            fn dedup_after_reopen_past_the_filter_bound() {
                super::dedup_after_reopen_past_the_filter_bound::<$harness>();
            }
            #[test]
            fn dedup_expires_after_window() {
                super::dedup_expires_after_window::<$harness>();
            }
            #[test]
            fn recipients_and_send_permissions() {
                super::recipients_and_send_permissions::<$harness>();
            }
            #[test]
            fn group_role_rules() {
                super::group_role_rules::<$harness>();
            }
            #[test]
            fn read_counts() {
                super::read_counts::<$harness>();
            }
            #[test]
            fn edit_rules_and_latest_versions() {
                super::edit_rules_and_latest_versions::<$harness>();
            }
            #[test]
            fn replies_and_mentions() {
                super::replies_and_mentions::<$harness>();
            }
            #[test]
            fn recall_rules_and_tombstones() {
                super::recall_rules_and_tombstones::<$harness>();
            }
            #[test]
            fn dissolving_a_group() {
                super::dissolving_a_group::<$harness>();
            }
            #[test]
            fn group_mute_rules() {
                super::group_mute_rules::<$harness>();
            }
            #[test]
            fn public_account_follow_rules() {
                super::public_account_follow_rules::<$harness>();
            }
            #[test]
            fn diffusion_modes_look_identical_to_readers() {
                super::diffusion_modes_look_identical_to_readers::<$harness>();
            }
            #[test]
            fn new_device_gets_everything_with_paging() {
                super::new_device_gets_everything_with_paging::<$harness>();
            }
            #[test]
            fn sync_reports_conversation_state_and_unread() {
                super::sync_reports_conversation_state_and_unread::<$harness>();
            }
            #[test]
            fn history_pages_backwards() {
                super::history_pages_backwards::<$harness>();
            }
            #[test]
            fn removed_member_gets_no_new_messages() {
                super::removed_member_gets_no_new_messages::<$harness>();
            }
            #[test]
            fn revoked_tokens_until_expiry() {
                super::revoked_tokens_until_expiry::<$harness>();
            }
            #[test]
            fn activity_is_recorded() {
                super::activity_is_recorded::<$harness>();
            }
            #[test]
            fn execute_dispatches_and_batches() {
                super::execute_dispatches_and_batches::<$harness>();
            }
            #[test]
            fn group_appends_are_one_write_in_order() {
                super::group_appends_are_one_write_in_order::<$harness>();
            }
            #[test]
            fn group_internal_dedup() {
                super::group_internal_dedup::<$harness>();
            }
            #[test]
            fn a_failed_group_write_stores_nothing() {
                super::a_failed_group_write_stores_nothing::<$harness>();
            }
            #[test]
            fn fsync_error_is_never_an_ack() {
                super::fsync_error_is_never_an_ack::<$harness>();
            }
            #[test]
            fn retention_trims_old_messages() {
                super::retention_trims_old_messages::<$harness>();
            }
            #[test]
            fn inbox_trimming_falls_back_to_a_full_resync() {
                super::inbox_trimming_falls_back_to_a_full_resync::<$harness>();
            }
            #[test]
            fn partitioned_inbox_trimming_caps_each_partition() {
                super::partitioned_inbox_trimming_caps_each_partition::<$harness>();
            }
            #[test]
            fn inbox_retention_by_age_in_bounded_steps() {
                super::inbox_retention_by_age_in_bounded_steps::<$harness>();
            }
        }
    };
}

conformance!(mem, Mem);
conformance!(rocks, Rocks);
