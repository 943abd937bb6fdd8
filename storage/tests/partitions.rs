//! A database's partition count: decided once, when it is created, and kept — including
//! the single partition of a database from before partitions, whose inbox keys keep
//! their original layout and whose devices keep their plain inbox cursors.

use bytes::Bytes;
use petrel_storage::cf::Cf;
use petrel_storage::engine::Store;
use petrel_storage::keys::{self, META_PARTITIONS};
use petrel_storage::kv::{Batch, Kv};
use petrel_storage::mem::MemKv;
use petrel_storage::partition::Partitions;
use petrel_storage::{
    AppendRequest, ConversationKey, Engine, InboxCursor, StorageConfig, StorageError, SyncMode,
    SyncRequest, UserId,
};

const T0: u64 = 1_764_000_000_000;
const A: UserId = UserId(1);
const B: UserId = UserId(2);

fn config(partitions: u16) -> StorageConfig {
    StorageConfig {
        sync: SyncMode::None,
        partitions,
        ..StorageConfig::default()
    }
}

fn send(e: &impl Engine, id: u64) {
    e.append(AppendRequest {
        sender: A,
        sender_device: "d".into(),
        client_msg_id: id,
        conversation: ConversationKey::single(A, B),
        payload: Bytes::from_static(b"hi"),
        now_ms: T0,
        refs: Default::default(),
    })
    .expect("append");
}

/// B's messages after `inbox`; returns how many and the next position.
fn sync(e: &impl Engine, inbox: InboxCursor, held: u64) -> (usize, InboxCursor) {
    let page = e
        .sync(&SyncRequest {
            user: B,
            inbox,
            cursors: vec![(ConversationKey::single(A, B), held)],
            limit: 100,
            now_ms: T0,
        })
        .expect("sync");
    assert!(!page.has_more);
    (page.messages.len(), page.inbox)
}

#[test]
fn a_new_database_records_its_count_and_keeps_it() {
    let store = Store::with_kv(MemKv::default(), config(4)).expect("open");
    assert_eq!(store.partitions().count(), 4);
    send(&store, 1);
    let (got, position) = sync(&store, InboxCursor::new_device(), 0);
    assert_eq!(got, 1);
    assert_eq!(position.positions().len(), 4);
    // Reopened with another configured count: the recorded one stays.
    let store = Store::with_kv(store.into_kv(), config(16)).expect("reopen");
    assert_eq!(store.partitions().count(), 4);
    send(&store, 2);
    assert_eq!(sync(&store, position, 1).0, 1);
}

#[test]
fn a_database_from_before_partitions_keeps_one() {
    // Made with one partition, then its record removed: what an older build left.
    let store = Store::with_kv(MemKv::default(), config(1)).expect("open");
    send(&store, 1);
    let (got, position) = sync(&store, InboxCursor::new_device(), 0);
    assert_eq!(got, 1);
    assert_eq!(position.as_single(), Some(1), "a plain inbox cursor");
    let kv = store.into_kv();
    let mut batch = kv.batch();
    batch.delete(Cf::Meta, META_PARTITIONS);
    kv.write(batch, false).expect("write");
    let inbox_key = kv
        .first_key(Cf::Inbox, &[], &keys::prefix_end(&[]))
        .expect("scan")
        .expect("an inbox entry");
    assert_eq!(inbox_key.len(), 16, "the original layout");

    let store = Store::with_kv(kv, config(16)).expect("reopen");
    assert_eq!(store.partitions(), Partitions::ONE);
    send(&store, 2);
    // The device's plain cursor still works: only the new message.
    let (got, position) = sync(&store, position, 1);
    assert_eq!(got, 1);
    assert_eq!(position.as_single(), Some(2));
}

#[test]
fn an_empty_database_without_a_record_gets_the_configured_count() {
    let kv = MemKv::default();
    let store = Store::with_kv(kv, config(8)).expect("open");
    assert_eq!(store.partitions().count(), 8);
    let kv = store.into_kv();
    assert_eq!(
        kv.get(Cf::Meta, META_PARTITIONS).expect("get"),
        Some(keys::u64_key(8).to_vec())
    );
}

#[test]
fn a_position_from_a_recreated_database_gets_a_full_sync() {
    let old = Store::with_kv(MemKv::default(), config(16)).expect("open");
    for id in 1..=3 {
        send(&old, id);
    }
    let (got, position) = sync(&old, InboxCursor::new_device(), 0);
    assert_eq!((got, position.epoch()), (3, old.epoch()));
    // The data directory wiped and the server started again: same partition count,
    // another epoch. One message so far; the device's old position is far above it.
    let new = Store::with_kv(MemKv::default(), config(16)).expect("open");
    assert_ne!(new.epoch(), old.epoch());
    send(&new, 1);
    let (got, position) = sync(&new, position, 0);
    assert_eq!(
        got, 1,
        "the old position is not trusted: everything after cursor 0"
    );
    assert_eq!(position.epoch(), new.epoch());
    // Reopened, the database keeps its epoch, and positions stay good.
    let epoch = new.epoch();
    let new = Store::with_kv(new.into_kv(), config(16)).expect("reopen");
    assert_eq!(new.epoch(), epoch);
    send(&new, 2);
    assert_eq!(sync(&new, position, 1).0, 1);
}

#[test]
fn a_bad_record_refuses_to_open() {
    for bad in [0u64, 1025, 1 << 40] {
        let kv = MemKv::default();
        let mut batch = kv.batch();
        batch.put(Cf::Meta, META_PARTITIONS, &keys::u64_key(bad));
        kv.write(batch, false).expect("write");
        let err = Store::with_kv(kv, config(16)).expect_err("refused");
        assert!(matches!(err, StorageError::Corrupt(_)), "{bad}: {err}");
    }
    let kv = MemKv::default();
    let mut batch = kv.batch();
    batch.put(Cf::Meta, META_PARTITIONS, b"short");
    kv.write(batch, false).expect("write");
    assert!(Store::with_kv(kv, config(16)).is_err());
}

#[test]
fn a_cluster_node_allocates_ids_only_in_the_partitions_it_owns() {
    use petrel_storage::partition::{Partition, PartitionSet};
    let mut owned = PartitionSet::default();
    owned.insert(Partition(1));
    owned.insert(Partition(6));
    let store = Store::with_kv(
        MemKv::default(),
        StorageConfig {
            new_ids_in: Some(owned.clone()),
            ..config(8)
        },
    )
    .expect("open");
    let partitions = store.partitions();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let group = store.create_group(A, "g", &[B], T0).expect("create");
        assert!(
            owned.contains(partitions.of(group)),
            "{group:?} is not ours"
        );
        ids.push(group);
    }
    // Distinct and ascending: 1, 6, 9, 14, 17, 22.
    let numbers: Vec<u64> = ids
        .iter()
        .map(|g| match g {
            ConversationKey::Group(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(numbers, [1, 6, 9, 14, 17, 22]);
    // Public accounts likewise.
    let account = store.create_public_account(A, "news", T0).expect("create");
    assert!(owned.contains(partitions.of(account)));
}
