//! Operation sequences against the sans-IO control plane, and the invariants checked
//! after every step.
//!
//! A [`World`] owns a [`Control`], an in-memory storage engine ([`MemEngine`]) and the
//! clients of every connection. A fuzz input decodes ([`decode`]) into [`Step`]s:
//! connections opened and closed by the client, frames (well-formed requests, or raw
//! bytes through the same [`FrameDecoder`] a transport uses), clock jumps, slow readers,
//! operator kicks and revocations, and storage that completes at once, is held back and
//! completed later (in emission order, like the commit queue), or fails a request with an
//! injected [`StorageError`].
//!
//! Checked after every step (a violated one panics, which libFuzzer reports):
//! - nothing panics; every byte the server sends decodes as frames;
//! - no `Ack` (and no push, sync or history message) for a persisted conversation names
//!   a message storage has not durably appended — the driver records an append as
//!   durable only when it runs it, so an ack sent before its write completed is caught;
//! - seqs are contiguous per conversation (each new append is the last seq plus one),
//!   and live pushes reach a connection in increasing seq order per conversation;
//! - nothing is sent to a connection after it was closed (by either side);
//! - the control plane counts exactly the connections the transport has open, and no
//!   more sessions than that;
//! - at the end, after every connection closed and storage drained, no connection or
//!   session is left.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use petrel_control::token::{self, TokenSpec};
use petrel_control::{Action, Config, ConnId, Control, Event, KeyRing, RateLimit, Ticket};
use petrel_control::{Revocation, Timestamp};
use petrel_proto::{Body, DecoderConfig, Frame, FrameDecoder, pb};
use petrel_storage::{
    ConversationKey, Engine, MemEngine, Reply, Request, StorageConfig, StorageError,
};

use crate::input::{Reader, Writer};

/// Start of the virtual clock.
pub const T0: Timestamp = Timestamp(1_764_000_000_000);
/// Most steps one input runs (longer inputs are cut).
pub const MAX_STEPS: usize = 256;
/// Users are 1..=USERS.
const USERS: u64 = 4;

/// How a login's token is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Signed by the active key, valid for the step's lifetime.
    Valid,
    /// Signed by the older key of the ring (still verifies).
    OldKey,
    /// Lifetime zero: expired on arrival.
    Expired,
    /// Valid, but for another user than the login names.
    OtherUser,
    /// Not a token at all.
    Garbage,
}

/// One thing that happens to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A client connects.
    Open,
    /// `Login` on connection `conn` (an index into every connection opened so far).
    Login {
        /// Connection index.
        conn: u8,
        /// User (1..=4 after reduction).
        user: u8,
        /// Device `d0`..`d2`.
        device: u8,
        /// Platform (reduced modulo 6).
        platform: u8,
        /// How the token is made.
        token: TokenKind,
        /// Token lifetime, seconds (modulo 900, plus one).
        ttl_s: u16,
    },
    /// `SendMessage`.
    Send {
        /// Connection index.
        conn: u8,
        /// 0 single, 1 group, 2 chatroom, 3 public account (modulo 4).
        kind: u8,
        /// Peer, group, room or account id (small).
        target: u8,
        /// The client's idempotency id (small, so retries happen).
        client_msg_id: u8,
    },
    /// A `ConversationOp` (`op` picks which, `a` and `b` are its arguments).
    Op {
        /// Connection index.
        conn: u8,
        /// Which operation (modulo 12).
        op: u8,
        /// First argument.
        a: u8,
        /// Second argument.
        b: u8,
    },
    /// `SyncRequest`.
    Sync {
        /// Connection index.
        conn: u8,
        /// Inbox cursor.
        cursor: u8,
        /// Page limit.
        limit: u8,
    },
    /// `HistoryRequest` on a 1:1 chat.
    History {
        /// Connection index.
        conn: u8,
        /// Peer.
        peer: u8,
        /// Exclusive upper bound (0: newest).
        before: u8,
    },
    /// `Ping`.
    Ping {
        /// Connection index.
        conn: u8,
    },
    /// `RenewToken`.
    Renew {
        /// Connection index.
        conn: u8,
    },
    /// `Logout`.
    Logout {
        /// Connection index.
        conn: u8,
        /// Revoke the token too.
        revoke: bool,
    },
    /// Raw bytes from the client, cut into frames by a transport's decoder.
    Raw {
        /// Connection index.
        conn: u8,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The client closes the connection.
    Close {
        /// Connection index.
        conn: u8,
    },
    /// The client stops (or resumes) reporting flushed bytes.
    Slow {
        /// Connection index.
        conn: u8,
        /// Slow or not.
        slow: bool,
    },
    /// The clock moves forward, timers fire on the way.
    Advance {
        /// Milliseconds (modulo 1,000,000).
        ms: u32,
    },
    /// Storage holds completions back (or, toggled again, completes everything held).
    HoldStorage,
    /// The oldest `n` held storage requests complete.
    CompleteStorage {
        /// How many.
        n: u8,
    },
    /// The oldest storage request fails with an injected error (nothing is written).
    FailStorage {
        /// Which error (modulo 5).
        kind: u8,
    },
    /// The operator kicks a user.
    Kick {
        /// The user.
        user: u8,
    },
    /// The operator revokes a user's sessions.
    Revoke {
        /// The user.
        user: u8,
    },
}

const OPCODES: u8 = 20;

/// Reads steps from fuzz input until it runs out (at most [`MAX_STEPS`]).
pub fn decode(data: &[u8]) -> Vec<Step> {
    let mut r = Reader::new(data);
    let mut steps = Vec::new();
    while !r.is_empty() && steps.len() < MAX_STEPS {
        let step = match r.u8() % OPCODES {
            0 => Step::Open,
            1 => Step::Login {
                conn: r.u8(),
                user: r.u8(),
                device: r.u8(),
                platform: r.u8(),
                token: match r.u8() % 5 {
                    0 => TokenKind::Valid,
                    1 => TokenKind::OldKey,
                    2 => TokenKind::Expired,
                    3 => TokenKind::OtherUser,
                    _ => TokenKind::Garbage,
                },
                ttl_s: r.u16(),
            },
            2 => Step::Send {
                conn: r.u8(),
                kind: r.u8(),
                target: r.u8(),
                client_msg_id: r.u8(),
            },
            3 => Step::Op {
                conn: r.u8(),
                op: r.u8(),
                a: r.u8(),
                b: r.u8(),
            },
            4 => Step::Sync {
                conn: r.u8(),
                cursor: r.u8(),
                limit: r.u8(),
            },
            5 => Step::History {
                conn: r.u8(),
                peer: r.u8(),
                before: r.u8(),
            },
            6 => Step::Ping { conn: r.u8() },
            7 => Step::Renew { conn: r.u8() },
            8 => Step::Logout {
                conn: r.u8(),
                revoke: r.u8() & 1 == 1,
            },
            9 => Step::Raw {
                conn: r.u8(),
                bytes: r.bytes(255).to_vec(),
            },
            10 => Step::Close { conn: r.u8() },
            11 => Step::Slow {
                conn: r.u8(),
                slow: r.u8() & 1 == 1,
            },
            12 | 13 => Step::Advance { ms: r.u32() },
            14 => Step::HoldStorage,
            15 => Step::CompleteStorage { n: r.u8() },
            16 => Step::FailStorage { kind: r.u8() },
            17 => Step::Kick { user: r.u8() },
            18 => Step::Revoke { user: r.u8() },
            _ => Step::Open,
        };
        steps.push(step);
    }
    steps
}

/// Writes steps in the format [`decode`] reads (for seed files).
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let mut w = Writer::default();
    for step in steps {
        match step {
            Step::Open => w.u8(0),
            Step::Login {
                conn,
                user,
                device,
                platform,
                token,
                ttl_s,
            } => w
                .u8(1)
                .u8(*conn)
                .u8(*user)
                .u8(*device)
                .u8(*platform)
                .u8(match token {
                    TokenKind::Valid => 0,
                    TokenKind::OldKey => 1,
                    TokenKind::Expired => 2,
                    TokenKind::OtherUser => 3,
                    TokenKind::Garbage => 4,
                })
                .u16(*ttl_s),
            Step::Send {
                conn,
                kind,
                target,
                client_msg_id,
            } => w.u8(2).u8(*conn).u8(*kind).u8(*target).u8(*client_msg_id),
            Step::Op { conn, op, a, b } => w.u8(3).u8(*conn).u8(*op).u8(*a).u8(*b),
            Step::Sync {
                conn,
                cursor,
                limit,
            } => w.u8(4).u8(*conn).u8(*cursor).u8(*limit),
            Step::History { conn, peer, before } => w.u8(5).u8(*conn).u8(*peer).u8(*before),
            Step::Ping { conn } => w.u8(6).u8(*conn),
            Step::Renew { conn } => w.u8(7).u8(*conn),
            Step::Logout { conn, revoke } => w.u8(8).u8(*conn).u8(u8::from(*revoke)),
            Step::Raw { conn, bytes } => w.u8(9).u8(*conn).bytes(bytes),
            Step::Close { conn } => w.u8(10).u8(*conn),
            Step::Slow { conn, slow } => w.u8(11).u8(*conn).u8(u8::from(*slow)),
            Step::Advance { ms } => w.u8(12).u32(*ms),
            Step::HoldStorage => w.u8(14),
            Step::CompleteStorage { n } => w.u8(15).u8(*n),
            Step::FailStorage { kind } => w.u8(16).u8(*kind),
            Step::Kick { user } => w.u8(17).u8(*user),
            Step::Revoke { user } => w.u8(18).u8(*user),
        };
    }
    w.0
}

/// One connection as its client sees it.
#[derive(Debug)]
struct Client {
    id: ConnId,
    open: bool,
    /// The user of the last successful login.
    user: Option<u64>,
    /// Client-to-server bytes not yet cut into frames ([`Step::Raw`]).
    inbound: BytesMut,
    inbound_decoder: FrameDecoder,
    /// A fatal framing error stopped reading (as a transport does).
    inbound_stopped: bool,
    /// Server-to-client bytes not yet decoded.
    outbound: BytesMut,
    outbound_decoder: FrameDecoder,
    next_rid: u32,
    slow: bool,
    unflushed: u64,
    /// Reported congested (over [`OUTBOUND_LIMIT`] unread) and not drained since.
    congested: bool,
    /// Highest live-push seq seen per conversation (kind, id).
    pushed: HashMap<(i32, u64), u64>,
}

/// The simulated transport's outbound limit: a slow reader with more unread than this is
/// reported congested (small, so sequences reach it).
const OUTBOUND_LIMIT: u64 = 4_000;

/// The simulated world: control plane, storage and clients.
pub struct World {
    now: Timestamp,
    control: Control,
    storage: MemEngine,
    keys: KeyRing,
    old_keys: KeyRing,
    clients: Vec<Client>,
    by_id: HashMap<ConnId, usize>,
    queue: VecDeque<(Ticket, Request)>,
    hold: bool,
    next_token: u64,
    /// (sender, client_msg_id, seq) of every durable append.
    durable: HashSet<(u64, u64, u64)>,
    /// Last seq appended per conversation.
    last_seq: HashMap<ConversationKey, u64>,
    seen: Seen,
}

/// What the clients received, by kind (to tell whether a seed reaches deep states).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Successful logins.
    pub logins: u64,
    /// Acks of persisted messages.
    pub acks: u64,
    /// Live pushes (any conversation).
    pub pushes: u64,
    /// Sync or history pages.
    pub pages: u64,
    /// Error frames.
    pub errors: u64,
    /// Closes the server decided.
    pub server_closes: u64,
    /// Storage requests run.
    pub storage: u64,
}

fn is_chatroom(c: Option<&pb::ConversationId>) -> bool {
    c.is_some_and(|c| c.kind == pb::ConversationKind::Chatroom as i32)
}

impl World {
    /// A fresh world; the revocation list is loaded before the first step.
    pub fn new() -> World {
        let keys = crate::token::ring();
        let old_keys = crate::token::ring_signing("old").expect("the fuzz ring has `old`");
        let config = Config {
            rate_limit: RateLimit {
                burst: 20,
                per_second: 5,
            },
            // Small caches: a fresh world per input stays cheap (the defaults preallocate
            // for a server), and eviction is exercised.
            token_cache_capacity: 8,
            ..Config::default()
        };
        let storage = StorageConfig {
            large_group_threshold: 3,
            max_page: 4,
            dedup_filter_ids: 1024,
            dedup_filter_per_sender: 4,
            writer_cache_entries: 8,
            member_cache_conversations: 4,
            ..StorageConfig::default()
        };
        let mut world = World {
            now: T0,
            control: Control::new(config, keys.clone(), T0),
            storage: MemEngine::new(storage),
            keys,
            old_keys,
            clients: Vec::new(),
            by_id: HashMap::new(),
            queue: VecDeque::new(),
            hold: false,
            next_token: 0,
            durable: HashSet::new(),
            last_seq: HashMap::new(),
            seen: Seen::default(),
        };
        world.run();
        assert!(
            world.control.is_ready(),
            "the revocation list loads at start"
        );
        world
    }

    /// Runs `steps`, checking the invariants after each, then closes every connection,
    /// drains storage and checks that nothing is left.
    pub fn play(&mut self, steps: &[Step]) {
        for step in steps {
            self.step(step);
            self.check();
        }
        self.finish();
    }

    /// What the clients received so far.
    pub fn seen(&self) -> Seen {
        self.seen
    }

    fn pick(&self, conn: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(conn) % self.clients.len())
    }

    /// The open connection `conn` picks, if it is open.
    fn open_conn(&self, conn: u8) -> Option<usize> {
        self.pick(conn).filter(|&i| self.clients[i].open)
    }

    fn request(&mut self, conn: u8, body: impl Into<Body>) {
        let Some(i) = self.open_conn(conn) else {
            return;
        };
        let client = &mut self.clients[i];
        client.next_rid = client.next_rid.wrapping_add(1);
        let frame = Frame::new(client.next_rid, body);
        let id = client.id;
        self.control
            .handle(self.now, Event::Frame { conn: id, frame });
        self.run();
    }

    fn step(&mut self, step: &Step) {
        match *step {
            Step::Open => {
                let id = ConnId::new(0, self.clients.len() as u64 + 1);
                self.by_id.insert(id, self.clients.len());
                self.clients.push(Client {
                    id,
                    open: true,
                    user: None,
                    inbound: BytesMut::new(),
                    inbound_decoder: FrameDecoder::new(DecoderConfig { max_body_len: 1024 }),
                    inbound_stopped: false,
                    outbound: BytesMut::new(),
                    outbound_decoder: FrameDecoder::new(DecoderConfig {
                        max_body_len: u32::MAX,
                    }),
                    next_rid: 0,
                    slow: false,
                    unflushed: 0,
                    congested: false,
                    pushed: HashMap::new(),
                });
                self.control.handle(self.now, Event::Opened { conn: id });
                self.run();
            }
            Step::Login {
                conn,
                user,
                device,
                platform,
                token,
                ttl_s,
            } => {
                let user = u64::from(user) % USERS + 1;
                let device = format!("d{}", device % 3);
                let platform =
                    pb::Platform::try_from(i32::from(platform % 6)).expect("0..6 are platforms");
                let text = self.token(user, &device, platform, token, ttl_s);
                self.request(
                    conn,
                    pb::Login {
                        token: text,
                        user_id: user,
                        device_id: device,
                        platform: platform as i32,
                        client_version: "fuzz".into(),
                        attempt: 0,
                    },
                );
            }
            Step::Send {
                conn,
                kind,
                target,
                client_msg_id,
            } => {
                let conversation = conversation(kind, target);
                self.request(
                    conn,
                    pb::SendMessage {
                        client_msg_id: u64::from(client_msg_id),
                        conversation: Some(conversation),
                        content: petrel_proto::wire::encode_content(&pb::Content {
                            body: Some(pb::content::Body::Text(pb::Text {
                                text: "m".into(),
                                mentions: Vec::new(),
                            })),
                        }),
                        ..Default::default()
                    },
                );
            }
            Step::Op { conn, op, a, b } => {
                let op = conversation_op(op, a, b);
                self.request(conn, pb::ConversationOp { op: Some(op) });
            }
            Step::Sync {
                conn,
                cursor,
                limit,
            } => self.request(
                conn,
                pb::SyncRequest {
                    inbox_cursor: u64::from(cursor),
                    cursors: Vec::new(),
                    limit: u32::from(limit % 8),
                    inbox_position: Vec::new(),
                },
            ),
            Step::History { conn, peer, before } => self.request(
                conn,
                pb::HistoryRequest {
                    conversation: Some(conversation(0, peer)),
                    before_seq: if before == 0 {
                        u64::MAX
                    } else {
                        u64::from(before)
                    },
                    limit: 4,
                },
            ),
            Step::Ping { conn } => self.request(conn, pb::Ping { client_time_ms: 1 }),
            Step::Renew { conn } => self.request(conn, pb::RenewToken {}),
            Step::Logout { conn, revoke } => self.request(
                conn,
                pb::Logout {
                    revoke_token: revoke,
                },
            ),
            Step::Raw { conn, ref bytes } => self.raw(conn, bytes),
            Step::Close { conn } => {
                if let Some(i) = self.open_conn(conn) {
                    self.clients[i].open = false;
                    let id = self.clients[i].id;
                    self.control.handle(self.now, Event::Closed { conn: id });
                    self.run();
                }
            }
            Step::Slow { conn, slow } => {
                if let Some(i) = self.open_conn(conn) {
                    let client = &mut self.clients[i];
                    client.slow = slow;
                    if !slow {
                        client.unflushed = 0;
                        if std::mem::take(&mut client.congested) {
                            let id = client.id;
                            self.control.handle(self.now, Event::Drained { conn: id });
                            self.run();
                        }
                    }
                }
            }
            Step::Advance { ms } => {
                // At most ~17 minutes a step: longer jumps only repeat housekeeping ticks.
                self.advance(Duration::from_millis(u64::from(ms % 1_000_000)))
            }
            Step::HoldStorage => {
                self.hold = !self.hold;
                self.run();
            }
            Step::CompleteStorage { n } => {
                for _ in 0..n {
                    if !self.complete_one() {
                        break;
                    }
                    self.run();
                }
            }
            Step::FailStorage { kind } => {
                if let Some((ticket, _request)) = self.queue.pop_front() {
                    let error = match kind % 5 {
                        0 => StorageError::Backend("injected".into()),
                        1 => StorageError::Io(std::io::Error::other("injected")),
                        2 => StorageError::Closed,
                        3 => StorageError::Overflow,
                        _ => StorageError::Invalid("injected"),
                    };
                    self.control.handle(
                        self.now,
                        Event::Storage {
                            ticket,
                            result: Err(error),
                        },
                    );
                    self.run();
                }
            }
            Step::Kick { user } => {
                self.control.kick_user(u64::from(user) % USERS + 1, "fuzz");
                self.run();
            }
            Step::Revoke { user } => {
                self.control
                    .revoke_sessions(self.now, Revocation::User(u64::from(user) % USERS + 1));
                self.run();
            }
        }
    }

    fn token(
        &mut self,
        user: u64,
        device: &str,
        platform: pb::Platform,
        kind: TokenKind,
        ttl_s: u16,
    ) -> String {
        self.next_token += 1;
        let mut token_id = [0u8; 16];
        token_id[..8].copy_from_slice(&self.next_token.to_be_bytes());
        // Up to 15 minutes, so expiry is reached within a few clock steps.
        let ttl_s = ttl_s % 900;
        let (keys, user, ttl) = match kind {
            TokenKind::Valid => (&self.keys, user, u64::from(ttl_s) + 1),
            TokenKind::OldKey => (&self.old_keys, user, u64::from(ttl_s) + 1),
            TokenKind::Expired => (&self.keys, user, 0),
            TokenKind::OtherUser => (&self.keys, user % USERS + 1, u64::from(ttl_s) + 1),
            TokenKind::Garbage => return "AQIDBA".into(),
        };
        token::mint(
            keys,
            &TokenSpec {
                user,
                device,
                platform,
                issued_at: self.now,
                ttl: Duration::from_secs(ttl),
                token_id,
            },
        )
        .expect("fuzz tokens mint")
        .token
    }

    /// Raw client bytes through a transport's decoder: frames and decode errors become
    /// events, and a fatal error stops reading the connection.
    fn raw(&mut self, conn: u8, bytes: &[u8]) {
        let Some(i) = self.open_conn(conn) else {
            return;
        };
        if self.clients[i].inbound_stopped {
            return;
        }
        self.clients[i].inbound.extend_from_slice(bytes);
        loop {
            let client = &mut self.clients[i];
            if !client.open {
                return;
            }
            let id = client.id;
            match client.inbound_decoder.decode(&mut client.inbound) {
                Ok(Some(frame)) => {
                    self.control
                        .handle(self.now, Event::Frame { conn: id, frame });
                    self.run();
                }
                Ok(None) => return,
                Err(error) => {
                    let fatal = error.is_fatal();
                    if fatal {
                        client.inbound_stopped = true;
                        client.inbound.clear();
                    }
                    self.control
                        .handle(self.now, Event::FrameError { conn: id, error });
                    self.run();
                    if fatal {
                        return;
                    }
                }
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        while let Some(t) = self.control.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.control.handle(self.now, Event::Tick);
            self.run();
        }
        self.now = end;
    }

    /// Runs the oldest storage request and feeds its result back; false if none.
    fn complete_one(&mut self) -> bool {
        let Some((ticket, request)) = self.queue.pop_front() else {
            return false;
        };
        let append = match &request {
            Request::Append(a) => Some((a.sender.0, a.client_msg_id)),
            _ => None,
        };
        let result = self.storage.execute(request);
        self.seen.storage += 1;
        if let (Some((sender, client_msg_id)), Ok(Reply::Appended(outcome))) = (append, &result) {
            if !outcome.duplicate {
                let last = self.last_seq.entry(outcome.conversation).or_insert(0);
                assert_eq!(
                    outcome.seq,
                    *last + 1,
                    "seq gap in {:?}",
                    outcome.conversation
                );
                *last = outcome.seq;
            }
            // Durable now: what the control plane may acknowledge and push from here on.
            self.durable.insert((sender, client_msg_id, outcome.seq));
        }
        self.control
            .handle(self.now, Event::Storage { ticket, result });
        true
    }

    /// Performs every action until the control plane is quiet (and storage, unless held).
    fn run(&mut self) {
        loop {
            while let Some(action) = self.control.poll_action() {
                match action {
                    Action::Send { conn, bytes } => self.deliver(conn, &bytes),
                    Action::Close { conn, .. } => {
                        let i = self.by_id[&conn];
                        assert!(self.clients[i].open, "Close for closed {conn}");
                        self.clients[i].open = false;
                        self.seen.server_closes += 1;
                        self.control.handle(self.now, Event::Closed { conn });
                    }
                    Action::Storage { ticket, request } => {
                        self.queue.push_back((ticket, request));
                    }
                    Action::NoteCongestion { .. }
                    | Action::OfflineMessage(_)
                    | Action::ToCore { .. } => {}
                }
            }
            if self.hold || !self.complete_one() {
                return;
            }
        }
    }

    fn deliver(&mut self, conn: ConnId, bytes: &[u8]) {
        let i = *self
            .by_id
            .get(&conn)
            .expect("send to a connection never opened");
        let client = &mut self.clients[i];
        assert!(client.open, "send to closed {conn}");
        client.outbound.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = client
            .outbound_decoder
            .decode(&mut client.outbound)
            .expect("the server sends valid frames")
        {
            frames.push(frame);
        }
        for frame in frames {
            self.check_frame(i, frame);
        }
        let client = &mut self.clients[i];
        if client.slow {
            client.unflushed += bytes.len() as u64;
            if !client.congested && client.unflushed > OUTBOUND_LIMIT {
                client.congested = true;
                self.control.handle(self.now, Event::Congested { conn });
            }
        }
    }

    fn check_frame(&mut self, i: usize, frame: Frame) {
        let client = &mut self.clients[i];
        match frame.body {
            Body::LoginResult(r) => {
                client.user = Some(r.user_id);
                self.seen.logins += 1;
            }
            Body::Error(_) => self.seen.errors += 1,
            Body::Ack(ack) => {
                self.seen.acks += 1;
                if !is_chatroom(ack.conversation.as_ref()) {
                    let user = client.user.expect("an ack goes to a logged-in client");
                    assert!(
                        self.durable.contains(&(user, ack.client_msg_id, ack.seq)),
                        "ack of a message storage has not durably appended: {ack:?}"
                    );
                }
            }
            Body::MessagePush(push) => {
                self.seen.pushes += 1;
                if !is_chatroom(push.conversation.as_ref()) {
                    assert_durable(&self.durable, &push);
                    let c = push.conversation.expect("a push names its conversation");
                    let last = client.pushed.entry((c.kind, c.id)).or_insert(0);
                    assert!(
                        push.seq > *last,
                        "push seq {} after {} in {c:?}",
                        push.seq,
                        *last
                    );
                    *last = push.seq;
                }
            }
            Body::SyncResponse(page) => {
                self.seen.pages += 1;
                for m in &page.messages {
                    if !is_chatroom(m.conversation.as_ref()) {
                        assert_durable(&self.durable, m);
                    }
                }
            }
            _ => {}
        }
    }

    fn check(&self) {
        let open = self.clients.iter().filter(|c| c.open).count();
        assert_eq!(self.control.connection_count(), open);
        assert!(self.control.session_count() as usize <= open);
    }

    fn finish(&mut self) {
        self.hold = false;
        for i in 0..self.clients.len() {
            if self.clients[i].open {
                self.clients[i].open = false;
                let id = self.clients[i].id;
                self.control.handle(self.now, Event::Closed { conn: id });
                self.run();
            }
        }
        self.run();
        self.advance(Duration::from_secs(600));
        assert!(self.queue.is_empty(), "storage left requests behind");
        assert_eq!(self.control.connection_count(), 0, "connection leak");
        assert_eq!(self.control.session_count(), 0, "session leak");
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

fn assert_durable(durable: &HashSet<(u64, u64, u64)>, m: &pb::MessagePush) {
    assert!(
        durable.contains(&(m.sender, m.client_msg_id, m.seq)),
        "a message storage has not durably appended reached a client: {m:?}"
    );
}

/// A conversation id from the sender's side: 0 single, 1 group, 2 chatroom, 3 account.
fn conversation(kind: u8, target: u8) -> pb::ConversationId {
    let (kind, id) = match kind % 4 {
        0 => (pb::ConversationKind::Single, u64::from(target) % USERS + 1),
        1 => (pb::ConversationKind::Group, u64::from(target) % 3 + 1),
        2 => (pb::ConversationKind::Chatroom, u64::from(target) % 3 + 1),
        _ => (
            pb::ConversationKind::PublicAccount,
            u64::from(target) % 3 + 1,
        ),
    };
    pb::ConversationId {
        kind: kind as i32,
        id,
    }
}

fn conversation_op(op: u8, a: u8, b: u8) -> pb::conversation_op::Op {
    use pb::conversation_op::Op;
    let user = |x: u8| u64::from(x) % USERS + 1;
    let small = |x: u8| u64::from(x) % 3 + 1;
    match op % 12 {
        0 => Op::CreateGroup(pb::CreateGroup {
            name: "g".into(),
            members: vec![user(a), user(b)],
        }),
        1 => Op::AddMembers(pb::AddMembers {
            group_id: small(a),
            users: vec![user(b)],
        }),
        2 => Op::RemoveMembers(pb::RemoveMembers {
            group_id: small(a),
            users: vec![user(b)],
        }),
        3 => Op::LeaveGroup(pb::LeaveGroup { group_id: small(a) }),
        4 => Op::JoinChatroom(pb::JoinChatroom { room_id: small(a) }),
        5 => Op::LeaveChatroom(pb::LeaveChatroom { room_id: small(a) }),
        6 => Op::Follow(pb::Follow {
            account_id: small(a),
        }),
        7 => Op::Unfollow(pb::Unfollow {
            account_id: small(a),
        }),
        8 => Op::MarkRead(pb::MarkRead {
            conversation: Some(conversation(b, a)),
            seq: u64::from(b),
        }),
        9 => Op::CreatePublicAccount(pb::CreatePublicAccount { name: "a".into() }),
        10 => Op::SetRole(pb::SetRole {
            group_id: small(a),
            user_id: user(b),
            role: i32::from(b % 4),
        }),
        _ => Op::ListMembers(pb::ListMembers {
            conversation: Some(conversation(b, a)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_the_byte_format() {
        let steps = vec![
            Step::Open,
            Step::Login {
                conn: 0,
                user: 1,
                device: 2,
                platform: 1,
                token: TokenKind::OldKey,
                ttl_s: 600,
            },
            Step::Raw {
                conn: 0,
                bytes: vec![1, 2, 3],
            },
            Step::Advance { ms: 70_000 },
            Step::FailStorage { kind: 3 },
        ];
        assert_eq!(decode(&encode(&steps)), steps);
    }
}
