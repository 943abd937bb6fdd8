//! Recall and edit in the simulator: who may recall (the sender within the window, a
//! group's owner or admins any time) or edit (the sender within its window), who is told
//! live (every participant's other devices, each naming the conversation their way), and
//! what sync shows afterwards (the message in its place, recalled without content, or
//! its latest version).

mod harness;

use std::time::Duration;

use harness::{Position, Sim, events, group, single};
use pb::ConversationEventKind::Recalled;
use petrel_control::{Config, ConnId};
use petrel_proto::{Body, Frame, pb};

use pb::conversation_op::Op;

const ALICE: u64 = 5001;
const BOB: u64 = 5002;
const CAROL: u64 = 5003;

fn recall(
    s: &mut Sim,
    conn: ConnId,
    conversation: pb::ConversationId,
    seq: u64,
) -> Result<pb::ConversationOpResult, pb::Error> {
    s.op(
        conn,
        Op::RecallMessage(pb::RecallMessage {
            conversation: Some(conversation),
            seq,
        }),
    )
}

#[test]
fn a_sender_recalls_within_the_window_and_every_device_hears_it_its_own_way() {
    let mut s = Sim::new(Config::default(), 1);
    let a_phone = s.login(ALICE, "phone", pb::Platform::Ios);
    let a_laptop = s.login(ALICE, "laptop", pb::Platform::Desktop);
    let bob = s.login(BOB, "phone", pb::Platform::Ios);
    let carol = s.login(CAROL, "phone", pb::Platform::Ios);
    s.send_text(a_phone, single(BOB), 1, "oops").unwrap();
    s.send_text(a_phone, single(BOB), 2, "fine").unwrap();
    s.clear(&[a_phone, a_laptop, bob, carol]);

    // The peer cannot recall Alice's message. Carol cannot even name it: her
    // `single(ALICE)` is her own chat with Alice, which has no message 1.
    let denied = recall(&mut s, bob, single(ALICE), 1).unwrap_err();
    assert_eq!(denied.code, pb::ErrorCode::PermissionDenied as i32);
    let outsider = recall(&mut s, carol, single(ALICE), 1).unwrap_err();
    assert_eq!(outsider.code, pb::ErrorCode::NotFound as i32);
    let missing = recall(&mut s, a_phone, single(BOB), 9).unwrap_err();
    assert_eq!(missing.code, pb::ErrorCode::NotFound as i32);

    recall(&mut s, a_phone, single(BOB), 1).expect("the sender recalls");
    assert_eq!(
        events(&s.client(bob).take(), Recalled),
        [(single(ALICE), ALICE, 1)]
    );
    assert_eq!(
        events(&s.client(a_laptop).take(), Recalled),
        [(single(BOB), ALICE, 1)]
    );
    assert!(s.client(carol).take().is_empty());
    assert_eq!(s.control.counters().messages_recalled, 1);
    // Again: answered, not refused.
    recall(&mut s, a_laptop, single(BOB), 1).expect("a repeated recall is answered");

    // A device syncing from scratch sees seq 1 recalled, without content, and seq 2.
    let (pushes, _) = s.sync_all(bob, Position::default(), 100);
    let mine: Vec<_> = pushes
        .iter()
        .filter(|p| p.conversation == Some(single(ALICE)))
        .map(|p| (p.seq, p.recalled_by, p.content.is_empty()))
        .collect();
    assert_eq!(mine, [(1, ALICE, true), (2, 0, false)]);

    // Past the window the sender can no longer recall.
    s.advance(Duration::from_secs(121));
    let late = recall(&mut s, a_phone, single(BOB), 2).unwrap_err();
    assert_eq!(late.code, pb::ErrorCode::PermissionDenied as i32);
    assert!(late.message.contains("recall window"), "{late:?}");
}

#[test]
fn a_group_admin_recalls_any_members_message_at_any_time() {
    let mut s = Sim::new(Config::default(), 2);
    let alice = s.login(ALICE, "a", pb::Platform::Ios);
    let bob = s.login(BOB, "b", pb::Platform::Ios);
    let carol = s.login(CAROL, "c", pb::Platform::Ios);
    let gid = s.create_group(alice, vec![BOB, CAROL]);
    s.send_text(carol, group(gid), 1, "spam").unwrap();
    // Past the sender's window (the sessions are still within their idle timeout).
    s.advance(Duration::from_secs(130));
    s.clear(&[alice, bob, carol]);
    let late = recall(&mut s, carol, group(gid), 1).unwrap_err();
    assert_eq!(late.code, pb::ErrorCode::PermissionDenied as i32);
    // Bob, a plain member, may not; the owner may, after the window.
    let denied = recall(&mut s, bob, group(gid), 1).unwrap_err();
    assert_eq!(denied.code, pb::ErrorCode::PermissionDenied as i32);
    recall(&mut s, alice, group(gid), 1).expect("the owner recalls");
    for conn in [bob, carol] {
        assert_eq!(
            events(&s.client(conn).take(), Recalled),
            [(group(gid), ALICE, 1)]
        );
    }
    let history = s.send(
        bob,
        pb::HistoryRequest {
            conversation: Some(group(gid)),
            before_seq: 0,
            limit: 10,
        },
    );
    let page = s
        .take_answer(bob, history, |b| match b {
            Body::SyncResponse(r) => Some(r),
            _ => None,
        })
        .expect("history");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].recalled_by, ALICE);
    assert!(page.messages[0].content.is_empty());
}

fn edit(
    s: &mut Sim,
    conn: ConnId,
    conversation: pb::ConversationId,
    seq: u64,
    text: &str,
) -> Result<pb::ConversationOpResult, pb::Error> {
    s.op(
        conn,
        Op::EditMessage(pb::EditMessage {
            conversation: Some(conversation),
            seq,
            content: Some(harness::text_content(text)),
        }),
    )
}

/// The pushes among `frames`, as (conversation, seq, edited_at_ms != 0, text).
fn pushes(frames: &[Frame]) -> Vec<(pb::ConversationId, u64, bool, String)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::MessagePush(p) => {
                let text = match p.decode_content().ok()?.body? {
                    pb::content::Body::Text(t) => t.text,
                    _ => String::new(),
                };
                Some((p.conversation.unwrap(), p.seq, p.edited_at_ms != 0, text))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn only_the_sender_edits_within_the_window_and_every_device_gets_the_new_version() {
    let mut s = Sim::new(Config::default(), 3);
    let a_phone = s.login(ALICE, "phone", pb::Platform::Ios);
    let a_laptop = s.login(ALICE, "laptop", pb::Platform::Desktop);
    let bob = s.login(BOB, "phone", pb::Platform::Ios);
    s.send_text(a_phone, single(BOB), 1, "teh").unwrap();
    s.clear(&[a_phone, a_laptop, bob]);

    let denied = edit(&mut s, bob, single(ALICE), 1, "mine now").unwrap_err();
    assert_eq!(denied.code, pb::ErrorCode::PermissionDenied as i32);
    let empty = s
        .op(
            a_phone,
            Op::EditMessage(pb::EditMessage {
                conversation: Some(single(BOB)),
                seq: 1,
                content: None,
            }),
        )
        .unwrap_err();
    assert_eq!(empty.code, pb::ErrorCode::InvalidRequest as i32);

    edit(&mut s, a_phone, single(BOB), 1, "the").expect("the sender edits");
    assert_eq!(
        pushes(&s.client(bob).take()),
        [(single(ALICE), 1, true, "the".to_owned())]
    );
    assert_eq!(
        pushes(&s.client(a_laptop).take()),
        [(single(BOB), 1, true, "the".to_owned())]
    );
    assert_eq!(s.control.counters().messages_edited, 1);
    // A sync returns the latest version.
    let (synced, _) = s.sync_all(bob, Position::default(), 100);
    let got: Vec<_> = synced
        .iter()
        .map(|p| (p.seq, p.edited_at_ms != 0))
        .collect();
    assert_eq!(got, [(1, true)]);
    // A recalled message is gone for edits too.
    recall(&mut s, a_phone, single(BOB), 1).unwrap();
    let gone = edit(&mut s, a_phone, single(BOB), 1, "again").unwrap_err();
    assert_eq!(gone.code, pb::ErrorCode::NotFound as i32);
}
