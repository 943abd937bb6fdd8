//! Typing indicators in the simulator: who gets a `TypingNotice`, who does not, the
//! sender's own limit, and that nothing is stored or answered.

mod harness;

use std::time::Duration;

use harness::{Position, Sim, account, group, room, single};
use petrel_control::{Config, TYPING_EXPIRES_MS};
use petrel_proto::{Body, Frame, pb};

use pb::conversation_op::Op;

const ALICE: u64 = 2001;
const BOB: u64 = 2002;
const CAROL: u64 = 2003;
const DAVE: u64 = 2004;

fn typing(conversation: pb::ConversationId, on: bool) -> pb::Typing {
    pb::Typing {
        conversation: Some(conversation),
        typing: on,
    }
}

/// The typing notices among `frames`, as (conversation, user, typing).
fn notices(frames: &[Frame]) -> Vec<(pb::ConversationId, u64, bool)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::TypingNotice(n) => {
                assert_eq!(n.expires_ms, TYPING_EXPIRES_MS);
                assert_eq!(f.request_id, 0, "notices are unsolicited");
                Some((n.conversation.unwrap(), n.user, n.typing))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn one_to_one_typing_reaches_every_device_of_the_peer_and_nothing_else() {
    let mut s = Sim::new(Config::default(), 1);
    let a_phone = s.login(ALICE, "phone", pb::Platform::Ios);
    let a_laptop = s.login(ALICE, "laptop", pb::Platform::Desktop);
    let b_phone = s.login(BOB, "phone", pb::Platform::Ios);
    let b_desk = s.login(BOB, "desk", pb::Platform::Desktop);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    s.clear(&[a_phone, a_laptop, b_phone, b_desk, carol]);

    s.send(a_phone, typing(single(BOB), true));
    s.send(a_phone, typing(single(BOB), false));
    for conn in [b_phone, b_desk] {
        assert_eq!(
            notices(&s.client(conn).take()),
            [(single(ALICE), ALICE, true), (single(ALICE), ALICE, false)],
            "the peer sees the chat named after the sender"
        );
    }
    for conn in [a_phone, a_laptop, carol] {
        assert!(s.client(conn).take().is_empty(), "no answer, no echo");
    }
    assert_eq!(s.control.counters().typing_notices, 4);
    // Never stored: the peer's sync has nothing.
    let (stored, _) = s.sync_all(b_phone, Position::default(), 50);
    assert!(stored.is_empty(), "{stored:?}");
}

#[test]
fn group_typing_reaches_online_members_and_a_stranger_reaches_no_one() {
    let mut s = Sim::new(Config::default(), 2);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let dave = s.login(DAVE, "d", pb::Platform::Ios);
    // Carol is a member but offline.
    let gid = s.create_group(alice, vec![BOB, CAROL]);
    s.clear(&[alice, bob, dave]);

    s.send(alice, typing(group(gid), true));
    assert_eq!(notices(&s.client(bob).take()), [(group(gid), ALICE, true)]);
    assert!(s.client(alice).take().is_empty());
    assert!(s.client(dave).take().is_empty(), "not a member");

    let dropped = s.control.counters().typing_dropped;
    s.send(dave, typing(group(gid), true));
    assert!(s.client(alice).take().is_empty() && s.client(bob).take().is_empty());
    assert!(
        s.client(dave).take().is_empty(),
        "no error either: fire and forget"
    );
    assert_eq!(s.control.counters().typing_dropped, dropped + 1);

    // A later login of Carol sees nothing of it: typing is not stored.
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    let frames = s.client(carol).take();
    assert!(notices(&frames).is_empty());
}

#[test]
fn the_typing_limit_is_the_senders_own_and_drops_silently() {
    let mut s = Sim::new(Config::default(), 3);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    s.clear(&[alice, bob]);
    for _ in 0..10 {
        s.send(alice, typing(single(BOB), true));
    }
    assert_eq!(notices(&s.client(bob).take()).len(), 3, "the burst");
    assert_eq!(s.control.counters().typing_dropped, 7);
    assert!(s.client(alice).take().is_empty());
    s.advance(Duration::from_millis(1_000));
    s.send(alice, typing(single(BOB), false));
    assert_eq!(notices(&s.client(bob).take()).len(), 1, "one a second");
    // Typing does not eat the request budget: a send still goes through.
    assert_eq!(s.send_text(alice, single(BOB), 1, "hi").unwrap().seq, 1);
}

#[test]
fn public_accounts_and_audiences_over_the_limit_drop_typing() {
    let config = Config {
        typing_max_audience: 2,
        ..Config::default()
    };
    let mut s = Sim::new(config, 4);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    let gid = s.create_group(alice, vec![BOB, CAROL]);
    let aid = s
        .op(
            alice,
            Op::CreatePublicAccount(pb::CreatePublicAccount {
                name: "news".into(),
            }),
        )
        .unwrap()
        .conversation
        .unwrap()
        .id;
    s.op(bob, Op::Follow(pb::Follow { account_id: aid }))
        .unwrap();
    for conn in [alice, bob, carol] {
        s.op(conn, Op::JoinChatroom(pb::JoinChatroom { room_id: 9 }))
            .unwrap();
    }
    s.clear(&[alice, bob, carol]);
    s.send(alice, typing(group(gid), true)); // three members > 2
    s.send(alice, typing(account(aid), true));
    s.send(alice, typing(room(9), true)); // three connections > 2
    assert!(notices(&s.client(bob).take()).is_empty());
    assert!(notices(&s.client(carol).take()).is_empty());
    assert_eq!(s.control.counters().typing_dropped, 3);
    assert_eq!(s.control.counters().typing_notices, 0);
}

#[test]
fn chatroom_typing_reaches_the_rooms_connections_but_not_congested_ones() {
    let mut s = Sim::new(Config::default(), 5);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    for conn in [alice, bob, carol] {
        s.op(conn, Op::JoinChatroom(pb::JoinChatroom { room_id: 9 }))
            .unwrap();
    }
    s.clear(&[alice, bob, carol]);
    s.send(alice, typing(room(9), true));
    assert_eq!(notices(&s.client(bob).take()), [(room(9), ALICE, true)]);
    assert_eq!(notices(&s.client(carol).take()), [(room(9), ALICE, true)]);

    // Carol stops reading until her connection is congested: typing skips her first.
    s.outbound_limit = 300;
    s.set_slow(carol, true);
    let mut i = 0;
    while !s.client(carol).congested {
        i += 1;
        assert!(i < 100, "never congested");
        s.send_text(
            bob,
            room(9),
            i,
            "a message long enough to fill a small queue",
        )
        .unwrap();
    }
    s.clear(&[bob, carol]);
    let dropped = s.control.counters().typing_dropped;
    s.send(alice, typing(room(9), false));
    assert_eq!(notices(&s.client(bob).take()), [(room(9), ALICE, false)]);
    assert!(notices(&s.client(carol).take()).is_empty());
    assert_eq!(s.control.counters().typing_dropped, dropped + 1);
}
