//! Storage benchmarks (run by the lead in release on the 2-core box; numbers go to
//! docs/PERFORMANCE.md):
//! - 1:1 appends/s, hybrid diffusion, group commit (`SyncMode::Batch` + `CommitQueue`);
//! - appends/s to a 1,000-member group under write, read and hybrid diffusion;
//! - time to sync 1,000 messages from a cursor;
//! - time of a sync that finds nothing new, with one partition and with 16 (one inbox
//!   seek per partition);
//! - bytes handed to RocksDB per message for each mode (printed once per mode).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use petrel_storage::{
    AppendRequest, CommitQueue, CommitQueueConfig, ConversationKey, DiffusionMode, Engine, Request,
    StorageConfig, SyncMode, SyncRequest, UserId,
};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

const NOW: u64 = 1_700_000_000_000;
const PAYLOAD: &[u8] = &[b'x'; 200];

fn open(dir: &tempfile::TempDir, diffusion: DiffusionMode) -> RocksEngine {
    RocksEngine::open(
        dir.path(),
        StorageConfig {
            diffusion,
            sync: SyncMode::Batch,
            ..StorageConfig::default()
        },
    )
    .expect("open rocksdb")
}

fn append(sender: UserId, conversation: ConversationKey, cmid: u64) -> AppendRequest {
    AppendRequest {
        sender,
        sender_device: "bench".into(),
        client_msg_id: cmid,
        conversation,
        payload: Bytes::from_static(PAYLOAD),
        now_ms: NOW,
        refs: Default::default(),
    }
}

/// 1:1 appends through the group-commit queue, 1,024 in flight, 10,000 conversations.
fn one_to_one_group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(open(&dir, DiffusionMode::Hybrid));
    touch_all(&engine, 0..20_000);
    let queue =
        CommitQueue::start(Arc::clone(&engine), CommitQueueConfig::default()).expect("queue");
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut cmid = 0u64;
    const IN_FLIGHT: u64 = 1024;
    let mut g = c.benchmark_group("append_1to1_hybrid_group_commit");
    g.throughput(Throughput::Elements(IN_FLIGHT));
    g.bench_function("1024_in_flight", |b| {
        b.iter(|| {
            for _ in 0..IN_FLIGHT {
                cmid += 1;
                let a = UserId(cmid % 10_000);
                let peer = UserId(10_000 + cmid % 10_000);
                let req = Request::Append(append(a, ConversationKey::single(a, peer), cmid));
                queue.submit_to(req, cmid, tx.clone()).expect("submit");
            }
            for _ in 0..IN_FLIGHT {
                let (_, reply) = rx.recv().expect("completion");
                black_box(reply.expect("append"));
            }
        })
    });
    g.finish();
    report_bytes("1:1 hybrid", &engine);
}

/// Appends to one 1,000-member group (100 members active), 64 per durable batch.
fn group_1000(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_group_1000_members");
    g.throughput(Throughput::Elements(64));
    for (name, mode) in [
        ("write", DiffusionMode::Write),
        ("read", DiffusionMode::Read),
        ("hybrid", DiffusionMode::Hybrid),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        // Threshold above 1,000 so hybrid really mixes pointers and markers here.
        let engine = RocksEngine::open(
            dir.path(),
            StorageConfig {
                diffusion: mode,
                large_group_threshold: 2_000,
                ..StorageConfig::default()
            },
        )
        .expect("open");
        let members: Vec<UserId> = (2..=1000).map(UserId).collect();
        let group = engine
            .create_group(UserId(1), "bench", &members, NOW)
            .expect("group");
        touch_all(&engine, 1..=100);
        let mut cmid = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                let batch = (0..64)
                    .map(|_| {
                        cmid += 1;
                        Request::Append(append(UserId(1 + cmid % 100), group, cmid))
                    })
                    .collect();
                for r in engine.execute_batch(batch) {
                    black_box(r.expect("append"));
                }
            })
        });
        report_bytes(&format!("group of 1,000, {name}"), &engine);
    }
    g.finish();
}

/// The next sync request of a device of `reader` that has synced everything there is now
/// (one page of up to 1,000 messages): its inbox position and per-conversation cursors.
fn caught_up(engine: &RocksEngine, reader: UserId) -> SyncRequest {
    let first = engine
        .sync(&SyncRequest {
            user: reader,
            inbox: Default::default(),
            cursors: Vec::new(),
            limit: 1000,
            now_ms: NOW,
        })
        .expect("initial sync");
    assert!(!first.has_more, "the setup fits one page");
    SyncRequest {
        user: reader,
        inbox: first.inbox,
        cursors: first
            .conversations
            .iter()
            .map(|s| (s.key, s.last_seq))
            .collect(),
        limit: 1000,
        now_ms: NOW,
    }
}

/// One device syncs 1,000 new messages spread over 10 conversations from its cursor.
fn sync_1000(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(&dir, DiffusionMode::Hybrid);
    let reader = UserId(1);
    engine.touch_activity(reader, NOW).expect("touch");
    let convs: Vec<ConversationKey> = (2..12)
        .map(|p| ConversationKey::single(reader, UserId(p)))
        .collect();
    let mut cmid = 0u64;
    // Setup writes go in durable batches of 256 (one fsync each), not one fsync each.
    let mut fill = |engine: &RocksEngine, n: usize| {
        let requests: Vec<Request> = (0..n)
            .map(|i| {
                cmid += 1;
                let conv = convs[i % convs.len()];
                let peer = conv.peer_of(reader).expect("peer");
                Request::Append(append(peer, conv, cmid))
            })
            .collect();
        for chunk in requests.chunks(256) {
            for r in engine.execute_batch(chunk.to_vec()) {
                r.expect("append");
            }
        }
    };
    fill(&engine, 100);
    let req = caught_up(&engine, reader);
    fill(&engine, 1000);
    let mut g = c.benchmark_group("sync_from_cursor");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000_messages_10_conversations", |b| {
        b.iter_batched(
            || req.clone(),
            |r| {
                let page = engine.sync(&r).expect("sync");
                assert_eq!(page.messages.len(), 1000);
                black_box(page)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A known device's sync when nothing changed (what every reconnect of an up-to-date
/// device costs): one partition against the default 16. The reader has 50 chats.
fn sync_nothing_new(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_nothing_new_50_conversations");
    for partitions in [1u16, 16] {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = RocksEngine::open(
            dir.path(),
            StorageConfig {
                sync: SyncMode::Batch,
                partitions,
                ..StorageConfig::default()
            },
        )
        .expect("open rocksdb");
        let reader = UserId(1);
        let requests: Vec<Request> = (0..50u64)
            .map(|i| {
                let peer = UserId(100 + i);
                Request::Append(append(peer, ConversationKey::single(reader, peer), i + 1))
            })
            .collect();
        for r in engine.execute_batch(requests) {
            r.expect("append");
        }
        let req = caught_up(&engine, reader);
        g.bench_function(format!("{partitions}_partitions"), |b| {
            b.iter(|| {
                let page = engine.sync(&req).expect("sync");
                assert!(page.messages.is_empty());
                black_box(page)
            })
        });
    }
    g.finish();
}

/// Mark users active, in durable batches of 1,000.
fn touch_all(engine: &RocksEngine, users: impl Iterator<Item = u64>) {
    let requests: Vec<Request> = users
        .map(|u| Request::TouchActivity {
            user: UserId(u),
            now_ms: NOW,
        })
        .collect();
    for chunk in requests.chunks(1000) {
        for r in engine.execute_batch(chunk.to_vec()) {
            r.expect("touch");
        }
    }
}

fn report_bytes(label: &str, engine: &RocksEngine) {
    let s = engine.stats();
    if let Some(bytes) = s.append_bytes.checked_div(s.appends) {
        eprintln!(
            "{label}: {bytes} bytes/message, {:.1} inbox entries/message over {} appends",
            s.inbox_entries as f64 / s.appends as f64,
            s.appends
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(20);
    targets = one_to_one_group_commit, group_1000, sync_1000, sync_nothing_new
}
criterion_main!(benches);
