//! End-to-end WebSocket: `petrel serve` with a WebSocket listener on every dataplane
//! (kernel sockets; AF_XDP and DPDK, where the upgrade and the messages are handled inside
//! the per-core loop over the userspace TCP stream). Login and chat in binary messages, a
//! frame larger than a TCP segment, WebSocket pings answered and counted as heartbeats,
//! and bad input — a Petrel client speaking raw frames to the WebSocket port, a foreign
//! origin, a text message, a message over the limit — each answered, closed and counted
//! while the others chat on. On kernel sockets: plain TCP, WebSocket and WebSocket over
//! TLS side by side, and pings keeping an otherwise silent session alive.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::client::{single, text_of};
use common::ws::WsClient;
use common::{Dataplane, TestClient, TestServer};
use petrel_proto::pb;
use tungstenite::Message;

const ORIGIN: &str = "https://chat.petrel.test";

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn ws_chat(from: &mut WsClient, to: &mut WsClient, text: &str) {
    from.send_text(to.user, next_id(), text);
    assert_eq!(text_of(&to.push()), text);
}

/// What the server answers before it closes a WebSocket: the close frame's code.
fn close_code(client: &mut WsClient) -> Option<u16> {
    loop {
        match client.ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code.into()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn websocket_clients_chat_and_bad_input_is_answered_and_counted(dp: Dataplane) {
    let addr = dp.listen_addr();
    let server = TestServer::start_on(
        dp,
        &format!(
            "metrics_addr = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\
             websocket = [\"{addr}\"]\nwebsocket_origins = [\"{ORIGIN}\"]\n"
        ),
    );
    assert_eq!(server.ws_addrs, vec![server.addr], "printed at start");
    let login = |user, device, origin| {
        WsClient::connect(server.addr, origin)
            .expect("upgrade")
            .log_in(&server.token(user, device), user, device)
    };
    // A browser page from the allowed origin, and a native client that sends no origin.
    let mut alice = login(1, "browser", Some(ORIGIN));
    let mut bob = login(2, "native", None);
    for i in 0..10 {
        ws_chat(&mut alice, &mut bob, &format!("hello {i}"));
        ws_chat(&mut bob, &mut alice, &format!("hi {i}"));
    }
    // One frame larger than a TCP segment and a TLS record: one message each way.
    let big = "w".repeat(40_000);
    ws_chat(&mut alice, &mut bob, &big);

    // A WebSocket ping: answered with a pong carrying its payload.
    alice
        .ws
        .send(Message::Ping(b"still here".to_vec().into()))
        .expect("ping");
    loop {
        match alice.ws.read().expect("read") {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"still here");
                break;
            }
            Message::Binary(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // A Petrel client speaking raw frames to the WebSocket port: 400, closed.
    let mut raw = TestClient::connect(server.addr);
    raw.send(&petrel_proto::Frame::new(1, pb::Ping::default()));
    let mut answer = Vec::new();
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::io::Read::read_to_end(&mut raw.stream, &mut answer).expect("closed after the answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A page from another origin: 403.
    match WsClient::connect(server.addr, Some("https://evil.example")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("expected a 403, got {e}"),
        Ok(_) => panic!("a foreign origin was upgraded"),
    }
    // A text message: close 1003. A message past one largest frame: close 1009.
    let mut texter = login(3, "texter", None);
    texter
        .ws
        .send(Message::Text("hello".into()))
        .expect("send text");
    assert_eq!(close_code(&mut texter), Some(1003));
    // The server refuses it from its header and closes before reading the rest: the
    // client may see close 1009, or (the unread rest resets the connection) only an
    // error. Either way it is closed, and the metrics below name the reason.
    let mut flooder = login(4, "flooder", None);
    if flooder
        .ws
        .send(Message::Binary(vec![0; 70_000].into()))
        .is_ok()
    {
        let code = close_code(&mut flooder);
        assert!(matches!(code, Some(1009) | None), "{code:?}");
    }

    ws_chat(&mut bob, &mut alice, "nobody else was affected");
    let s = server.scrape_until("every failure counted", |s| {
        s.sum("petrel_websocket_failures_total", "") == 4.0
    });
    for reason in ["handshake", "origin", "too_large", "protocol"] {
        let filter = format!("reason=\"{reason}\"");
        assert_eq!(
            s.sum("petrel_websocket_failures_total", &filter),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(s.sum("petrel_websocket_upgrades_total", ""), 4.0);
    assert_eq!(s.sum("petrel_websocket_pings_total", ""), 1.0);
}

#[test]
fn tcp_websocket_and_websocket_over_tls_side_by_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["petrel.test".to_owned()]).expect("cert");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    // Plain TCP on .1, WebSocket on .2, WebSocket over TLS on .3.
    let server = TestServer::start(&format!(
        "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n\
         websocket = [\"127.0.0.2:0\", \"127.0.0.3:0\"]\nrate_limit_per_second = 0\n\
         [tls]\ncert = {cert:?}\nkey = {key:?}\nlisten = [\"127.0.0.3:0\"]\n"
    ));
    assert_eq!(server.addrs.len(), 3);
    assert_eq!(server.ws_addrs, server.addrs[1..].to_vec());
    let (tcp_addr, ws_addr, wss_addr) = (server.addrs[0], server.addrs[1], server.addrs[2]);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).expect("trust");
    // Offering ALPN http/1.1 as browsers do (the server adds it to its list when it has
    // WebSocket listeners).
    let mut tls = (*petrel_sdk::TlsConfig::with_roots(roots)
        .expect("TLS config")
        .config)
        .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = std::sync::Arc::new(tls);
    let mut tcp = TestClient::login(tcp_addr, &server.token(1, "desk"), 1, "desk");
    let mut ws = WsClient::connect(ws_addr, Some(ORIGIN))
        .expect("upgrade")
        .log_in(&server.token(2, "web"), 2, "web");
    let mut wss = WsClient::connect_tls(wss_addr, tls, "petrel.test", "/")
        .expect("TLS upgrade")
        .log_in(&server.token(3, "secure"), 3, "secure");

    tcp.send_text(single(2), next_id(), "tcp to ws");
    assert_eq!(text_of(&ws.push()), "tcp to ws");
    ws_chat(&mut ws, &mut wss, "ws to wss");
    wss.send_text(1, next_id(), "wss to tcp");
    assert_eq!(text_of(&tcp.push()), "wss to tcp");
    let big = "s".repeat(50_000);
    ws_chat(&mut wss, &mut ws, &big);
}

#[test]
fn websocket_pings_keep_a_session_alive_and_silence_does_not() {
    let server = TestServer::start(
        "listen = [\"127.0.0.1:0\"]\nwebsocket = [\"127.0.0.1:0\"]\n\
         heartbeat_interval_secs = 1\nidle_timeout_secs = 2\n",
    );
    let mut pinger = WsClient::connect(server.addr, None)
        .expect("upgrade")
        .log_in(&server.token(1, "pinger"), 1, "pinger");
    let mut silent = WsClient::connect(server.addr, None)
        .expect("upgrade")
        .log_in(&server.token(2, "silent"), 2, "silent");
    // Four seconds, twice the idle timeout, with only WebSocket pings from one of them.
    for _ in 0..8 {
        pinger
            .ws
            .send(Message::Ping(Vec::new().into()))
            .expect("ping");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The silent one was kicked (a Kick frame, then the close).
    let mut kicked = false;
    while let Some(frame) = silent.try_recv() {
        kicked |= matches!(frame.body, petrel_proto::Body::Kick(_));
    }
    assert!(kicked, "the silent client was kicked for idleness");
    // The pinger is still served.
    let pong = pinger.request(pb::Ping::default());
    assert!(matches!(pong.body, petrel_proto::Body::Pong(_)));
}

dataplane_tests!(websocket_clients_chat_and_bad_input_is_answered_and_counted,);
