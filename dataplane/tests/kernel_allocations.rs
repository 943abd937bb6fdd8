//! Heap allocations of the kernel transport per message in the steady state: a client
//! sends `SendMessage` frames, the core reads and decodes each into a `TransportEvent`,
//! and writes an answer back (a shared, already-encoded frame, as the control plane hands
//! it over). Only the core's calls are counted (dhat's testing mode), not the client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_conn::{ConnId, TransportEvent};
use petrel_dataplane::CoreIo;
use petrel_dataplane::kernel::{self, KernelConfig, KernelCore};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::{Frame, pb};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Runs `f`, adding the heap blocks it allocated to `count`.
fn counted<T>(count: &mut u64, f: impl FnOnce() -> T) -> T {
    let before = dhat::HeapStats::get().total_blocks;
    let out = f();
    *count += dhat::HeapStats::get().total_blocks - before;
    out
}

/// One loop iteration: wait a little, read, write; counted.
fn pump(core: &mut KernelCore, events: &mut Vec<TransportEvent>, allocs: &mut u64) {
    counted(allocs, || {
        core.wait(Some(Duration::from_millis(5))).unwrap();
        core.receive(events);
        core.transmit(events);
    });
}

#[test]
fn no_allocation_per_message_on_the_kernel_transport() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let config = KernelConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        cores: vec![None],
        ..KernelConfig::default()
    };
    let (mut cores, addrs) = kernel::bind(&config).expect("bind");
    let mut core = cores.pop().unwrap();
    let mut client = TcpStream::connect(addrs[0]).unwrap();
    client.set_nodelay(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut events = Vec::with_capacity(64);
    let mut ignored = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let conn: ConnId = loop {
        assert!(Instant::now() < deadline, "no Opened");
        pump(&mut core, &mut events, &mut ignored);
        if let Some(conn) = events.drain(..).find_map(|e| match e {
            TransportEvent::Opened { conn } => Some(conn),
            _ => None,
        }) {
            break conn;
        }
    };
    let encoder = FrameEncoder::default();
    let request = encoder
        .encode_to_bytes(&Frame::new(
            2,
            pb::SendMessage {
                client_msg_id: 1,
                conversation: Some(pb::ConversationId {
                    kind: pb::ConversationKind::Single as i32,
                    id: 2,
                }),
                content: Bytes::from_static(b"\x0a\x0c\x0a\x0ahello there"),
                ..Default::default()
            },
        ))
        .unwrap();
    // The answer, encoded once and shared, as the control plane's frames are.
    let answer: Bytes = encoder
        .encode_to_bytes(&Frame::response(
            2,
            pb::Ack {
                client_msg_id: 1,
                conversation: None,
                seq: 7,
                server_time_ms: 1,
                duplicate: false,
            },
        ))
        .unwrap();
    let mut reply = vec![0u8; answer.len()];
    let mut round = |allocs: &mut u64| {
        client.write_all(&request).unwrap();
        let mut frames = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while frames == 0 {
            assert!(Instant::now() < deadline, "no frame");
            pump(&mut core, &mut events, allocs);
            for event in events.drain(..) {
                match event {
                    TransportEvent::Frame { conn: c, frame } if c == conn => {
                        assert!(matches!(frame.body, petrel_proto::Body::SendMessage(_)));
                        frames += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        counted(allocs, || core.send(conn, answer.clone()));
        pump(&mut core, &mut events, allocs);
        client.read_exact(&mut reply).unwrap();
        assert_eq!(reply, answer);
    };
    // Warm-up: the read buffer and the queues reach their steady size.
    for _ in 0..1_000 {
        round(&mut ignored);
    }
    let mut allocs = 0;
    let n = 2_000;
    for _ in 0..n {
        round(&mut allocs);
    }
    println!("kernel transport: {allocs} allocations for {n} messages");
    assert!(
        allocs * 20 <= n,
        "{allocs} allocations for {n} messages: something allocates per message"
    );
}
