//! 10,000 concurrent connections open, log in and heartbeat against one server process.
//!
//! The test process holds one socket per connection, so it raises its own descriptor limit
//! to the hard limit first (20,000 on the CI machine); the server, a separate process,
//! does the same for itself at start-up.

#[macro_use]
mod common;

use std::time::Instant;

use common::{Dataplane, TestClient, TestServer};
use petrel_proto::{Body, pb};

const CONNECTIONS: u64 = 10_000;

fn ten_thousand_connections_log_in_and_heartbeat(dp: Dataplane) {
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    assert!(
        limit >= CONNECTIONS + 512,
        "this test needs {} descriptors, the hard limit allows {limit}",
        CONNECTIONS + 512
    );
    let server = TestServer::start_on(dp, "");
    let rss_idle = server.rss_kib();
    let started = Instant::now();

    let mut clients: Vec<TestClient> = (0..CONNECTIONS)
        .map(|i| {
            let user = 100_000 + i;
            TestClient::login(server.addr, &server.token(user, "d"), user, "d")
        })
        .collect();
    let logged_in = started.elapsed();

    // One heartbeat round: every connection pings, then every connection reads its pong.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&petrel_proto::Frame::new(
            1_000,
            pb::Ping {
                client_time_ms: i as u64,
            },
        ));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let f = c.recv_matching(|f| f.flags.is_response() && f.request_id == 1_000);
        match f.body {
            Body::Pong(p) => assert_eq!(p.client_time_ms, i as u64),
            other => panic!("connection {i}: expected Pong, got {other:?}"),
        }
    }
    let rss_loaded = server.rss_kib();
    eprintln!(
        "{CONNECTIONS} connections logged in after {logged_in:?}, heartbeat round done after \
         {:?}; server RSS {rss_idle} KiB idle -> {rss_loaded} KiB ({} bytes per connection, \
         user space only; kernel socket buffers come on top)",
        started.elapsed(),
        (rss_loaded.saturating_sub(rss_idle) * 1024) / CONNECTIONS,
    );
}

dataplane_tests!(ten_thousand_connections_log_in_and_heartbeat,);
