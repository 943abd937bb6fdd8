//! Replies and mentions in the simulator: what the sender names travels with the live
//! push and with sync (members only), a mentioned member's conversation state counts it
//! until they read past it, and a send naming too many users is refused.

mod harness;

use harness::{Position, Sim, group, text_content};
use petrel_control::{Config, ConnId};
use petrel_proto::{Body, pb};

use pb::conversation_op::Op;

const ALICE: u64 = 6001;
const BOB: u64 = 6002;
const CAROL: u64 = 6003;
const STRANGER: u64 = 6099;

fn send_with_refs(
    s: &mut Sim,
    conn: ConnId,
    conversation: pb::ConversationId,
    client_msg_id: u64,
    reply_to: u64,
    mentions: Vec<u64>,
) -> Result<pb::Ack, pb::Error> {
    let rid = s.send(
        conn,
        pb::SendMessage {
            client_msg_id,
            conversation: Some(conversation),
            content: petrel_proto::wire::encode_content(&text_content("hey")),
            reply_to,
            mentions,
        },
    );
    s.take_answer(conn, rid, |b| match b {
        Body::Ack(a) => Some(a),
        _ => None,
    })
}

#[test]
fn a_mention_reaches_the_push_sync_and_the_unread_mention_count() {
    let mut s = Sim::new(Config::default(), 1);
    let alice = s.login(ALICE, "phone", pb::Platform::Ios);
    let bob = s.login(BOB, "phone", pb::Platform::Ios);
    let bob_laptop = s.login(BOB, "laptop", pb::Platform::Desktop);
    let carol = s.login(CAROL, "phone", pb::Platform::Ios);
    let g = group(s.create_group(alice, vec![BOB, CAROL]));
    s.send_text(alice, g, 1, "question?").unwrap();
    s.clear(&[alice, bob, bob_laptop, carol]);

    // Bob answers message 1, naming Alice, a stranger and himself: only Alice stays.
    let ack = send_with_refs(&mut s, bob, g, 2, 1, vec![ALICE, STRANGER, BOB]).unwrap();
    assert_eq!(ack.seq, 2);
    let pushed = Sim::pushes(&s.client(alice).take());
    assert_eq!(pushed.len(), 1);
    assert_eq!(
        (pushed[0].reply_to, pushed[0].mentions.clone()),
        (1, vec![ALICE])
    );
    let echoed = Sim::pushes(&s.client(bob_laptop).take());
    assert_eq!(
        echoed[0].mentions,
        vec![ALICE],
        "the sender's other devices see it too"
    );
    let (synced, _) = s.sync_all(carol, Position::default(), 100);
    let two = synced.iter().find(|m| m.seq == 2).unwrap();
    assert_eq!((two.reply_to, two.mentions.clone()), (1, vec![ALICE]));

    // Alice has one unread mention; Carol none. Reading past it clears it.
    assert_eq!(
        s.conversation_state(alice, g)
            .expect("the group is reported")
            .unread_mentions,
        1
    );
    assert_eq!(
        s.conversation_state(carol, g)
            .expect("the group is reported")
            .unread_mentions,
        0
    );
    s.op(
        alice,
        Op::MarkRead(pb::MarkRead {
            conversation: Some(g),
            seq: 2,
        }),
    )
    .expect("mark read");
    assert_eq!(
        s.conversation_state(alice, g)
            .expect("the group is reported")
            .unread_mentions,
        0
    );

    // A reply to a message that does not exist yet, and too many mentions, are refused.
    let future = send_with_refs(&mut s, bob, g, 3, 9, vec![]).unwrap_err();
    assert_eq!(future.code, pb::ErrorCode::InvalidRequest as i32);
    let many = send_with_refs(&mut s, bob, g, 4, 0, (1..=101).collect()).unwrap_err();
    assert_eq!(many.code, pb::ErrorCode::InvalidRequest as i32);
}
