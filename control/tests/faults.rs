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
use harness::model::{Closing, Model, Req, Stats, fault_label};
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
        fault: Option<StorageFault>,
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
        1 => prop::sample::select(StorageFault::ALL.to_vec()).prop_map(Some),
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
        let mut sim = Sim::new(config(), 7);
        sim.hold_storage = true;
        let mut w = World {
            sim,
            model: Model::new(config()),
        };
        let conns: Vec<ConnId> = (1..=3).map(|_| w.connect()).collect();
        for (user, &conn) in (1..=3).zip(&conns) {
            w.login(conn, user, 0, false, LONG_TTL);
            w.check(&[]);
        }
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
                content: Some(text_content(&format!("m{client_msg_id}"))),
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
                if let Some(out_of_order) = self.sim.execute(pick, fault) {
                    self.model.stats.executed_out_of_order += u64::from(out_of_order);
                    if let Some(fault) = fault {
                        *self
                            .model
                            .stats
                            .injected
                            .entry(fault_label(fault))
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

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
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let schedules = prop::collection::vec(step(), 60..120);
    let mut total = Stats::default();
    for _ in 0..32 {
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
                .get(&fault_label(fault))
                .copied()
                .unwrap_or(0)
                > 0,
            "{fault:?} never injected"
        );
    }
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
