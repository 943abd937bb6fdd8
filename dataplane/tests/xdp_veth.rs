//! AF_XDP on the veth lab: the filter redirects Petrel's TCP to the sockets and leaves
//! everything else (ICMP, TCP to another port) to the kernel.
//!
//! Needs root (network namespaces, XDP, AF_XDP). As another user it prints why and passes
//! without checking anything. The lab (scripts/veth-lab.sh) is torn down by a drop guard,
//! so a failing assertion leaves nothing behind.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_dataplane::sys::xsk::{BindMode, Xsk, XskConfig};
use petrel_dataplane::sys::{ethtool, if_index};
use petrel_dataplane::xdp::filter::{AttachMode, FilterConfig, XdpFilter};
use petrel_dataplane::xdp::neighbour::{NeighbourConfig, NeighbourTable, arp_reply};
use petrel_dataplane::xdp::tcp::{ShardConfig, TcpShard, frame_ipv4};
use petrel_dataplane::xdp::wire::{Inbound, RxCounters, classify};
use smoltcp::wire::{ArpRepr, EthernetAddress, Ipv4Packet};

const NS: &str = "petrel-xdp-test";
const HOST_IF: &str = "petrel-xh";
const PEER_IF: &str = "petrel-xn";
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const PEER_ADDR: &str = "10.77.1.2";
const PETREL_PORT: u16 = 9500;
const KERNEL_PORT: u16 = 9600;

fn lab_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/veth-lab.sh")
}

fn lab(action: &str) -> std::process::Output {
    Command::new("bash")
        .arg(lab_script())
        .arg(action)
        .env("PETREL_LAB_NS", NS)
        .env("PETREL_LAB_HOST_IF", HOST_IF)
        .env("PETREL_LAB_PEER_IF", PEER_IF)
        .env("PETREL_LAB_HOST_ADDR", HOST_ADDR.to_string())
        .env("PETREL_LAB_PEER_ADDR", PEER_ADDR)
        // No AF_XDP load generator here: no route for its source network.
        .env("PETREL_LAB_CLIENT_NET", "")
        .output()
        .expect("run scripts/veth-lab.sh")
}

/// Brings the lab up; tears it down when dropped (also on panic).
struct Lab;

impl Lab {
    fn up() -> Lab {
        let out = lab("up");
        let guard = Lab;
        assert!(
            out.status.success(),
            "veth-lab up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        guard
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = lab("down");
        if !out.status.success() {
            eprintln!(
                "veth-lab down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs `args` inside the lab namespace.
fn in_ns(args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", NS]).args(args);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
#[ignore = "needs root (network namespace, XDP, AF_XDP); scripts/test.sh runs it as root and in CI"]
fn filter_redirects_petrel_tcp_and_passes_the_rest() {
    assert!(
        is_root(),
        "xdp_veth needs root (network namespace, XDP, AF_XDP): run as root"
    );
    let _lab = Lab::up();
    // veth has no zero-copy AF_XDP: the bind is refused with EOPNOTSUPP. (Checked first:
    // right after another socket on the queue closed, the kernel may still answer EBUSY.)
    let index = if_index(HOST_IF).expect("lab interface");
    let error = Xsk::bind(
        index,
        0,
        XskConfig {
            frame_count: 64,
            ring_size: 32,
            tx_reserve: 0,
            bind: BindMode::ZeroCopy,
            ..XskConfig::default()
        },
    )
    .expect_err("zero-copy AF_XDP on veth");
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP),
        "zero-copy bind on veth: {error}"
    );
    // veth has no ntuple filters: steering is refused with EOPNOTSUPP (the dataplane then
    // relies on RSS).
    let refused = ethtool::steer_tcp_port(HOST_IF, Some(HOST_ADDR), PETREL_PORT, 0)
        .expect_err("ntuple on veth");
    assert!(
        ethtool::is_unsupported(&refused),
        "ntuple on veth: {refused}"
    );
    // veth runs XDP natively; generic (SKB) mode is what a NIC without XDP support gets.
    check_mode(AttachMode::Driver, KERNEL_PORT);
    check_mode(AttachMode::Generic, KERNEL_PORT + 1);
    check_arp_for_an_address_only_petrel_has();
    check_userspace_tcp_echo();
    check_transport_boundary();
    check_many_concurrent_connections(200, 2);
    // One core serving both queues: flows arriving on either find the same shards.
    check_many_concurrent_connections(200, 1);
    check_malformed_frames_are_dropped_and_counted();
}

/// Attaches the filter in `mode`, binds a socket per queue, sends Petrel TCP, ICMP and
/// kernel TCP (to `kernel_port`) from the namespace, and checks who got what.
fn check_mode(mode: AttachMode, kernel_port: u16) {
    let mut filter = XdpFilter::load().expect("load the XDP filter (verifier)");
    filter
        .configure(&FilterConfig {
            addr: HOST_ADDR,
            prefix_len: 32,
            ports: vec![PETREL_PORT],
            own_arp: false,
        })
        .expect("configure");
    let attached = filter.attach(HOST_IF, mode).expect("attach");
    assert_eq!(attached, mode);
    eprintln!("filter attached in {mode:?} mode");

    let index = if_index(HOST_IF).expect("lab interface");
    let mut sockets: Vec<Xsk> = (0..2)
        .map(|queue| {
            let xsk = Xsk::bind(
                index,
                queue,
                XskConfig {
                    frame_count: 512,
                    ring_size: 128,
                    tx_reserve: 64,
                    ..XskConfig::default()
                },
            )
            .unwrap_or_else(|e| panic!("AF_XDP socket on queue {queue}: {e}"));
            filter
                .register_socket(queue, &xsk)
                .expect("register socket");
            xsk
        })
        .collect();

    // A kernel service on another port of the same address must keep working.
    let kernel_listener =
        TcpListener::bind((HOST_ADDR, kernel_port)).expect("kernel listener on the lab address");
    kernel_listener.set_nonblocking(true).unwrap();

    // Kernel TCP from the namespace to Petrel's port: nobody in the kernel listens there,
    // and the SYNs (retransmitted) must all arrive on the AF_XDP sockets.
    let mut syn_sender: Child = in_ns(&[
        "timeout",
        "3",
        "bash",
        "-c",
        &format!("echo > /dev/tcp/{HOST_ADDR}/{PETREL_PORT}"),
    ])
    .spawn()
    .expect("spawn TCP client in the namespace");
    let ping = in_ns(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        &HOST_ADDR.to_string(),
    ])
    .status()
    .expect("ping");
    let kernel_client = in_ns(&[
        "timeout",
        "3",
        "bash",
        "-c",
        &format!("echo hello > /dev/tcp/{HOST_ADDR}/{kernel_port}"),
    ])
    .status()
    .expect("kernel TCP client");

    let mut accepted = String::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut rx = RxCounters::default();
    let mut syns_to_petrel = 0;
    while Instant::now() < deadline {
        for xsk in &mut sockets {
            xsk.receive(64, |frame| {
                let result = classify(frame, HOST_ADDR);
                if let Ok(Inbound::Tcp { ip_packet, .. }) = result
                    && ip_packet.len() >= 24
                    && u16::from_be_bytes([ip_packet[22], ip_packet[23]]) == PETREL_PORT
                {
                    syns_to_petrel += 1;
                }
                rx.record(&result);
            });
        }
        if accepted.is_empty()
            && let Ok((mut stream, _)) = kernel_listener.accept()
        {
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let _ = stream.read_to_string(&mut accepted);
        }
        if syns_to_petrel > 0 && !accepted.is_empty() {
            break;
        }
        let _ = sockets[0].wait_readable(50);
    }
    let _ = syn_sender.wait();

    let counters = filter.counters().expect("filter counters");
    eprintln!("filter counters: {counters:?}; userspace: {rx:?}");
    for (queue, xsk) in sockets.iter().enumerate() {
        eprintln!(
            "queue {queue}: {:?}, kernel: {:?}",
            xsk.counters(),
            xsk.statistics()
        );
    }

    assert!(ping.success(), "ICMP must still reach the kernel");
    assert!(
        kernel_client.success(),
        "TCP to a kernel port must still work"
    );
    assert_eq!(accepted.trim(), "hello", "the kernel service got its bytes");
    assert!(
        syns_to_petrel > 0,
        "TCP to Petrel's port reached the AF_XDP socket with valid checksums"
    );
    assert_eq!(
        rx.malformed_total(),
        0,
        "the lab peer sends full checksums (tx offload off)"
    );
    assert!(counters.redirected >= syns_to_petrel);
    assert!(
        counters.passed >= 3,
        "pings and the kernel-port TCP were passed"
    );
    assert_eq!(counters.no_socket, 0);
}

/// Petrel owns 10.77.1.3, which the kernel does not have: the filter redirects ARP for it,
/// userspace answers through the tx ring, and the namespace learns the host veth's MAC.
fn check_arp_for_an_address_only_petrel_has() {
    let petrel_addr = Ipv4Addr::new(10, 77, 1, 3);
    let (our_mac, mac_text) = host_mac();

    let mut filter = XdpFilter::load().expect("load");
    filter
        .configure(&FilterConfig {
            addr: petrel_addr,
            prefix_len: 32,
            ports: vec![PETREL_PORT],
            own_arp: true,
        })
        .expect("configure");
    filter.attach(HOST_IF, AttachMode::Driver).expect("attach");
    let index = if_index(HOST_IF).expect("lab interface");
    let mut sockets: Vec<Xsk> = (0..2)
        .map(|queue| {
            let xsk = Xsk::bind(
                index,
                queue,
                XskConfig {
                    frame_count: 512,
                    ring_size: 128,
                    tx_reserve: 64,
                    ..XskConfig::default()
                },
            )
            .expect("AF_XDP socket");
            filter.register_socket(queue, &xsk).expect("register");
            xsk
        })
        .collect();

    // The ping itself fails (nobody answers ICMP for 10.77.1.3); it is there to make the
    // namespace resolve the address.
    let mut pinger = in_ns(&["ping", "-c", "2", "-W", "1", &petrel_addr.to_string()])
        .spawn()
        .expect("ping");
    let mut replies = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && replies == 0 {
        for xsk in &mut sockets {
            let mut requests: Vec<ArpRepr> = Vec::new();
            xsk.receive(64, |frame| {
                if let Ok(Inbound::Arp { arp, .. }) = classify(frame, petrel_addr) {
                    requests.push(arp);
                }
            });
            for request in &requests {
                if xsk.send(|buf| arp_reply(request, our_mac, petrel_addr, buf)) {
                    replies += 1;
                }
            }
            xsk.flush_tx().expect("kick tx");
        }
        let _ = sockets[0].wait_readable(50);
    }
    let _ = pinger.wait();
    let neighbours = Command::new("ip")
        .args([
            "netns",
            "exec",
            NS,
            "ip",
            "neigh",
            "show",
            &petrel_addr.to_string(),
        ])
        .output()
        .expect("ip neigh");
    let neighbours = String::from_utf8_lossy(&neighbours.stdout);
    eprintln!(
        "ARP replies sent: {replies}; namespace neighbour entry: {}; filter: {:?}",
        neighbours.trim(),
        filter.counters()
    );
    assert!(
        replies > 0,
        "an ARP request for {petrel_addr} reached userspace"
    );
    assert!(
        neighbours.contains(mac_text.trim()),
        "the namespace learned Petrel's MAC from our reply"
    );
}

/// The host veth's MAC, parsed and as text.
fn host_mac() -> (EthernetAddress, String) {
    let text = std::fs::read_to_string(format!("/sys/class/net/{HOST_IF}/address"))
        .expect("host veth MAC");
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    (EthernetAddress(mac), text.trim().to_owned())
}

/// A kernel-TCP client in the namespace talks to smoltcp over AF_XDP: handshake, data both
/// ways, close. The echo loop here is test scaffolding, not the dataplane's poller.
fn check_userspace_tcp_echo() {
    let (our_mac, _) = host_mac();
    let mut filter = XdpFilter::load().expect("load");
    filter
        .configure(&FilterConfig {
            addr: HOST_ADDR,
            prefix_len: 32,
            ports: vec![PETREL_PORT],
            own_arp: false,
        })
        .expect("configure");
    filter.attach(HOST_IF, AttachMode::Driver).expect("attach");
    let index = if_index(HOST_IF).expect("lab interface");
    let mut sockets: Vec<Xsk> = (0..2)
        .map(|queue| {
            let xsk = Xsk::bind(
                index,
                queue,
                XskConfig {
                    frame_count: 512,
                    ring_size: 128,
                    tx_reserve: 64,
                    ..XskConfig::default()
                },
            )
            .expect("AF_XDP socket");
            filter.register_socket(queue, &xsk).expect("register");
            xsk
        })
        .collect();

    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    // Lends the shard's sockets their TCP buffers while they are polled.
    let mut pool = petrel_dataplane::xdp::buffers::BufferPool::new(4096, 4096, 64);
    let mut shard = TcpShard::new(
        ShardConfig {
            addr: HOST_ADDR,
            port: PETREL_PORT,
            ..ShardConfig::default()
        },
        now_ms(),
    );
    let mut neighbours = NeighbourTable::new(NeighbourConfig::default());

    let client = in_ns(&[
        "timeout",
        "5",
        "bash",
        "-c",
        &format!(
            "exec 3<>/dev/tcp/{HOST_ADDR}/{PETREL_PORT}; echo hello-petrel >&3; \
             read -t 3 line <&3; echo \"$line\""
        ),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("client");

    let mut echoed = 0usize;
    let mut sent_frames = 0;
    let mut scratch = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(5) {
        for xsk in &mut sockets {
            xsk.receive(64, |frame| {
                if let Ok(Inbound::Tcp {
                    src_mac,
                    src,
                    ip_packet,
                }) = classify(frame, HOST_ADDR)
                {
                    neighbours.learn(src, src_mac, now_ms());
                    shard.push_rx(ip_packet);
                }
            });
        }
        shard.poll(now_ms(), &mut pool);
        for socket in shard.connections() {
            while socket.can_recv() && socket.can_send() {
                let Ok(n) = socket.recv_slice(&mut scratch) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                echoed += socket.send_slice(&scratch[..n]).unwrap_or(0);
            }
        }
        shard.poll(now_ms(), &mut pool);
        while let Some(packet) = shard.pop_tx() {
            let dst = Ipv4Packet::new_checked(&packet[..]).map(|p| p.dst_addr());
            if let Ok(dst) = dst
                && let Some(mac) = neighbours.lookup(dst, now_ms())
                && sockets[0].send(|buf| frame_ipv4(&packet, our_mac, mac, buf))
            {
                sent_frames += 1;
            }
            shard.recycle_tx(packet);
        }
        sockets[0].flush_tx().expect("kick tx");
        if echoed > 0 && shard.connection_count() == 0 {
            break;
        }
        let _ = sockets[0].wait_readable(10);
    }
    let output = client.wait_with_output().expect("client output");
    let line = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "userspace TCP: echoed {echoed} bytes in {sent_frames} frames; client got {:?}; \
         filter: {:?}",
        line.trim(),
        filter.counters()
    );
    assert_eq!(line.trim(), "hello-petrel", "the client read its line back");
}

/// The whole AF_XDP transport behind the boundary: a kernel-TCP client connects, sends
/// bytes that are not a Petrel frame, and gets what the "control plane" (this test) sends
/// back through the router before it closes the connection.
fn check_transport_boundary() {
    use petrel_conn::TransportEvent as Event;
    use petrel_dataplane::Command;
    use petrel_dataplane::xdp::transport::XdpConfig;

    let mut config = XdpConfig::new(HOST_IF, HOST_ADDR, PETREL_PORT);
    config.queues = vec![0, 1];
    config.cores = vec![None, None];
    config.attach = AttachMode::Driver;
    config.shards_per_queue = 4;
    config.xsk = XskConfig {
        frame_count: 512,
        ring_size: 128,
        tx_reserve: 64,
        ..XskConfig::default()
    };
    let (transport, cores, events) = start_threaded(&config);

    let client = in_ns(&[
        "timeout",
        "5",
        "bash",
        "-c",
        &format!(
            "exec 3<>/dev/tcp/{HOST_ADDR}/{PETREL_PORT}; printf 'not-a-petrel-frame!' >&3; \
             read -t 4 -N 4 reply <&3; echo \"$reply\""
        ),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("client");

    let next = |what: &str| {
        events
            .recv_timeout(Duration::from_secs(4))
            .unwrap_or_else(|_| panic!("no {what} event"))
    };
    let Event::Opened { conn } = next("Opened") else {
        panic!("first event must be Opened");
    };
    let Event::FrameError { conn: errored, .. } = next("FrameError") else {
        panic!("garbage must be a FrameError");
    };
    assert_eq!(errored, conn);
    command(
        &cores,
        Command::Send {
            conn,
            bytes: bytes::Bytes::from_static(b"pong"),
        },
    );
    command(&cores, Command::Close { conn });

    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !closed {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Closed { conn: c }) if c == conn => closed = true,
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(_) => {}
        }
    }
    let output = client.wait_with_output().expect("client output");
    let reply = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "transport: closed {closed}, client got {:?}, filter {:?}",
        reply.trim(),
        transport.filter_counters()
    );
    // The client's FIN may still be on its way when the server's close is reported
    // (under load, in CI): give the running cores a moment to classify it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut rx = transport.rx_counters();
    while rx.tcp < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        rx = transport.rx_counters();
    }
    eprintln!("transport rx: {rx:?}");
    stop_threaded(transport, cores);
    assert!(
        rx.tcp >= 4,
        "handshake, data and FIN reached the classifier"
    );
    assert_eq!(rx.malformed_total(), 0);
    assert_eq!(
        reply.trim(),
        "pong",
        "the client read what the control plane sent"
    );
    assert!(closed, "Closed reported after our close");
}

/// `n` kernel-TCP clients connect at once to the lab's two queues served by
/// `core_count` cores; every one is accepted (no RST from a listener taken by another SYN), answered
/// through the router and closed.
fn check_many_concurrent_connections(n: usize, core_count: usize) {
    use petrel_conn::TransportEvent as Event;
    use petrel_dataplane::Command;
    use petrel_dataplane::xdp::transport::XdpConfig;

    let mut config = XdpConfig::new(HOST_IF, HOST_ADDR, PETREL_PORT);
    config.queues = vec![0, 1];
    config.cores = vec![None; core_count];
    config.attach = AttachMode::Driver;
    config.shards_per_queue = 8;
    let (transport, cores, events) = start_threaded(&config);

    let script = format!(
        "for i in $(seq {n}); do ( exec 3<>/dev/tcp/{HOST_ADDR}/{PETREL_PORT} && \
           printf 'not-a-petrel-frame!' >&3 && read -t 8 -N 4 r <&3 && \
           [ \"$r\" = pong ] && echo ok ) & done; wait"
    );
    let clients = in_ns(&["timeout", "10", "bash", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("clients");

    let (mut opened, mut closed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && closed < n {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Opened { .. }) => opened += 1,
            // The first bytes of each client: answer and close.
            Ok(Event::FrameError { conn, .. }) => {
                command(
                    &cores,
                    Command::Send {
                        conn,
                        bytes: bytes::Bytes::from_static(b"pong"),
                    },
                );
                command(&cores, Command::Close { conn });
            }
            Ok(Event::Closed { .. }) => closed += 1,
            Ok(_) | Err(_) => {}
        }
    }
    let output = clients.wait_with_output().expect("clients' output");
    let ok = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| *l == "ok")
        .count();
    eprintln!(
        "{n} concurrent clients, {core_count} core(s): opened {opened}, closed {closed}, answered \
         {ok}; rx {:?}",
        transport.rx_counters()
    );
    stop_threaded(transport, cores);
    assert_eq!(opened, n, "every client was accepted");
    assert_eq!(ok, n, "every client read its reply");
}

/// Starts the AF_XDP transport with each queue's core on a thread of its own behind
/// channels (what the server's per-core loop does on one thread, here driven by the test).
fn start_threaded(
    config: &petrel_dataplane::xdp::transport::XdpConfig,
) -> (
    petrel_dataplane::xdp::transport::XdpTransport,
    Vec<petrel_dataplane::Threaded>,
    crossbeam_channel::Receiver<petrel_conn::TransportEvent>,
) {
    let (events_tx, events) = crossbeam_channel::bounded(4096);
    let (transport, cores) = petrel_dataplane::xdp::transport::XdpTransport::start(config)
        .expect("start the AF_XDP transport");
    let threads = cores
        .into_iter()
        .map(|core| petrel_dataplane::spawn_threaded(core, events_tx.clone()).expect("core"))
        .collect();
    (transport, threads, events)
}

/// Sends `command` to the core owning its connection.
fn command(cores: &[petrel_dataplane::Threaded], command: petrel_dataplane::Command) {
    let conn = match &command {
        petrel_dataplane::Command::Send { conn, .. }
        | petrel_dataplane::Command::Close { conn }
        | petrel_dataplane::Command::NoteCongestion { conn } => *conn,
        petrel_dataplane::Command::Shutdown => return,
    };
    cores[usize::from(conn.core())].command(command);
}

/// Shuts every core down (their sockets close), then the transport (the filter detaches).
fn stop_threaded(
    transport: petrel_dataplane::xdp::transport::XdpTransport,
    cores: Vec<petrel_dataplane::Threaded>,
) {
    for core in cores {
        core.shutdown();
    }
    drop(transport);
}

/// Raw Ethernet frames, one per line in hex, sent from the namespace's end of the veth with
/// an AF_PACKET socket (Python's standard library: no unsafe code in the test).
fn inject_frames(frames: &[Vec<u8>]) {
    use std::io::Write;
    let script = format!(
        "import socket, sys\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(({PEER_IF:?}, 0))\n\
         for line in sys.stdin.read().split():\n    s.send(bytes.fromhex(line))\n"
    );
    let mut child = in_ns(&["python3", "-c", &script])
        .stdin(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 for raw frames");
    let mut stdin = child.stdin.take().expect("stdin");
    for frame in frames {
        writeln!(stdin, "{}", hex(frame)).expect("write frame");
    }
    drop(stdin);
    assert!(
        child.wait().expect("python3").success(),
        "raw frame injection failed"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac_of(iface: &str, netns: Option<&str>) -> EthernetAddress {
    let text = match netns {
        None => std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).expect("MAC"),
        Some(ns) => {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "cat",
                    &format!("/sys/class/net/{iface}/address"),
                ])
                .output()
                .expect("peer MAC");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).expect("MAC byte"))
        .collect();
    EthernetAddress::from_bytes(&bytes)
}

/// A well-formed Ethernet/IPv4/TCP SYN from the peer to Petrel's port, with correct
/// checksums, that the variants below break one field at a time.
fn valid_syn(src_mac: EthernetAddress, dst_mac: EthernetAddress, src_port: u16) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Repr, TcpControl, TcpPacket,
        TcpRepr, TcpSeqNumber,
    };
    let src_ip: Ipv4Addr = PEER_ADDR.parse().expect("peer address");
    let tcp = TcpRepr {
        src_port,
        dst_port: PETREL_PORT,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1),
        ack_number: None,
        window_len: 1024,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src_ip,
        dst_addr: HOST_ADDR,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let caps = ChecksumCapabilities::default();
    let mut ip_packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut ip_packet, &caps);
    let mut tcp_packet = TcpPacket::new_unchecked(ip_packet.payload_mut());
    tcp.emit(&mut tcp_packet, &src_ip.into(), &HOST_ADDR.into(), &caps);
    buf
}

/// Malformed frames addressed to Petrel — truncated IP and TCP headers, bad lengths, bad
/// checksums, fragments, garbage TCP options — are dropped by the filter or the poller's
/// classifier, each counted under its reason, and the transport keeps serving.
fn check_malformed_frames_are_dropped_and_counted() {
    use petrel_dataplane::xdp::transport::XdpConfig;
    use petrel_dataplane::xdp::wire::Malformed;

    let mut config = XdpConfig::new(HOST_IF, HOST_ADDR, PETREL_PORT);
    config.queues = vec![0, 1];
    config.cores = vec![None, None];
    config.attach = AttachMode::Driver;
    config.shards_per_queue = 4;
    let (transport, cores, events) = start_threaded(&config);

    let (ours, peer) = (mac_of(HOST_IF, None), mac_of(PEER_IF, Some(NS)));
    let syn = |port| valid_syn(peer, ours, port);
    const ETH: usize = 14;
    let mut frames = Vec::new();
    // The filter drops: an IPv4 header with IHL < 5 …
    let mut f = syn(40_001);
    f[ETH] = 0x44;
    frames.push(f);
    // … a TCP header cut off after 8 bytes (the IP total length is left as it was) …
    let f = syn(40_002);
    frames.push(f[..ETH + 20 + 8].to_vec());
    // … and a fragment (more-fragments set).
    let mut f = syn(40_003);
    f[ETH + 6] |= 0x20;
    frames.push(f);
    // The classifier drops: a wrong IP header checksum …
    let mut f = syn(40_004);
    f[ETH + 10] ^= 0xff;
    frames.push(f);
    // … a wrong TCP checksum …
    let mut f = syn(40_005);
    f[ETH + 20 + 16] ^= 0xff;
    frames.push(f);
    // … an IP total length longer than the frame …
    let mut f = syn(40_006);
    f[ETH + 2] = 0x05;
    frames.push(f);
    // … and a TCP data offset pointing past the segment (options that are not there).
    let mut f = syn(40_007);
    f[ETH + 20 + 12] = 0xf0;
    frames.push(f);
    // … and a TCP option with an impossible length (MSS, length 0), checksum recomputed
    // so that only the options are wrong.
    let mut f = syn(40_008);
    f[ETH + 20 + 21] = 0;
    {
        let src: Ipv4Addr = PEER_ADDR.parse().expect("peer address");
        let mut segment = smoltcp::wire::TcpPacket::new_unchecked(&mut f[ETH + 20..]);
        segment.fill_checksum(&src.into(), &HOST_ADDR.into());
    }
    frames.push(f);
    inject_frames(&frames);

    // Then a real client still gets in.
    let connected = in_ns(&[
        "timeout",
        "5",
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{HOST_ADDR}/{PETREL_PORT}"),
    ])
    .status()
    .expect("client");
    let opened = std::iter::from_fn(|| events.recv_timeout(Duration::from_secs(2)).ok())
        .any(|e| matches!(e, petrel_conn::TransportEvent::Opened { .. }));

    let filter = transport.filter_counters().expect("filter counters");
    let rx = transport.rx_counters();
    eprintln!("malformed injection: filter {filter:?}, classifier {rx:?}");
    stop_threaded(transport, cores);
    assert!(
        connected.success() && opened,
        "a valid client connects afterwards"
    );
    assert_eq!(filter.fragments, 1, "the fragment was dropped in XDP");
    assert!(
        filter.malformed >= 2,
        "short IP and TCP headers dropped in XDP: {filter:?}"
    );
    let dropped = |reason: Malformed| rx.malformed[reason as usize];
    assert_eq!(dropped(Malformed::BadIpChecksum), 1, "{rx:?}");
    assert_eq!(dropped(Malformed::BadTcpChecksum), 1, "{rx:?}");
    assert_eq!(dropped(Malformed::BadIpLength), 1, "{rx:?}");
    assert_eq!(dropped(Malformed::TruncatedTcp), 1, "{rx:?}");
    assert_eq!(dropped(Malformed::BadTcpHeader), 1, "{rx:?}");
}
