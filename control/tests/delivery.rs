//! Delivery receipts in the simulator: `MarkDelivered` is answered at once, stores
//! nothing, and reaches the other members' online devices as DELIVERY_RECEIPT (1:1
//! chats, and groups the reporter belongs to); never the reporter's own devices, and a
//! non-member's report reaches nobody.

mod harness;

use harness::{Sim, events, group, single};
use pb::ConversationEventKind::DeliveryReceipt;
use petrel_control::{Config, ConnId};
use petrel_proto::pb;

use pb::conversation_op::Op;

const ALICE: u64 = 7001;
const BOB: u64 = 7002;
const CAROL: u64 = 7003;
const EVE: u64 = 7009;

fn delivered(
    s: &mut Sim,
    conn: ConnId,
    conversation: pb::ConversationId,
    seq: u64,
) -> Result<pb::ConversationOpResult, pb::Error> {
    s.op(
        conn,
        Op::MarkDelivered(pb::MarkDelivered {
            conversation: Some(conversation),
            seq,
        }),
    )
}

#[test]
fn a_delivery_report_reaches_the_other_members_and_only_them() {
    let mut s = Sim::new(Config::default(), 1);
    let alice = s.login(ALICE, "phone", pb::Platform::Ios);
    let alice_laptop = s.login(ALICE, "laptop", pb::Platform::Desktop);
    let bob = s.login(BOB, "phone", pb::Platform::Ios);
    let carol = s.login(CAROL, "phone", pb::Platform::Ios);
    let eve = s.login(EVE, "phone", pb::Platform::Ios);
    s.send_text(alice, single(BOB), 1, "hi").unwrap();
    let g = group(s.create_group(alice, vec![BOB, CAROL]));
    s.send_text(alice, g, 2, "all").unwrap();
    s.clear(&[alice, alice_laptop, bob, carol, eve]);

    // 1:1: Bob's device has seq 1; both of Alice's devices hear it, named after Bob.
    delivered(&mut s, bob, single(ALICE), 1).expect("answered");
    for conn in [alice, alice_laptop] {
        assert_eq!(
            events(&s.client(conn).take(), DeliveryReceipt),
            [(single(BOB), BOB, 1)]
        );
    }
    assert!(
        s.client(bob).take().is_empty(),
        "not the reporter's own devices"
    );
    assert_eq!(s.control.counters().delivery_receipts, 2);

    // Group: Carol reports; Alice and Bob hear it, Eve (not a member) does not.
    delivered(&mut s, carol, g, 1).expect("answered");
    assert_eq!(
        events(&s.client(alice).take(), DeliveryReceipt),
        [(g, CAROL, 1)]
    );
    assert_eq!(
        events(&s.client(bob).take(), DeliveryReceipt),
        [(g, CAROL, 1)]
    );
    assert!(events(&s.client(eve).take(), DeliveryReceipt).is_empty());

    // Eve is no member: her report is answered (nothing is stored) but reaches nobody.
    delivered(&mut s, eve, g, 1).expect("answered");
    for conn in [alice, bob, carol] {
        assert!(events(&s.client(conn).take(), DeliveryReceipt).is_empty());
    }

    // Seq 0 and chatrooms have no delivered position.
    let zero = delivered(&mut s, bob, single(ALICE), 0).unwrap_err();
    assert_eq!(zero.code, pb::ErrorCode::InvalidRequest as i32);
    let room = delivered(&mut s, bob, harness::room(5), 1).unwrap_err();
    assert_eq!(room.code, pb::ErrorCode::InvalidRequest as i32);
}
