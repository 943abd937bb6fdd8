//! The writer's caches stay within their bounds, and dropping entries never changes an
//! answer: seqs stay gap-free, inbox heads continue, retries stay duplicates, news
//! markers are never missing.

use bytes::Bytes;
use petrel_storage::{
    AppendRequest, ConversationKey, DiffusionMode, Engine, MemEngine, Request, StorageConfig,
    SyncMode, SyncRequest, UserId,
};

const T0: u64 = 1_700_000_000_000;

fn append(sender: u64, conversation: ConversationKey, cmid: u64) -> Request {
    Request::Append(AppendRequest {
        sender: UserId(sender),
        sender_device: "d".into(),
        client_msg_id: cmid,
        conversation,
        payload: Bytes::from(format!("{cmid}")),
        now_ms: T0,
        refs: Default::default(),
    })
}

#[test]
fn tiny_bounds_keep_every_answer_right() {
    // One writer holds the bounds exactly; with more partitions each writer holds its
    // share of them, at least one entry.
    for partitions in [1, 4] {
        tiny_bounds_with(partitions);
    }
}

fn tiny_bounds_with(partitions: u16) {
    let e = MemEngine::new(StorageConfig {
        diffusion: DiffusionMode::Read,
        sync: SyncMode::None,
        writer_cache_entries: 2,
        member_cache_conversations: 1,
        dedup_filter_ids: 3,
        dedup_filter_per_sender: 2,
        partitions,
        ..StorageConfig::default()
    });
    let bound = |n: u64| n.max(u64::from(partitions));
    let reader = UserId(1);
    let group = e
        .create_group(reader, "g", &[UserId(2), UserId(3)], T0)
        .unwrap();
    let peers: Vec<u64> = (10..20).collect();
    let mut cmid = 0;
    for round in 1..=3u64 {
        // One group per round: ten 1:1 conversations and the group, more than any bound.
        let mut batch = Vec::new();
        for &p in &peers {
            cmid += 1;
            batch.push(append(p, ConversationKey::single(reader, UserId(p)), cmid));
        }
        cmid += 1;
        batch.push(append(2, group, cmid));
        for (i, r) in e.execute_batch(batch).into_iter().enumerate() {
            let Ok(petrel_storage::Reply::Appended(out)) = r else {
                panic!("append {i} failed: {r:?}")
            };
            assert_eq!(out.seq, round, "append {i} of round {round}");
            assert!(!out.duplicate);
        }
        // Every retry of this round is still a duplicate with its seq.
        let retries: Vec<Request> = peers
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let id = cmid - peers.len() as u64 + i as u64;
                append(p, ConversationKey::single(reader, UserId(p)), id)
            })
            .collect();
        for r in e.execute_batch(retries) {
            let Ok(petrel_storage::Reply::Appended(out)) = r else {
                panic!("retry failed: {r:?}")
            };
            assert!(out.duplicate);
            assert_eq!(out.seq, round);
        }
        let caches = e.writer_cache_stats().unwrap();
        assert!(caches.last_seqs <= bound(2), "{caches:?}");
        assert!(
            caches.inbox_heads <= bound(2) && caches.pending_news_users <= bound(2),
            "{caches:?}"
        );
        assert!(caches.member_maps <= bound(1), "{caches:?}");
        assert!(e.recent_ids_stats().unwrap().ids <= bound(3));
    }
    assert!(e.writer_cache_stats().unwrap().evictions > 0);
    // The reader, a new device, gets all 33 messages, gap-free (markers were never lost).
    let page = e
        .sync(&SyncRequest {
            user: reader,
            inbox: Default::default(),
            cursors: Vec::new(),
            limit: 1000,
            now_ms: T0,
        })
        .unwrap();
    assert_eq!(page.messages.len(), 33);
    assert!(!page.has_more);
}

/// A store that never held a legacy `sender | client_msg_id` dedup key decides so the
/// first time a retry makes it read the dedup table, and from then on reads only the
/// current key; retries past the recent-id filter's bound still answer right.
#[test]
fn a_fresh_store_never_reads_legacy_dedup_keys() {
    use petrel_storage::cf::Cf;
    use petrel_storage::keys;
    use petrel_storage::kv::Kv;

    let e = MemEngine::new(StorageConfig {
        sync: SyncMode::None,
        dedup_filter_per_sender: 2,
        ..StorageConfig::default()
    });
    let conv = ConversationKey::single(UserId(1), UserId(2));
    // Five ids from one sender: past the filter's bound of two, so retries of the first
    // ones must read the store.
    for r in e.execute_batch((1..=5).map(|id| append(1, conv, id)).collect()) {
        assert!(matches!(r, Ok(petrel_storage::Reply::Appended(ref o)) if !o.duplicate));
    }
    for r in e.execute_batch((1..=5).map(|id| append(1, conv, id)).collect()) {
        let Ok(petrel_storage::Reply::Appended(out)) = r else {
            panic!("retry failed: {r:?}")
        };
        assert!(out.duplicate);
    }
    // Written with the first run that had to ask the store, when its table was empty.
    let horizon = e
        .kv()
        .get(Cf::Meta, keys::META_LEGACY_DEDUP_BEFORE)
        .unwrap()
        .expect("legacy horizon written");
    assert_eq!(keys::decode_u64("horizon", &horizon).unwrap(), 0);
}

/// A sender whose ids increase is answered from memory far past the filter's per-sender
/// bound (its id ceiling), also after it was dropped and reloaded from an incomplete
/// scan; a retry of an old id still finds the stored message.
#[test]
fn increasing_ids_past_the_bound_skip_the_store_and_retries_are_still_found() {
    let e = MemEngine::new(StorageConfig {
        sync: SyncMode::None,
        dedup_filter_per_sender: 2,
        dedup_filter_ids: 4,
        // One writer, so one filter that every sender shares (with more partitions each
        // partition's writer has its own, with its share of the budget).
        partitions: 1,
        ..StorageConfig::default()
    });
    let convs = [
        ConversationKey::single(UserId(1), UserId(2)),
        ConversationKey::single(UserId(1), UserId(3)),
    ];
    let send = |sender: u64, conv: ConversationKey, id: u64| match e
        .execute_batch(vec![append(sender, conv, id)])
        .pop()
    {
        Some(Ok(petrel_storage::Reply::Appended(out))) => out,
        other => panic!("append failed: {other:?}"),
    };
    // 40 ids over two conversations: the load scan's limit is 16, the list holds 2.
    for id in 1..=40 {
        assert!(!send(1, convs[(id % 2) as usize], id).duplicate);
    }
    let asked = e.recent_ids_stats().unwrap().asked_store;
    assert_eq!(asked, 0, "every id was above the ceiling");
    // A retry of an old id is below the ceiling: the store is asked and finds it.
    let retry = send(1, convs[1], 3);
    assert!(retry.duplicate);
    assert_eq!(retry.seq, 2);
    assert_eq!(e.recent_ids_stats().unwrap().asked_store, asked + 1);
    // Other senders push user 1 out of the filter (a budget of four ids).
    for id in 1..=8 {
        send(
            50 + id,
            ConversationKey::single(UserId(50 + id), UserId(2)),
            id,
        );
    }
    let before = e.recent_ids_stats().unwrap();
    assert!(before.evictions > 0);
    // Reloaded from an incomplete scan, with the ceiling from the per-conversation maxima.
    assert!(!send(1, convs[0], 41).duplicate);
    let after = e.recent_ids_stats().unwrap();
    assert_eq!(
        after.asked_store, before.asked_store,
        "41 is above the ceiling"
    );
    assert!(after.loads > before.loads);
    let again = send(1, convs[0], 40);
    assert!(
        again.duplicate,
        "an id from before the reload is still a duplicate"
    );
}

/// A sender dropped from the filter and reloaded inside the run that stored some of its
/// ids: the reload takes those ids from the run (they are not in the store yet), so a
/// later retry of one is still a duplicate.
#[test]
fn a_sender_reloaded_inside_a_run_keeps_that_run_s_ids() {
    let e = MemEngine::new(StorageConfig {
        sync: SyncMode::None,
        dedup_filter_per_sender: 2,
        // Ids and senders together: the second sender evicts the first (in the one
        // filter of a one-partition database).
        dedup_filter_ids: 3,
        partitions: 1,
        ..StorageConfig::default()
    });
    let a = ConversationKey::single(UserId(1), UserId(2));
    let b = ConversationKey::single(UserId(3), UserId(2));
    let replies = e.execute_batch(vec![append(1, a, 100), append(3, b, 1), append(1, a, 50)]);
    for r in &replies {
        assert!(
            matches!(r, Ok(petrel_storage::Reply::Appended(o)) if !o.duplicate),
            "{r:?}"
        );
    }
    assert!(e.recent_ids_stats().unwrap().evictions > 0);
    match e.execute_batch(vec![append(1, a, 100)]).pop() {
        Some(Ok(petrel_storage::Reply::Appended(o))) => {
            assert!(o.duplicate, "id 100 was stored in the first run");
            assert_eq!(o.seq, 1);
        }
        other => panic!("{other:?}"),
    }
}

/// Each partition's writer lists only a sender's ids in that partition's conversations
/// (a retry lands in the partition of its conversation), so its share of the filter's
/// budget is not spent on the others'.
#[test]
fn a_partitions_filter_loads_only_its_own_conversations_ids() {
    use petrel_storage::engine::Store;
    use petrel_storage::partition::Partitions;

    let config = StorageConfig {
        sync: SyncMode::None,
        partitions: 2,
        ..StorageConfig::default()
    };
    let parts = Partitions::new(2).unwrap();
    let here = ConversationKey::single(UserId(1), UserId(2));
    let there = (3..)
        .map(|u| ConversationKey::single(UserId(1), UserId(u)))
        .find(|&c| parts.of(c) != parts.of(here))
        .unwrap();
    let e = MemEngine::new(config.clone());
    for id in 1..=5 {
        e.execute_batch(vec![append(1, here, id), append(1, there, 100 + id)]);
    }
    // Reopened: the filters are empty, and the sender's next append in `here`'s
    // partition loads it from its dedup prefix.
    let e = Store::with_kv(e.into_kv(), config).unwrap();
    assert_eq!(e.recent_ids_stats().unwrap().ids, 0);
    let out = e.execute_batch(vec![append(1, here, 6)]);
    assert!(matches!(&out[0], Ok(petrel_storage::Reply::Appended(o)) if !o.duplicate));
    let stats = e.recent_ids_stats().unwrap();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.ids, 6, "here's five and the new one, none of there's");
    // Retries in either conversation are still duplicates.
    for (conv, id) in [(here, 3), (there, 103)] {
        let out = e.execute_batch(vec![append(1, conv, id)]);
        assert!(matches!(&out[0], Ok(petrel_storage::Reply::Appended(o)) if o.duplicate));
    }
}
