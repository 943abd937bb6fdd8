//! What only the AF_XDP dataplane must prove, end to end with `petrel serve --dataplane
//! xdp` on the veth lab (root only; elsewhere each test prints why and returns):
//!
//! - Petrel takes only its own port: a kernel service on another port of the same address
//!   keeps answering, and a closed port is refused by the kernel's RST;
//! - on an address the kernel does not have, Petrel answers ARP itself (the clients'
//!   neighbour table learns the server's MAC) and its userspace TCP resets closed ports;
//! - clients off the server's subnet (behind a router) are answered too;
//! - a flood of spoofed SYNs (raw frames from `scripts/bench/syn-flood.py`) past the
//!   half-open backlog is answered with SYN cookies: the server holds no state for it,
//!   and real clients connect (through cookies), log in and chat while it lasts.
//!
//! The e2e suites (`tests/serve.rs`, `tests/scenarios.rs`, `tests/many_connections.rs`,
//! `tests/sdk*.rs`) run on this dataplane too, as their `NAME::xdp` variants.

#[allow(unused_imports)] // common re-exports what other test files use
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::client::{single, text_of};
use common::lab::{self, Lab};
use common::{Dataplane, TestClient, TestServer};

/// A 1:1 exchange through the server, proving it serves while the check runs.
fn chat(server: &TestServer) {
    let (a, b) = (7_001, 7_002);
    let mut x = TestClient::login(server.addr, &server.token(a, "x"), a, "x");
    let mut y = TestClient::login(server.addr, &server.token(b, "y"), b, "y");
    x.send_text(single(b), rand::random(), "over AF_XDP");
    assert_eq!(text_of(&y.push()), "over AF_XDP");
}

fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{addr}: {e}");
            true
        }
        Ok(_) => false,
    }
}

#[test]
#[ignore = "needs root (veth lab, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
fn a_kernel_service_on_another_port_keeps_working_and_closed_ports_are_refused() {
    Dataplane::Xdp.require();
    let server = TestServer::start_on(Dataplane::Xdp, "");
    let lab: &Lab = server.lab().expect("xdp server");
    // A kernel service on the same address, in the root namespace where that address is.
    let service_addr = SocketAddr::from((lab::HOST_ADDR, 9_600));
    let listener =
        lab.in_root(|| TcpListener::bind(service_addr).expect("bind the kernel service"));
    let service = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
    });

    chat(&server);
    let mut conn = TcpStream::connect(service_addr).expect("the kernel service is reachable");
    conn.write_all(b"hello").unwrap();
    let mut echoed = [0u8; 5];
    conn.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello");
    service.join().expect("service thread");
    assert!(
        refused(SocketAddr::from((lab::HOST_ADDR, 9_601))),
        "a closed port must be refused"
    );
    chat(&server);
}

#[test]
#[ignore = "needs root (veth lab, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
fn on_an_address_only_petrel_has_it_answers_arp_and_resets_closed_ports() {
    Dataplane::Xdp.require();
    let owned = Ipv4Addr::new(10, 77, 2, 3);
    let server = TestServer::start_xdp_owning(owned, "");
    assert_eq!(server.addr, SocketAddr::from((owned, lab::PORT)));
    chat(&server);
    // The clients' kernel resolved the address through Petrel's ARP replies.
    let host_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", lab::HOST_IF))
        .expect("host MAC");
    let neigh = Command::new("ip")
        .args(["neigh", "show", &owned.to_string()])
        .output()
        .expect("ip neigh");
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        neigh.contains(host_mac.trim()),
        "neighbour entry for {owned}: {neigh:?}, expected MAC {}",
        host_mac.trim()
    );
    // No kernel has this address: the RST comes from Petrel's userspace TCP.
    assert!(
        refused(SocketAddr::from((owned, 9_601))),
        "a closed port must be reset"
    );
    chat(&server);
}

#[test]
#[ignore = "needs root (veth lab, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
fn a_client_from_another_subnet_is_answered() {
    Dataplane::Xdp.require();
    let server = TestServer::start_on(Dataplane::Xdp, "");
    // A source address outside 10.77.2.0/24, on the clients' end of the veth (this thread
    // is in the lab's namespace). Its packets reach the server through the veth like a
    // router's would. The server has no route for it: smoltcp (Medium::Ip) routes
    // nothing, and the dataplane frames the answer for the MAC the client's packets came
    // from — a router's MAC, in a real network.
    let source = Ipv4Addr::new(10, 78, 9, 1);
    let added = Command::new("ip")
        .args(["addr", "add", &format!("{source}/32"), "dev", lab::PEER_IF])
        .status()
        .expect("ip addr add");
    assert!(added.success());
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind the off-subnet source");
    socket
        .connect_timeout(&server.addr.into(), Duration::from_secs(5))
        .expect("connect from another subnet");
    let user = 7_100;
    let mut c = TestClient::over(socket.into()).log_in(&server.token(user, "far"), user, "far");
    let pong = c.request(petrel_proto::pb::Ping { client_time_ms: 7 });
    assert!(matches!(pong.body, petrel_proto::Body::Pong(_)), "{pong:?}");
}

#[test]
#[ignore = "needs root (veth lab, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
fn a_spoofed_syn_flood_holds_no_state_and_real_clients_still_log_in() {
    Dataplane::Xdp.require();
    // A small backlog, so the flood's first 64 SYNs fill it and every later SYN (the real
    // clients' too) is answered with a cookie.
    let backlog = 64;
    let server = TestServer::start_on(
        Dataplane::Xdp,
        &format!("metrics_addr = \"127.0.0.1:0\"\nxdp_syn_backlog = {backlog}\n"),
    );
    chat(&server);
    let rss_before = server.rss_kib();
    let host_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", lab::HOST_IF))
        .expect("host MAC");
    // Spoofed sources in 10.99.0.0/16, which nobody has: the SYN-ACKs to them go back
    // to the clients' end of the veth, whose kernel drops them. This thread is in the
    // lab's namespace, so the flood is too.
    let flood = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench/syn-flood.py"
        ))
        .args([
            "--iface",
            lab::PEER_IF,
            "--dst",
            &lab::HOST_ADDR.to_string(),
        ])
        .args([
            "--port",
            &lab::PORT.to_string(),
            "--dst-mac",
            host_mac.trim(),
        ])
        .args([
            "--sources",
            "10.99.0.0/16",
            "--rate",
            "20000",
            "--duration",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 scripts/bench/syn-flood.py");
    server.scrape_until("the backlog full and cookies answering the flood", |s| {
        s.get("petrel_xdp_syn_cookies_total{outcome=\"sent\"}") >= 1000.0
    });
    // Two logins and a message while the flood goes on: their handshakes completed by
    // cookies, their segments translated between the cookie's and smoltcp's sequence
    // numbers.
    let started = std::time::Instant::now();
    chat(&server);
    eprintln!(
        "two logins and a message during the flood took {:?}",
        started.elapsed()
    );
    let mid = server.scrape();
    let out = flood.wait_with_output().expect("the flood's output");
    assert!(out.status.success(), "syn-flood.py failed");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("flood: {}", report.trim());
    let s = server.scrape();
    assert!(
        mid.get("petrel_xdp_syn_cookies_total{outcome=\"opened\"}") >= 2.0,
        "the real clients' connections came from cookies:\n{}",
        mid.text
    );
    // The backlog is per core.
    let cores = s
        .samples
        .keys()
        .filter(|k| k.starts_with("petrel_connections{"))
        .count();
    assert!(cores >= 1, "no per-core connection gauge:\n{}", s.text);
    assert!(
        s.get("petrel_xdp_half_open_connections") <= (backlog * cores) as f64,
        "half-open connections past the backlog of {backlog} on each of {cores} cores:\n{}",
        s.text
    );
    // Tens of thousands of SYNs held as sockets would be hundreds of MiB (about 8 KiB
    // each with their buffers); cookies hold nothing.
    let grown_kib = server.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "{} SYNs answered with cookies; RSS grew by {grown_kib} KiB",
        s.get("petrel_xdp_syn_cookies_total{outcome=\"sent\"}")
    );
    assert!(
        grown_kib < 64 * 1024,
        "RSS grew by {grown_kib} KiB during the flood"
    );
    chat(&server);
}
