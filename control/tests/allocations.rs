//! Heap allocations the control plane makes per 1:1 message in the steady state: the
//! `SendMessage` event, the append it asks storage for, the completion, the ack and the
//! push. Storage itself (here the in-memory engine) is not counted; dhat's testing mode
//! counts the blocks.

use std::time::Duration;

use petrel_control::token::{self, TokenSpec};
use petrel_control::{
    Action, Config, ConnId, Control, Event, KeyRing, RateLimit, Ticket, Timestamp,
};
use petrel_proto::{Frame, pb};
use petrel_storage::{Engine, MemEngine, Request, StorageConfig, SyncMode};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Runs `f`, adding the heap blocks it allocated to `count`.
fn counted<T>(count: &mut u64, f: impl FnOnce() -> T) -> T {
    let before = dhat::HeapStats::get().total_blocks;
    let out = f();
    *count += dhat::HeapStats::get().total_blocks - before;
    out
}

/// Hands every storage request to the in-memory engine (not counted) and its reply back
/// to the control plane (counted), until no request is left. `done` is the caller's,
/// with room enough, so the harness allocates nothing in the counted parts.
fn drain(
    control: &mut Control,
    storage: &MemEngine,
    now: Timestamp,
    done: &mut Vec<(Ticket, Request)>,
    allocs: &mut u64,
) {
    loop {
        counted(allocs, || {
            while let Some(action) = control.poll_action() {
                if let Action::Storage { ticket, request } = action {
                    done.push((ticket, request));
                }
            }
        });
        if done.is_empty() {
            return;
        }
        for (ticket, request) in done.drain(..) {
            let result = storage.execute(request);
            counted(allocs, || {
                control.handle(now, Event::Storage { ticket, result });
            });
        }
    }
}

#[test]
fn no_allocation_per_one_to_one_message_in_the_control_plane() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let keys = KeyRing::single("t", &[7; 32]).unwrap();
    let now = Timestamp(1_764_000_000_000);
    let config = Config {
        rate_limit: RateLimit {
            burst: 0,
            per_second: 0,
        },
        ..Config::default()
    };
    let mut control = Control::new(config, keys.clone(), now);
    let storage = MemEngine::new(StorageConfig {
        sync: SyncMode::None,
        ..StorageConfig::default()
    });
    let mut done = Vec::with_capacity(64);
    let mut allocs = 0u64;
    // The start-up reads ("server is starting" until they are answered).
    drain(&mut control, &storage, now, &mut done, &mut allocs);
    let conns = [ConnId::new(0, 1), ConnId::new(0, 2)];
    for (user, conn) in [(1u64, conns[0]), (2, conns[1])] {
        let token = token::mint(
            &keys,
            &TokenSpec {
                user,
                device: "phone",
                platform: pb::Platform::Ios,
                issued_at: now,
                ttl: Duration::from_secs(3600),
                token_id: [user as u8; 16],
            },
        )
        .unwrap()
        .token;
        control.handle(now, Event::Opened { conn });
        let login = pb::Login {
            token,
            user_id: user,
            device_id: "phone".into(),
            platform: pb::Platform::Ios as i32,
            client_version: "t".into(),
            attempt: 0,
        };
        control.handle(
            now,
            Event::Frame {
                conn,
                frame: Frame::new(1, login),
            },
        );
        drain(&mut control, &storage, now, &mut done, &mut allocs);
    }
    assert_eq!(control.session_count(), 2, "both users logged in");
    let content = petrel_proto::wire::encode_content(&pb::Content {
        body: Some(pb::content::Body::Text(pb::Text {
            text: "a short chat message of typical length".into(),
            mentions: Vec::new(),
        })),
    });
    let mut send = |control: &mut Control, id: u64, allocs: &mut u64| {
        // Built outside the count: the transport decodes it from the wire.
        let frame = Frame::new(
            2,
            pb::SendMessage {
                client_msg_id: id,
                conversation: Some(pb::ConversationId {
                    kind: pb::ConversationKind::Single as i32,
                    id: 2,
                }),
                content: content.clone(),
                ..Default::default()
            },
        );
        counted(allocs, || {
            control.handle(
                now,
                Event::Frame {
                    conn: conns[0],
                    frame,
                },
            );
        });
        drain(control, &storage, now, &mut done, allocs);
    };
    // Warm-up: maps, queues and scratch buffers reach their steady size.
    for id in 1..=2_000 {
        send(&mut control, id, &mut allocs);
    }
    allocs = 0;
    let n = 2_000;
    for id in 2_001..=2_000 + n {
        send(&mut control, id, &mut allocs);
    }
    // Frames are split off a shared 64 KiB encode buffer: a new one (two blocks: the
    // buffer and its shared header) every few hundred frames, never one per message.
    println!("control plane: {allocs} allocations for {n} 1:1 messages");
    assert!(
        allocs * 20 <= n,
        "{allocs} allocations for {n} messages: something allocates per message"
    );
}
