//! Replication of the write stream (`petrel_storage::replica`): a database rebuilt from
//! its replica log holds exactly what the original held; records the log never
//! acknowledged are shipped at the next open; a log that is down refuses the
//! acknowledgement, not the local write; an existing database is seeded into an empty
//! log; a second writer is fenced off; a standby follows the log, is promoted in the
//! primary's place, and rebuilds a database that diverged from the log.

use std::sync::Arc;

use bytes::Bytes;
use petrel_storage::cf::Cf;
use petrel_storage::engine::Store;
use petrel_storage::kv::{Batch, Direction, Kv};
use petrel_storage::mem::MemKv;
use petrel_storage::replica::{META_REPLICA_SEEDING, MemLog, RecordBuf, ReplicaLog, Replicated};
use petrel_storage::{
    AppendRequest, ConversationKey, Engine, Request, StorageConfig, StorageError, SyncMode, UserId,
};

const T0: u64 = 1_764_000_000_000;
const A: UserId = UserId(1);
const B: UserId = UserId(2);
const C: UserId = UserId(3);

fn config() -> StorageConfig {
    StorageConfig {
        sync: SyncMode::Batch,
        partitions: 4,
        ..StorageConfig::default()
    }
}

fn append(id: u64, conversation: ConversationKey) -> Request {
    Request::Append(AppendRequest {
        sender: A,
        sender_device: "d".into(),
        client_msg_id: id,
        conversation,
        payload: Bytes::from(format!("message {id}")),
        now_ms: T0 + id,
        refs: Default::default(),
    })
}

/// Every column family's content but the local copies of records.
fn contents(kv: &impl Kv) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    for cf in Cf::ALL {
        if cf == Cf::ReplicaLog {
            continue;
        }
        kv.scan(
            cf,
            &[],
            &[0xff; 64],
            Direction::Forward,
            usize::MAX,
            &mut |k, v| {
                all.push((cf, k.to_vec(), v.to_vec()));
                Ok(true)
            },
        )
        .expect("scan");
    }
    all
}

fn replicated_store(log: &Arc<MemLog>) -> Store<Replicated<MemKv>> {
    let (kv, _) = Replicated::open(MemKv::default(), log.clone()).expect("open");
    Store::with_kv(kv, config()).expect("store")
}

/// Groups of appends and direct calls, as a server makes them.
fn write_some(store: &Store<Replicated<MemKv>>) -> ConversationKey {
    let group = store.create_group(A, "g", &[B, C], T0).expect("group");
    for round in 0..5u64 {
        let requests = (0..20)
            .map(|i| {
                let id = round * 20 + i + 1;
                let conversation = if id % 2 == 0 {
                    group
                } else {
                    ConversationKey::single(A, B)
                };
                append(id, conversation)
            })
            .collect();
        for reply in store.execute_batch(requests) {
            reply.expect("append");
        }
    }
    store.mark_read(B, group, 3).expect("read");
    group
}

/// A write of a process whose log another process wrote since is not acknowledged.
fn assert_fenced(replies: &[Result<petrel_storage::Reply, StorageError>]) {
    assert!(
        matches!(replies[0], Err(StorageError::Backend(ref m)) if m.contains("does not follow")),
        "{replies:?}"
    );
}

#[test]
fn a_database_rebuilt_from_its_log_holds_exactly_what_the_original_did() {
    let log = Arc::new(MemLog::default());
    let original = replicated_store(&log);
    let group = write_some(&original);
    let acked = log.last().expect("last");
    assert!(acked >= 7, "a record per write: {acked}");
    assert_eq!(original.kv().replica_marks(), Some((acked, acked)));

    let (rebuilt, catch) = Replicated::open(MemKv::default(), log.clone()).expect("rebuild");
    assert_eq!((catch.applied, catch.through), (acked, acked));
    assert_eq!(contents(rebuilt.inner()), contents(original.kv().inner()));

    let store = Store::with_kv(rebuilt, config()).expect("store");
    let page = store.history(B, group, u64::MAX, 100).expect("history");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    // The rebuilt database goes on where the original stopped: one more write is the
    // log's next record.
    store
        .execute_batch(vec![append(1_000, group)])
        .pop()
        .expect("reply")
        .expect("append");
    assert_eq!(log.last().expect("last"), acked + 1);
}

#[test]
fn a_log_that_is_down_fails_the_acknowledgement_and_gets_the_records_once_it_is_back() {
    let log = Arc::new(MemLog::default());
    let store = replicated_store(&log);
    let group = store.create_group(A, "g", &[B], T0).expect("group");
    let before = log.last().expect("last");

    log.set_failing(true);
    let replies = store.execute_batch(vec![append(1, group), append(2, group)]);
    assert!(
        replies.iter().all(|r| r.is_err()),
        "not acknowledged without the log: {replies:?}"
    );
    log.set_failing(false);
    assert_eq!(
        log.last().expect("last"),
        before,
        "nothing shipped while down"
    );

    // The next group ships the waiting record first, in order.
    for reply in store.execute_batch(vec![append(3, group)]) {
        reply.expect("append");
    }
    assert_eq!(log.last().expect("last"), before + 2);
    let (rebuilt, _) = Replicated::open(MemKv::default(), log.clone()).expect("rebuild");
    assert_eq!(contents(rebuilt.inner()), contents(store.kv().inner()));
}

#[test]
fn records_the_log_never_acknowledged_are_shipped_at_the_next_open() {
    let log = Arc::new(MemLog::default());
    let store = replicated_store(&log);
    let group = store.create_group(A, "g", &[B], T0).expect("group");
    log.set_failing(true);
    let _ = store.execute_batch(vec![append(1, group)]);
    let _ = store.execute_batch(vec![append(2, group)]);
    let (written, acked) = store.kv().replica_marks().expect("replicated");
    assert_eq!(written, acked + 2);
    // The process stops here; its database kept the writes and their copies.
    let kv = store.into_kv().into_inner();
    log.set_failing(false);

    let (reopened, catch) = Replicated::open(kv, log.clone()).expect("reopen");
    assert_eq!((catch.shipped, catch.through), (2, written));
    assert_eq!(log.last().expect("last"), written);
    let (rebuilt, _) = Replicated::open(MemKv::default(), log.clone()).expect("rebuild");
    assert_eq!(contents(rebuilt.inner()), contents(reopened.inner()));
    assert_eq!(
        copies(reopened.inner()),
        0,
        "copies the log holds are dropped"
    );
}

#[test]
fn a_log_that_lost_records_this_database_has_no_copy_of_is_refused() {
    let log = Arc::new(MemLog::default());
    let store = replicated_store(&log);
    write_some(&store);
    let kv = store.into_kv().into_inner();
    log.truncate(2);
    let error = Replicated::open(kv, log).expect_err("refused");
    assert!(
        error.to_string().contains("copies of records 3..="),
        "{error}"
    );
}

#[test]
fn an_existing_database_is_seeded_into_an_empty_log() {
    let plain = Store::with_kv(Replicated::plain(MemKv::default()), config()).expect("store");
    let group = plain.create_group(A, "g", &[B], T0).expect("group");
    for reply in plain.execute_batch((1..=30).map(|i| append(i, group)).collect()) {
        reply.expect("append");
    }
    let kv = plain.into_kv().into_inner();

    let log = Arc::new(MemLog::default());
    let (seeded, catch) = Replicated::open(kv, log.clone()).expect("seed");
    assert!(
        catch.seeded >= 1 && catch.through == catch.seeded,
        "{catch:?}"
    );
    let (rebuilt, _) = Replicated::open(MemKv::default(), log.clone()).expect("rebuild");
    assert_eq!(contents(rebuilt.inner()), contents(seeded.inner()));
}

#[test]
fn a_second_writer_of_the_log_is_fenced_off() {
    let log = Arc::new(MemLog::default());
    let store = replicated_store(&log);
    let group = store.create_group(A, "g", &[B], T0).expect("group");
    // Another process appends what it believes is the next record.
    let next = log.last().expect("last") + 1;
    log.append(next, &RecordBuf::new().into_bytes())
        .expect("the intruder's record");
    let replies = store.execute_batch(vec![append(1, group)]);
    assert_fenced(&replies);
}

#[test]
fn a_database_written_without_its_log_is_not_opened_with_it_again() {
    let log = Arc::new(MemLog::default());
    let store = replicated_store(&log);
    let group = write_some(&store);
    let kv = store.into_kv().into_inner();
    // Replication turned off for a while: a write the log never sees.
    let plain = Store::with_kv(Replicated::plain(kv), config()).expect("store");
    for reply in plain.execute_batch(vec![append(9_999, group)]) {
        reply.expect("append");
    }
    let kv = plain.into_kv().into_inner();
    let error = Replicated::open(kv, log).expect_err("refused");
    assert!(
        error
            .to_string()
            .contains("written without its replica log"),
        "{error}"
    );
}

#[test]
fn a_deleted_log_is_seeded_again_and_a_foreign_log_is_refused() {
    let log = Arc::new(MemLog::default());
    let store = replicated_store(&log);
    write_some(&store);
    let kv = store.into_kv().into_inner();
    // The log is deleted (to start again): the database is its new beginning.
    let fresh = Arc::new(MemLog::default());
    let (seeded, catch) = Replicated::open(kv, fresh.clone()).expect("seeded again");
    assert!(catch.seeded >= 1, "{catch:?}");
    let (rebuilt, _) = Replicated::open(MemKv::default(), fresh).expect("rebuild");
    assert_eq!(contents(rebuilt.inner()), contents(seeded.inner()));

    // A database that never had a log, meeting one that holds records.
    let other = Store::with_kv(Replicated::plain(MemKv::default()), config()).expect("store");
    other.create_group(A, "other", &[B], T0).expect("group");
    let error = Replicated::open(other.into_kv().into_inner(), log).expect_err("refused");
    assert!(
        error.to_string().contains("no record of the replica log"),
        "{error}"
    );
}

#[test]
fn a_snapshot_into_the_log_cut_short_starts_over() {
    let plain = Store::with_kv(Replicated::plain(MemKv::default()), config()).expect("store");
    let group = plain.create_group(A, "g", &[B], T0).expect("group");
    for reply in plain.execute_batch((1..=30).map(|i| append(i, group)).collect()) {
        reply.expect("append");
    }
    let kv = plain.into_kv().into_inner();
    // What a snapshot cut short leaves: the database marked, the log holding its start.
    let mut batch = kv.batch();
    batch.put(Cf::Meta, META_REPLICA_SEEDING, &[]);
    kv.write(batch, true).expect("mark");
    let log = Arc::new(MemLog::default());
    let mut start = RecordBuf::new();
    start.put(Cf::Meta, b"partial", b"snapshot");
    log.append(1, &start.into_bytes()).expect("start");

    let (seeded, catch) = Replicated::open(kv, log.clone()).expect("seeded again");
    assert!(catch.seeded >= 1, "{catch:?}");
    assert_eq!(
        seeded
            .inner()
            .get(Cf::Meta, META_REPLICA_SEEDING)
            .expect("get"),
        None
    );
    let (rebuilt, _) = Replicated::open(MemKv::default(), log).expect("rebuild");
    assert_eq!(contents(rebuilt.inner()), contents(seeded.inner()));
    assert_eq!(
        rebuilt.inner().get(Cf::Meta, b"partial").expect("get"),
        None
    );
}

/// Every local copy of a record the database holds.
fn copies(kv: &impl Kv) -> usize {
    let mut n = 0;
    kv.scan(
        Cf::ReplicaLog,
        &[],
        &[0xff; 8],
        Direction::Forward,
        usize::MAX,
        &mut |_, _| {
            n += 1;
            Ok(true)
        },
    )
    .expect("scan");
    n
}

#[test]
fn a_standby_follows_the_log_and_once_promoted_goes_on_where_the_primary_stopped() {
    let log = Arc::new(MemLog::default());
    let primary = replicated_store(&log);
    let group = write_some(&primary);
    let (standby, catch) =
        Replicated::open_standby(MemKv::default(), log.clone()).expect("standby");
    assert_eq!(catch.applied, log.last().expect("last"));
    assert_eq!(catch.rebuilt, None);
    // The primary writes on; the standby takes what the log gained, and nothing else.
    for reply in primary.execute_batch((1_100..1_110).map(|i| append(i, group)).collect()) {
        reply.expect("append");
    }
    assert_eq!(
        standby.follow().expect("follow"),
        1,
        "one group, one record"
    );
    assert_eq!(standby.follow().expect("follow"), 0, "nothing new");
    assert_eq!(contents(standby.inner()), contents(primary.kv().inner()));

    // Handover: the standby is promoted and writes the log's next record.
    let through = log.last().expect("last");
    let promoted = Store::with_kv(standby, config()).expect("promoted");
    for reply in promoted.execute_batch(vec![append(1_200, group)]) {
        match reply.expect("append") {
            petrel_storage::Reply::Appended(outcome) => {
                assert_eq!(outcome.seq, 61, "after the primary's 60");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(log.last().expect("last"), through + 1);
    // The old primary, still running, is fenced off: its next write is not acked.
    let replies = primary.execute_batch(vec![append(1_300, group)]);
    assert_fenced(&replies);
}

#[test]
fn a_standby_rebuilds_a_database_that_diverged_from_the_log_and_a_primary_refuses_it() {
    let log = Arc::new(MemLog::default());
    let primary = replicated_store(&log);
    let group = write_some(&primary);
    // The primary applies two groups the log never takes, and stops (a crash).
    log.set_failing(true);
    let _ = primary.execute_batch(vec![append(1_100, group)]);
    let _ = primary.execute_batch(vec![append(1_101, group)]);
    let old = primary.into_kv().into_inner();
    log.set_failing(false);
    assert_eq!(copies(&old), 2);

    // Its database is ahead of the log: as a standby it is rebuilt from the log.
    let (ahead, catch) = Replicated::open_standby(old, log.clone()).expect("standby");
    assert!(
        catch.rebuilt.is_some_and(|why| why.contains("does not")),
        "{catch:?}"
    );
    assert_eq!(catch.through, log.last().expect("last"));
    assert_eq!(copies(ahead.inner()), 0);
    let (rebuilt, _) = Replicated::open(MemKv::default(), log.clone()).expect("rebuild");
    assert_eq!(contents(ahead.inner()), contents(rebuilt.inner()));

    // A primary crashes with two groups the log never took, and its standby is
    // promoted and writes records of its own at the numbers the primary had used.
    let succeeded = || {
        let log = Arc::new(MemLog::default());
        let primary = replicated_store(&log);
        let group = write_some(&primary);
        let (standby, _) =
            Replicated::open_standby(MemKv::default(), log.clone()).expect("standby");
        log.set_failing(true);
        let _ = primary.execute_batch(vec![append(1_100, group)]);
        let _ = primary.execute_batch(vec![append(1_101, group)]);
        let old = primary.into_kv().into_inner();
        log.set_failing(false);
        let promoted = Store::with_kv(standby, config()).expect("promoted");
        for id in 1_200..1_203 {
            for reply in promoted.execute_batch(vec![append(id, group)]) {
                reply.expect("append");
            }
        }
        (log, old, promoted)
    };
    // Started as a primary it is refused, naming why.
    let (log, old, _) = succeeded();
    let error = Replicated::open(old, log).expect_err("a diverged primary is refused");
    assert!(
        error.to_string().contains("as the node's standby"),
        "{error}"
    );
    // Started as a standby it is rebuilt: it holds what the promoted one holds.
    let (log, old, promoted) = succeeded();
    let (standby, catch) = Replicated::open_standby(old, log).expect("standby");
    assert!(
        catch
            .rebuilt
            .is_some_and(|why| why.contains("other records")),
        "{catch:?}"
    );
    assert_eq!(contents(standby.inner()), contents(promoted.kv().inner()));
}

#[test]
fn a_database_is_never_levelled_with_another_log() {
    let mine = Arc::new(MemLog::default());
    let store = replicated_store(&mine);
    let group = write_some(&store);
    // Another node's log (or this one deleted and made again, then written to).
    let other = Arc::new(MemLog::default());
    let other_store = replicated_store(&other);
    write_some(&other_store);
    for reply in other_store.execute_batch((1_000..1_020).map(|i| append(i, group)).collect()) {
        reply.expect("append");
    }
    let kv = store.into_kv().into_inner();
    let error = Replicated::open(kv, other.clone()).expect_err("a primary refuses it");
    assert!(
        error.to_string().contains("Move the database aside"),
        "{error}"
    );

    // A standby refuses it too (before anything is emptied for it, or applied).
    let standby = replicated_store(&mine);
    write_some(&standby);
    let kv = standby.into_kv().into_inner();
    let error = Replicated::open_standby(kv, other).expect_err("a standby refuses it");
    assert!(
        error.to_string().contains("follows the replica log"),
        "{error}"
    );
}
