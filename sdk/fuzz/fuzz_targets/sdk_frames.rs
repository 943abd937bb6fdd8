//! Fuzz target: bytes from a server through the SDK's connection-task frame handling
//! (`petrel_sdk::fuzzing::Harness`: `Task::begin` / `Task::on_frame` over an in-memory
//! store with a known outbox, reconnecting as the task does when a session ends).
//!
//! The first byte picks a chunk size (split frames are explored); the rest is the server's
//! byte stream. After every chunk:
//! - nothing panics, and everything the SDK queued for the server decodes as frames;
//! - messages of persisted conversations reach the app once each, in increasing seq order
//!   per conversation (the store's exactly-once, in-order rule);
//! - `Acked` and `SendFailed` name only queued sends, each at most once and never both,
//!   and the outbox shrinks by exactly those: a send leaves it only with an event;
//! - sends in flight stay within the send window, and requests awaiting an answer are
//!   bounded (window + one rejoin + one sync).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use petrel_sdk::Event;
use petrel_sdk::fuzzing::{Harness, OUTBOX, SEND_WINDOW};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk_seed % 64) + 1;
    let mut harness = Harness::new();
    let mut delivered: BTreeMap<(i32, u64), u64> = BTreeMap::new();
    let mut acked = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let queued: BTreeSet<u64> = OUTBOX.iter().map(|(id, _)| *id).collect();
    for piece in stream.chunks(chunk) {
        let _ = harness.receive(piece);
        harness.take_sent();
        for event in harness.take_events() {
            match event {
                Event::Message(m) if m.conversation.is_persisted() => {
                    let key = (m.conversation.kind as i32, m.conversation.id);
                    let last = delivered.entry(key).or_insert(0);
                    assert!(m.seq > *last, "seq {} delivered after {}", m.seq, *last);
                    *last = m.seq;
                }
                Event::Acked { client_msg_id, .. } => {
                    assert!(
                        queued.contains(&client_msg_id),
                        "ack of a send never queued"
                    );
                    assert!(acked.insert(client_msg_id), "acked twice: {client_msg_id}");
                    assert!(!failed.contains(&client_msg_id), "acked after it failed");
                }
                Event::SendFailed { client_msg_id, .. } => {
                    assert!(
                        queued.contains(&client_msg_id),
                        "failure of a send never queued"
                    );
                    assert!(
                        failed.insert(client_msg_id),
                        "failed twice: {client_msg_id}"
                    );
                    assert!(!acked.contains(&client_msg_id), "failed after it was acked");
                }
                _ => {}
            }
        }
        assert_eq!(
            harness.outbox_len(),
            OUTBOX.len() - acked.len() - failed.len(),
            "the outbox changed without an Acked or SendFailed event"
        );
        assert!(harness.in_flight() <= SEND_WINDOW);
        assert!(
            harness.pending() <= SEND_WINDOW + 2,
            "{} pending",
            harness.pending()
        );
    }
});
