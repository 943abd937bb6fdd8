//! Two control planes, one per core, each owning the sessions of its own connections
//! (`Config::core_count` = 2): presence and pushes cross between them as
//! `Action::ToCore` / `Event::FromCore` (`petrel_control::remote`), the way the rings
//! between cores will carry them. Storage is one shared in-memory engine. Chatrooms are
//! owned by core `room % 2`: room 6 by core 0, room 7 by core 1.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use petrel_control::api::{ApiChatroomOp, ApiId, ApiReply, ApiRequest};
use petrel_control::chatroom::room_owner;
use petrel_control::token::{self, TokenSpec};
use petrel_control::{
    Action, CloseReason, Config, ConnId, Control, CoreMessage, Event, KeyRing, MultiDevicePolicy,
    OfflineMessage, Revocation, Timestamp,
};
use petrel_proto::pb::conversation_op::Op;
use petrel_proto::{Body, Frame, FrameDecoder, pb};
use petrel_storage::{Engine, MemEngine, StorageConfig};

const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;
const DAVE: u64 = 4;

struct Cores {
    keys: KeyRing,
    controls: Vec<Control>,
    storage: MemEngine,
    now: Timestamp,
    /// What each connection received, not yet decoded.
    wire: HashMap<ConnId, BytesMut>,
    /// What each connection received, decoded and not yet taken.
    unread: HashMap<ConnId, Vec<Frame>>,
    next_rid: u32,
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
            unread: HashMap::new(),
            next_rid: 1000,
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
        self.perform_all(&mut VecDeque::new(), true);
    }

    /// Hands what the cores told each other to the receivers, then runs every core
    /// until all are quiet.
    fn deliver(&mut self, mut rings: VecDeque<(u8, u8, CoreMessage)>) {
        while let Some((from, to, message)) = rings.pop_front() {
            self.controls[usize::from(to)].handle(
                self.now,
                Event::FromCore {
                    core: from,
                    message,
                },
            );
        }
        self.run();
    }

    /// Performs every core's actions until all are quiet, but keeps what they tell
    /// each other (as if the rings were slow): returned, for [`Cores::deliver`].
    fn run_holding_rings(&mut self) -> VecDeque<(u8, u8, CoreMessage)> {
        let mut rings: VecDeque<(u8, u8, CoreMessage)> = VecDeque::new();
        self.perform_all(&mut rings, false);
        rings
    }

    /// Performs every core's actions until all are quiet; what one core tells another
    /// is delivered after the sender's actions (unless not `deliver`: then it stays in
    /// `rings`).
    fn perform_all(&mut self, rings: &mut VecDeque<(u8, u8, CoreMessage)>, deliver: bool) {
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
            while deliver && let Some((from, to, message)) = rings.pop_front() {
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
        who: (u64, &str, pb::Platform),
        token: &str,
        attempt: u64,
    ) -> (ConnId, Vec<Frame>) {
        self.now = self.now.saturating_add(Duration::from_millis(1));
        let conn = self.submit_login(core, who, token, attempt);
        self.run();
        let frames = self.take(conn);
        (conn, frames)
    }

    /// Opens a connection on `core` and hands its core a Login numbered `attempt` with
    /// `token`, without running the cores; returns the connection.
    fn submit_login(
        &mut self,
        core: u8,
        (user, device, platform): (u64, &str, pb::Platform),
        token: &str,
        attempt: u64,
    ) -> ConnId {
        let conn = ConnId::new(core, self.next_slot);
        self.next_slot += 1;
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
        conn
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
        self.decode(conn);
        self.unread.remove(&conn).unwrap_or_default()
    }

    /// Decodes what `conn` received into its unread frames.
    fn decode(&mut self, conn: ConnId) {
        let unread = self.unread.entry(conn).or_default();
        if let Some(buf) = self.wire.get_mut(&conn) {
            while let Some(frame) = FrameDecoder::default().decode(buf).expect("frames") {
                unread.push(frame);
            }
        }
    }

    /// Hands `body` to `conn`'s core as a request, without running the cores; returns
    /// its request id.
    fn submit(&mut self, conn: ConnId, body: impl Into<Body>) -> u32 {
        self.next_rid += 1;
        let frame = Frame::new(self.next_rid, body);
        self.controls[usize::from(conn.core())].handle(self.now, Event::Frame { conn, frame });
        self.next_rid
    }

    /// The answer to request `rid` of `conn` (other frames stay unread).
    fn answer(&mut self, conn: ConnId, rid: u32) -> Option<Body> {
        self.decode(conn);
        let unread = self.unread.get_mut(&conn)?;
        let at = unread
            .iter()
            .position(|f| f.flags.is_response() && f.request_id == rid)?;
        Some(unread.remove(at).body)
    }

    /// Sends the conversation op and runs the cores; its answer.
    fn op(&mut self, conn: ConnId, op: Op) -> Result<pb::ConversationOpResult, pb::Error> {
        let rid = self.submit(conn, pb::ConversationOp { op: Some(op) });
        self.run();
        match self.answer(conn, rid) {
            Some(Body::ConversationOpResult(r)) => Ok(r),
            Some(Body::Error(e)) => Err(e),
            other => panic!("{conn}: op answered with {other:?}"),
        }
    }

    fn join(&mut self, conn: ConnId, room: u64) -> Result<pb::ConversationOpResult, pb::Error> {
        self.op(conn, Op::JoinChatroom(pb::JoinChatroom { room_id: room }))
    }

    fn leave(&mut self, conn: ConnId, room: u64) {
        self.op(conn, Op::LeaveChatroom(pb::LeaveChatroom { room_id: room }))
            .expect("leave");
    }

    /// The users of `room` as `conn` lists them (a member or not).
    fn list(&mut self, conn: ConnId, room: u64) -> Vec<u64> {
        let listed = self
            .op(
                conn,
                Op::ListMembers(pb::ListMembers {
                    conversation: Some(chatroom(room)),
                }),
            )
            .expect("list");
        listed.members.iter().map(|m| m.user_id).collect()
    }

    /// `conn` sends text `id` to `room`; its answer (after the cores ran).
    fn room_send(&mut self, conn: ConnId, room: u64, id: u64) -> Result<pb::Ack, pb::Error> {
        let rid = self.submit_room_send(conn, room, id);
        self.run();
        match self.answer(conn, rid) {
            Some(Body::Ack(ack)) => Ok(ack),
            Some(Body::Error(e)) => Err(e),
            other => panic!("{conn}: send answered with {other:?}"),
        }
    }

    /// Hands `conn`'s send of text `id` to `room` to its core without running them.
    fn submit_room_send(&mut self, conn: ConnId, room: u64, id: u64) -> u32 {
        let content = petrel_proto::wire::encode_content(&pb::Content {
            body: Some(pb::content::Body::Text(pb::Text {
                text: format!("r{id}"),
                mentions: Vec::new(),
            })),
        });
        self.submit(
            conn,
            pb::SendMessage {
                client_msg_id: id,
                conversation: Some(chatroom(room)),
                content,
                ..Default::default()
            },
        )
    }

    /// The (client_msg_id, seq) of the room pushes `conn` received since last asked.
    fn room_pushes(&mut self, conn: ConnId) -> Vec<(u64, u64)> {
        self.take(conn)
            .into_iter()
            .filter_map(|f| match f.body {
                Body::MessagePush(p) => Some((p.client_msg_id, p.seq)),
                _ => None,
            })
            .collect()
    }

    /// An operator's chatroom operation, answered by the room's owner core.
    fn api_room(&mut self, room: u64, op: ApiChatroomOp) -> (Vec<u64>, bool) {
        let owner = usize::from(room_owner(room, 2));
        self.controls[owner].handle_api(self.now, ApiId(room), ApiRequest::Chatroom { room, op });
        let (id, reply) = self.controls[owner].poll_api_reply().expect("answered");
        assert_eq!(id, ApiId(room));
        self.run();
        match reply {
            Ok(ApiReply::Chatroom { users, closed }) => (users, closed),
            other => panic!("{other:?}"),
        }
    }

    fn congested(&mut self, conn: ConnId) {
        self.controls[usize::from(conn.core())].handle(self.now, Event::Congested { conn });
        self.run();
    }

    fn drained(&mut self, conn: ConnId) {
        self.controls[usize::from(conn.core())].handle(self.now, Event::Drained { conn });
        self.run();
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

fn text_content(text: &str) -> bytes::Bytes {
    petrel_proto::wire::encode_content(&pb::Content {
        body: Some(pb::content::Body::Text(pb::Text {
            text: text.into(),
            mentions: Vec::new(),
        })),
    })
}

fn chatroom(room: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::Chatroom as i32,
        id: room,
    }
}

/// The `ConversationEvent` kinds in `frames` with the room and users they name.
fn events(frames: &[Frame]) -> Vec<(i32, u64, Vec<u64>)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::ConversationEvent(e) => Some((e.kind, e.conversation?.id, e.users.clone())),
            _ => None,
        })
        .collect()
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
fn a_login_is_answered_once_every_core_knows_it_so_its_first_sync_misses_nothing() {
    let mut cores = Cores::new();
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    // Bob logs in on core 1 while the ring to core 0 is slow: no LoginResult yet.
    let (token, _) = cores.mint(BOB, "b-phone", pb::Platform::Android);
    let bob = cores.submit_login(1, (BOB, "b-phone", pb::Platform::Android), &token, 1);
    let mut rings = cores.run_holding_rings();
    assert!(cores.take(bob).is_empty(), "LoginResult before core 0 knew");
    // Meanwhile Alice (core 0, which has not heard of Bob's session) sends him a
    // message: acked, stored, but not pushed to a session core 0 does not know.
    cores.submit(
        alice,
        pb::SendMessage {
            client_msg_id: 1,
            conversation: Some(pb::ConversationId {
                kind: pb::ConversationKind::Single as i32,
                id: BOB,
            }),
            content: text_content("before"),
            ..Default::default()
        },
    );
    rings.extend(cores.run_holding_rings());
    assert!(
        cores
            .take(alice)
            .iter()
            .any(|f| matches!(&f.body, Body::Ack(a) if a.seq == 1))
    );
    // Core 0 hears of the login and says so: now Bob gets his LoginResult, and the
    // sync he makes after it has the message no push carried.
    cores.deliver(rings);
    let frames = cores.take(bob);
    assert!(
        matches!(frames.as_slice(), [f] if matches!(&f.body, Body::LoginResult(r) if r.user_id == BOB)),
        "{frames:?}"
    );
    let rid = cores.submit(
        bob,
        pb::SyncRequest {
            cursors: vec![pb::Cursor {
                conversation: Some(pb::ConversationId {
                    kind: pb::ConversationKind::Single as i32,
                    id: ALICE,
                }),
                after_seq: 0,
            }],
            limit: 10,
            ..Default::default()
        },
    );
    cores.run();
    let Some(Body::SyncResponse(page)) = cores.answer(bob, rid) else {
        panic!("no sync answer");
    };
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1]);
    // From now on core 0 pushes to him.
    cores.send(alice, BOB, 2);
    assert_eq!(cores.pushes(bob), [2]);
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
    // The replacement arrives before core 0's acknowledgement of the login, so the stale
    // attempt never sees a LoginResult, only the kick.
    let newer = cores.login_numbered(0, BOB, "b-phone", pb::Platform::Ios, 8);
    let (token, _) = cores.mint(BOB, "b-phone", pb::Platform::Ios);
    let (stale, frames) = cores.try_login(1, (BOB, "b-phone", pb::Platform::Ios), &token, 7);
    assert!(
        matches!(frames.as_slice(), [f] if matches!(&f.body, Body::Kick(_))),
        "{frames:?}"
    );
    assert_eq!(
        cores.closed.get(&stale),
        Some(&CloseReason::Kicked(pb::KickReason::Replaced))
    );
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

/// Four members, two per core, in `room`: (alice, carol) on core 0, (bob, dave) on 1.
fn four_in_a_room(cores: &mut Cores, room: u64) -> [ConnId; 4] {
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    let bob = cores.login(1, BOB, "b-phone", pb::Platform::Ios);
    let carol = cores.login(0, CAROL, "c-phone", pb::Platform::Ios);
    let dave = cores.login(1, DAVE, "d-phone", pb::Platform::Ios);
    for conn in [alice, bob, carol, dave] {
        cores.join(conn, room).expect("join");
    }
    [alice, bob, carol, dave]
}

#[test]
fn room_messages_from_either_core_reach_every_other_member_once_in_one_seq() {
    // Room 6 is core 0's, room 7 core 1's: the same traffic either way.
    for room in [6, 7] {
        let owner = usize::from(room_owner(room, 2));
        let mut cores = Cores::new();
        let members = four_in_a_room(&mut cores, room);
        assert_eq!(cores.controls[owner].chatroom_count(), 1);
        assert_eq!(
            cores.controls[1 - owner].chatroom_count(),
            0,
            "not the owner"
        );
        for &conn in &members {
            cores.take(conn);
        }
        // Senders take turns across cores: alice, bob, carol, dave, alice, ...
        let n = 8u64;
        for id in 1..=n {
            let sender = members[(id as usize - 1) % 4];
            let ack = cores.room_send(sender, room, id).expect("ack");
            assert_eq!(ack.seq, id, "room {room}: one counter for both cores");
            assert_eq!(ack.client_msg_id, id);
            assert_eq!(ack.conversation, Some(chatroom(room)));
        }
        for (i, &conn) in members.iter().enumerate() {
            let expected: Vec<(u64, u64)> = (1..=n)
                .filter(|id| (*id as usize - 1) % 4 != i)
                .map(|id| (id, id))
                .collect();
            assert_eq!(
                cores.room_pushes(conn),
                expected,
                "room {room}: {conn} gets every other member's message once, not its own"
            );
        }
        let delivered: u64 = cores
            .controls
            .iter()
            .map(|c| c.counters().messages_delivered.chatroom)
            .sum();
        assert_eq!(delivered, n * 3);
        // Each core delivered to its own two members.
        for control in &cores.controls {
            assert_eq!(control.counters().messages_delivered.chatroom, n * 3 / 2);
        }
        assert_eq!(cores.list(members[1], room), [ALICE, BOB, CAROL, DAVE]);
        assert_eq!(cores.list(members[0], room), [ALICE, BOB, CAROL, DAVE]);
    }
}

#[test]
fn a_late_joiner_on_the_other_core_gets_the_backlog_and_leaving_or_closing_stops_delivery() {
    for room in [6, 7] {
        let owner = room_owner(room, 2);
        let other = 1 - owner;
        let mut cores = Cores::new();
        let speaker = cores.login(owner, ALICE, "a-phone", pb::Platform::Ios);
        cores.join(speaker, room).expect("join");
        for id in 1..=3 {
            cores.room_send(speaker, room, id).expect("ack");
        }
        // Bob joins from the other core: the owner's backlog and member list.
        let bob = cores.login(other, BOB, "b-phone", pb::Platform::Ios);
        let joined = cores.join(bob, room).expect("join");
        let recent: Vec<u64> = joined.recent.iter().map(|m| m.seq).collect();
        assert_eq!(recent, [1, 2, 3], "room {room}");
        let users: Vec<u64> = joined.members.iter().map(|m| m.user_id).collect();
        assert_eq!(users, [ALICE, BOB]);
        let carol = cores.login(other, CAROL, "c-phone", pb::Platform::Ios);
        cores.join(carol, room).expect("join");
        cores.room_send(speaker, room, 4).expect("ack");
        assert_eq!(cores.room_pushes(bob), [(4, 4)]);
        assert_eq!(cores.room_pushes(carol), [(4, 4)]);

        // Bob leaves: the owner no longer lists him, and he gets nothing more.
        cores.leave(bob, room);
        assert_eq!(cores.list(speaker, room), [ALICE, CAROL], "room {room}");
        let err = cores.room_send(bob, room, 50).unwrap_err();
        assert_eq!(err.code, pb::ErrorCode::NotAMember as i32);
        cores.room_send(speaker, room, 5).expect("ack");
        assert!(cores.room_pushes(bob).is_empty());
        assert_eq!(cores.room_pushes(carol), [(5, 5)]);
        // Carol's connection closes: the owner's list and counters follow.
        cores.close(carol);
        assert_eq!(
            cores.api_room(room, ApiChatroomOp::Members),
            (vec![ALICE], false)
        );
        let delivered_before = cores.controls[usize::from(other)]
            .counters()
            .messages_delivered
            .chatroom;
        let ack = cores.room_send(speaker, room, 6).expect("ack");
        assert_eq!(ack.seq, 6);
        assert_eq!(
            cores.controls[usize::from(other)]
                .counters()
                .messages_delivered
                .chatroom,
            delivered_before,
            "nothing for the other core any more"
        );
        // The last member leaves: the owner drops the room.
        cores.leave(speaker, room);
        assert_eq!(cores.controls[usize::from(owner)].chatroom_count(), 0);
    }
}

#[test]
fn a_congested_member_on_the_other_core_is_skipped_and_told_the_gap_when_drained() {
    for room in [6, 7] {
        let owner = room_owner(room, 2);
        let other = 1 - owner;
        let mut cores = Cores::new();
        let speaker = cores.login(owner, ALICE, "a-phone", pb::Platform::Ios);
        let fast = cores.login(other, BOB, "b-phone", pb::Platform::Ios);
        let slow = cores.login(other, CAROL, "c-phone", pb::Platform::Ios);
        for conn in [speaker, fast, slow] {
            cores.join(conn, room).expect("join");
        }
        cores.room_send(speaker, room, 1).expect("ack");
        cores.congested(slow);
        for id in 2..=4 {
            cores.room_send(speaker, room, id).expect("ack");
        }
        assert_eq!(cores.room_pushes(slow), [(1, 1)], "room {room}");
        assert_eq!(
            cores.room_pushes(fast),
            [(1, 1), (2, 2), (3, 3), (4, 4)],
            "the room does not wait for its slowest member"
        );
        let c = cores.controls[usize::from(other)].counters();
        assert_eq!(
            c.messages_dropped.chatroom, 3,
            "counted where it was skipped"
        );
        assert_eq!(
            cores.controls[usize::from(owner)]
                .counters()
                .messages_dropped
                .chatroom,
            0
        );
        assert!(
            cores.kicked(slow).is_none(),
            "chatrooms skip, they never kick"
        );
        // It drains: one Gap for 2..=4, then newer messages again.
        cores.drained(slow);
        let frames = cores.take(slow);
        let gaps: Vec<(u64, u64, u64)> = frames
            .iter()
            .filter_map(|f| match &f.body {
                Body::Gap(g) => Some((g.conversation?.id, g.from_seq, g.to_seq)),
                _ => None,
            })
            .collect();
        assert_eq!(gaps, [(room, 2, 4)]);
        assert_eq!(
            cores.controls[usize::from(other)].counters().chatroom_gaps,
            1
        );
        cores.room_send(speaker, room, 5).expect("ack");
        assert_eq!(cores.room_pushes(slow), [(5, 5)]);
    }
}

#[test]
fn operator_close_and_kick_on_the_owner_reach_members_on_the_other_core() {
    for room in [6, 7] {
        let owner = room_owner(room, 2);
        let other = 1 - owner;
        let mut cores = Cores::new();
        let alice = cores.login(owner, ALICE, "a-phone", pb::Platform::Ios);
        let bob_phone = cores.login(other, BOB, "b-phone", pb::Platform::Ios);
        let bob_desk = cores.login(owner, BOB, "b-desk", pb::Platform::Desktop);
        let carol = cores.login(other, CAROL, "c-phone", pb::Platform::Ios);
        for conn in [alice, bob_phone, bob_desk, carol] {
            cores.join(conn, room).expect("join");
        }
        for conn in [alice, bob_phone, bob_desk, carol] {
            cores.take(conn);
        }
        // Kick Bob: both his connections, one per core, are out and told so.
        let (users, closed) = cores.api_room(room, ApiChatroomOp::Kick { user: BOB });
        assert_eq!((users, closed), (vec![BOB], false), "room {room}");
        let removed = pb::ConversationEventKind::MembersRemoved as i32;
        for conn in [bob_phone, bob_desk] {
            assert_eq!(events(&cores.take(conn)), [(removed, room, vec![BOB])]);
        }
        assert!(events(&cores.take(carol)).is_empty());
        assert_eq!(cores.list(carol, room), [ALICE, CAROL]);
        let err = cores.room_send(bob_phone, room, 9).unwrap_err();
        assert_eq!(err.code, pb::ErrorCode::NotAMember as i32);
        cores.room_send(carol, room, 1).expect("ack");
        assert!(cores.room_pushes(bob_phone).is_empty());
        assert!(cores.room_pushes(bob_desk).is_empty());
        assert_eq!(cores.room_pushes(alice), [(1, 1)]);

        // Close: everyone is out, told DISSOLVED, and joins are refused on both cores.
        let (mut users, closed) = cores.api_room(room, ApiChatroomOp::Close);
        users.sort_unstable();
        assert_eq!((users, closed), (vec![ALICE, CAROL], true));
        let dissolved = pb::ConversationEventKind::Dissolved as i32;
        assert_eq!(events(&cores.take(carol)), [(dissolved, room, vec![CAROL])]);
        assert_eq!(events(&cores.take(alice)), [(dissolved, room, vec![ALICE])]);
        assert_eq!(cores.controls[usize::from(owner)].chatroom_count(), 0);
        for conn in [carol, alice] {
            let err = cores.join(conn, room).unwrap_err();
            assert_eq!(err.code, pb::ErrorCode::NotFound as i32, "room {room}");
        }
        let err = cores.room_send(carol, room, 2).unwrap_err();
        assert_eq!(err.code, pb::ErrorCode::NotAMember as i32);
        // The refused joins made no one a member.
        assert!(cores.list(carol, room).is_empty());
        // Opened again: the other core's connection joins an empty room.
        assert_eq!(
            cores.api_room(room, ApiChatroomOp::Open),
            (Vec::new(), false)
        );
        let joined = cores.join(carol, room).expect("join");
        assert!(joined.recent.is_empty(), "a close forgets the backlog");
        assert_eq!(cores.list(alice, room), [CAROL]);
    }
}

#[test]
fn a_send_crossing_a_close_is_refused_by_the_owner() {
    let room = 7; // core 1's
    let mut cores = Cores::new();
    let alice = cores.login(1, ALICE, "a-phone", pb::Platform::Ios);
    let bob = cores.login(0, BOB, "b-phone", pb::Platform::Ios);
    cores.join(alice, room).expect("join");
    cores.join(bob, room).expect("join");
    // Bob sends while the operator closes the room: his core still holds his seat and
    // forwards the send; the owner has no room any more and refuses it.
    let owner = &mut cores.controls[1];
    owner.handle_api(
        cores.now,
        ApiId(1),
        ApiRequest::Chatroom {
            room,
            op: ApiChatroomOp::Close,
        },
    );
    let rid = cores.submit_room_send(bob, room, 1);
    cores.run();
    match cores.answer(bob, rid) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::NotAMember as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(cores.controls[1].counters().messages_rejected, 1);
    let dissolved = pb::ConversationEventKind::Dissolved as i32;
    assert_eq!(events(&cores.take(bob)), [(dissolved, room, vec![BOB])]);
    assert!(cores.room_pushes(alice).is_empty());
}

#[test]
fn a_join_whose_connection_leaves_or_closes_before_the_answer_leaves_no_member() {
    let room = 6; // core 0's
    let mut cores = Cores::new();
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    cores.join(alice, room).expect("join");
    // Bob (core 1) joins and leaves before the owner answered.
    let bob = cores.login(1, BOB, "b-phone", pb::Platform::Ios);
    let join = cores.submit(
        bob,
        pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: room })),
        },
    );
    cores.submit(
        bob,
        pb::ConversationOp {
            op: Some(Op::LeaveChatroom(pb::LeaveChatroom { room_id: room })),
        },
    );
    cores.run();
    assert!(matches!(
        cores.answer(bob, join),
        Some(Body::ConversationOpResult(_))
    ));
    assert_eq!(cores.list(alice, room), [ALICE]);
    cores.room_send(alice, room, 1).expect("ack");
    assert!(cores.room_pushes(bob).is_empty());
    // Carol (core 1) joins and her connection closes before the answer.
    let carol = cores.login(1, CAROL, "c-phone", pb::Platform::Ios);
    cores.submit(
        carol,
        pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: room })),
        },
    );
    cores.controls[1].handle(cores.now, Event::Closed { conn: carol });
    cores.run();
    assert_eq!(cores.list(alice, room), [ALICE]);
    // Dave (core 1) joins and sends before the answer: the owner takes the join first.
    let dave = cores.login(1, DAVE, "d-phone", pb::Platform::Ios);
    cores.submit(
        dave,
        pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: room })),
        },
    );
    let send = cores.submit_room_send(dave, room, 2);
    cores.run();
    match cores.answer(dave, send) {
        Some(Body::Ack(ack)) => assert_eq!(ack.seq, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(cores.room_pushes(alice), [(2, 2)]);
    assert_eq!(cores.list(alice, room), [ALICE, DAVE]);
}

#[test]
fn the_seat_limit_is_checked_on_the_members_core_and_typing_crosses_cores() {
    let mut cores = Cores::new();
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    let bob = cores.login(1, BOB, "b-phone", pb::Platform::Ios);
    let max = Config::default().max_rooms_per_conn as u64;
    // Rooms of both owners; the limit counts them all.
    for room in 100..100 + max {
        cores.join(alice, room).expect("join");
    }
    for room in [101, 102] {
        let err = cores.join(alice, 1000 + room).unwrap_err();
        assert_eq!(err.code, pb::ErrorCode::PermissionDenied as i32);
    }
    cores.join(alice, 101).expect("a room it is in already");
    // Typing in room 101 (core 1's) from core 0 reaches Bob on core 1, and back.
    cores.join(bob, 101).expect("join");
    cores.take(alice);
    for (from, to) in [(alice, bob), (bob, alice)] {
        cores.submit(
            from,
            pb::Typing {
                conversation: Some(chatroom(101)),
                typing: true,
            },
        );
        cores.run();
        let notices: Vec<(u64, u64)> = cores
            .take(to)
            .into_iter()
            .filter_map(|f| match f.body {
                Body::TypingNotice(n) => Some((n.conversation?.id, n.user)),
                _ => None,
            })
            .collect();
        let user = if from == alice { ALICE } else { BOB };
        assert_eq!(notices, [(101, user)]);
        assert!(cores.take(from).is_empty(), "not to the typist");
    }
    // Typing to a room one is not in is dropped, on the typist's core.
    cores.submit(
        bob,
        pb::Typing {
            conversation: Some(chatroom(100)),
            typing: true,
        },
    );
    cores.run();
    assert!(cores.take(alice).is_empty());
    assert_eq!(cores.controls[1].counters().typing_dropped, 1);
}

/// Core 1 as the core of another cluster node: while it cannot be reached nothing is
/// sent to it and no login waits for it; when it comes back (restarted, empty) it learns
/// of every session here, so its senders' pushes reach them again.
#[test]
fn an_unreachable_core_holds_no_login_and_learns_every_session_when_back() {
    let mut cores = Cores::new();
    let bob = cores.login(1, BOB, "b-phone", pb::Platform::Android);
    let (alice, mut rings) = {
        // Core 1's node stops answering: whatever core 0 tells it is lost.
        cores.controls[0].handle(cores.now, Event::CoresDown { cores: 0b10 });
        let (token, _) = cores.mint(ALICE, "a-phone", pb::Platform::Ios);
        let alice = cores.submit_login(0, (ALICE, "a-phone", pb::Platform::Ios), &token, 1);
        (alice, cores.run_holding_rings())
    };
    assert!(
        rings.iter().all(|(_, to, _)| *to != 1),
        "nothing goes to an unreachable core: {rings:?}"
    );
    let frames = cores.take(alice);
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::LoginResult(r) if r.user_id == ALICE)),
        "the login waited for an unreachable core: {frames:?}"
    );
    // Bob (core 1) no longer counts as online on core 0: a message to him is stored and
    // offered to the offline notices instead of being pushed into the void.
    cores.send(alice, BOB, 1);
    assert_eq!(cores.offline.len(), 1);
    assert!(cores.pushes(bob).is_empty());
    rings.clear();
    // Core 1 is reachable again: core 0 announces Alice's session to it, so Bob's
    // message to her is pushed, and his reconnect-free session still gets hers.
    cores.controls[0].handle(cores.now, Event::CoresUp { cores: 0b10 });
    cores.run();
    cores.send(bob, ALICE, 2);
    assert_eq!(cores.pushes(alice), [2]);
    cores.send(alice, BOB, 3);
    assert!(
        cores.pushes(bob).is_empty(),
        "core 0 learns of Bob only when core 1 announces him (on its own CoresUp)"
    );
    cores.controls[1].handle(cores.now, Event::CoresUp { cores: 0b01 });
    cores.run();
    cores.send(alice, BOB, 4);
    assert_eq!(cores.pushes(bob), [4]);
}

/// Core 1 (owner of room 7) becomes unreachable: core 0's member of the room is told it
/// was removed and loses its seat, a join or a send answers `SERVER_BUSY` instead of
/// waiting for an owner that cannot answer, and once core 1 is back the member joins
/// and chats again.
#[test]
fn members_of_a_room_whose_owner_is_unreachable_are_told_and_can_rejoin_later() {
    let mut cores = Cores::new();
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    let bob = cores.login(1, BOB, "b-phone", pb::Platform::Android);
    assert_eq!(room_owner(7, 2), 1);
    cores.join(alice, 7).expect("alice joins");
    cores.join(bob, 7).expect("bob joins");
    cores.take(alice);
    cores.controls[0].handle(cores.now, Event::CoresDown { cores: 0b10 });
    cores.run();
    let told = events(&cores.take(alice));
    assert!(
        told.iter().any(|(kind, _, users)| *kind
            == pb::ConversationEventKind::MembersRemoved as i32
            && users == &[ALICE]),
        "{told:?}"
    );
    let refused = cores.room_send(alice, 7, 1).expect_err("owner unreachable");
    assert_eq!(
        refused.code,
        pb::ErrorCode::NotAMember as i32,
        "no seat any more"
    );
    let refused = cores.join(alice, 7).expect_err("owner unreachable");
    assert_eq!(refused.code, pb::ErrorCode::ServerBusy as i32);
    assert!(refused.retry_after_ms > 0);
    // Back: joins and sends reach the owner again.
    cores.controls[0].handle(cores.now, Event::CoresUp { cores: 0b10 });
    cores.run();
    cores.join(alice, 7).expect("alice joins again");
    cores.room_send(alice, 7, 2).expect("sent");
    assert_eq!(cores.room_pushes(bob).last().map(|&(id, _)| id), Some(2));
}

/// Core 1 (owner of room 7) goes down while core 0's requests to it are on their way:
/// each is answered `SERVER_BUSY` once, at once. Then, with core 1 up, a send and a
/// join whose answers do not come in time are answered `SERVER_BUSY` at the limit; the
/// late answers are dropped (no second answer to one request), the late join leaves no
/// member behind, and the message that was sent still reached the room.
#[test]
fn room_requests_whose_owner_goes_down_or_stays_silent_are_answered_once() {
    let mut cores = Cores::new();
    let alice = cores.login(0, ALICE, "a-phone", pb::Platform::Ios);
    let carol = cores.login(0, CAROL, "c-phone", pb::Platform::Ios);
    let bob = cores.login(1, BOB, "b-phone", pb::Platform::Android);
    assert_eq!(room_owner(7, 2), 1);
    cores.join(alice, 7).expect("alice joins");
    cores.join(bob, 7).expect("bob joins");
    cores.take(alice);
    cores.take(bob);

    // In flight when the owner's node goes down: the rings to it are lost.
    let send = cores.submit_room_send(alice, 7, 1);
    let list = cores.submit(
        alice,
        pb::ConversationOp {
            op: Some(Op::ListMembers(pb::ListMembers {
                conversation: Some(chatroom(7)),
            })),
        },
    );
    let join = cores.submit(
        carol,
        pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: 7 })),
        },
    );
    let lost = cores.run_holding_rings();
    assert_eq!(lost.len(), 3, "{lost:?}");
    cores.controls[0].handle(cores.now, Event::CoresDown { cores: 0b10 });
    cores.run();
    for (conn, rid) in [(alice, send), (alice, list), (carol, join)] {
        match cores.answer(conn, rid) {
            Some(Body::Error(e)) => {
                assert_eq!(e.code, pb::ErrorCode::ServerBusy as i32, "{e:?}");
                assert!(e.retry_after_ms > 0);
            }
            other => panic!("{conn} request {rid}: {other:?}"),
        }
        assert!(cores.answer(conn, rid).is_none(), "answered twice");
    }
    assert_eq!(cores.controls[0].counters().room_answers_lost, 3);

    // Back up; alice sits in the room again. A send and carol's join get no answer
    // in time: the owner's answers are held back past the limit.
    cores.controls[0].handle(cores.now, Event::CoresUp { cores: 0b10 });
    cores.run();
    cores.join(alice, 7).expect("alice joins again");
    cores.take(bob);
    let send = cores.submit_room_send(alice, 7, 2);
    let join = cores.submit(
        carol,
        pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: 7 })),
        },
    );
    let requests = cores.run_holding_rings();
    let deadline = cores
        .now
        .saturating_add(Config::default().room_answer_timeout);
    assert!(cores.controls[0].poll_timeout() <= Some(deadline));
    cores.now = deadline;
    cores.controls[0].handle(cores.now, Event::Tick);
    cores.run();
    for (conn, rid) in [(alice, send), (carol, join)] {
        match cores.answer(conn, rid) {
            Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::ServerBusy as i32),
            other => panic!("{conn} request {rid}: {other:?}"),
        }
    }
    // The owner takes the requests now and answers: too late, dropped.
    cores.deliver(requests);
    assert!(cores.answer(alice, send).is_none(), "a late ack went out");
    assert!(
        cores.answer(carol, join).is_none(),
        "a late join answer went out"
    );
    assert_eq!(cores.controls[0].counters().room_answers_late, 2);
    // The message itself was sequenced and reached bob; carol is no member.
    assert_eq!(cores.room_pushes(bob).last().map(|&(id, _)| id), Some(2));
    let members = cores.list(alice, 7);
    assert!(
        members.contains(&ALICE) && members.contains(&BOB),
        "{members:?}"
    );
    assert!(!members.contains(&CAROL), "{members:?}");

    // A join of a room alice already sits in, unanswered in time: busy, and she keeps
    // the seat she had. A request of a connection that closed meanwhile is not counted.
    let dave = cores.login(0, DAVE, "d-phone", pb::Platform::Ios);
    let again = cores.submit(
        alice,
        pb::ConversationOp {
            op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: 7 })),
        },
    );
    cores.submit(
        dave,
        pb::ConversationOp {
            op: Some(Op::ListMembers(pb::ListMembers {
                conversation: Some(chatroom(7)),
            })),
        },
    );
    let held = cores.run_holding_rings();
    cores.close(dave);
    let lost_before = cores.controls[0].counters().room_answers_lost;
    cores.now = cores
        .now
        .saturating_add(Config::default().room_answer_timeout);
    cores.controls[0].handle(cores.now, Event::Tick);
    cores.run();
    match cores.answer(alice, again) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::ServerBusy as i32),
        other => panic!("the second join: {other:?}"),
    }
    assert_eq!(
        cores.controls[0].counters().room_answers_lost,
        lost_before + 1
    );
    drop(held);
    cores.take(alice);
    cores.room_send(bob, 7, 4).expect("bob sends");
    assert_eq!(cores.room_pushes(alice).last().map(|&(id, _)| id), Some(4));

    // Carol asks to join twice; the first request times out while the second waits:
    // she keeps the seat for the second, whose answer seats her.
    let join_op = || pb::ConversationOp {
        op: Some(Op::JoinChatroom(pb::JoinChatroom { room_id: 7 })),
    };
    let first = cores.submit(carol, join_op());
    let mut held = cores.run_holding_rings();
    let limit = Config::default().room_answer_timeout;
    cores.now = cores.now.saturating_add(limit / 2);
    let second = cores.submit(carol, join_op());
    held.extend(cores.run_holding_rings());
    cores.now = cores.now.saturating_add(limit / 2);
    cores.controls[0].handle(cores.now, Event::Tick);
    cores.run();
    match cores.answer(carol, first) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::ServerBusy as i32),
        other => panic!("the first join: {other:?}"),
    }
    cores.deliver(held);
    assert!(
        matches!(
            cores.answer(carol, second),
            Some(Body::ConversationOpResult(_))
        ),
        "the second join is answered"
    );
    cores.take(carol);
    cores.room_send(bob, 7, 5).expect("bob sends");
    assert_eq!(cores.room_pushes(carol).last().map(|&(id, _)| id), Some(5));

    // Dave asks twice and neither answer comes: each request is answered once.
    let dave = cores.login(0, DAVE, "d-phone2", pb::Platform::Android);
    let first = cores.submit(dave, join_op());
    let mut lost = cores.run_holding_rings();
    cores.now = cores.now.saturating_add(limit / 2);
    let second = cores.submit(dave, join_op());
    lost.extend(cores.run_holding_rings());
    drop(lost);
    cores.now = cores.now.saturating_add(limit);
    cores.controls[0].handle(cores.now, Event::Tick);
    cores.run();
    for rid in [first, second] {
        match cores.answer(dave, rid) {
            Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::ServerBusy as i32),
            other => panic!("dave's join {rid}: {other:?}"),
        }
    }
    // And he may join again, and hears the room.
    cores.join(dave, 7).expect("dave joins");
    cores.take(dave);
    cores.room_send(bob, 7, 6).expect("bob sends");
    assert_eq!(cores.room_pushes(dave).last().map(|&(id, _)| id), Some(6));
}
