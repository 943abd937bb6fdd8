//! End-to-end tests of the client SDK (`petrel-sdk`) against the real `petrel serve`
//! (RocksDB in a temporary directory), each on both dataplanes: kernel sockets on
//! loopback (`NAME::kernel`) and AF_XDP on the veth lab (`NAME::xdp`, root only).
//!
//! - a server restart mid-conversation: the SDK reconnects with back-off, flushes its
//!   outbox, and the receiver sees every message exactly once, in order;
//! - the primary endpoint is down: the SDK connects to the backup;
//! - a token that expires during the session is renewed over the live connection without
//!   the app noticing (no disconnect, the provider asked only once);
//! - 1,000 SDK clients in one process exchange messages for a minute with no errors
//!   (`PETREL_SDK_SOAK_SECS` shortens or lengthens the run);
//! - typing indicators between two SDK clients, 1:1 and in a group, never stored;
//! - read receipts, 1:1 and in a small group.

#[allow(unused_imports)] // common re-exports TestClient, which these tests do not use
#[macro_use]
mod common;
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Dataplane, TestServer};
use petrel_sdk::{ConnectionState, ConversationKey, Event, Events, Message};
use sdk_keys::{Keys, start, test_config};
use tokio::task::block_in_place;
use tokio::time::{Instant, sleep, timeout};

const WAIT: Duration = Duration::from_secs(30);

/// Reads events until `n` messages arrived (failing after `limit`); returns them and
/// every other event seen.
async fn messages(events: &mut Events, n: usize, limit: Duration) -> (Vec<Message>, Vec<Event>) {
    let deadline = Instant::now() + limit;
    let (mut got, mut other) = (Vec::new(), Vec::new());
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Some(Event::Message(m))) => got.push(m),
            Ok(Some(e)) => other.push(e),
            Ok(None) => panic!("event stream closed"),
            Err(_) => panic!(
                "only {} of {n} messages within {limit:?}: {got:?}",
                got.len()
            ),
        }
    }
    (got, other)
}

/// Every event that arrives within `window`.
async fn drain(events: &mut Events, window: Duration) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Ok(Some(e)) = timeout(window, events.recv()).await {
        seen.push(e);
    }
    seen
}

fn texts(ms: &[Message]) -> Vec<String> {
    ms.iter()
        .map(|m| m.text().unwrap_or("?").to_owned())
        .collect()
}

fn server_restart_mid_conversation_delivers_every_message_once_in_order(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let mut server = TestServer::start_on(dp, &keys.server_config());
        let (alice, bob) = (1001, 1002);
        let endpoints = vec![server.addr.to_string()];
        let (a, mut a_events, _) = start(&keys, test_config(alice, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints));
        a.wait_connected(WAIT).await.unwrap();
        b.wait_connected(WAIT).await.unwrap();

        let to_bob = ConversationKey::single(bob);
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(a.send_text(to_bob, &format!("m{i}")).unwrap());
        }
        // Stop the server while those are in flight, keep sending while it is down.
        block_in_place(|| server.stop());
        for i in 10..20 {
            ids.push(a.send_text(to_bob, &format!("m{i}")).unwrap());
        }
        sleep(Duration::from_millis(300)).await;
        block_in_place(|| server.restart_stopped());
        for i in 20..30 {
            ids.push(a.send_text(to_bob, &format!("m{i}")).unwrap());
        }

        let (got, _) = messages(&mut b_events, 30, WAIT).await;
        let expected: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
        assert_eq!(texts(&got), expected);
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<u64>>()
        );
        assert!(
            got.iter()
                .all(|m| m.conversation == ConversationKey::single(alice))
        );
        // Nothing more arrives: no duplicates.
        let late = drain(&mut b_events, Duration::from_millis(500)).await;
        assert!(
            !late.iter().any(|e| matches!(e, Event::Message(_))),
            "duplicates: {late:?}"
        );

        // Alice saw each send acked once, and reconnected by herself.
        let a_seen = drain(&mut a_events, Duration::from_millis(500)).await;
        let acked: Vec<u64> = a_seen
            .iter()
            .filter_map(|e| match e {
                Event::Acked { client_msg_id, .. } => Some(*client_msg_id),
                _ => None,
            })
            .collect();
        assert_eq!(acked.len(), 30, "{a_seen:?}");
        assert_eq!(
            acked.iter().collect::<HashSet<_>>(),
            ids.iter().collect::<HashSet<_>>()
        );
        let connects = a_seen
            .iter()
            .filter(|e| matches!(e, Event::State(ConnectionState::Connected { .. })))
            .count();
        let drops = a_seen
            .iter()
            .filter(|e| matches!(e, Event::State(ConnectionState::Disconnected { .. })))
            .count();
        assert!(connects >= 2 && drops >= 1, "no reconnect: {a_seen:?}");
        assert_eq!(a.outbox_len().unwrap(), 0);

        // The conversation list and history come from the local store.
        let list = b.conversations().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].last_seq, list[0].unread), (30, 30));
        b.mark_read(ConversationKey::single(alice), 30)
            .await
            .unwrap();
        assert_eq!(b.conversations().unwrap()[0].unread, 0);
        let page = b
            .load_history(ConversationKey::single(alice), 11, 5)
            .await
            .unwrap();
        assert_eq!(texts(&page), ["m9", "m8", "m7", "m6", "m5"]);
    })
}

fn with_the_primary_endpoint_down_the_sdk_connects_to_the_backup(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (alice, bob) = (2001, 2002);
        let endpoints = vec![dead.to_string(), server.addr.to_string()];
        let (a, mut a_events, _) = start(&keys, test_config(alice, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints));
        a.wait_connected(WAIT).await.unwrap();
        b.wait_connected(WAIT).await.unwrap();
        assert!(
            matches!(a.state(), ConnectionState::Connected { endpoint, .. } if endpoint == server.addr.to_string())
        );
        let states = drain(&mut a_events, Duration::from_millis(200)).await;
        assert!(
        states.iter().any(|e| matches!(e,
            Event::State(ConnectionState::Disconnected { reason, .. }) if reason.contains(&dead.to_string()))),
        "{states:?}"
    );
        a.send_text(ConversationKey::single(bob), "via the backup")
            .unwrap();
        let (got, _) = messages(&mut b_events, 1, WAIT).await;
        assert_eq!(texts(&got), ["via the backup"]);
    })
}

fn a_token_expiring_mid_session_is_renewed_without_the_app_noticing(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let (alice, bob) = (3001, 3002);
        let endpoints = vec![server.addr.to_string()];
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(alice, endpoints.clone());
        config.token_cache_path = Some(dir.path().join("alice.token"));
        let (provider, calls) = keys.provider(alice, &config.device_id, Duration::from_secs(3));
        let (a, mut a_events) = petrel_sdk::Client::start(config, provider).unwrap();
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints));
        a.wait_connected(WAIT).await.unwrap();
        b.wait_connected(WAIT).await.unwrap();

        // Outlive the first token (the server ends sessions whose token expired).
        sleep(Duration::from_secs(5)).await;
        a.send_text(ConversationKey::single(bob), "after expiry")
            .unwrap();
        let (got, _) = messages(&mut b_events, 1, WAIT).await;
        assert_eq!(texts(&got), ["after expiry"]);
        b.send_text(ConversationKey::single(alice), "still there?")
            .unwrap();
        let (got, seen) = messages(&mut a_events, 1, WAIT).await;
        assert_eq!(texts(&got), ["still there?"]);

        assert_eq!(calls.load(Ordering::SeqCst), 1, "provider asked again");
        assert!(
            seen.iter().any(|e| matches!(e, Event::TokenRenewed { .. })),
            "{seen:?}"
        );
        let connects = seen
            .iter()
            .filter(|e| matches!(e, Event::State(ConnectionState::Connected { .. })))
            .count();
        assert_eq!(connects, 1, "the session was interrupted: {seen:?}");
        assert!(matches!(a.state(), ConnectionState::Connected { .. }));
        let cache = dir.path().join("alice.token");
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&cache).unwrap();
        let expires: u64 = text.lines().next().unwrap().parse().unwrap();
        let now = common::server::now().as_millis();
        assert!(
            expires > now + 3_600_000,
            "cached token is not the renewed one"
        );
    })
}

fn a_thousand_sdk_clients_exchange_messages_without_errors(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let secs: u64 = std::env::var("PETREL_SDK_SOAK_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        const CLIENTS: u64 = 1000;
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let errors = Arc::new(AtomicU64::new(0));
        let received: Arc<Vec<AtomicU64>> =
            Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));

        let mut clients = Vec::new();
        for batch in 0..CLIENTS / 100 {
            let mut started = Vec::new();
            for i in batch * 100..(batch + 1) * 100 {
                let user = 10_000 + i;
                let (client, mut events, _) = start(&keys, test_config(user, endpoints.clone()));
                let (errors, received, first_error) =
                    (errors.clone(), received.clone(), first_error.clone());
                tokio::spawn(async move {
                    // Messages from the partner must be n0, n1, n2, … exactly once each.
                    while let Some(event) = events.recv().await {
                        let problem = match &event {
                            Event::Message(m) => {
                                let expected = received[i as usize].load(Ordering::SeqCst);
                                if m.text() == Some(format!("n{expected}").as_str()) {
                                    received[i as usize].fetch_add(1, Ordering::SeqCst);
                                    None
                                } else {
                                    Some(format!("client {i} expected n{expected}, got {m:?}"))
                                }
                            }
                            Event::Kicked { .. }
                            | Event::SendFailed { .. }
                            | Event::State(ConnectionState::Disconnected { .. })
                            | Event::State(ConnectionState::Stopped { .. }) => {
                                Some(format!("client {i}: {event:?}"))
                            }
                            _ => None,
                        };
                        if let Some(p) = problem {
                            errors.fetch_add(1, Ordering::SeqCst);
                            first_error.lock().unwrap().get_or_insert(p);
                        }
                    }
                });
                started.push(client);
            }
            for c in &started {
                c.wait_connected(WAIT).await.unwrap();
            }
            clients.extend(started);
        }

        // Pairs (2k, 2k+1) talk to each other, one message a second each.
        let end = Instant::now() + Duration::from_secs(secs);
        let mut senders = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let (client, sent) = (client.clone(), sent.clone());
            let partner = ConversationKey::single(10_000 + (i as u64 ^ 1));
            senders.push(tokio::spawn(async move {
                // Spread the sends over the second.
                sleep(Duration::from_millis((i as u64 * 7) % 1000)).await;
                let mut n = 0;
                while Instant::now() < end {
                    client.send_text(partner, &format!("n{n}")).unwrap();
                    n += 1;
                    sent[i].store(n, Ordering::SeqCst);
                    sleep(Duration::from_secs(1)).await;
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let behind = (0..CLIENTS as usize)
                .filter(|&i| {
                    received[i].load(Ordering::SeqCst) < sent[i ^ 1].load(Ordering::SeqCst)
                })
                .count();
            if behind == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{behind} clients still missing messages"
            );
            sleep(Duration::from_millis(200)).await;
        }
        let total: u64 = sent.iter().map(|s| s.load(Ordering::SeqCst)).sum();
        assert!(
            total >= CLIENTS * secs.max(1) / 2,
            "only {total} messages sent"
        );
        assert_eq!(
            errors.load(Ordering::SeqCst),
            0,
            "first error: {:?}",
            first_error.lock().unwrap()
        );
        for c in &clients {
            assert_eq!(c.outbox_len().unwrap(), 0);
        }
    })
}

fn a_refused_cached_token_makes_one_provider_call_and_a_refused_fresh_one_stops(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let dir = tempfile::tempdir().unwrap();
        let user = 4001;

        // A cached token the server refuses (signed by another deployment's key).
        let other = Keys::generate();
        let cache_path = dir.path().join("token");
        let forged = other.mint(user, &format!("dev-{user}"), Duration::from_secs(3600));
        std::fs::write(
            &cache_path,
            format!("{}\n{}\n", forged.expires_at_ms, forged.token),
        )
        .unwrap();
        let mut config = test_config(user, vec![server.addr.to_string()]);
        config.token_cache_path = Some(cache_path.clone());
        let (client, _events, calls) = start(&keys, config);
        client.wait_connected(WAIT).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        client.shutdown(false).await;

        // A provider whose tokens are always refused: asked once, then the client stops.
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = refused.clone();
        let provider = petrel_sdk::token_fn(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(other.mint(4002, "dev-4002", Duration::from_secs(3600)))
        });
        let (client, mut events) =
            petrel_sdk::Client::start(test_config(4002, vec![server.addr.to_string()]), provider)
                .unwrap();
        let stopped = timeout(WAIT, async {
            loop {
                match events.recv().await {
                    Some(Event::State(ConnectionState::Stopped { reason })) => return reason,
                    Some(_) => {}
                    None => panic!("event stream closed"),
                }
            }
        })
        .await
        .expect("the client stops");
        assert!(stopped.contains("refused"), "{stopped}");
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            refused.load(Ordering::SeqCst),
            1,
            "provider called in a loop"
        );
        assert!(matches!(client.state(), ConnectionState::Stopped { .. }));
    })
}

fn a_missing_pong_makes_the_sdk_reconnect_and_resent_sends_are_stored_once(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        // Metrics, for the failure message: what the server saw of the resent sends.
        let server = TestServer::start_on(
            dp,
            &format!("{}metrics_addr = \"127.0.0.1:0\"\n", keys.server_config()),
        );
        let (b, mut b_events, _) = start(&keys, test_config(5002, vec![server.addr.to_string()]));
        b.wait_connected(WAIT).await.unwrap();
        let mut config = test_config(5001, vec![server.addr.to_string()]);
        config.heartbeat_interval = Duration::from_millis(300);
        config.pong_timeout = Duration::from_millis(500);
        config.login_timeout = Duration::from_secs(1);
        let (client, mut events, _) = start(&keys, config);
        client.wait_connected(WAIT).await.unwrap();
        // Pongs flow: a few heartbeats pass without a reconnect.
        let quiet = drain(&mut events, Duration::from_millis(1500)).await;
        assert!(
            !quiet
                .iter()
                .any(|e| matches!(e, Event::State(ConnectionState::Disconnected { .. }))),
            "{quiet:?}"
        );
        // Freeze the server: pings go unanswered.
        let pid = server.pid().to_string();
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig}");
        };
        signal("-STOP");
        // These reach the frozen server's socket buffer; their acks will go to a dead
        // connection, so the SDK resends them and the server's dedup must store each once.
        for i in 0..5 {
            client
                .send_text(ConversationKey::single(5002), &format!("frozen {i}"))
                .unwrap();
        }
        // Acks read before the disconnect count too: a server thread already past its
        // socket read when the signal came can still answer what it read.
        let mut early_acks = 0;
        let reason = timeout(WAIT, async {
            loop {
                match events.recv().await {
                    Some(Event::State(ConnectionState::Disconnected { reason, .. })) => {
                        return reason;
                    }
                    Some(Event::Acked { .. }) => early_acks += 1,
                    _ => {}
                }
            }
        })
        .await;
        // Stay stopped past the client's login timeout: its first reconnect attempt is
        // given up and reaches the server after a newer one (maybe over another core),
        // which it must not replace (`Login.attempt`, STALE_LOGIN).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        signal("-CONT");
        let reason = reason.expect("no disconnect while the server was frozen");
        assert!(reason.contains("no pong"), "{reason}");
        client.wait_connected(WAIT).await.unwrap();

        let (got, _) = messages(&mut b_events, 5, WAIT).await;
        let expected: Vec<String> = (0..5).map(|i| format!("frozen {i}")).collect();
        assert_eq!(texts(&got), expected);
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let late = drain(&mut b_events, Duration::from_millis(500)).await;
        assert!(
            !late.iter().any(|e| matches!(e, Event::Message(_))),
            "duplicates: {late:?}"
        );
        // The acks come once the client has reconnected (resend or sync echo), which on a
        // loaded machine can be after b already has the messages: wait for them.
        let (acked, mut seen) = acks(&mut events, 5 - early_acks, WAIT).await;
        let acked = acked + early_acks;
        seen.extend(drain(&mut events, Duration::from_millis(300)).await);
        let extra = seen
            .iter()
            .filter(|e| matches!(e, Event::Acked { .. }))
            .count();
        if acked + extra != 5 {
            let scrape = server.scrape();
            let figures: Vec<&str> = scrape
                .text
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && [
                            "frames",
                            "error",
                            "storage_in_flight",
                            "sessions",
                            "login",
                            "messages",
                        ]
                        .iter()
                        .any(|k| l.contains(k))
                })
                .collect();
            panic!(
                "each send acked exactly once: {acked} (of them {early_acks} before the disconnect) + {extra} acks (client {:?}, outbox {:?}); \
                 other events {seen:?}; server {figures:#?}",
                client.state(),
                client.outbox_len()
            );
        }
        assert_eq!(client.outbox_len().unwrap(), 0);
    })
}

/// Reads events until `n` acks arrived (or `limit` passed); returns how many did, and
/// the other events read meanwhile.
async fn acks(events: &mut Events, n: usize, limit: Duration) -> (usize, Vec<Event>) {
    let deadline = Instant::now() + limit;
    let mut got = 0;
    let mut others = Vec::new();
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Some(Event::Acked { .. })) => got += 1,
            Ok(Some(other)) => others.push(other),
            Ok(None) | Err(_) => break,
        }
    }
    (got, others)
}

fn groups_chatrooms_and_public_accounts_through_the_sdk(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let (owner, member) = (7001, 7002);
        let (o, _o_events, _) = start(&keys, test_config(owner, endpoints.clone()));
        let (m, mut m_events, _) = start(&keys, test_config(member, endpoints));
        o.wait_connected(WAIT).await.unwrap();
        m.wait_connected(WAIT).await.unwrap();

        // Group: created with a member, who receives its messages.
        let group = o.create_group("team", &[member]).await.unwrap();
        assert_eq!(group.kind, petrel_sdk::pb::ConversationKind::Group);
        let members: HashSet<u64> = o
            .list_members(group)
            .await
            .unwrap()
            .iter()
            .map(|x| x.user_id)
            .collect();
        assert_eq!(members, HashSet::from([owner, member]));
        o.send_text(group, "welcome").unwrap();
        o.send_emoji(group, "🎉", "").unwrap();
        let (got, _) = messages(&mut m_events, 2, WAIT).await;
        assert_eq!(got[0].text(), Some("welcome"));
        assert_eq!(got[1].conversation, group);
        assert_eq!(got.iter().map(|x| x.seq).collect::<Vec<_>>(), [1, 2]);

        // Chatroom: both join, the member sees the owner online and gets the message.
        o.join_chatroom(900).await.unwrap();
        let joined = m.join_chatroom(900).await.unwrap();
        assert!(joined.members.iter().any(|x| x.user_id == owner));
        o.send_text(ConversationKey::chatroom(900), "in the room")
            .unwrap();
        let (got, _) = messages(&mut m_events, 1, WAIT).await;
        assert_eq!(
            (got[0].conversation, got[0].text()),
            (ConversationKey::chatroom(900), Some("in the room"))
        );
        m.leave_chatroom(900).await.unwrap();

        // Public account: the follower gets the owner's posts.
        let account = o.create_public_account("news").await.unwrap();
        m.follow(account.id).await.unwrap();
        let media = petrel_sdk::content::media("https://media.example/a.jpg", 1234, "image/jpeg");
        o.send_image(account, media, 640, 480).unwrap();
        let (got, _) = messages(&mut m_events, 1, WAIT).await;
        assert_eq!(got[0].conversation, account);
        assert!(matches!(
            got[0].content.body,
            Some(petrel_sdk::pb::content::Body::Image(ref i)) if i.width == 640
        ));

        // Unread counts, and mark read.
        let unread: Vec<(ConversationKey, u64)> = m
            .conversations()
            .unwrap()
            .iter()
            .map(|c| (c.conversation, c.unread))
            .collect();
        assert!(unread.contains(&(group, 2)), "{unread:?}");
        m.mark_read(group, 2).await.unwrap();
        let after = m.conversations().unwrap();
        assert_eq!(
            after
                .iter()
                .find(|c| c.conversation == group)
                .unwrap()
                .unread,
            0
        );

        // Removing the member: a permission-checked operation the server answers.
        o.remove_members(group.id, &[member]).await.unwrap();
        let err = m.add_members(group.id, &[7003]).await.unwrap_err();
        assert!(matches!(err, petrel_sdk::SdkError::Server { .. }), "{err}");
    })
}

/// Waits until the client reports a lost connection and then a new session.
async fn reconnected(events: &mut Events) {
    let mut dropped = false;
    timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::State(ConnectionState::Disconnected { .. })) => dropped = true,
                Some(Event::State(ConnectionState::Connected { .. })) if dropped => return,
                Some(_) => {}
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("no reconnect");
}

fn chatrooms_are_rejoined_after_a_reconnect(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let mut server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let (a, mut a_events, _) = start(&keys, test_config(8001, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(8002, endpoints));
        a.wait_connected(WAIT).await.unwrap();
        b.wait_connected(WAIT).await.unwrap();
        a.join_chatroom(55).await.unwrap();
        b.join_chatroom(55).await.unwrap();

        block_in_place(|| server.restart());
        reconnected(&mut a_events).await;
        reconnected(&mut b_events).await;

        // Both SDKs rejoin the room on their own after reconnecting. A chatroom is
        // online-only, so wait until the server lists both before sending: a message sent
        // before `b` is back in the room is rightly never delivered to it.
        let deadline = Instant::now() + WAIT;
        loop {
            let online: HashSet<u64> = b
                .list_members(ConversationKey::chatroom(55))
                .await
                .unwrap()
                .iter()
                .map(|m| m.user_id)
                .collect();
            if online == HashSet::from([8001, 8002]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "both clients were not back in the room within {WAIT:?}: {online:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }

        a.send_text(ConversationKey::chatroom(55), "back in the room")
            .unwrap();
        let (got, _) = messages(&mut b_events, 1, WAIT).await;
        assert_eq!(got[0].text(), Some("back in the room"));
    })
}

fn the_outbox_survives_an_app_restart_and_history_pages_come_from_the_server(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let mut server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob) = (9001, 9002);
        let alice_config = || {
            let mut c = test_config(alice, endpoints.clone());
            c.store_path = Some(dir.path().join("alice.sqlite"));
            c.token_cache_path = Some(dir.path().join("alice.token"));
            c
        };

        // Alice queues messages while the server is down, then the app quits.
        block_in_place(|| server.stop());
        let (a, _a_events, _) = start(&keys, alice_config());
        for i in 0..5 {
            a.send_text(ConversationKey::single(bob), &format!("queued {i}"))
                .unwrap();
        }
        a.shutdown(false).await;
        assert_eq!(a.outbox_len().unwrap(), 5);
        drop(a);

        // The app starts again with the same store: the outbox goes out.
        block_in_place(|| server.restart_stopped());
        let (a, mut a_events, _) = start(&keys, alice_config());
        let (b, mut b_events, _) = start(&keys, test_config(bob, vec![server.addr.to_string()]));
        let (got, _) = messages(&mut b_events, 5, WAIT).await;
        let expected: Vec<String> = (0..5).map(|i| format!("queued {i}")).collect();
        assert_eq!(texts(&got), expected);
        let acked = drain(&mut a_events, Duration::from_millis(300)).await;
        assert_eq!(
            acked
                .iter()
                .filter(|e| matches!(e, Event::Acked { .. }))
                .count(),
            5
        );
        assert_eq!(a.outbox_len().unwrap(), 0);

        // A public account posted to before bob followed: bob's history comes from the
        // server, page by page, and is stored for next time.
        let account = a.create_public_account("alice news").await.unwrap();
        for i in 0..4 {
            a.send_text(account, &format!("post {i}")).unwrap();
        }
        let _ = drain(&mut a_events, Duration::from_millis(500)).await;
        b.wait_connected(WAIT).await.unwrap();
        b.follow(account.id).await.unwrap();
        let page = b.load_history(account, 0, 2).await.unwrap();
        assert_eq!(texts(&page), ["post 3", "post 2"]);
        let older = b.load_history(account, page[1].seq, 10).await.unwrap();
        assert_eq!(texts(&older), ["post 1", "post 0"]);
    })
}

/// Retention on a real server: 1:1 messages older than a second are trimmed (each chat
/// keeps its newest), and a device that syncs afterwards gets what is left plus a `Gap`
/// event for what is gone — no hang waiting for a hole to fill, no duplicate.
fn retention_trims_old_messages_and_a_new_device_is_told_what_is_gone(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let config = format!(
            "{}retention_single_secs = 1\ntrim_interval_secs = 1\nmetrics_addr = \"127.0.0.1:0\"\n",
            keys.server_config()
        );
        let server = TestServer::start_on(dp, &config);
        let (alice, bob) = (13_001, 13_002);
        let (a, mut a_events, _) = start(&keys, test_config(alice, vec![server.addr.to_string()]));
        for i in 0..5 {
            a.send_text(ConversationKey::single(bob), &format!("old {i}"))
                .unwrap();
        }
        assert_eq!(acks(&mut a_events, 5, WAIT).await.0, 5);
        // The pass that runs once they are a second old removes all but the newest.
        block_in_place(|| {
            server.scrape_until("4 messages trimmed", |s| {
                s.get("petrel_storage_trimmed_total{what=\"messages\"}") >= 4.0
            })
        });
        let (b, mut b_events, _) = start(&keys, test_config(bob, vec![server.addr.to_string()]));
        let (got, other) = messages(&mut b_events, 1, WAIT).await;
        assert_eq!(texts(&got), ["old 4"]);
        assert_eq!(got[0].seq, 5);
        let alice_chat = ConversationKey::single(alice);
        let mut seen = other;
        seen.extend(drain(&mut b_events, Duration::from_millis(500)).await);
        let gaps: Vec<_> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Gap {
                    conversation,
                    from_seq,
                    to_seq,
                } => Some((*conversation, *from_seq, *to_seq)),
                _ => None,
            })
            .collect();
        assert_eq!(gaps, [(alice_chat, 1, 4)], "one Gap for the trimmed seqs");
        assert!(
            !seen.iter().any(|e| matches!(e, Event::Message(_))),
            "{seen:?}"
        );
        // The server's history starts at 5 too.
        assert!(b.load_history(alice_chat, 5, 10).await.unwrap().is_empty());
    })
}

fn reconnect_now_skips_a_long_back_off(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let mut server = TestServer::start_on(dp, &keys.server_config());
        block_in_place(|| server.stop());
        let mut config = test_config(12_001, vec![server.addr.to_string()]);
        config.backoff.base = Duration::from_secs(120);
        config.backoff.cap = Duration::from_secs(120);
        let (client, mut events, _) = start(&keys, config);
        let retry_in = timeout(WAIT, async {
            loop {
                if let Some(Event::State(ConnectionState::Disconnected { retry_in, .. })) =
                    events.recv().await
                {
                    return retry_in;
                }
            }
        })
        .await
        .expect("the first attempt fails");
        assert!(
            retry_in > Duration::from_secs(20),
            "jitter drew {retry_in:?}; pick another seed so the back-off is long"
        );
        block_in_place(|| server.restart_stopped());
        client.reconnect_now();
        client
            .wait_connected(Duration::from_secs(10))
            .await
            .expect("reconnect_now did not cut the back-off short");
    })
}

/// Waits for the next typing indicator (failing after [`WAIT`]); returns it and the
/// messages seen meanwhile.
async fn next_typing(events: &mut Events) -> ((ConversationKey, u64, bool), Vec<Message>) {
    let mut seen = Vec::new();
    let typing = timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::Typing {
                    conversation,
                    user,
                    typing,
                    ..
                }) => return (conversation, user, typing),
                Some(Event::Message(m)) => seen.push(m),
                Some(_) => {}
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("no typing indicator");
    (typing, seen)
}

fn typing_indicators_reach_the_other_sdk_client_and_are_never_stored(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let (alice, bob) = (7101, 7102);
        let (a, _a_events, _) = start(&keys, test_config(alice, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints));
        a.wait_connected(WAIT).await.unwrap();
        b.wait_connected(WAIT).await.unwrap();

        // 1:1: bob sees alice start and stop typing, named as bob names the chat.
        a.set_typing(ConversationKey::single(bob), true).unwrap();
        let (on, _) = next_typing(&mut b_events).await;
        assert_eq!(on, (ConversationKey::single(alice), alice, true));
        a.set_typing(ConversationKey::single(bob), false).unwrap();
        let (off, _) = next_typing(&mut b_events).await;
        assert_eq!(off, (ConversationKey::single(alice), alice, false));

        // A group: the member list comes from storage; bob sees it under the group's id.
        let group = a.create_group("typists", &[bob]).await.unwrap();
        a.set_typing(group, true).unwrap();
        let (in_group, seen) = next_typing(&mut b_events).await;
        assert_eq!(in_group, (group, alice, true));

        // Never stored: no message arrived and neither conversation has history.
        assert!(seen.is_empty(), "{seen:?}");
        assert!(
            drain(&mut b_events, Duration::from_millis(300))
                .await
                .iter()
                .all(|e| !matches!(e, Event::Message(_)))
        );
        for c in [ConversationKey::single(alice), group] {
            assert!(b.load_history(c, 0, 10).await.unwrap().is_empty(), "{c:?}");
        }
    })
}

/// Waits for the next read receipt (failing after [`WAIT`]).
async fn read_receipt(events: &mut Events) -> (ConversationKey, u64, u64) {
    timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::ReadReceipt {
                    conversation,
                    reader,
                    seq,
                }) => return (conversation, reader, seq),
                Some(_) => {}
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("no read receipt")
}

fn read_receipts_reach_the_sender_on_every_dataplane(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let (alice, bob, carol) = (7201, 7202, 7203);
        let (a, mut a_events, _) = start(&keys, test_config(alice, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints.clone()));
        let (_c, mut c_events, _) = start(&keys, test_config(carol, endpoints));
        a.wait_connected(WAIT).await.unwrap();
        b.wait_connected(WAIT).await.unwrap();

        // 1:1: Bob reads Alice's two messages; Alice sees the receipt under Bob's name.
        a.send_text(ConversationKey::single(bob), "one").unwrap();
        a.send_text(ConversationKey::single(bob), "two").unwrap();
        let (got, _) = messages(&mut b_events, 2, WAIT).await;
        b.mark_read(ConversationKey::single(alice), got[1].seq)
            .await
            .unwrap();
        assert_eq!(
            read_receipt(&mut a_events).await,
            (ConversationKey::single(bob), bob, 2)
        );
        // Bob's unread is cleared by his own read.
        let unread = |client: &petrel_sdk::Client, c: ConversationKey| {
            client
                .conversations()
                .unwrap()
                .iter()
                .find(|x| x.conversation == c)
                .map(|x| x.unread)
        };
        assert_eq!(unread(&b, ConversationKey::single(alice)), Some(0));

        // A small group: both other members get Bob's receipt.
        let gid = a.create_group("readers", &[bob, carol]).await.unwrap();
        a.send_text(gid, "to all").unwrap();
        let (got, _) = messages(&mut b_events, 1, WAIT).await;
        b.mark_read(gid, got[0].seq).await.unwrap();
        assert_eq!(read_receipt(&mut a_events).await, (gid, bob, 1));
        assert_eq!(read_receipt(&mut c_events).await, (gid, bob, 1));
    })
}

/// The next delivery receipt among `events`, as (conversation, user, seq).
async fn delivery_receipt(events: &mut Events) -> (ConversationKey, u64, u64) {
    timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::DeliveryReceipt {
                    conversation,
                    user,
                    seq,
                }) => return (conversation, user, seq),
                Some(_) => {}
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("a delivery receipt within the wait")
}

/// Delivery receipts ("delivered" before "read"): the receivers' SDKs report by
/// themselves what they stored, coalesced, and the sender's SDK shows it; a device with
/// `send_delivery_receipts` off reports nothing.
fn delivery_receipts_reach_the_sender_without_the_app_asking(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let (alice, bob, carol) = (7501, 7502, 7503);
        let (a, mut a_events, _) = start(&keys, test_config(alice, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints.clone()));
        let mut quiet = test_config(carol, endpoints);
        quiet.send_delivery_receipts = false;
        let (c, mut c_events, _) = start(&keys, quiet);
        for client in [&a, &b, &c] {
            client.wait_connected(WAIT).await.unwrap();
        }

        // 1:1: three messages in a burst; Bob's SDK reports the last one it has.
        for text in ["one", "two", "three"] {
            a.send_text(ConversationKey::single(bob), text).unwrap();
        }
        messages(&mut b_events, 3, WAIT).await;
        let mut last = delivery_receipt(&mut a_events).await;
        while last.2 < 3 {
            last = delivery_receipt(&mut a_events).await;
        }
        assert_eq!(last, (ConversationKey::single(bob), bob, 3));

        // A group: Bob's receipt reaches Alice; Carol, who has the message too, sends none.
        let gid = a.create_group("delivered", &[bob, carol]).await.unwrap();
        a.send_text(gid, "to all").unwrap();
        messages(&mut b_events, 1, WAIT).await;
        messages(&mut c_events, 1, WAIT).await;
        assert_eq!(delivery_receipt(&mut a_events).await, (gid, bob, 1));
        let later = drain(&mut a_events, Duration::from_secs(1)).await;
        assert!(
            !later.iter().any(|e| matches!(
                e,
                Event::DeliveryReceipt { user, .. } if *user == carol
            )),
            "carol turned delivery receipts off: {later:?}"
        );
    })
}

async fn recalled(events: &mut Events) -> (ConversationKey, u64, u64) {
    timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::Recalled {
                    conversation,
                    seq,
                    recall,
                }) => return (conversation, seq, recall.by),
                Some(_) => {}
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("a recall within the wait")
}

fn a_recalled_message_is_gone_live_and_an_edited_one_replaced_everywhere(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let endpoints = vec![server.addr.to_string()];
        let (alice, bob, carol) = (7301, 7302, 7303);
        let (a, _a_events, _) = start(&keys, test_config(alice, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints.clone()));
        a.wait_connected(WAIT).await.unwrap();
        b.wait_connected(WAIT).await.unwrap();

        // 1:1: Bob's SDK drops the content and says so under Alice's name.
        a.send_text(ConversationKey::single(bob), "oops").unwrap();
        let (got, _) = messages(&mut b_events, 1, WAIT).await;
        a.recall(ConversationKey::single(bob), got[0].seq)
            .await
            .unwrap();
        assert_eq!(
            recalled(&mut b_events).await,
            (ConversationKey::single(alice), 1, alice)
        );
        // Past the recall: nobody but the sender (or a group admin) may.
        let refused = b.recall(ConversationKey::single(alice), 1).await;
        assert!(refused.is_err(), "{refused:?}");

        // A group with Carol offline: Alice (the owner) recalls the first of two.
        let gid = a.create_group("recalls", &[bob, carol]).await.unwrap();
        a.send_text(gid, "secret").unwrap();
        a.send_text(gid, "kept").unwrap();
        messages(&mut b_events, 2, WAIT).await;
        a.recall(gid, 1).await.unwrap();
        assert_eq!(recalled(&mut b_events).await, (gid, 1, alice));
        let history = b.load_history(gid, 0, 10).await.unwrap();
        let shown: Vec<(u64, Option<u64>, Option<&str>)> = history
            .iter()
            .map(|m| (m.seq, m.recalled.map(|r| r.by), m.text()))
            .collect();
        assert_eq!(shown, [(2, None, Some("kept")), (1, Some(alice), None)]);

        // "Read by 1 of 2": Bob read the group up to seq 2, Carol did not.
        b.mark_read(gid, 2).await.unwrap();
        assert_eq!(a.read_count(gid, 2).await.unwrap(), (1, 2));

        // Carol comes online later: her sync brings seq 1 recalled, never its text.
        let (_c, mut c_events, _) = start(&keys, test_config(carol, endpoints));
        let (got, _) = messages(&mut c_events, 2, WAIT).await;
        let shown: Vec<(u64, Option<u64>, Option<&str>)> = got
            .iter()
            .map(|m| (m.seq, m.recalled.map(|r| r.by), m.text()))
            .collect();
        assert_eq!(shown, [(1, Some(alice), None), (2, None, Some("kept"))]);

        // Edits: Bob's SDK gets the new version of Alice's message; Carol (online now)
        // too; a later history page shows only the latest text.
        a.edit(gid, 2, petrel_sdk::content::text("kept (edited)"))
            .await
            .unwrap();
        for events in [&mut b_events, &mut c_events] {
            let edited = timeout(WAIT, async {
                loop {
                    match events.recv().await {
                        Some(Event::Edited(m)) => return m,
                        Some(_) => {}
                        None => panic!("event stream closed"),
                    }
                }
            })
            .await
            .expect("an edit within the wait");
            assert_eq!(edited.seq, 2);
            assert_eq!(edited.text(), Some("kept (edited)"));
            assert!(edited.edited_at_ms.is_some());
        }
        let history = b.load_history(gid, 0, 10).await.unwrap();
        assert_eq!(history[0].text(), Some("kept (edited)"));
        // Bob cannot edit Alice's message.
        assert!(
            b.edit(gid, 2, petrel_sdk::content::text("mine"))
                .await
                .is_err()
        );
    })
}

/// A mention in a muted group: the owner mutes the whole group over the server API, then
/// posts a message mentioning Bob (and a user who is not a member) and a reply to it.
/// Bob's SDK shows the reply and the mention, and counts one unread mention until he
/// reads past it; Carol, not mentioned, counts none; the stranger is dropped.
fn a_mention_in_a_muted_group_is_counted_until_read(dp: Dataplane) {
    common::server::block_on(dp, async move {
        const API_KEY: &str = "mentions-test-api-key-0123456789";
        let keys = Arc::new(Keys::generate());
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("api.key");
        std::fs::write(&key_file, API_KEY).expect("api key file");
        let server = TestServer::start_on(
            dp,
            &format!(
                "{}api_addr = \"127.0.0.1:0\"\napi_key_file = {:?}\n",
                keys.server_config(),
                key_file.display().to_string()
            ),
        );
        let endpoints = vec![server.addr.to_string()];
        let (alice, bob, carol, stranger) = (7401, 7402, 7403, 7499);
        let (a, _a_events, _) = start(&keys, test_config(alice, endpoints.clone()));
        let (b, mut b_events, _) = start(&keys, test_config(bob, endpoints.clone()));
        let (c, mut c_events, _) = start(&keys, test_config(carol, endpoints));
        for client in [&a, &b, &c] {
            client.wait_connected(WAIT).await.unwrap();
        }
        let gid = a.create_group("quiet", &[bob, carol]).await.unwrap();
        let muted = block_in_place(|| {
            server.api_request(
                "POST",
                &format!("/v1/groups/{}/mute", gid.id),
                Some(API_KEY),
                Some(&serde_json::json!({"actor": alice, "seconds": 3600})),
            )
        });
        assert_eq!(muted.status, 200, "{}", muted.text());

        a.send_text_with(gid, "@7402 please read the rules", 0, &[bob, stranger])
            .unwrap();
        let (got, _) = messages(&mut b_events, 1, WAIT).await;
        assert_eq!(
            (got[0].reply_to, got[0].mentions.clone()),
            (None, vec![bob])
        );
        a.send_text_with(gid, "(the rules are above)", got[0].seq, &[])
            .unwrap();
        let (got, _) = messages(&mut b_events, 1, WAIT).await;
        assert_eq!((got[0].reply_to, got[0].mentions.len()), (Some(1), 0));
        messages(&mut c_events, 2, WAIT).await;

        let summary = |client: &petrel_sdk::Client| {
            client
                .conversations()
                .unwrap()
                .into_iter()
                .find(|s| s.conversation == gid)
                .expect("the group is listed")
        };
        assert_eq!((summary(&b).unread, summary(&b).unread_mentions), (2, 1));
        assert_eq!(summary(&c).unread_mentions, 0);
        b.mark_read(gid, 2).await.unwrap();
        assert_eq!((summary(&b).unread, summary(&b).unread_mentions), (0, 0));

        // The server keeps the count for every device of Bob's: none left past his read.
        let page = b
            .request(petrel_sdk::pb::SyncRequest {
                inbox_cursor: 0,
                cursors: vec![],
                limit: 10,
                inbox_position: Vec::new(),
            })
            .await
            .unwrap();
        let petrel_proto::Body::SyncResponse(page) = page else {
            panic!("not a sync response: {page:?}")
        };
        let state = page
            .conversations
            .iter()
            .find(|s| s.conversation.is_some_and(|c| c.id == gid.id))
            .expect("the group's state");
        assert_eq!((state.read_seq, state.unread_mentions), (2, 0));
    })
}

dataplane_tests!(
    a_mention_in_a_muted_group_is_counted_until_read,
    delivery_receipts_reach_the_sender_without_the_app_asking,
    a_recalled_message_is_gone_live_and_an_edited_one_replaced_everywhere,
    server_restart_mid_conversation_delivers_every_message_once_in_order,
    with_the_primary_endpoint_down_the_sdk_connects_to_the_backup,
    a_token_expiring_mid_session_is_renewed_without_the_app_noticing,
    a_thousand_sdk_clients_exchange_messages_without_errors,
    a_refused_cached_token_makes_one_provider_call_and_a_refused_fresh_one_stops,
    a_missing_pong_makes_the_sdk_reconnect_and_resent_sends_are_stored_once,
    groups_chatrooms_and_public_accounts_through_the_sdk,
    chatrooms_are_rejoined_after_a_reconnect,
    the_outbox_survives_an_app_restart_and_history_pages_come_from_the_server,
    retention_trims_old_messages_and_a_new_device_is_told_what_is_gone,
    reconnect_now_skips_a_long_back_off,
    typing_indicators_reach_the_other_sdk_client_and_are_never_stored,
    read_receipts_reach_the_sender_on_every_dataplane,
);

/// A scripted stand-in server for one SDK behaviour: answers Login, Ping and Sync like
/// `petrel serve`, and hands every `SendMessage` to `on_send`, which answers it.
fn fake_server_session(
    stream: std::net::TcpStream,
    mut on_send: impl FnMut(u32, petrel_proto::pb::SendMessage, &mut Vec<petrel_proto::Frame>) -> bool,
) {
    use std::io::{Read, Write};

    use petrel_proto::codec::FrameEncoder;
    use petrel_proto::{Body, Frame, FrameDecoder, pb};

    let mut stream = stream;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut decoder = FrameDecoder::default();
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some(frame) = decoder
            .decode(&mut buf)
            .expect("the SDK sends valid frames")
        {
            let rid = frame.request_id;
            let mut out = Vec::new();
            let mut end = false;
            match frame.body {
                Body::Login(l) => out.push(Frame::response(
                    rid,
                    pb::LoginResult {
                        user_id: l.user_id,
                        session_id: 1,
                        server_time_ms: 1,
                        heartbeat_interval_s: 50,
                        token_expires_at_ms: 0,
                    },
                )),
                Body::Ping(p) => out.push(Frame::response(
                    rid,
                    pb::Pong {
                        client_time_ms: p.client_time_ms,
                        server_time_ms: 1,
                    },
                )),
                Body::SyncRequest(_) => out.push(Frame::response(rid, pb::SyncResponse::default())),
                Body::SendMessage(m) => end = on_send(rid, m, &mut out),
                _ => {}
            }
            for f in &out {
                let bytes = FrameEncoder::default().encode_to_bytes(f).expect("encode");
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            if end {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_send_refused_with_shutting_down_is_sent_again_after_the_reconnect_with_the_same_id() {
    use petrel_proto::{Frame, pb};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        // First session: the send is refused (the server is draining), then the kick.
        let (stream, _) = listener.accept().expect("first connection");
        let mut refused = None;
        fake_server_session(stream, |rid, m, out| {
            refused = Some(m.client_msg_id);
            out.push(Frame::response(
                rid,
                pb::Error {
                    code: pb::ErrorCode::ShuttingDown as i32,
                    message: "server shutting down".into(),
                    retry_after_ms: 0,
                },
            ));
            out.push(Frame::new(
                0,
                pb::Kick {
                    reason: pb::KickReason::ServerShutdown as i32,
                    message: "bye".into(),
                    ..Default::default()
                },
            ));
            true
        });
        // Second session (after the reconnect): the same id again, acked.
        let (stream, _) = listener.accept().expect("second connection");
        let mut resent = None;
        fake_server_session(stream, |rid, m, out| {
            resent = Some(m.client_msg_id);
            out.push(Frame::response(
                rid,
                pb::Ack {
                    client_msg_id: m.client_msg_id,
                    conversation: m.conversation,
                    seq: 1,
                    server_time_ms: 1,
                    duplicate: false,
                },
            ));
            false
        });
        (refused, resent)
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let provider = petrel_sdk::token_fn(|| {
            Ok(petrel_sdk::Token {
                token: "fake".into(),
                expires_at_ms: 0,
            })
        });
        let (client, mut events) =
            petrel_sdk::Client::start(test_config(3001, vec![addr]), provider).expect("start");
        client.wait_connected(WAIT).await.unwrap();
        let id = client
            .send_text(ConversationKey::single(3002), "during a shutdown")
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, events.recv()).await {
                Ok(Some(Event::Acked { client_msg_id, .. })) => {
                    assert_eq!(client_msg_id, id);
                    break;
                }
                Ok(Some(Event::SendFailed { code, .. })) => {
                    panic!("a SHUTTING_DOWN send must stay in the outbox, got SendFailed({code:?})")
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("the refused send was never acked"),
            }
        }
        assert_eq!(client.outbox_len().unwrap(), 0);
        client.shutdown(false).await;
    });
    let (refused, resent) = server.join().expect("fake server");
    assert!(refused.is_some(), "the first session saw no send");
    assert_eq!(refused, resent, "resent with the same client_msg_id");
}
