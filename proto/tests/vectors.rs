//! Golden test vectors: `tests/vectors/frames.txt` holds hex frames with their meaning so
//! a client written in another language can check its encoder and decoder against them.
//!
//! This test renders the file from the list below and compares it with the committed copy,
//! then decodes every vector from the file. After a deliberate protocol change, regenerate
//! with `PETREL_BLESS_VECTORS=1 cargo test -p petrel-proto --test vectors` and review the
//! diff.

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::BytesMut;
use petrel_proto::codec::FrameEncoder;
use petrel_proto::header::HEADER_LEN;
use petrel_proto::pb::{self, ConversationKind};
use petrel_proto::{Frame, FrameDecoder, FrameError};

struct Valid {
    name: &'static str,
    meaning: &'static str,
    frame: Frame,
}

struct Invalid {
    name: &'static str,
    meaning: &'static str,
    hex: &'static str,
    error: FrameError,
}

fn valid() -> Vec<Valid> {
    vec![
        Valid {
            name: "ping",
            meaning: "Ping, request id 1, no flags. Body: client_time_ms = 1700000000000.",
            frame: Frame::new(
                1,
                pb::Ping {
                    client_time_ms: 1_700_000_000_000,
                },
            ),
        },
        Valid {
            name: "pong",
            meaning: "Pong answering request 1 (flags = RESPONSE). Body: client_time_ms = \
                      1700000000000, server_time_ms = 1700000000005.",
            frame: Frame::response(
                1,
                pb::Pong {
                    client_time_ms: 1_700_000_000_000,
                    server_time_ms: 1_700_000_000_005,
                },
            ),
        },
        Valid {
            name: "login",
            meaning: "Login, request id 2. Body: token = \"tok\", user_id = 42, device_id = \
                      \"phone-1\", platform = PLATFORM_IOS (1), client_version = \"sdk/1\".",
            frame: Frame::new(
                2,
                pb::Login {
                    token: "tok".into(),
                    user_id: 42,
                    device_id: "phone-1".into(),
                    platform: pb::Platform::Ios as i32,
                    client_version: "sdk/1".into(),
                    attempt: 0,
                },
            ),
        },
        Valid {
            name: "renew_token",
            meaning: "RenewToken, request id 3, empty body (body length 0).",
            frame: Frame::new(3, pb::RenewToken {}),
        },
        Valid {
            name: "send_text_single",
            meaning: "SendMessage, request id 4. Body: client_msg_id = 1001, conversation = \
                      {kind = CONVERSATION_KIND_SINGLE (1), id = 43 (the peer)}, content = text \
                      \"hi\".",
            frame: Frame::new(
                4,
                pb::SendMessage {
                    client_msg_id: 1001,
                    conversation: common::conv(ConversationKind::Single, 43),
                    content: common::text("hi"),
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "send_image_group",
            meaning: "SendMessage, request id 5. Body: client_msg_id = 1002, conversation = \
                      {GROUP (2), 7}, content = image {media = {uri = \"https://m.example/a.jpg\", \
                      size = 2048, mime_type = \"image/jpeg\", thumbnail_base64 = \"AAEC\", \
                      thumbnail_mime_type = \"image/jpeg\"}, width = 640, height = 480}.",
            frame: Frame::new(
                5,
                pb::SendMessage {
                    client_msg_id: 1002,
                    conversation: common::conv(ConversationKind::Group, 7),
                    content: petrel_proto::wire::encode_content(&pb::Content {
                        body: Some(pb::content::Body::Image(pb::Image {
                            media: Some(pb::Media {
                                uri: "https://m.example/a.jpg".into(),
                                size: 2048,
                                mime_type: "image/jpeg".into(),
                                thumbnail_base64: "AAEC".into(),
                                thumbnail_mime_type: "image/jpeg".into(),
                            }),
                            width: 640,
                            height: 480,
                        })),
                    }),
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "ack",
            meaning: "Ack answering request 4 (flags = RESPONSE). Body: client_msg_id = 1001, \
                      conversation = {SINGLE, 43}, seq = 17, server_time_ms = 1700000000123, \
                      duplicate = false (omitted).",
            frame: Frame::response(
                4,
                pb::Ack {
                    client_msg_id: 1001,
                    conversation: common::conv(ConversationKind::Single, 43),
                    seq: 17,
                    server_time_ms: 1_700_000_000_123,
                    duplicate: false,
                },
            ),
        },
        Valid {
            name: "message_push",
            meaning: "MessagePush, request id 0 (unsolicited). Body: conversation = {SINGLE, 42} \
                      (from the receiver's side: the sender), seq = 17, sender = 42, \
                      server_time_ms = 1700000000123, client_msg_id = 1001, content = text \"hi\", \
                      sender_device = \"phone-1\".",
            frame: Frame::new(
                0,
                pb::MessagePush {
                    conversation: common::conv(ConversationKind::Single, 42),
                    seq: 17,
                    sender: 42,
                    server_time_ms: 1_700_000_000_123,
                    client_msg_id: 1001,
                    content: common::text("hi"),
                    sender_device: "phone-1".into(),
                    recalled_by: 0,
                    recalled_at_ms: 0,
                    edited_at_ms: 0,
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "send_reply_with_mentions",
            meaning: "SendMessage, request id 6. Body: client_msg_id = 1003, conversation = \
                      {GROUP (2), 7}, content = text \"@5 @9 yes\" (mentions 5 and 9 in the \
                      text too, for display), reply_to = 3, mentions = [5, 9] (packed).",
            frame: Frame::new(
                6,
                pb::SendMessage {
                    client_msg_id: 1003,
                    conversation: common::conv(ConversationKind::Group, 7),
                    content: petrel_proto::wire::encode_content(&pb::Content {
                        body: Some(pb::content::Body::Text(pb::Text {
                            text: "@5 @9 yes".into(),
                            mentions: vec![5, 9],
                        })),
                    }),
                    reply_to: 3,
                    mentions: vec![5, 9],
                },
            ),
        },
        Valid {
            name: "message_push_reply_with_mentions",
            meaning: "MessagePush, request id 0 (unsolicited). Body: conversation = {GROUP, 7}, \
                      seq = 4, sender = 42, server_time_ms = 1700000000123, client_msg_id = 1003, \
                      content = text \"yes\", sender_device = \"phone-1\", reply_to = 3, \
                      mentions = [5, 9] (packed).",
            frame: Frame::new(
                0,
                pb::MessagePush {
                    conversation: common::conv(ConversationKind::Group, 7),
                    seq: 4,
                    sender: 42,
                    server_time_ms: 1_700_000_000_123,
                    client_msg_id: 1003,
                    content: common::text("yes"),
                    sender_device: "phone-1".into(),
                    reply_to: 3,
                    mentions: vec![5, 9],
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "message_push_recalled",
            meaning: "MessagePush, request id 0 (unsolicited), as a sync or history page carries a \
                      recalled message. Body: conversation = {GROUP, 7}, seq = 3, sender = 42, \
                      server_time_ms = 1700000000123, client_msg_id = 1002, no content, \
                      sender_device = \"phone-1\", recalled_by = 5, recalled_at_ms = \
                      1700000060000.",
            frame: Frame::new(
                0,
                pb::MessagePush {
                    conversation: common::conv(ConversationKind::Group, 7),
                    seq: 3,
                    sender: 42,
                    server_time_ms: 1_700_000_000_123,
                    client_msg_id: 1002,
                    content: bytes::Bytes::new(),
                    sender_device: "phone-1".into(),
                    recalled_by: 5,
                    recalled_at_ms: 1_700_000_060_000,
                    edited_at_ms: 0,
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "recall_message",
            meaning: "ConversationOp, request id 11. Body: op = recall_message {conversation = \
                      {SINGLE, 42}, seq = 17}: recall message 17 of the 1:1 chat with user 42.",
            frame: Frame::new(
                11,
                pb::ConversationOp {
                    op: Some(pb::conversation_op::Op::RecallMessage(pb::RecallMessage {
                        conversation: common::conv(ConversationKind::Single, 42),
                        seq: 17,
                    })),
                },
            ),
        },
        Valid {
            name: "edit_message",
            meaning: "ConversationOp, request id 12. Body: op = edit_message {conversation = \
                      {GROUP, 7}, seq = 3, content = text \"hi\"}: replace the content of \
                      message 3 of group 7.",
            frame: Frame::new(
                12,
                pb::ConversationOp {
                    op: Some(pb::conversation_op::Op::EditMessage(pb::EditMessage {
                        conversation: common::conv(ConversationKind::Group, 7),
                        seq: 3,
                        content: Some(pb::Content {
                            body: Some(pb::content::Body::Text(pb::Text {
                                text: "hi".into(),
                                mentions: vec![],
                            })),
                        }),
                    })),
                },
            ),
        },
        Valid {
            name: "message_push_edited",
            meaning: "MessagePush, request id 0 (unsolicited): the new version of an edited \
                      message. Body: conversation = {SINGLE, 42}, seq = 17, sender = 42, \
                      server_time_ms = 1700000000123, client_msg_id = 1001, content = text \
                      \"hi\", sender_device = \"phone-1\", edited_at_ms = 1700000090000.",
            frame: Frame::new(
                0,
                pb::MessagePush {
                    conversation: common::conv(ConversationKind::Single, 42),
                    seq: 17,
                    sender: 42,
                    server_time_ms: 1_700_000_000_123,
                    client_msg_id: 1001,
                    content: common::text("hi"),
                    sender_device: "phone-1".into(),
                    recalled_by: 0,
                    recalled_at_ms: 0,
                    edited_at_ms: 1_700_000_090_000,
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "read_count",
            meaning: "ConversationOp, request id 13. Body: op = read_count {conversation = \
                      {GROUP, 7}, seq = 3}: how many members have read message 3.",
            frame: Frame::new(
                13,
                pb::ConversationOp {
                    op: Some(pb::conversation_op::Op::ReadCount(pb::ReadCount {
                        conversation: common::conv(ConversationKind::Group, 7),
                        seq: 3,
                    })),
                },
            ),
        },
        Valid {
            name: "read_count_result",
            meaning: "ConversationOpResult answering request 13 (flags = RESPONSE). Body: \
                      conversation = {GROUP, 7}, read_count = {seq = 3, read = 37, of = 500}: \
                      read by 37 of the 500 other members.",
            frame: Frame::response(
                13,
                pb::ConversationOpResult {
                    conversation: common::conv(ConversationKind::Group, 7),
                    members: vec![],
                    recent: vec![],
                    read_count: Some(pb::ReadCountResult {
                        seq: 3,
                        read: 37,
                        of: 500,
                    }),
                },
            ),
        },
        Valid {
            name: "conversation_event_recalled",
            meaning: "ConversationEvent, request id 0 (unsolicited). Body: conversation = \
                      {SINGLE (1), 42}, kind = CONVERSATION_EVENT_KIND_RECALLED (9), actor = 42, \
                      seq = 17: user 42 recalled message 17 of this 1:1 chat.",
            frame: Frame::new(
                0,
                pb::ConversationEvent {
                    conversation: common::conv(ConversationKind::Single, 42),
                    kind: pb::ConversationEventKind::Recalled as i32,
                    actor: 42,
                    users: vec![],
                    role: 0,
                    seq: 17,
                    until_ms: 0,
                },
            ),
        },
        Valid {
            name: "error_rate_limited",
            meaning: "Error answering request 9 (flags = RESPONSE). Body: code = \
                      ERROR_CODE_RATE_LIMITED (34), message = \"slow down\", retry_after_ms = 250.",
            frame: Frame::response(
                9,
                pb::Error {
                    code: pb::ErrorCode::RateLimited as i32,
                    message: "slow down".into(),
                    retry_after_ms: 250,
                },
            ),
        },
        Valid {
            name: "kick_replaced",
            meaning: "Kick, request id 0. Body: reason = KICK_REASON_REPLACED (1), message = \
                      \"logged in elsewhere\".",
            frame: Frame::new(
                0,
                pb::Kick {
                    reason: pb::KickReason::Replaced as i32,
                    message: "logged in elsewhere".into(),
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "sync_request",
            meaning: "SyncRequest, request id 6. Body: inbox_cursor = 0, cursors = [{conversation \
                      = {GROUP, 7}, after_seq = 100}], limit = 200.",
            frame: Frame::new(
                6,
                pb::SyncRequest {
                    inbox_cursor: 0,
                    cursors: vec![pb::Cursor {
                        conversation: common::conv(ConversationKind::Group, 7),
                        after_seq: 100,
                    }],
                    limit: 200,
                    inbox_position: Vec::new(),
                },
            ),
        },
        Valid {
            name: "sync_response_has_more",
            meaning: "SyncResponse answering request 6 (flags = RESPONSE). Body: messages = \
                      [MessagePush {conversation = {GROUP, 7}, seq = 101, sender = 42, \
                      server_time_ms = 1700000000123, client_msg_id = 1002, content = text \
                      \"hi\", sender_device = \"phone-1\"}], has_more = true, inbox_cursor = \
                      9, conversations = [{conversation = {GROUP, 7}, last_seq = 140, read_seq \
                      = 100}]. The follow-up SyncRequest sends inbox_cursor = 9 and the cursor \
                      {GROUP, 7} after_seq = 101.",
            frame: Frame::response(
                6,
                pb::SyncResponse {
                    messages: vec![pb::MessagePush {
                        conversation: common::conv(ConversationKind::Group, 7),
                        seq: 101,
                        sender: 42,
                        server_time_ms: 1_700_000_000_123,
                        client_msg_id: 1002,
                        content: common::text("hi"),
                        sender_device: "phone-1".into(),
                        recalled_by: 0,
                        recalled_at_ms: 0,
                        edited_at_ms: 0,
                        ..Default::default()
                    }],
                    has_more: true,
                    inbox_cursor: 9,
                    conversations: vec![pb::ConversationState {
                        conversation: common::conv(ConversationKind::Group, 7),
                        last_seq: 140,
                        read_seq: 100,
                        first_seq: 0,
                        ..Default::default()
                    }],
                    first_seq: 0,
                    inbox_position: Vec::new(),
                },
            ),
        },
        Valid {
            name: "sync_response_trimmed",
            meaning: "SyncResponse answering request 7 (flags = RESPONSE). Body: no messages, \
                      has_more = false, inbox_cursor = 31, conversations = [{conversation = \
                      {GROUP, 7}, last_seq = 140, read_seq = 100, first_seq = 120}]: retention \
                      removed seqs 1..=119 of group 7, so a client holding up to 100 shows \
                      \"earlier messages are no longer available\" and continues from 120.",
            frame: Frame::response(
                7,
                pb::SyncResponse {
                    messages: vec![],
                    has_more: false,
                    inbox_cursor: 31,
                    conversations: vec![pb::ConversationState {
                        conversation: common::conv(ConversationKind::Group, 7),
                        last_seq: 140,
                        read_seq: 100,
                        first_seq: 120,
                        ..Default::default()
                    }],
                    first_seq: 0,
                    inbox_position: Vec::new(),
                },
            ),
        },
        Valid {
            name: "sync_response_partitioned",
            meaning: "SyncResponse answering request 9 (flags = RESPONSE) from a server whose \
                      database has partitions. Body: no messages, has_more = false, \
                      inbox_cursor = 0, inbox_position = 01 05 04 00 07 00 83 01 (an opaque \
                      token — version 1, database epoch 5, four partitions at 0, 7, 0 and 131 — \
                      that the client sends back as is in its next SyncRequest's \
                      inbox_position).",
            frame: Frame::response(
                9,
                pb::SyncResponse {
                    messages: vec![],
                    has_more: false,
                    inbox_cursor: 0,
                    conversations: vec![],
                    first_seq: 0,
                    inbox_position: vec![1, 5, 4, 0, 7, 0, 0x83, 1],
                },
            ),
        },
        Valid {
            name: "history_response_reaches_trimmed_start",
            meaning: "SyncResponse answering a HistoryRequest, request 8 (flags = RESPONSE). \
                      Body: messages = [MessagePush {conversation = {GROUP, 7}, seq = 120, \
                      sender = 42, server_time_ms = 1700000000123, client_msg_id = 1002, \
                      content = text \"hi\", sender_device = \"phone-1\"}], has_more = false, \
                      first_seq = 120: the page reached the oldest message still stored; \
                      seqs below 120 were removed by retention.",
            frame: Frame::response(
                8,
                pb::SyncResponse {
                    messages: vec![pb::MessagePush {
                        conversation: common::conv(ConversationKind::Group, 7),
                        seq: 120,
                        sender: 42,
                        server_time_ms: 1_700_000_000_123,
                        client_msg_id: 1002,
                        content: common::text("hi"),
                        sender_device: "phone-1".into(),
                        recalled_by: 0,
                        recalled_at_ms: 0,
                        edited_at_ms: 0,
                        ..Default::default()
                    }],
                    has_more: false,
                    inbox_cursor: 0,
                    conversations: vec![],
                    first_seq: 120,
                    inbox_position: Vec::new(),
                },
            ),
        },
        Valid {
            name: "gap",
            meaning: "Gap, request id 0 (unsolicited). Body: conversation = {CHATROOM (3), 5}, \
                      from_seq = 120, to_seq = 348: pushes 120..=348 of room 5 were skipped for \
                      this connection.",
            frame: Frame::new(
                0,
                pb::Gap {
                    conversation: common::conv(ConversationKind::Chatroom, 5),
                    from_seq: 120,
                    to_seq: 348,
                },
            ),
        },
        Valid {
            name: "typing_single",
            meaning: "Typing, request id 0 (fire and forget). Body: conversation = \
                      {SINGLE (1), 43} (the peer), typing = true.",
            frame: Frame::new(
                0,
                pb::Typing {
                    conversation: common::conv(ConversationKind::Single, 43),
                    typing: true,
                },
            ),
        },
        Valid {
            name: "typing_notice_group",
            meaning: "TypingNotice, request id 0 (unsolicited). Body: conversation = {GROUP (2), \
                      7}, user = 42, typing = true, expires_ms = 6000.",
            frame: Frame::new(
                0,
                pb::TypingNotice {
                    conversation: common::conv(ConversationKind::Group, 7),
                    user: 42,
                    typing: true,
                    expires_ms: 6_000,
                },
            ),
        },
        Valid {
            name: "conversation_event_read_receipt",
            meaning: "ConversationEvent, request id 0 (unsolicited). Body: conversation = \
                      {SINGLE (1), 42} (the reader, as this receiver names the chat), kind = \
                      CONVERSATION_EVENT_KIND_READ_RECEIPT (6), actor = 42, users = [42], \
                      seq = 17: user 42 read this 1:1 chat up to seq 17.",
            frame: Frame::new(
                0,
                pb::ConversationEvent {
                    conversation: common::conv(ConversationKind::Single, 42),
                    kind: pb::ConversationEventKind::ReadReceipt as i32,
                    actor: 42,
                    users: vec![42],
                    role: 0,
                    seq: 17,
                    until_ms: 0,
                },
            ),
        },
        Valid {
            name: "mark_delivered",
            meaning: "ConversationOp, request id 14. Body: op = mark_delivered (16) \
                      {conversation = {SINGLE (1), 42}, seq = 17}: this user's device has \
                      every message of the chat with 42 up to seq 17.",
            frame: Frame::new(
                14,
                pb::ConversationOp {
                    op: Some(pb::conversation_op::Op::MarkDelivered(pb::MarkDelivered {
                        conversation: common::conv(ConversationKind::Single, 42),
                        seq: 17,
                    })),
                },
            ),
        },
        Valid {
            name: "conversation_event_delivery_receipt",
            meaning: "ConversationEvent, request id 0 (unsolicited). Body: conversation = \
                      {SINGLE (1), 42}, kind = CONVERSATION_EVENT_KIND_DELIVERY_RECEIPT (10), \
                      actor = 42, users = [42], seq = 17: a device of user 42 has this 1:1 \
                      chat up to seq 17.",
            frame: Frame::new(
                0,
                pb::ConversationEvent {
                    conversation: common::conv(ConversationKind::Single, 42),
                    kind: pb::ConversationEventKind::DeliveryReceipt as i32,
                    actor: 42,
                    users: vec![42],
                    role: 0,
                    seq: 17,
                    until_ms: 0,
                },
            ),
        },
        Valid {
            name: "conversation_event_muted",
            meaning: "ConversationEvent, request id 0 (unsolicited). Body: conversation = \
                      {GROUP (2), 7}, kind = CONVERSATION_EVENT_KIND_MUTED (7), actor = 5, \
                      users = [42], until_ms = 1796369657146: admin 5 muted member 42 of group \
                      7 until that time.",
            frame: Frame::new(
                0,
                pb::ConversationEvent {
                    conversation: common::conv(ConversationKind::Group, 7),
                    kind: pb::ConversationEventKind::Muted as i32,
                    actor: 5,
                    users: vec![42],
                    role: 0,
                    seq: 0,
                    until_ms: 1_796_369_657_146,
                },
            ),
        },
        Valid {
            name: "conversation_event_dissolved",
            meaning: "ConversationEvent, request id 0 (unsolicited). Body: conversation = \
                      {GROUP (2), 7}, kind = CONVERSATION_EVENT_KIND_DISSOLVED (8), actor = 5, \
                      users = []: the owner dissolved group 7; every member is out.",
            frame: Frame::new(
                0,
                pb::ConversationEvent {
                    conversation: common::conv(ConversationKind::Group, 7),
                    kind: pb::ConversationEventKind::Dissolved as i32,
                    actor: 5,
                    users: vec![],
                    role: 0,
                    seq: 0,
                    until_ms: 0,
                },
            ),
        },
        Valid {
            name: "error_muted",
            meaning: "Error answering request 6 (flags = RESPONSE). Body: code = \
                      ERROR_CODE_MUTED (36), message = \"muted\", retry_after_ms = 60000: the \
                      sender may send to that group again in a minute.",
            frame: Frame::response(
                6,
                pb::Error {
                    code: pb::ErrorCode::Muted as i32,
                    message: "muted".into(),
                    retry_after_ms: 60_000,
                },
            ),
        },
        Valid {
            name: "error_shutting_down",
            meaning: "Error answering request 4 (flags = RESPONSE). Body: code = \
                      ERROR_CODE_SHUTTING_DOWN (42), message = \"server shutting down\". Retry the \
                      request after reconnecting (a SendMessage with the same client_msg_id).",
            frame: Frame::response(
                4,
                pb::Error {
                    code: pb::ErrorCode::ShuttingDown as i32,
                    message: "server shutting down".into(),
                    retry_after_ms: 0,
                },
            ),
        },
        Valid {
            name: "error_login_timeout",
            meaning: "Error, request id 0, no flags (it answers no request). Body: code = \
                      ERROR_CODE_LOGIN_TIMEOUT (11), message = \"no login\". The server closes \
                      the connection after it.",
            frame: Frame::new(
                0,
                pb::Error {
                    code: pb::ErrorCode::LoginTimeout as i32,
                    message: "no login".into(),
                    retry_after_ms: 0,
                },
            ),
        },
        Valid {
            name: "kick_token_revoked",
            meaning: "Kick, request id 0. Body: reason = KICK_REASON_TOKEN_REVOKED (2), message = \
                      \"revoked\". Do not reconnect with the same token.",
            frame: Frame::new(
                0,
                pb::Kick {
                    reason: pb::KickReason::TokenRevoked as i32,
                    message: "revoked".into(),
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "client_frame_with_response_flag",
            meaning: "SendMessage with flags = RESPONSE (0x01), request id 4, body as in \
                      send_text_single. Well formed, so a decoder reads it, but only servers \
                      send responses: a server answers it with Error INVALID_REQUEST (30) for \
                      request 4 and does not process it (before login it then closes).",
            frame: Frame::response(
                4,
                pb::SendMessage {
                    client_msg_id: 1001,
                    conversation: common::conv(ConversationKind::Single, 43),
                    content: common::text("hi"),
                    ..Default::default()
                },
            ),
        },
        Valid {
            name: "join_chatroom",
            meaning: "ConversationOp, request id 8. Body: op = join_chatroom {room_id = 5}.",
            frame: Frame::new(
                8,
                pb::ConversationOp {
                    op: Some(pb::conversation_op::Op::JoinChatroom(pb::JoinChatroom {
                        room_id: 5,
                    })),
                },
            ),
        },
    ]
}

fn invalid() -> Vec<Invalid> {
    vec![
        Invalid {
            name: "bad_magic",
            meaning: "Starts with \"GE\" (an HTTP request): fatal, close the connection.",
            hex: "474554202f20485454502f312e310d0a",
            error: FrameError::BadMagic { found: *b"GE" },
        },
        Invalid {
            name: "unsupported_version",
            meaning: "Version byte 2: fatal.",
            hex: "50540204000000000000000100000000",
            error: FrameError::UnsupportedVersion { found: 2 },
        },
        Invalid {
            name: "reserved_flag",
            meaning: "Flags byte 0x80, a reserved bit: fatal.",
            hex: "50540104800000000000000100000000",
            error: FrameError::ReservedBits {
                flags: 0x80,
                reserved: [0, 0, 0],
            },
        },
        Invalid {
            name: "oversize",
            meaning: "Announces a 1 GiB body (0x40000000) against the default 64 KiB limit: \
                      fatal, detected from the header alone.",
            hex: "50540110000000000000000140000000",
            error: FrameError::Oversize {
                len: 1 << 30,
                max: 64 * 1024,
            },
        },
        Invalid {
            name: "unknown_type",
            meaning: "Type 0x7e is undefined; its 2-byte body is skipped and the stream stays \
                      in sync (answer with ERROR_CODE_UNKNOWN_FRAME_TYPE).",
            hex: "5054017e00000000000000070000000200ff",
            error: FrameError::UnknownType {
                frame_type: 0x7e,
                request_id: 7,
                body_len: 2,
            },
        },
    ]
}

fn spaced_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn render() -> String {
    let mut out = String::from(
        "# Petrel wire protocol v1: golden vectors (generated by proto/tests/vectors.rs).\n\
         # Each [valid.*] block is one complete frame: `header` is the 16 header bytes, `body`\n\
         # the protobuf body, `frame` both together as sent on the wire. An encoder must\n\
         # produce exactly `frame` for the meaning given (protobuf fields in field-number\n\
         # order, default values omitted); a decoder must read the meaning back.\n\
         # Each [invalid.*] block is bytes a decoder must reject with the named error.\n\n",
    );
    let encoder = FrameEncoder::default();
    for v in valid() {
        let wire = encoder.encode_to_bytes(&v.frame).unwrap();
        let (header, body) = wire.split_at(HEADER_LEN);
        writeln!(out, "[valid.{}]", v.name).unwrap();
        writeln!(out, "meaning = {}", v.meaning).unwrap();
        writeln!(out, "header = {}", spaced_hex(header)).unwrap();
        let body = if body.is_empty() {
            "(empty)".to_owned()
        } else {
            spaced_hex(body)
        };
        writeln!(out, "body = {body}").unwrap();
        writeln!(out, "frame = {}\n", hex::encode(&wire)).unwrap();
    }
    for v in invalid() {
        writeln!(out, "[invalid.{}]", v.name).unwrap();
        writeln!(out, "meaning = {}", v.meaning).unwrap();
        writeln!(out, "bytes = {}", v.hex).unwrap();
        writeln!(out, "error = {:?}\n", v.error).unwrap();
    }
    out
}

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/frames.txt")
}

/// Reads `key = value` lines of block `[name]` from the committed file.
fn field(file: &str, block: &str, key: &str) -> String {
    let mut in_block = false;
    for line in file.lines() {
        if line.starts_with('[') {
            in_block = line == format!("[{block}]");
        } else if let Some(value) = line.strip_prefix(&format!("{key} = ")).filter(|_| in_block) {
            return value.to_owned();
        }
    }
    panic!("vector [{block}] has no `{key}` line");
}

#[test]
fn committed_vectors_match_the_encoder() {
    let rendered = render();
    if std::env::var_os("PETREL_BLESS_VECTORS").is_some() {
        std::fs::write(vectors_path(), &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(vectors_path()).unwrap();
    assert_eq!(
        committed, rendered,
        "proto/tests/vectors/frames.txt is stale; rerun with PETREL_BLESS_VECTORS=1 if the \
         protocol change is deliberate"
    );
}

#[test]
fn committed_vectors_decode_to_their_meaning() {
    let file = std::fs::read_to_string(vectors_path()).unwrap();
    for v in valid() {
        let bytes = hex::decode(field(&file, &format!("valid.{}", v.name), "frame")).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame, v.frame, "vector {}", v.name);
        assert!(buf.is_empty());
    }
    for v in invalid() {
        let bytes = hex::decode(field(&file, &format!("invalid.{}", v.name), "bytes")).unwrap();
        let err = FrameDecoder::default()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap_err();
        assert_eq!(err, v.error, "vector {}", v.name);
    }
}
