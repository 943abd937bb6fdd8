//! Outbound back-pressure on the kernel transport, driven by hand through `CoreIo` (no
//! threads): a peer that stops reading makes its connection `Congested` once; the
//! transport then reads nothing more from it; when the peer reads, `Drained` comes and
//! what it sent meanwhile is read. A peer that reads nothing while output keeps coming
//! is closed once the limit is passed again after the driver noted the congestion.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_conn::{ConnId, TransportEvent};
use petrel_dataplane::CoreIo;
use petrel_dataplane::kernel::{self, KernelConfig, KernelCore};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::{Frame, pb};

const LIMIT: usize = 64 * 1024;
const CHUNK: usize = 16 * 1024;

fn core() -> (KernelCore, std::net::SocketAddr) {
    let config = KernelConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        cores: vec![None],
        max_outbound_bytes: LIMIT,
        ..KernelConfig::default()
    };
    let (mut cores, addrs) = kernel::bind(&config).expect("bind");
    (cores.pop().unwrap(), addrs[0])
}

/// One loop iteration: wait a little, read, write.
fn pump(core: &mut KernelCore) -> Vec<TransportEvent> {
    let mut events = Vec::new();
    core.wait(Some(Duration::from_millis(5))).unwrap();
    core.receive(&mut events);
    core.transmit(&mut events);
    events
}

fn accept(core: &mut KernelCore, addr: std::net::SocketAddr) -> (TcpStream, ConnId) {
    let client = TcpStream::connect(addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for event in pump(core) {
            if let TransportEvent::Opened { conn } = event {
                return (client, conn);
            }
        }
    }
    panic!("no Opened");
}

/// Sends chunks to a peer that does not read until the transport says `Congested`;
/// returns the bytes sent.
fn send_until_congested(core: &mut KernelCore, conn: ConnId) -> usize {
    let mut sent = 0;
    while sent < 256 << 20 {
        core.send(conn, Bytes::from(vec![b'x'; CHUNK]));
        sent += CHUNK;
        for event in pump(core) {
            match event {
                TransportEvent::Congested { conn: c } if c == conn => return sent,
                TransportEvent::Closed { .. } => panic!("closed before congestion"),
                _ => {}
            }
        }
    }
    panic!("never congested after {sent} bytes");
}

fn ping() -> Vec<u8> {
    FrameEncoder::default()
        .encode_to_bytes(&Frame::new(7, pb::Ping { client_time_ms: 1 }))
        .unwrap()
        .to_vec()
}

#[test]
fn a_congested_connection_is_not_read_until_it_drains() {
    let (mut core, addr) = core();
    let (mut client, conn) = accept(&mut core, addr);
    let sent = send_until_congested(&mut core, conn);

    // The peer sends a request while congested: the transport does not read it.
    client.write_all(&ping()).unwrap();
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        for event in pump(&mut core) {
            assert!(
                !matches!(event, TransportEvent::Frame { .. }),
                "read while congested"
            );
            assert!(!matches!(event, TransportEvent::Closed { .. }), "closed");
        }
    }

    // The peer reads everything: one Drained, then the request that waited.
    client
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut buf = vec![0; 1 << 16];
    let (mut received, mut drained, mut frame_after_drain) = (0, 0, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (received < sent || !frame_after_drain) && Instant::now() < deadline {
        match client.read(&mut buf) {
            Ok(0) => panic!("closed by the server"),
            Ok(n) => received += n,
            Err(_) => {}
        }
        for event in pump(&mut core) {
            match event {
                TransportEvent::Drained { conn: c } if c == conn => drained += 1,
                TransportEvent::Frame { conn: c, frame } if c == conn => {
                    assert_eq!(drained, 1, "the request is read after the drain");
                    assert_eq!(frame.request_id, 7);
                    frame_after_drain = true;
                }
                TransportEvent::Congested { .. } => panic!("congested again"),
                TransportEvent::Closed { .. } => panic!("closed"),
                _ => {}
            }
        }
    }
    assert_eq!(received, sent, "every byte queued reached the peer");
    assert_eq!(drained, 1);
    assert!(frame_after_drain);
}

#[test]
fn a_peer_that_reads_nothing_is_closed_by_what_comes_after_the_congestion_was_noted() {
    let (mut core, addr) = core();
    let (_client, conn) = accept(&mut core, addr);
    send_until_congested(&mut core, conn);
    // Pushes handed over before the driver saw the edge (on a ring from another core,
    // say) all queue, even past twice the limit: the driver could not have known.
    for _ in 0..(3 * LIMIT / CHUNK) {
        core.send(conn, Bytes::from(vec![b'y'; CHUNK]));
    }
    assert!(
        !pump(&mut core)
            .iter()
            .any(|e| matches!(e, TransportEvent::Closed { .. })),
        "closed for output sent before the congestion was noted"
    );
    // What it sends knowing the connection is congested may add up to the limit.
    core.note_congestion(conn);
    for _ in 0..(LIMIT / CHUNK + 1) {
        core.send(conn, Bytes::from(vec![b'y'; CHUNK]));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if pump(&mut core)
            .iter()
            .any(|e| matches!(e, TransportEvent::Closed { conn: c } if *c == conn))
        {
            return;
        }
    }
    panic!("not closed");
}
