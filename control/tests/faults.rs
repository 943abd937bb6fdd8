//! Fault schedules against the control plane: storage completions delayed and delivered
//! out of order, storage errors injected (every `StorageError` kind), connections closed
//! by the client, kicked, revoked, timed out or expired while their requests are in
//! flight, and the clock jumping forward by up to years.
//!
//! A schedule is a list of [`Step`]s; proptest generates them (shrinking a failure to a
//! minimal trace) and the model in `harness/model.rs` checks its invariants after every
//! step: no ack without a durable write, no push of a message that is not durable, seqs
//! contiguous and never reused, every storage error answered with its error code, timers
//! honoured across jumps, and nothing left behind once every connection closed. The
//! directed tests below pin one fault class each.

mod harness;

use std::time::Duration;

use harness::held::StorageFault;
use harness::model::{Closing, Model, Req, Stats};
use harness::{Sim, account, group, room, single, text_content};
use petrel_control::{Config, ConnId, RateLimit, Revocation};
use petrel_proto::{Body, Frame, pb};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

use pb::conversation_op::Op;

/// The users of every schedule.
const USERS: [u64; 4] = [1, 2, 3, 4];
const SHORT_TTL: Duration = Duration::from_secs(90);
const LONG_TTL: Duration = Duration::from_secs(24 * 3600);
const HOUR_MS: u64 = 3_600_000;

/// Closes a client request may cause.
const BY_REQUEST: &[Closing] = &[Closing::NotLoggedIn];
/// Closes the clock may cause.
const BY_CLOCK: &[Closing] = &[
    Closing::Idle,
    Closing::LoginTimeout,
    Closing::SessionExpired,
];

fn config() -> Config {
    Config {
        renew_ttl: Duration::from_secs(600),
        rate_limit: RateLimit {
            burst: 30,
            per_second: 10,
        },
        ..Config::default()
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
enum To {
    Single(u64),
    Group(u64),
    Account(u64),
    Room(u64),
}

impl To {
    fn id(self) -> pb::ConversationId {
        match self {
            To::Single(peer) => single(peer),
            To::Group(g) => group(g),
            To::Account(a) => account(a),
            To::Room(r) => room(r),
        }
    }
}

/// A failure storage injects when it executes a request.
#[derive(Debug, Clone, Copy)]
enum Fail {
    /// Refused unapplied with this error.
    Refuse(StorageFault),
    /// A write applied, then failed because the WAL sync failed (`Backend`).
    NotDurable,
}

/// One step of a schedule. `conn` picks among the open connections (modulo their
/// number); `pick` among the executable requests or held completions.
#[derive(Debug, Clone)]
enum Step {
    Connect,
    /// A login on a fresh connection (`conn` = `None`: a client reconnecting) or on an
    /// open one.
    Login {
        conn: Option<usize>,
        user: u64,
        device: u8,
        reuse: bool,
        short: bool,
    },
    Send {
        conn: usize,
        to: To,
        id: u64,
    },
    CreateGroup {
        conn: usize,
        members: Vec<u64>,
    },
    AddMember {
        conn: usize,
        group: u64,
        user: u64,
    },
    RemoveMember {
        conn: usize,
        group: u64,
        user: u64,
    },
    CreateAccount {
        conn: usize,
    },
    Follow {
        conn: usize,
        account: u64,
    },
    JoinRoom {
        conn: usize,
        room: u64,
    },
    LeaveRoom {
        conn: usize,
        room: u64,
    },
    Sync {
        conn: usize,
    },
    History {
        conn: usize,
        peer: u64,
    },
    Ping {
        conn: usize,
    },
    Renew {
        conn: usize,
    },
    Logout {
        conn: usize,
        revoke: bool,
    },
    Disconnect {
        conn: usize,
    },
    KickUser {
        user: u64,
    },
    RevokeUser {
        user: u64,
    },
    /// Storage executes one request (or fails it with `fault`); the completion is held.
    Execute {
        pick: usize,
        fault: Option<Fail>,
    },
    /// One held completion is delivered.
    Deliver {
        pick: usize,
    },
    /// Storage catches up: everything executed and delivered in order.
    Settle,
    /// Time passes smoothly (every deadline delivered on time).
    Advance {
        ms: u64,
    },
    /// The clock jumps.
    Jump {
        ms: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let conn = 0usize..8;
    let user = 1u64..=4;
    let to = prop_oneof![
        4 => (1u64..=4).prop_map(To::Single),
        2 => (1u64..=3).prop_map(To::Group),
        1 => (1u64..=3).prop_map(To::Account),
        1 => (1u64..=2).prop_map(To::Room),
    ];
    let fault = prop_oneof![
        3 => Just(None),
        1 => prop_oneof![
            10 => prop::sample::select(StorageFault::ALL.to_vec()).prop_map(Fail::Refuse),
            1 => Just(Fail::NotDurable),
        ]
        .prop_map(Some),
    ];
    let jump = prop_oneof![
        Just(HOUR_MS),
        Just(25 * HOUR_MS),
        Just(30 * 24 * HOUR_MS),
        Just(3 * 365 * 24 * HOUR_MS),
    ];
    prop_oneof![
        1 => Just(Step::Connect),
        4 => (
            prop::option::weighted(0.2, conn.clone()),
            user.clone(),
            0u8..3,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
            |(conn, user, device, reuse, short)| Step::Login {
                conn,
                user,
                device,
                reuse,
                short
            }
        ),
        12 => (conn.clone(), to, 1u64..12).prop_map(|(conn, to, id)| Step::Send { conn, to, id }),
        1 => (conn.clone(), prop::collection::vec(user.clone(), 0..3))
            .prop_map(|(conn, members)| Step::CreateGroup { conn, members }),
        1 => (conn.clone(), 1u64..=3, user.clone())
            .prop_map(|(conn, group, user)| Step::AddMember { conn, group, user }),
        1 => (conn.clone(), 1u64..=3, user.clone())
            .prop_map(|(conn, group, user)| Step::RemoveMember { conn, group, user }),
        1 => conn.clone().prop_map(|conn| Step::CreateAccount { conn }),
        1 => (conn.clone(), 1u64..=3).prop_map(|(conn, account)| Step::Follow { conn, account }),
        1 => (conn.clone(), 1u64..=2).prop_map(|(conn, room)| Step::JoinRoom { conn, room }),
        1 => (conn.clone(), 1u64..=2).prop_map(|(conn, room)| Step::LeaveRoom { conn, room }),
        2 => conn.clone().prop_map(|conn| Step::Sync { conn }),
        1 => (conn.clone(), user.clone()).prop_map(|(conn, peer)| Step::History { conn, peer }),
        1 => conn.clone().prop_map(|conn| Step::Ping { conn }),
        1 => conn.clone().prop_map(|conn| Step::Renew { conn }),
        1 => (conn.clone(), any::<bool>()).prop_map(|(conn, revoke)| Step::Logout { conn, revoke }),
        1 => conn.clone().prop_map(|conn| Step::Disconnect { conn }),
        1 => user.clone().prop_map(|user| Step::KickUser { user }),
        1 => user.prop_map(|user| Step::RevokeUser { user }),
        10 => (any::<usize>(), fault).prop_map(|(pick, fault)| Step::Execute { pick, fault }),
        10 => any::<usize>().prop_map(|pick| Step::Deliver { pick }),
        1 => Just(Step::Settle),
        2 => prop_oneof![3 => 0u64..20_000, 1 => 0u64..200_000].prop_map(|ms| Step::Advance { ms }),
        1 => (jump, 0u64..1000).prop_map(|(ms, jitter)| Step::Jump { ms: ms + jitter }),
    ]
}

/// The platform a device id always logs in with (a token names both).
fn platform_of(device: u8) -> pb::Platform {
    match device {
        0 => pb::Platform::Ios,
        1 => pb::Platform::Android,
        _ => pb::Platform::Desktop,
    }
}

/// The simulator with held storage, and the model that checks it.
struct World {
    sim: Sim,
    model: Model,
}

impl World {
    /// Users 1–3 logged in (device d0), user 1's group with 2 and 3, and user 2's
    /// public account followed by 3; storage settled.
    fn start() -> World {
        let mut w = World::empty();
        let conns: Vec<ConnId> = (1..=3).map(|user| w.online(user, 0, LONG_TTL)).collect();
        w.op(
            conns[0],
            Op::CreateGroup(pb::CreateGroup {
                name: "g".into(),
                members: vec![2, 3],
            }),
        );
        w.op(
            conns[1],
            Op::CreatePublicAccount(pb::CreatePublicAccount { name: "a".into() }),
        );
        w.sim.settle();
        w.check(&[]);
        w.op(conns[2], Op::Follow(pb::Follow { account_id: 2 }));
        w.sim.settle();
        w.check(&[]);
        w
    }

    /// No connection yet; storage held.
    fn empty() -> World {
        let mut sim = Sim::new(config(), 7);
        sim.hold_storage = true;
        World {
            sim,
            model: Model::new(config()),
        }
    }

    /// A new connection logged in as (user, device) with a fresh token valid for `ttl`.
    fn online(&mut self, user: u64, device: u8, ttl: Duration) -> ConnId {
        let conn = self.connect();
        let rid = self.login(conn, user, device, false, ttl);
        self.check(&[Closing::Replaced]);
        assert!(
            matches!(self.answer(conn, rid), Some(Body::LoginResult(_))),
            "login of {user}/d{device}"
        );
        conn
    }

    /// The frames `conn` received since the last call.
    fn take(&mut self, conn: ConnId) -> Vec<Frame> {
        self.model.received.remove(&conn).unwrap_or_default()
    }

    /// The answer to `rid` among the frames `conn` received (and keeps).
    fn answer(&self, conn: ConnId, rid: u32) -> Option<Body> {
        Sim::answer(self.model.received.get(&conn)?, rid).cloned()
    }

    fn check(&mut self, allowed: &[Closing]) {
        self.model.check(&mut self.sim, allowed);
    }

    fn connect(&mut self) -> ConnId {
        let conn = self.sim.connect();
        self.model.opened(conn, self.sim.now);
        conn
    }

    /// Sends `body` as request `what` from `conn`.
    fn send(&mut self, conn: ConnId, what: Req, body: impl Into<Body>) -> u32 {
        let rid = self.sim.next_rid(conn);
        self.model.sent(conn, rid, what, self.sim.now);
        self.sim.send_frame(conn, Frame::new(rid, body));
        rid
    }

    /// Logs `conn` in as (user, device): with the token that device last used if
    /// `reuse` (a reconnect), else with a fresh one valid for `ttl`.
    fn login(&mut self, conn: ConnId, user: u64, device: u8, reuse: bool, ttl: Duration) -> u32 {
        let name = format!("d{device}");
        let platform = platform_of(device);
        let token = match self.model.saved_token(user, &name).filter(|_| reuse) {
            Some(token) => token,
            None => {
                let token = self.sim.token(user, &name, platform, ttl);
                self.model.minted(&token, self.sim.now.saturating_add(ttl));
                token
            }
        };
        let login = pb::Login {
            token: token.clone(),
            user_id: user,
            device_id: name.clone(),
            platform: platform as i32,
            client_version: "faults".into(),
            attempt: 0,
        };
        self.send(
            conn,
            Req::Login {
                user,
                device: name,
                token,
            },
            login,
        )
    }

    fn send_text(&mut self, conn: ConnId, to: To, client_msg_id: u64) -> u32 {
        let conversation = to.id();
        self.send(
            conn,
            Req::Send {
                conversation,
                client_msg_id,
            },
            pb::SendMessage {
                client_msg_id,
                conversation: Some(conversation),
                content: petrel_proto::wire::encode_content(&text_content(&format!(
                    "m{client_msg_id}"
                ))),
                ..Default::default()
            },
        )
    }

    fn op(&mut self, conn: ConnId, op: Op) -> u32 {
        let what = match &op {
            Op::JoinChatroom(j) => Req::JoinRoom(j.room_id),
            Op::LeaveChatroom(l) => Req::LeaveRoom(l.room_id),
            _ => Req::Op,
        };
        self.send(conn, what, pb::ConversationOp { op: Some(op) })
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.model.disconnected(conn);
        self.sim.disconnect(conn);
    }

    /// Performs `step` and checks every invariant.
    fn apply(&mut self, step: Step) {
        let open = self.model.open_conns();
        let pick = |i: usize| (!open.is_empty()).then(|| open[i % open.len()]);
        let allowed: &[Closing] = match step {
            Step::Connect => {
                self.connect();
                &[]
            }
            Step::Execute { pick, fault } => {
                let executed = match fault {
                    Some(Fail::NotDurable) => self.sim.execute_not_durable(pick),
                    Some(Fail::Refuse(fault)) => self.sim.execute(pick, Some(fault)),
                    None => self.sim.execute(pick, None),
                };
                if let Some(out_of_order) = executed {
                    self.model.stats.executed_out_of_order += u64::from(out_of_order);
                    if let Some(fault) = fault {
                        *self
                            .model
                            .stats
                            .injected
                            .entry(format!("{fault:?}"))
                            .or_default() += 1;
                    }
                }
                &[]
            }
            Step::Deliver { pick } => {
                if let Some(overtook) = self.sim.deliver(pick) {
                    self.model.stats.delivered_out_of_order += u64::from(overtook);
                }
                &[Closing::SlowConsumer]
            }
            Step::Settle => {
                self.sim.settle();
                &[Closing::SlowConsumer]
            }
            Step::Advance { ms } => {
                self.sim.advance(Duration::from_millis(ms));
                BY_CLOCK
            }
            Step::Jump { ms } => {
                if self.model.any_in_flight() {
                    self.model.stats.jumps_in_flight += 1;
                }
                self.sim.jump(Duration::from_millis(ms));
                BY_CLOCK
            }
            Step::KickUser { user } => {
                self.sim.control.kick_user(user, "operator");
                self.sim.run();
                &[Closing::Admin]
            }
            Step::RevokeUser { user } => {
                self.model.revoking_user(user);
                let now = self.sim.now;
                self.sim
                    .control
                    .revoke_sessions(now, Revocation::User(user));
                self.sim.run();
                &[Closing::TokenRevoked]
            }
            Step::Login {
                conn,
                user,
                device,
                reuse,
                short,
            } => {
                let c = match conn {
                    None => Some(self.connect()),
                    Some(i) => pick(i),
                };
                if let Some(c) = c {
                    let ttl = if short { SHORT_TTL } else { LONG_TTL };
                    self.login(c, user, device, reuse, ttl);
                }
                &[Closing::LoginRejected, Closing::Replaced]
            }
            Step::Logout { conn, revoke } => {
                if let Some(c) = pick(conn) {
                    self.send(
                        c,
                        Req::Logout { revoke },
                        pb::Logout {
                            revoke_token: revoke,
                        },
                    );
                }
                &[Closing::Logout, Closing::TokenRevoked, Closing::NotLoggedIn]
            }
            Step::Disconnect { conn } => {
                if let Some(c) = pick(conn) {
                    self.disconnect(c);
                }
                &[]
            }
            Step::Send { conn, to, id } => {
                if let Some(c) = pick(conn) {
                    self.send_text(c, to, id);
                }
                BY_REQUEST
            }
            Step::CreateGroup { conn, members } => {
                if let Some(c) = pick(conn) {
                    self.op(
                        c,
                        Op::CreateGroup(pb::CreateGroup {
                            name: "g".into(),
                            members,
                        }),
                    );
                }
                BY_REQUEST
            }
            Step::AddMember { conn, group, user } => {
                if let Some(c) = pick(conn) {
                    self.op(
                        c,
                        Op::AddMembers(pb::AddMembers {
                            group_id: group,
                            users: vec![user],
                        }),
                    );
                }
                BY_REQUEST
            }
            Step::RemoveMember { conn, group, user } => {
                if let Some(c) = pick(conn) {
                    self.op(
                        c,
                        Op::RemoveMembers(pb::RemoveMembers {
                            group_id: group,
                            users: vec![user],
                        }),
                    );
                }
                BY_REQUEST
            }
            Step::CreateAccount { conn } => {
                if let Some(c) = pick(conn) {
                    self.op(
                        c,
                        Op::CreatePublicAccount(pb::CreatePublicAccount { name: "a".into() }),
                    );
                }
                BY_REQUEST
            }
            Step::Follow { conn, account } => {
                if let Some(c) = pick(conn) {
                    self.op(
                        c,
                        Op::Follow(pb::Follow {
                            account_id: account,
                        }),
                    );
                }
                BY_REQUEST
            }
            Step::JoinRoom { conn, room } => {
                if let Some(c) = pick(conn) {
                    self.op(c, Op::JoinChatroom(pb::JoinChatroom { room_id: room }));
                }
                BY_REQUEST
            }
            Step::LeaveRoom { conn, room } => {
                if let Some(c) = pick(conn) {
                    self.op(c, Op::LeaveChatroom(pb::LeaveChatroom { room_id: room }));
                }
                BY_REQUEST
            }
            Step::Sync { conn } => {
                if let Some(c) = pick(conn) {
                    self.send(
                        c,
                        Req::Sync,
                        pb::SyncRequest {
                            inbox_cursor: 0,
                            cursors: Vec::new(),
                            limit: 5,
                            inbox_position: Vec::new(),
                        },
                    );
                }
                BY_REQUEST
            }
            Step::History { conn, peer } => {
                if let Some(c) = pick(conn) {
                    self.send(
                        c,
                        Req::History,
                        pb::HistoryRequest {
                            conversation: Some(single(peer)),
                            before_seq: 0,
                            limit: 3,
                        },
                    );
                }
                BY_REQUEST
            }
            Step::Ping { conn } => {
                if let Some(c) = pick(conn) {
                    self.send(c, Req::Ping, pb::Ping { client_time_ms: 1 });
                }
                &[]
            }
            Step::Renew { conn } => {
                if let Some(c) = pick(conn) {
                    self.send(c, Req::Renew, pb::RenewToken {});
                }
                BY_REQUEST
            }
        };
        self.check(allowed);
    }

    /// Settles storage, checks the end state and returns what the schedule exercised.
    fn finish(mut self) -> Stats {
        self.model.finish(&mut self.sim, &USERS);
        self.model.stats
    }
}

fn run(steps: Vec<Step>) -> Stats {
    let mut w = World::start();
    for step in steps {
        w.apply(step);
    }
    w.finish()
}

/// Schedules per run: 256 by default (a few seconds in a debug build); `PROPTEST_CASES`
/// sets more for a longer hunt.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Random fault schedules keep every invariant of `harness/model.rs`.
    #[test]
    fn fault_schedules_keep_the_invariants(steps in prop::collection::vec(step(), 1..120)) {
        run(steps);
    }
}

/// The generator reaches every fault class often, so the property above is not passing
/// on schedules that never hit a fault. (Fixed seed: the same schedules every run.)
#[test]
fn schedules_reach_every_fault_class() {
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let schedules = prop::collection::vec(step(), 60..120);
    let mut total = Stats::default();
    // Enough schedules that each of the fault classes comes up (15 since mutes and
    // recalls added theirs).
    for _ in 0..64 {
        let steps = schedules
            .new_tree(&mut runner)
            .expect("a schedule")
            .current();
        total.add(&run(steps));
    }
    eprintln!("{total:#?}");
    for fault in StorageFault::ALL {
        assert!(
            total
                .injected
                .get(&format!("{:?}", Fail::Refuse(fault)))
                .copied()
                .unwrap_or(0)
                > 0,
            "{fault:?} never injected"
        );
    }
    assert!(total.injected.contains_key("NotDurable"));
    assert!(total.executed_out_of_order > 0);
    assert!(total.delivered_out_of_order > 0);
    for closing in [
        Closing::ClientGone,
        Closing::Admin,
        Closing::TokenRevoked,
        Closing::Idle,
        Closing::SessionExpired,
    ] {
        assert!(
            total.closed_in_flight.get(&closing).copied().unwrap_or(0) > 0,
            "never closed for {closing:?} with a request in flight"
        );
    }
    assert!(total.jumps_in_flight > 0);
    assert!(total.error_answers > 0 && total.acks > 0 && total.pushes > 0);
}

/// Reordered completions: storage applies three appends to one conversation (seqs 1, 2,
/// 3) and the completions come back newest first. Each sender is acked with the seq
/// storage assigned to its own message, and each push carries its message's seq.
#[test]
fn completions_delivered_out_of_order_carry_the_seqs_storage_assigned() {
    let mut w = World::empty();
    let a = w.online(1, 0, LONG_TTL);
    let b = w.online(2, 0, LONG_TTL);
    w.sim.settle();
    w.check(&[]);
    let a1 = w.send_text(a, To::Single(2), 11);
    w.check(BY_REQUEST);
    let b1 = w.send_text(b, To::Single(1), 21);
    w.check(BY_REQUEST);
    let a2 = w.send_text(a, To::Single(2), 12);
    w.check(BY_REQUEST);
    // a's second append may not be applied before its first.
    assert_eq!(w.sim.executable().len(), 2);
    for _ in 0..3 {
        w.sim.execute(0, None);
        w.check(&[]);
    }
    for _ in 0..3 {
        let newest = w.sim.held().len() - 1;
        assert_eq!(w.sim.deliver(newest), Some(newest > 0));
        w.check(&[]);
    }
    let seq_of = |body: Option<Body>| match body {
        Some(Body::Ack(ack)) => ack.seq,
        other => panic!("expected an Ack, got {other:?}"),
    };
    assert_eq!(seq_of(w.answer(a, a1)), 1);
    assert_eq!(seq_of(w.answer(b, b1)), 2);
    assert_eq!(seq_of(w.answer(a, a2)), 3);
    let pushed = |frames: Vec<Frame>| -> Vec<(u64, u64)> {
        Sim::pushes(&frames)
            .iter()
            .map(|p| (p.seq, p.client_msg_id))
            .collect()
    };
    assert_eq!(pushed(w.take(b)), [(3, 12), (1, 11)]);
    assert_eq!(pushed(w.take(a)), [(2, 21)]);
    w.finish();
}

/// Injected storage errors, every kind: the requester gets `Error` with the documented
/// code and stays connected, nobody gets a push, and the retry (same `client_msg_id`)
/// is stored at the next seq — the failed append took none. Sync, history and
/// conversation operations are answered the same way.
#[test]
fn every_storage_error_is_answered_with_its_code_and_takes_no_seq() {
    let mut w = World::empty();
    let a = w.online(1, 0, LONG_TTL);
    let b = w.online(2, 0, LONG_TTL);
    w.sim.settle();
    w.check(&[]);
    let error_code = |body: Option<Body>| match body {
        Some(Body::Error(e)) => e.code,
        other => panic!("expected an Error, got {other:?}"),
    };
    for (seq, fault) in (1u64..).zip(StorageFault::ALL) {
        // Stay within the rate limit (five requests per round).
        w.sim.advance(Duration::from_secs(1));
        w.check(BY_CLOCK);
        let id = 100 + seq;
        let rid = w.send_text(a, To::Single(2), id);
        w.check(BY_REQUEST);
        w.sim.execute(0, Some(fault));
        w.check(&[]);
        w.sim.deliver(0);
        w.check(&[]);
        assert_eq!(
            error_code(w.answer(a, rid)),
            fault.expected_code() as i32,
            "{fault:?}"
        );
        assert!(w.sim.client(a).closed.is_none());
        assert!(Sim::pushes(&w.take(b)).is_empty(), "{fault:?} pushed");

        let rid = w.send_text(a, To::Single(2), id);
        w.check(BY_REQUEST);
        w.sim.settle();
        w.check(&[]);
        match w.answer(a, rid) {
            Some(Body::Ack(ack)) => assert_eq!((ack.seq, ack.duplicate), (seq, false)),
            other => panic!("retry after {fault:?}: {other:?}"),
        }
        let pushes = Sim::pushes(&w.take(b));
        assert_eq!(pushes.len(), 1);
        assert_eq!((pushes[0].seq, pushes[0].client_msg_id), (seq, id));

        let requests = [
            w.send(
                a,
                Req::Sync,
                pb::SyncRequest {
                    inbox_cursor: 0,
                    cursors: Vec::new(),
                    limit: 0,
                    inbox_position: Vec::new(),
                },
            ),
            w.send(
                a,
                Req::History,
                pb::HistoryRequest {
                    conversation: Some(single(2)),
                    before_seq: 0,
                    limit: 0,
                },
            ),
            w.op(
                a,
                Op::CreateGroup(pb::CreateGroup {
                    name: "g".into(),
                    members: vec![2],
                }),
            ),
        ];
        w.check(BY_REQUEST);
        for _ in requests {
            w.sim.execute(0, Some(fault));
            w.check(&[]);
        }
        while w.sim.deliver(0).is_some() {
            w.check(&[]);
        }
        for rid in requests {
            assert_eq!(
                error_code(w.answer(a, rid)),
                fault.expected_code() as i32,
                "{fault:?}"
            );
        }
        w.take(a);
    }
    w.finish();
}

/// A write storage applied but failed because the WAL sync failed: the sender gets
/// `INTERNAL`, not an Ack, and no push goes out; its retry (same `client_msg_id`) is acked
/// as a duplicate with the seq the write kept, and the next message gets the seq after.
#[test]
fn an_applied_write_reported_failed_is_acked_only_on_retry() {
    let mut w = World::empty();
    let a = w.online(1, 0, LONG_TTL);
    let b = w.online(2, 0, LONG_TTL);
    w.sim.settle();
    w.check(&[]);
    let rid = w.send_text(a, To::Single(2), 5);
    w.check(BY_REQUEST);
    w.sim.execute_not_durable(0);
    w.check(&[]);
    w.sim.deliver(0);
    w.check(&[]);
    match w.answer(a, rid) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::Internal as i32),
        other => panic!("not-durable append answered {other:?}"),
    }
    assert!(Sim::pushes(&w.take(b)).is_empty());
    let retry = w.send_text(a, To::Single(2), 5);
    w.check(BY_REQUEST);
    let next = w.send_text(a, To::Single(2), 6);
    w.check(BY_REQUEST);
    w.sim.settle();
    w.check(&[]);
    match (w.answer(a, retry), w.answer(a, next)) {
        (Some(Body::Ack(r)), Some(Body::Ack(n))) => {
            assert_eq!((r.seq, r.duplicate), (1, true));
            assert_eq!((n.seq, n.duplicate), (2, false));
        }
        other => panic!("retry and next: {other:?}"),
    }
    w.finish();
}

/// How a connection goes away while its request is in flight.
#[derive(Debug, Clone, Copy)]
enum Gone {
    ClientClosed,
    Kicked,
    Revoked,
    LoggedOut,
    IdleTimeout,
    TokenExpired,
}

/// A connection closed (six ways) while its append waits for storage, before or after
/// storage applied it: the write completes, the recipient gets the push, nothing is
/// sent to the closed connection (the harness panics on that), and nothing is left
/// pending.
#[test]
fn a_request_in_flight_outlives_its_connection() {
    for gone in [
        Gone::ClientClosed,
        Gone::Kicked,
        Gone::Revoked,
        Gone::LoggedOut,
        Gone::IdleTimeout,
        Gone::TokenExpired,
    ] {
        for applied in [false, true] {
            let mut w = World::empty();
            let ttl = match gone {
                Gone::TokenExpired => SHORT_TTL,
                _ => LONG_TTL,
            };
            let a = w.online(1, 0, ttl);
            let b = w.online(2, 0, LONG_TTL);
            w.sim.settle();
            w.check(&[]);
            w.sim.advance(Duration::from_secs(60));
            w.check(BY_CLOCK);
            w.send_text(a, To::Single(2), 7);
            w.check(BY_REQUEST);
            if applied {
                w.sim.execute(0, None);
                w.check(&[]);
            }
            match gone {
                Gone::ClientClosed => {
                    w.disconnect(a);
                    w.check(&[]);
                }
                Gone::Kicked => {
                    w.sim.control.kick_user(1, "operator");
                    w.sim.run();
                    w.check(&[Closing::Admin]);
                }
                Gone::Revoked => {
                    w.model.revoking_user(1);
                    let now = w.sim.now;
                    w.sim.control.revoke_sessions(now, Revocation::User(1));
                    w.sim.run();
                    w.check(&[Closing::TokenRevoked]);
                }
                Gone::LoggedOut => {
                    w.send(
                        a,
                        Req::Logout { revoke: true },
                        pb::Logout { revoke_token: true },
                    );
                    w.check(&[Closing::Logout]);
                }
                Gone::IdleTimeout => {
                    // b pings at 120 s; a, silent since its send at 60 s, times out at
                    // 210 s.
                    w.sim.advance(Duration::from_secs(60));
                    w.check(BY_CLOCK);
                    w.send(b, Req::Ping, pb::Ping { client_time_ms: 1 });
                    w.check(&[]);
                    w.sim.advance(Duration::from_secs(100));
                    w.check(BY_CLOCK);
                }
                Gone::TokenExpired => {
                    w.sim.advance(Duration::from_secs(31));
                    w.check(BY_CLOCK);
                }
            }
            assert!(w.sim.client(a).closed.is_some(), "{gone:?}");
            assert!(w.sim.client(b).closed.is_none(), "{gone:?}");
            w.take(b);
            w.sim.settle();
            w.check(&[]);
            let pushes = Sim::pushes(&w.take(b));
            assert_eq!(pushes.len(), 1, "{gone:?}, applied first: {applied}");
            assert_eq!((pushes[0].seq, pushes[0].client_msg_id), (1, 7));
            assert_eq!(w.sim.control.pending_storage_requests(), 0, "{gone:?}");
            w.finish();
        }
    }
}

/// A clock jump of three years with one append applied and one not: one tick closes
/// every connection that is due (idle, not logged in), the writes still complete after
/// it, and a device reconnecting with its old token — whose verification is cached —
/// is refused as expired at the new time. A fresh login syncs both messages.
#[test]
fn a_clock_jump_closes_what_is_due_and_keeps_the_writes_in_flight() {
    let mut w = World::empty();
    let a = w.online(1, 0, LONG_TTL);
    let b = w.online(2, 0, LONG_TTL);
    let anonymous = w.connect();
    w.sim.settle();
    w.check(&[]);
    w.send_text(a, To::Single(2), 7);
    w.check(BY_REQUEST);
    w.sim.execute(0, None);
    w.check(&[]);
    w.send_text(b, To::Single(1), 8);
    w.check(BY_REQUEST);
    w.sim.jump(Duration::from_millis(3 * 365 * 24 * HOUR_MS));
    w.check(BY_CLOCK);
    for conn in [a, b, anonymous] {
        assert!(
            w.sim.client(conn).closed.is_some(),
            "{conn} survived the jump"
        );
    }
    w.sim.settle();
    w.check(&[]);

    let again = w.connect();
    let rid = w.login(again, 1, 0, true, LONG_TTL);
    w.check(&[Closing::LoginRejected]);
    match w.answer(again, rid) {
        Some(Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::TokenExpired as i32),
        other => panic!("old token after the jump: {other:?}"),
    }

    let fresh = w.online(1, 0, LONG_TTL);
    let rid = w.send(
        fresh,
        Req::Sync,
        pb::SyncRequest {
            inbox_cursor: 0,
            cursors: Vec::new(),
            limit: 0,
            inbox_position: Vec::new(),
        },
    );
    w.check(BY_REQUEST);
    w.sim.settle();
    w.check(&[]);
    match w.answer(fresh, rid) {
        Some(Body::SyncResponse(page)) => {
            let ids: Vec<u64> = page.messages.iter().map(|m| m.client_msg_id).collect();
            assert_eq!(ids, [7, 8]);
        }
        other => panic!("sync after the jump: {other:?}"),
    }
    w.finish();
}
