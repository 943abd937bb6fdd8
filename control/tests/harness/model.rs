//! The model behind the fault schedules of `tests/faults.rs`: what every simulated client
//! may and must see, given what storage has made durable, checked after every step.
//!
//! The test tells the model what the clients did ([`Model::opened`], [`Model::sent`],
//! [`Model::disconnected`], the operator actions); [`Model::check`] then reads what the
//! step produced — the completions the harness delivered ([`super::held`]), every frame
//! each client received, every close — and panics on the first broken invariant:
//!
//! 1. **No ack without a durable write.** An `Ack` of a persisted conversation names a
//!    (conversation, seq) whose successful append completion has been delivered, for
//!    this sender and `client_msg_id`; and no request that went to storage is answered
//!    before its completion is delivered.
//! 2. **No push of a message that is not durable.** A `MessagePush` of a persisted
//!    conversation names an original (not duplicate) append whose successful completion
//!    has been delivered, goes to a logged-in device of one of its recipients, and not to
//!    the connection that sent it.
//! 3. **Seqs contiguous and never duplicated.** A (conversation, seq) always names the
//!    same message; no connection gets the same push twice; every device of a recipient
//!    that is online when the completion is delivered gets the push (so a device that
//!    stays online sees every seq); chatroom pushes arrive in rising seq order with no
//!    seq twice. At the end, storage holds seqs 1..=n of every conversation — an
//!    errored append took none — and every acked or pushed message is among them.
//! 4. **A storage error is answered with an error.** When a completion carrying an error
//!    is delivered and the requester is still connected, the request is answered
//!    `Error` with the documented code ([`super::held::StorageFault::expected_code`]) and the
//!    connection stays open; a successful append is answered `Ack` with the seq storage
//!    assigned; any other completed request gets exactly one answer. No request is ever
//!    answered twice, and (at the end) none on an open connection goes unanswered.
//! 5. **Timers and closes.** After every step no open connection is past its login
//!    deadline, its idle timeout or (logged in) its token's expiry; every close has a
//!    reason the step allows and, for timeouts, was due; a login succeeds only with a
//!    token that is unexpired and not revoked at that moment (so a cached verification
//!    is re-checked after a clock jump). The control plane's connection, session and
//!    online-device bookkeeping matches the clients', and its storage-error counter
//!    matches the errors delivered.
//!
//! [`Model::finish`] settles storage, checks that nothing stayed unanswered, audits
//! storage, closes every connection and checks that no session, pending request or
//! chatroom is left behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petrel_control::{CloseReason, Config, ConnId, Ticket, Timestamp};
use petrel_proto::{Body, Frame, pb};
use petrel_storage::{ConversationKey, Engine, Reply, Request, UserId};

use super::Sim;
use super::held::{Delivered, Origin, is_answered};

/// Why a connection closed, as far as the schedule is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Closing {
    /// The client closed its side.
    ClientGone,
    Logout,
    NotLoggedIn,
    LoginRejected,
    Replaced,
    Admin,
    TokenRevoked,
    SlowConsumer,
    Idle,
    LoginTimeout,
    SessionExpired,
    /// Framing errors and shutdown, which the fault schedules never cause.
    Other,
}

impl Closing {
    fn of(reason: CloseReason) -> Closing {
        match reason {
            CloseReason::LoginTimeout => Closing::LoginTimeout,
            CloseReason::NotLoggedIn => Closing::NotLoggedIn,
            CloseReason::LoginRejected(_) => Closing::LoginRejected,
            CloseReason::Kicked(pb::KickReason::Replaced) => Closing::Replaced,
            CloseReason::Kicked(pb::KickReason::TokenRevoked) => Closing::TokenRevoked,
            CloseReason::Kicked(pb::KickReason::SlowConsumer) => Closing::SlowConsumer,
            CloseReason::Kicked(pb::KickReason::Admin) => Closing::Admin,
            CloseReason::Kicked(pb::KickReason::Idle) => Closing::Idle,
            CloseReason::Kicked(_) => Closing::Other,
            CloseReason::Logout => Closing::Logout,
            CloseReason::SessionExpired => Closing::SessionExpired,
            CloseReason::FatalFrameError(_) | CloseReason::BadFrameBeforeLogin(_) => Closing::Other,
        }
    }
}

/// Where a `SendMessage` goes, resolved from the sender's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Persisted(ConversationKey),
    Room(u64),
    /// Not resolvable (the sender is not logged in).
    Unknown,
}

/// A request a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    Login {
        user: u64,
        device: String,
        token: String,
    },
    Renew,
    Ping,
    Logout {
        revoke: bool,
    },
    Send {
        conversation: pb::ConversationId,
        client_msg_id: u64,
    },
    JoinRoom(u64),
    LeaveRoom(u64),
    /// Any other conversation operation.
    Op,
    Sync,
    History,
}

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    sender: u64,
    client_msg_id: u64,
}

/// An original append whose completion was delivered: pushable.
#[derive(Debug)]
struct Original {
    msg: Msg,
    recipients: Vec<u64>,
    from: Option<ConnId>,
}

#[derive(Debug)]
struct TokenInfo {
    expires_at: Timestamp,
    revoked: bool,
}

#[derive(Debug)]
struct SessionModel {
    user: u64,
    device: String,
    tokens: Vec<String>,
    expires_at: Timestamp,
}

#[derive(Debug)]
struct ReqModel {
    what: Req,
    dest: Dest,
    /// The storage request it caused, if it waits for one to be answered.
    ticket: Option<Ticket>,
    /// Whether that storage request's completion has been delivered.
    completed: bool,
    answers: u32,
    answer: Option<Body>,
}

/// Seqs one connection saw in one chatroom since it joined.
#[derive(Debug, Default)]
struct RoomView {
    /// Highest seq pushed or reported in a gap.
    last: u64,
    seen: BTreeSet<u64>,
}

#[derive(Debug)]
struct ConnModel {
    opened_at: Timestamp,
    last_activity: Timestamp,
    session: Option<SessionModel>,
    requests: BTreeMap<u32, ReqModel>,
    closed: bool,
    pushes: BTreeSet<(ConversationKey, u64)>,
    rooms: BTreeMap<u64, RoomView>,
}

impl ConnModel {
    fn in_flight(&self) -> bool {
        self.requests
            .values()
            .any(|r| r.ticket.is_some() && !r.completed)
    }
}

/// What a delivered completion obliges the requester to receive in the same step.
#[derive(Debug)]
enum Expect {
    Ack { seq: u64, duplicate: bool },
    Error(pb::ErrorCode),
    Answer,
}

/// How often each fault was exercised (to show a schedule generator reaches them all).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub steps: u64,
    pub injected: BTreeMap<String, u64>,
    pub executed_out_of_order: u64,
    pub delivered_out_of_order: u64,
    pub closed_in_flight: BTreeMap<Closing, u64>,
    pub jumps_in_flight: u64,
    pub error_answers: u64,
    pub acks: u64,
    pub pushes: u64,
}

impl Stats {
    /// Adds `other` in.
    pub fn add(&mut self, other: &Stats) {
        self.steps += other.steps;
        for (k, v) in &other.injected {
            *self.injected.entry(k.clone()).or_default() += v;
        }
        self.executed_out_of_order += other.executed_out_of_order;
        self.delivered_out_of_order += other.delivered_out_of_order;
        for (k, v) in &other.closed_in_flight {
            *self.closed_in_flight.entry(*k).or_default() += v;
        }
        self.jumps_in_flight += other.jumps_in_flight;
        self.error_answers += other.error_answers;
        self.acks += other.acks;
        self.pushes += other.pushes;
    }
}

/// The clients' side of the world, and the invariants.
#[derive(Debug)]
pub struct Model {
    config: Config,
    conns: BTreeMap<ConnId, ConnModel>,
    tokens: HashMap<String, TokenInfo>,
    /// The newest token of each (user, device) that logged in or renewed: what a
    /// reconnecting client would log in with.
    saved: HashMap<(u64, String), String>,
    /// Every (conversation, seq) a delivered successful append completion named.
    durable: HashMap<(ConversationKey, u64), Msg>,
    /// The originals among them.
    pushable: HashMap<(ConversationKey, u64), Original>,
    /// What `Counters::storage_errors` must read.
    storage_errors: u64,
    pub stats: Stats,
    /// Every frame each connection received, for tests to look at (and clear).
    pub received: BTreeMap<ConnId, Vec<Frame>>,
}

/// The persisted conversation `id` names as `viewer` sees it; `None` for chatrooms and
/// invalid ids.
pub fn key_of(viewer: u64, id: &pb::ConversationId) -> Option<ConversationKey> {
    if id.id == 0 {
        return None;
    }
    match pb::ConversationKind::try_from(id.kind).ok()? {
        pb::ConversationKind::Single => {
            Some(ConversationKey::single(UserId(viewer), UserId(id.id)))
        }
        pb::ConversationKind::Group => Some(ConversationKey::Group(id.id)),
        pb::ConversationKind::PublicAccount => Some(ConversationKey::PublicAccount(id.id)),
        pb::ConversationKind::Chatroom | pb::ConversationKind::Unspecified => None,
    }
}

fn room_of(id: &pb::ConversationId) -> Option<u64> {
    (id.kind == pb::ConversationKind::Chatroom as i32 && id.id != 0).then_some(id.id)
}

impl Model {
    /// A model of a world running `config`.
    pub fn new(config: Config) -> Model {
        Model {
            config,
            conns: BTreeMap::new(),
            tokens: HashMap::new(),
            saved: HashMap::new(),
            durable: HashMap::new(),
            pushable: HashMap::new(),
            storage_errors: 0,
            stats: Stats::default(),
            received: BTreeMap::new(),
        }
    }

    /// A token the test minted, valid until `expires_at`.
    pub fn minted(&mut self, token: &str, expires_at: Timestamp) {
        self.tokens.insert(
            token.to_owned(),
            TokenInfo {
                expires_at,
                revoked: false,
            },
        );
    }

    /// The connection opened at `now`.
    pub fn opened(&mut self, conn: ConnId, now: Timestamp) {
        self.conns.insert(
            conn,
            ConnModel {
                opened_at: now,
                last_activity: now,
                session: None,
                requests: BTreeMap::new(),
                closed: false,
                pushes: BTreeSet::new(),
                rooms: BTreeMap::new(),
            },
        );
    }

    /// Open connections, in id order.
    pub fn open_conns(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.closed)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The user `conn` is logged in as.
    pub fn user_of(&self, conn: ConnId) -> Option<u64> {
        let c = self.conns.get(&conn)?;
        c.session.as_ref().filter(|_| !c.closed).map(|s| s.user)
    }

    /// Open, logged-in connections of `user`.
    fn devices_of(&self, user: u64) -> BTreeSet<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.closed && c.session.as_ref().is_some_and(|s| s.user == user))
            .map(|(&id, _)| id)
            .collect()
    }

    /// The token (user, device) last logged in with or was renewed to.
    pub fn saved_token(&self, user: u64, device: &str) -> Option<String> {
        self.saved.get(&(user, device.to_owned())).cloned()
    }

    /// `conn`'s client sent request `rid` at `now`.
    pub fn sent(&mut self, conn: ConnId, rid: u32, what: Req, now: Timestamp) {
        let user = self.user_of(conn);
        let c = self.conns.get_mut(&conn).expect("known connection");
        assert!(!c.closed, "the test sent on closed {conn}");
        c.last_activity = now;
        let dest = match (&what, user) {
            (Req::Send { conversation, .. }, Some(user)) => match room_of(conversation) {
                Some(room) => Dest::Room(room),
                None => key_of(user, conversation).map_or(Dest::Unknown, Dest::Persisted),
            },
            _ => Dest::Unknown,
        };
        if let (Req::Logout { revoke: true }, Some(session)) = (&what, &c.session) {
            let tokens = session.tokens.clone();
            self.revoke(&tokens);
        }
        let c = self.conns.get_mut(&conn).expect("known connection");
        let old = c.requests.insert(
            rid,
            ReqModel {
                what,
                dest,
                ticket: None,
                completed: false,
                answers: 0,
                answer: None,
            },
        );
        assert!(old.is_none(), "request id {rid} reused on {conn}");
    }

    /// The client of `conn` closed its side.
    pub fn disconnected(&mut self, conn: ConnId) {
        let c = self.conns.get_mut(&conn).expect("known connection");
        if c.in_flight() {
            *self
                .stats
                .closed_in_flight
                .entry(Closing::ClientGone)
                .or_default() += 1;
        }
        c.closed = true;
    }

    /// The operator is about to revoke every live session of `user`.
    pub fn revoking_user(&mut self, user: u64) {
        let tokens: Vec<String> = self
            .conns
            .values()
            .filter(|c| !c.closed)
            .filter_map(|c| c.session.as_ref())
            .filter(|s| s.user == user)
            .flat_map(|s| s.tokens.iter().cloned())
            .collect();
        self.revoke(&tokens);
    }

    fn revoke(&mut self, tokens: &[String]) {
        for t in tokens {
            if let Some(info) = self.tokens.get_mut(t) {
                info.revoked = true;
            }
        }
    }

    /// Whether any storage request of a client is in flight.
    pub fn any_in_flight(&self) -> bool {
        self.conns.values().any(|c| !c.closed && c.in_flight())
    }

    /// Checks everything the last step produced. `allowed` lists the reasons for which
    /// the step may have closed connections.
    pub fn check(&mut self, sim: &mut Sim, allowed: &[Closing]) {
        let now = sim.now;
        self.stats.steps += 1;
        // Which client requests wait for which storage request.
        let emitted: Vec<(Ticket, Option<Origin>, bool)> = sim
            .queued()
            .map(|q| (q.ticket, q.origin, is_answered(&q.request)))
            .chain(
                sim.held()
                    .iter()
                    .map(|c| (c.ticket, c.origin, is_answered(&c.request))),
            )
            .collect();
        let delivered = sim.take_delivered();
        let emitted = emitted.into_iter().chain(
            delivered
                .iter()
                .map(|d| (d.ticket, d.origin, is_answered(&d.request))),
        );
        for (ticket, origin, answered) in emitted {
            if let (Some(o), true) = (origin, answered)
                && let Some(r) = self
                    .conns
                    .get_mut(&o.conn)
                    .and_then(|c| c.requests.get_mut(&o.rid))
            {
                assert!(
                    r.ticket.is_none_or(|t| t == ticket),
                    "request {} on {} caused two storage requests",
                    o.rid,
                    o.conn
                );
                r.ticket = Some(ticket);
            }
        }

        // What the delivered completions oblige.
        let mut expect_answers = Vec::new();
        let mut expect_pushes = Vec::new();
        for d in &delivered {
            self.completed(d, &mut expect_answers, &mut expect_pushes);
        }

        // What the clients received, frame by frame.
        for (&conn, client) in sim.clients.iter_mut() {
            for frame in client.take() {
                self.received.entry(conn).or_default().push(frame.clone());
                self.received(conn, frame, now);
            }
        }

        // Who was closed, and why.
        let closes: Vec<(ConnId, CloseReason)> = sim
            .clients
            .iter()
            .filter_map(|(&id, c)| c.closed.map(|r| (id, r)))
            .filter(|(id, _)| self.conns.get(id).is_some_and(|c| !c.closed))
            .collect();
        for (conn, reason) in closes {
            self.closed(conn, reason, allowed, now);
        }

        // Every obligation of the delivered completions is met.
        for (o, expect) in expect_answers {
            let c = &self.conns[&o.conn];
            let r = &c.requests[&o.rid];
            let answer = r.answer.as_ref().unwrap_or_else(|| {
                panic!(
                    "request {} on {} ({:?}) got no answer when its storage completion \
                     was delivered",
                    o.rid, o.conn, r.what
                )
            });
            match (expect, answer) {
                (Expect::Ack { seq, duplicate }, Body::Ack(a)) => {
                    assert_eq!(
                        (a.seq, a.duplicate),
                        (seq, duplicate),
                        "Ack on {} must carry the seq storage assigned",
                        o.conn
                    );
                }
                (Expect::Error(code), Body::Error(e)) => {
                    assert_eq!(
                        e.code, code as i32,
                        "storage error answered with the wrong code on {}: {e:?}",
                        o.conn
                    );
                    assert!(
                        !c.closed,
                        "{} was closed after an Error answering a failed storage request",
                        o.conn
                    );
                    if code == pb::ErrorCode::StorageFull {
                        assert!(e.retry_after_ms > 0, "STORAGE_FULL without retry_after_ms");
                    }
                    self.stats.error_answers += 1;
                }
                (Expect::Answer, _) => {}
                (expect, answer) => panic!(
                    "request {} on {} ({:?}): expected {expect:?}, got {answer:?}",
                    o.rid, o.conn, r.what
                ),
            }
        }
        for (conn, key, seq) in expect_pushes {
            let c = &self.conns[&conn];
            assert!(
                c.closed || c.pushes.contains(&(key, seq)),
                "{conn}, online for a recipient, missed the push of {key:?} seq {seq}"
            );
        }

        self.check_timers(now);
        self.check_bookkeeping(sim);
    }

    /// Books one delivered completion: what became durable, and what its requester and
    /// the recipients' devices must receive in this step.
    fn completed(
        &mut self,
        d: &Delivered,
        expect_answers: &mut Vec<(Origin, Expect)>,
        expect_pushes: &mut Vec<(ConnId, ConversationKey, u64)>,
    ) {
        let answered = is_answered(&d.request);
        if let Err(fault) = d.result
            && (!answered || fault.is_server_fault())
        {
            self.storage_errors += 1;
        }
        if let Request::Append(req) = &d.request
            && let Ok(Reply::Appended(outcome)) = &d.result
        {
            let key = req.conversation;
            assert_eq!(outcome.conversation, key, "storage appended elsewhere");
            let msg = Msg {
                sender: req.sender.0,
                client_msg_id: req.client_msg_id,
            };
            let known = *self.durable.entry((key, outcome.seq)).or_insert(msg);
            assert_eq!(known, msg, "{key:?} seq {} names two messages", outcome.seq);
            if !outcome.duplicate {
                let recipients: Vec<u64> = outcome.recipients.iter().map(|u| u.0).collect();
                let from = d.origin.map(|o| o.conn);
                for &r in &recipients {
                    for conn in self.devices_of(r) {
                        if Some(conn) != from {
                            expect_pushes.push((conn, key, outcome.seq));
                        }
                    }
                }
                self.pushable.insert(
                    (key, outcome.seq),
                    Original {
                        msg,
                        recipients,
                        from,
                    },
                );
            }
        }
        let Some(o) = d.origin.filter(|_| answered) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&o.conn) else {
            return;
        };
        let Some(r) = c.requests.get_mut(&o.rid) else {
            return;
        };
        r.completed = true;
        if c.closed {
            return;
        }
        let expect = match &d.result {
            Ok(Reply::Appended(outcome)) => Expect::Ack {
                seq: outcome.seq,
                duplicate: outcome.duplicate,
            },
            Ok(_) => Expect::Answer,
            Err(fault) => Expect::Error(fault.expected_code()),
        };
        expect_answers.push((o, expect));
    }

    /// Books one frame `conn` received.
    fn received(&mut self, conn: ConnId, frame: Frame, now: Timestamp) {
        let user = self.user_of(conn);
        let c = self.conns.get_mut(&conn).expect("known connection");
        if frame.flags.is_response() {
            let rid = frame.request_id;
            let r = c
                .requests
                .get_mut(&rid)
                .unwrap_or_else(|| panic!("{conn} got an answer to request {rid}, never sent"));
            r.answers += 1;
            assert_eq!(r.answers, 1, "request {rid} on {conn} answered twice");
            assert!(
                r.ticket.is_none() || r.completed,
                "request {rid} on {conn} ({:?}) answered before its storage completion was \
                 delivered: {:?}",
                r.what,
                frame.body
            );
            r.answer = Some(frame.body.clone());
            let (what, dest) = (r.what.clone(), r.dest);
            self.answered(conn, user, what, dest, frame.body, now);
            return;
        }
        match frame.body {
            Body::MessagePush(p) => {
                let conversation = p.conversation.expect("push names its conversation");
                if let Some(room) = room_of(&conversation) {
                    let view = c
                        .rooms
                        .get_mut(&room)
                        .unwrap_or_else(|| panic!("{conn} got a push of room {room} it is not in"));
                    assert!(
                        p.seq > view.last && view.seen.insert(p.seq),
                        "{conn}: room {room} push seq {} after {} (seen {:?})",
                        p.seq,
                        view.last,
                        view.seen
                    );
                    view.last = p.seq;
                    return;
                }
                let user = user.unwrap_or_else(|| panic!("push to {conn}, not logged in"));
                let key = key_of(user, &conversation).expect("push of a valid conversation");
                let original = self.pushable.get(&(key, p.seq)).unwrap_or_else(|| {
                    panic!(
                        "{conn} got a push of {key:?} seq {} before its append completed \
                         successfully",
                        p.seq
                    )
                });
                assert_eq!(
                    original.msg,
                    Msg {
                        sender: p.sender,
                        client_msg_id: p.client_msg_id
                    },
                    "push of {key:?} seq {} is another message than storage holds",
                    p.seq
                );
                assert!(
                    original.recipients.contains(&user),
                    "{conn} (user {user}) got a push of {key:?}, not a recipient"
                );
                assert_ne!(
                    original.from,
                    Some(conn),
                    "the sending connection got a push of its own message"
                );
                assert!(
                    c.pushes.insert((key, p.seq)),
                    "{conn} got {key:?} seq {} pushed twice",
                    p.seq
                );
                self.stats.pushes += 1;
            }
            Body::Gap(g) => {
                let room = g
                    .conversation
                    .and_then(|c| room_of(&c))
                    .expect("gap of a room");
                let view = c
                    .rooms
                    .get_mut(&room)
                    .unwrap_or_else(|| panic!("{conn} got a gap of room {room} it is not in"));
                assert!(
                    g.from_seq > view.last && g.from_seq <= g.to_seq,
                    "bad gap {g:?}"
                );
                for seq in g.from_seq..=g.to_seq {
                    assert!(view.seen.insert(seq), "{conn}: gap covers seen seq {seq}");
                }
                view.last = g.to_seq;
            }
            // Kicks and unsolicited errors precede a close, checked with the close;
            // conversation events carry no seq of a message.
            _ => {}
        }
    }

    /// Books the answer to request `what` of `conn`.
    fn answered(
        &mut self,
        conn: ConnId,
        user: Option<u64>,
        what: Req,
        dest: Dest,
        body: Body,
        now: Timestamp,
    ) {
        match (what, body) {
            (Req::Send { client_msg_id, .. }, Body::Ack(a)) => {
                assert_eq!(a.client_msg_id, client_msg_id, "Ack of another message");
                match dest {
                    Dest::Persisted(key) => {
                        let sender = user.expect("an acked sender is logged in");
                        let msg = self.durable.get(&(key, a.seq)).unwrap_or_else(|| {
                            panic!(
                                "{conn} got an Ack of {key:?} seq {} whose write is not durable",
                                a.seq
                            )
                        });
                        assert_eq!(
                            *msg,
                            Msg {
                                sender,
                                client_msg_id
                            },
                            "Ack of {key:?} seq {} names another message",
                            a.seq
                        );
                        self.stats.acks += 1;
                    }
                    Dest::Room(room) => {
                        let c = self.conns.get_mut(&conn).expect("known connection");
                        let view = c.rooms.get_mut(&room).unwrap_or_else(|| {
                            panic!("{conn} got an Ack for room {room} it is not in")
                        });
                        assert!(view.seen.insert(a.seq), "room {room} seq {} twice", a.seq);
                    }
                    Dest::Unknown => panic!("{conn} got an Ack for an unroutable send"),
                }
            }
            (what, Body::Ack(_)) => panic!("{conn} got an Ack answering {what:?}"),
            (
                Req::Login {
                    user,
                    device,
                    token,
                },
                Body::LoginResult(r),
            ) => {
                let info = &self.tokens[&token];
                assert!(
                    info.expires_at > now,
                    "{conn} logged in with a token that expired at {} (now {now})",
                    info.expires_at
                );
                assert!(!info.revoked, "{conn} logged in with a revoked token");
                assert_eq!(r.user_id, user);
                assert_eq!(r.token_expires_at_ms, info.expires_at.as_millis());
                self.saved.insert((user, device.clone()), token.clone());
                let c = self.conns.get_mut(&conn).expect("known connection");
                assert!(c.session.is_none(), "{conn} logged in twice");
                c.session = Some(SessionModel {
                    user,
                    device,
                    tokens: vec![token],
                    expires_at: Timestamp(r.token_expires_at_ms),
                });
            }
            (Req::Renew, Body::RenewResult(r)) => {
                let expires_at = Timestamp(r.expires_at_ms);
                self.minted(&r.token, expires_at);
                let c = self.conns.get_mut(&conn).expect("known connection");
                let s = c.session.as_mut().expect("renewed a session");
                self.saved
                    .insert((s.user, s.device.clone()), r.token.clone());
                s.tokens.push(r.token);
                s.expires_at = s.expires_at.max(expires_at);
            }
            (Req::JoinRoom(room), Body::ConversationOpResult(_)) => {
                let c = self.conns.get_mut(&conn).expect("known connection");
                c.rooms.entry(room).or_default();
            }
            (Req::LeaveRoom(room), Body::ConversationOpResult(_)) => {
                let c = self.conns.get_mut(&conn).expect("known connection");
                c.rooms.remove(&room);
            }
            _ => {}
        }
    }

    /// Books a close the control plane decided.
    fn closed(&mut self, conn: ConnId, reason: CloseReason, allowed: &[Closing], now: Timestamp) {
        let closing = Closing::of(reason);
        let config = &self.config;
        let c = self.conns.get_mut(&conn).expect("known connection");
        assert!(
            allowed.contains(&closing),
            "{conn} closed ({reason:?}) by a step that may close only for {allowed:?}"
        );
        let due = match closing {
            Closing::Idle => Some(c.last_activity.saturating_add(config.idle_timeout)),
            Closing::LoginTimeout => {
                assert!(
                    c.session.is_none(),
                    "{conn} timed out logging in, logged in"
                );
                Some(c.opened_at.saturating_add(config.login_deadline))
            }
            Closing::SessionExpired => Some(c.session.as_ref().expect("a session").expires_at),
            _ => None,
        };
        if let Some(due) = due {
            assert!(
                due <= now,
                "{conn} closed ({reason:?}) early: due {due}, now {now}"
            );
        }
        if c.in_flight() {
            *self.stats.closed_in_flight.entry(closing).or_default() += 1;
        }
        c.closed = true;
    }

    /// No open connection is past one of its deadlines.
    fn check_timers(&self, now: Timestamp) {
        for (&id, c) in self.conns.iter().filter(|(_, c)| !c.closed) {
            let idle = c.last_activity.saturating_add(self.config.idle_timeout);
            assert!(
                idle > now,
                "{id} idle since {} is open at {now}",
                c.last_activity
            );
            match &c.session {
                None => {
                    let due = c.opened_at.saturating_add(self.config.login_deadline);
                    assert!(due > now, "{id} not logged in after its deadline {due}");
                }
                Some(s) => {
                    if self.config.enforce_token_expiry {
                        assert!(
                            s.expires_at > now,
                            "{id} still logged in after its token expired at {}",
                            s.expires_at
                        );
                    }
                }
            }
        }
    }

    /// The control plane's bookkeeping matches the clients'.
    fn check_bookkeeping(&self, sim: &Sim) {
        let open: Vec<ConnId> = self.open_conns();
        assert_eq!(
            sim.control.connection_count(),
            open.len(),
            "connection count"
        );
        let logged_in = open
            .iter()
            .filter(|c| self.conns[c].session.is_some())
            .count();
        assert_eq!(
            sim.control.session_count() as usize,
            logged_in,
            "session count"
        );
        let users: BTreeSet<u64> = self
            .conns
            .values()
            .filter_map(|c| c.session.as_ref().map(|s| s.user))
            .collect();
        for user in users {
            let online: BTreeSet<ConnId> =
                sim.control.online_devices(user).iter().copied().collect();
            assert_eq!(
                online,
                self.devices_of(user),
                "online devices of user {user}"
            );
        }
        assert_eq!(
            sim.control.counters().storage_errors,
            self.storage_errors,
            "storage errors counted"
        );
    }

    /// The end of a schedule: storage settles (no faults), every request on an open
    /// connection has been answered exactly once, storage holds every durable message
    /// at contiguous seqs, and once every connection is closed nothing is left behind.
    /// `users` are the user ids the schedule used.
    pub fn finish(&mut self, sim: &mut Sim, users: &[u64]) {
        sim.settle();
        self.check(sim, &[Closing::SlowConsumer]);
        for (id, c) in self.conns.iter().filter(|(_, c)| !c.closed) {
            for (rid, r) in &c.requests {
                if !matches!(r.what, Req::Logout { .. }) {
                    assert_eq!(
                        r.answers, 1,
                        "request {rid} on {id} ({:?}) never answered",
                        r.what
                    );
                }
            }
        }
        self.audit(sim, users);
        for conn in self.open_conns() {
            self.disconnected(conn);
            sim.disconnect(conn);
        }
        self.check(sim, &[]);
        assert_eq!(sim.control.connection_count(), 0, "connections left");
        assert_eq!(sim.control.session_count(), 0, "sessions left");
        assert_eq!(
            sim.control.pending_storage_requests(),
            0,
            "pending requests left"
        );
        assert_eq!(sim.control.chatroom_count(), 0, "chatrooms left");
        for &user in users {
            assert!(
                sim.control.online_devices(user).is_empty(),
                "user {user} online"
            );
        }
        assert_eq!(sim.queued().count() + sim.held().len(), 0, "storage idle");
    }

    /// Storage holds seqs 1..=n of every conversation a durable append named, and each
    /// durable (conversation, seq) is the message the completion said.
    fn audit(&self, sim: &Sim, users: &[u64]) {
        let keys: BTreeSet<ConversationKey> = self.durable.keys().map(|(k, _)| *k).collect();
        for key in keys {
            let stored = users
                .iter()
                .find_map(|&u| read_all(sim, u, key))
                .unwrap_or_else(|| panic!("no user may read {key:?}"));
            let seqs: Vec<u64> = stored.iter().map(|m| m.0).collect();
            let contiguous: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, contiguous, "{key:?} seqs are not 1..=n");
            for ((k, seq), msg) in &self.durable {
                if *k == key {
                    let (_, stored) = stored[(*seq - 1) as usize];
                    assert_eq!(stored, *msg, "{key:?} seq {seq} is not what was acked");
                }
            }
        }
    }
}

/// Every message of `key` in storage as (seq, sender), ascending, read as `user`; `None`
/// if the user may not read it.
fn read_all(sim: &Sim, user: u64, key: ConversationKey) -> Option<Vec<(u64, Msg)>> {
    let mut all = Vec::new();
    let mut before = u64::MAX;
    loop {
        let reply = sim
            .storage
            .execute(Request::History {
                user: UserId(user),
                conversation: key,
                before_seq: before,
                limit: 1000,
            })
            .ok()?;
        let Reply::History(page) = reply else {
            panic!("History answered {reply:?}");
        };
        if page.messages.is_empty() {
            break;
        }
        before = page.messages[0].seq;
        let mut older: Vec<(u64, Msg)> = page
            .messages
            .iter()
            .map(|m| {
                (
                    m.seq,
                    Msg {
                        sender: m.sender.0,
                        client_msg_id: m.client_msg_id,
                    },
                )
            })
            .collect();
        older.append(&mut all);
        all = older;
    }
    Some(all)
}
