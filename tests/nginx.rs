//! Petrel behind Debian's nginx, with the shipped configuration
//! (`scripts/deploy/nginx/nginx.conf` and `petrel-behind-nginx.toml`): the stream
//! module forwards plain TCP, TLS it ends itself, and TLS it passes through, every
//! upstream connection opening with a PROXY header, spread over four Petrel ports.
//!
//! **Port multiplexing, shown by arithmetic.** The test runs in a network namespace of
//! its own whose ephemeral port range is 100 ports, so one balancer→backend port pair
//! could carry at most 100 connections. nginx carries 240 plain clients to Petrel through
//! the four ports, all logged in at once — impossible through one. The clients bind
//! 40 distinct loopback source addresses, and Petrel counts 40 client addresses although
//! every TCP connection it accepts comes from nginx: it sees the real clients. Two
//! browsers' WebSockets (one over TLS ended by nginx) go through nginx's http server,
//! which names them in `X-Forwarded-For`.
//!
//! Needs root (a network namespace) and nginx with its stream module
//! (`scripts/setup.sh` installs `nginx` and `libnginx-mod-stream`).

#[allow(unused_imports)] // common re-exports `Dataplane`; this runs on kernel sockets only
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::client::{single, text_of};
use common::nginx::{
    CERT_NAME, Namespace, Nginx, TestCertificate, require_nginx, shipped_nginx_config,
    shipped_petrel_config,
};
use common::ws::WsClient;
use common::{TestClient, TestServer};

/// The namespace's ephemeral ports: 100.
const PORT_RANGE: &str = "40000 40099";
const PORTS_IN_RANGE: usize = 100;
const PLAIN_CLIENTS: usize = 240;
const SOURCE_ADDRESSES: usize = 40;

/// A plain client from `source` (a loopback address and a port outside the ephemeral
/// range: a port bound explicitly from the range would be closed to every connect(),
/// nginx's included, and shrink the space this test measures), through nginx's port 9500.
fn client_from(source: SocketAddr) -> TestClient {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&source.into())
        .expect("bind a loopback source address");
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], 9500)).into())
        .expect("connect to nginx");
    TestClient::over(socket.into())
}

fn chat(from: &mut TestClient, to: &mut TestClient, text: &str) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    from.send_text(single(to.user), id, text);
    assert_eq!(text_of(&to.push()), text);
}

#[test]
#[ignore = "needs root (a network namespace) and nginx; scripts/test.sh runs it as root and in CI"]
fn nginx_spreads_proxied_clients_over_petrel_ports_past_one_port_pairs_limit() {
    require_nginx();
    let ns = Namespace::create("petrel-ngx", Some(PORT_RANGE));
    // This thread, and so every process and socket it starts from here on, is inside.
    ns.enter();

    let dir = tempfile::tempdir().expect("tempdir");
    let certificate = TestCertificate::write(dir.path());
    let config = toml::to_string(&shipped_petrel_config(&certificate)).expect("serialize");
    let server = TestServer::start(&config);
    assert_eq!(
        server.addrs.len(),
        12,
        "four plain, four WebSocket and four TLS ports"
    );
    assert_eq!(
        server.proxy_addrs.len(),
        8,
        "the stream ports expect PROXY headers"
    );
    assert_eq!(server.ws_addrs.len(), 4);

    let web_root = common::nginx::repo_file("web");
    let config = shipped_nginx_config(dir.path(), &certificate, &web_root);
    let nginx = Nginx::start(&config, dir.path(), "127.0.0.1:9500");

    // More plain clients than one balancer→backend port pair could carry, all at once.
    let mut clients: Vec<TestClient> = (0..PLAIN_CLIENTS)
        .map(|i| {
            let source = SocketAddr::from((
                [127, 0, 1, (10 + i % SOURCE_ADDRESSES) as u8],
                30_000 + i as u16,
            ));
            let user = 1 + i as u64;
            client_from(source).log_in(&server.token(user, "phone"), user, "phone")
        })
        .collect();
    const { assert!(PLAIN_CLIENTS > PORTS_IN_RANGE) };

    // TLS through nginx both ways: ended by nginx (9543), passed through to Petrel (9443).
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certificate.generated.cert.der().clone())
        .expect("trust");
    let tls = petrel_sdk::TlsConfig::with_roots(roots)
        .expect("TLS config")
        .config;
    let at_nginx = SocketAddr::from(([127, 0, 0, 1], 9543));
    let passed_through = SocketAddr::from(([127, 0, 0, 1], 9443));
    let mut ended_by_nginx = TestClient::connect_tls(at_nginx, Arc::clone(&tls), CERT_NAME).log_in(
        &server.token(1001, "tls"),
        1001,
        "tls",
    );
    let mut ended_by_petrel = TestClient::connect_tls(passed_through, Arc::clone(&tls), CERT_NAME)
        .log_in(&server.token(1002, "tls"), 1002, "tls");
    assert_eq!(
        ended_by_petrel
            .tls
            .as_ref()
            .and_then(|t| t.alpn_protocol().map(<[u8]>::to_vec)),
        Some(b"petrel".to_vec()),
        "Petrel itself answered the passed-through handshake"
    );

    // WebSocket through nginx's http server, plain (from a source address of its own) and
    // with TLS ended at nginx (wss://).
    let ws_source =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    ws_source
        .bind(&SocketAddr::from(([127, 0, 2, 1], 31_000)).into())
        .expect("bind");
    ws_source
        .connect(&SocketAddr::from(([127, 0, 0, 1], 9580)).into())
        .expect("connect to nginx's http port");
    let mut browser = WsClient::over_tcp(ws_source.into(), "/ws")
        .expect("upgrade through nginx")
        .log_in(&server.token(1003, "web"), 1003, "web");
    // Browsers offer ALPN http/1.1.
    let mut web_tls = (*tls).clone();
    web_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut secure_browser = WsClient::connect_tls(
        SocketAddr::from(([127, 0, 0, 1], 9581)),
        Arc::new(web_tls),
        CERT_NAME,
        "/ws",
    )
    .expect("wss upgrade through nginx")
    .log_in(&server.token(1004, "web"), 1004, "web");

    let (first, rest) = clients.split_at_mut(1);
    chat(
        &mut first[0],
        &mut rest[PLAIN_CLIENTS - 2],
        "across the balancer",
    );
    chat(&mut rest[0], &mut ended_by_nginx, "to TLS ended at nginx");
    chat(&mut ended_by_nginx, &mut ended_by_petrel, "TLS to TLS");
    chat(
        &mut ended_by_petrel,
        &mut first[0],
        "passed-through TLS to plain",
    );

    browser.send_text(1, 900_001, "from a browser");
    assert_eq!(text_of(&first[0].push()), "from a browser");
    browser.send_text(1004, 900_002, "ws to wss");
    assert_eq!(text_of(&secure_browser.push()), "ws to wss");

    let all = PLAIN_CLIENTS + 2 + 2;
    let s = server.scrape_until("every connection counted", |s| {
        s.sum("petrel_connections", "") == all as f64
    });
    // nginx's `proxy_protocol on` writes v1 headers (one more for the start-up probe's
    // connection, if nginx reached Petrel before the probe hung up).
    let headers = s.sum("petrel_proxy_headers_total", "result=\"v1\"");
    assert!(
        (all - 2..=all - 1).contains(&(headers as usize)),
        "{headers}"
    );
    // nginx's http module set X-Forwarded-For on the two upgrades.
    assert_eq!(
        s.sum("petrel_proxy_headers_total", "result=\"forwarded\""),
        2.0
    );
    assert_eq!(s.sum("petrel_proxy_failures_total", ""), 0.0);
    // The plain clients' 40 source addresses, 127.0.0.1 for the TLS clients and the
    // secure browser, 127.0.2.1 for the other browser: what the PROXY headers and
    // X-Forwarded-For named. Every TCP peer Petrel accepted was nginx.
    assert_eq!(
        s.sum("petrel_client_addresses", ""),
        (SOURCE_ADDRESSES + 2) as f64,
        "nginx log:\n{}",
        nginx.log()
    );
    drop(clients);
    drop(nginx);
}
