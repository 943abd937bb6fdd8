//! Crash soak: the real `petrel serve` under mixed load from SDK clients — one-to-one
//! chats, a group, a chatroom, history reads, and the sync every client runs after each
//! reconnect — SIGKILLed at random points and restarted on the same data directory.
//!
//! The clients are `petrel-sdk` clients with outboxes: a send that was not acked before
//! the kill goes out again after the reconnect with the same `client_msg_id`. After each
//! restart the load pauses and the test checks that
//! - every SDK outbox drains (each send is acked, or refused for good — which counts as a
//!   failure here: nothing in this load is refusable);
//! - every acked message of a stored conversation is on the server exactly once, at the
//!   seq its ack named, and every conversation's seqs are 1..=n without a gap or a repeat
//!   (a fresh device of each user syncs everything);
//! - no client was shown a stored message twice, nor a chatroom message (same sender and
//!   `client_msg_id`) twice.
//!
//! `SOAK_KILLS` sets the number of kills (default 3 in the test suite; `scripts/soak.sh`
//! runs 20 against the release build), `SOAK_SEED` replays a run's kill points and load
//! mix, `SOAK_CLIENTS` the number of SDK clients (default 8). The summary line is printed
//! to stderr (`--no-capture` shows it).

#[allow(unused_imports)] // common re-exports TestClient helpers these tests do not use
#[macro_use]
mod common;
#[allow(dead_code)] // the helpers other SDK tests use
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestClient, TestServer};
use petrel_proto::pb;
use petrel_sdk::{Client, ConversationKey, Event, Events};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sdk_keys::{Keys, test_config};
use tokio::task::block_in_place;
use tokio::time::sleep;

const ROOM: u64 = 7_700;
const FIRST_USER: u64 = 50_001;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A stored conversation as the server names it for everyone: a one-to-one chat by its
/// two users (smaller first), a group by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Conv {
    Pair(u64, u64),
    Group(u64),
}

impl Conv {
    /// `key` as seen by `viewer`; `None` for a chatroom (not stored).
    fn of(viewer: u64, key: ConversationKey) -> Option<Conv> {
        match key.kind {
            pb::ConversationKind::Single => {
                Some(Conv::Pair(viewer.min(key.id), viewer.max(key.id)))
            }
            pb::ConversationKind::Group => Some(Conv::Group(key.id)),
            _ => None,
        }
    }
}

/// What one client heard, recorded by its event task.
#[derive(Default)]
struct Heard {
    /// Its own sends the server acked: client_msg_id → (conversation, seq).
    acked: HashMap<u64, (ConversationKey, u64)>,
    /// Acks for an id already acked (the SDK must report each send once).
    double_acks: u64,
    /// Stored messages shown: (conversation, seq).
    shown: HashSet<(Conv, u64)>,
    /// Chatroom messages shown: (sender, client_msg_id).
    room_shown: HashSet<(u64, u64)>,
    /// Messages shown a second time, described.
    duplicates: Vec<String>,
    /// Sends refused for good.
    failed: Vec<String>,
}

struct Soaker {
    user: u64,
    client: Client,
    heard: Arc<Mutex<Heard>>,
}

/// Records every event of `user`'s client until the stream closes.
async fn listen(user: u64, mut events: Events, heard: Arc<Mutex<Heard>>) {
    while let Some(event) = events.recv().await {
        let mut h = heard.lock().unwrap();
        match event {
            Event::Acked {
                client_msg_id,
                conversation,
                seq,
            } => {
                let again = h.acked.insert(client_msg_id, (conversation, seq)).is_some();
                h.double_acks += u64::from(again);
            }
            Event::Message(m) => match Conv::of(user, m.conversation) {
                Some(conv) => {
                    if !h.shown.insert((conv, m.seq)) {
                        h.duplicates.push(format!("{conv:?} seq {}", m.seq));
                    }
                }
                None => {
                    if !h.room_shown.insert((m.sender, m.client_msg_id)) {
                        h.duplicates.push(format!(
                            "chatroom message {} of user {}",
                            m.client_msg_id, m.sender
                        ));
                    }
                }
            },
            Event::SendFailed {
                client_msg_id,
                code,
                message,
            } => h
                .failed
                .push(format!("{client_msg_id}: {code:?} {message}")),
            _ => {}
        }
    }
}

/// Sends a mix of one-to-one, group and chatroom messages and reads history, while
/// `running`; `sent` counts the sends queued.
async fn load(
    me: Client,
    peers: Vec<u64>,
    group: u64,
    seed: u64,
    running: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if !running.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(20)).await;
            continue;
        }
        // Keep the outbox short, so a round's messages are mostly acked before the kill.
        if me.outbox_len().unwrap() > 50 {
            sleep(Duration::from_millis(10)).await;
            continue;
        }
        n += 1;
        let roll = rng.random_range(0..100);
        let key = match roll {
            0..40 => ConversationKey::single(peers[rng.random_range(0..peers.len())]),
            40..70 => ConversationKey::group(group),
            70..90 => ConversationKey::chatroom(ROOM),
            _ => {
                let conv = if roll % 2 == 0 {
                    ConversationKey::group(group)
                } else {
                    ConversationKey::single(peers[0])
                };
                // Offline or mid-restart it answers from the local store: fine.
                let _ = me.load_history(conv, 0, 30).await;
                continue;
            }
        };
        me.send_text(key, &format!("{} #{n}", me.config().user_id))
            .unwrap();
        sent.fetch_add(1, Ordering::SeqCst);
        sleep(Duration::from_millis(rng.random_range(2..15))).await;
    }
}

/// Waits until every outbox is empty, up to `limit`; the non-empty ones otherwise.
async fn drain_outboxes(clients: &[Soaker], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<(u64, usize)> = clients
            .iter()
            .map(|c| (c.user, c.client.outbox_len().unwrap()))
            .filter(|&(_, n)| n > 0)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "outboxes not drained within {limit:?} (user, queued): {left:?}; states: {:?}",
                clients
                    .iter()
                    .map(|c| (c.user, c.client.state()))
                    .collect::<Vec<_>>()
            ));
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Result of checking the server against what the clients were told.
#[derive(Default)]
struct Check {
    acked_stored: usize,
    acked_room: usize,
    lost: Vec<String>,
    duplicated: Vec<String>,
}

/// Syncs everything each user can see with a fresh desktop device and compares it with
/// the acks the clients got.
fn check_server(server: &TestServer, keys: &Keys, clients: &[Soaker]) -> Check {
    let mut check = Check::default();
    // Every acked stored message: conversation → seq → (sender, client_msg_id).
    let mut expected: HashMap<Conv, BTreeMap<u64, (u64, u64)>> = HashMap::new();
    for c in clients {
        let heard = c.heard.lock().unwrap();
        for (&id, &(key, seq)) in &heard.acked {
            match Conv::of(c.user, key) {
                Some(conv) => {
                    check.acked_stored += 1;
                    if let Some(other) = expected.entry(conv).or_default().insert(seq, (c.user, id))
                    {
                        check.duplicated.push(format!(
                            "{conv:?} seq {seq} acked to {other:?} and {:?}",
                            (c.user, id)
                        ));
                    }
                }
                None => check.acked_room += 1,
            }
        }
    }
    for c in clients {
        let token = keys.mint(c.user, "soak-verify", Duration::from_secs(3600));
        let mut reader = TestClient::login(server.addr, &token.token, c.user, "soak-verify");
        let mut stored: HashMap<Conv, BTreeMap<u64, (u64, u64)>> = HashMap::new();
        for m in reader.sync_all() {
            let key = ConversationKey::from_wire(m.conversation.as_ref()).expect("conversation");
            let conv = Conv::of(c.user, key).expect("only stored conversations sync");
            let entry = stored.entry(conv).or_default();
            if entry.insert(m.seq, (m.sender, m.client_msg_id)).is_some() {
                check
                    .duplicated
                    .push(format!("{conv:?} seq {} synced twice to {}", m.seq, c.user));
            }
        }
        for (conv, seqs) in &stored {
            let n = seqs.len() as u64;
            if seqs.keys().next_back() != Some(&n) {
                check.lost.push(format!(
                    "{conv:?} seen by {}: {n} messages but seqs up to {:?} (a gap)",
                    c.user,
                    seqs.keys().next_back()
                ));
            }
            let mut ids = HashSet::new();
            for (seq, &(sender, id)) in seqs {
                if !ids.insert((sender, id)) {
                    check.duplicated.push(format!(
                        "{conv:?}: message {id} of user {sender} stored twice (again at seq {seq})"
                    ));
                }
            }
        }
        for (conv, acked) in &expected {
            let member = match *conv {
                Conv::Pair(a, b) => c.user == a || c.user == b,
                Conv::Group(_) => true,
            };
            if !member {
                continue;
            }
            for (seq, who) in acked {
                let found = stored.get(conv).and_then(|s| s.get(seq));
                if found != Some(who) {
                    check.lost.push(format!(
                        "{conv:?} seq {seq} acked to {who:?}, user {} syncs {found:?}",
                        c.user
                    ));
                }
            }
        }
    }
    check
}

#[test]
fn sdk_clients_under_mixed_load_lose_and_duplicate_nothing_across_sigkills() {
    let kills = env_or("SOAK_KILLS", 3);
    let n_clients = env_or("SOAK_CLIENTS", 8).max(3);
    let seed = env_or("SOAK_SEED", rand::random::<u32>().into());
    eprintln!("soak: {kills} kills, {n_clients} SDK clients, SOAK_SEED={seed}");
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let keys = Arc::new(Keys::generate());
        let mut server = TestServer::start(&format!(
            "{}rate_limit_per_second = 0\n",
            keys.server_config()
        ));
        let users: Vec<u64> = (FIRST_USER..FIRST_USER + n_clients).collect();
        let endpoints = vec![server.addr.to_string()];
        let mut clients = Vec::new();
        for &user in &users {
            let mut config = test_config(user, endpoints.clone());
            // Phones: the checker logs in as each user's desktop, which must not replace
            // the SDK session (one session per platform class).
            config.platform = pb::Platform::Android;
            let (provider, _) = keys.provider_on(
                user,
                &config.device_id,
                pb::Platform::Android,
                Duration::from_secs(3600),
            );
            let (client, events) = Client::start(config, provider).expect("start client");
            let heard = Arc::new(Mutex::new(Heard::default()));
            tokio::spawn(listen(user, events, heard.clone()));
            clients.push(Soaker {
                user,
                client,
                heard,
            });
        }
        for c in &clients {
            c.client
                .wait_connected(Duration::from_secs(30))
                .await
                .unwrap();
        }
        let group = clients[0]
            .client
            .create_group("soak", &users[1..])
            .await
            .expect("create group")
            .id;
        for c in &clients {
            c.client.join_chatroom(ROOM).await.expect("join chatroom");
        }

        let running = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut loaders = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            // Each client writes to the next two users one-to-one, the group and the room.
            let peers = vec![users[(i + 1) % users.len()], users[(i + 2) % users.len()]];
            loaders.push(tokio::spawn(load(
                c.client.clone(),
                peers,
                group,
                seed ^ c.user,
                running.clone(),
                stop.clone(),
                sent.clone(),
            )));
        }

        let mut last = Check::default();
        for kill in 1..=kills {
            running.store(true, Ordering::SeqCst);
            sleep(Duration::from_millis(rng.random_range(300..1500))).await;
            block_in_place(|| server.kill());
            // Down for a moment while the clients keep queuing sends.
            sleep(Duration::from_millis(rng.random_range(0..300))).await;
            block_in_place(|| server.restart_stopped());
            // Let the load run on the restarted server a little, then pause and check.
            sleep(Duration::from_millis(rng.random_range(0..500))).await;
            running.store(false, Ordering::SeqCst);
            if let Err(e) = drain_outboxes(&clients, Duration::from_secs(60)).await {
                panic!("after kill {kill}: {e}");
            }
            // The last acks' events reach the listeners just after the outbox empties.
            sleep(Duration::from_millis(200)).await;
            last = block_in_place(|| check_server(&server, &keys, &clients));
            let mut duplicates: Vec<String> = last.duplicated.clone();
            let mut failed = Vec::new();
            let mut double_acks = 0;
            for c in &clients {
                let h = c.heard.lock().unwrap();
                duplicates.extend(h.duplicates.iter().map(|d| format!("user {}: {d}", c.user)));
                failed.extend(h.failed.iter().map(|f| format!("user {}: {f}", c.user)));
                double_acks += h.double_acks;
            }
            eprintln!(
                "soak: kill {kill}/{kills} at {:.1} s: {} acked stored + {} acked chatroom, \
                 {} lost, {} duplicated",
                started.elapsed().as_secs_f64(),
                last.acked_stored,
                last.acked_room,
                last.lost.len(),
                duplicates.len()
            );
            assert!(
                last.lost.is_empty(),
                "after kill {kill}, lost: {:?}",
                &last.lost[..last.lost.len().min(10)]
            );
            assert!(
                duplicates.is_empty(),
                "after kill {kill}, duplicated: {:?}",
                &duplicates[..duplicates.len().min(10)]
            );
            assert!(
                failed.is_empty(),
                "after kill {kill}, sends refused: {failed:?}"
            );
            assert_eq!(double_acks, 0, "a send was reported acked twice");
        }
        stop.store(true, Ordering::SeqCst);
        for l in loaders {
            l.await.expect("load task");
        }
        let sent = sent.load(Ordering::SeqCst);
        assert_eq!(
            (last.acked_stored + last.acked_room) as u64,
            sent,
            "every queued send was acked"
        );
        assert!(
            last.acked_stored as u64 >= 50 * kills,
            "too little load to mean anything: {} stored messages acked over {kills} kills",
            last.acked_stored
        );
        eprintln!(
            "soak summary: kills {kills}, messages acked {} ({} stored, {} chatroom), \
             lost 0, duplicated 0, elapsed {:.1} s, SOAK_SEED={seed}",
            last.acked_stored + last.acked_room,
            last.acked_stored,
            last.acked_room,
            started.elapsed().as_secs_f64()
        );
        for c in &clients {
            c.client.shutdown(false).await;
        }
    });
}
