//! End-to-end tests of `petrel serve`: the real binary, real TCP, RocksDB in a temporary
//! directory — each test once on kernel sockets over loopback (`NAME::kernel`) and once on
//! the AF_XDP dataplane over the veth lab (`NAME::xdp`, root only).

#[macro_use]
mod common;

use std::time::Duration;

use common::client::{single, text_of};
use common::{Dataplane, TestClient, TestServer};
use petrel_proto::header::{FrameHeader, HeaderRepr};
use petrel_proto::{Body, FrameFlags, FrameType, pb};

fn one_to_one_chat_both_ways_then_restart_and_sync_history_exactly_once(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "");
    let (alice, bob) = (101, 202);
    let mut a = TestClient::login(
        server.addr,
        &server.token(alice, "a-phone"),
        alice,
        "a-phone",
    );
    let mut b = TestClient::login(server.addr, &server.token(bob, "b-phone"), bob, "b-phone");

    let ack1 = a.send_text(single(bob), 1, "hi bob");
    assert_eq!(ack1.seq, 1);
    let push = b.push();
    assert_eq!(push.conversation, Some(single(alice)));
    assert_eq!(
        (push.seq, push.sender, text_of(&push).as_str()),
        (1, alice, "hi bob")
    );

    let ack2 = b.send_text(single(alice), 1, "hi alice");
    assert_eq!(ack2.seq, 2);
    let push = a.push();
    assert_eq!(push.conversation, Some(single(bob)));
    assert_eq!(
        (push.seq, push.sender, text_of(&push).as_str()),
        (2, bob, "hi alice")
    );

    drop((a, b));
    server.restart();

    for (user, peer, device) in [(alice, bob, "a-laptop"), (bob, alice, "b-laptop")] {
        let mut c = TestClient::login(server.addr, &server.token(user, device), user, device);
        let history = c.sync_all();
        let seen: Vec<(u64, u64, String)> = history
            .iter()
            .map(|m| (m.seq, m.sender, text_of(m)))
            .collect();
        assert_eq!(
            seen,
            vec![(1, alice, "hi bob".into()), (2, bob, "hi alice".into())],
            "user {user}"
        );
        assert!(history.iter().all(|m| m.conversation == Some(single(peer))));
    }
}

/// After any bad input the server must still serve everyone else.
fn assert_server_healthy(server: &mut TestServer) {
    assert!(server.is_running(), "server died");
    let (u, v) = (9_001, 9_002);
    let mut x = TestClient::login(server.addr, &server.token(u, "x"), u, "x");
    let mut y = TestClient::login(server.addr, &server.token(v, "y"), v, "y");
    x.send_text(single(v), rand::random(), "still alive?");
    assert_eq!(text_of(&y.push()), "still alive?");
}

fn expect_error_then_close(c: &mut TestClient, code: pb::ErrorCode) {
    let frames = c.recv_until_closed(Duration::from_secs(10));
    let codes: Vec<i32> = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Error(e) => Some(e.code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![code as i32], "frames before close: {frames:?}");
}

fn random_bytes_get_an_error_frame_and_a_close(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "");
    let mut c = TestClient::connect(server.addr);
    let garbage: Vec<u8> = (0..4096).map(|_| rand::random::<u8>() | 0x80).collect();
    c.send_raw(&garbage).unwrap();
    expect_error_then_close(&mut c, pb::ErrorCode::BadMagic);
    assert_server_healthy(&mut server);
}

fn a_header_announcing_one_gib_is_refused_before_any_body_is_read(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "");
    let rss_before = server.rss_kib();
    let mut c = TestClient::connect(server.addr);
    let header = HeaderRepr {
        frame_type: FrameType::SendMessage,
        flags: FrameFlags::NONE,
        request_id: 1,
        body_len: 1 << 30,
    };
    let mut bytes = [0u8; 16];
    header.emit(&mut FrameHeader::new_unchecked(&mut bytes[..]));
    c.send_raw(&bytes).unwrap();
    // Keep streaming body bytes: the server must not buffer them.
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..64 {
        if c.send_raw(&chunk).is_err() {
            break;
        }
    }
    expect_error_then_close(&mut c, pb::ErrorCode::FrameTooLarge);
    assert!(
        server.rss_kib() < rss_before + 16 * 1024,
        "server RSS grew from {rss_before} KiB to {} KiB",
        server.rss_kib()
    );
    assert_server_healthy(&mut server);
}

fn a_valid_header_with_an_invalid_protobuf_body_gets_an_error_and_a_close(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "");
    let mut c = TestClient::connect(server.addr);
    let header = HeaderRepr {
        frame_type: FrameType::Login,
        flags: FrameFlags::NONE,
        request_id: 7,
        body_len: 3,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(&[0x0a, 0xff, 0x01]); // a string field longer than the body
    c.send_raw(&bytes).unwrap();
    let sent = std::time::Instant::now();
    // The stream itself is still in sync, but a client that has not logged in gets no
    // second chance: the error, then an immediate close (not the login deadline's).
    let frames = c.recv_until_closed(Duration::from_secs(10));
    let first = frames.first().expect("an error frame");
    match &first.body {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::InvalidBody as i32),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(first.request_id, 7);
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "closed only by the 10 s login deadline"
    );
    assert_server_healthy(&mut server);
}

fn a_connection_that_sends_nothing_is_closed_at_the_login_deadline(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "login_deadline_secs = 1\n");
    let mut c = TestClient::connect(server.addr);
    let started = std::time::Instant::now();
    let frames = c.recv_until_closed(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        frames
            .iter()
            .all(|f| matches!(f.body, Body::Error(_) | Body::Kick(_))),
        "{frames:?}"
    );
    assert_server_healthy(&mut server);
}

fn sigterm_during_a_burst_loses_no_acked_message(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "rate_limit_per_second = 0\n");
    let (alice, bob) = (1, 2);
    let addr = server.addr;
    let token = server.token(alice, "burst");
    let sender = std::thread::spawn(move || {
        let mut a = TestClient::login(addr, &token, alice, "burst");
        let mut acked = Vec::new();
        for id in 1..=100_000u64 {
            a.send(&petrel_proto::Frame::new(
                id as u32,
                pb::SendMessage {
                    client_msg_id: id,
                    conversation: Some(single(bob)),
                    content: petrel_proto::wire::encode_content(&common::client::text_content(
                        &format!("m{id}"),
                    )),
                    ..Default::default()
                },
            ));
            // Read whatever acks are ready without stalling the burst.
            loop {
                match a.try_recv(Duration::from_secs(10)) {
                    Ok(Some(f)) => match f.body {
                        Body::Ack(ack) => {
                            acked.push(ack.client_msg_id);
                            break;
                        }
                        Body::Kick(_) | Body::Error(_) => return acked,
                        _ => {}
                    },
                    Ok(None) | Err(_) => return acked,
                }
            }
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(700));
    server.stop();
    let acked = sender.join().expect("sender thread");
    assert!(!acked.is_empty(), "nothing was acked before SIGTERM");

    server.restart_stopped();
    let mut b = TestClient::login(server.addr, &server.token(bob, "b"), bob, "b");
    let stored: std::collections::HashSet<u64> =
        b.sync_all().iter().map(|m| m.client_msg_id).collect();
    let lost: Vec<&u64> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acked messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

fn a_client_that_stops_reading_while_a_chatroom_floods_it_does_not_slow_the_room(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "rate_limit_per_second = 0\n");
    let room = pb::ConversationId {
        kind: pb::ConversationKind::Chatroom as i32,
        id: 5,
    };
    let join = |c: &mut TestClient| {
        let r = c.request(pb::ConversationOp {
            op: Some(pb::conversation_op::Op::JoinChatroom(pb::JoinChatroom {
                room_id: room.id,
            })),
        });
        assert!(matches!(r.body, Body::ConversationOpResult(_)), "{r:?}");
    };
    let (flooder, reader, stalled) = (51, 52, 53);
    let mut f = TestClient::login(server.addr, &server.token(flooder, "f"), flooder, "f");
    let mut r = TestClient::login(server.addr, &server.token(reader, "r"), reader, "r");
    let mut s = TestClient::login(server.addr, &server.token(stalled, "s"), stalled, "s");
    for c in [&mut f, &mut r, &mut s] {
        join(c);
    }
    // `s` never reads again. Its socket buffers fill, then the server's queue for it.
    let rss_before = server.rss_kib();
    let text = "x".repeat(1000);
    const MESSAGES: u64 = 20_000;
    for id in 1..=MESSAGES {
        let ack = f.send_text(room, id, &text);
        assert_eq!(ack.client_msg_id, id);
        // The attentive reader gets every message, in order, while `s` is stalled.
        let p = r.push();
        assert_eq!(p.client_msg_id, id);
    }
    // 20 MB went to the room; the server held at most its per-connection limit for `s`.
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "server RSS grew by {grown} KiB");

    // `s` reads again: every seq of the flood is either pushed to it or reported in a
    // Gap, exactly once, and each gap comes before any later push of the room.
    let mut covered: Vec<(u64, u64)> = Vec::new();
    let mut gaps = 0;
    while covered.last().is_none_or(|&(_, to)| to < MESSAGES) {
        let frame = s.recv();
        let (from, to) = match frame.body {
            Body::MessagePush(p) if p.conversation == Some(room) => (p.seq, p.seq),
            Body::Gap(g) if g.conversation == Some(room) => {
                gaps += 1;
                (g.from_seq, g.to_seq)
            }
            _ => continue,
        };
        let expected = covered.last().map_or(1, |&(_, to)| to + 1);
        assert_eq!(from, expected, "seqs {from}..={to} after {covered:?}");
        covered.push((from, to));
    }
    assert!(
        gaps >= 1,
        "the stalled member was never told it missed pushes"
    );
    // Caught up, it gets the next message like everyone else.
    f.send_text(room, MESSAGES + 1, "after the flood");
    assert_eq!(s.push().seq, MESSAGES + 1);
    assert_eq!(r.push().seq, MESSAGES + 1);
    assert_server_healthy(&mut server);
}

fn requests_during_a_graceful_shutdown_get_shutting_down_then_a_kick(dp: Dataplane) {
    let mut server = TestServer::start_on(dp, "shutdown_grace_ms = 1500\n");
    let (alice, bob) = (61, 62);
    let mut a = TestClient::login(server.addr, &server.token(alice, "a"), alice, "a");
    assert_eq!(a.send_text(single(bob), 1, "before").seq, 1);
    let late_token = server.token(bob, "b");

    server.signal_stop();
    std::thread::sleep(Duration::from_millis(300));
    // A new request is refused with SHUTTING_DOWN (answering its request id) and the
    // connection stays open; Ping is still answered.
    let refused = a.request(pb::SendMessage {
        client_msg_id: 2,
        conversation: Some(single(bob)),
        content: petrel_proto::wire::encode_content(&common::client::text_content("during")),
        ..Default::default()
    });
    match &refused.body {
        Body::Error(e) => assert_eq!(e.code, pb::ErrorCode::ShuttingDown as i32, "{e:?}"),
        other => panic!("expected SHUTTING_DOWN, got {other:?}"),
    }
    assert!(refused.flags.is_response());
    let pong = a.request(pb::Ping { client_time_ms: 5 });
    assert!(matches!(pong.body, Body::Pong(_)), "{pong:?}");
    // A login now is refused the same way, then closed.
    let mut late = TestClient::connect(server.addr);
    late.send(&petrel_proto::Frame::new(
        1,
        pb::Login {
            token: late_token,
            user_id: bob,
            device_id: "b".into(),
            platform: pb::Platform::Desktop as i32,
            client_version: "petrel-tests".into(),
            attempt: 0,
        },
    ));
    expect_error_then_close(&mut late, pb::ErrorCode::ShuttingDown);
    // Then everyone is kicked.
    let frames = a.recv_until_closed(Duration::from_secs(10));
    assert!(
        frames.iter().any(|f| matches!(&f.body,
            Body::Kick(k) if k.reason == pb::KickReason::ServerShutdown as i32)),
        "{frames:?}"
    );
    server.stop();

    // After the restart the refused message is sent again with its client_msg_id: it
    // was never stored, so it gets the next seq (not a duplicate).
    server.restart_stopped();
    let mut a = TestClient::login(server.addr, &server.token(alice, "a"), alice, "a");
    let ack = a.send_text(single(bob), 2, "during");
    assert_eq!((ack.seq, ack.duplicate), (2, false));
}

dataplane_tests!(
    one_to_one_chat_both_ways_then_restart_and_sync_history_exactly_once,
    random_bytes_get_an_error_frame_and_a_close,
    a_header_announcing_one_gib_is_refused_before_any_body_is_read,
    a_valid_header_with_an_invalid_protobuf_body_gets_an_error_and_a_close,
    a_connection_that_sends_nothing_is_closed_at_the_login_deadline,
    sigterm_during_a_burst_loses_no_acked_message,
    a_client_that_stops_reading_while_a_chatroom_floods_it_does_not_slow_the_room,
    requests_during_a_graceful_shutdown_get_shutting_down_then_a_kick,
);
