//! The DPDK queue plumbing against a real EAL with `net_null` devices (no NIC, no
//! network): ports configured and started, bursts in and out, every mbuf back in its pool,
//! vdevs added and removed at run time, and the poller's device over a real queue.
//!
//! The EAL initialises once per process: nextest runs each test in its own process, and
//! every test here passes the same arguments, so `cargo test` (one process) works too.
#![cfg(feature = "dpdk")]

use petrel_dataplane::dpdk::device::BurstDevice;
use petrel_dataplane::sys::dpdk::port::PortConfig;
use petrel_dataplane::sys::dpdk::{Eal, Port};
use petrel_dataplane::xdp::device::Device;

fn eal() -> &'static Eal {
    let args: Vec<String> = [
        "-l",
        "0",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "--log-level=lib.eal:warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Eal::init(&args).expect("EAL init (as root)")
}

const SMALL: PortConfig = PortConfig {
    queues: 1,
    rx_desc: 256,
    tx_desc: 256,
    mbufs_per_queue: 1023,
};

/// Adds `net_nullN` unless an earlier test in this process did.
fn null_port(eal: &Eal, name: &str) -> u16 {
    if eal.port_by_name(name).is_err() {
        eal.probe(name).expect("probing a net_null vdev");
    }
    eal.port_by_name(name).expect("the probed port")
}

#[test]
#[ignore = "needs root: the DPDK EAL"]
fn bursts_move_mbufs_and_every_one_returns_to_its_pool() {
    let eal = eal();
    let id = null_port(eal, "net_null0");
    let (port, mut queues) = Port::start(eal, id, SMALL).unwrap();
    let mut queue = queues.pop().unwrap();
    let pool = queue.pool();
    let free_at_start = pool.available();

    // net_null "receives" a stream of 64-byte packets.
    let mut received = Vec::new();
    let n = queue.rx_burst(&mut received, 32);
    assert!(n > 0, "net_null always has packets");
    assert_eq!(received.len(), n);
    assert!(
        received
            .iter()
            .all(|m| m.is_contiguous() && m.data().len() == 64)
    );
    assert_eq!(pool.available(), free_at_start - n as u32);
    drop(received);
    assert_eq!(pool.available(), free_at_start, "dropped mbufs went back");

    // Transmit: net_null takes (and frees) everything.
    let mut out = Vec::new();
    for i in 0..10u8 {
        let mut m = queue.alloc().unwrap();
        m.room_mut()[..3].copy_from_slice(&[i, i, i]);
        m.set_len(3);
        assert_eq!(m.data(), &[i, i, i]);
        out.push(m);
    }
    assert_eq!(queue.tx_burst(&mut out), 10);
    assert!(out.is_empty());
    assert_eq!(
        pool.available(),
        free_at_start,
        "the driver freed what it sent"
    );
    assert!(port.stats().unwrap().opackets >= 10);
    assert_eq!(port.mac().unwrap().len(), 6);
}

#[test]
#[ignore = "needs root: the DPDK EAL"]
fn the_poller_device_reads_and_writes_a_real_queue() {
    let eal = eal();
    let id = null_port(eal, "net_null1");
    let (_port, mut queues) = Port::start(eal, id, SMALL).unwrap();
    let queue = queues.pop().unwrap();
    let pool = queue.pool();
    let free_at_start = pool.available();
    let mut device = BurstDevice::new(queue);
    let mut frames = 0;
    assert_eq!(device.receive(100, |f| frames += f.len()), 100);
    assert_eq!(frames, 6400);
    for _ in 0..100 {
        assert!(device.send(|buf| {
            buf[..60].fill(0xab);
            Some(60)
        }));
    }
    device.flush_tx().unwrap();
    assert_eq!(device.tx_pending(), 0);
    assert_eq!(pool.available(), free_at_start);
    assert_eq!(device.counters().received, 100);
    assert_eq!(device.counters().sent, 100);
    assert!(device.readable_fd().is_none(), "DPDK queues are polled");
}

#[test]
#[ignore = "needs root: the DPDK EAL"]
fn a_vdev_comes_and_goes_at_run_time_and_a_second_init_is_refused() {
    let eal = eal();
    assert!(eal.port_by_name("net_null7").is_err());
    eal.probe("net_null7").unwrap();
    let id = eal.port_by_name("net_null7").unwrap();
    let queues = PortConfig {
        queues: 5000,
        ..SMALL
    };
    let e = Port::start(eal, id, queues).unwrap_err();
    assert!(e.to_string().contains("queue pairs"), "{e}");
    {
        let (_port, _queues) = Port::start(eal, id, SMALL).unwrap();
        // Once at a time: a second start would reconfigure it under its queues.
        let e = Port::start(eal, id, SMALL).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    }
    // Port and queues dropped: stopped and closed, so it can be removed.
    eal.remove_vdev("net_null7").unwrap();
    assert!(eal.port_by_name("net_null7").is_err());

    let e = Eal::init(&["--no-pci".to_string()]).unwrap_err();
    assert!(e.to_string().contains("initialises once"), "{e}");
}
