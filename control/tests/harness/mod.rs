//! A deterministic simulator for the control plane: a virtual clock, simulated clients
//! that decode what the server sends them, and an in-memory storage engine that runs
//! every storage action and feeds the completion back. No sockets, no threads, no
//! wall clock: a 150-second heartbeat test runs in microseconds and never flakes.
//!
//! Knobs: per-connection "slow reader" (the client reads nothing, so its outbound queue
//! only grows, until [`Sim::catch_up`]; past [`Sim::outbound_limit`] the simulated
//! transport reports it `Congested`, and `Drained` when it catches up; once the control
//! plane notes the congestion it may send at most that limit more, or the run panics as
//! the real transport would close the connection), storage that holds its
//! completions back ([`Sim::hold_storage`], for in-flight requests), and a seeded RNG
//! the randomized workloads draw from, so every run with the same seed is identical.
//!
//! Faults (used by `tests/faults.rs`): [`held`] lets a test execute held storage requests
//! in any order a real storage driver may, inject storage errors, and deliver the
//! completions in any order; [`Sim::jump`] moves the clock in one step; [`model`] checks
//! what the clients saw against what storage made durable.

#![allow(dead_code)]

pub mod held;
pub mod model;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use petrel_control::token::{self, TokenSpec};
use petrel_control::{
    Action, CloseReason, Config, ConnId, Control, Event, KeyRing, OfflineMessage, Timestamp,
};
use petrel_proto::{Body, Frame, FrameDecoder, pb};
use petrel_storage::{Engine, MemEngine, StorageConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// An inbox position as a `SyncResponse` returns it and a `SyncRequest` sends it back:
/// the plain cursor of a one-partition database, or the opaque token of a partitioned
/// one. The default is a new device's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub cursor: u64,
    pub token: Vec<u8>,
}

impl Position {
    /// Whether this is a new device's (no position at all).
    pub fn is_new(&self) -> bool {
        self.cursor == 0 && self.token.is_empty()
    }
}

/// Key file used by every simulation: `main` signs, `old` still verifies.
pub const KEY_FILE: &str = "\
main 6d61696e2d7365637265742d6b65792d666f722d73696d756c6174696f6e2121
old 6f6c642d7365637265742d6b65792d666f722d73696d756c6174696f6e212121
";

/// Start of the virtual clock (a plausible wall-clock time).
pub const T0: Timestamp = Timestamp(1_764_000_000_000);

/// What one simulated client has seen.
#[derive(Debug, Default)]
pub struct Client {
    decoder: FrameDecoder,
    buf: BytesMut,
    /// Every frame received, in order.
    pub frames: Vec<Frame>,
    /// Set when the server closed the connection.
    pub closed: Option<CloseReason>,
    /// Bytes received that the client has not "read" (only grows for slow readers).
    pub unflushed: u64,
    /// Whether this client reads slower than it is sent to (nothing, until caught up).
    pub slow: bool,
    /// Reported congested and not drained since.
    pub congested: bool,
    /// Bytes the server sent while congested, after it noted the congestion: past
    /// the outbound limit the real transport would close the connection.
    pub sent_knowing: Option<u64>,
    next_rid: u32,
}

impl Client {
    /// Removes and returns everything received so far.
    pub fn take(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.frames)
    }
}

/// The simulated world.
pub struct Sim {
    pub now: Timestamp,
    pub control: Control,
    pub storage: MemEngine,
    pub keys: KeyRing,
    pub clients: BTreeMap<ConnId, Client>,
    rng: StdRng,
    next_conn: u64,
    /// Storage requests not yet executed, in emission order.
    queue: VecDeque<held::Queued>,
    /// While set, storage requests wait in the queue instead of completing.
    pub hold_storage: bool,
    /// The client request being handled, stamped on the storage requests it emits.
    origin: Option<held::Origin>,
    /// Executed requests whose completions have not been delivered (see [`held`]).
    held: Vec<held::Completion>,
    /// Completions delivered since [`Sim::take_delivered`] was last called.
    delivered: Vec<held::Delivered>,
    /// The simulated transport's outbound limit: a slow reader with more than this
    /// unread is reported congested (the server's default, 1 MiB).
    pub outbound_limit: u64,
    /// Every `OfflineMessage` action, in order (with `Config::offline_notices`).
    pub offline: Vec<OfflineMessage>,
}

impl Sim {
    /// A world with the given config and RNG seed.
    pub fn new(config: Config, seed: u64) -> Sim {
        Sim::with_storage(config, seed, MemEngine::new(StorageConfig::default()))
    }

    /// A world reusing an existing storage engine (a "restart").
    pub fn with_storage(config: Config, seed: u64, storage: MemEngine) -> Sim {
        let keys = KeyRing::parse(KEY_FILE).expect("test key file parses");
        let control = Control::new(config, keys.clone(), T0);
        let mut sim = Sim {
            now: T0,
            control,
            storage,
            keys,
            clients: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            next_conn: 0,
            queue: VecDeque::new(),
            hold_storage: false,
            origin: None,
            held: Vec::new(),
            delivered: Vec::new(),
            outbound_limit: 1 << 20,
            offline: Vec::new(),
        };
        sim.run();
        assert!(sim.control.is_ready(), "revocation list must load at start");
        sim
    }

    /// A "restart": a new control plane with `config` over this world's storage (what
    /// was persisted survives, everything in memory is gone).
    pub fn restart(self, config: Config) -> Sim {
        Sim::with_storage(config, 24, self.storage)
    }

    /// Mints a token for (user, device, platform) valid for `ttl`, signed by `main`.
    pub fn token(
        &mut self,
        user: u64,
        device: &str,
        platform: pb::Platform,
        ttl: Duration,
    ) -> String {
        self.token_with(&self.keys.clone(), user, device, platform, ttl)
    }

    /// Mints a token with an arbitrary key ring.
    pub fn token_with(
        &mut self,
        keys: &KeyRing,
        user: u64,
        device: &str,
        platform: pb::Platform,
        ttl: Duration,
    ) -> String {
        let token_id: [u8; 16] = self.rng.random();
        token::mint(
            keys,
            &TokenSpec {
                user,
                device,
                platform,
                issued_at: self.now,
                ttl,
                token_id,
            },
        )
        .expect("mint")
        .token
    }

    /// Opens a connection on core `core`.
    pub fn connect_on(&mut self, core: u8) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId::new(core, self.next_conn);
        self.clients.insert(conn, Client::default());
        self.control.handle(self.now, Event::Opened { conn });
        self.run();
        conn
    }

    /// Opens a connection.
    pub fn connect(&mut self) -> ConnId {
        self.connect_on(0)
    }

    /// Sends a request frame from `conn`; returns its request id.
    pub fn send(&mut self, conn: ConnId, body: impl Into<Body>) -> u32 {
        let rid = self.next_rid(conn);
        self.send_frame(conn, Frame::new(rid, body));
        rid
    }

    /// The next request id of `conn`'s client.
    pub fn next_rid(&mut self, conn: ConnId) -> u32 {
        let client = self.clients.get_mut(&conn).expect("known client");
        client.next_rid += 1;
        client.next_rid
    }

    /// Delivers `frame` from `conn` exactly as given (flags included).
    pub fn send_frame(&mut self, conn: ConnId, frame: Frame) {
        self.origin = Some(held::Origin {
            conn,
            rid: frame.request_id,
        });
        self.control.handle(self.now, Event::Frame { conn, frame });
        self.run();
        self.origin = None;
    }

    /// Storage requests emitted and not yet completed (while [`Sim::hold_storage`]).
    pub fn storage_queued(&self) -> usize {
        self.queue.len()
    }

    /// Lets held storage requests complete, and later ones complete at once again.
    pub fn release_storage(&mut self) {
        self.hold_storage = false;
        self.run();
    }

    /// Connects and logs in with a fresh 24-hour token. Panics unless the login succeeds.
    pub fn login(&mut self, user: u64, device: &str, platform: pb::Platform) -> ConnId {
        let token = self.token(user, device, platform, Duration::from_secs(24 * 3600));
        let conn = self.connect();
        let result = self.login_with(conn, user, device, platform, &token);
        match result {
            Ok(r) => assert_eq!(r.user_id, user),
            Err(e) => panic!("login of {user}/{device} failed: {e:?}"),
        }
        conn
    }

    /// Sends a Login on `conn` and returns its answer.
    pub fn login_with(
        &mut self,
        conn: ConnId,
        user: u64,
        device: &str,
        platform: pb::Platform,
        token: &str,
    ) -> Result<pb::LoginResult, pb::Error> {
        self.login_attempt(conn, (user, device, platform), token, 0)
    }

    /// Sends a Login numbered `attempt` (`Login.attempt`) on `conn`; returns its answer.
    pub fn login_attempt(
        &mut self,
        conn: ConnId,
        (user, device, platform): (u64, &str, pb::Platform),
        token: &str,
        attempt: u64,
    ) -> Result<pb::LoginResult, pb::Error> {
        let rid = self.send(
            conn,
            pb::Login {
                token: token.to_owned(),
                user_id: user,
                device_id: device.to_owned(),
                platform: platform as i32,
                client_version: "sim".into(),
                attempt,
            },
        );
        let frames = self.client(conn).take();
        for f in frames {
            if f.request_id != rid {
                continue;
            }
            match f.body {
                Body::LoginResult(r) => return Ok(r),
                Body::Error(e) => return Err(e),
                other => panic!("unexpected answer to Login: {other:?}"),
            }
        }
        panic!("no answer to Login");
    }

    /// The client behind `conn`.
    pub fn client(&mut self, conn: ConnId) -> &mut Client {
        self.clients.get_mut(&conn).expect("known client")
    }

    /// Marks `conn` a slow reader: it reads nothing of what is sent to it.
    pub fn set_slow(&mut self, conn: ConnId, slow: bool) {
        self.client(conn).slow = slow;
    }

    /// A slow reader reads everything queued for it (`Drained` if it was congested) and
    /// is slow no more.
    pub fn catch_up(&mut self, conn: ConnId) {
        let client = self.client(conn);
        client.slow = false;
        client.unflushed = 0;
        client.sent_knowing = None;
        if std::mem::take(&mut client.congested) {
            self.control.handle(self.now, Event::Drained { conn });
        }
        self.run();
    }

    /// The client closes its side.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.control.handle(self.now, Event::Closed { conn });
        self.client(conn).closed.get_or_insert(CloseReason::Logout);
        self.run();
    }

    /// Moves the virtual clock forward by `d`, delivering every timeout on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        loop {
            match self.control.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.control.handle(self.now, Event::Tick);
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Moves the virtual clock forward by `d` in one step, as a wall clock does when NTP
    /// steps it or a suspended VM resumes: every deadline passed on the way is delivered
    /// late, stamped with the new time, by the driver loop of the documented calling
    /// order (tick while `poll_timeout() <= now`).
    pub fn jump(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
        for _ in 0..10_000 {
            match self.control.poll_timeout() {
                Some(t) if t <= self.now => {
                    self.control.handle(self.now, Event::Tick);
                    self.run();
                }
                _ => return,
            }
        }
        panic!(
            "poll_timeout still in the past after 10000 ticks at {}",
            self.now
        );
    }

    /// Performs every action until the control plane is quiet: sends are decoded by the
    /// receiving client, closes are recorded and reported back, and storage requests
    /// run on the in-memory engine, their completions fed back in.
    pub fn run(&mut self) {
        loop {
            while let Some(action) = self.control.poll_action() {
                match action {
                    Action::Send { conn, bytes } => {
                        let len = bytes.len() as u64;
                        let Some(client) = self.clients.get_mut(&conn) else {
                            continue;
                        };
                        assert!(client.closed.is_none(), "send to closed {conn}");
                        client.buf.extend_from_slice(&bytes);
                        while let Some(frame) = client
                            .decoder
                            .decode(&mut client.buf)
                            .expect("server sends valid frames")
                        {
                            client.frames.push(frame);
                        }
                        if let Some(sent) = &mut client.sent_knowing {
                            *sent += len;
                            assert!(
                                *sent <= self.outbound_limit,
                                "the control plane sent {sent} bytes to {conn} after noting \
                                 it congested: the transport would close it"
                            );
                        }
                        if client.slow {
                            client.unflushed += len;
                            if !client.congested && client.unflushed > self.outbound_limit {
                                client.congested = true;
                                self.control.handle(self.now, Event::Congested { conn });
                            }
                        }
                    }
                    Action::OfflineMessage(message) => self.offline.push(*message),
                    Action::ToCore { core, .. } => {
                        panic!("a one-core control plane told core {core} something")
                    }
                    Action::NoteCongestion { conn } => {
                        if let Some(client) = self.clients.get_mut(&conn) {
                            assert!(client.congested, "{conn} noted but not congested");
                            assert!(client.sent_knowing.is_none(), "{conn} noted twice");
                            client.sent_knowing = Some(0);
                        }
                    }
                    Action::Close { conn, reason } => {
                        if let Some(client) = self.clients.get_mut(&conn) {
                            client.closed = Some(reason);
                        }
                        self.control.handle(self.now, Event::Closed { conn });
                    }
                    Action::Storage { ticket, request } => self.queue.push_back(held::Queued {
                        ticket,
                        request,
                        origin: self.origin,
                    }),
                }
            }
            if self.queue.is_empty() || self.hold_storage {
                return;
            }
            // Storage completes requests in the order they were emitted, like the
            // real commit queue. What a completion causes has no client request behind it.
            self.origin = None;
            let held::Queued {
                ticket, request, ..
            } = self.queue.pop_front().expect("queue not empty");
            let result = self.storage.execute(request);
            self.control
                .handle(self.now, Event::Storage { ticket, result });
        }
    }

    /// Every `MessagePush` in `frames`.
    pub fn pushes(frames: &[Frame]) -> Vec<pb::MessagePush> {
        frames
            .iter()
            .filter_map(|f| match &f.body {
                Body::MessagePush(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The answer to request `rid` in `frames`.
    pub fn answer(frames: &[Frame], rid: u32) -> Option<&Body> {
        frames
            .iter()
            .find(|f| f.request_id == rid && f.flags.is_response())
            .map(|f| &f.body)
    }

    /// Sends a text message and returns the answer (Ack or Error).
    pub fn send_text(
        &mut self,
        conn: ConnId,
        conversation: pb::ConversationId,
        client_msg_id: u64,
        text: &str,
    ) -> Result<pb::Ack, pb::Error> {
        let rid = self.send(
            conn,
            pb::SendMessage {
                client_msg_id,
                conversation: Some(conversation),
                content: petrel_proto::wire::encode_content(&text_content(text)),
                ..Default::default()
            },
        );
        self.take_answer(conn, rid, |b| match b {
            Body::Ack(a) => Some(a),
            _ => None,
        })
    }

    /// Sends a conversation operation and returns its answer.
    pub fn op(
        &mut self,
        conn: ConnId,
        op: pb::conversation_op::Op,
    ) -> Result<pb::ConversationOpResult, pb::Error> {
        let rid = self.send(conn, pb::ConversationOp { op: Some(op) });
        self.take_answer(conn, rid, |b| match b {
            Body::ConversationOpResult(r) => Some(r),
            _ => None,
        })
    }

    /// Creates a group named "g" owned by `owner`'s user with `members`; returns its id.
    pub fn create_group(&mut self, owner: ConnId, members: Vec<u64>) -> u64 {
        self.op(
            owner,
            pb::conversation_op::Op::CreateGroup(pb::CreateGroup {
                name: "g".into(),
                members,
            }),
        )
        .expect("create group")
        .conversation
        .expect("group id")
        .id
    }

    /// Drops every frame `conns` have received so far.
    pub fn clear(&mut self, conns: &[ConnId]) {
        for &c in conns {
            self.client(c).take();
        }
    }

    /// Removes the answer to `rid` from `conn`'s frames (leaving everything else).
    pub fn take_answer<T>(
        &mut self,
        conn: ConnId,
        rid: u32,
        want: impl Fn(Body) -> Option<T>,
    ) -> Result<T, pb::Error> {
        let client = self.client(conn);
        let pos = client
            .frames
            .iter()
            .position(|f| f.request_id == rid && f.flags.is_response())
            .unwrap_or_else(|| panic!("no answer to request {rid} on {conn}"));
        let frame = client.frames.remove(pos);
        match frame.body {
            Body::Error(e) => Err(e),
            other => {
                Ok(want(other.clone()).unwrap_or_else(|| panic!("unexpected answer {other:?}")))
            }
        }
    }

    /// Sync pages from `inbox` (and no per-conversation cursors) until `has_more` is
    /// false; returns every message received, in order, and the final inbox position.
    pub fn sync_all(
        &mut self,
        conn: ConnId,
        mut inbox: Position,
        limit: u32,
    ) -> (Vec<pb::MessagePush>, Position) {
        let mut cursors: BTreeMap<(i32, u64), u64> = BTreeMap::new();
        let mut all = Vec::new();
        for _ in 0..1000 {
            let rid = self.send(
                conn,
                pb::SyncRequest {
                    inbox_cursor: inbox.cursor,
                    inbox_position: inbox.token.clone(),
                    cursors: cursors
                        .iter()
                        .map(|(&(kind, id), &after_seq)| pb::Cursor {
                            conversation: Some(pb::ConversationId { kind, id }),
                            after_seq,
                        })
                        .collect(),
                    limit,
                },
            );
            let page = self
                .take_answer(conn, rid, |b| match b {
                    Body::SyncResponse(r) => Some(r),
                    _ => None,
                })
                .expect("sync succeeds");
            for m in &page.messages {
                let c = m.conversation.expect("push names its conversation");
                let cur = cursors.entry((c.kind, c.id)).or_default();
                *cur = (*cur).max(m.seq);
            }
            all.extend(page.messages);
            inbox = Position {
                cursor: page.inbox_cursor,
                token: page.inbox_position,
            };
            if !page.has_more {
                return (all, inbox);
            }
        }
        panic!("sync did not finish in 1000 pages");
    }

    /// What a full sync reports to `conn`'s user of `conversation` (read position,
    /// unread mentions, …), if it reports it.
    pub fn conversation_state(
        &mut self,
        conn: ConnId,
        conversation: pb::ConversationId,
    ) -> Option<pb::ConversationState> {
        let rid = self.send(
            conn,
            pb::SyncRequest {
                inbox_cursor: 0,
                cursors: Vec::new(),
                limit: 200,
                inbox_position: Vec::new(),
            },
        );
        let page = self
            .take_answer(conn, rid, |b| match b {
                Body::SyncResponse(r) => Some(r),
                _ => None,
            })
            .expect("sync");
        page.conversations
            .into_iter()
            .find(|c| c.conversation == Some(conversation))
    }

    /// A fresh random value from the simulation's RNG.
    pub fn random_range(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.rng.random_range(range)
    }

    /// Connections the server has closed, with reasons.
    pub fn closed(&self) -> HashSet<ConnId> {
        self.clients
            .iter()
            .filter(|(_, c)| c.closed.is_some())
            .map(|(&id, _)| id)
            .collect()
    }
}

/// `Content` holding `text`.
pub fn text_content(text: &str) -> pb::Content {
    pb::Content {
        body: Some(pb::content::Body::Text(pb::Text {
            text: text.to_owned(),
            mentions: Vec::new(),
        })),
    }
}

/// The text of a push (empty if it is not text).
pub fn text_of(push: &pb::MessagePush) -> String {
    match push.decode_content().ok().and_then(|c| c.body) {
        Some(pb::content::Body::Text(t)) => t.text,
        _ => String::new(),
    }
}

/// A 1:1 conversation id from the viewer's side.
pub fn single(peer: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::Single as i32,
        id: peer,
    }
}

/// A group conversation id.
pub fn group(id: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::Group as i32,
        id,
    }
}

/// A chatroom conversation id.
pub fn room(id: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::Chatroom as i32,
        id,
    }
}

/// A public-account conversation id.
pub fn account(id: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: pb::ConversationKind::PublicAccount as i32,
        id,
    }
}

/// The conversation events of `kind` among `frames`, as (conversation, actor, seq).
pub fn events(
    frames: &[Frame],
    kind: pb::ConversationEventKind,
) -> Vec<(pb::ConversationId, u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::ConversationEvent(e) if e.kind == kind as i32 => {
                Some((e.conversation.unwrap(), e.actor, e.seq))
            }
            _ => None,
        })
        .collect()
}

/// Every `Gap` in `frames`, as (room, from_seq, to_seq).
pub fn gaps(frames: &[Frame]) -> Vec<(u64, u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Gap(g) => Some((g.conversation?.id, g.from_seq, g.to_seq)),
            _ => None,
        })
        .collect()
}

/// The `Kick` in `frames`, if any.
pub fn kick_of(frames: &[Frame]) -> Option<pb::Kick> {
    frames.iter().find_map(|f| match &f.body {
        Body::Kick(k) => Some(k.clone()),
        _ => None,
    })
}

/// The unsolicited `Error` frames in `frames`.
pub fn errors(frames: &[Frame]) -> Vec<pb::Error> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Error(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}
