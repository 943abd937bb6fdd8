//! Sample frames shared by the proto crate's tests and benchmarks.
#![allow(dead_code)]

use petrel_proto::pb::{self, content};
use petrel_proto::{Body, Frame, FrameType};

/// A conversation id.
pub fn conv(kind: pb::ConversationKind, id: u64) -> Option<pb::ConversationId> {
    Some(pb::ConversationId {
        kind: kind as i32,
        id,
    })
}

/// Text content, encoded as frames carry it.
pub fn text(s: &str) -> bytes::Bytes {
    petrel_proto::wire::encode_content(&pb::Content {
        body: Some(content::Body::Text(pb::Text {
            text: s.to_owned(),
            mentions: vec![],
        })),
    })
}

/// A body of type `t`, filled from `n` (numbers) and `s` (strings) so that generated
/// frames differ in content and length.
pub fn body_for(t: FrameType, n: u64, s: &str) -> Body {
    use pb::ConversationKind::*;
    let media = || pb::Media {
        uri: format!("https://media.example/{s}"),
        size: n,
        mime_type: "image/jpeg".into(),
        thumbnail_base64: "AAEC".into(),
        thumbnail_mime_type: "image/jpeg".into(),
    };
    match t {
        FrameType::Login => pb::Login {
            token: s.into(),
            user_id: n,
            device_id: format!("dev-{s}"),
            platform: pb::Platform::Ios as i32,
            client_version: "test/1".into(),
            attempt: 0,
        }
        .into(),
        FrameType::RenewToken => pb::RenewToken {}.into(),
        FrameType::Logout => pb::Logout {
            revoke_token: n.is_multiple_of(2),
        }
        .into(),
        FrameType::Ping => pb::Ping { client_time_ms: n }.into(),
        FrameType::SendMessage => pb::SendMessage {
            client_msg_id: n,
            conversation: conv(Group, n / 3),
            content: petrel_proto::wire::encode_content(&pb::Content {
                body: Some(match n % 5 {
                    0 => content::Body::Text(pb::Text {
                        text: s.into(),
                        mentions: vec![n, n + 1],
                    }),
                    1 => content::Body::Image(pb::Image {
                        media: Some(media()),
                        width: 640,
                        height: 480,
                    }),
                    2 => content::Body::Emoji(pb::Emoji {
                        code: s.into(),
                        pack: String::new(),
                        media: None,
                    }),
                    3 => content::Body::Voice(pb::Voice {
                        media: Some(media()),
                        duration_ms: 3_000,
                    }),
                    _ => content::Body::Video(pb::Video {
                        media: Some(media()),
                        width: 1280,
                        height: 720,
                        duration_ms: 10_000,
                    }),
                }),
            }),
            ..Default::default()
        }
        .into(),
        FrameType::SyncRequest => pb::SyncRequest {
            inbox_cursor: n,
            cursors: vec![pb::Cursor {
                conversation: conv(Single, n),
                after_seq: n / 2,
            }],
            limit: 100,
            inbox_position: Vec::new(),
        }
        .into(),
        FrameType::HistoryRequest => pb::HistoryRequest {
            conversation: conv(PublicAccount, n),
            before_seq: n,
            limit: 20,
        }
        .into(),
        FrameType::ConversationOp => pb::ConversationOp {
            op: Some(pb::conversation_op::Op::CreateGroup(pb::CreateGroup {
                name: s.into(),
                members: vec![n, n + 1, n + 2],
            })),
        }
        .into(),
        FrameType::LoginResult => pb::LoginResult {
            user_id: n,
            session_id: n + 1,
            server_time_ms: n + 2,
            heartbeat_interval_s: 50,
            token_expires_at_ms: n + 3,
        }
        .into(),
        FrameType::RenewResult => pb::RenewResult {
            token: s.into(),
            expires_at_ms: n,
        }
        .into(),
        FrameType::Pong => pb::Pong {
            client_time_ms: n,
            server_time_ms: n + 1,
        }
        .into(),
        FrameType::Error => pb::Error {
            code: pb::ErrorCode::RateLimited as i32,
            message: s.into(),
            retry_after_ms: 250,
        }
        .into(),
        FrameType::Kick => pb::Kick {
            reason: pb::KickReason::Replaced as i32,
            message: s.into(),
            ..Default::default()
        }
        .into(),
        FrameType::Ack => pb::Ack {
            client_msg_id: n,
            conversation: conv(Single, n + 1),
            seq: n + 2,
            server_time_ms: n + 3,
            duplicate: n % 2 == 1,
        }
        .into(),
        FrameType::MessagePush => push(n, s).into(),
        FrameType::SyncResponse => pb::SyncResponse {
            messages: vec![push(n, s), push(n + 1, s)],
            has_more: true,
            inbox_cursor: n,
            conversations: vec![pb::ConversationState {
                conversation: conv(Group, n),
                last_seq: n + 1,
                read_seq: n,
                first_seq: n / 2,
                ..Default::default()
            }],
            first_seq: n / 3,
            inbox_position: Vec::new(),
        }
        .into(),
        FrameType::ConversationOpResult => pb::ConversationOpResult {
            conversation: conv(Chatroom, n),
            members: vec![pb::Member {
                user_id: n,
                role: pb::Role::Owner as i32,
            }],
            recent: vec![push(n, s)],
            read_count: None,
        }
        .into(),
        FrameType::ConversationEvent => pb::ConversationEvent {
            conversation: conv(Group, n),
            kind: pb::ConversationEventKind::MembersAdded as i32,
            actor: n,
            users: vec![n + 1],
            role: pb::Role::Unspecified as i32,
            seq: 0,
            until_ms: 0,
        }
        .into(),
        FrameType::Gap => pb::Gap {
            conversation: conv(Chatroom, n),
            from_seq: n,
            to_seq: n + 9,
        }
        .into(),
        FrameType::Typing => pb::Typing {
            conversation: conv(Group, n),
            typing: n.is_multiple_of(2),
        }
        .into(),
        FrameType::TypingNotice => pb::TypingNotice {
            conversation: conv(Group, n),
            user: n + 1,
            typing: n % 2 == 1,
            expires_ms: 6_000,
        }
        .into(),
    }
}

/// A text message push.
pub fn push(n: u64, s: &str) -> pb::MessagePush {
    pb::MessagePush {
        conversation: conv(pb::ConversationKind::Group, n),
        seq: n,
        sender: n + 7,
        server_time_ms: 1_700_000_000_000 + n,
        client_msg_id: n,
        content: text(s),
        sender_device: "phone".into(),
        recalled_by: 0,
        recalled_at_ms: 0,
        edited_at_ms: 0,
        ..Default::default()
    }
}

/// One frame of every type.
pub fn one_of_each() -> Vec<Frame> {
    FrameType::ALL
        .iter()
        .enumerate()
        .map(|(i, &t)| Frame::new(i as u32 + 1, body_for(t, 1000 + i as u64, "hello, petrel")))
        .collect()
}
