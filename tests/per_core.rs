//! `ownership = "per-core"`: every core runs its own control plane for its own
//! connections. Users whose sessions are on different cores chat live (pushes cross
//! between the cores), and a device that reconnects onto the other core replaces its
//! old session there. The session id's low byte names the core, which is how these tests
//! know where a session landed. Chatrooms span cores whichever core owns them, and the
//! HTTP API's calls about sessions reach every core. Each conversation's writes are
//! applied by the core that owns its storage partition.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{Dataplane, TestClient, TestServer};
use petrel_proto::Body;
use petrel_proto::pb::{self, conversation_op::Op};
use petrel_storage::partition::{DEFAULT_PARTITIONS, Partitions};
use petrel_storage::{ConversationKey, UserId};
use serde_json::{Value, json};

fn start(dp: Dataplane) -> TestServer {
    start_with(dp, "")
}

fn start_with(dp: Dataplane, extra: &str) -> TestServer {
    let cores = match dp {
        Dataplane::Kernel | Dataplane::Dpdk => "cores = [0, 1]\n",
        Dataplane::Xdp => "",
    };
    TestServer::start_on(
        dp,
        &format!("{cores}ownership = \"per-core\"\nrate_limit_per_second = 0\n{extra}"),
    )
}

fn core_of(c: &TestClient) -> u64 {
    c.session_id & 0xff
}

/// Logs every user in on a connection of its own; checks that the sessions landed on
/// both cores (twelve users: the chance that hashing puts all on one is 1 in 2,048).
fn log_in_on_both_cores(server: &TestServer, users: &[u64]) -> Vec<TestClient> {
    let clients: Vec<TestClient> = users
        .iter()
        .map(|&u| TestClient::login(server.addr, &server.token(u, "d"), u, "d"))
        .collect();
    let on: HashSet<u64> = clients.iter().map(core_of).collect();
    assert_eq!(on, HashSet::from([0, 1]), "sessions land on both cores");
    clients
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
    let mut clients = log_in_on_both_cores(&server, &users);

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
    let group = clients[0].create_group("both cores", &users[1..]);
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
    // Numbered like the SDK numbers them: a reconnect within the same millisecond as the
    // last login is still later (unnumbered logins in one millisecond on two cores are
    // ordered by core index, which need not be the order they were made in).
    let device = (user, "phone", pb::Platform::Desktop);
    let log_in =
        |attempt| TestClient::connect(server.addr).log_in_numbered(&token, device, attempt);
    let first = log_in(1);
    // Log the same device in again until a connection lands on the other core; those
    // landing on the first core replace each other there (the one-core rule).
    let mut old = first;
    for attempt in 2..66 {
        let next = log_in(attempt);
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

/// Members on both cores in a room owned by core 0 and in one owned by core 1: one seq
/// counter per room, every other member gets each message once, and a late joiner on
/// either core gets the backlog.
fn a_chatroom_spans_cores_whichever_core_owns_it(dp: Dataplane) {
    let server = start(dp);
    let users: Vec<u64> = (8_300..8_312).collect();
    let mut clients = log_in_on_both_cores(&server, &users);
    for room in [40u64, 41] {
        let conversation = pb::ConversationId {
            kind: pb::ConversationKind::Chatroom as i32,
            id: room,
        };
        for c in clients.iter_mut() {
            let joined = c.request(pb::ConversationOp {
                op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: room })),
            });
            assert!(
                matches!(joined.body, Body::ConversationOpResult(_)),
                "{joined:?}"
            );
        }
        let mut seqs = Vec::new();
        for (i, c) in clients.iter_mut().enumerate() {
            seqs.push(c.send_text(conversation, 500 + i as u64, "room").seq);
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=12).collect::<Vec<u64>>(),
            "room {room}: one counter"
        );
        for (i, c) in clients.iter_mut().enumerate() {
            let mut from = Vec::new();
            for _ in 0..11 {
                let p = c.push();
                assert_eq!(p.conversation, Some(conversation));
                from.push(p.sender);
            }
            from.sort_unstable();
            let expected: Vec<u64> = users.iter().copied().filter(|&u| u != users[i]).collect();
            assert_eq!(from, expected, "room {room}: each message once");
        }
        // A late joiner, wherever it lands, gets the room's backlog.
        let mut late = TestClient::login(server.addr, &server.token(8_399, "late"), 8_399, "late");
        let joined = late.request(pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: room })),
        });
        let Body::ConversationOpResult(result) = joined.body else {
            panic!("join failed: {joined:?}");
        };
        let mut recent: Vec<u64> = result.recent.iter().map(|m| m.seq).collect();
        recent.sort_unstable();
        assert_eq!(
            recent,
            (1..=12).collect::<Vec<u64>>(),
            "room {room}: backlog"
        );
    }
}

const API_KEY: &str = "per-core-api-key-0123456789abcdef";

/// The HTTP API's calls about sessions reach every core: a user with a desktop session
/// on one core and a phone on the other is listed, counted, kicked and revoked whole.
fn the_api_sees_and_ends_sessions_on_every_core(dp: Dataplane) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("api.key");
    std::fs::write(&key_file, API_KEY).expect("key file");
    let server = start_with(
        dp,
        &format!(
            "api_addr = \"127.0.0.1:0\"\napi_key_file = {:?}\n",
            key_file.display().to_string()
        ),
    );
    let api = |method: &str, path: &str, body: Option<Value>| -> Value {
        let r = server.api_request(method, path, Some(API_KEY), body.as_ref());
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()
    };
    let token = |device: &str, platform: &str| -> String {
        let r = server.api_request(
            "POST",
            "/v1/tokens",
            Some(API_KEY),
            Some(
                &json!({"user_id": 8200, "device": device, "platform": platform, "ttl_secs": 3600}),
            ),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["token"].as_str().expect("token").to_owned()
    };
    let desk = TestClient::login(server.addr, &token("desk", "desktop"), 8200, "desk");
    // A phone of the same user, until one lands on the other core.
    let phone = (0..64)
        .map(|i| {
            let device = format!("phone-{i}");
            TestClient::connect(server.addr).log_in_as(
                &token(&device, "ios"),
                8200,
                &device,
                pb::Platform::Ios,
            )
        })
        .find(|p| core_of(p) != core_of(&desk))
        .expect("64 phones never landed on the other core");
    let mut phone = phone;
    let mut desk = desk;

    let sessions = api("GET", "/v1/users/8200/sessions", None);
    let ids: HashSet<u64> = sessions["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["session_id"].as_u64().expect("session id"))
        .collect();
    assert!(ids.contains(&desk.session_id), "{sessions}");
    assert!(ids.contains(&phone.session_id), "{sessions}");
    let presence = api(
        "POST",
        "/v1/presence",
        Some(json!({"user_ids": [8200, 8201]})),
    );
    assert_eq!(presence["users"][0]["online"], true, "{presence}");
    assert_eq!(presence["users"][1]["online"], false, "{presence}");

    // Kicking the phone ends it on its core, and only it.
    let device = format!("phone-{}", phone_index(&sessions, phone.session_id));
    let ended = api(
        "POST",
        "/v1/users/8200/kick",
        Some(json!({"device": device, "message": "bye"})),
    );
    assert_eq!(ended["sessions_ended"], 1, "{ended}");
    let frames = phone.recv_until_closed(Duration::from_secs(10));
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Kick(k) if k.reason == pb::KickReason::Admin as i32)),
        "{frames:?}"
    );
    // Revoking the user's tokens ends the desktop session on the other core.
    let ended = api("POST", "/v1/users/8200/tokens/revoke", None);
    assert!(ended["sessions_ended"].as_u64() >= Some(1), "{ended}");
    let frames = desk.recv_until_closed(Duration::from_secs(10));
    assert!(
        frames.iter().any(
            |f| matches!(&f.body, Body::Kick(k) if k.reason == pb::KickReason::TokenRevoked as i32)
        ),
        "{frames:?}"
    );
}

/// The core that writes `conversation`: its partition (of the default 16) mod 2 cores.
fn writer_core(conversation: ConversationKey) -> u64 {
    let partitions = Partitions::new(DEFAULT_PARTITIONS).expect("default partitions");
    u64::from(partitions.of(conversation).0 % 2)
}

fn every_conversation_is_written_by_its_partition_owner_core(dp: Dataplane) {
    let server = start_with(dp, "metrics_addr = \"127.0.0.1:0\"\n");
    let users: Vec<u64> = (8_200..8_212).collect();
    let mut clients = log_in_on_both_cores(&server, &users);
    // Every pair chats both ways: the conversation's seqs come from one counter, and
    // each write whose partition the sender's core does not own crosses to the owner.
    let mut crossed = 0;
    let mut id = 0;
    for i in 0..users.len() {
        for j in i + 1..users.len() {
            let conversation = ConversationKey::single(UserId(users[i]), UserId(users[j]));
            let writer = writer_core(conversation);
            for (from, to, seq) in [(i, j, 1), (j, i, 2)] {
                id += 1;
                let ack = clients[from].send_text(single(users[to]), id, "hi");
                assert_eq!(ack.seq, seq, "{conversation:?}");
                crossed += u64::from(core_of(&clients[from]) != writer);
            }
        }
    }
    // A group: created where it is asked for, then every member's message is written
    // by the group's owner core.
    let group = clients[0].create_group("owned", &users[1..]);
    let writer = writer_core(ConversationKey::Group(group.id));
    let mut seqs = Vec::new();
    for c in clients.iter_mut() {
        id += 1;
        seqs.push(c.send_text(group, id, "hello").seq);
        crossed += u64::from(core_of(c) != writer);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=12).collect::<Vec<u64>>(), "one gap-free counter");
    // Sessions are on both cores and writes of both cores' partitions were made: some
    // crossed (with twelve users, all 66 pairs' partitions on their senders' cores is
    // out of the question), and each was applied once, by its owner.
    assert!(crossed > 0);
    let routed = |side: &str| format!("petrel_storage_routed_writes_total{{side=\"{side}\"}}");
    // Nothing stays in flight either. A background request (a retention step on core 0)
    // may be in flight at any one scrape, so this waits for a scrape with none.
    server.scrape_until(
        "every routed write counted on both sides, and none in flight",
        |s| {
            s.get(&routed("sent")) == crossed as f64
                && s.get(&routed("applied")) == crossed as f64
                && s.get("petrel_storage_in_flight") == 0.0
        },
    );
}

/// The number in the device name of the listed session `session_id`.
fn phone_index(sessions: &Value, session_id: u64) -> String {
    sessions["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["session_id"].as_u64() == Some(session_id))
        .and_then(|s| s["device"].as_str())
        .and_then(|d| d.strip_prefix("phone-"))
        .expect("the phone is listed")
        .to_owned()
}

dataplane_tests!(
    users_on_both_cores_chat_one_to_one_and_in_a_group_live,
    a_device_reconnecting_onto_the_other_core_replaces_its_old_session,
    the_api_sees_and_ends_sessions_on_every_core,
    a_chatroom_spans_cores_whichever_core_owns_it,
    every_conversation_is_written_by_its_partition_owner_core
);
