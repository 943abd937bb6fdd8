//! Admission control end to end, on every dataplane: a login storm past a core's
//! logins-per-second budget is answered `SERVER_BUSY` with a spread `retry_after_ms`
//! and a closed connection, the established session's heartbeats are answered through
//! the storm, every refused client that comes back after its wait gets in, and each
//! refusal is counted in the metrics (`petrel_login_failures{reason="login_rate"}`).
//!
//! The CPU budget is the same refusal with `reason="overloaded"`; its windows and
//! hysteresis are unit-tested in `control/src/admission.rs` (a test cannot load a core
//! to 90 % on a shared two-CPU machine and stay deterministic).

#[macro_use]
mod common;
#[allow(dead_code)] // the helpers other SDK tests use
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Dataplane, TestClient, TestServer};
use petrel_proto::{Body, Frame, pb};
use petrel_sdk::{ConnectionState, Event};
use sdk_keys::{Keys, start, test_config};

const LOGINS_PER_SECOND: u32 = 10;
const RETRY_AFTER_MS: u32 = 300;
const STORM: u64 = 60;

/// At least as many cores as a test server runs loops on (every CPU, one, or the lab's
/// two queues).
fn server_cores_at_most() -> u64 {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2) as u64
}

/// Sends a `Login` on `client` without waiting for its answer.
fn send_login(client: &mut TestClient, server: &TestServer, user: u64) {
    client.user = user;
    client.send(&Frame::new(
        1,
        pb::Login {
            token: server.token(user, "storm"),
            user_id: user,
            device_id: "storm".into(),
            platform: pb::Platform::Desktop as i32,
            client_version: "petrel-tests".into(),
            attempt: 0,
        },
    ));
}

/// The answer to the `Login` sent by [`send_login`]: `Ok` for a session, `Err(wait)` for
/// a busy refusal (after which the server closes the connection).
fn login_answer(client: &mut TestClient) -> Result<(), u32> {
    let answer = client.recv_matching(|f| f.flags.is_response() && f.request_id == 1);
    match answer.body {
        Body::LoginResult(_) => Ok(()),
        Body::Error(e) if e.code == pb::ErrorCode::ServerBusy as i32 => {
            let closed = client.recv_until_closed(Duration::from_secs(5));
            assert!(
                closed.is_empty(),
                "nothing follows a busy refusal but the close: {closed:?}"
            );
            Err(e.retry_after_ms)
        }
        other => panic!("unexpected answer to a login: {other:?}"),
    }
}

fn a_login_storm_past_the_budget_is_refused_busy_and_comes_back(dp: Dataplane) {
    let server = TestServer::start_on(
        dp,
        &format!(
            "metrics_addr = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\
             admission_logins_per_second = {LOGINS_PER_SECOND}\n\
             admission_retry_after_ms = {RETRY_AFTER_MS}\n"
        ),
    );
    // A session from before the storm (it spends one login of its core's budget).
    let mut established = TestClient::login(server.addr, &server.token(1, "old"), 1, "old");
    std::thread::sleep(Duration::from_millis(1100));

    // Every storm client sends its login at once.
    let mut storm: Vec<(u64, TestClient)> = (0..STORM)
        .map(|i| (100 + i, TestClient::connect(server.addr)))
        .collect();
    for (user, client) in &mut storm {
        send_login(client, &server, *user);
    }
    // The established session is served through the storm.
    let pong = established.request(pb::Ping { client_time_ms: 7 });
    assert!(
        matches!(pong.body, Body::Pong(ref p) if p.client_time_ms == 7),
        "{pong:?}"
    );

    let mut waiting: Vec<(u64, u32)> = Vec::new();
    let mut logged_in = Vec::new();
    for (user, mut client) in storm {
        match login_answer(&mut client) {
            Ok(()) => logged_in.push(client),
            Err(wait) => waiting.push((user, wait)),
        }
    }
    // The server runs a loop on every CPU, on one, or (AF_XDP, DPDK) on the lab's two
    // queues: an upper bound of its cores.
    let cores = server_cores_at_most();
    let budget = u64::from(LOGINS_PER_SECOND) * cores;
    assert!(
        logged_in.len() as u64 <= budget + cores,
        "at most each core's burst (plus a refill) got in at once: {} of {STORM}",
        logged_in.len()
    );
    let refused_first = waiting.len();
    assert!(
        refused_first as u64 >= STORM.saturating_sub(budget + cores),
        "{refused_first} refused"
    );
    for (_, wait) in &waiting {
        assert!(
            (RETRY_AFTER_MS..2 * RETRY_AFTER_MS).contains(wait),
            "retry_after_ms {wait} outside [{RETRY_AFTER_MS}, {})",
            2 * RETRY_AFTER_MS
        );
    }
    let distinct: std::collections::HashSet<u32> = waiting.iter().map(|(_, w)| *w).collect();
    assert!(
        waiting.len() < 4 || distinct.len() > waiting.len() / 2,
        "the waits are spread, not one value for everyone: {distinct:?}"
    );

    // The refused clients come back after their waits, as the SDK does, until all are
    // in.
    let mut busy_answers = refused_first;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "{} never got in", waiting.len());
        let longest = waiting.iter().map(|(_, w)| *w).max().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(u64::from(longest)));
        let mut still = Vec::new();
        for (user, _) in waiting {
            let mut client = TestClient::connect(server.addr);
            send_login(&mut client, &server, user);
            match login_answer(&mut client) {
                Ok(()) => logged_in.push(client),
                Err(wait) => {
                    busy_answers += 1;
                    still.push((user, wait));
                }
            }
        }
        waiting = still;
    }
    assert_eq!(logged_in.len() as u64, STORM);
    let pong = established.request(pb::Ping { client_time_ms: 8 });
    assert!(matches!(pong.body, Body::Pong(_)), "{pong:?}");

    let s = server.scrape_until("every refusal and session counted", |s| {
        s.sum("petrel_login_failures_total", "reason=\"login_rate\"") == busy_answers as f64
            && s.sum("petrel_sessions", "") == (STORM + 1) as f64
    });
    assert_eq!(
        s.sum("petrel_login_failures_total", "reason=\"overloaded\""),
        0.0
    );
    assert_eq!(
        s.sum("petrel_login_failures_total", ""),
        busy_answers as f64
    );
}

dataplane_tests!(a_login_storm_past_the_budget_is_refused_busy_and_comes_back,);

/// SDK clients in a login storm: the ones refused `SERVER_BUSY` report the refusal, wait
/// at least the server's `retry_after_ms`, and connect on a later attempt by themselves.
fn sdk_clients_refused_busy_wait_as_told_and_get_in(dp: Dataplane) {
    const CLIENTS: u64 = 8;
    common::server::block_on(dp, async move {
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(
            dp,
            &format!(
                "{}metrics_addr = \"127.0.0.1:0\"\nadmission_logins_per_second = 1\n\
                 admission_retry_after_ms = {RETRY_AFTER_MS}\n",
                keys.server_config()
            ),
        );
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| start(&keys, test_config(500 + i, vec![server.addr.to_string()])))
            .collect();
        let mut busy_waits = Vec::new();
        for (client, events, _) in clients {
            client
                .wait_connected(Duration::from_secs(60))
                .await
                .expect("every SDK client gets in in the end");
            let mut events = events;
            while let Ok(event) = events.try_recv() {
                if let Event::State(ConnectionState::Disconnected { reason, retry_in }) = event {
                    assert!(reason.contains("busy"), "{reason}");
                    busy_waits.push(retry_in);
                }
            }
            client.shutdown(false).await;
        }
        // Each core lets one login in per second: most of the storm was refused at
        // least once, and every refused client waited as long as it was told.
        let cores = server_cores_at_most();
        assert!(
            busy_waits.len() as u64 >= CLIENTS.saturating_sub(2 * cores),
            "{busy_waits:?}"
        );
        assert!(
            busy_waits
                .iter()
                .all(|w| *w >= Duration::from_millis(RETRY_AFTER_MS.into())),
            "{busy_waits:?}"
        );
        let s = server.scrape_until("the refusals counted", |s| {
            s.sum("petrel_login_failures_total", "reason=\"login_rate\"") >= busy_waits.len() as f64
        });
        assert_eq!(
            s.sum("petrel_login_failures_total", "reason=\"overloaded\""),
            0.0
        );
    });
}

dataplane_tests!(sdk_clients_refused_busy_wait_as_told_and_get_in,);
