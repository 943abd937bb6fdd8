//! Writes the seed corpus of `sdk_frames` into `seeds/sdk_frames/`:
//! `cargo run --example make_seeds` from `sdk/fuzz`. Each seed is a chunk-size byte and
//! a server's byte stream of real frames answering the harness's deterministic requests
//! (rid 1: chatroom rejoin, rid 2: sync, rids 3–5: the first three outbox sends). Every
//! seed is played against the harness here, and what the app saw is printed.

use std::path::Path;

use bytes::BytesMut;
use petrel_proto::codec::FrameEncoder;
use petrel_proto::{Frame, pb};
use petrel_sdk::fuzzing::{Harness, ROOM, USER};

fn conv(kind: pb::ConversationKind, id: u64) -> Option<pb::ConversationId> {
    Some(pb::ConversationId {
        kind: kind as i32,
        id,
    })
}

fn text(t: &str) -> bytes::Bytes {
    petrel_proto::wire::encode_content(&pb::Content {
        body: Some(pb::content::Body::Text(pb::Text {
            text: t.into(),
            mentions: Vec::new(),
        })),
    })
}

fn push(kind: pb::ConversationKind, id: u64, seq: u64, sender: u64, cmid: u64) -> pb::MessagePush {
    pb::MessagePush {
        conversation: conv(kind, id),
        seq,
        sender,
        server_time_ms: 1_764_000_000_000 + seq,
        client_msg_id: cmid,
        content: text("hello"),
        sender_device: "phone".into(),
        recalled_by: 0,
        recalled_at_ms: 0,
        edited_at_ms: 0,
        ..Default::default()
    }
}

fn ack(rid: u32, cmid: u64, kind: pb::ConversationKind, id: u64, seq: u64) -> Frame {
    Frame::response(
        rid,
        pb::Ack {
            client_msg_id: cmid,
            conversation: conv(kind, id),
            seq,
            server_time_ms: 1_764_000_000_000,
            duplicate: false,
        },
    )
}

fn error(rid: u32, code: pb::ErrorCode) -> Frame {
    Frame::response(
        rid,
        pb::Error {
            code: code as i32,
            message: format!("{code:?}"),
            retry_after_ms: 50,
        },
    )
}

fn sync_page(rid: u32, messages: Vec<pb::MessagePush>, has_more: bool) -> Frame {
    Frame::response(
        rid,
        pb::SyncResponse {
            messages,
            inbox_cursor: 9,
            has_more,
            ..Default::default()
        },
    )
}

fn wire(chunk: u8, frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[chunk]);
    let encoder = FrameEncoder::default();
    for f in frames {
        encoder.encode(f, &mut buf).expect("seed frames encode");
    }
    buf.to_vec()
}

fn main() {
    use pb::ConversationKind::{Chatroom, Group, PublicAccount, Single};
    let joined = Frame::response(1, pb::ConversationOpResult::default());
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "session-sync-acks",
            wire(
                63,
                &[
                    joined.clone(),
                    sync_page(
                        2,
                        vec![push(Single, 202, 1, 202, 7), push(Single, 202, 2, 202, 8)],
                        false,
                    ),
                    ack(3, 1001, Single, 202, 3),
                    ack(4, 1002, Group, 9, 1),
                    ack(5, 1003, Chatroom, ROOM, 40),
                    ack(6, 1004, PublicAccount, 77, 1),
                ],
            ),
        ),
        (
            "pushes-out-of-order-and-duplicate",
            wire(
                5,
                &[
                    Frame::new(0, push(Single, 202, 2, 202, 8)),
                    Frame::new(0, push(Single, 202, 1, 202, 7)),
                    Frame::new(0, push(Single, 202, 1, 202, 7)),
                    Frame::new(0, push(Group, 9, 3, 303, 1)),
                    Frame::new(0, push(Chatroom, ROOM, 12, 303, 2)),
                    Frame::new(0, push(Single, 202, 3, USER, 1001)), // our own echo
                ],
            ),
        ),
        (
            "sync-pages-and-hole",
            wire(
                17,
                &[
                    sync_page(
                        2,
                        vec![push(Group, 9, 1, 303, 1), push(Group, 9, 3, 303, 3)],
                        true,
                    ),
                    ack(3, 1001, Single, 202, 1),
                    sync_page(6, vec![push(Group, 9, 4, 303, 4)], false),
                ],
            ),
        ),
        (
            "send-errors",
            wire(
                40,
                &[
                    error(3, pb::ErrorCode::RateLimited),
                    error(4, pb::ErrorCode::ShuttingDown),
                    error(5, pb::ErrorCode::InvalidRequest),
                    error(1, pb::ErrorCode::NotAMember),
                    error(2, pb::ErrorCode::Internal),
                ],
            ),
        ),
        (
            "kick-then-new-session",
            wire(
                31,
                &[
                    joined,
                    Frame::new(
                        0,
                        pb::Kick {
                            reason: pb::KickReason::Replaced as i32,
                            message: "another device".into(),
                            ..Default::default()
                        },
                    ),
                    // The new session's rejoin (6), sync (7) and sends (8–10).
                    sync_page(7, Vec::new(), false),
                    ack(8, 1001, Single, 202, 1),
                    ack(9, 1002, Group, 9, 2),
                ],
            ),
        ),
        (
            "unsolicited-frames",
            wire(
                9,
                &[
                    Frame::new(
                        0,
                        pb::Gap {
                            conversation: conv(Chatroom, ROOM),
                            from_seq: 3,
                            to_seq: 7,
                        },
                    ),
                    Frame::new(
                        0,
                        pb::ConversationEvent {
                            kind: pb::ConversationEventKind::Read as i32,
                            conversation: conv(Single, 202),
                            seq: 2,
                            until_ms: 0,
                            ..Default::default()
                        },
                    ),
                    Frame::new(0, pb::Pong::default()),
                    error(0, pb::ErrorCode::ServerBusy),
                    Frame::response(77, pb::RenewResult::default()),
                ],
            ),
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/sdk_frames");
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    for (name, bytes) in seeds {
        let mut harness = Harness::new();
        let chunk = usize::from(bytes[0] % 64) + 1;
        for piece in bytes[1..].chunks(chunk) {
            let _ = harness.receive(piece);
        }
        let events = harness.take_events();
        let count = |f: fn(&petrel_sdk::Event) -> bool| events.iter().filter(|e| f(e)).count();
        println!(
            "{name}: {} messages, {} acked, {} failed, outbox {}, sessions {}",
            count(|e| matches!(e, petrel_sdk::Event::Message(_))),
            count(|e| matches!(e, petrel_sdk::Event::Acked { .. })),
            count(|e| matches!(e, petrel_sdk::Event::SendFailed { .. })),
            harness.outbox_len(),
            harness.sessions()
        );
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
