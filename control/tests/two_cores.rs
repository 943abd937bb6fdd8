//! Two control planes, one per core, each owning the sessions of its own connections
//! (`Config::core_count` = 2): presence and pushes cross between them as
//! `Action::ToCore` / `Event::FromCore` (`petrel_control::remote`), the way the rings
//! between cores will carry them. Storage is one shared in-memory engine.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use petrel_control::token::{self, TokenSpec};
use petrel_control::{
    Action, Config, ConnId, Control, CoreMessage, Event, KeyRing, OfflineMessage, Timestamp,
};
use petrel_proto::{Body, Frame, FrameDecoder, pb};
use petrel_storage::{Engine, MemEngine, StorageConfig};

const ALICE: u64 = 1;
const BOB: u64 = 2;

struct Cores {
    keys: KeyRing,
    controls: Vec<Control>,
    storage: MemEngine,
    now: Timestamp,
    /// What each connection received, not yet decoded.
    wire: HashMap<ConnId, BytesMut>,
    offline: Vec<OfflineMessage>,
    next_slot: u64,
    next_token: u8,
}

impl Cores {
    fn new() -> Cores {
        let keys = KeyRing::parse("k1 000102030405060708090a0b0c0d0e0f\n").expect("keys");
        let now = Timestamp::from_millis(1_764_000_000_000);
        let controls = (0..2)
            .map(|core| {
                let config = Config {
                    core_index: core,
                    core_count: 2,
                    offline_notices: true,
                    id_seed: 1000 + u64::from(core),
                    ..Config::default()
                };
                Control::new(config, keys.clone(), now)
            })
            .collect();
        let mut cores = Cores {
            keys,
            controls,
            storage: MemEngine::new(StorageConfig::default()),
            now,
            wire: HashMap::new(),
            offline: Vec::new(),
            next_slot: 1,
            next_token: 1,
        };
        cores.run();
        cores
    }

    /// Performs every action of every core until all are quiet; what one core tells
    /// another is delivered after the sender's actions, like a ring drained next
    /// iteration.
    fn run(&mut self) {
        let mut rings: VecDeque<(u8, u8, CoreMessage)> = VecDeque::new();
        loop {
            let mut busy = false;
            for core in 0..self.controls.len() {
                while let Some(action) = self.controls[core].poll_action() {
                    busy = true;
                    match action {
                        Action::Send { conn, bytes } => {
                            assert_eq!(
                                usize::from(conn.core()),
                                core,
                                "{conn} is not core {core}'s"
                            );
                            self.wire.entry(conn).or_default().extend_from_slice(&bytes);
                        }
                        Action::Storage { ticket, request } => {
                            let result = self.storage.execute(request);
                            self.controls[core].handle(self.now, Event::Storage { ticket, result });
                        }
                        Action::ToCore { core: to, message } => {
                            assert_ne!(usize::from(to), core, "a core told itself");
                            rings.push_back((core as u8, to, message));
                        }
                        Action::OfflineMessage(message) => self.offline.push(*message),
                        Action::Close { .. } | Action::NoteCongestion { .. } => {}
                    }
                }
            }
            while let Some((from, to, message)) = rings.pop_front() {
                busy = true;
                self.controls[usize::from(to)].handle(
                    self.now,
                    Event::FromCore {
                        core: from,
                        message,
                    },
                );
            }
            if !busy {
                return;
            }
        }
    }

    /// Opens a connection on `core` and logs `user` in on it.
    fn login(&mut self, core: u8, user: u64, device: &str, platform: pb::Platform) -> ConnId {
        let conn = ConnId::new(core, self.next_slot);
        self.next_slot += 1;
        self.next_token += 1;
        let issued = token::mint(
            &self.keys,
            &TokenSpec {
                user,
                device,
                platform,
                issued_at: self.now,
                ttl: Duration::from_secs(3600),
                token_id: [self.next_token; 16],
            },
        )
        .expect("token");
        let control = &mut self.controls[usize::from(core)];
        control.handle(self.now, Event::Opened { conn });
        let login = pb::Login {
            token: issued.token,
            user_id: user,
            device_id: device.into(),
            platform: platform as i32,
            client_version: "test".into(),
            attempt: 0,
        };
        control.handle(
            self.now,
            Event::Frame {
                conn,
                frame: Frame::new(1, login),
            },
        );
        self.run();
        let frames = self.take(conn);
        assert!(
            frames
                .iter()
                .any(|f| matches!(&f.body, Body::LoginResult(r) if r.user_id == user)),
            "{frames:?}"
        );
        conn
    }

    fn close(&mut self, conn: ConnId) {
        self.controls[usize::from(conn.core())].handle(self.now, Event::Closed { conn });
        self.run();
    }

    /// `conn` sends a text to the 1:1 chat with `peer`.
    fn send(&mut self, conn: ConnId, peer: u64, id: u64) {
        let content = petrel_proto::wire::encode_content(&pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: format!("m{id}"),
                mentions: Vec::new(),
            })),
        });
        let frame = Frame::new(
            id as u32 + 10,
            pb::SendMessage {
                client_msg_id: id,
                conversation: Some(pb::ConversationId {
                    kind: pb::ConversationKind::Single as i32,
                    id: peer,
                }),
                content,
                ..Default::default()
            },
        );
        self.controls[usize::from(conn.core())].handle(self.now, Event::Frame { conn, frame });
        self.run();
    }

    /// The frames `conn` received since last asked.
    fn take(&mut self, conn: ConnId) -> Vec<Frame> {
        let mut out = Vec::new();
        if let Some(buf) = self.wire.get_mut(&conn) {
            while let Some(frame) = FrameDecoder::default().decode(buf).expect("frames") {
                out.push(frame);
            }
        }
        out
    }

    /// The `client_msg_id`s of the message pushes `conn` received since last asked.
    fn pushes(&mut self, conn: ConnId) -> Vec<u64> {
        self.take(conn)
            .into_iter()
            .filter_map(|f| match f.body {
                Body::MessagePush(p) => Some(p.client_msg_id),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn pushes_reach_devices_on_the_other_core_and_presence_follows_sessions() {
    let mut cores = Cores::new();
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    let bob_desk = cores.login(0, BOB, "b-desk", pb::Platform::Desktop);
    let bob_phone = cores.login(1, BOB, "b-phone", pb::Platform::Android);

    // Alice (core 0) to Bob: his desk on core 0 gets it here, his phone on core 1 by a
    // forwarded push; Alice gets her ack; nobody is offline.
    cores.send(alice, BOB, 1);
    assert!(
        cores
            .take(alice)
            .iter()
            .any(|f| matches!(&f.body, Body::Ack(a) if a.client_msg_id == 1 && a.seq == 1))
    );
    assert_eq!(cores.pushes(bob_desk), [1]);
    assert_eq!(cores.pushes(bob_phone), [1]);
    assert_eq!(cores.controls[0].counters().pushes_forwarded, 1);
    // Bob's phone (core 1) answers: Alice and Bob's own desk, both on core 0, get it by
    // forwarded pushes (the peer's view and the sender's own).
    cores.send(bob_phone, ALICE, 2);
    assert_eq!(cores.pushes(alice), [2]);
    assert_eq!(cores.pushes(bob_desk), [2]);
    assert!(
        cores.pushes(bob_phone).is_empty(),
        "not to the sending device"
    );
    assert!(cores.offline.is_empty(), "{:?}", cores.offline);

    // Bob's desk goes: he is still online on core 1, so not offline.
    cores.close(bob_desk);
    cores.send(alice, BOB, 3);
    assert_eq!(cores.pushes(bob_phone), [3]);
    assert!(cores.offline.is_empty(), "{:?}", cores.offline);
    // His phone goes too: core 0 learns he has no session left anywhere.
    cores.close(bob_phone);
    cores.send(alice, BOB, 4);
    assert_eq!(cores.offline.len(), 1);
    assert_eq!(cores.offline[0].recipients, [BOB]);
    assert_eq!(cores.offline[0].client_msg_id, 4);
    // Back on core 1: pushes follow him there again, and he can sync what he missed.
    let bob_again = cores.login(1, BOB, "b-phone", pb::Platform::Android);
    cores.send(alice, BOB, 5);
    assert_eq!(cores.pushes(bob_again), [5]);
    assert_eq!(cores.offline.len(), 1);
    let stored = cores
        .storage
        .history(
            petrel_storage::UserId(BOB),
            petrel_storage::ConversationKey::single(
                petrel_storage::UserId(ALICE),
                petrel_storage::UserId(BOB),
            ),
            u64::MAX,
            100,
        )
        .expect("history");
    assert_eq!(stored.messages.len(), 5, "every message stored once");
}
