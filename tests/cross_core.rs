//! A conversation whose members are on different cores: every acked message is stored
//! exactly once with gap-free seqs, through a SIGKILL in the middle of the load and a
//! restart on the same data directory.

#[macro_use]
mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Dataplane, TestClient, TestServer};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::pb::{self, conversation_op::Op};
use petrel_proto::{Body, Frame};

/// Sends to `group` as fast as acks come back until the server goes away; returns the
/// acked `(client_msg_id, seq)`s.
fn send_until_the_server_dies(mut c: TestClient, group: pb::ConversationId) -> Vec<(u64, u64)> {
    let mut acked = Vec::new();
    for id in 1..=1_000_000u64 {
        let request = id as u32;
        let frame = Frame::new(
            request,
            pb::SendMessage {
                client_msg_id: id,
                conversation: Some(group),
                content: petrel_proto::wire::encode_content(&common::client::text_content(
                    &format!("{}:{id}", c.user),
                )),
                ..Default::default()
            },
        );
        let bytes = FrameEncoder::default()
            .encode_to_bytes(&frame)
            .expect("encode");
        if c.send_raw(&bytes).is_err() {
            return acked;
        }
        loop {
            // A SIGKILLed AF_XDP server sends no FIN or RST (its TCP lived in the dead
            // process): a read that times out means the server is gone, like a close.
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.try_recv(Duration::from_secs(3))
            }));
            let Ok(next) = next else {
                return acked;
            };
            match next {
                Ok(Some(f)) if f.flags.is_response() && f.request_id == request => match f.body {
                    Body::Ack(ack) => {
                        acked.push((ack.client_msg_id, ack.seq));
                        break;
                    }
                    _ => return acked,
                },
                // Pushes of the other members' messages, and the like.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return acked,
            }
        }
    }
    acked
}

fn a_group_spanning_cores_keeps_gap_free_exactly_once_seqs_through_a_sigkill(dp: Dataplane) {
    group_spanning_cores_through_a_sigkill(dp, Ownership::Home);
}

/// The same with a control plane and a storage committer on each core: the members'
/// sessions live on different cores, which write the group's messages through their own
/// committers (one shared fsync).
fn per_core_control_planes_keep_a_spanning_groups_seqs_gap_free_through_a_sigkill(dp: Dataplane) {
    group_spanning_cores_through_a_sigkill(dp, Ownership::PerCore);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ownership {
    Home,
    PerCore,
}

fn group_spanning_cores_through_a_sigkill(dp: Dataplane, ownership: Ownership) {
    // The kernel dataplane spreads connections over two cores by SO_REUSEPORT hashing;
    // the AF_XDP lab has two queues, one core each, and RSS spreads them likewise.
    // DPDK: two queues of net_af_packet, whose fanout spreads flows over them.
    let cores = match dp {
        Dataplane::Kernel | Dataplane::Dpdk => "cores = [0, 1]\n",
        Dataplane::Xdp => "",
    };
    // Per-core control planes: their session ids name the core.
    let mode = match ownership {
        Ownership::Home => "ownership = \"home\"\nmetrics_addr = \"127.0.0.1:0\"\n",
        Ownership::PerCore => "ownership = \"per-core\"\n",
    };
    let config = format!("{cores}rate_limit_per_second = 0\n{mode}");
    let mut server = TestServer::start_on(dp, &config);
    let users: Vec<u64> = (7_000..7_012).collect();
    let mut clients: Vec<TestClient> = users
        .iter()
        .map(|&u| TestClient::login(server.addr, &server.token(u, "d"), u, "d"))
        .collect();
    let created = clients[0].request(pb::ConversationOp {
        op: Some(Op::CreateGroup(pb::CreateGroup {
            name: "across cores".into(),
            members: users[1..].to_vec(),
        })),
    });
    let Body::ConversationOpResult(created) = created.body else {
        panic!("create group failed: {created:?}");
    };
    let group = created.conversation.expect("group id");
    // Twelve connections land on both cores (the chance that hashing puts all twelve on
    // one is 1 in 2,048): the test is only meaningful if they do, so it checks.
    if ownership == Ownership::PerCore {
        let on: HashSet<u64> = clients.iter().map(|c| c.session_id & 0xff).collect();
        eprintln!("sessions on cores {on:?}");
        assert_eq!(on, HashSet::from([0, 1]), "sessions on both cores");
    } else {
        let both = server.scrape_until("connections on both cores", |s| {
            let on = |core: &str| {
                s.samples
                    .iter()
                    .filter(|(k, _)| k.starts_with("petrel_connections{") && k.contains(core))
                    .map(|(_, v)| *v)
                    .sum::<f64>()
            };
            on("core=\"0\"") > 0.0 && on("core=\"1\"") > 0.0
        });
        eprintln!(
            "connections per core: {:?}",
            both.samples
                .iter()
                .filter(|(k, _)| k.starts_with("petrel_connections{"))
                .collect::<Vec<_>>()
        );
    }

    let senders: Vec<_> = clients
        .drain(..)
        .map(|c| {
            let user = c.user;
            (
                user,
                std::thread::spawn(move || send_until_the_server_dies(c, group)),
            )
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    let mut acked: HashMap<(u64, u64), u64> = HashMap::new();
    for (user, sender) in senders {
        for (id, seq) in sender.join().expect("sender thread") {
            assert!(acked.insert((user, id), seq).is_none(), "acked twice");
        }
    }
    assert!(
        acked.len() > 100,
        "only {} messages acked in {:?}",
        acked.len(),
        started.elapsed()
    );

    server.restart_stopped();
    let mut reader = TestClient::login(server.addr, &server.token(users[0], "r"), users[0], "r");
    let stored: Vec<pb::MessagePush> = reader
        .sync_all()
        .into_iter()
        .filter(|m| m.conversation == Some(group))
        .collect();
    let mut seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs are gap-free and each appears once");
    let mut seen = HashSet::new();
    for m in &stored {
        assert!(
            seen.insert((m.sender, m.client_msg_id)),
            "message ({}, {}) stored twice",
            m.sender,
            m.client_msg_id
        );
    }
    let by_key: HashMap<(u64, u64), u64> = stored
        .iter()
        .map(|m| ((m.sender, m.client_msg_id), m.seq))
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(key, seq)| by_key.get(key) != Some(seq))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "acked messages missing or moved after the crash, e.g. {lost:?}"
    );
    eprintln!(
        "{} acked before SIGKILL, {} stored after restart, seqs 1..={}",
        acked.len(),
        stored.len(),
        seqs.len()
    );
}

dataplane_tests!(
    a_group_spanning_cores_keeps_gap_free_exactly_once_seqs_through_a_sigkill,
    per_core_control_planes_keep_a_spanning_groups_seqs_gap_free_through_a_sigkill
);
