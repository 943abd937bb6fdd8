//! RocksDB-only maintenance: compaction drops expired dedup and revocation entries and
//! nothing else, judging expiry by the engine's clock (the latest request time), not by
//! the wall clock — the test runs in 2023. Legacy dedup entries (`sender |
//! client_msg_id` keys, written before dedup became per conversation) expire the same way
//! and still answer retries in their own conversation.

use bytes::Bytes;
use petrel_storage::cf::Cf;
use petrel_storage::keys;
use petrel_storage::kv::{Batch, Kv};
use petrel_storage::{AppendRequest, ConversationKey, Engine, StorageConfig, TokenId, UserId};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

#[test]
fn compaction_expiry_follows_request_time_not_wall_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conv = ConversationKey::single(UserId(1), UserId(2));
    let now = 1_700_000_000_000u64;
    let two_days = 2 * petrel_storage::config::DAY_MS;
    let legacy_conv = ConversationKey::single(UserId(3), UserId(2));
    let legacy_value = |seq: u64, at: u64| {
        let mut v = keys::conversation_u64(legacy_conv, seq).to_vec();
        v.extend_from_slice(&at.to_be_bytes());
        v
    };
    // Legacy entries of user 3 (never seen by this engine's filter): one expired, one live.
    // A database from before the legacy-dedup horizon existed: the legacy keys and no
    // horizon in `meta` (a fresh database decides "none" when it is opened), then opened
    // by this version, whose first append decides that legacy keys can exist.
    {
        let old = RocksEngine::open(dir.path(), StorageConfig::default()).expect("open");
        let mut batch = old.kv().batch();
        batch.delete(Cf::Meta, keys::META_LEGACY_DEDUP_BEFORE);
        batch.put(
            Cf::Dedup,
            &keys::u64_u64(3, 7),
            &legacy_value(1, now - two_days),
        );
        batch.put(Cf::Dedup, &keys::u64_u64(3, 8), &legacy_value(2, now));
        old.kv().write(batch, true).expect("legacy entries");
    }
    let engine = RocksEngine::open(dir.path(), StorageConfig::default()).expect("open");
    let kv = engine.kv().inner();
    // The first append (the deciding one) at `now`, the back-dated one after it.
    for (cmid, at) in [(2u64, now), (1, now - two_days)] {
        engine
            .append(AppendRequest {
                sender: UserId(1),
                sender_device: "d".into(),
                client_msg_id: cmid,
                conversation: conv,
                payload: Bytes::from_static(b"m"),
                now_ms: at,
                refs: Default::default(),
            })
            .expect("append");
    }
    engine
        .revoke_token(TokenId([1; 16]), now - 1)
        .expect("revoke");
    engine
        .revoke_token(TokenId([2; 16]), now + two_days)
        .expect("revoke");

    let key = |cmid| keys::dedup(UserId(1), conv, cmid);
    assert!(kv.get(Cf::Dedup, &key(1)).unwrap().is_some());
    kv.compact(Cf::Dedup).expect("compact dedup");
    kv.compact(Cf::Revoked).expect("compact revoked");
    kv.compact(Cf::Messages).expect("compact messages");

    assert!(
        kv.get(Cf::Dedup, &key(1)).unwrap().is_none(),
        "expired dedup kept"
    );
    assert!(
        kv.get(Cf::Dedup, &key(2)).unwrap().is_some(),
        "live dedup dropped"
    );
    assert!(
        kv.get(Cf::Dedup, &keys::u64_u64(3, 7)).unwrap().is_none(),
        "expired legacy dedup kept"
    );
    assert!(
        kv.get(Cf::Dedup, &keys::u64_u64(3, 8)).unwrap().is_some(),
        "live legacy dedup dropped"
    );
    assert!(
        kv.get(Cf::Revoked, &[1; 16]).unwrap().is_none(),
        "expired revocation kept"
    );
    assert!(
        kv.get(Cf::Revoked, &[2; 16]).unwrap().is_some(),
        "live revocation dropped"
    );
    // Messages are untouched and the live dedup entry still answers retries.
    assert_eq!(
        engine
            .history(UserId(2), conv, u64::MAX, 10)
            .unwrap()
            .messages
            .len(),
        2
    );
    let retry = engine
        .append(AppendRequest {
            sender: UserId(1),
            sender_device: "d".into(),
            client_msg_id: 2,
            conversation: conv,
            payload: Bytes::from_static(b"m"),
            now_ms: now + 1,
            refs: Default::default(),
        })
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.seq, 1, "id 2 was the first append");

    // A live legacy entry answers a retry in its own conversation only.
    let legacy_retry = |conversation| AppendRequest {
        sender: UserId(3),
        sender_device: "d".into(),
        client_msg_id: 8,
        conversation,
        payload: Bytes::from_static(b"m"),
        now_ms: now + 1,
        refs: Default::default(),
    };
    let again = engine
        .append(legacy_retry(legacy_conv))
        .expect("legacy retry");
    assert!(again.duplicate);
    assert_eq!((again.conversation, again.seq), (legacy_conv, 2));
    let elsewhere = ConversationKey::single(UserId(3), UserId(4));
    let other = engine
        .append(legacy_retry(elsewhere))
        .expect("other conversation");
    assert!(
        !other.duplicate,
        "same id in another conversation is a new message"
    );
    assert_eq!((other.conversation, other.seq), (elsewhere, 1));
    // The store decided that legacy keys may exist (its dedup table was not empty at its
    // first append), so it reads them until a window after that.
    let before = kv
        .get(Cf::Meta, keys::META_LEGACY_DEDUP_BEFORE)
        .unwrap()
        .expect("legacy horizon written");
    assert_eq!(keys::decode_u64("horizon", &before).unwrap(), now);
}

/// The insert hints are set through RocksDB's option string, which fails silently for
/// nothing but could be misspelt into another option: RocksDB's own record of the options
/// it opened with (the `OPTIONS-*` file) must name the hint prefix of exactly the column
/// families that have one.
#[test]
fn memtable_insert_hints_are_what_rocksdb_opened_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = RocksEngine::open(dir.path(), StorageConfig::default()).expect("open");
    drop(engine);
    let options_file = std::fs::read_dir(dir.path())
        .expect("list db dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("OPTIONS-") && !n.ends_with(".dbtmp"))
        })
        .max()
        .expect("RocksDB wrote an OPTIONS file");
    let text = std::fs::read_to_string(&options_file).expect("read OPTIONS");
    // Each column family's section starts with `[CFOptions "name"]`.
    let hint_of = |cf: Cf| -> Option<String> {
        let header = format!("[CFOptions \"{}\"]", cf.name());
        let section = text.split(&header).nth(1).expect("section of every cf");
        let section = section.split("\n[").next().unwrap_or(section);
        section
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("memtable_insert_with_hint_prefix_extractor="))
            .map(str::to_owned)
    };
    for cf in Cf::ALL {
        let expected = petrel_storage_rocks::options::insert_hint_len(cf)
            .map(|len| format!("rocksdb.FixedPrefix.{len}"));
        let found = hint_of(cf).filter(|v| v != "nullptr");
        assert_eq!(found, expected, "insert hint of {}", cf.name());
    }
}
