//! Read receipts in the simulator: a member's read position reaches the other members
//! (1:1 peer on every device, groups up to `read_receipt_max_group`), the reader's own
//! other devices get `READ` and never a receipt, and unread counts across devices.

mod harness;

use harness::{Sim, account, events, group, single};
use petrel_control::{Config, ConnId};
use petrel_proto::pb;

use pb::ConversationEventKind as Kind;
use pb::conversation_op::Op;

const ALICE: u64 = 3001;
const BOB: u64 = 3002;
const CAROL: u64 = 3003;

fn mark_read(s: &mut Sim, conn: ConnId, conversation: pb::ConversationId, seq: u64) {
    s.op(
        conn,
        Op::MarkRead(pb::MarkRead {
            conversation: Some(conversation),
            seq,
        }),
    )
    .expect("mark read");
}

#[test]
fn a_one_to_one_read_reaches_every_device_of_the_peer_and_moves_only_the_readers_unread() {
    let mut s = Sim::new(Config::default(), 1);
    let a_phone = s.login(ALICE, "phone", pb::Platform::Ios);
    let b_phone = s.login(BOB, "phone", pb::Platform::Ios);
    let b_laptop = s.login(BOB, "laptop", pb::Platform::Desktop);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    for n in 1..=3 {
        s.send_text(a_phone, single(BOB), n, "hi").unwrap();
    }
    s.clear(&[a_phone, b_phone, b_laptop, carol]);

    // Bob reads on his phone: his laptop moves its own position (READ), Alice gets a
    // receipt naming the chat after Bob, nobody else hears anything.
    mark_read(&mut s, b_phone, single(ALICE), 3);
    let laptop = s.client(b_laptop).take();
    assert_eq!(events(&laptop, Kind::Read), [(single(ALICE), BOB, 3)]);
    assert!(events(&laptop, Kind::ReadReceipt).is_empty());
    let alice = s.client(a_phone).take();
    assert_eq!(events(&alice, Kind::ReadReceipt), [(single(BOB), BOB, 3)]);
    assert!(
        events(&alice, Kind::Read).is_empty(),
        "not Alice's own position"
    );
    assert!(s.client(carol).take().is_empty());
    assert!(
        s.client(b_phone).take().is_empty(),
        "the reader has its answer"
    );
    assert_eq!(s.control.counters().read_receipts, 1);

    // Unread counts: Bob's are cleared on every device (the laptop's sync says so),
    // Alice's own read position of the chat did not move.
    assert_eq!(
        s.conversation_state(b_laptop, single(ALICE))
            .map(|c| c.read_seq),
        Some(3)
    );
    assert_eq!(
        s.conversation_state(a_phone, single(BOB))
            .map(|c| c.read_seq),
        Some(0)
    );
}

#[test]
fn group_receipts_reach_online_members_up_to_the_configured_size() {
    let config = Config {
        read_receipt_max_group: 3,
        ..Config::default()
    };
    let mut s = Sim::new(config, 2);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    let small = s.create_group(alice, vec![BOB, CAROL]);
    let large = s.create_group(alice, vec![BOB, CAROL, 3004]);
    for gid in [small, large] {
        s.send_text(alice, group(gid), gid, "hello all").unwrap();
    }
    s.clear(&[alice, bob, carol]);

    mark_read(&mut s, bob, group(small), 1);
    for conn in [alice, carol] {
        assert_eq!(
            events(&s.client(conn).take(), Kind::ReadReceipt),
            [(group(small), BOB, 1)]
        );
    }
    assert!(s.client(bob).take().is_empty());

    // Four members is over the size: the read is stored, nobody is told.
    mark_read(&mut s, bob, group(large), 1);
    for conn in [alice, bob, carol] {
        assert!(s.client(conn).take().is_empty());
    }
    assert_eq!(s.control.counters().read_receipts, 2);
}

#[test]
fn public_accounts_send_no_receipts_and_zero_turns_group_receipts_off() {
    let config = Config {
        read_receipt_max_group: 0,
        ..Config::default()
    };
    let mut s = Sim::new(config, 3);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let gid = s.create_group(alice, vec![BOB]);
    let acct = s
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
    s.op(bob, Op::Follow(pb::Follow { account_id: acct }))
        .unwrap();
    s.send_text(alice, group(gid), 1, "g").unwrap();
    s.send_text(alice, account(acct), 2, "post").unwrap();
    s.clear(&[alice, bob]);

    mark_read(&mut s, bob, group(gid), 1);
    mark_read(&mut s, bob, account(acct), 1);
    assert!(events(&s.client(alice).take(), Kind::ReadReceipt).is_empty());
    // 1:1 receipts do not depend on the group setting.
    s.send_text(alice, single(BOB), 3, "dm").unwrap();
    s.client(alice).take();
    mark_read(&mut s, bob, single(ALICE), 1);
    assert_eq!(
        events(&s.client(alice).take(), Kind::ReadReceipt),
        [(single(BOB), BOB, 1)]
    );
}
