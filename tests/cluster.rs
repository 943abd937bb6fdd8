//! A Petrel cluster over NATS (docs/CLUSTER.md): three nodes of two cores on loopback and
//! a `nats-server` of their own. Users on different nodes chat 1:1, in a group spanning
//! every node and in a chatroom; a device syncs on any node what every node stores; and
//! a node SIGKILLed in the middle of the load comes back with every acked message once,
//! seqs gap-free, while the other nodes answer `SERVER_BUSY` for its conversations and
//! the clients send again — also when its disk is lost, from its JetStream replica log.
//! A drained node hands its conversations to its standby, which hands them back. A
//! rolling restart by `petrel admin drain` loses and
//! duplicates nothing; the nodes heal after NATS restarts; the dispatch directory
//! sends a dedicated user to the dedicated pool, and to the backup domain when that
//! pool is down; and any node's API answers for the sessions and chatrooms of all.

/// How long an SDK client may take to connect.
const WAIT: Duration = Duration::from_secs(30);

#[macro_use]
mod common;
#[path = "common/sdk_keys.rs"]
#[allow(dead_code)] // These tests use the keys of a running node, not fresh ones.
mod sdk_keys;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Roamer, send_counting_refusals, single};
use common::server::block_on;
use common::{Dataplane, TestClient, TestServer, http};
use petrel_proto::Body;
use petrel_proto::pb::{self, conversation_op::Op};
use petrel_sdk::ConnectionState;
use petrel_storage::{ConversationKey, UserId};
use sdk_keys::{Keys, start, test_config};
use serde_json::json;

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
    kill_node_1_mid_load(&mut cluster, |_| {});
}

/// With `[cluster] replicas = 1` node 1 ships every write to its JetStream stream before
/// it acks. It is SIGKILLed mid-load and its database is deleted (a lost disk); started
/// on an empty directory, it rebuilds the database from the stream before it serves:
/// the group it owned, and every acked message once, seqs gap-free.
#[test]
fn a_node_that_loses_its_disk_gets_every_acked_message_back_from_its_replica_log() {
    let mut cluster = Cluster::start_with(3, "", "replicas = 1\n");
    kill_node_1_mid_load(&mut cluster, |data| {
        std::fs::remove_dir_all(data.join("db")).expect("node 1's database deleted");
    });
}

/// Four members of a group that node 1 owns send 400 messages each (from nodes 0 and 2,
/// and node 1 until it dies); node 1 is SIGKILLed in the middle, `while_down` is done to
/// its data directory, and it is started again. Every acked message is then stored
/// once, at the seq its ack gave, with no gap and nothing unacked.
fn kill_node_1_mid_load(cluster: &mut Cluster, while_down: impl FnOnce(&std::path::Path)) {
    // The group is created on node 1, so node 1 owns it; its members send from nodes 0
    // and 2 (and node 1, until it dies).
    let users: Vec<u64> = (6_000..6_006).collect();
    let mut clients = log_in(cluster, &users);
    let group = clients[1].create_group("owned by node 1", &[6_000, 6_002, 6_003, 6_005]);
    let senders: Vec<(u64, TestClient)> = [0usize, 2, 3, 5]
        .into_iter()
        .map(|i| {
            (
                users[i],
                std::mem::replace(&mut clients[i], placeholder(cluster, i)),
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
    while_down(cluster.nodes[1].data_dir());
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
    assert_stored_as_acked(cluster, 6_002, group, &acked);
}

/// Read back on node 2 by member `reader`: every message of `acked` (per sender, its
/// `(client_msg_id, seq)`s) stored once, at the seq its ack gave, the seqs 1..=n with
/// no gap and nothing unacked.
fn assert_stored_as_acked(
    cluster: &Cluster,
    reader: u64,
    group: pb::ConversationId,
    acked: &BTreeMap<u64, Vec<(u64, u64)>>,
) {
    let node2 = &cluster.nodes[2];
    let mut client =
        TestClient::login(node2.addr, &node2.token(reader, "reader"), reader, "reader");
    let stored = history(&mut client, group);
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    let sent: usize = acked.values().map(Vec::len).sum();
    assert_gap_free(&seqs, sent as u64);
    for m in &stored {
        assert!(
            acked[&m.sender].contains(&(m.client_msg_id, m.seq)),
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

/// Starts, on its own thread, a standby of node `node` in `dir` (node `node`'s config,
/// with `standby = true`); the thread returns the server once the standby serves.
fn start_standby(
    cluster: &Cluster,
    node: usize,
    dir: &std::path::Path,
) -> std::thread::JoinHandle<TestServer> {
    let config = std::fs::read_to_string(cluster.nodes[node].data_dir().join("petrel.toml"))
        .expect("config");
    let keys = dir.join("keys");
    if !keys.exists() {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::copy(cluster.nodes[node].data_dir().join("keys"), keys).expect("keys");
    }
    // The node's table, as a standby (a promoted standby's says so already).
    let cluster_table: String = config[config.find("[cluster]").expect("a [cluster] table")..]
        .lines()
        .filter(|l| !l.starts_with("standby ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let extra = format!(
        "cores = [0, 1]\nownership = \"per-core\"\nrate_limit_per_second = 0\n\
         {cluster_table}standby = true\n"
    );
    let dir = dir.to_owned();
    std::thread::spawn(move || TestServer::start_in(Dataplane::Kernel, &dir, &extra))
}

/// The standby `started` once it serves; the test fails after 30 s.
fn serving(started: std::thread::JoinHandle<TestServer>) -> TestServer {
    let since = Instant::now();
    while !started.is_finished() {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the standby did not take the node over within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.join().expect("the standby serves")
}

/// Kills, when dropped (the test passed or failed), every process serving with the
/// config of one of these data directories: a standby still waiting inside the thread
/// that started it is no `TestServer` yet, and nothing else would stop it.
struct KillWhenDone(Vec<std::path::PathBuf>);

impl Drop for KillWhenDone {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-f"])
                .arg(dir.join("petrel.toml"))
                .status();
        }
    }
}

/// Drains node `node` with `petrel admin drain`: it returns once the process has
/// closed its files (its data dir's lock with them), so a restart finds the dir free;
/// the kernel marks it exited a moment later, with success.
fn drain(cluster: &mut Cluster, node: usize) {
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
    let gone = (0..200).any(|_| {
        let exited = cluster.nodes[node].has_exited();
        if !exited {
            std::thread::sleep(Duration::from_millis(5));
        }
        exited
    });
    assert!(gone, "drain of node {node} returned while its process ran");
    let status = cluster.nodes[node].wait_exit(Duration::from_secs(10));
    assert!(status.success(), "node {node} exited with {status}");
}

/// With `replicas = 1` node 1 has a standby: a second process, on a disk of its own,
/// following node 1's replica log. Node 1 is drained while four members of a group it
/// owns send from nodes 0 and 2: the standby takes the node over (its lease, then its
/// conversations) and the sends go on there. Then the drained process is started again
/// on its old disk as the standby, and the node is handed back to it the same way.
/// Every acked message is stored once, at the seq its ack gave, with no gap.
#[test]
fn a_drained_node_hands_its_conversations_to_its_standby_and_gets_them_back() {
    let mut cluster = Cluster::start_with(3, "", "replicas = 1\n");
    let standby_dir = tempfile::tempdir().expect("tempdir");
    let _kill = KillWhenDone(vec![
        standby_dir.path().to_owned(),
        cluster.nodes[1].data_dir().to_owned(),
    ]);
    let standby = start_standby(&cluster, 1, standby_dir.path());
    let users: Vec<u64> = (6_500..6_506).collect();
    let mut clients = log_in(&cluster, &users);
    let group = clients[1].create_group("handed over", &[6_500, 6_502, 6_503, 6_505]);
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
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = senders
        .into_iter()
        .map(|(user, mut c)| {
            let done = done.clone();
            std::thread::spawn(move || {
                let (mut acked, mut refused, mut longest) = (Vec::new(), 0, Duration::ZERO);
                let mut after = 0;
                let mut id = 0;
                while after < 50 {
                    id += 1;
                    let since = Instant::now();
                    let (ack, busy) = send_counting_refusals(
                        &mut c,
                        group,
                        id,
                        &format!("{user}:{id}"),
                        Duration::from_secs(60),
                    );
                    longest = longest.max(since.elapsed());
                    refused += busy;
                    acked.push((id, ack.seq));
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        after += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (user, acked, refused, longest)
            })
        })
        .collect();
    let old_dir = cluster.nodes[1].data_dir().to_owned();
    let mut standby = Some(standby);
    let mut back = None;
    for round in ["handed over to the standby", "handed back"] {
        std::thread::sleep(Duration::from_millis(700));
        let started = Instant::now();
        drain(&mut cluster, 1);
        let drained = started.elapsed();
        let next = if round == "handed back" {
            back.take()
        } else {
            standby.take()
        };
        cluster.nodes[1] = serving(next.expect("a standby"));
        cluster.wait_until_connected();
        eprintln!(
            "node 1 {round}: drained in {drained:?}, served again after {:?}",
            started.elapsed()
        );
        if round != "handed back" {
            // The drained process's disk, started again as the node's standby.
            back = Some(start_standby(&cluster, 1, &old_dir));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let (mut refused, mut longest) = (0, Duration::ZERO);
    for t in threads {
        let (user, a, busy, wait) = t.join().expect("sender");
        acked.insert(user, a);
        refused += busy;
        longest = longest.max(wait);
    }
    eprintln!(
        "sends refused SERVER_BUSY during the handovers: {refused}; longest wait for an ack: {longest:?}"
    );
    assert_stored_as_acked(&cluster, 6_502, group, &acked);
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
        drain(&mut cluster, node);
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

/// With `replicas = 1`, the replica log lives on the NATS server. While it is down, node
/// 0's writes are refused `SERVER_BUSY` (never acked) and sent again; once it is back
/// every one is acked. Then node 0 loses its disk and rebuilds from the log: the
/// conversation is the same, so the writes refused while the log was away (stored on
/// node 0, shipped later) are in the log too, each once.
#[test]
fn writes_while_the_replica_log_is_down_are_refused_then_acked_and_all_reach_the_log() {
    let mut cluster = Cluster::start_with(3, "", "replicas = 1\n");
    let user = 8_500;
    let peer = cluster.peer_owned_by(user, 0, 8_600);
    let node0 = &cluster.nodes[0];
    let mut sender = TestClient::login(node0.addr, &node0.token(user, "d"), user, "d");
    let conversation = single(peer);
    const SENT: u64 = 60;
    for id in 1..=SENT {
        if id == 20 {
            cluster.nats.kill();
            // Sent while the log is away: refused, never acked.
            for _ in 0..2 {
                let frame = sender.request(pb::SendMessage {
                    client_msg_id: id,
                    conversation: Some(conversation),
                    content: petrel_proto::wire::encode_content(&common::client::text_content(
                        &format!("m{id}"),
                    )),
                    ..Default::default()
                });
                assert!(
                    matches!(&frame.body, Body::Error(e) if e.code == pb::ErrorCode::ServerBusy as i32),
                    "{frame:?}"
                );
            }
            cluster.nats.start_again();
        }
        // Sent again (id 20) until the log is back: acked once it holds it.
        send_counting_refusals(
            &mut sender,
            conversation,
            id,
            &format!("m{id}"),
            Duration::from_secs(30),
        );
    }
    let before = history(&mut sender, conversation);
    assert_gap_free(&before.iter().map(|m| m.seq).collect::<Vec<_>>(), SENT);
    drop(sender);

    cluster.nodes[0].kill();
    std::fs::remove_dir_all(cluster.nodes[0].data_dir().join("db")).expect("disk lost");
    cluster.nodes[0].restart_stopped();
    let node0 = &cluster.nodes[0];
    let mut reader = TestClient::login(node0.addr, &node0.token(user, "r"), user, "r");
    let after = history(&mut reader, conversation);
    let key = |m: &pb::MessagePush| (m.seq, m.client_msg_id);
    assert_eq!(
        after.iter().map(key).collect::<Vec<_>>(),
        before.iter().map(key).collect::<Vec<_>>(),
        "the rebuilt node holds exactly what it acked"
    );
}

/// The API key of the dispatch test's nodes.
const API_KEY: &str = "cluster-test-api-key-0123456789";

/// The config lines of an API on a free port with [`API_KEY`], whose key file goes in
/// `dir` (which must outlive the nodes).
fn api_config(dir: &std::path::Path) -> String {
    let key_file = dir.join("api.key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).expect("api key");
    format!(
        "api_addr = \"127.0.0.1:0\"\napi_key_file = {:?}\n",
        key_file.display().to_string()
    )
}

/// What node `server`'s directory answers `user` (with a token of theirs).
fn dispatch(server: &TestServer, user: u64) -> serde_json::Value {
    let addr = server.dispatch.expect("a dispatch directory");
    let token = server.token(user, "phone");
    let r = http::request(addr, "GET", "/v1/dispatch", Some(&token), None, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()
}

fn endpoints_of(answer: &serde_json::Value) -> Vec<String> {
    answer["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e.as_str().expect("a string").to_owned())
        .collect()
}

/// Polls `f` until it gives something (at most `limit`).
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where an SDK client is connected, once it is.
async fn connected_to(client: &petrel_sdk::Client, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let ConnectionState::Connected { endpoint, .. } = client.state() {
            return endpoint;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not connected within {limit:?}: {:?}",
            client.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn dispatch_sends_a_dedicated_user_to_its_pool_and_to_the_backup_domain_when_it_is_down() {
    // The backup domain: another deployment (one server sharing the token keys), named
    // by a host name, as a backup domain is.
    let backup_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let backup_domain = format!("localhost:{backup_port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "{}[dispatch]\naddr = \"127.0.0.1:0\"\nbackup = [{backup_domain:?}]\n\
         pools = {{ dedicated = [2] }}\n",
        api_config(dir.path())
    );
    let mut cluster = Cluster::start(3, &extra);
    let backup_dir = dir.path().join("backup");
    std::fs::create_dir_all(&backup_dir).expect("backup dir");
    std::fs::copy(
        cluster.nodes[0].data_dir().join("keys"),
        backup_dir.join("keys"),
    )
    .expect("keys");
    let _backup = TestServer::start_in(
        Dataplane::Kernel,
        &backup_dir,
        &format!("listen = [\"127.0.0.1:{backup_port}\"]\n"),
    );
    let (vip, regular) = (9_101u64, 9_102u64);
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    let node_addr = |n: usize| addrs[n].clone();

    // The app's backend puts the latency-sensitive user in the dedicated pool, on any
    // node's API; a pool nobody configured is refused.
    let api = cluster.nodes[0].api.expect("api");
    let put = |user: u64, body: &[u8]| {
        http::request(
            api,
            "PUT",
            &format!("/v1/users/{user}/pool"),
            Some(API_KEY),
            Some("application/json"),
            body,
        )
    };
    let r = put(vip, br#"{"pool":"dedicated"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put(vip, br#"{"pool":"gold"}"#);
    assert_eq!(
        (r.status, &r.json()["error"]["code"]),
        (400, &json!("unknown_pool"))
    );
    let api1 = cluster.nodes[1].api.expect("api");
    eventually(
        Duration::from_secs(5),
        "node 1's API has the assignment",
        || {
            let path = format!("/v1/users/{vip}/pool");
            let r = http::request(api1, "GET", &path, Some(API_KEY), None, b"");
            (r.status == 200 && r.json()["pool"] == "dedicated").then_some(())
        },
    );

    // Every node's directory sends the user to the dedicated node, then the backup.
    for server in &cluster.nodes {
        let answer = eventually(
            Duration::from_secs(5),
            "the assignment on every node",
            || {
                let a = dispatch(server, vip);
                (a["pool"] == "dedicated").then_some(a)
            },
        );
        assert_eq!(answer["pool_down"], false);
        assert_eq!(
            endpoints_of(&answer),
            vec![node_addr(2), backup_domain.clone()]
        );
    }
    // Everyone else to the general pool's nodes, then the backup.
    let general = dispatch(&cluster.nodes[2], regular);
    assert_eq!(general["pool"], "general");
    let mut listed = endpoints_of(&general);
    assert_eq!(listed.pop(), Some(backup_domain.clone()));
    listed.sort();
    let mut general_nodes = vec![node_addr(0), node_addr(1)];
    general_nodes.sort();
    assert_eq!(listed, general_nodes);
    let addr = cluster.nodes[0].dispatch.expect("dispatch");
    let r = http::request(addr, "GET", "/v1/dispatch", None, None, b"");
    assert_eq!(r.status, 401, "a client asks with its own token");

    let keys = Arc::new(Keys::load(&cluster.nodes[0].data_dir().join("keys")));
    let directory: Vec<String> = [1, 0]
        .iter()
        .map(|&n: &usize| format!("http://{}", cluster.nodes[n].dispatch.expect("dispatch")))
        .collect();
    block_on(Dataplane::Kernel, async {
        // Each SDK client is configured with node 0 alone and asks the directory first.
        let client_for = |user: u64, directory: Vec<String>| {
            let mut config = test_config(user, vec![node_addr(0)]);
            config.directory = directory;
            config.directory_after_failures = 2;
            start(&keys, config)
        };
        let (vip_client, _vip_events, _) = client_for(vip, directory.clone());
        assert_eq!(connected_to(&vip_client, WAIT).await, node_addr(2));
        let (regular_client, _regular_events, _) = client_for(regular, directory.clone());
        let at = connected_to(&regular_client, WAIT).await;
        assert!(at == node_addr(0) || at == node_addr(1), "{at}");
        // No directory answers: the configured endpoints.
        let (lost, _lost_events, _) = client_for(9_103, vec!["http://127.0.0.1:1".into()]);
        assert_eq!(connected_to(&lost, WAIT).await, node_addr(0));

        // The dedicated pool goes down: the client fails over to the backup domain.
        tokio::task::block_in_place(|| cluster.nodes[2].kill());
        let moved = tokio::time::timeout(WAIT, async {
            loop {
                match vip_client.state() {
                    ConnectionState::Connected { endpoint, .. } if endpoint == backup_domain => {
                        return endpoint;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        assert!(
            moved.is_ok(),
            "still not on the backup domain: {:?}",
            vip_client.state()
        );
        tokio::task::block_in_place(|| {
            let answer = eventually(Duration::from_secs(5), "the pool down", || {
                let a = dispatch(&cluster.nodes[0], vip);
                (a["pool_down"] == true).then_some(a)
            });
            assert_eq!(endpoints_of(&answer), vec![backup_domain.clone()]);
        });
        for client in [vip_client, regular_client, lost] {
            client.shutdown(false).await;
        }
    });
}

/// The app's backend asks one node's API about users and chatrooms held on the
/// others: every node answers for its own sessions (listed, counted in presence,
/// kicked, revoked) and the owner node for its chatroom; a node that is down is left
/// out.
#[test]
fn one_nodes_api_answers_for_the_sessions_and_chatrooms_of_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("{}metrics_addr = \"127.0.0.1:0\"\n", api_config(dir.path()));
    let mut cluster = Cluster::start(3, &extra);
    let (on_0, on_1, on_2, nowhere) = (9_201u64, 9_202u64, 9_203u64, 9_204u64);
    let login = |node: &TestServer, user: u64| {
        TestClient::login(node.addr, &node.token(user, "phone"), user, "phone")
    };
    let _c0 = login(&cluster.nodes[0], on_0);
    let mut c1 = login(&cluster.nodes[1], on_1);
    let mut c2 = login(&cluster.nodes[2], on_2);
    let node0_api = cluster.nodes[0].api.expect("api");
    let api = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let content_type = (!bytes.is_empty()).then_some("application/json");
        http::request(node0_api, method, path, Some(API_KEY), content_type, &bytes)
    };

    let r = api("GET", &format!("/v1/users/{on_2}/sessions"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let sessions = r.json()["sessions"].clone();
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
    assert_eq!(sessions[0]["device"], json!("phone"));

    let r = api(
        "POST",
        "/v1/presence",
        Some(json!({ "user_ids": [on_0, on_1, on_2, nowhere] })),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let devices: Vec<u64> = r.json()["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["devices"].as_u64().expect("devices"))
        .collect();
    assert_eq!(devices, [1, 1, 1, 0]);

    // Room 2 is owned by core 2 of six: node 1's. Members on nodes 1 and 2.
    for c in [&mut c1, &mut c2] {
        let joined = c.request(pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: 2 })),
        });
        assert!(
            matches!(joined.body, Body::ConversationOpResult(_)),
            "{joined:?}"
        );
    }
    let r = api("GET", "/v1/chatrooms/2/members", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut members: Vec<u64> = r.json()["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u.as_u64().expect("user id"))
        .collect();
    members.sort_unstable();
    assert_eq!(members, [on_1, on_2]);

    // Kicked from node 0's API, on node 2; revoked from node 0's API, on node 1.
    let r = api(
        "POST",
        &format!("/v1/users/{on_2}/kick"),
        Some(json!({ "message": "bye" })),
    );
    assert_eq!(
        (r.status, &r.json()["sessions_ended"]),
        (200, &json!(1)),
        "{}",
        r.text()
    );
    let frames = c2.recv_until_closed(Duration::from_secs(5));
    assert!(
        frames.iter().any(|f| matches!(&f.body, Body::Kick(k)
            if k.reason == pb::KickReason::Admin as i32)),
        "{frames:?}"
    );
    let r = api("POST", &format!("/v1/users/{on_1}/tokens/revoke"), None);
    assert_eq!(
        (r.status, &r.json()["sessions_ended"]),
        (200, &json!(1)),
        "{}",
        r.text()
    );
    let frames = c1.recv_until_closed(Duration::from_secs(5));
    assert!(
        frames.iter().any(|f| matches!(&f.body, Body::Kick(_))),
        "{frames:?}"
    );

    // Node 2 goes: once node 0 has seen it go, calls about sessions leave it out, and
    // a chatroom it owns (room 4: core 4) is SERVICE_UNAVAILABLE.
    cluster.nodes[2].kill();
    let r = eventually(Duration::from_secs(20), "node 2 left out", || {
        let r = api("GET", &format!("/v1/users/{on_0}/sessions"), None);
        assert!(matches!(r.status, 200 | 503), "{}", r.text());
        (r.status == 200).then_some(r)
    });
    assert_eq!(
        r.json()["sessions"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text()
    );
    let r = api("GET", "/v1/chatrooms/4/members", None);
    assert_eq!(r.status, 503, "{}", r.text());

    // Node 0's metrics saw it all: mail both ways, and node 2 going.
    let scrape = cluster.nodes[0].scrape_until("node 2 down in the metrics", |s| {
        s.get("petrel_cluster_nodes_up") == 1.0
    });
    assert!(
        scrape.sum("petrel_cluster_mail_total", "sent") > 0.0,
        "{}",
        scrape.text
    );
    assert!(
        scrape.sum("petrel_cluster_mail_total", "received") > 0.0,
        "{}",
        scrape.text
    );
    assert!(
        scrape.get("petrel_cluster_node_changes_total{change=\"down\"}") >= 1.0,
        "{}",
        scrape.text
    );
    assert_eq!(scrape.get("petrel_cluster_undecodable_total"), 0.0);
}

/// A second process started as a node that is running (a replacement started too early,
/// a copied config) refuses to start, naming why, before it serves anything; once the
/// first is gone, it starts.
#[test]
fn a_second_process_as_a_running_node_refuses_to_start() {
    let mut cluster = Cluster::start(2, "");
    let first = &cluster.nodes[1];
    let config = std::fs::read_to_string(first.data_dir().join("petrel.toml")).expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(first.data_dir().join("keys"), dir.path().join("keys")).expect("keys");
    let (data_line, rest) = config.split_once('\n').expect("the data_dir line first");
    assert!(data_line.starts_with("data_dir ="), "{data_line}");
    let copy = dir.path().join("petrel.toml");
    std::fs::write(
        &copy,
        format!("data_dir = {:?}\n{rest}", dir.path().display().to_string()),
    )
    .expect("config copy");
    let run = || {
        let mut child = std::process::Command::new(common::PETREL)
            .args(["serve", "--config"])
            .arg(&copy)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let since = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
                    .expect("stderr");
                return Some((status, stderr));
            }
            if since.elapsed() > Duration::from_secs(10) {
                // Still running: it started.
                child.kill().expect("kill");
                child.wait().expect("wait");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (status, stderr) = run().expect("the second process did not refuse to start");
    assert!(!status.success());
    assert!(
        stderr.contains("another process runs as node 1"),
        "{stderr}"
    );
    // The first is untouched and the cluster still chats across it.
    assert!(cluster.nodes[1].is_running());
    cluster.wait_until_connected();
    // Once the first has stopped, the same command starts.
    cluster.nodes[1].stop();
    assert!(run().is_none(), "the node did not start once alone");
}

/// Two processes serving as one node (the second started while NATS was down, so its
/// start-up check heard nothing): once they hear each other, one of them stops, with
/// an error naming why, and the other serves on.
#[test]
fn of_two_processes_serving_as_one_node_one_stops() {
    let mut cluster = Cluster::start(2, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = &cluster.nodes[1];
    std::fs::copy(first.data_dir().join("keys"), dir.path().join("keys")).expect("keys");
    let config = std::fs::read_to_string(first.data_dir().join("petrel.toml")).expect("config");
    let cluster_table = &config[config.find("[cluster]").expect("a [cluster] table")..];
    cluster.nats.kill();
    let mut second = TestServer::start_in(
        Dataplane::Kernel,
        dir.path(),
        &format!("cores = [0, 1]\nownership = \"per-core\"\n{cluster_table}"),
    );
    cluster.nats.start_again();
    let since = Instant::now();
    let (stopped, left) = loop {
        let (a, b) = (cluster.nodes[1].has_exited(), second.has_exited());
        if a || b {
            assert!(!(a && b), "both stopped");
            break if a {
                (&mut cluster.nodes[1], &mut second)
            } else {
                (&mut second, &mut cluster.nodes[1])
            };
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "both still serve as node 1"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !stopped.wait_exit(Duration::from_secs(5)).success(),
        "the process that yielded exits with an error"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(left.is_running(), "the other one serves on");
}

/// A token revoked while a node was down is refused by that node's own services (the
/// dispatch directory reads revocations from the node's database) once it is back: the
/// other nodes announce their revocations to it, and it stores them.
#[test]
fn a_token_revoked_while_a_node_was_down_is_refused_there_once_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "{}[dispatch]\naddr = \"127.0.0.1:0\"\n",
        api_config(dir.path())
    );
    let mut cluster = Cluster::start(3, &extra);
    let user = 9_301u64;
    let token = cluster.nodes[2].token(user, "phone");
    let ask = |server: &TestServer| {
        let addr = server.dispatch.expect("a dispatch directory");
        http::request(addr, "GET", "/v1/dispatch", Some(&token), None, b"").status
    };
    assert_eq!(ask(&cluster.nodes[2]), 200);

    // Killed: until node 0 counts it down, a call about sessions cannot know what node 2
    // holds and answers 503 (no node takes its calls); then it leaves node 2 out.
    cluster.nodes[2].kill();
    eventually(Duration::from_secs(20), "the revocation taken", || {
        let r = cluster.nodes[0].api_request(
            "POST",
            "/v1/tokens/revoke",
            Some(API_KEY),
            Some(&json!({ "token": token })),
        );
        assert!(matches!(r.status, 200 | 503), "{}", r.text());
        (r.status == 200).then_some(())
    });
    assert_eq!(ask(&cluster.nodes[0]), 401, "revoked where it was revoked");

    cluster.nodes[2].restart_stopped();
    cluster.wait_until_connected();
    eventually(
        Duration::from_secs(10),
        "node 2's directory refusing the revoked token",
        || (ask(&cluster.nodes[2]) == 401).then_some(()),
    );
    // Stored, not only heard: restarted with the other nodes stopped (nobody to
    // announce it again), node 2 still refuses it.
    for node in 0..3 {
        cluster.nodes[node].stop();
    }
    cluster.nodes[2].restart_stopped();
    assert_eq!(ask(&cluster.nodes[2]), 401);
}
