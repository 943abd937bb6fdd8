//! Rust heap allocations per 1:1 append on the server's storage path — the committer's
//! group commit over the RocksDB engine, a group of one at a time (the worst case: a
//! quiet server) — in the steady state. RocksDB's own C++ allocations (its write batch,
//! memtable arena) are outside Rust's allocator and not counted; dhat's testing mode
//! counts the rest.

use std::sync::Arc;

use bytes::Bytes;
use petrel_storage::{
    AppendRequest, Committer, ConversationKey, Request, StorageConfig, SyncMode, UserId,
};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn no_rust_allocation_per_one_to_one_append_through_the_committer() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        RocksEngine::open(
            dir.path(),
            StorageConfig {
                sync: SyncMode::None,
                ..StorageConfig::default()
            },
        )
        .unwrap(),
    );
    let mut committer: Committer<RocksEngine, u64> =
        Committer::start(engine, None, Arc::new(|| {})).unwrap();
    let device: Arc<str> = "phone".into();
    let payload = Bytes::from_static(b"\x0a\x05hello");
    let conv = ConversationKey::single(UserId(1), UserId(2));
    let mut batch = Vec::with_capacity(4);
    let mut append = |committer: &mut Committer<RocksEngine, u64>, id: u64| {
        batch.push((
            id,
            Request::Append(AppendRequest {
                sender: UserId(1 + id % 2),
                sender_device: Arc::clone(&device),
                client_msg_id: id,
                conversation: conv,
                payload: payload.clone(),
                now_ms: 1_764_000_000_000 + id,
                refs: Default::default(),
            }),
        ));
        let before = dhat::HeapStats::get().total_blocks;
        committer.commit(&mut batch);
        let mut released = 0;
        committer.take_ready(|_, r| {
            assert!(r.is_ok(), "{r:?}");
            released += 1;
        });
        assert_eq!(released, 1);
        dhat::HeapStats::get().total_blocks - before
    };
    for id in 1..=2_000 {
        append(&mut committer, id);
    }
    let n = 2_000;
    let allocs: u64 = (2_001..=2_000 + n)
        .map(|id| append(&mut committer, id))
        .sum();
    println!("storage path: {allocs} Rust allocations for {n} appends (one per group)");
    // Scratch buffers, pooled group vectors and inline recipients: nothing per append
    // (an occasional growth or a cache's rehash may show, never one per group).
    assert!(
        allocs * 20 <= n,
        "{allocs} allocations for {n} appends: something allocates per group"
    );
}
