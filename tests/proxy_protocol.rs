//! End-to-end PROXY protocol and the per-address connection limit, on every dataplane:
//! clients behind a (simulated) balancer log in and chat with v1 and v2 headers, the
//! limit counts the real client addresses the headers name (not the one TCP peer they
//! all share), and a connection without a header, with a malformed one, or with a header
//! on a listener that expects none is closed and counted while everyone else chats on.
//! tests/nginx.rs puts Debian's nginx in front for real.

#[macro_use]
mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::client::{single, text_of};
use common::{Dataplane, TestClient, TestServer};
use petrel_proto::pb;

/// A v1 header naming `client` (IPv4) as the source.
fn v1_header(client: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} 10.0.0.1 {} 9500\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 header: `PROXY` naming `client` (IPv4), or `LOCAL` (a balancer's health check).
fn v2_header(client: Option<SocketAddr>) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match client {
        Some(SocketAddr::V4(client)) => {
            header.extend([0x21, 0x11, 0, 12]);
            header.extend(client.ip().octets());
            header.extend([10, 0, 0, 1]);
            header.extend(client.port().to_be_bytes());
            header.extend(9500u16.to_be_bytes());
        }
        _ => header.extend([0x20, 0x00, 0, 0]),
    }
    header
}

/// A client that opens with `header` (bytes a balancer would send) to `addr`.
fn behind_balancer(addr: SocketAddr, header: &[u8]) -> TestClient {
    let mut client = TestClient::over(TcpStream::connect(addr).expect("connect"));
    client.send_raw(header).expect("write the PROXY header");
    client
}

fn client_at(last: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, last], 40_000 + u16::from(last)))
}

/// `from` sends `text` to `to`, which must get it pushed.
fn chat(from: &mut TestClient, to: &mut TestClient, text: &str) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    from.send_text(single(to.user), id, text);
    assert_eq!(text_of(&to.push()), text);
}

/// Sends a ping on `client` and expects the server to close it without a frame.
fn closed_without_a_word(mut client: TestClient, what: &str) {
    // The write may already fail if the server closed first: that is the point.
    let _ = client.send_raw(
        &petrel_proto::codec::FrameEncoder::default()
            .encode_to_bytes(&petrel_proto::Frame::new(1, pb::Ping::default()))
            .expect("encode"),
    );
    let frames = client.recv_until_closed(Duration::from_secs(5));
    assert!(
        frames.is_empty(),
        "{what}: no frame, only a close: {frames:?}"
    );
}

fn clients_behind_a_balancer_are_known_by_their_real_address(dp: Dataplane) {
    let addr = dp.listen_addr();
    let server = TestServer::start_on(
        dp,
        &format!(
            "metrics_addr = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\
             max_connections_per_address = 2\nproxy_protocol = [\"{addr}\"]\n"
        ),
    );
    assert_eq!(server.proxy_addrs, vec![server.addr], "printed at start");
    let token = |user, device| server.token(user, device);

    // Every client below shares one TCP peer (this test); the headers tell them apart.
    let mut alice = behind_balancer(server.addr, &v1_header(client_at(1))).log_in(
        &token(1, "phone"),
        1,
        "phone",
    );
    let mut bob = behind_balancer(server.addr, &v2_header(Some(client_at(2)))).log_in(
        &token(2, "phone"),
        2,
        "phone",
    );
    chat(&mut alice, &mut bob, "through the balancer");
    chat(&mut bob, &mut alice, "and back");

    // Carol, behind the same address as alice (one household's NAT), is within the limit
    // of two; a third connection from there is refused, though the TCP peer has four
    // connections by then.
    let mut carol = behind_balancer(server.addr, &v1_header(client_at(1))).log_in(
        &token(3, "phone"),
        3,
        "phone",
    );
    closed_without_a_word(
        behind_balancer(server.addr, &v1_header(client_at(1))),
        "a third connection from one address",
    );
    // The balancer's health check: a LOCAL header, then a ping like any client's.
    let mut check = behind_balancer(server.addr, &v2_header(None));
    assert!(matches!(
        check.request(pb::Ping::default()).body,
        petrel_proto::Body::Pong(_)
    ));
    drop(check);

    // No header, a malformed one, one far too long: each closed, nobody else affected.
    closed_without_a_word(TestClient::connect(server.addr), "no header");
    closed_without_a_word(
        behind_balancer(server.addr, b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n"),
        "a malformed header",
    );
    let mut endless = b"PROXY TCP4 ".to_vec();
    endless.resize(300, b'7');
    closed_without_a_word(behind_balancer(server.addr, &endless), "an endless header");
    chat(&mut carol, &mut bob, "still here");
    chat(&mut alice, &mut carol, "all three");

    let s = server.scrape_until("every header and refusal counted", |s| {
        s.sum("petrel_proxy_failures_total", "") == 3.0
    });
    let count = |family: &str, filter: &str| s.sum(family, filter);
    assert_eq!(count("petrel_proxy_headers_total", "result=\"v1\""), 3.0);
    assert_eq!(count("petrel_proxy_headers_total", "result=\"v2\""), 1.0);
    assert_eq!(count("petrel_proxy_headers_total", "result=\"local\""), 1.0);
    for reason in ["missing", "malformed", "too_long"] {
        let filter = format!("reason=\"{reason}\"");
        assert_eq!(
            count("petrel_proxy_failures_total", &filter),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        count("petrel_connections_refused_per_address_total", ""),
        1.0
    );
    // Alice's and carol's address, and bob's.
    assert_eq!(count("petrel_client_addresses", ""), 2.0);
}

fn without_proxy_protocol_a_header_is_forged_and_the_tcp_peer_is_limited(dp: Dataplane) {
    let server = TestServer::start_on(
        dp,
        "metrics_addr = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\
         max_connections_per_address = 2\n",
    );
    assert!(server.proxy_addrs.is_empty());
    // A client claiming to be someone else: closed before a frame is read.
    closed_without_a_word(
        behind_balancer(server.addr, &v1_header(client_at(9))),
        "a forged v1 header",
    );
    closed_without_a_word(
        behind_balancer(server.addr, &v2_header(Some(client_at(9)))),
        "a forged v2 header",
    );
    // Counted, and closed: their places in the limit are free again.
    server.scrape_until("both forgeries counted and closed", |s| {
        s.sum("petrel_proxy_failures_total", "reason=\"unexpected\"") == 2.0
            && s.sum("petrel_connections_closed_total", "") == 2.0
    });

    // The limit counts the TCP peer here: two connections, and the third is refused at
    // accept (its address is known before a byte is read).
    let mut alice = TestClient::login(server.addr, &server.token(1, "a"), 1, "a");
    let mut bob = TestClient::login(server.addr, &server.token(2, "b"), 2, "b");
    // (The userspace TCP stack resets it right after its handshake: the reset may even
    // beat the client's connect() back.)
    match TcpStream::connect(server.addr) {
        Ok(stream) => closed_without_a_word(TestClient::over(stream), "a third connection"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    chat(&mut alice, &mut bob, "the two admitted still chat");
    // One gone (once the server saw the close), one place free again.
    drop(bob);
    server.scrape_until("bob's connection closed", |s| {
        s.sum("petrel_connections", "") == 1.0
    });
    let mut bob = TestClient::login(server.addr, &server.token(2, "b"), 2, "b");
    chat(&mut bob, &mut alice, "back");
    let s = server.scrape();
    assert_eq!(
        s.sum("petrel_connections_refused_per_address_total", ""),
        1.0
    );
}

#[test]
fn plaintext_and_proxy_listeners_side_by_side_each_refuse_the_other_kind() {
    let server = TestServer::start(
        "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\nproxy_protocol = [\"127.0.0.2:0\"]\n\
         metrics_addr = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n",
    );
    assert_eq!(server.addrs.len(), 2);
    let (plain, proxied) = (server.addrs[0], server.addrs[1]);
    assert_eq!(server.proxy_addrs, vec![proxied]);
    let mut alice = TestClient::login(plain, &server.token(1, "desk"), 1, "desk");
    let mut bob = behind_balancer(proxied, &v1_header(client_at(2))).log_in(
        &server.token(2, "phone"),
        2,
        "phone",
    );
    chat(&mut alice, &mut bob, "plain to proxied");
    chat(&mut bob, &mut alice, "proxied to plain");
    closed_without_a_word(
        behind_balancer(plain, &v1_header(client_at(3))),
        "a header on the plain port",
    );
    closed_without_a_word(TestClient::connect(proxied), "no header on the PROXY port");
    let s = server.scrape_until("both refusals counted", |s| {
        s.sum("petrel_proxy_failures_total", "") == 2.0
    });
    assert_eq!(
        s.sum("petrel_proxy_failures_total", "reason=\"unexpected\""),
        1.0
    );
    assert_eq!(
        s.sum("petrel_proxy_failures_total", "reason=\"missing\""),
        1.0
    );
}

dataplane_tests!(
    clients_behind_a_balancer_are_known_by_their_real_address,
    without_proxy_protocol_a_header_is_forged_and_the_tcp_peer_is_limited,
);
