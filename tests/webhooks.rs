//! End-to-end tests of webhooks (`[webhook]`, docs/API.md "Webhooks") against the real
//! binary, with a small HTTP receiver on loopback standing in for the app's backend:
//!
//! - a message to a user with no online session gets exactly one signed event, online
//!   recipients none, and a group message names only its offline members;
//! - while the receiver fails, calls back off exponentially; queued events survive a
//!   graceful restart and a SIGKILL, and each is then acknowledged exactly once;
//! - after `max_attempts` failed calls an event becomes a dead letter (metrics say so)
//!   and the queue moves on.
//!
//! Webhooks are independent of the dataplane (the server calls out through the kernel),
//! so these run on kernel sockets only.

#[allow(unused_imports)] // common re-exports `Dataplane`; these run on kernel sockets only
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::client::single;
use common::{TestClient, TestServer};
use hmac::{Hmac, KeyInit, Mac};
use petrel_proto::{Body, pb};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "webhook-secret-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// One call the receiver got.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    signature: Option<String>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

impl Call {
    fn events(&self) -> Vec<Value> {
        let body: Value = serde_json::from_slice(&self.body).expect("a JSON body");
        body["events"].as_array().expect("an events array").clone()
    }
}

/// A webhook receiver on loopback: records every call and answers `status`.
struct Receiver {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    fn start() -> Receiver {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (tx, rx) = std::sync::mpsc::channel();
        let (record, answer) = (calls.clone(), status.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the receiver");
                tx.send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let app = axum::Router::new().route(
                    "/hooks/petrel",
                    axum::routing::post(
                        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                            let (record, answer) = (record.clone(), answer.clone());
                            async move {
                                let status = answer.load(Ordering::SeqCst);
                                record.lock().unwrap().push(Call {
                                    at: Instant::now(),
                                    signature: headers
                                        .get("petrel-signature")
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned),
                                    body: body.to_vec(),
                                    status,
                                });
                                axum::http::StatusCode::from_u16(status).unwrap()
                            }
                        },
                    ),
                );
                axum::serve(listener, app).await.expect("serve");
            });
        });
        Receiver {
            addr: rx.recv().expect("receiver address"),
            calls,
            status,
        }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the calls so far.
    fn wait_for(&self, what: &str, pred: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = Instant::now() + WAIT;
        loop {
            let calls = self.calls();
            if pred(&calls) {
                return calls;
            }
            assert!(Instant::now() < deadline, "never saw {what}: {calls:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's config for this receiver (a `[webhook]` table: keep it last).
    fn config(&self, dir: &tempfile::TempDir, extra: &str) -> String {
        let secret = dir.path().join("webhook.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("secret file");
        format!(
            "metrics_addr = \"127.0.0.1:0\"\n[webhook]\nurl = \"http://{}/hooks/petrel\"\n\
             secret_file = {:?}\n{extra}",
            self.addr,
            secret.display().to_string()
        )
    }
}

/// Checks a call's `Petrel-Signature` against the body and the shared secret.
fn assert_signed(call: &Call) {
    let header = call
        .signature
        .as_deref()
        .expect("a Petrel-Signature header");
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("malformed signature {header:?}"));
    let t: u64 = t.parse().expect("t is unix seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t) < 300, "signed at {t}, now {now}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&call.body);
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(
        v1,
        expected,
        "signature of {}",
        String::from_utf8_lossy(&call.body)
    );
}

/// Every event of the calls answered 2xx, by (conversation id, seq), with how often.
fn acknowledged(calls: &[Call]) -> BTreeMap<(u64, u64), usize> {
    let mut seen = BTreeMap::new();
    for call in calls.iter().filter(|c| (200..300).contains(&c.status)) {
        for event in call.events() {
            let key = (
                event["conversation"]["id"].as_u64().unwrap(),
                event["seq"].as_u64().unwrap(),
            );
            *seen.entry(key).or_default() += 1;
        }
    }
    seen
}

fn login(server: &TestServer, user: u64, device: &str) -> TestClient {
    TestClient::login(server.addr, &server.token(user, device), user, device)
}

#[test]
fn offline_recipients_get_one_signed_event_per_message_and_online_ones_none() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&receiver.config(&dir, ""));
    let (alice, bob, carol) = (7101, 7102, 7103);
    let mut a = login(&server, alice, "phone");
    for n in 1..=3 {
        a.send_text(single(bob), n, &format!("message {n}"));
    }
    let calls = receiver.wait_for("three events", |c| acknowledged(c).len() == 3);
    for call in &calls {
        assert_signed(call);
    }
    let events: Vec<Value> = calls.iter().flat_map(Call::events).collect();
    assert_eq!(events.len(), 3, "{events:#?}");
    for (n, event) in (1..=3).zip(&events) {
        assert_eq!(event["type"], "message.offline");
        assert_eq!(event["recipients"], serde_json::json!([bob]));
        assert_eq!(
            event["conversation"],
            serde_json::json!({"kind": "single", "id": alice})
        );
        assert_eq!(event["sender"], alice);
        assert_eq!(event["sender_device"], "phone");
        assert_eq!(event["client_msg_id"], n);
        assert_eq!(event["content"]["text"], format!("message {n}"));
    }
    // Every field the OpenAPI document's `OfflineEvent` lists, and no other.
    let doc: Value = serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
    let required: std::collections::BTreeSet<&str> =
        doc["components"]["schemas"]["OfflineEvent"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
    let keys: std::collections::BTreeSet<&str> = events[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, required);
    let mut ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids are distinct");

    // Bob online: his messages are pushed, and nobody is noticed. A group with Bob
    // online and Carol offline names Carol alone.
    let mut b = login(&server, bob, "laptop");
    a.send_text(single(bob), 4, "you are here");
    assert!(matches!(b.push().conversation, Some(c) if c == single(alice)));
    let created = a.request(pb::ConversationOp {
        op: Some(pb::conversation_op::Op::CreateGroup(pb::CreateGroup {
            name: "trio".into(),
            members: vec![bob, carol],
        })),
    });
    let Body::ConversationOpResult(result) = created.body else {
        panic!("{created:?}")
    };
    let gid = result.conversation.expect("group id").id;
    let group = pb::ConversationId {
        kind: pb::ConversationKind::Group as i32,
        id: gid,
    };
    a.send_text(group, 5, "hello both");
    let calls = receiver.wait_for("the group event", |c| {
        c.iter().flat_map(Call::events).count() >= 4
    });
    let events: Vec<Value> = calls.iter().flat_map(Call::events).collect();
    assert_eq!(
        events.len(),
        4,
        "nothing for the message to online Bob: {events:#?}"
    );
    assert_eq!(events[3]["recipients"], serde_json::json!([carol]));
    assert_eq!(
        events[3]["conversation"],
        serde_json::json!({"kind": "group", "id": gid})
    );
    let scrape = server.scrape_until("four delivered events", |s| {
        s.get("petrel_webhook_events_total{outcome=\"delivered\"}") == 4.0
    });
    assert_eq!(
        scrape.get("petrel_webhook_events_total{outcome=\"queued\"}"),
        4.0
    );
    assert_eq!(scrape.get("petrel_webhook_queue_depth"), 0.0);
}

#[test]
fn queued_events_back_off_survive_restarts_and_a_kill_and_are_acknowledged_once() {
    let receiver = Receiver::start();
    receiver.answer(503);
    let dir = tempfile::tempdir().unwrap();
    let config = receiver.config(
        &dir,
        "retry_base_ms = 200\nretry_max_ms = 5000\nmax_attempts = 50\n",
    );
    let mut server = TestServer::start(&config);
    let (alice, bob) = (7201, 7202);
    let mut a = login(&server, alice, "phone");
    a.send_text(single(bob), 1, "first");
    let calls = receiver.wait_for("four failed calls", |c| c.len() >= 4);
    // Equal jitter: the k-th delay is at least base·2^(k-1)/2 (100, 200, 400 ms), and a
    // gap between two calls is never shorter than the delay between them — so the third
    // gap is at least twice the longest possible first delay (200 ms).
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (k, gap) in gaps.iter().take(3).enumerate() {
        let least = Duration::from_millis(100 << k);
        assert!(
            *gap >= least,
            "retry {k} came after {gap:?}, before {least:?}: {gaps:?}"
        );
    }
    for call in &calls {
        assert_signed(call);
        assert_eq!(call.events().len(), 1);
    }
    drop(a);

    // A graceful restart with the event still queued; the receiver comes back.
    server.stop();
    receiver.answer(200);
    server.restart_stopped();
    receiver.wait_for("the first event acknowledged", |c| {
        acknowledged(c).len() == 1
    });

    // Failing again; a second event is queued (a failed call proves it is on disk),
    // then the server is killed outright.
    receiver.answer(500);
    let mut a = login(&server, alice, "phone");
    a.send_text(single(bob), 2, "second");
    let failed_before = receiver.calls().iter().filter(|c| c.status == 500).count();
    receiver.wait_for("a failed call of the second event", |c| {
        c.iter().filter(|c| c.status == 500).count() > failed_before
    });
    drop(a);
    server.kill();
    receiver.answer(200);
    server.restart_stopped();
    let calls = receiver.wait_for("both events acknowledged", |c| acknowledged(c).len() == 2);
    std::thread::sleep(Duration::from_millis(500));
    let acked = acknowledged(&receiver.calls());
    assert_eq!(
        acked,
        BTreeMap::from([((alice, 1), 1), ((alice, 2), 1)]),
        "each event acknowledged exactly once: {calls:#?}"
    );
}

#[test]
fn an_event_the_receiver_keeps_refusing_becomes_a_dead_letter_and_the_queue_moves_on() {
    let receiver = Receiver::start();
    receiver.answer(500);
    let dir = tempfile::tempdir().unwrap();
    let config = receiver.config(
        &dir,
        "retry_base_ms = 50\nretry_max_ms = 100\nmax_attempts = 3\n",
    );
    let server = TestServer::start(&config);
    let (alice, bob) = (7301, 7302);
    let mut a = login(&server, alice, "phone");
    a.send_text(single(bob), 1, "refused");
    receiver.wait_for("three failed calls", |c| c.len() >= 3);
    server.scrape_until("one dead letter", |s| {
        s.get("petrel_webhook_events_total{outcome=\"dead\"}") == 1.0
            && s.get("petrel_webhook_dead_letters") == 1.0
    });
    receiver.answer(200);
    a.send_text(single(bob), 2, "accepted");
    receiver.wait_for("the next event", |c| acknowledged(c).len() == 1);
    std::thread::sleep(Duration::from_millis(300));
    let calls = receiver.calls();
    assert_eq!(
        calls.len(),
        4,
        "3 refused calls of the first, one of the second: {calls:#?}"
    );
    assert_eq!(acknowledged(&calls), BTreeMap::from([((alice, 2), 1)]));
    assert_eq!(
        server
            .scrape()
            .get("petrel_webhook_calls_total{result=\"failed\"}"),
        3.0
    );
}
