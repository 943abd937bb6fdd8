//! RocksDB-only maintenance: compaction drops expired dedup and revocation entries and
//! nothing else, judging expiry by the engine's clock (the latest request time), not by
//! the wall clock — the test runs in 2023.

use bytes::Bytes;
use petrel_storage::cf::Cf;
use petrel_storage::keys;
use petrel_storage::kv::Kv;
use petrel_storage::{
    AppendRequest, ConversationKey, Engine, RocksEngine, StorageConfig, TokenId, UserId,
};

#[test]
fn compaction_expiry_follows_request_time_not_wall_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = RocksEngine::open(dir.path(), StorageConfig::default()).expect("open");
    let conv = ConversationKey::single(UserId(1), UserId(2));
    let now = 1_700_000_000_000u64;
    let two_days = 2 * petrel_storage::config::DAY_MS;
    for (cmid, at) in [(1u64, now - two_days), (2, now)] {
        engine
            .append(AppendRequest {
                sender: UserId(1),
                sender_device: "d".into(),
                client_msg_id: cmid,
                conversation: conv,
                payload: Bytes::from_static(b"m"),
                now_ms: at,
            })
            .expect("append");
    }
    engine
        .revoke_token(TokenId([1; 16]), now - 1)
        .expect("revoke");
    engine
        .revoke_token(TokenId([2; 16]), now + two_days)
        .expect("revoke");

    let kv = engine.kv();
    assert!(kv.get(Cf::Dedup, &keys::u64_u64(1, 1)).unwrap().is_some());
    kv.compact(Cf::Dedup).expect("compact dedup");
    kv.compact(Cf::Revoked).expect("compact revoked");
    kv.compact(Cf::Messages).expect("compact messages");

    assert!(
        kv.get(Cf::Dedup, &keys::u64_u64(1, 1)).unwrap().is_none(),
        "expired dedup kept"
    );
    assert!(
        kv.get(Cf::Dedup, &keys::u64_u64(1, 2)).unwrap().is_some(),
        "live dedup dropped"
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
        engine.history(UserId(2), conv, u64::MAX, 10).unwrap().len(),
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
        })
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.seq, 2);
}
