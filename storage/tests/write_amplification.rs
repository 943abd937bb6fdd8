//! Bytes handed to the backend per message, per diffusion mode, for a 1,000-member
//! group (the logical write amplification the pointer-vs-copy choice rests on). Printed
//! with `--nocapture`; asserted to be ordered as the design predicts.

use bytes::Bytes;
use petrel_storage::{
    AppendRequest, DiffusionMode, Engine, MemEngine, StorageConfig, SyncMode, UserId,
};

const NOW: u64 = 1_700_000_000_000;
const PAYLOAD: usize = 250;

/// Bytes per message and inbox entries per message for 100 appends to a 1,000-member
/// group in which the first `active` members are active.
fn measure(diffusion: DiffusionMode, threshold: usize, active: u64) -> (u64, u64) {
    let e = MemEngine::new(StorageConfig {
        diffusion,
        sync: SyncMode::None,
        large_group_threshold: threshold,
        ..StorageConfig::default()
    });
    let members: Vec<UserId> = (2..=1000).map(UserId).collect();
    let g = e.create_group(UserId(1), "big", &members, NOW).unwrap();
    for u in 1..=active {
        e.touch_activity(UserId(u), NOW).unwrap();
    }
    let before = e.stats();
    let n = 100;
    for cmid in 0..n {
        e.append(AppendRequest {
            sender: UserId(1),
            sender_device: "phone".into(),
            client_msg_id: cmid,
            conversation: g,
            payload: Bytes::from(vec![7u8; PAYLOAD]),
            now_ms: NOW,
            refs: Default::default(),
        })
        .unwrap();
    }
    let after = e.stats();
    (
        (after.append_bytes - before.append_bytes) / n,
        (after.inbox_entries - before.inbox_entries) / n,
    )
}

#[test]
fn bytes_per_message_by_mode() {
    let (write, write_entries) = measure(DiffusionMode::Write, 500, 1000);
    let (hybrid_small, _) = measure(DiffusionMode::Hybrid, 5000, 100);
    let (hybrid_large, hybrid_entries) = measure(DiffusionMode::Hybrid, 500, 1000);
    let (read, read_entries) = measure(DiffusionMode::Read, 500, 1000);
    println!("1,000-member group, {PAYLOAD}-byte payload, bytes per message:");
    println!("  write  : {write} ({write_entries} inbox entries)");
    println!("  hybrid (group under threshold, 10% active): {hybrid_small}");
    println!("  hybrid (group over threshold): {hybrid_large} ({hybrid_entries} inbox entries)");
    println!("  read   : {read} ({read_entries} inbox entries)");
    // Write diffusion: one 42-byte pointer entry per member plus one copy of the message.
    assert_eq!(write_entries, 1000);
    assert!(write > 1000 * 42);
    // Read diffusion writes one marker per member only for the first message until read.
    assert_eq!(read_entries, 10);
    assert!(read < write / 10);
    assert!(hybrid_small < write && hybrid_small > read);
    assert_eq!(hybrid_large, read);
}
