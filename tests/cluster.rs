//! A Petrel cluster over NATS (docs/CLUSTER.md): three nodes of two cores on loopback and
//! a `nats-server` of their own. Users on different nodes chat 1:1, in a group spanning
//! every node and in a chatroom; a device syncs on any node what every node stores; and
//! a node SIGKILLed in the middle of the load comes back with every acked message once,
//! seqs gap-free, while the other nodes answer `SERVER_BUSY` for its conversations and
//! the clients send again.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::TestClient;
use common::cluster::{Cluster, Roamer, send_counting_refusals, single};
use petrel_proto::Body;
use petrel_proto::pb::{self, conversation_op::Op};
use petrel_storage::{ConversationKey, UserId};

/// Logs `users[i]` in on node `i % 3`.
fn log_in(cluster: &Cluster, users: &[u64]) -> Vec<TestClient> {
    users
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let node = &cluster.nodes[i % cluster.nodes.len()];
            TestClient::login(node.addr, &node.token(u, "d"), u, "d")
        })
        .collect()
}

fn history(client: &mut TestClient, conversation: pb::ConversationId) -> Vec<pb::MessagePush> {
    let mut all = Vec::new();
    let mut before = 0;
    loop {
        let page = client.request(pb::HistoryRequest {
            conversation: Some(conversation),
            before_seq: before,
            limit: 100,
        });
        let Body::SyncResponse(page) = page.body else {
            panic!("history failed: {page:?}");
        };
        let Some(lowest) = page.messages.iter().map(|m| m.seq).min() else {
            break;
        };
        all.extend(page.messages);
        if lowest <= 1 {
            break;
        }
        before = lowest;
    }
    all.sort_by_key(|m| m.seq);
    all
}

/// Each of `clients` (user `users[i]`) sends one message to `conversation` (ids from
/// `first_id`): the seqs are 1..=n from one counter, and every client gets each other
/// member's message pushed exactly once.
fn everyone_sends_once_and_hears_the_others(
    clients: &mut [TestClient],
    users: &[u64],
    conversation: pb::ConversationId,
    first_id: u64,
) {
    let mut seqs = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        seqs.push(c.send_text(conversation, first_id + i as u64, "to all").seq);
    }
    seqs.sort_unstable();
    assert_gap_free(&seqs, users.len() as u64);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut from = BTreeMap::new();
        for _ in 1..users.len() {
            let p = c.recv_matching(
                |f| matches!(&f.body, Body::MessagePush(p) if p.conversation == Some(conversation)),
            );
            let Body::MessagePush(p) = p.body else {
                unreachable!()
            };
            assert!(
                from.insert(p.sender, p.seq).is_none(),
                "twice from {}",
                p.sender
            );
        }
        let expected: Vec<u64> = users.iter().copied().filter(|&u| u != users[i]).collect();
        assert_eq!(
            from.keys().copied().collect::<Vec<_>>(),
            expected,
            "each message once"
        );
    }
}

/// Whether `seqs` is exactly 1..=n, saying where it is not (without printing them all).
fn assert_gap_free(seqs: &[u64], n: u64) {
    assert_eq!(seqs.len() as u64, n, "{} messages, not {n}", seqs.len());
    if let Some((i, s)) = seqs.iter().enumerate().find(|&(i, &s)| s != i as u64 + 1) {
        panic!("seq {s} at position {i}: a gap or a duplicate");
    }
}

#[test]
fn users_on_three_nodes_chat_one_to_one_in_a_group_and_in_a_chatroom() {
    let cluster = Cluster::start(3, "");
    let users: Vec<u64> = (5_000..5_006).collect();
    let mut clients = log_in(&cluster, &users);

    // Every ordered pair chats 1:1: the conversations' owners are spread over the three
    // nodes, and each message reaches its recipient on whichever node it is.
    let mut owners = BTreeSet::new();
    for a in 0..users.len() {
        for b in 0..users.len() {
            if a == b {
                continue;
            }
            let id = (a * 10 + b) as u64 + 1;
            owners
                .insert(cluster.owner(ConversationKey::single(UserId(users[a]), UserId(users[b]))));
            let ack = clients[a].send_text(single(users[b]), id, "hi");
            let push = clients[b].push();
            assert_eq!(
                (push.sender, push.client_msg_id, push.seq),
                (users[a], id, ack.seq),
                "{} → {}",
                users[a],
                users[b]
            );
        }
    }
    assert_eq!(owners.len(), 3, "1:1 chats owned by every node: {owners:?}");

    // A group created on node 0 and spanning every node: one gap-free counter, each
    // message to every other member once.
    let group = clients[0].create_group("three nodes", &users[1..]);
    everyone_sends_once_and_hears_the_others(&mut clients, &users, group, 100);
    // Its history reads the same on every node (two of them ask the owner).
    for c in clients.iter_mut().take(3) {
        let seqs: Vec<u64> = history(c, group).iter().map(|m| m.seq).collect();
        assert_gap_free(&seqs, 6);
    }

    // A chatroom: its owner core is on one node; members on all three.
    let room = pb::ConversationId {
        kind: pb::ConversationKind::Chatroom as i32,
        id: 77,
    };
    for c in clients.iter_mut() {
        let joined = c.request(pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: 77 })),
        });
        assert!(
            matches!(joined.body, Body::ConversationOpResult(_)),
            "{joined:?}"
        );
    }
    everyone_sends_once_and_hears_the_others(&mut clients, &users, room, 700);

    // A new device of users[2] (whose sessions are on node 2) syncs on node 0: every
    // conversation it is in, whichever node stores it — 10 1:1 messages and the group's 6.
    let node0 = &cluster.nodes[0];
    let mut fresh = TestClient::login(node0.addr, &node0.token(users[2], "new"), users[2], "new");
    let synced = fresh.sync_all();
    let mut per_conversation: BTreeMap<(i32, u64), Vec<u64>> = BTreeMap::new();
    for m in &synced {
        let c = m.conversation.expect("conversation");
        per_conversation
            .entry((c.kind, c.id))
            .or_default()
            .push(m.seq);
    }
    assert_eq!(synced.len(), 16, "{per_conversation:?}");
    assert_eq!(per_conversation.len(), 6, "{per_conversation:?}");
    for seqs in per_conversation.values() {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "gap-free from 1, once");
    }
}

#[test]
fn a_node_sigkilled_mid_load_comes_back_with_every_acked_message_once() {
    let mut cluster = Cluster::start(3, "");
    // The group is created on node 1, so node 1 owns it; its members send from nodes 0
    // and 2 (and node 1, until it dies).
    let users: Vec<u64> = (6_000..6_006).collect();
    let mut clients = log_in(&cluster, &users);
    let group = clients[1].create_group("owned by node 1", &[6_000, 6_002, 6_003, 6_005]);
    let senders: Vec<(u64, TestClient)> = [0usize, 2, 3, 5]
        .into_iter()
        .map(|i| {
            (
                users[i],
                std::mem::replace(&mut clients[i], placeholder(&cluster, i)),
            )
        })
        .collect();
    drop(clients);
    const PER_SENDER: u64 = 400;
    let threads: Vec<_> = senders
        .into_iter()
        .map(|(user, mut c)| {
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut refused = 0;
                for id in 1..=PER_SENDER {
                    let (ack, busy) = send_counting_refusals(
                        &mut c,
                        group,
                        id,
                        &format!("{user}:{id}"),
                        Duration::from_secs(60),
                    );
                    refused += busy;
                    acked.push((id, ack.seq));
                    std::thread::sleep(Duration::from_millis(5));
                }
                (user, acked, refused)
            })
        })
        .collect();
    // Node 1 dies in the middle of the load and comes back on its disk.
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    cluster.nodes[1].kill();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.nodes[1].restart_stopped();
    eprintln!("node 1 was down {:?}", started.elapsed());
    let mut acked: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut refused = 0;
    for t in threads {
        let (user, a, busy) = t.join().expect("sender");
        acked.insert(user, a);
        refused += busy;
    }
    // The senders on nodes 0 and 2 were told to wait while the owner was away.
    eprintln!("sends refused SERVER_BUSY while node 1 was down: {refused}");
    assert!(refused > 0, "the load did not overlap the outage");
    // Read back on node 2: every acked message once, at the seq its ack gave, the seqs
    // 1..=n with no gap and nothing unacked.
    let node2 = &cluster.nodes[2];
    let mut reader = TestClient::login(node2.addr, &node2.token(6_002, "reader"), 6_002, "reader");
    let stored = history(&mut reader, group);
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_gap_free(&seqs, 4 * PER_SENDER);
    for m in &stored {
        let mine = &acked[&m.sender];
        assert!(
            mine.contains(&(m.client_msg_id, m.seq)),
            "stored {}:{} at seq {} which no ack gave",
            m.sender,
            m.client_msg_id,
            m.seq
        );
    }
}

/// A connection standing in for a client moved to a sender thread.
fn placeholder(cluster: &Cluster, i: usize) -> TestClient {
    let node = &cluster.nodes[i % cluster.nodes.len()];
    let user = 6_100 + i as u64;
    TestClient::login(node.addr, &node.token(user, "p"), user, "p")
}

/// A rolling restart under load: each node in turn is drained with `petrel admin drain`
/// (its clients are kicked with `SERVER_SHUTDOWN` naming the other nodes) and started
/// again on its disk, while six clients keep sending to three groups, one owned by each
/// node. No acked message is lost or stored twice, and every client is back.
#[test]
fn a_rolling_restart_under_load_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(3, "");
    let users: Vec<u64> = (7_000..7_006).collect();
    let mut creators = log_in(&cluster, &users[..3]);
    // Group g is created on node g, so node g owns it.
    let groups: Vec<pb::ConversationId> = (0..3)
        .map(|g| creators[g].create_group("rolling", &users))
        .collect();
    drop(creators);
    let nodes: Vec<std::net::SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    // The senders go on until every node has been restarted, and 50 messages more.
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, &user)| {
            let mut roamer = Roamer::new(
                user,
                cluster.nodes[0].token(user, "roamer"),
                nodes.clone(),
                i,
            );
            let groups = groups.clone();
            let restarted = restarted.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let (mut id, mut after) = (0, 0);
                while after < 50 {
                    id += 1;
                    let group = groups[(id % 3) as usize];
                    let ack =
                        roamer.send(group, id, &format!("{user}:{id}"), Duration::from_secs(60));
                    acked.push((group, id, ack.seq));
                    if restarted.load(std::sync::atomic::Ordering::Relaxed) {
                        after += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (user, acked, roamer)
            })
        })
        .collect();
    for node in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let data_dir = cluster.nodes[node].data_dir().to_owned();
        let out = common::petrel(&[
            "admin",
            "drain",
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
            "--wait",
            "30",
        ]);
        assert!(
            out.status.success(),
            "drain node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = cluster.nodes[node].wait_exit(Duration::from_secs(10));
        assert!(status.success(), "node {node} exited with {status}");
        cluster.nodes[node].restart_stopped();
        cluster.wait_until_connected();
        eprintln!("node {node} drained and back");
    }
    restarted.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stored_by: BTreeMap<(i32, u64, u64, u64), u64> = BTreeMap::new();
    let mut acks = 0;
    let mut hinted = 0;
    for t in senders {
        let (user, acked, roamer) = t.join().expect("sender");
        assert!(
            roamer.logins >= 2,
            "user {user} never reconnected: its node was restarted"
        );
        hinted += roamer.hinted_logins;
        for (group, id, seq) in acked {
            stored_by.insert((group.kind, group.id, user, id), seq);
            acks += 1;
        }
    }
    eprintln!("{acks} messages acked; {hinted} logins where a kick said");
    assert!(hinted > 0, "no client reconnected where a kick said");
    // Every group: gap-free seqs, each acked message once at its acked seq.
    let node0 = &cluster.nodes[0];
    let mut reader = TestClient::login(
        node0.addr,
        &node0.token(users[0], "reader"),
        users[0],
        "reader",
    );
    let mut stored = 0;
    for group in &groups {
        let messages = history(&mut reader, *group);
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        let from_senders = messages.len();
        assert_gap_free(&seqs, seqs.len() as u64);
        for m in &messages {
            let key = (group.kind, group.id, m.sender, m.client_msg_id);
            assert_eq!(
                stored_by.get(&key),
                Some(&m.seq),
                "{key:?} stored at seq {} but acked otherwise",
                m.seq
            );
        }
        stored += from_senders;
    }
    assert_eq!(stored, acks, "every acked message stored, once");
}

/// NATS itself restarts: every node sees every other go silent (down) and come back,
/// each re-announces its sessions and asks the others to (Resync), and users on
/// different nodes chat live again, both ways, without logging in again.
#[test]
fn the_cluster_heals_after_nats_restarts() {
    let mut cluster = Cluster::start(3, "");
    let users: Vec<u64> = (8_000..8_003).collect();
    let mut clients = log_in(&cluster, &users);
    let ack = clients[0].send_text(single(users[1]), 1, "before");
    assert_eq!(clients[1].push().seq, ack.seq);
    // Down long enough for every node to call the others down (node_timeout 1 s).
    cluster.nats.restart(Duration::from_millis(1500));
    cluster.wait_until_connected();
    // The same sessions: pushes cross nodes again, around the three nodes.
    for (a, b, id) in [(0, 1, 2), (1, 2, 3), (2, 0, 4)] {
        let ack = send_counting_refusals(
            &mut clients[a],
            single(users[b]),
            id,
            "after",
            Duration::from_secs(20),
        )
        .0;
        let push = clients[b]
            .recv_matching(|f| matches!(&f.body, Body::MessagePush(p) if p.client_msg_id == id));
        let Body::MessagePush(push) = push.body else {
            unreachable!()
        };
        assert_eq!((push.sender, push.seq), (users[a], ack.seq));
    }
}
