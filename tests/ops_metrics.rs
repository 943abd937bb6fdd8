//! The Prometheus endpoint of `petrel serve --metrics-addr`, scraped while 1:1 traffic
//! flows and after: every family the operations guide tells operators to watch moves by
//! exactly what the traffic did — on both dataplanes (`NAME::kernel`, `NAME::xdp`; the
//! AF_XDP one also exports its filter's and classifier's counters).

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::client::single;
use common::{Dataplane, TestClient, TestServer};
use petrel_proto::{Body, pb};

const MESSAGES: u64 = 300;

const METRICS: &str = "metrics_addr = \"127.0.0.1:0\"\n";

fn counters_move_with_logins_messages_and_closes(dp: Dataplane) {
    // No rate limit: the sender below is faster than 20 messages a second.
    let server = TestServer::start_on(dp, &format!("rate_limit_per_second = 0\n{METRICS}"));
    let label = match dp {
        Dataplane::Kernel => "kernel",
        Dataplane::Xdp => "xdp",
        Dataplane::Dpdk => "dpdk",
    };
    // One connection gauge per dataplane core, labelled with the dataplane, from the
    // driver's first publication on.
    let first = server.scrape_until("the first publication", |s| {
        s.text.contains(&format!(
            "petrel_connections{{dataplane=\"{label}\",core=\"0\"}}"
        ))
    });
    assert_eq!(first.sum("petrel_connections", ""), 0.0, "{}", first.text);
    assert_eq!(first.get("petrel_logins_total"), 0.0);
    let baseline_commits = first.get("petrel_storage_commit_latency_seconds_count");

    // A login with a bad token fails and its connection is closed.
    let mut bad = TestClient::connect(server.addr);
    let reply = bad.request(pb::Login {
        token: "not-a-token".into(),
        user_id: 7,
        device_id: "x".into(),
        platform: pb::Platform::Desktop as i32,
        client_version: "ops-test".into(),
        attempt: 0,
    });
    assert!(matches!(reply.body, Body::Error(_)), "{reply:?}");
    drop(bad);

    let (alice, bob) = (1_001, 2_002);
    let mut a = TestClient::login(server.addr, &server.token(alice, "a"), alice, "a");
    let mut b = TestClient::login(server.addr, &server.token(bob, "b"), bob, "b");
    // Each core publishes its own counters on its own 500 ms clock: wait until every
    // core's copy shows these connections (the bad one may be on a core neither session
    // is on).
    let s = server.scrape_until("two sessions, three connections", |s| {
        s.get("petrel_sessions") == 2.0
            && s.get("petrel_connections_opened_total") == 3.0
            && s.get("petrel_connections_closed_total") == 1.0
    });
    assert_eq!(s.get("petrel_logins_total"), 2.0);
    assert_eq!(
        s.get("petrel_login_failures_total{reason=\"malformed\"}"),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(s.sum("petrel_login_failures_total", ""), 1.0);
    assert_eq!(s.sum("petrel_connections", ""), 2.0, "{}", s.text);
    assert_eq!(s.get("petrel_connections_opened_total"), 3.0);
    assert_eq!(s.get("petrel_connections_closed_total"), 1.0);
    assert_eq!(s.get("petrel_frames_in_total{type=\"Login\"}"), 3.0);
    assert_eq!(s.get("petrel_frames_out_total{type=\"LoginResult\"}"), 2.0);

    // Alice sends while the test scrapes; Bob reads every push. Halfway the sender stops
    // until the test has seen exactly the first half in the metrics.
    let halfway = Arc::new(Barrier::new(2));
    let resume = Arc::new(Barrier::new(2));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (halfway, resume, done) = (halfway.clone(), resume.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..MESSAGES {
                if i == MESSAGES / 2 {
                    halfway.wait();
                    resume.wait();
                }
                let ack = a.send_text(single(bob), i + 1, &format!("message {i}"));
                assert_eq!(ack.seq, i + 1);
            }
            done.store(true, Ordering::SeqCst);
            a
        })
    };
    let reader = std::thread::spawn(move || {
        for _ in 0..MESSAGES {
            b.push();
        }
        b
    });

    halfway.wait();
    let half = (MESSAGES / 2) as f64;
    let during = server.scrape_until("the first half persisted", |s| {
        s.get("petrel_messages_persisted_total{scenario=\"single\"}") >= half
    });
    assert_eq!(
        during.get("petrel_messages_persisted_total{scenario=\"single\"}"),
        half,
        "{}",
        during.text
    );
    assert_eq!(
        during.get("petrel_frames_in_total{type=\"SendMessage\"}"),
        half
    );
    assert_eq!(during.get("petrel_frames_out_total{type=\"Ack\"}"), half);
    resume.wait();
    // Scrape while the second half flows: the counters only grow.
    let mut last = half;
    let mut scrapes = 0;
    while !done.load(Ordering::SeqCst) {
        let now = server
            .scrape()
            .get("petrel_messages_persisted_total{scenario=\"single\"}");
        assert!(now >= last && now <= MESSAGES as f64, "{last} then {now}");
        last = now;
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{scrapes} scrapes during the second half");

    let a = sender.join().unwrap();
    let b = reader.join().unwrap();
    let m = MESSAGES as f64;
    // Each core publishes its own counters (every 500 ms): persisted counts on the
    // sender's core and delivered on the receiver's may arrive in different snapshots.
    // The partition owner's core publishes its own snapshot too: wait for the one taken
    // after the last write it applied for another core.
    let after = server.scrape_until("every message persisted and delivered", |s| {
        s.get("petrel_messages_delivered_total{scenario=\"single\"}") == m
            && s.get("petrel_messages_persisted_total{scenario=\"single\"}") == m
            && s.get("petrel_storage_in_flight") == 0.0
            && s.get("petrel_storage_routed_writes_total{side=\"sent\"}")
                == s.get("petrel_storage_routed_writes_total{side=\"applied\"}")
    });
    assert_eq!(
        after.get("petrel_messages_persisted_total{scenario=\"single\"}"),
        m
    );
    assert_eq!(
        after.get("petrel_messages_persisted_total{scenario=\"group\"}"),
        0.0
    );
    assert_eq!(
        after.get("petrel_messages_dropped_total{scenario=\"single\"}"),
        0.0
    );
    assert_eq!(after.get("petrel_frames_in_total{type=\"SendMessage\"}"), m);
    assert_eq!(after.get("petrel_frames_out_total{type=\"Ack\"}"), m);
    assert_eq!(
        after.get("petrel_frames_out_total{type=\"MessagePush\"}"),
        m
    );
    // Every append went through the storage writer and was timed.
    let commits = after.get("petrel_storage_commit_latency_seconds_count") - baseline_commits;
    assert!(
        commits >= m,
        "{commits} storage requests timed for {m} appends"
    );
    assert_eq!(
        after.get("petrel_storage_commit_latency_seconds_bucket{le=\"+Inf\"}"),
        after.get("petrel_storage_commit_latency_seconds_count")
    );
    assert!(after.get("petrel_storage_commit_latency_seconds_sum") > 0.0);
    assert!(after.get("petrel_storage_commit_rounds_total") >= 1.0);
    // Each round's WAL sync was timed too (sync = batch, the default).
    assert!(after.get("petrel_storage_wal_sync_seconds_count") >= 1.0);
    // Every append's dedup check was answered, by the in-memory filter or a store read.
    let dedup = after.get("petrel_storage_dedup_lookups_total{answered_by=\"memory\"}")
        + after.get("petrel_storage_dedup_lookups_total{answered_by=\"store\"}");
    assert!(
        dedup >= m,
        "{dedup} dedup checks for {m} appends: {}",
        after.text
    );
    assert!(after.get("petrel_storage_cache_entries{cache=\"last_seq\"}") >= 1.0);
    assert_eq!(after.get("petrel_storage_in_flight"), 0.0, "{}", after.text);
    assert_eq!(after.sum("petrel_outbound_queue_depth", ""), 0.0);
    match dp {
        // The kernel dataplane has no XDP families.
        Dataplane::Kernel => assert!(!after.text.contains("petrel_xdp_")),
        // Every segment of the traffic went through the filter to a socket and was
        // classified as TCP for us; nothing was malformed. Each SendMessage is a segment of
        // its own (the sender waits for its ack); the ACKs the clients send may be
        // coalesced, so they add an unknown number on top.
        Dataplane::Xdp => {
            let redirected = after.get("petrel_xdp_packets_total{verdict=\"redirected\"}");
            let tcp = after.get("petrel_xdp_rx_frames_total{class=\"tcp\"}");
            assert!(redirected >= m, "{}", after.text);
            assert!(tcp >= m && tcp <= redirected, "{}", after.text);
            assert_eq!(after.sum("petrel_xdp_rx_malformed_total", ""), 0.0);
            assert!(after.text.contains("petrel_xdp_socket_drops_total"));
            assert_eq!(
                after.get("petrel_xdp_socket_drops_total{reason=\"invalid_descs\"}"),
                0.0
            );
        }
        // No XDP filter: the pollers' classifier and the port's drop counters only.
        Dataplane::Dpdk => {
            assert!(!after.text.contains("petrel_xdp_packets_total"));
            let tcp = after.get("petrel_xdp_rx_frames_total{class=\"tcp\"}");
            assert!(tcp >= m, "{}", after.text);
            assert_eq!(after.sum("petrel_xdp_rx_malformed_total", ""), 0.0);
            assert!(after.text.contains("petrel_xdp_socket_drops_total"));
        }
    }

    drop(b);
    let closed = server.scrape_until("bob's close", |s| {
        s.get("petrel_sessions") == 1.0 && s.get("petrel_connections_closed_total") == 2.0
    });
    assert_eq!(closed.sum("petrel_connections", ""), 1.0);
    assert_eq!(closed.get("petrel_connections_closed_total"), 2.0);
    drop(a);
}

#[test]
fn serve_without_metrics_addr_prints_no_endpoint() {
    let mut server = TestServer::start("");
    assert!(server.metrics.is_none());
    server.stop();
}

dataplane_tests!(counters_move_with_logins_messages_and_closes);
