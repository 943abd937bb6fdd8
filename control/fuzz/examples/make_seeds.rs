//! Writes the seed corpora of `token_verify` and `control_ops` into `seeds/`:
//! `cargo run --example make_seeds` from `control/fuzz`. Each seed is a real scenario
//! written with the same encoders the targets decode with, so it still means what its
//! name says after a format change (run this again and commit the result).

use std::path::Path;

use bytes::BytesMut;
use petrel_control::Timestamp;
use petrel_control::token::{self, TokenSpec};
use petrel_control_fuzz::ops::{Step, T0, TokenKind, World, decode, encode};
use petrel_control_fuzz::token::{EditedToken, REVOKED_ID, ring, ring_signing};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::{Frame, pb};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the seed directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn mint(keys: &token::KeyRing, device: &str, issued: u64, ttl_ms: u64, id: [u8; 16]) -> String {
    token::mint(
        keys,
        &TokenSpec {
            user: 7,
            device,
            platform: pb::Platform::Android,
            issued_at: Timestamp(issued),
            ttl: std::time::Duration::from_millis(ttl_ms),
            token_id: id,
        },
    )
    .expect("seed tokens mint")
    .token
}

fn token_seeds(dir: &Path) {
    let main = ring();
    let old = ring_signing("old").expect("the ring has `old`");
    let text = |t: &str| [&[0u8][..], t.as_bytes()].concat();
    write(
        dir,
        "text-valid-main",
        &text(&mint(&main, "phone", T0.0, 3_600_000, [1; 16])),
    );
    write(
        dir,
        "text-valid-old-key",
        &text(&mint(&old, "laptop", T0.0, 60_000, [2; 16])),
    );
    write(
        dir,
        "text-revoked",
        &text(&mint(&main, "phone", T0.0, 60_000, REVOKED_ID)),
    );
    write(dir, "text-expired", &text(&mint(&main, "x", 0, 0, [3; 16])));
    let long = "d".repeat(token::MAX_DEVICE_LEN);
    write(
        dir,
        "text-longest-device",
        &text(&mint(&main, &long, T0.0, 1, [4; 16])),
    );
    write(dir, "text-garbage", &text("AQIDBA"));
    write(dir, "text-not-base64", &text("not a token!"));
    let edits = [
        ("edit-mac", 200u16, 0x80 | 1, "phone", 3_600_000u32),
        ("edit-version", 0, 0x80 | 9, "phone", 3_600_000),
        ("edit-key-id", 3, 0x80 | 40, "tablet", 60_000),
        ("edit-device", 70, b'!', "desktop-1", 60_000),
        ("edit-zero-ttl", 10, 0x80 | 2, "w", 0),
    ];
    for (name, position, byte, device, ttl_ms) in edits {
        let edit = EditedToken {
            user: 42,
            platform: 2,
            issued_at: T0.0,
            ttl_ms,
            token_id: [9; 16],
            device: device.into(),
            position,
            byte,
        };
        write(dir, name, &[&[1u8][..], &edit.encode()].concat());
    }
    let too_long = EditedToken {
        user: 1,
        platform: 1,
        issued_at: T0.0,
        ttl_ms: 1_000,
        token_id: [5; 16],
        device: "z".repeat(token::MAX_DEVICE_LEN + 1),
        position: 0,
        byte: 0,
    };
    write(
        dir,
        "edit-device-too-long",
        &[&[1u8][..], &too_long.encode()].concat(),
    );
}

fn login(conn: u8, user: u8) -> Step {
    Step::Login {
        conn,
        user,
        device: 0,
        platform: 1,
        token: TokenKind::Valid,
        ttl_s: 600,
    }
}

fn send(conn: u8, kind: u8, target: u8, client_msg_id: u8) -> Step {
    Step::Send {
        conn,
        kind,
        target,
        client_msg_id,
    }
}

fn wire(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let encoder = FrameEncoder::default();
    for frame in frames {
        encoder.encode(frame, &mut buf).expect("seed frames encode");
    }
    buf.to_vec()
}

fn ops_seeds(dir: &Path) {
    // Users are 1..=4: `user: 0` is user 1, `target: 1` as a 1:1 peer is user 2.
    let two_users = vec![Step::Open, login(0, 0), Step::Open, login(1, 1)];
    let scenarios: Vec<(&str, Vec<Step>)> = vec![
        ("single-chat", {
            let mut s = two_users.clone();
            s.extend([
                send(0, 0, 1, 1),
                send(0, 0, 1, 1), // a retry: duplicate
                send(1, 0, 0, 1),
                Step::Sync {
                    conn: 1,
                    cursor: 0,
                    limit: 5,
                },
                Step::History {
                    conn: 0,
                    peer: 1,
                    before: 0,
                },
                Step::Op {
                    conn: 1,
                    op: 8,
                    a: 0,
                    b: 0,
                },
                Step::Logout {
                    conn: 0,
                    revoke: false,
                },
            ]);
            s
        }),
        ("group-held-storage-close-in-flight", {
            let mut s = two_users.clone();
            s.extend([
                Step::Op {
                    conn: 0,
                    op: 0,
                    a: 1,
                    b: 2,
                },
                Step::HoldStorage,
                send(0, 1, 0, 5),
                send(1, 1, 0, 6),
                Step::Close { conn: 0 },
                Step::CompleteStorage { n: 1 },
                Step::Advance { ms: 5_000 },
                Step::HoldStorage,
            ]);
            s
        }),
        ("storage-failures", {
            let mut s = two_users.clone();
            s.extend([
                Step::HoldStorage,
                send(0, 0, 1, 9),
                Step::FailStorage { kind: 0 },
                send(0, 0, 1, 9),
                Step::FailStorage { kind: 1 },
                send(1, 0, 0, 3),
                Step::CompleteStorage { n: 4 },
                Step::HoldStorage,
            ]);
            s
        }),
        ("chatroom-slow-reader", {
            let mut s = two_users.clone();
            s.extend([
                Step::Op {
                    conn: 0,
                    op: 4,
                    a: 0,
                    b: 0,
                },
                Step::Op {
                    conn: 1,
                    op: 4,
                    a: 0,
                    b: 0,
                },
                Step::Slow {
                    conn: 1,
                    slow: true,
                },
            ]);
            for id in 0..30 {
                s.push(send(0, 2, 0, id));
            }
            s.extend([
                Step::Slow {
                    conn: 1,
                    slow: false,
                },
                Step::Op {
                    conn: 1,
                    op: 5,
                    a: 0,
                    b: 0,
                },
            ]);
            s
        }),
        ("public-account", {
            let mut s = two_users.clone();
            s.extend([
                Step::Op {
                    conn: 0,
                    op: 9,
                    a: 0,
                    b: 0,
                },
                Step::Op {
                    conn: 1,
                    op: 6,
                    a: 0,
                    b: 0,
                },
                send(0, 3, 0, 1),
                Step::Op {
                    conn: 1,
                    op: 7,
                    a: 0,
                    b: 0,
                },
            ]);
            s
        }),
        ("timers-renew-expiry-heartbeat", {
            vec![
                Step::Open,
                Step::Login {
                    conn: 0,
                    user: 2,
                    device: 1,
                    platform: 4,
                    token: TokenKind::OldKey,
                    ttl_s: 90,
                },
                Step::Renew { conn: 0 },
                Step::Ping { conn: 0 },
                Step::Advance { ms: 100_000 },
                Step::Open,
                Step::Advance { ms: 400_000 },
            ]
        }),
        ("bad-logins", {
            let mut s = vec![Step::Open];
            for token in [TokenKind::Expired, TokenKind::OtherUser, TokenKind::Garbage] {
                s.push(Step::Open);
                s.push(Step::Login {
                    conn: s.len() as u8 / 2,
                    user: 3,
                    device: 0,
                    platform: 1,
                    token,
                    ttl_s: 60,
                });
            }
            s.push(send(0, 0, 1, 1)); // before login
            s
        }),
        ("multi-device-kick-revoke", {
            let mut s = vec![Step::Open, login(0, 0), Step::Open, login(1, 0)];
            s.extend([
                Step::Open,
                Step::Login {
                    conn: 2,
                    user: 0,
                    device: 1,
                    platform: 4,
                    token: TokenKind::Valid,
                    ttl_s: 60,
                },
                Step::Kick { user: 0 },
                Step::Open,
                login(3, 1),
                Step::Revoke { user: 1 },
                Step::Logout {
                    conn: 3,
                    revoke: true,
                },
            ]);
            s
        }),
        ("raw-frames", {
            let mut s = vec![Step::Open];
            let frames = wire(&[
                Frame::new(1, pb::Ping { client_time_ms: 5 }),
                Frame::new(
                    2,
                    pb::Login {
                        token: "AQIDBA".into(),
                        user_id: 1,
                        device_id: "raw".into(),
                        platform: 1,
                        client_version: "seed".into(),
                        attempt: 0,
                    },
                ),
            ]);
            // Split mid-frame so reassembly across steps is exercised.
            let (a, b) = frames.split_at(frames.len() / 2);
            s.push(Step::Raw {
                conn: 0,
                bytes: a.to_vec(),
            });
            s.push(Step::Raw {
                conn: 0,
                bytes: b.to_vec(),
            });
            s.push(Step::Open);
            s.push(login(1, 0));
            s.push(Step::Raw {
                conn: 1,
                bytes: wire(&[
                    Frame::new(
                        3,
                        pb::SyncRequest {
                            inbox_cursor: 0,
                            cursors: Vec::new(),
                            limit: 3,
                            inbox_position: Vec::new(),
                        },
                    ),
                    Frame::response(4, pb::Pong::default()),
                ]),
            });
            s.push(Step::Raw {
                conn: 1,
                bytes: b"XX\x09garbage".to_vec(),
            });
            s
        }),
    ];
    for (name, steps) in scenarios {
        let bytes = encode(&steps);
        // Played here too: a seed that trips an invariant is a bug to fix, not a seed.
        let mut world = World::new();
        world.play(&decode(&bytes));
        println!("{name}: {:?}", world.seen());
        write(dir, name, &bytes);
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    token_seeds(&root.join("token_verify"));
    ops_seeds(&root.join("control_ops"));
    println!("seeds written under {}", root.display());
}
