//! What only the AF_XDP dataplane must prove, end to end with `petrel serve --dataplane
//! xdp` on the veth lab (root only; elsewhere each test prints why and returns):
//!
//! - Petrel takes only its own port: a kernel service on another port of the same address
//!   keeps answering, and a closed port is refused by the kernel's RST;
//! - on an address the kernel does not have, Petrel answers ARP itself (the clients'
//!   neighbour table learns the server's MAC) and its userspace TCP resets closed ports;
//! - clients off the server's subnet (behind a router) are answered too.
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
