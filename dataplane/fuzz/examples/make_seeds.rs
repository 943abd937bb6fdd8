//! Writes the seed corpus of `xdp_ingress` into `seeds/xdp_ingress/`:
//! `cargo run --example make_seeds` from `dataplane/fuzz`. The peer is played against the
//! same [`Lab`] the target runs, so each handshake's ACK acknowledges the SYN-ACK the
//! shards really sent, and data segments carry real Petrel frames.

use std::path::Path;

use bytes::BytesMut;
use petrel_dataplane::xdp::neighbour::{ARP_FRAME_LEN, arp_request};
use petrel_dataplane_fuzz::{Lab, OUR_MAC, OURS, PEER, PEER_MAC, PORT, Record, Timed, encode};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::{Frame, pb};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// A segment from PEER:`port` to OURS:PORT in an Ethernet frame, checksums filled in.
fn segment(port: u16, seq: u32, ack: Option<u32>, control: TcpControl, payload: &[u8]) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: port,
        dst_port: PORT,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64240,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: control == TcpControl::Syn,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: PEER,
        dst_addr: OURS,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + ip.buffer_len() + tcp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: PEER_MAC,
        dst_addr: OUR_MAC,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(PEER),
        &IpAddress::Ipv4(OURS),
        &ChecksumCapabilities::default(),
    );
    buf
}

fn arp(target: Ipv4Address) -> Vec<u8> {
    let mut buf = vec![0u8; ARP_FRAME_LEN];
    let len = arp_request(PEER_MAC, PEER, target, &mut buf).expect("an ARP frame fits");
    buf.truncate(len);
    buf
}

/// The SYN-ACK to `port` among `sent`, as (its seq, its ack).
fn syn_ack(sent: &[Vec<u8>], port: u16) -> Option<(u32, u32)> {
    sent.iter().find_map(|f| {
        let eth = EthernetFrame::new_checked(&f[..]).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        (tcp.dst_port() == port && tcp.syn() && tcp.ack())
            .then(|| (tcp.seq_number().0 as u32, tcp.ack_number().0 as u32))
    })
}

fn frame(record: Record) -> Timed {
    Timed {
        step: 1,
        poll: true,
        record,
    }
}

fn rx(bytes: Vec<u8>) -> Timed {
    frame(Record::Frame {
        fix_checksums: false,
        bytes,
    })
}

fn petrel_frames() -> Vec<u8> {
    let mut buf = BytesMut::new();
    let encoder = FrameEncoder::default();
    for f in [
        Frame::new(
            1,
            pb::Login {
                token: "AQIDBA".into(),
                user_id: 7,
                device_id: "xdp".into(),
                platform: 1,
                client_version: "seed".into(),
                attempt: 0,
            },
        ),
        Frame::new(2, pb::Ping { client_time_ms: 9 }),
    ] {
        encoder.encode(&f, &mut buf).expect("seed frames encode");
    }
    buf.to_vec()
}

/// Plays `records` on a fresh lab; returns what was sent after each.
fn play(records: &[Timed]) -> (Lab, Vec<Vec<Vec<u8>>>) {
    let mut lab = Lab::new();
    let sent = records.iter().map(|r| lab.feed(r)).collect();
    (lab, sent)
}

/// SYN from `port`, then (learning the SYN-ACK) the handshake's ACK: the records so far.
fn handshake(mut records: Vec<Timed>, port: u16, isn: u32) -> Vec<Timed> {
    records.push(rx(segment(port, isn, None, TcpControl::Syn, &[])));
    let (_, sent) = play(&records);
    let (their, _) = syn_ack(sent.last().expect("played"), port).expect("a SYN-ACK");
    records.push(rx(segment(
        port,
        isn + 1,
        Some(their + 1),
        TcpControl::None,
        &[],
    )));
    records
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/xdp_ingress");
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let mut seeds: Vec<(&str, Vec<Timed>)> = Vec::new();

    seeds.push((
        "arp",
        vec![rx(arp(OURS)), rx(arp(Ipv4Address::new(10, 77, 0, 9)))],
    ));

    // A whole connection: handshake, Petrel frames in (split over two segments), our
    // write, the peer's FIN, our close, time for the last ACKs.
    let mut full = handshake(vec![rx(arp(OURS))], 40000, 1000);
    let data = petrel_frames();
    let (a, b) = data.split_at(data.len() / 2);
    let (_, sent) = play(&full);
    let (their, _) = syn_ack(&sent[1], 40000).expect("a SYN-ACK");
    let ack = Some(their + 1);
    full.push(rx(segment(40000, 1001, ack, TcpControl::Psh, a)));
    full.push(rx(segment(
        40000,
        1001 + a.len() as u32,
        ack,
        TcpControl::Psh,
        b,
    )));
    full.push(frame(Record::Write { conn: 0, len: 18 }));
    let fin_seq = 1001 + data.len() as u32;
    full.push(rx(segment(
        40000,
        fin_seq,
        Some(their + 1 + 18),
        TcpControl::Fin,
        &[],
    )));
    full.push(frame(Record::Close { conn: 0 }));
    full.push(Timed {
        step: 6,
        poll: true,
        record: Record::Idle,
    });
    seeds.push(("connection-login-ping-fin", full));

    // Many SYNs in one receive batch: deferred behind the listener, refused past the
    // shard limit.
    let mut storm = Vec::new();
    for port in 41000..41008u16 {
        storm.push(Timed {
            step: 0,
            poll: port == 41007,
            record: Record::Frame {
                fix_checksums: false,
                bytes: segment(port, 5000, None, TcpControl::Syn, &[]),
            },
        });
    }
    seeds.push(("syn-storm-one-batch", storm));

    // Established, then the peer resets; and an abort from our side.
    let mut reset = handshake(Vec::new(), 42000, 7);
    let (_, sent) = play(&reset);
    let (their, _) = syn_ack(&sent[0], 42000).expect("a SYN-ACK");
    reset.push(rx(segment(42000, 8, Some(their + 1), TcpControl::Rst, &[])));
    let mut reset = handshake(reset, 42001, 70);
    reset.push(frame(Record::Abort { conn: 0 }));
    seeds.push(("reset-and-abort", reset));

    // SYN, the handshake's ACK and a RST in one receive batch: accepted and closed
    // within a single poll.
    let (_, sent) = play(&[rx(segment(43000, 1, None, TcpControl::Syn, &[]))]);
    let (their, _) = syn_ack(&sent[0], 43000).expect("a SYN-ACK");
    let batched = vec![
        Timed {
            step: 1,
            poll: false,
            record: Record::Frame {
                fix_checksums: false,
                bytes: segment(43000, 1, None, TcpControl::Syn, &[]),
            },
        },
        Timed {
            step: 0,
            poll: false,
            record: Record::Frame {
                fix_checksums: false,
                bytes: segment(43000, 2, Some(their + 1), TcpControl::None, &[]),
            },
        },
        Timed {
            step: 0,
            poll: true,
            record: Record::Frame {
                fix_checksums: false,
                bytes: segment(43000, 2, Some(their + 1), TcpControl::Rst, &[]),
            },
        },
    ];
    seeds.push(("open-and-reset-in-one-poll", batched));

    // Broken frames; `fix_checksums` makes the bad-length ones reach the length checks.
    let good = segment(44000, 1, None, TcpControl::Syn, &[]);
    let mut fragment = good.clone();
    fragment[ETHERNET_HEADER_LEN + 6] = 0x20; // more fragments
    let mut bad_options = good.clone();
    bad_options[ETHERNET_HEADER_LEN + 20 + 21] = 1; // MSS option of length 1
    seeds.push((
        "malformed",
        vec![
            rx(good[..10].to_vec()),
            rx(good[..30].to_vec()),
            frame(Record::Frame {
                fix_checksums: true,
                bytes: fragment,
            }),
            frame(Record::Frame {
                fix_checksums: true,
                bytes: bad_options,
            }),
            rx(vec![0xff; 60]),
        ],
    ));

    for (name, records) in seeds {
        let (mut lab, _) = play(&records);
        lab.settle();
        println!(
            "{name}: {} connections live, {} Petrel frames decoded, {} decode errors",
            lab.connections(),
            lab.frames_decoded,
            lab.frame_errors
        );
        std::fs::write(dir.join(name), encode(&records)).expect("write a seed");
    }
}
