//! Offline notices in the simulator (`Config::offline_notices`, the input of webhooks):
//! a stored message names exactly the recipients with no online session, once, after
//! it is durable; never the sender, never for a retried send, nothing when turned off.

mod harness;

use harness::{Sim, group, single};
use petrel_control::Config;
use petrel_proto::pb;
use petrel_storage::ConversationKey;

const ALICE: u64 = 4001;
const BOB: u64 = 4002;
const CAROL: u64 = 4003;
const DAVE: u64 = 4004;

fn notices_on() -> Config {
    Config {
        offline_notices: true,
        ..Config::default()
    }
}

#[test]
fn a_message_to_an_offline_peer_names_it_once_and_an_online_peer_never() {
    let mut s = Sim::new(notices_on(), 1);
    let alice = s.login(ALICE, "phone", pb::Platform::Ios);
    let ack = s
        .send_text(alice, single(BOB), 1, "are you there?")
        .unwrap();
    assert_eq!(s.offline.len(), 1);
    let notice = &s.offline[0];
    assert_eq!(notice.recipients, [BOB]);
    assert_eq!(notice.sender, ALICE);
    assert_eq!(notice.sender_device, "phone");
    assert_eq!(notice.seq, ack.seq);
    assert_eq!(notice.client_msg_id, 1);
    assert_eq!(
        notice.conversation,
        ConversationKey::single(petrel_storage::UserId(ALICE), petrel_storage::UserId(BOB))
    );
    assert_eq!(
        <petrel_proto::pb::Content as prost::Message>::decode(notice.content.clone()).unwrap(),
        harness::text_content("are you there?")
    );

    // A retry is answered from the stored original and notifies nobody again.
    let again = s
        .send_text(alice, single(BOB), 1, "are you there?")
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(s.offline.len(), 1);

    // Once Bob is online, messages to him are pushed, not noticed; and his reply names
    // nobody (Alice is online).
    let bob = s.login(BOB, "laptop", pb::Platform::Desktop);
    s.send_text(alice, single(BOB), 2, "hi").unwrap();
    s.send_text(bob, single(ALICE), 1, "hello").unwrap();
    assert_eq!(s.offline.len(), 1);

    // Bob gone again: the next message names him again.
    s.disconnect(bob);
    s.send_text(alice, single(BOB), 3, "bye").unwrap();
    assert_eq!(s.offline.len(), 2);
    assert_eq!(s.offline[1].recipients, [BOB]);
    assert_eq!(s.control.counters().offline_notices, 2);
}

#[test]
fn a_group_message_names_only_its_offline_members_and_never_the_sender() {
    let mut s = Sim::new(notices_on(), 2);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let _bob = s.login(BOB, "b", pb::Platform::Ios);
    let gid = s.create_group(alice, vec![BOB, CAROL, DAVE]);
    s.offline.clear();
    // Alice's only device is the one sending: she is not "offline" for her own message.
    s.send_text(alice, group(gid), 1, "hello all").unwrap();
    assert_eq!(s.offline.len(), 1);
    let mut recipients = s.offline[0].recipients.clone();
    recipients.sort_unstable();
    assert_eq!(recipients, [CAROL, DAVE]);
    assert_eq!(s.offline[0].conversation, ConversationKey::Group(gid));
}

#[test]
fn nothing_is_noticed_when_turned_off() {
    let mut s = Sim::new(Config::default(), 3);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    s.send_text(alice, single(BOB), 1, "hi").unwrap();
    assert!(s.offline.is_empty());
    assert_eq!(s.control.counters().offline_notices, 0);
}
