//! End-to-end delivery in every scenario over real TCP: a group of 50, a chatroom of 200,
//! and a public account with 100 followers, some of them offline.

#[macro_use]
mod common;

use std::collections::HashSet;

use common::client::text_of;
use common::{Dataplane, TestClient, TestServer};
use petrel_proto::Body;
use petrel_proto::pb::{self, ConversationKind, conversation_op::Op};

fn login_many(server: &TestServer, users: impl IntoIterator<Item = u64>) -> Vec<TestClient> {
    users
        .into_iter()
        .map(|u| TestClient::login(server.addr, &server.token(u, "dev"), u, "dev"))
        .collect()
}

fn op(c: &mut TestClient, op: Op) -> pb::ConversationOpResult {
    let frame = c.request(pb::ConversationOp { op: Some(op) });
    match frame.body {
        Body::ConversationOpResult(r) => r,
        other => panic!("conversation op failed: {other:?}"),
    }
}

fn conv(kind: ConversationKind, id: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: kind as i32,
        id,
    }
}

fn group_of_fifty_every_member_gets_every_message_once(dp: Dataplane) {
    let server = TestServer::start_on(dp, "");
    let users: Vec<u64> = (1_000..1_050).collect();
    let mut clients = login_many(&server, users.iter().copied());
    let created = op(
        &mut clients[0],
        Op::CreateGroup(pb::CreateGroup {
            name: "fifty".into(),
            members: users[1..].to_vec(),
        }),
    );
    let group = created.conversation.expect("group id");
    assert_eq!(group.kind, ConversationKind::Group as i32);

    let senders = [0usize, 17, 49];
    for (n, &s) in senders.iter().enumerate() {
        let ack = clients[s].send_text(group, n as u64 + 1, &format!("from {}", users[s]));
        assert_eq!(ack.seq, n as u64 + 1);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let expected: Vec<(u64, String)> = senders
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s != i)
            .map(|(n, &s)| (n as u64 + 1, format!("from {}", users[s])))
            .collect();
        let got: Vec<(u64, String)> = (0..expected.len())
            .map(|_| {
                let p = c.push();
                assert_eq!(p.conversation, Some(group));
                (p.seq, text_of(&p).to_owned())
            })
            .collect();
        assert_eq!(got, expected, "member {}", users[i]);
    }
}

fn chatroom_of_two_hundred_delivers_to_everyone_online(dp: Dataplane) {
    let server = TestServer::start_on(dp, "");
    let users: Vec<u64> = (2_000..2_200).collect();
    let mut clients = login_many(&server, users.iter().copied());
    let room = 77;
    for c in clients.iter_mut() {
        op(c, Op::JoinChatroom(pb::JoinChatroom { room_id: room }));
    }
    clients[5].send_text(conv(ConversationKind::Chatroom, room), 1, "hello room");
    for (i, c) in clients.iter_mut().enumerate() {
        if i == 5 {
            continue;
        }
        let p = c.push();
        assert_eq!(p.conversation, Some(conv(ConversationKind::Chatroom, room)));
        assert_eq!((p.sender, text_of(&p).as_str()), (users[5], "hello room"));
    }
}

fn public_account_reaches_online_followers_live_and_offline_ones_on_sync(dp: Dataplane) {
    let server = TestServer::start_on(dp, "");
    let owner = 3_000;
    let followers: Vec<u64> = (3_001..3_101).collect();
    let mut owner_client = login_many(&server, [owner]).pop().unwrap();
    let account = op(
        &mut owner_client,
        Op::CreatePublicAccount(pb::CreatePublicAccount {
            name: "news".into(),
        }),
    )
    .conversation
    .expect("account id");

    let mut clients = login_many(&server, followers.iter().copied());
    for c in clients.iter_mut() {
        op(
            c,
            Op::Follow(pb::Follow {
                account_id: account.id,
            }),
        );
    }
    // A third of the followers go offline.
    let online: Vec<TestClient> = clients.split_off(34);
    drop(clients);
    let mut online = online;

    for n in 1..=2u64 {
        owner_client.send_text(account, n, &format!("post {n}"));
    }
    for c in online.iter_mut() {
        for n in 1..=2u64 {
            let p = c.push();
            assert_eq!((p.conversation, p.seq), (Some(account), n));
        }
    }
    for &f in &followers[..34] {
        let mut c = TestClient::login(server.addr, &server.token(f, "later"), f, "later");
        let posts: HashSet<(u64, String)> = c
            .sync_all()
            .iter()
            .filter(|m| m.conversation == Some(account))
            .map(|m| (m.seq, text_of(m).to_owned()))
            .collect();
        assert_eq!(
            posts,
            HashSet::from([(1, "post 1".to_owned()), (2, "post 2".to_owned())]),
            "follower {f}"
        );
    }
}

dataplane_tests!(
    group_of_fifty_every_member_gets_every_message_once,
    chatroom_of_two_hundred_delivers_to_everyone_online,
    public_account_reaches_online_followers_live_and_offline_ones_on_sync,
);
