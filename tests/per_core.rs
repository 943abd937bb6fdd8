//! `ownership = "per-core"`: every core runs its own control plane for its own
//! connections. Users whose sessions are on different cores chat live (pushes cross
//! between the cores), and a device that reconnects onto the other core replaces its
//! old session there. The session id's low byte names the core, which is how these tests
//! know where a session landed.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{Dataplane, TestClient, TestServer};
use petrel_proto::Body;
use petrel_proto::pb::{self, conversation_op::Op};

fn start(dp: Dataplane) -> TestServer {
    let cores = match dp {
        Dataplane::Kernel | Dataplane::Dpdk => "cores = [0, 1]\n",
        Dataplane::Xdp => "",
    };
    TestServer::start_on(
        dp,
        &format!("{cores}ownership = \"per-core\"\nrate_limit_per_second = 0\n"),
    )
}

fn core_of(c: &TestClient) -> u64 {
    c.session_id & 0xff
}

fn single(peer: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::Single as i32,
        id: peer,
    }
}

fn users_on_both_cores_chat_one_to_one_and_in_a_group_live(dp: Dataplane) {
    let server = start(dp);
    let users: Vec<u64> = (8_000..8_012).collect();
    let mut clients: Vec<TestClient> = users
        .iter()
        .map(|&u| TestClient::login(server.addr, &server.token(u, "d"), u, "d"))
        .collect();
    let on: HashSet<u64> = clients.iter().map(core_of).collect();
    assert_eq!(
        on,
        HashSet::from([0, 1]),
        "twelve sessions land on both cores"
    );

    // 1:1 across cores, both ways: a user on core 0 and one on core 1.
    let a = clients
        .iter()
        .position(|c| core_of(c) == 0)
        .expect("core 0");
    let b = clients
        .iter()
        .position(|c| core_of(c) == 1)
        .expect("core 1");
    let (ua, ub) = (users[a], users[b]);
    let ack = clients[a].send_text(single(ub), 1, "to the other core");
    assert_eq!(ack.seq, 1);
    let push = clients[b].push();
    assert_eq!((push.sender, push.seq, push.client_msg_id), (ua, 1, 1));
    let ack = clients[b].send_text(single(ua), 2, "and back");
    assert_eq!(ack.seq, 2);
    let push = clients[a].push();
    assert_eq!((push.sender, push.seq, push.client_msg_id), (ub, 2, 2));

    // A group of all twelve: each member sends once; everyone else gets each message
    // live, once, and the seqs come from one counter.
    let created = clients[0].request(pb::ConversationOp {
        op: Some(Op::CreateGroup(pb::CreateGroup {
            name: "both cores".into(),
            members: users[1..].to_vec(),
        })),
    });
    let Body::ConversationOpResult(created) = created.body else {
        panic!("create group failed: {created:?}");
    };
    let group = created.conversation.expect("group id");
    let mut seqs = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        seqs.push(c.send_text(group, 100 + i as u64, "hello all").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=12).collect::<Vec<u64>>(), "one gap-free counter");
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got: BTreeMap<u64, u64> = BTreeMap::new();
        for _ in 0..11 {
            let p = c.push();
            assert_eq!(p.conversation, Some(group));
            assert!(got.insert(p.sender, p.seq).is_none(), "{} twice", p.sender);
        }
        let expected: Vec<u64> = users.iter().copied().filter(|&u| u != users[i]).collect();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), expected);
    }
}

fn a_device_reconnecting_onto_the_other_core_replaces_its_old_session(dp: Dataplane) {
    let server = start(dp);
    let user = 8_100;
    let token = server.token(user, "phone");
    let first = TestClient::login(server.addr, &token, user, "phone");
    // Log the same device in again until a connection lands on the other core; those
    // landing on the first core replace each other there (the one-core rule).
    let mut old = first;
    for _ in 0..64 {
        let next = TestClient::login(server.addr, &token, user, "phone");
        let crossed = core_of(&next) != core_of(&old);
        let frames = old.recv_until_closed(Duration::from_secs(5));
        let kick = frames.iter().find_map(|f| match &f.body {
            Body::Kick(k) => Some(k.reason),
            _ => None,
        });
        assert_eq!(
            kick,
            Some(pb::KickReason::Replaced as i32),
            "the older session is told it was replaced (crossed cores: {crossed}): {frames:?}"
        );
        old = next;
        if crossed {
            // The newest session works: it can send and sync.
            let ack = old.send_text(single(8_101), 1, "still here");
            assert_eq!(ack.seq, 1);
            return;
        }
    }
    panic!("64 logins never landed on the other core");
}

dataplane_tests!(
    users_on_both_cores_chat_one_to_one_and_in_a_group_live,
    a_device_reconnecting_onto_the_other_core_replaces_its_old_session
);
