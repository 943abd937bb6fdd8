//! Two cores writing one RocksDB database at once, each through its own committer and
//! each the owner of half the partitions — the storage half of the shared-nothing
//! server. Their conversations share users, so both write inbox entries of the same
//! users concurrently (in different partitions). Every acknowledged append must be
//! stored once with a gap-free seq, retries must be duplicates with the original seq, a
//! new device must get every message once, and all of it must hold after a reopen.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_storage::partition::Partitions;
use petrel_storage::{
    AppendRequest, Committer, ConversationKey, Engine, InboxCursor, Reply, Request, StorageConfig,
    StorageError, SyncMode, SyncRequest, SyncRounds, UserId,
};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

const T0: u64 = 1_764_000_000_000;
const PARTITIONS: u16 = 16;
/// Users 1..=USERS chat pairwise.
const USERS: u64 = 12;

fn config() -> StorageConfig {
    StorageConfig {
        sync: SyncMode::Batch,
        partitions: PARTITIONS,
        ..StorageConfig::default()
    }
}

/// The 1:1 chats among the users whose partition core `core` of two owns.
fn owned_chats(core: u16) -> Vec<ConversationKey> {
    let parts = Partitions::new(PARTITIONS).expect("partitions");
    let mut chats = Vec::new();
    for a in 1..=USERS {
        for b in a + 1..=USERS {
            let c = ConversationKey::single(UserId(a), UserId(b));
            if parts.of(c).0 % 2 == core {
                chats.push(c);
            }
        }
    }
    chats
}

/// What one core had acknowledged: `(conversation, sender, client_msg_id) → seq`.
type Acked = HashMap<(ConversationKey, u64, u64), u64>;

/// Core `core`'s loop: groups of appends to its own chats (every fifth a retry of an
/// earlier id), each released before the next group; returns what was acknowledged.
fn run_core(mut committer: Committer<RocksEngine, u64>, core: u16, groups: u64) -> Acked {
    let chats = owned_chats(core);
    assert!(chats.len() > 4, "core {core} owns a few chats");
    let mut acked = Acked::new();
    let mut requests: HashMap<u64, (ConversationKey, u64, u64)> = HashMap::new();
    let mut tag = 0u64;
    let mut sent: Vec<(ConversationKey, UserId, u64)> = Vec::new();
    for g in 0..groups {
        let mut batch = Vec::new();
        for k in 0..4u64 {
            // Every fourth request from group 5 on is a retry of an earlier one.
            let (chat, sender, id) = if g >= 5 && k == 3 {
                sent[((g - 5) * 3 + 1) as usize]
            } else {
                let chat = chats[((g * 4 + k) as usize * 7) % chats.len()];
                let ConversationKey::Single { lo, hi } = chat else {
                    unreachable!("1:1 chats")
                };
                let sender = if (g + k) % 2 == 0 { lo } else { hi };
                let new = (chat, sender, u64::from(core) * 1_000_000 + g * 4 + k);
                sent.push(new);
                new
            };
            tag += 1;
            requests.insert(tag, (chat, sender.0, id));
            batch.push((
                tag,
                Request::Append(AppendRequest {
                    sender,
                    sender_device: "d".into(),
                    client_msg_id: id,
                    conversation: chat,
                    payload: Bytes::from(format!("{core}:{id}")),
                    now_ms: T0 + g,
                    refs: Default::default(),
                }),
            ));
        }
        let want = batch.len();
        committer.commit(&mut batch);
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while got < want {
            assert!(
                Instant::now() < deadline,
                "core {core} group {g} not released"
            );
            got += committer.take_ready(|t, reply: Result<Reply, StorageError>| {
                let (chat, sender, id) = requests[&t];
                let Ok(Reply::Appended(out)) = reply else {
                    panic!("core {core}: append {t} failed: {reply:?}")
                };
                match acked.get(&(chat, sender, id)) {
                    // The same id again (a retry, or the same sender and id repeated by
                    // the schedule): a duplicate answered with the first seq.
                    Some(&seq) => assert!(out.duplicate && out.seq == seq, "{out:?}"),
                    None => {
                        assert!(!out.duplicate, "a new id is not a duplicate: {out:?}");
                        acked.insert((chat, sender, id), out.seq);
                    }
                }
            });
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    committer.shutdown(|_, _| panic!("everything was released"));
    acked
}

/// A device of `user` syncing from `inbox` and `held` until `has_more` is false: every
/// message after what it holds arrives once, in order. Returns its new position.
fn sync_device(
    engine: &RocksEngine,
    user: u64,
    mut inbox: InboxCursor,
    held: &mut BTreeMap<ConversationKey, u64>,
) -> InboxCursor {
    loop {
        let page = engine
            .sync(&SyncRequest {
                user: UserId(user),
                inbox,
                cursors: held.iter().map(|(c, s)| (*c, *s)).collect(),
                limit: 100,
                now_ms: T0,
            })
            .expect("sync");
        for m in &page.messages {
            let at = held.entry(m.conversation).or_insert(0);
            assert_eq!(m.seq, *at + 1, "user {user}: {:?} in order", m.conversation);
            *at = m.seq;
        }
        inbox = page.inbox;
        if !page.has_more {
            return inbox;
        }
    }
}

/// Every conversation's acknowledged seqs are exactly 1..=n, each stored once, and every
/// user's devices — new ones, and `early` ones that synced before the load and now
/// continue from their inbox positions — get every message once.
fn check(
    engine: &RocksEngine,
    acked: &Acked,
    early: &[(InboxCursor, BTreeMap<ConversationKey, u64>)],
) {
    let mut by_chat: BTreeMap<ConversationKey, Vec<u64>> = BTreeMap::new();
    for (&(chat, _, _), &seq) in acked {
        by_chat.entry(chat).or_default().push(seq);
    }
    for (chat, seqs) in &mut by_chat {
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(*seqs, expected, "{chat:?}: gap-free, each seq once");
    }
    for user in 1..=USERS {
        // A new device, then the device that synced before the load: the early one
        // learns of every chat that changed only from its inbox (a lost inbox entry
        // would lose a chat for it).
        let (early_inbox, early_held) = &early[(user - 1) as usize];
        assert!(!early_inbox.is_new_device());
        for (inbox, mut held) in [
            (InboxCursor::new_device(), BTreeMap::new()),
            (early_inbox.clone(), early_held.clone()),
        ] {
            let inbox = sync_device(engine, user, inbox, &mut held);
            for (chat, seqs) in &by_chat {
                let ConversationKey::Single { lo, hi } = *chat else {
                    continue;
                };
                if lo.0 == user || hi.0 == user {
                    assert_eq!(held.get(chat).copied(), Some(seqs.len() as u64), "{chat:?}");
                }
            }
            assert_eq!(inbox.positions().len(), usize::from(PARTITIONS));
        }
    }
}

#[test]
fn two_committers_on_disjoint_partitions_keep_every_seq_gap_free_and_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(RocksEngine::open(dir.path(), config()).expect("open"));
    // One message in every chat, and a device per user that syncs it before the load.
    let mut acked = Acked::new();
    for core in 0..2 {
        for chat in owned_chats(core) {
            let ConversationKey::Single { lo, .. } = chat else {
                unreachable!("1:1 chats")
            };
            let out = engine
                .append(AppendRequest {
                    sender: lo,
                    sender_device: "d".into(),
                    client_msg_id: 9_000_000,
                    conversation: chat,
                    payload: Bytes::from_static(b"first"),
                    now_ms: T0,
                    refs: Default::default(),
                })
                .expect("append");
            acked.insert((chat, lo.0, 9_000_000), out.seq);
        }
    }
    let early: Vec<_> = (1..=USERS)
        .map(|user| {
            let mut held = BTreeMap::new();
            let inbox = sync_device(&engine, user, InboxCursor::new_device(), &mut held);
            (inbox, held)
        })
        .collect();
    let mut committers = Committer::start_many(
        Arc::clone(&engine),
        Some(SyncRounds::default()),
        vec![Arc::new(|| {}), Arc::new(|| {})],
    )
    .expect("committers");
    let one = committers.pop().expect("two");
    let zero = committers.pop().expect("two");
    let cores = [
        std::thread::spawn(move || run_core(zero, 0, 300)),
        std::thread::spawn(move || run_core(one, 1, 300)),
    ];
    for core in cores {
        acked.extend(core.join().expect("core thread"));
    }
    check(&engine, &acked, &early);
    drop(engine);
    let engine = RocksEngine::open(dir.path(), config()).expect("reopen");
    check(&engine, &acked, &early);
}
