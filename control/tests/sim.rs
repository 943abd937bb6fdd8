//! Acceptance tests for the control plane, run in the deterministic simulator
//! (`harness/mod.rs`): virtual clock, simulated clients, in-memory storage.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harness::{Position, Sim, account, errors, group, kick_of, room, single, text_of};
use petrel_control::{CloseReason, Config, KeyRing, MultiDevicePolicy, RateLimit};
use petrel_proto::{Body, FrameError, FrameType, pb};

use pb::conversation_op::Op;

const ALICE: u64 = 1001;
const BOB: u64 = 1002;
const CAROL: u64 = 1003;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn sim() -> Sim {
    Sim::new(Config::default(), 7)
}

#[test]
fn one_to_one_both_ways_with_multi_device_echo() {
    let mut s = sim();
    let alice_phone = s.login(ALICE, "a-phone", pb::Platform::Ios);
    let alice_desk = s.login(ALICE, "a-desk", pb::Platform::Desktop);
    let bob_phone = s.login(BOB, "b-phone", pb::Platform::Android);

    let ack = s.send_text(alice_phone, single(BOB), 1, "hi bob").unwrap();
    assert_eq!((ack.seq, ack.duplicate), (1, false));
    assert_eq!(ack.conversation, Some(single(BOB)));
    assert_eq!(ack.server_time_ms, s.now.as_millis());

    // Bob sees the conversation as {SINGLE, alice}; Alice's desktop as {SINGLE, bob}.
    let at_bob = Sim::pushes(&s.client(bob_phone).take());
    assert_eq!(at_bob.len(), 1);
    assert_eq!(at_bob[0].conversation, Some(single(ALICE)));
    assert_eq!((at_bob[0].seq, at_bob[0].sender), (1, ALICE));
    assert_eq!(text_of(&at_bob[0]), "hi bob");
    assert_eq!(at_bob[0].sender_device, "a-phone");
    let echo = Sim::pushes(&s.client(alice_desk).take());
    assert_eq!(echo.len(), 1);
    assert_eq!(echo[0].conversation, Some(single(BOB)));
    assert_eq!(echo[0].client_msg_id, 1);
    // The sending device gets only its ack.
    assert!(Sim::pushes(&s.client(alice_phone).take()).is_empty());

    let ack = s
        .send_text(bob_phone, single(ALICE), 1, "hi alice")
        .unwrap();
    assert_eq!(ack.seq, 2, "one timeline per pair");
    for conn in [alice_phone, alice_desk] {
        let got = Sim::pushes(&s.client(conn).take());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].conversation, Some(single(BOB)));
        assert_eq!((got[0].seq, got[0].sender), (2, BOB));
        assert_eq!(text_of(&got[0]), "hi alice");
    }
    let c = s.control.counters();
    assert_eq!(c.messages_persisted.single, 2);
    assert_eq!(c.messages_delivered.single, 4);
    assert_eq!(c.frames_in.get(FrameType::SendMessage), 2);
    assert_eq!(c.frames_out.get(FrameType::Ack), 2);
}

#[test]
fn retried_client_msg_id_is_stored_once_with_the_same_seq() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let first = s.send_text(alice, single(BOB), 77, "once").unwrap();
    let retry = s.send_text(alice, single(BOB), 77, "once").unwrap();
    assert!(!first.duplicate);
    assert!(retry.duplicate);
    assert_eq!(first.seq, retry.seq);
    assert_eq!(first.server_time_ms, retry.server_time_ms);
    // Bob got one push, and the timeline holds one message.
    assert_eq!(Sim::pushes(&s.client(bob).take()).len(), 1);
    let (all, _) = s.sync_all(bob, Position::default(), 50);
    assert_eq!(all.len(), 1);
    assert_eq!(s.control.counters().messages_duplicate, 1);
    assert_eq!(s.control.counters().messages_persisted.single, 1);

    // A retry after a reconnect is still a duplicate.
    s.disconnect(alice);
    let alice2 = s.login(ALICE, "a", pb::Platform::Ios);
    let again = s.send_text(alice2, single(BOB), 77, "once").unwrap();
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
}

#[test]
fn offline_user_syncs_everything_in_order() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    for i in 1..=25u64 {
        s.send_text(alice, single(BOB), i, &format!("a{i}"))
            .unwrap();
        if i % 5 == 0 {
            s.send_text(carol, single(BOB), i, &format!("c{i}"))
                .unwrap();
        }
        s.advance(Duration::from_millis(10));
    }
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let (all, cursor) = s.sync_all(bob, Position::default(), 7);
    assert!(
        !cursor.is_new(),
        "sync returns an inbox position to resume from"
    );
    let from_alice: Vec<_> = all
        .iter()
        .filter(|m| m.conversation == Some(single(ALICE)))
        .collect();
    let from_carol: Vec<_> = all
        .iter()
        .filter(|m| m.conversation == Some(single(CAROL)))
        .collect();
    assert_eq!(from_alice.len(), 25);
    assert_eq!(from_carol.len(), 5);
    for (i, m) in from_alice.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "gap-free, ascending");
        assert_eq!(text_of(m), format!("a{}", i + 1));
    }
    for (i, m) in from_carol.iter().enumerate() {
        assert_eq!(text_of(m), format!("c{}", (i + 1) * 5));
    }
    // Nothing new: a sync from the returned cursor is empty.
    let (more, _) = s.sync_all(bob, cursor, 7);
    assert!(more.is_empty(), "{more:?}");
}

#[test]
fn an_older_login_attempt_arriving_late_does_not_replace_the_newer_session() {
    let mut s = sim();
    let device = (BOB, "phone", pb::Platform::Ios);
    let token = s.token(BOB, "phone", pb::Platform::Ios, Duration::from_secs(3600));
    // The client gave up on attempt 7 and logged in with attempt 8, which the server
    // handled first (attempt 7's connection came in over another core, or sat in the
    // backlog of a server that was stopped).
    let (stale, newer) = (s.connect(), s.connect());
    s.login_attempt(newer, device, &token, 8)
        .expect("the newer attempt logs in");
    let refused = s
        .login_attempt(stale, device, &token, 7)
        .expect_err("the late older attempt is refused");
    assert_eq!(refused.code, pb::ErrorCode::StaleLogin as i32);
    assert_eq!(
        s.client(stale).closed,
        Some(CloseReason::LoginRejected(pb::ErrorCode::StaleLogin))
    );
    assert!(s.client(newer).closed.is_none());
    assert!(kick_of(&s.client(newer).take()).is_none());
    assert_eq!(s.control.online_devices(BOB), [newer]);
    assert_eq!(s.control.counters().logins_failed.stale, 1);
    assert_eq!(s.control.counters().kicks.replaced, 0);

    // A later attempt replaces the session (a reconnect the server has not noticed), and
    // so does a login that does not number its attempts (0).
    let later = s.connect();
    s.login_attempt(later, device, &token, 9)
        .expect("later attempt");
    assert_eq!(
        s.client(newer).closed,
        Some(CloseReason::Kicked(pb::KickReason::Replaced))
    );
    let unnumbered = s.connect();
    s.login_attempt(unnumbered, device, &token, 0)
        .expect("unnumbered attempt");
    assert_eq!(
        s.client(later).closed,
        Some(CloseReason::Kicked(pb::KickReason::Replaced))
    );
    assert_eq!(s.control.online_devices(BOB), [unnumbered]);
}

#[test]
fn second_login_on_the_same_platform_kicks_the_first() {
    let mut s = sim();
    let phone1 = s.login(BOB, "phone-1", pb::Platform::Ios);
    let desk = s.login(BOB, "desk", pb::Platform::Desktop);
    let phone2 = s.login(BOB, "phone-2", pb::Platform::Ios);
    let frames = s.client(phone1).take();
    let kick = kick_of(&frames).expect("first phone is told why");
    assert_eq!(kick.reason, pb::KickReason::Replaced as i32);
    assert_eq!(
        s.client(phone1).closed,
        Some(CloseReason::Kicked(pb::KickReason::Replaced))
    );
    assert!(s.client(desk).closed.is_none());
    assert!(kick_of(&s.client(desk).take()).is_none());
    assert_eq!(s.control.online_devices(BOB), [desk, phone2]);
    assert_eq!(s.control.counters().kicks.replaced, 1);

    // Under the unlimited policy nobody is kicked.
    let mut s = Sim::new(
        Config {
            multi_device: MultiDevicePolicy::Unlimited,
            ..Config::default()
        },
        7,
    );
    let p1 = s.login(BOB, "phone-1", pb::Platform::Ios);
    let p2 = s.login(BOB, "phone-2", pb::Platform::Ios);
    assert!(s.client(p1).closed.is_none());
    assert_eq!(s.control.online_devices(BOB), [p1, p2]);
    // ...but the same device logging in again replaces its stale session.
    let p1b = s.login(BOB, "phone-1", pb::Platform::Ios);
    assert!(s.client(p1).closed.is_some());
    assert_eq!(s.control.online_devices(BOB), [p2, p1b]);
}

fn login_error(s: &mut Sim, user: u64, device: &str, token: &str) -> pb::ErrorCode {
    let conn = s.connect();
    let err = s
        .login_with(conn, user, device, pb::Platform::Web, token)
        .expect_err("login must fail");
    assert!(
        matches!(s.client(conn).closed, Some(CloseReason::LoginRejected(_))),
        "a rejected login closes the connection"
    );
    pb::ErrorCode::try_from(err.code).expect("known code")
}

#[test]
fn bad_tokens_are_rejected_with_distinct_codes() {
    let mut s = sim();
    let good = s.token(ALICE, "d", pb::Platform::Web, DAY);

    // Forged: same claims, signed with a secret the server does not have but the
    // server's key id.
    let forger = KeyRing::single("main", b"not-the-server-secret-at-all!!!!").unwrap();
    let forged = s.token_with(&forger, ALICE, "d", pb::Platform::Web, DAY);
    assert_eq!(
        login_error(&mut s, ALICE, "d", &forged),
        pb::ErrorCode::TokenBadSignature
    );

    // Wrong key: signed with a key id the server does not know.
    let other = KeyRing::single("other-cluster", b"some-other-clusters-secret-key!!").unwrap();
    let wrong_key = s.token_with(&other, ALICE, "d", pb::Platform::Web, DAY);
    assert_eq!(
        login_error(&mut s, ALICE, "d", &wrong_key),
        pb::ErrorCode::TokenUnknownKey
    );

    // Expired.
    let short = s.token(ALICE, "d", pb::Platform::Web, Duration::from_secs(60));
    s.advance(Duration::from_secs(61));
    assert_eq!(
        login_error(&mut s, ALICE, "d", &short),
        pb::ErrorCode::TokenExpired
    );

    // Malformed.
    assert_eq!(
        login_error(&mut s, ALICE, "d", "not a token"),
        pb::ErrorCode::TokenMalformed
    );

    // Valid, but for another user or device.
    assert_eq!(
        login_error(&mut s, BOB, "d", &good),
        pb::ErrorCode::TokenMismatch
    );
    assert_eq!(
        login_error(&mut s, ALICE, "other", &good),
        pb::ErrorCode::TokenMismatch
    );

    // Revoked: log in, log out with revoke, try again.
    let conn = s.connect();
    s.login_with(conn, ALICE, "d", pb::Platform::Web, &good)
        .unwrap();
    s.send(conn, pb::Logout { revoke_token: true });
    assert_eq!(s.client(conn).closed, Some(CloseReason::Logout));
    assert_eq!(
        login_error(&mut s, ALICE, "d", &good),
        pb::ErrorCode::TokenRevoked
    );

    let f = &s.control.counters().logins_failed;
    assert_eq!(
        (
            f.bad_signature,
            f.unknown_key,
            f.expired,
            f.malformed,
            f.mismatch,
            f.revoked
        ),
        (1, 1, 1, 1, 2, 1)
    );

    // The revocation survives a restart: a new control plane loads it from storage.
    let storage = std::mem::replace(
        &mut s.storage,
        petrel_storage::MemEngine::new(Default::default()),
    );
    let mut restarted = Sim::with_storage(Config::default(), 8, storage);
    assert_eq!(
        login_error(&mut restarted, ALICE, "d", &good),
        pb::ErrorCode::TokenRevoked
    );
    // An old key still verifies after rotation ("old" is second in the key file).
    let old_ring =
        KeyRing::parse("old 6f6c642d7365637265742d6b65792d666f722d73696d756c6174696f6e212121\n")
            .unwrap();
    let by_old_key = restarted.token_with(&old_ring, CAROL, "c", pb::Platform::Web, DAY);
    let conn = restarted.connect();
    restarted
        .login_with(conn, CAROL, "c", pb::Platform::Web, &by_old_key)
        .expect("tokens of a rotated-out signing key stay valid");
}

#[test]
fn renewal_gives_a_fresh_token_without_reconnecting() {
    let mut s = sim();
    let conn = s.login(ALICE, "d", pb::Platform::Ios);
    s.advance(Duration::from_secs(100));
    let rid = s.send(conn, pb::RenewToken {});
    let renewed = s
        .take_answer(conn, rid, |b| match b {
            Body::RenewResult(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        renewed.expires_at_ms,
        s.now.as_millis() + Config::default().renew_ttl.as_millis() as u64
    );
    assert!(s.client(conn).closed.is_none());
    // The new token logs in elsewhere (same device: replaces the old session).
    let conn2 = s.connect();
    s.login_with(conn2, ALICE, "d", pb::Platform::Ios, &renewed.token)
        .unwrap();
    // Logging out with revoke revokes the renewed token as well.
    s.send(conn2, pb::Logout { revoke_token: true });
    assert_eq!(
        login_error(&mut s, ALICE, "d", &renewed.token),
        pb::ErrorCode::TokenRevoked
    );
}

#[test]
fn a_session_ends_when_its_token_expires_unless_renewed() {
    let mut s = sim();
    let ttl = Duration::from_secs(200);
    let lapsing_token = s.token(ALICE, "a", pb::Platform::Ios, ttl);
    let renewing_token = s.token(BOB, "b", pb::Platform::Ios, ttl);
    let lapsing = s.connect();
    s.login_with(lapsing, ALICE, "a", pb::Platform::Ios, &lapsing_token)
        .unwrap();
    let renewing = s.connect();
    s.login_with(renewing, BOB, "b", pb::Platform::Ios, &renewing_token)
        .unwrap();
    for step in 1..=6 {
        s.advance(Duration::from_secs(50));
        for conn in [lapsing, renewing] {
            s.send(conn, pb::Ping { client_time_ms: 0 });
        }
        if step == 2 {
            s.send(renewing, pb::RenewToken {});
        }
    }
    assert_eq!(s.client(lapsing).closed, Some(CloseReason::SessionExpired));
    assert!(
        errors(&s.client(lapsing).take())
            .iter()
            .any(|e| e.code == pb::ErrorCode::TokenExpired as i32)
    );
    assert!(
        s.client(renewing).closed.is_none(),
        "renewal extends the session"
    );
    assert_eq!(s.control.counters().sessions_expired, 1);
}

#[test]
fn non_members_cannot_send_to_a_group_and_removed_members_stop_receiving() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    let created = s
        .op(
            alice,
            Op::CreateGroup(pb::CreateGroup {
                name: "team".into(),
                members: vec![BOB],
            }),
        )
        .unwrap();
    let gid = created.conversation.unwrap().id;
    assert_eq!(created.conversation, Some(group(gid)));
    assert_eq!(created.members.len(), 2);
    // Bob is told he was added.
    let notice = s.client(bob).take();
    assert!(notice.iter().any(|f| matches!(&f.body,
        Body::ConversationEvent(e) if e.kind == pb::ConversationEventKind::MembersAdded as i32)));

    let err = s.send_text(carol, group(gid), 1, "let me in").unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::NotAMember as i32);
    assert!(Sim::pushes(&s.client(bob).take()).is_empty());

    s.send_text(alice, group(gid), 1, "hello team").unwrap();
    let got = Sim::pushes(&s.client(bob).take());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].conversation, Some(group(gid)));

    // A plain member cannot remove anyone.
    let err = s
        .op(
            bob,
            Op::RemoveMembers(pb::RemoveMembers {
                group_id: gid,
                users: vec![ALICE],
            }),
        )
        .unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::PermissionDenied as i32);

    s.op(
        alice,
        Op::RemoveMembers(pb::RemoveMembers {
            group_id: gid,
            users: vec![BOB],
        }),
    )
    .unwrap();
    let frames = s.client(bob).take();
    assert!(frames.iter().any(|f| matches!(&f.body,
        Body::ConversationEvent(e) if e.kind == pb::ConversationEventKind::MembersRemoved as i32
            && e.users == [BOB])));
    s.send_text(alice, group(gid), 2, "bob is gone").unwrap();
    assert!(Sim::pushes(&s.client(bob).take()).is_empty());
    let err = s.send_text(bob, group(gid), 9, "still here?").unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::NotAMember as i32);
}

#[test]
fn heartbeat_timeout_closes_a_silent_connection() {
    let mut s = sim();
    let quiet = s.login(ALICE, "a", pb::Platform::Ios);
    let pinger = s.login(BOB, "b", pb::Platform::Ios);
    for _ in 0..6 {
        s.advance(Duration::from_secs(50));
        let rid = s.send(pinger, pb::Ping { client_time_ms: 5 });
        let pong = s
            .take_answer(pinger, rid, |b| match b {
                Body::Pong(p) => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!(pong.client_time_ms, 5);
        assert_eq!(pong.server_time_ms, s.now.as_millis());
    }
    // 300 s later the quiet client was kicked at 150 s; the pinging one is alive.
    assert_eq!(
        s.client(quiet).closed,
        Some(CloseReason::Kicked(pb::KickReason::Idle))
    );
    assert_eq!(
        kick_of(&s.client(quiet).take()).unwrap().reason,
        pb::KickReason::Idle as i32
    );
    assert!(s.client(pinger).closed.is_none());
    assert_eq!(s.control.counters().kicks.idle, 1);
    assert!(s.control.online_devices(ALICE).is_empty());
}

#[test]
fn heartbeat_kick_happens_exactly_at_the_timeout() {
    let mut s = sim();
    let conn = s.login(ALICE, "a", pb::Platform::Ios);
    s.advance(Duration::from_secs(100));
    s.send(conn, pb::Ping { client_time_ms: 1 });
    s.advance(Duration::from_millis(149_999));
    assert!(
        s.client(conn).closed.is_none(),
        "150 s after the last frame, not before"
    );
    s.advance(Duration::from_millis(1));
    assert!(s.client(conn).closed.is_some());
}

#[test]
fn chatroom_slow_receiver_is_dropped_for_not_waited_on() {
    let mut s = Sim::new(
        Config {
            rate_limit: RateLimit {
                burst: 1000,
                per_second: 1000,
            },
            ..Config::default()
        },
        7,
    );
    s.outbound_limit = 2_000;
    let speaker = s.login(ALICE, "a", pb::Platform::Ios);
    let fast = s.login(BOB, "b", pb::Platform::Ios);
    let slow = s.login(CAROL, "c", pb::Platform::Ios);
    for conn in [speaker, fast, slow] {
        s.op(conn, Op::JoinChatroom(pb::JoinChatroom { room_id: 5 }))
            .unwrap();
    }
    s.set_slow(slow, true);
    let n = 100u64;
    for i in 1..=n {
        let ack = s
            .send_text(speaker, room(5), i, &format!("m{i:03}"))
            .unwrap();
        assert_eq!(ack.seq, i, "per-room seq");
    }
    let at_fast = Sim::pushes(&s.client(fast).take());
    assert_eq!(at_fast.len() as u64, n, "the fast receiver misses nothing");
    assert!(at_fast.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let at_slow = Sim::pushes(&s.client(slow).take()).len() as u64;
    assert!(at_slow > 0 && at_slow < n, "slow receiver got {at_slow}");
    let c = s.control.counters().clone();
    assert_eq!(c.messages_dropped.chatroom, n - at_slow);
    assert_eq!(c.messages_delivered.chatroom, n + at_slow);
    assert!(
        s.client(slow).closed.is_none(),
        "chatrooms drop, they do not kick"
    );
    assert_eq!(c.messages_persisted.chatroom, 0);
    // Once it reads, it is told what it missed: its pushes and the gap cover 1..=n.
    s.catch_up(slow);
    assert_eq!(harness::gaps(&s.client(slow).take()), [(5, at_slow + 1, n)]);

    // A late joiner gets the recent ring (the last 50 by default).
    let late = s.login(1004, "l", pb::Platform::Ios);
    let joined = s
        .op(late, Op::JoinChatroom(pb::JoinChatroom { room_id: 5 }))
        .unwrap();
    assert_eq!(joined.recent.len(), 50);
    assert_eq!(joined.recent.first().unwrap().seq, n - 49);
    assert_eq!(joined.recent.last().unwrap().seq, n);
    assert_eq!(joined.members.len(), 4);
    // One connection can be in a bounded number of rooms.
    for r in 100..100 + Config::default().max_rooms_per_conn as u64 - 1 {
        s.op(late, Op::JoinChatroom(pb::JoinChatroom { room_id: r }))
            .unwrap();
    }
    let err = s
        .op(late, Op::JoinChatroom(pb::JoinChatroom { room_id: 999 }))
        .unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::PermissionDenied as i32);
    // Not a member: cannot send.
    s.op(fast, Op::LeaveChatroom(pb::LeaveChatroom { room_id: 5 }))
        .unwrap();
    let err = s.send_text(fast, room(5), 1, "x").unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::NotAMember as i32);
}

#[test]
fn persisted_push_to_a_slow_consumer_kicks_it_and_it_resyncs() {
    let mut s = Sim::new(Config::default(), 7);
    s.outbound_limit = 1_500;
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    s.set_slow(bob, true);
    let mut i = 0;
    while s.client(bob).closed.is_none() {
        i += 1;
        assert!(i < 200, "slow consumer never kicked");
        s.send_text(alice, single(BOB), i, &format!("m{i}"))
            .unwrap();
    }
    assert_eq!(
        s.client(bob).closed,
        Some(CloseReason::Kicked(pb::KickReason::SlowConsumer))
    );
    assert_eq!(s.control.counters().kicks.slow_consumer, 1);
    // Nothing was lost: after reconnecting Bob syncs every message.
    let bob2 = s.login(BOB, "b", pb::Platform::Ios);
    let (all, _) = s.sync_all(bob2, Position::default(), 1000);
    assert_eq!(all.len() as u64, i);
}

#[test]
fn offline_public_account_follower_gets_posts_on_sync() {
    let mut s = sim();
    let owner = s.login(ALICE, "a", pb::Platform::Ios);
    let online = s.login(CAROL, "c", pb::Platform::Ios);
    let created = s
        .op(
            owner,
            Op::CreatePublicAccount(pb::CreatePublicAccount {
                name: "news".into(),
            }),
        )
        .unwrap();
    let aid = created.conversation.unwrap().id;
    assert_eq!(created.conversation, Some(account(aid)));
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    for conn in [bob, online] {
        s.op(conn, Op::Follow(pb::Follow { account_id: aid }))
            .unwrap();
    }
    // Bob syncs once (so his device has a cursor), then goes offline.
    let (_, cursor) = s.sync_all(bob, Position::default(), 100);
    s.disconnect(bob);

    for i in 1..=3 {
        s.send_text(owner, account(aid), i, &format!("post {i}"))
            .unwrap();
    }
    let err = s
        .send_text(online, account(aid), 1, "not mine")
        .unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::PermissionDenied as i32);
    let live = Sim::pushes(&s.client(online).take());
    assert_eq!(live.len(), 3, "online followers get pushes");

    let bob = s.login(BOB, "b", pb::Platform::Ios);
    assert!(Sim::pushes(&s.client(bob).take()).is_empty());
    let (posts, _) = s.sync_all(bob, cursor, 100);
    let texts: Vec<String> = posts
        .iter()
        .filter(|m| m.conversation == Some(account(aid)))
        .map(text_of)
        .collect();
    assert_eq!(texts, ["post 1", "post 2", "post 3"]);
}

#[test]
fn the_rate_limit_triggers_with_a_retry_hint() {
    let mut s = Sim::new(
        Config {
            rate_limit: RateLimit {
                burst: 5,
                per_second: 2,
            },
            ..Config::default()
        },
        7,
    );
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    for i in 1..=5 {
        s.send_text(alice, single(BOB), i, "ok").unwrap();
    }
    let err = s.send_text(alice, single(BOB), 6, "too fast").unwrap_err();
    assert_eq!(err.code, pb::ErrorCode::RateLimited as i32);
    assert_eq!(err.retry_after_ms, 500);
    assert_eq!(s.control.counters().rate_limited, 1);
    assert!(
        s.client(alice).closed.is_none(),
        "rate limiting does not disconnect"
    );
    s.advance(Duration::from_millis(500));
    s.send_text(alice, single(BOB), 6, "ok now").unwrap();
}

#[test]
fn login_deadline_closes_a_silent_connection() {
    let mut s = sim();
    let conn = s.connect();
    s.advance(Duration::from_millis(9_999));
    assert!(s.client(conn).closed.is_none());
    s.advance(Duration::from_millis(1));
    assert_eq!(s.client(conn).closed, Some(CloseReason::LoginTimeout));
    let errs = errors(&s.client(conn).take());
    assert_eq!(errs[0].code, pb::ErrorCode::LoginTimeout as i32);
    assert_eq!(s.control.counters().login_timeouts, 1);
    assert_eq!(s.control.connection_count(), 0);
    // Nothing is left to wake up for but housekeeping.
    assert!(s.control.poll_timeout().unwrap() > s.now);
}

#[test]
fn requests_before_login_are_refused_but_ping_is_answered() {
    let mut s = sim();
    let conn = s.connect();
    let rid = s.send(conn, pb::Ping { client_time_ms: 3 });
    assert!(matches!(
        Sim::answer(&s.client(conn).take(), rid),
        Some(Body::Pong(_))
    ));
    let rid = s.send(conn, pb::SyncRequest::default());
    let frames = s.client(conn).take();
    match Sim::answer(&frames, rid) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::NotLoggedIn as i32),
        other => panic!("expected NotLoggedIn, got {other:?}"),
    }
    assert_eq!(s.client(conn).closed, Some(CloseReason::NotLoggedIn));
}

#[test]
fn frame_errors_answer_and_close_only_when_fatal() {
    let mut s = sim();
    let conn = s.login(ALICE, "a", pb::Platform::Ios);
    s.control.handle(
        s.now,
        petrel_control::Event::FrameError {
            conn,
            error: FrameError::UnknownType {
                frame_type: 0x7f,
                request_id: 9,
                body_len: 0,
            },
        },
    );
    s.run();
    match Sim::answer(&s.client(conn).take(), 9) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::UnknownFrameType as i32),
        other => panic!("expected an error answer, got {other:?}"),
    }
    assert!(s.client(conn).closed.is_none());
    s.control.handle(
        s.now,
        petrel_control::Event::FrameError {
            conn,
            error: FrameError::BadMagic { found: *b"GE" },
        },
    );
    s.run();
    assert_eq!(
        errors(&s.client(conn).take())[0].code,
        pb::ErrorCode::BadMagic as i32
    );
    assert_eq!(
        s.client(conn).closed,
        Some(CloseReason::FatalFrameError(pb::ErrorCode::BadMagic))
    );
}

#[test]
fn a_bad_frame_before_login_is_answered_and_closes_the_connection() {
    let mut s = sim();
    let conn = s.connect();
    s.control.handle(
        s.now,
        petrel_control::Event::FrameError {
            conn,
            error: FrameError::InvalidBody {
                frame_type: petrel_proto::FrameType::Login,
                request_id: 4,
                reason: "truncated".into(),
            },
        },
    );
    s.run();
    match Sim::answer(&s.client(conn).take(), 4) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::InvalidBody as i32),
        other => panic!("expected an error answer, got {other:?}"),
    }
    assert_eq!(
        s.client(conn).closed,
        Some(CloseReason::BadFrameBeforeLogin(pb::ErrorCode::InvalidBody))
    );
}

#[test]
fn mark_read_moves_the_position_on_the_other_devices() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob_phone = s.login(BOB, "b1", pb::Platform::Ios);
    let bob_desk = s.login(BOB, "b2", pb::Platform::Desktop);
    for i in 1..=3 {
        s.send_text(alice, single(BOB), i, "x").unwrap();
    }
    s.client(bob_desk).take();
    s.op(
        bob_phone,
        Op::MarkRead(pb::MarkRead {
            conversation: Some(single(ALICE)),
            seq: 2,
        }),
    )
    .unwrap();
    let frames = s.client(bob_desk).take();
    let read = frames
        .iter()
        .find_map(|f| match &f.body {
            Body::ConversationEvent(e) if e.kind == pb::ConversationEventKind::Read as i32 => {
                Some(e.clone())
            }
            _ => None,
        })
        .expect("read event on the other device");
    assert_eq!((read.seq, read.conversation), (2, Some(single(ALICE))));
}

#[test]
fn history_pages_newest_first() {
    let mut s = sim();
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    for i in 1..=10 {
        s.send_text(alice, single(BOB), i, &format!("h{i}"))
            .unwrap();
    }
    let rid = s.send(
        alice,
        pb::HistoryRequest {
            conversation: Some(single(BOB)),
            before_seq: 0,
            limit: 4,
        },
    );
    let page = s
        .take_answer(alice, rid, |b| match b {
            Body::SyncResponse(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [10, 9, 8, 7]);
    assert!(page.has_more);
    let rid = s.send(
        alice,
        pb::HistoryRequest {
            conversation: Some(single(BOB)),
            before_seq: 3,
            limit: 4,
        },
    );
    let page = s
        .take_answer(alice, rid, |b| match b {
            Body::SyncResponse(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2, 1]);
    assert!(!page.has_more);
}

/// Randomized 1:1 traffic among users with one or two devices each, some of them
/// offline: every acked message reaches every online device of both sides exactly
/// once (the sender's own device excepted), and each pair's seqs are gap-free.
#[test]
fn randomized_one_to_one_traffic_is_delivered_exactly_once() {
    for seed in [1u64, 2, 3, 42] {
        let mut s = Sim::new(
            Config {
                rate_limit: RateLimit {
                    burst: 0,
                    per_second: 0,
                },
                ..Config::default()
            },
            seed,
        );
        let users: Vec<u64> = (1..=6).collect();
        let mut devices: BTreeMap<u64, Vec<_>> = BTreeMap::new();
        for &u in &users {
            let n = s.random_range(0..3); // 0 = offline
            for d in 0..n {
                let platform = if d == 0 {
                    pb::Platform::Ios
                } else {
                    pb::Platform::Desktop
                };
                let conn = s.login(u, &format!("u{u}d{d}"), platform);
                devices.entry(u).or_default().push(conn);
            }
        }
        let mut expected: BTreeMap<_, BTreeSet<(u64, u64, u64)>> = BTreeMap::new();
        let mut last_seq: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for msg_id in 1..=300u64 {
            let senders: Vec<u64> = devices.keys().copied().collect();
            if senders.is_empty() {
                break;
            }
            let from = senders[s.random_range(0..senders.len() as u64) as usize];
            let conns = devices[&from].clone();
            let conn = conns[s.random_range(0..conns.len() as u64) as usize];
            let to = users[s.random_range(0..users.len() as u64) as usize];
            if to == from {
                continue;
            }
            let ack = s.send_text(conn, single(to), msg_id, "r").unwrap();
            let pair = (from.min(to), from.max(to));
            let prev = last_seq.insert(pair, ack.seq).unwrap_or(0);
            assert_eq!(ack.seq, prev + 1, "seed {seed}: gap-free seqs");
            for (&u, cs) in &devices {
                if u != from && u != to {
                    continue;
                }
                for &c in cs {
                    if c != conn {
                        expected
                            .entry(c)
                            .or_default()
                            .insert((from, msg_id, ack.seq));
                    }
                }
            }
        }
        for (&c, want) in &expected {
            let got: Vec<(u64, u64, u64)> = Sim::pushes(&s.client(c).take())
                .iter()
                .map(|p| (p.sender, p.client_msg_id, p.seq))
                .collect();
            let unique: BTreeSet<_> = got.iter().copied().collect();
            assert_eq!(unique.len(), got.len(), "seed {seed}: duplicate push");
            assert_eq!(&unique, want, "seed {seed}: pushes to {c}");
        }
    }
}

#[test]
fn reconnect_storms_hit_the_token_cache_and_admin_kicks_close_every_device() {
    let mut s = sim();
    let token = s.token(ALICE, "a", pb::Platform::Ios, DAY);
    for _ in 0..5 {
        let conn = s.connect_on(3);
        assert_eq!(conn.core(), 3);
        s.login_with(conn, ALICE, "a", pb::Platform::Ios, &token)
            .unwrap();
    }
    // One signature check, four cache hits; each login replaced the previous one.
    assert_eq!(s.control.counters().token_cache_hits, 4);
    assert_eq!(s.control.counters().kicks.replaced, 4);
    assert_eq!(s.control.online_devices(ALICE).len(), 1);

    let desk = s.login(ALICE, "desk", pb::Platform::Desktop);
    assert_eq!(s.control.kick_user(ALICE, "account suspended"), 2);
    s.run();
    assert_eq!(
        s.client(desk).closed,
        Some(CloseReason::Kicked(pb::KickReason::Admin))
    );
    assert!(s.control.online_devices(ALICE).is_empty());
    assert_eq!(s.control.session_count(), 0);
}

#[test]
fn notes_to_self_and_group_echo_reach_each_other_device_once() {
    let mut s = sim();
    let phone = s.login(ALICE, "a-phone", pb::Platform::Ios);
    let desk = s.login(ALICE, "a-desk", pb::Platform::Desktop);
    let ack = s
        .send_text(phone, single(ALICE), 1, "note to self")
        .unwrap();
    assert_eq!(ack.conversation, Some(single(ALICE)));
    let at_desk = Sim::pushes(&s.client(desk).take());
    assert_eq!(at_desk.len(), 1, "{at_desk:?}");
    assert_eq!(at_desk[0].conversation, Some(single(ALICE)));
    assert!(Sim::pushes(&s.client(phone).take()).is_empty());

    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let gid = s
        .op(
            phone,
            Op::CreateGroup(pb::CreateGroup {
                name: "g".into(),
                members: vec![BOB, BOB, ALICE],
            }),
        )
        .unwrap()
        .conversation
        .unwrap()
        .id;
    s.send_text(phone, group(gid), 2, "to the group").unwrap();
    for conn in [desk, bob] {
        let got = Sim::pushes(&s.client(conn).take());
        assert_eq!(got.len(), 1, "{conn}: {got:?}");
        assert_eq!(got[0].conversation, Some(group(gid)));
    }
}

#[test]
fn shutdown_kicks_everyone() {
    let mut s = sim();
    let a = s.login(ALICE, "a", pb::Platform::Ios);
    let b = s.connect();
    s.control.shutdown();
    s.run();
    for conn in [a, b] {
        assert_eq!(
            s.client(conn).closed,
            Some(CloseReason::Kicked(pb::KickReason::ServerShutdown))
        );
    }
    assert_eq!(s.control.connection_count(), 0);
}
