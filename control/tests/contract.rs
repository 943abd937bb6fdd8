//! The protocol as a contract (issue 23): each test pins one rule of docs/PROTOCOL.md
//! that a client written from the spec alone relies on, run in the deterministic
//! simulator (`harness/mod.rs`).

mod harness;

use std::time::Duration;

use harness::{Position, Sim, T0, errors, gaps, kick_of, room, single, text_content};
use petrel_control::token::{self, TokenSpec};
use petrel_control::{CloseReason, Config, RateLimit, Revocation};
use petrel_proto::{Body, Frame, FrameType, pb};

use pb::conversation_op::Op;

const ALICE: u64 = 1001;
const BOB: u64 = 1002;
const CAROL: u64 = 1003;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn sim() -> Sim {
    Sim::new(Config::default(), 23)
}

fn code(e: &pb::Error) -> pb::ErrorCode {
    pb::ErrorCode::try_from(e.code).expect("known code")
}

/// The answer to `rid` on `conn`, which must be an `Error` with the RESPONSE flag.
fn error_answer(s: &mut Sim, conn: petrel_control::ConnId, rid: u32) -> pb::ErrorCode {
    let frames = s.client(conn).take();
    let frame = frames
        .iter()
        .find(|f| f.request_id == rid)
        .unwrap_or_else(|| panic!("no answer to {rid}: {frames:?}"));
    assert!(frame.flags.is_response(), "{frame:?}");
    match &frame.body {
        Body::Error(e) => code(e),
        other => panic!("expected an Error, got {other:?}"),
    }
}

#[test]
fn a_login_naming_another_platform_than_its_token_is_refused_with_token_mismatch() {
    let mut s = sim();
    let token = s.token(ALICE, "phone", pb::Platform::Ios, DAY);
    let conn = s.connect();
    let err = s
        .login_with(conn, ALICE, "phone", pb::Platform::Android, &token)
        .expect_err("platform differs from the token's");
    assert_eq!(code(&err), pb::ErrorCode::TokenMismatch);
    assert_eq!(
        s.client(conn).closed,
        Some(CloseReason::LoginRejected(pb::ErrorCode::TokenMismatch))
    );
    assert_eq!(s.control.counters().logins_failed.mismatch, 1);
    // The same token with its own platform logs in.
    let conn = s.connect();
    s.login_with(conn, ALICE, "phone", pb::Platform::Ios, &token)
        .expect("matching platform");
}

#[test]
fn the_multi_device_policy_replaces_per_platform_class() {
    let mut s = sim();
    // One session per platform class: a second iOS device replaces the first, an
    // Android phone and a desktop do not, and neither does a web login.
    let ios1 = s.login(BOB, "ios-1", pb::Platform::Ios);
    let android = s.login(BOB, "android", pb::Platform::Android);
    let desk = s.login(BOB, "desk", pb::Platform::Desktop);
    let web = s.login(BOB, "web", pb::Platform::Web);
    let ios2 = s.login(BOB, "ios-2", pb::Platform::Ios);
    assert_eq!(
        kick_of(&s.client(ios1).take()).map(|k| k.reason),
        Some(pb::KickReason::Replaced as i32)
    );
    for conn in [android, desk, web, ios2] {
        assert!(s.client(conn).closed.is_none());
    }
    // Two bots of one user replace each other too: BOT is a class like any other.
    let bot1 = s.login(BOB, "bot-1", pb::Platform::Bot);
    let _bot2 = s.login(BOB, "bot-2", pb::Platform::Bot);
    assert!(s.client(bot1).closed.is_some());
    assert_eq!(s.control.online_devices(BOB).len(), 5);
}

#[test]
fn empty_and_malformed_messages_are_refused_and_not_stored() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let encode = petrel_proto::wire::encode_content;
    let empties = [
        bytes::Bytes::new(),
        encode(&pb::Content { body: None }),
        encode(&pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: String::new(),
                mentions: vec![BOB],
            })),
        }),
        // Only a content type this server does not know (field 9).
        bytes::Bytes::from_static(&[0x4a, 0x01, 0x00]),
        // A text whose bytes are not UTF-8: no client could decode it.
        bytes::Bytes::from_static(&[0x0a, 0x03, 0x0a, 0x01, 0xff]),
        // A length running past the end.
        bytes::Bytes::from_static(&[0x0a, 0x09, 0x0a, 0x01]),
    ];
    for (i, content) in empties.into_iter().enumerate() {
        let rid = s.send(
            alice,
            pb::SendMessage {
                client_msg_id: 10 + i as u64,
                conversation: Some(single(BOB)),
                content,
                ..Default::default()
            },
        );
        assert_eq!(
            error_answer(&mut s, alice, rid),
            pb::ErrorCode::InvalidRequest
        );
    }
    assert_eq!(s.control.counters().messages_rejected, 6);
    assert_eq!(s.control.counters().messages_persisted.single, 0);
    assert!(Sim::pushes(&s.client(bob).take()).is_empty());
    let (stored, _) = s.sync_all(bob, Position::default(), 50);
    assert!(stored.is_empty(), "{stored:?}");
    // A real message afterwards gets seq 1: nothing was stored before it.
    assert_eq!(s.send_text(alice, single(BOB), 20, "hi").unwrap().seq, 1);
}

#[test]
fn a_client_frame_with_the_response_flag_is_refused_with_invalid_request() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let rid = s.next_rid(alice);
    s.send_frame(
        alice,
        Frame::response(
            rid,
            pb::SendMessage {
                client_msg_id: 1,
                conversation: Some(single(BOB)),
                content: petrel_proto::wire::encode_content(&text_content("flagged")),
                ..Default::default()
            },
        ),
    );
    assert_eq!(
        error_answer(&mut s, alice, rid),
        pb::ErrorCode::InvalidRequest
    );
    assert!(s.client(alice).closed.is_none(), "logged in: stays open");
    assert_eq!(s.control.counters().messages_persisted.single, 0);
    assert_eq!(s.control.counters().frames_misdirected, 1);

    // Before login the connection is closed after the error, even for a Ping or Login.
    for body in [
        Body::Ping(pb::Ping { client_time_ms: 1 }),
        Body::Login(pb::Login::default()),
    ] {
        let conn = s.connect();
        s.send_frame(conn, Frame::response(5, body));
        assert_eq!(error_answer(&mut s, conn, 5), pb::ErrorCode::InvalidRequest);
        assert_eq!(
            s.client(conn).closed,
            Some(CloseReason::BadFrameBeforeLogin(
                pb::ErrorCode::InvalidRequest
            ))
        );
    }
}

#[test]
fn a_server_to_client_type_from_a_client_is_unknown_in_this_direction() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let rid = s.send(alice, pb::Ack::default());
    assert_eq!(
        error_answer(&mut s, alice, rid),
        pb::ErrorCode::UnknownFrameType
    );
    assert!(s.client(alice).closed.is_none(), "logged in: stays open");
    assert_eq!(s.control.counters().frames_in.get(FrameType::Ack), 1);

    // Before login it is answered and closed like an undefined type byte would be.
    let conn = s.connect();
    let rid = s.send(conn, pb::Gap::default());
    assert_eq!(
        error_answer(&mut s, conn, rid),
        pb::ErrorCode::UnknownFrameType
    );
    assert_eq!(
        s.client(conn).closed,
        Some(CloseReason::BadFrameBeforeLogin(
            pb::ErrorCode::UnknownFrameType
        ))
    );
}

#[test]
fn before_login_only_login_and_ping_are_served() {
    let mut s = sim();
    // Ping is answered and the connection stays open.
    let conn = s.connect();
    let rid = s.send(conn, pb::Ping { client_time_ms: 1 });
    assert!(matches!(
        Sim::answer(&s.client(conn).take(), rid),
        Some(Body::Pong(_))
    ));
    assert!(s.client(conn).closed.is_none());
    // Every other client request type: NOT_LOGGED_IN, then close.
    let requests: Vec<Body> = vec![
        pb::RenewToken {}.into(),
        pb::Logout::default().into(),
        pb::SendMessage::default().into(),
        pb::SyncRequest::default().into(),
        pb::HistoryRequest::default().into(),
        pb::ConversationOp::default().into(),
    ];
    for body in requests {
        let conn = s.connect();
        let rid = s.send(conn, body);
        assert_eq!(error_answer(&mut s, conn, rid), pb::ErrorCode::NotLoggedIn);
        assert_eq!(s.client(conn).closed, Some(CloseReason::NotLoggedIn));
    }
}

#[test]
fn the_login_deadline_sends_login_timeout_then_closes() {
    let mut s = sim();
    let conn = s.connect();
    s.advance(Duration::from_secs(10));
    let frames = s.client(conn).take();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].request_id, 0);
    assert!(!frames[0].flags.is_response());
    assert_eq!(
        errors(&frames).iter().map(code).collect::<Vec<_>>(),
        [pb::ErrorCode::LoginTimeout]
    );
    assert_eq!(s.client(conn).closed, Some(CloseReason::LoginTimeout));
}

#[test]
fn a_graceful_shutdown_acks_what_is_in_flight_and_refuses_the_rest() {
    let mut s = Sim::new(
        Config {
            shutdown_grace: Duration::from_millis(500),
            ..Config::default()
        },
        23,
    );
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    assert!(!s.control.is_drained(s.now), "not shutting down");

    // An append is in flight when the shutdown begins.
    s.hold_storage = true;
    let in_flight = s.send(
        alice,
        pb::SendMessage {
            client_msg_id: 1,
            conversation: Some(single(BOB)),
            content: petrel_proto::wire::encode_content(&text_content("just in time")),
            ..Default::default()
        },
    );
    assert_eq!(s.storage_queued(), 1);
    s.control.begin_shutdown(s.now);
    assert!(s.control.is_shutting_down());
    assert!(!s.control.is_drained(s.now));

    // New requests are refused with SHUTTING_DOWN; the connection stays open.
    let late = s.send(
        alice,
        pb::SendMessage {
            client_msg_id: 2,
            conversation: Some(single(BOB)),
            content: petrel_proto::wire::encode_content(&text_content("too late")),
            ..Default::default()
        },
    );
    assert_eq!(
        error_answer(&mut s, alice, late),
        pb::ErrorCode::ShuttingDown
    );
    let sync = s.send(bob, pb::SyncRequest::default());
    assert_eq!(error_answer(&mut s, bob, sync), pb::ErrorCode::ShuttingDown);
    assert_eq!(s.storage_queued(), 1, "nothing new reaches storage");
    // Ping is still answered; a new Login is refused and closed.
    let ping = s.send(alice, pb::Ping { client_time_ms: 9 });
    assert!(matches!(
        Sim::answer(&s.client(alice).take(), ping),
        Some(Body::Pong(_))
    ));
    let token = s.token(CAROL, "c", pb::Platform::Ios, DAY);
    let carol = s.connect();
    let err = s
        .login_with(carol, CAROL, "c", pb::Platform::Ios, &token)
        .expect_err("no logins while shutting down");
    assert_eq!(code(&err), pb::ErrorCode::ShuttingDown);
    assert!(s.client(carol).closed.is_some());
    assert_eq!(s.control.counters().refused_shutting_down, 3);

    // The in-flight append completes and is acked (and pushed) as usual.
    s.release_storage();
    let ack = s
        .take_answer(alice, in_flight, |b| match b {
            Body::Ack(a) => Some(a),
            _ => None,
        })
        .expect("acked");
    assert_eq!(ack.seq, 1);
    assert_eq!(Sim::pushes(&s.client(bob).take()).len(), 1);

    // Drained once nothing is pending and the grace has passed.
    assert!(!s.control.is_drained(s.now), "grace not over");
    s.advance(Duration::from_millis(500));
    assert!(s.control.is_drained(s.now));
    s.control.shutdown();
    s.run();
    for conn in [alice, bob] {
        assert_eq!(
            kick_of(&s.client(conn).take()).map(|k| k.reason),
            Some(pb::KickReason::ServerShutdown as i32)
        );
    }
    // The refused message was never stored: after a restart the client sends it again
    // with the same client_msg_id and gets the next seq.
    let (stored, _) = {
        let mut again = s.restart(Config::default());
        let bob = again.login(BOB, "b", pb::Platform::Ios);
        let alice = again.login(ALICE, "a", pb::Platform::Ios);
        let retry = again
            .send_text(alice, single(BOB), 2, "too late")
            .expect("stored on retry");
        assert_eq!((retry.seq, retry.duplicate), (2, false));
        again.sync_all(bob, Position::default(), 50)
    };
    assert_eq!(stored.len(), 2);
}

#[test]
fn revoking_a_user_kicks_its_sessions_with_token_revoked_for_good() {
    let mut s = sim();
    let phone_token = s.token(ALICE, "phone", pb::Platform::Ios, DAY);
    let phone = s.connect();
    s.login_with(phone, ALICE, "phone", pb::Platform::Ios, &phone_token)
        .unwrap();
    let desk = s.login(ALICE, "desk", pb::Platform::Desktop);
    let bob = s.login(BOB, "b", pb::Platform::Ios);

    assert_eq!(s.control.revoke_sessions(s.now, Revocation::User(ALICE)), 2);
    s.run();
    for conn in [phone, desk] {
        assert_eq!(
            kick_of(&s.client(conn).take()).map(|k| k.reason),
            Some(pb::KickReason::TokenRevoked as i32)
        );
        assert_eq!(
            s.client(conn).closed,
            Some(CloseReason::Kicked(pb::KickReason::TokenRevoked))
        );
    }
    assert!(s.client(bob).closed.is_none(), "other users stay");
    let c = s.control.counters();
    assert_eq!((c.sessions_revoked, c.kicks.token_revoked), (2, 2));

    // The revoked token cannot log in again, also after a restart (it was persisted).
    let conn = s.connect();
    let err = s
        .login_with(conn, ALICE, "phone", pb::Platform::Ios, &phone_token)
        .unwrap_err();
    assert_eq!(code(&err), pb::ErrorCode::TokenRevoked);
    let mut again = s.restart(Config::default());
    let conn = again.connect();
    let err = again
        .login_with(conn, ALICE, "phone", pb::Platform::Ios, &phone_token)
        .unwrap_err();
    assert_eq!(code(&err), pb::ErrorCode::TokenRevoked);
    // A fresh token (from the login service) works.
    again.login(ALICE, "phone", pb::Platform::Ios);
}

#[test]
fn revoking_one_token_kicks_only_the_sessions_using_it() {
    let mut s = sim();
    let token_id = [7u8; 16];
    let issued = token::mint(
        &s.keys,
        &TokenSpec {
            user: ALICE,
            device: "phone",
            platform: pb::Platform::Ios,
            issued_at: T0,
            ttl: DAY,
            token_id,
        },
    )
    .unwrap();
    let phone = s.connect();
    s.login_with(phone, ALICE, "phone", pb::Platform::Ios, &issued.token)
        .unwrap();
    let desk = s.login(ALICE, "desk", pb::Platform::Desktop);
    let kicked = s.control.revoke_sessions(
        s.now,
        Revocation::Token {
            token_id,
            expires_at: issued.claims.expires_at,
        },
    );
    s.run();
    assert_eq!(kicked, 1);
    assert_eq!(
        s.client(phone).closed,
        Some(CloseReason::Kicked(pb::KickReason::TokenRevoked))
    );
    assert!(s.client(desk).closed.is_none());
    // A token nobody uses can be revoked ahead of its use.
    let unused = [9u8; 16];
    let later = token::mint(
        &s.keys,
        &TokenSpec {
            user: CAROL,
            device: "c",
            platform: pb::Platform::Web,
            issued_at: T0,
            ttl: DAY,
            token_id: unused,
        },
    )
    .unwrap();
    let none = s.control.revoke_sessions(
        s.now,
        Revocation::Token {
            token_id: unused,
            expires_at: later.claims.expires_at,
        },
    );
    s.run();
    assert_eq!(none, 0);
    let conn = s.connect();
    let err = s
        .login_with(conn, CAROL, "c", pb::Platform::Web, &later.token)
        .unwrap_err();
    assert_eq!(code(&err), pb::ErrorCode::TokenRevoked);
}

/// A room with a speaker, an attentive member and a stalled one.
fn room_of_three(config: Config) -> (Sim, [petrel_control::ConnId; 3]) {
    let mut s = Sim::new(
        Config {
            rate_limit: RateLimit {
                burst: 10_000,
                per_second: 10_000,
            },
            ..config
        },
        23,
    );
    let speaker = s.login(ALICE, "a", pb::Platform::Ios);
    let fast = s.login(BOB, "b", pb::Platform::Ios);
    let slow = s.login(CAROL, "c", pb::Platform::Ios);
    for conn in [speaker, fast, slow] {
        s.op(conn, Op::JoinChatroom(pb::JoinChatroom { room_id: 5 }))
            .unwrap();
        s.client(conn).take();
    }
    (s, [speaker, fast, slow])
}

#[test]
fn a_congested_member_skips_pushes_and_gets_one_gap_when_it_drains() {
    let (mut s, [speaker, fast, slow]) = room_of_three(Config::default());
    // A small transport limit: the slow reader is congested after a dozen pushes.
    s.outbound_limit = 1_000;
    s.set_slow(slow, true);
    for i in 1..=30u64 {
        s.send_text(speaker, room(5), i, &format!("m{i}")).unwrap();
    }
    assert_eq!(Sim::pushes(&s.client(fast).take()).len(), 30);
    let frames = s.client(slow).take();
    let seqs: Vec<u64> = Sim::pushes(&frames).iter().map(|p| p.seq).collect();
    let k = seqs.len() as u64;
    assert!(k > 0 && k < 30, "{k} pushes before congestion");
    assert_eq!(seqs, (1..=k).collect::<Vec<_>>(), "a prefix, then nothing");
    assert!(gaps(&frames).is_empty(), "no gap while still congested");
    let c = s.control.counters();
    assert_eq!(c.messages_dropped.chatroom, 30 - k);
    assert_eq!(c.congested, 1, "one edge, however many pushes it skipped");
    assert!(
        s.client(slow).closed.is_none(),
        "chatrooms skip, they never kick"
    );

    // The member reads what it was sent: the drain brings the gap at once, before any
    // newer push of the room.
    s.catch_up(slow);
    assert_eq!(gaps(&s.client(slow).take()), [(5, k + 1, 30)]);
    s.send_text(speaker, room(5), 31, "m31").unwrap();
    let frames = s.client(slow).take();
    assert!(gaps(&frames).is_empty());
    assert_eq!(Sim::pushes(&frames)[0].seq, 31);
    let c = s.control.counters();
    assert_eq!(c.chatroom_gaps, 1);
    assert_eq!(c.frames_out.get(FrameType::Gap), 1);
}

#[test]
fn a_drained_member_gets_one_gap_per_room_before_any_newer_push() {
    let (mut s, [speaker, _fast, slow]) = room_of_three(Config::default());
    for conn in [speaker, slow] {
        s.op(conn, Op::JoinChatroom(pb::JoinChatroom { room_id: 6 }))
            .unwrap();
        s.client(conn).take();
    }
    s.outbound_limit = 600;
    s.set_slow(slow, true);
    let n = 40u64;
    for i in 1..=n {
        let r = if i % 2 == 0 { 5 } else { 6 };
        s.send_text(speaker, room(r), i, &format!("m{i:03}"))
            .unwrap();
    }
    let delivered = Sim::pushes(&s.client(slow).take()).len() as u64;
    assert!(delivered > 0 && delivered < n, "{delivered}");
    s.catch_up(slow);
    s.send_text(speaker, room(5), n + 1, "after").unwrap();
    let frames = s.client(slow).take();
    let order: Vec<String> = frames
        .iter()
        .map(|f| match &f.body {
            Body::Gap(g) => format!("gap {}", g.conversation.unwrap().id),
            Body::MessagePush(p) => format!("push {}", p.conversation.unwrap().id),
            other => format!("{:?}", other.frame_type()),
        })
        .collect();
    let mut gaps_first = order[..2].to_vec();
    gaps_first.sort();
    assert_eq!(gaps_first, ["gap 5", "gap 6"], "{order:?}");
    assert_eq!(order[2..], ["push 5"], "{order:?}");
    // Pushes and gaps account for every seq of each room exactly once.
    assert_eq!(s.control.counters().chatroom_gaps, 2);
}

#[test]
fn chatroom_seqs_are_per_room_and_start_again_after_a_restart() {
    let (mut s, [speaker, ..]) = room_of_three(Config::default());
    s.op(speaker, Op::JoinChatroom(pb::JoinChatroom { room_id: 6 }))
        .unwrap();
    assert_eq!(s.send_text(speaker, room(5), 1, "a").unwrap().seq, 1);
    assert_eq!(s.send_text(speaker, room(5), 2, "b").unwrap().seq, 2);
    assert_eq!(s.send_text(speaker, room(6), 3, "c").unwrap().seq, 1);
    // Not persisted: a restarted server has no rooms and starts from 1.
    let mut again = s.restart(Config::default());
    let a = again.login(ALICE, "a", pb::Platform::Ios);
    again
        .op(a, Op::JoinChatroom(pb::JoinChatroom { room_id: 5 }))
        .unwrap();
    assert_eq!(again.send_text(a, room(5), 4, "d").unwrap().seq, 1);
}

#[test]
fn sync_paging_follows_the_returned_inbox_cursor_and_limit_counts_messages() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    for i in 1..=12u64 {
        s.send_text(alice, single(BOB), i, &format!("m{i}"))
            .unwrap();
    }
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let mut position = Position::default();
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let rid = s.send(
            bob,
            pb::SyncRequest {
                inbox_cursor: position.cursor,
                inbox_position: position.token.clone(),
                cursors: vec![pb::Cursor {
                    conversation: Some(single(ALICE)),
                    after_seq: after,
                }],
                limit: 5,
            },
        );
        let page = s
            .take_answer(bob, rid, |b| match b {
                Body::SyncResponse(p) => Some(p),
                _ => None,
            })
            .unwrap();
        pages.push(page.messages.len());
        if let Some(last) = page.messages.last() {
            after = last.seq;
        }
        position = Position {
            cursor: page.inbox_cursor,
            token: page.inbox_position,
        };
        if !page.has_more {
            break;
        }
    }
    assert_eq!(pages, [5, 5, 2], "limit counts messages");
    assert_eq!(after, 12);
    // Limit 0 means the server's default page (200 messages), cut to fit one frame.
    let rid = s.send(bob, pb::SyncRequest::default());
    let page = s
        .take_answer(bob, rid, |b| match b {
            Body::SyncResponse(p) => Some(p),
            _ => None,
        })
        .unwrap();
    assert_eq!((page.messages.len(), page.has_more), (12, false));
}

#[test]
fn a_malformed_inbox_position_is_refused_and_a_foreign_one_gets_a_full_sync() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    for i in 1..=3u64 {
        s.send_text(alice, single(BOB), i, &format!("m{i}"))
            .unwrap();
    }
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let sync = |s: &mut Sim, inbox_cursor: u64, inbox_position: Vec<u8>| {
        let rid = s.send(
            bob,
            pb::SyncRequest {
                inbox_cursor,
                inbox_position,
                ..Default::default()
            },
        );
        s.take_answer(bob, rid, |b| match b {
            Body::SyncResponse(p) => Some(p),
            _ => None,
        })
    };
    let err = sync(&mut s, 0, vec![9, 9, 9]).unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::InvalidRequest as i32);
    assert!(err.message.contains("inbox position"), "{}", err.message);
    // The simulator's database has 16 partitions: a plain cursor (from a one-partition
    // database) or a token of another count fits none of them, so the device is synced
    // like a new one — every message, and a position it can use from then on.
    // ... and so does a token of the right count from another database (another epoch:
    // this one was recreated), whose positions are far above this database's.
    let recreated = petrel_storage::InboxCursor::from_positions(12_345, vec![100; 16]).to_token();
    for (cursor, token) in [(7, vec![]), (0, vec![1, 9, 2, 5, 5]), (0, recreated)] {
        let page = sync(&mut s, cursor, token).unwrap();
        assert_eq!(page.messages.len(), 3);
        assert_eq!(page.inbox_cursor, 0);
        let again = sync(&mut s, 0, page.inbox_position).unwrap();
        assert!(again.messages.is_empty(), "{again:?}");
    }
}

#[test]
fn the_sending_device_gets_its_ack_and_no_push_of_its_own_message() {
    let (mut s, [speaker, fast, slow]) = room_of_three(Config::default());
    let alice_desk = s.login(ALICE, "a-desk", pb::Platform::Desktop);
    s.send_text(speaker, single(BOB), 1, "persisted").unwrap();
    s.send_text(speaker, room(5), 2, "chatroom").unwrap();
    assert!(Sim::pushes(&s.client(speaker).take()).is_empty());
    // The other device of the sender gets the 1:1 message (it is not in the room).
    let echo = Sim::pushes(&s.client(alice_desk).take());
    assert_eq!(echo.len(), 1);
    assert_eq!(echo[0].conversation, Some(single(BOB)));
    assert_eq!(Sim::pushes(&s.client(fast).take()).len(), 2);
    assert_eq!(Sim::pushes(&s.client(slow).take()).len(), 1);
}
