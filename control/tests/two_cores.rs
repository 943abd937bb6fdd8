//! Two control planes, one per core, each owning the sessions of its own connections
//! (`Config::core_count` = 2): presence and pushes cross between them as
//! `Action::ToCore` / `Event::FromCore` (`petrel_control::remote`), the way the rings
//! between cores will carry them. Storage is one shared in-memory engine.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use petrel_control::token::{self, TokenSpec};
use petrel_control::{
    Action, CloseReason, Config, ConnId, Control, CoreMessage, Event, KeyRing, MultiDevicePolicy,
    OfflineMessage, Revocation, Timestamp,
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
    closed: HashMap<ConnId, CloseReason>,
    next_slot: u64,
    next_token: u8,
}

impl Cores {
    fn new() -> Cores {
        Cores::with_policy(MultiDevicePolicy::OnePerPlatform)
    }

    fn with_policy(multi_device: MultiDevicePolicy) -> Cores {
        let keys = KeyRing::parse("k1 000102030405060708090a0b0c0d0e0f\n").expect("keys");
        let now = Timestamp::from_millis(1_764_000_000_000);
        let controls = (0..2)
            .map(|core| {
                let config = Config {
                    core_index: core,
                    core_count: 2,
                    offline_notices: true,
                    id_seed: 1000 + u64::from(core),
                    multi_device,
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
            closed: HashMap::new(),
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
                        Action::Close { conn, reason } => {
                            self.closed.insert(conn, reason);
                        }
                        Action::NoteCongestion { .. } => {}
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

    /// A fresh token for (user, device, platform) and its id.
    fn mint(&mut self, user: u64, device: &str, platform: pb::Platform) -> (String, [u8; 16]) {
        self.next_token += 1;
        let token_id = [self.next_token; 16];
        let issued = token::mint(
            &self.keys,
            &TokenSpec {
                user,
                device,
                platform,
                issued_at: self.now,
                ttl: Duration::from_secs(3600),
                token_id,
            },
        )
        .expect("token");
        (issued.token, token_id)
    }

    /// Opens a connection on `core` and sends a Login numbered `attempt` with `token`,
    /// one millisecond after the previous login; returns the connection and its frames.
    fn try_login(
        &mut self,
        core: u8,
        (user, device, platform): (u64, &str, pb::Platform),
        token: &str,
        attempt: u64,
    ) -> (ConnId, Vec<Frame>) {
        let conn = ConnId::new(core, self.next_slot);
        self.next_slot += 1;
        self.now = self.now.saturating_add(Duration::from_millis(1));
        let control = &mut self.controls[usize::from(core)];
        control.handle(self.now, Event::Opened { conn });
        let login = pb::Login {
            token: token.to_owned(),
            user_id: user,
            device_id: device.into(),
            platform: platform as i32,
            client_version: "test".into(),
            attempt,
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
        (conn, frames)
    }

    /// Logs `user` in on a new connection of `core` with attempt `attempt`.
    fn login_numbered(
        &mut self,
        core: u8,
        user: u64,
        device: &str,
        platform: pb::Platform,
        attempt: u64,
    ) -> ConnId {
        let (token, _) = self.mint(user, device, platform);
        let (conn, frames) = self.try_login(core, (user, device, platform), &token, attempt);
        assert!(
            frames
                .iter()
                .any(|f| matches!(&f.body, Body::LoginResult(r) if r.user_id == user)),
            "{frames:?}"
        );
        conn
    }

    /// Logs `user` in on a new connection of `core`.
    fn login(&mut self, core: u8, user: u64, device: &str, platform: pb::Platform) -> ConnId {
        self.login_numbered(core, user, device, platform, 0)
    }

    /// Why `conn` was kicked and closed, if it was (checked against the `Kick` frame
    /// when one is still unread).
    fn kicked(&mut self, conn: ConnId) -> Option<pb::KickReason> {
        let frame = self.take(conn).into_iter().find_map(|f| match f.body {
            Body::Kick(k) => pb::KickReason::try_from(k.reason).ok(),
            _ => None,
        });
        let reason = match self.closed.get(&conn) {
            Some(CloseReason::Kicked(reason)) => Some(*reason),
            _ => None,
        };
        if frame.is_some() {
            assert_eq!(
                frame, reason,
                "{conn}: the Kick frame names the close's reason"
            );
        }
        reason
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

#[test]
fn a_device_logging_in_on_another_core_replaces_its_session_there() {
    let mut cores = Cores::new();
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    let old = cores.login(0, BOB, "b-phone", pb::Platform::Ios);
    let desk = cores.login(0, BOB, "b-desk", pb::Platform::Desktop);
    // The phone reconnects and lands on core 1 before core 0 noticed the old connection.
    let new = cores.login(1, BOB, "b-phone", pb::Platform::Ios);
    assert_eq!(cores.kicked(old), Some(pb::KickReason::Replaced));
    assert_eq!(cores.kicked(new), None);
    assert_eq!(cores.kicked(desk), None, "another platform stays");
    assert_eq!(cores.controls[0].counters().kicks.replaced, 1);
    cores.send(alice, BOB, 1);
    assert_eq!(cores.pushes(new), [1]);
    assert_eq!(cores.pushes(desk), [1]);
}

#[test]
fn a_late_older_attempt_on_another_core_is_replaced_by_the_newer_session() {
    let mut cores = Cores::new();
    // Attempt 8 logged in on core 0; attempt 7, which the device gave up on, reaches
    // core 1 afterwards and logs in there: core 0 has it replaced, and keeps its own.
    let newer = cores.login_numbered(0, BOB, "b-phone", pb::Platform::Ios, 8);
    let stale = cores.login_numbered(1, BOB, "b-phone", pb::Platform::Ios, 7);
    assert_eq!(cores.kicked(stale), Some(pb::KickReason::Replaced));
    assert_eq!(cores.kicked(newer), None);
    assert_eq!(cores.controls[1].counters().kicks.replaced, 1);
    assert_eq!(cores.controls[0].counters().kicks.replaced, 0);
    // Pushes for Bob go to the newer session only.
    let alice = cores.login(1, ALICE, "a-phone", pb::Platform::Ios);
    cores.send(alice, BOB, 1);
    assert_eq!(cores.pushes(newer), [1]);
}

#[test]
fn the_platform_policy_spans_cores_and_unlimited_keeps_both() {
    let mut cores = Cores::new();
    let first = cores.login(0, BOB, "iphone-1", pb::Platform::Ios);
    let second = cores.login(1, BOB, "iphone-2", pb::Platform::Ios);
    assert_eq!(cores.kicked(first), Some(pb::KickReason::Replaced));
    assert_eq!(cores.kicked(second), None);

    let mut cores = Cores::with_policy(MultiDevicePolicy::Unlimited);
    let first = cores.login(0, BOB, "iphone-1", pb::Platform::Ios);
    let second = cores.login(1, BOB, "iphone-2", pb::Platform::Ios);
    assert_eq!(cores.kicked(first), None);
    assert_eq!(cores.kicked(second), None);
    // The same device is still one session, whatever the policy.
    let again = cores.login(0, BOB, "iphone-2", pb::Platform::Ios);
    assert_eq!(cores.kicked(second), Some(pb::KickReason::Replaced));
    assert_eq!(cores.kicked(again), None);
    assert_eq!(cores.kicked(first), None);
}

#[test]
fn a_token_revoked_on_one_core_ends_its_sessions_and_is_refused_on_the_other() {
    let mut cores = Cores::new();
    let device = (BOB, "b-phone", pb::Platform::Ios);
    let (token, token_id) = cores.mint(BOB, "b-phone", pb::Platform::Ios);
    let (bob, frames) = cores.try_login(1, device, &token, 0);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f.body, Body::LoginResult(_)))
    );
    // The operator revokes the token through core 0, which has no session using it.
    let now = cores.now;
    let ended = cores.controls[0].revoke_sessions(
        now,
        Revocation::Token {
            token_id,
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        },
    );
    assert_eq!(ended, 0, "none on core 0");
    cores.run();
    assert_eq!(cores.kicked(bob), Some(pb::KickReason::TokenRevoked));
    assert_eq!(cores.controls[1].counters().sessions_revoked, 1);
    // Logging in with it again on core 1 is refused.
    let (again, frames) = cores.try_login(1, device, &token, 0);
    assert!(
        frames.iter().any(|f| matches!(
            &f.body,
            Body::Error(e) if e.code == pb::ErrorCode::TokenRevoked as i32
        )),
        "{frames:?}"
    );
    assert!(cores.closed.contains_key(&again));
}
