//! The [`Control`] state machine: event dispatch, outbound frames, closes and timers.
//!
//! The request handlers live in sibling modules, one per concern: [`session_frames`]
//! (login, renewal, logout, ping), [`messaging`] (send, ack, fan-out), [`conversation`]
//! (group and public-account operations, read positions), [`chatrooms`] and
//! [`room_owner`] (a chatroom as a member's core and as its owner core see it) and
//! [`sync`] (sync and history). [`pending`] remembers what to do when each storage request
//! completes. [`push`] is the one way conversation work reaches users' connections: the
//! seam along which the session and conversation planes split.
//!
//! Performance-critical path: `handle(Event::Frame)` for `SendMessage` and
//! `handle(Event::Storage)` for its append are run for every message. They do not
//! lock, log or read a clock; frames are encoded into one reusable buffer and split
//! off as shared [`Bytes`], and a fan-out push is encoded once per distinct view.

mod api;
mod chatrooms;
mod conversation;
mod cores;
mod messaging;
mod pending;
mod push;
mod receipts;
mod room_answers;
mod room_owner;
mod session_frames;
mod sync;
mod typing;

pub use self::typing::TYPING_EXPIRES_MS;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::{Body, Frame, FrameError, FrameType, pb};
use petrel_storage::{Reply, Request, StorageError, TokenId};

use self::pending::Pending;
use crate::admission::Admission;
use crate::chatroom::{Rooms, Seated, Seats};
use crate::config::{Config, MultiDevicePolicy};
use crate::counters::Counters;
use crate::event::{Action, CloseReason, Event, Revocation, Ticket};
use crate::rate_limit::TokenBucket;
use crate::session::{Conn, Registry, Session};
use crate::time::Timestamp;
use crate::timers::{TimerKind, TimerQueue};
use crate::token::{KeyRing, RevocationList, TOKEN_ID_LEN, VerifiedTokens};
use petrel_conn::ConnId;

/// How often the revocation list is pruned of expired entries.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);
/// Pause between the steps of one retention pass: each step holds the storage writer for
/// at most `trim_step_keys` keys, so the pause bounds the loop time trimming takes.
const TRIM_STEP_PAUSE: Duration = Duration::from_millis(100);
/// Wait before asking storage for the revocation list again after a failure.
const RELOAD_REVOKED_AFTER: Duration = Duration::from_secs(1);
/// Size of each chunk of the reusable encode buffer.
const ENCODE_CHUNK: usize = 64 * 1024;

/// The control plane: sessions, tokens, heartbeats and routing, with no I/O.
///
/// # The four kinds of methods
///
/// Like `quinn_proto::Connection`, a `Control` never touches a socket, a disk or a
/// clock. A driver (the kernel-socket transport, the AF_XDP dataplane, or the test
/// simulator) owns those and talks to it through four kinds of methods:
///
/// 1. **Input** — [`Control::handle`]`(now, event)`: a connection opened, a frame or a
///    decode error arrived, bytes were flushed, a connection closed, a storage request
///    completed, or a timeout passed ([`Event::Tick`]). `now` is the wall clock in ms
///    since the Unix epoch (tokens expire in wall time and frames carry server times).
/// 2. **Output** — [`Control::poll_action`]: call until it returns `None` after every
///    `handle`. Actions are sends (encoded frames, shared [`Bytes`]), closes and storage
///    requests ([`Action::Storage`], whose result comes back as [`Event::Storage`] with
///    the same [`Ticket`]).
/// 3. **Timer** — [`Control::poll_timeout`]: the next instant at which the driver must
///    call `handle(now, Event::Tick)`, or `None`. Ask again after every `handle`.
/// 4. **Inspection** — [`Control::counters`], [`Control::connection_count`],
///    [`Control::session_count`], [`Control::online_devices`],
///    [`Control::pending_storage_requests`], [`Control::chatroom_count`],
///    [`Control::is_drained`]: read-only, any time.
///
/// Besides events, a driver may call three operator methods between iterations (their
/// actions are polled like any other): [`Control::kick_user`],
/// [`Control::revoke_sessions`], and the graceful shutdown pair
/// [`Control::begin_shutdown`] / [`Control::shutdown`]. Requests of the deployment's
/// backend (the server HTTP API) come in through [`Control::handle_api`] and their
/// answers go out through [`Control::poll_api_reply`] (module [`crate::api`]).
///
/// Calling order, per driver loop iteration:
///
/// ```text
/// let mut control = Control::new(config, keys, now);   // queues LoadRevoked
/// loop {
///     for event in whatever_happened { control.handle(now, event); }
///     if control.poll_timeout().is_some_and(|t| t <= now) { control.handle(now, Event::Tick); }
///     while let Some(action) = control.poll_action() { perform(action); }
///     sleep_until(control.poll_timeout());  // or until I/O is ready
/// }
/// ```
///
/// Logins are answered `ServerBusy` until the revocation list requested by
/// [`Control::new`] has been loaded, so a revoked token can never slip in during
/// start-up.
///
/// # Graceful shutdown
///
/// ```text
/// control.begin_shutdown(now);            // new requests: Error(ShuttingDown)
/// while !(storage_idle && control.is_drained(now)) { keep looping as above }
/// control.shutdown();                     // Kick{ServerShutdown} + Close for everyone
/// ```
///
/// Between the two, storage requests already emitted still complete and are answered
/// (an append is acked and pushed); every new request except `Ping` and `Logout` is
/// refused with `Error(ShuttingDown)`, which tells a client to send it again after it
/// reconnects (a `SendMessage` with the same `client_msg_id`).
///
/// # Example
///
/// A minimal driver: in-memory storage, one connection that logs in.
///
/// ```
/// use std::time::Duration;
/// use petrel_control::token::{self, TokenSpec};
/// use petrel_control::{Action, Config, ConnId, Control, Event, KeyRing, Timestamp};
/// use petrel_proto::{Frame, FrameDecoder, Body, pb};
/// use petrel_storage::{Engine, MemEngine};
///
/// let keys = KeyRing::parse("k1 000102030405060708090a0b0c0d0e0f\n").unwrap();
/// let storage = MemEngine::new(Default::default());
/// let now = Timestamp::from_millis(1_764_000_000_000);
/// let mut control = Control::new(Config::default(), keys.clone(), now);
///
/// // Perform actions until the control plane is quiet; collect what was sent.
/// let mut wire = bytes::BytesMut::new();
/// let mut drive = |control: &mut Control, wire: &mut bytes::BytesMut| {
///     while let Some(action) = control.poll_action() {
///         match action {
///             Action::Send { bytes, .. } => wire.extend_from_slice(&bytes),
///             Action::Close { conn, .. } => control.handle(now, Event::Closed { conn }),
///             Action::Storage { ticket, request } => {
///                 let result = storage.execute(request);
///                 control.handle(now, Event::Storage { ticket, result });
///             }
///             // A transport counts its slow-consumer limit from here; a webhook
///             // driver would queue the notice.
///             Action::NoteCongestion { .. }
///             | Action::OfflineMessage(_)
///             | Action::ToCore { .. } => {}
///         }
///     }
/// };
/// drive(&mut control, &mut wire); // loads the revocation list
///
/// let conn = ConnId::new(0, 1);
/// control.handle(now, Event::Opened { conn });
/// let issued = token::mint(&keys, &TokenSpec {
///     user: 42,
///     device: "phone",
///     platform: pb::Platform::Ios,
///     issued_at: now,
///     ttl: Duration::from_secs(3600),
///     token_id: [1; 16],
/// }).unwrap();
/// let login = pb::Login {
///     token: issued.token,
///     user_id: 42,
///     device_id: "phone".into(),
///     platform: pb::Platform::Ios as i32,
///     client_version: "doc".into(),
///     attempt: 0,
/// };
/// control.handle(now, Event::Frame { conn, frame: Frame::new(1, login) });
/// drive(&mut control, &mut wire);
///
/// let reply = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
/// assert!(matches!(reply.body, Body::LoginResult(r) if r.user_id == 42));
/// assert_eq!(control.session_count(), 1);
/// // The next thing to wake up for is the login's idle deadline or housekeeping.
/// assert!(control.poll_timeout().is_some());
/// ```
pub struct Control {
    config: Config,
    keys: KeyRing,
    token_cache: VerifiedTokens,
    revoked: RevocationList,
    revocations_loaded: bool,
    registry: Registry,
    /// The chatrooms this core owns ([`crate::chatroom`]).
    rooms: Rooms,
    /// Which of this core's connections sit in each room, whoever owns it.
    seated: Seated,
    timers: TimerQueue,
    actions: VecDeque<Action>,
    /// Outstanding storage requests by ticket (sequential numbers this plane assigns,
    /// so a keyed fast hash, not SipHash).
    pending: HashMap<Ticket, Pending, foldhash::fast::RandomState>,
    next_ticket: u64,
    next_session: u64,
    next_token_seq: u64,
    encoder: FrameEncoder,
    encode_buf: BytesMut,
    /// Reused list of fan-out targets (avoids an allocation per push).
    scratch_conns: Vec<ConnId>,
    /// Reused list of the users one push goes to.
    scratch_users: Vec<u64>,
    /// Reused for the `sender_device` a persisted push owns while it is encoded.
    scratch_device: String,
    /// Set by [`Control::begin_shutdown`]: when the drain began.
    draining_since: Option<Timestamp>,
    counters: Counters,
    /// Operator requests' answers and batches in progress ([`Control::handle_api`]).
    api: api::ApiState,
    /// Per user, the other cores with a session of theirs (bit = core index); empty
    /// on a one-core server ([`crate::remote`]).
    presence: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// Logins of this core whose `LoginResult` waits for the other cores'
    /// [`crate::CoreMessage::LoginSeen`] ([`crate::remote`]): the cores still to answer
    /// (bit = core index) and the encoded frame. Empty on a one-core server.
    held_logins: HashMap<ConnId, (u64, Bytes), foldhash::fast::RandomState>,
    /// Chatroom requests of this core's connections waiting for the room owner's answer
    /// on another core.
    room_answers: room_answers::RoomAnswers,
    /// Cores that cannot be reached (bit = core index): the cores of cluster nodes that
    /// are down or not heard from yet. Nothing is sent to them and no login waits for
    /// them. Always 0 on one server.
    unreachable: u64,
    /// Where the clients of a stopping cluster node reconnect ([`Control::shutdown`]).
    reconnect_to: Vec<String>,
    /// Whether this core takes new logins and connections ([`crate::admission`]).
    admission: Admission,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("connections", &self.registry.conn_count())
            .field("sessions", &self.registry.session_count())
            .field("rooms", &self.rooms.len())
            .field("pending_storage", &self.pending.len())
            .field("queued_actions", &self.actions.len())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// A control plane with no connections. Queues an [`Action::Storage`] asking for
    /// the revocation list; logins wait for it.
    pub fn new(mut config: Config, keys: KeyRing, now: Timestamp) -> Control {
        config.core_count = config.core_count.clamp(1, crate::remote::MAX_CORES);
        if config.core_index >= config.core_count {
            config.core_index = 0;
        }
        let config_admission = config.admission;
        // A process's tickets start at a place of their own, so a reply meant for a
        // previous process (a cluster node that restarted) matches nothing here.
        let first_ticket = petrel_storage::partition::mix(config.id_seed) >> 16;
        let mut control = Control {
            token_cache: VerifiedTokens::new(config.token_cache_capacity),
            config,
            keys,
            revoked: RevocationList::default(),
            revocations_loaded: false,
            registry: Registry::default(),
            rooms: Rooms::default(),
            seated: Seated::default(),
            timers: TimerQueue::default(),
            actions: VecDeque::new(),
            pending: HashMap::default(),
            next_ticket: first_ticket,
            next_session: 0,
            next_token_seq: 0,
            encoder: FrameEncoder::default(),
            encode_buf: BytesMut::new(),
            scratch_conns: Vec::new(),
            scratch_users: Vec::new(),
            scratch_device: String::new(),
            draining_since: None,
            counters: Counters::default(),
            api: api::ApiState::default(),
            presence: HashMap::default(),
            held_logins: HashMap::default(),
            room_answers: room_answers::RoomAnswers::default(),
            unreachable: 0,
            reconnect_to: Vec::new(),
            admission: Admission::new(config_admission, now),
        };
        control.request_revocations(now);
        control.timers.arm(
            now.saturating_add(HOUSEKEEPING_INTERVAL),
            TimerKind::Housekeeping,
        );
        control.schedule_trim(now, control.config.trim_interval);
        control
    }

    /// Feeds one event in. See the type's documentation for the calling order.
    pub fn handle(&mut self, now: Timestamp, event: Event) {
        match event {
            Event::Opened { conn } => self.handle_opened(now, conn),
            Event::Frame { conn, frame } => self.handle_frame(now, conn, frame),
            Event::FrameError { conn, error } => self.handle_frame_error(now, conn, error),
            Event::Congested { conn } => {
                if let Some(c) = self.registry.get_mut(conn) {
                    c.congested = true;
                    self.counters.congested += 1;
                }
                self.actions.push_back(Action::NoteCongestion { conn });
            }
            Event::Drained { conn } => self.on_drained(conn),
            Event::Heartbeat { conn } => {
                if let Some(c) = self.registry.get_mut(conn) {
                    c.last_activity = now;
                }
            }
            Event::Closed { conn } => {
                if self.forget(conn) {
                    self.counters.connections_closed += 1;
                }
            }
            Event::Storage { ticket, result } => self.handle_storage(now, ticket, result),
            Event::Tick => self.handle_timeout(now),
            Event::FromCore { core, message } => self.handle_from_core(core, message),
            Event::CoresDown { cores } => self.on_cores_down(cores),
            Event::CoresUp { cores } => self.on_cores_up(cores),
        }
    }

    /// The next action for the driver, in the order they must be performed per
    /// connection.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the driver must next deliver [`Event::Tick`]. Discards deadlines that no
    /// longer matter (closed connections, completed logins) first, so an idle server
    /// does not wake up for nothing.
    pub fn poll_timeout(&mut self) -> Option<Timestamp> {
        while let Some((_, kind)) = self.timers.peek() {
            let stale = match kind {
                TimerKind::LoginDeadline(c) => self
                    .registry
                    .get(c)
                    .is_none_or(|conn| conn.session.is_some()),
                TimerKind::Idle(c) => self.registry.get(c).is_none(),
                TimerKind::SessionExpiry(c) => self
                    .registry
                    .get(c)
                    .is_none_or(|conn| conn.session.is_none()),
                TimerKind::HeldLogin(c) => !self.held_logins.contains_key(&c),
                TimerKind::RoomAnswers => false,
                TimerKind::Housekeeping | TimerKind::RetryLoadRevoked | TimerKind::Trim => false,
            };
            if !stale {
                break;
            }
            self.timers.pop_front();
        }
        self.timers.next_deadline()
    }

    /// Whether token `token_id` is on this plane's revocation list (loaded from storage
    /// at start, revoked here, or announced by another core).
    pub fn knows_revoked(&self, token_id: [u8; crate::token::TOKEN_ID_LEN]) -> bool {
        self.revoked.contains(token_id)
    }

    /// The counters, for metrics export.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Open connections (logged in or not).
    pub fn connection_count(&self) -> usize {
        self.registry.conn_count()
    }

    /// Logged-in sessions.
    pub fn session_count(&self) -> u64 {
        self.registry.session_count()
    }

    /// The logged-in connections of `user`.
    pub fn online_devices(&self, user: u64) -> &[ConnId] {
        self.registry.user_conns(user)
    }

    /// Storage requests emitted as [`Action::Storage`] whose [`Event::Storage`] has not
    /// arrived yet (the start-up `LoadRevoked` included). A request outlives the
    /// connection that made it — its completion is still needed for fan-out — so this
    /// drops to zero only once the driver has delivered every completion, whatever
    /// closed in between.
    pub fn pending_storage_requests(&self) -> usize {
        self.pending.len()
    }

    /// Chatrooms this core owns with at least one member connection (a room is dropped
    /// when its last member leaves or closes).
    pub fn chatroom_count(&self) -> usize {
        self.rooms.len()
    }

    /// What the loop measured of its last round (the CPU budget of
    /// [`crate::admission`]; call once per loop iteration).
    pub fn record_round(&mut self, round: crate::admission::Round) {
        self.admission.record_round(round);
    }

    /// Whether this core welcomes new connections: not while it is over its CPU budget
    /// (the userspace TCP then drops their SYNs; kernel sockets accept them, and their
    /// logins are refused).
    pub fn admits_connections(&self) -> bool {
        !self.admission.is_overloaded()
    }

    /// Whether the revocation list has been loaded (logins are accepted).
    pub fn is_ready(&self) -> bool {
        self.revocations_loaded
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the signing keys (after the key file changed). Cached verifications are
    /// dropped so tokens of a removed key fail from now on; live sessions stay.
    pub fn replace_keys(&mut self, keys: KeyRing) {
        self.keys = keys;
        self.token_cache.clear();
    }

    /// Kicks every session of `user` with `Kick{Admin}` (an operator action). Returns
    /// how many connections were closed.
    pub fn kick_user(&mut self, user: u64, message: &str) -> usize {
        let conns = self.registry.user_conns(user).to_vec();
        for &conn in &conns {
            self.counters.kicks.admin += 1;
            self.kick(conn, pb::KickReason::Admin, message);
        }
        conns.len()
    }

    /// Revokes tokens and ends the live sessions using them (an operator action, or the
    /// login service reporting a lost device): every token of each matching session is
    /// put on the revocation list (and persisted with `Request::RevokeToken`), and the
    /// session gets `Kick{TokenRevoked}` and is closed. A client kicked this way must
    /// not log in again with its token. Returns how many sessions were ended.
    ///
    /// [`Revocation::User`] reaches the tokens of the user's *live* sessions only;
    /// [`Revocation::Token`] also revokes a token no session is using right now.
    pub fn revoke_sessions(&mut self, now: Timestamp, what: Revocation) -> usize {
        let conns: Vec<ConnId> = match what {
            Revocation::User(user) => self.registry.user_conns(user).to_vec(),
            Revocation::Token {
                token_id,
                expires_at,
            } => {
                self.revoke_token(now, token_id, expires_at);
                self.sessions_using(token_id)
            }
        };
        for &conn in &conns {
            let tokens = self
                .registry
                .get(conn)
                .and_then(|c| c.session.as_ref())
                .map(|s| s.tokens.clone())
                .unwrap_or_default();
            for (id, expires_at) in tokens {
                self.revoke_token(now, id, expires_at);
            }
            self.end_revoked(conn);
        }
        conns.len()
    }

    /// The live sessions of `user` on this core, with their connections.
    fn user_sessions(&self, user: u64) -> impl Iterator<Item = (ConnId, &Session)> + '_ {
        self.registry
            .user_conns(user)
            .iter()
            .filter_map(|&c| Some((c, self.registry.get(c)?.session.as_ref()?)))
    }

    /// Whether the multi-device policy keeps a login of `device` on `platform` from
    /// living beside session `s` (of the same user): always the same device, and under
    /// `OnePerPlatform` the same platform class. Login order decides which one goes.
    fn policy_excludes(&self, s: &Session, device: &str, platform: i32) -> bool {
        *s.device == *device
            || (self.config.multi_device == MultiDevicePolicy::OnePerPlatform
                && s.platform == platform)
    }

    /// The connections whose session logged in with the token `token_id` or was renewed
    /// to it.
    fn sessions_using(&self, token_id: [u8; TOKEN_ID_LEN]) -> Vec<ConnId> {
        self.registry
            .sessions()
            .filter(|(_, s)| s.tokens.iter().any(|(id, _)| *id == token_id))
            .map(|(conn, _)| conn)
            .collect()
    }

    /// Ends a session whose token was revoked: `Kick{TokenRevoked}` and a close.
    fn end_revoked(&mut self, conn: ConnId) {
        self.counters.sessions_revoked += 1;
        self.counters.kicks.token_revoked += 1;
        self.kick(conn, pb::KickReason::TokenRevoked, "token revoked");
    }

    /// Starts a graceful shutdown: from now on every new request except `Ping` and
    /// `Logout` is answered `Error(ShuttingDown)` (a `Login` is then also closed), while
    /// storage requests already emitted complete and are answered as usual. Poll
    /// [`Control::is_drained`] to know when to call [`Control::shutdown`]. Calling it
    /// again changes nothing.
    pub fn begin_shutdown(&mut self, now: Timestamp) {
        self.draining_since.get_or_insert(now);
    }

    /// Whether a shutdown begun with [`Control::begin_shutdown`] has nothing left to
    /// finish: no storage request is waiting for its completion and the
    /// `shutdown_grace` has passed. False if no shutdown was begun.
    pub fn is_drained(&self, now: Timestamp) -> bool {
        let Some(since) = self.draining_since else {
            return false;
        };
        now >= since.saturating_add(self.config.shutdown_grace)
            && self
                .pending
                .values()
                .all(|p| matches!(p, Pending::LoadRevoked))
    }

    /// Whether [`Control::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.draining_since.is_some()
    }

    /// Kicks every connection with `Kick{ServerShutdown}` (naming the other cluster
    /// nodes to reconnect to, [`Control::set_reconnect_to`]) and closes it.
    pub fn shutdown(&mut self) {
        let reconnect_to = std::mem::take(&mut self.reconnect_to);
        for conn in self.registry.conn_ids() {
            self.kick_with(
                conn,
                pb::KickReason::ServerShutdown,
                "server shutting down; reconnect after a back-off",
                reconnect_to.clone(),
            );
        }
        self.reconnect_to = reconnect_to;
    }

    /// The client addresses of the other cluster nodes that are up, which the
    /// `Kick{ServerShutdown}` of a stopping node names (docs/CLUSTER.md, "Rolling
    /// restart"). Empty on a server that is no cluster.
    pub fn set_reconnect_to(&mut self, endpoints: Vec<String>) {
        self.reconnect_to = endpoints;
    }

    // ---- inputs ----

    fn handle_opened(&mut self, now: Timestamp, conn: ConnId) {
        let fresh = self.registry.open(
            conn,
            Conn {
                opened_at: now,
                last_activity: now,
                session: None,
                congested: false,
                typing_bucket: TokenBucket::new(self.config.typing_rate, now),
                bucket: TokenBucket::new(self.config.rate_limit, now),
                rooms: Seats::default(),
            },
        );
        if !fresh {
            // The transport broke its promise never to reuse an id; keep the original.
            return;
        }
        self.counters.connections_opened += 1;
        self.timers.arm(
            now.saturating_add(self.config.login_deadline),
            TimerKind::LoginDeadline(conn),
        );
        self.timers.arm(
            now.saturating_add(self.config.idle_timeout),
            TimerKind::Idle(conn),
        );
    }

    fn handle_frame(&mut self, now: Timestamp, conn_id: ConnId, frame: Frame) {
        let Some(conn) = self.registry.get_mut(conn_id) else {
            return;
        };
        conn.last_activity = now;
        let logged_in = conn.session.is_some();
        let frame_type = frame.body.frame_type();
        self.counters.frames_in.add(frame_type);
        let rid = frame.request_id;
        // Only servers send types 0x80 and up, and only servers answer requests. Either
        // is refused without being processed; like any bad frame before login, it also
        // ends a connection that has not logged in.
        let misdirected = if !frame_type.is_client_to_server() {
            Some((
                pb::ErrorCode::UnknownFrameType,
                "frame type unknown or not valid in this direction (server to client)",
            ))
        } else if frame.flags.is_response() {
            Some((
                pb::ErrorCode::InvalidRequest,
                "clients may not set the RESPONSE flag",
            ))
        } else {
            None
        };
        if let Some((code, message)) = misdirected {
            self.counters.frames_misdirected += 1;
            self.send_error(conn_id, rid, code, message, 0);
            if !logged_in {
                self.close(conn_id, CloseReason::BadFrameBeforeLogin(code));
            }
            return;
        }
        match frame.body {
            Body::Ping(ping) => self.on_ping(now, conn_id, rid, ping),
            Body::Login(login) => self.on_login(now, conn_id, rid, login),
            _ if !logged_in => {
                self.send_error(
                    conn_id,
                    rid,
                    pb::ErrorCode::NotLoggedIn,
                    "log in before any request other than Ping",
                    0,
                );
                self.close(conn_id, CloseReason::NotLoggedIn);
            }
            Body::Logout(logout) => self.on_logout(now, conn_id, logout),
            _ if self.draining_since.is_some() => self.refuse_shutting_down(conn_id, rid),
            Body::RenewToken(_) => {
                if self.rate_limit(now, conn_id, rid) {
                    self.on_renew(now, conn_id, rid);
                }
            }
            Body::SendMessage(msg) => {
                if self.rate_limit(now, conn_id, rid) {
                    self.on_send_message(now, conn_id, rid, msg);
                }
            }
            Body::ConversationOp(op) => {
                if self.rate_limit(now, conn_id, rid) {
                    self.on_conversation_op(now, conn_id, rid, op);
                }
            }
            Body::SyncRequest(req) => {
                if self.rate_limit(now, conn_id, rid) {
                    self.on_sync(now, conn_id, rid, req);
                }
            }
            Body::HistoryRequest(req) => {
                if self.rate_limit(now, conn_id, rid) {
                    self.on_history(conn_id, rid, req);
                }
            }
            // Fire and forget: its own limit, no answer (see `typing`).
            Body::Typing(typing) => self.on_typing(now, conn_id, typing),
            // Server-to-client bodies were refused above; nothing else exists.
            Body::LoginResult(_)
            | Body::RenewResult(_)
            | Body::Pong(_)
            | Body::Error(_)
            | Body::Kick(_)
            | Body::Ack(_)
            | Body::MessagePush(_)
            | Body::SyncResponse(_)
            | Body::ConversationOpResult(_)
            | Body::ConversationEvent(_)
            | Body::Gap(_)
            | Body::TypingNotice(_) => {}
        }
    }

    /// Answers a request that a shutting-down plane will not start.
    fn refuse_shutting_down(&mut self, conn: ConnId, rid: u32) {
        self.counters.refused_shutting_down += 1;
        self.send_error(
            conn,
            rid,
            pb::ErrorCode::ShuttingDown,
            "server shutting down; send it again after reconnecting",
            0,
        );
    }

    /// `conn` caught up: pushes resume, and it gets the `Gap`s it is owed at once (before
    /// any newer push of those rooms).
    fn on_drained(&mut self, conn: ConnId) {
        let Some(c) = self.registry.get_mut(conn) else {
            return;
        };
        c.congested = false;
        if !c.rooms.owes_gaps() {
            return;
        }
        while let Some((room, from, to)) = self
            .registry
            .get_mut(conn)
            .and_then(|c| c.rooms.take_any_gap())
        {
            self.send_gap(conn, room, from, to);
        }
    }

    fn handle_frame_error(&mut self, now: Timestamp, conn: ConnId, error: FrameError) {
        let Some(c) = self.registry.get_mut(conn) else {
            return;
        };
        c.last_activity = now;
        let logged_in = c.session.is_some();
        self.counters.frame_errors += 1;
        let code = error.error_code();
        self.send_error(
            conn,
            error.request_id().unwrap_or(0),
            code,
            &error.to_string(),
            0,
        );
        // A logged-in client keeps its connection after a frame the stream survived
        // (unknown type, bad body); an anonymous one gets no second chance, just as any
        // frame other than Login or Ping before login closes it.
        if error.is_fatal() {
            self.close(conn, CloseReason::FatalFrameError(code));
        } else if !logged_in {
            self.close(conn, CloseReason::BadFrameBeforeLogin(code));
        }
    }

    fn handle_timeout(&mut self, now: Timestamp) {
        while let Some((_, kind)) = self.timers.pop_expired(now) {
            match kind {
                TimerKind::LoginDeadline(conn) => {
                    if self.registry.get(conn).is_some_and(|c| c.session.is_none()) {
                        self.counters.login_timeouts += 1;
                        self.send_error(
                            conn,
                            0,
                            pb::ErrorCode::LoginTimeout,
                            "no login within the login deadline",
                            0,
                        );
                        self.close(conn, CloseReason::LoginTimeout);
                    }
                }
                TimerKind::Idle(conn) => {
                    let Some(c) = self.registry.get(conn) else {
                        continue;
                    };
                    let due = c.last_activity.saturating_add(self.config.idle_timeout);
                    if due <= now {
                        self.counters.kicks.idle += 1;
                        self.kick(conn, pb::KickReason::Idle, "heartbeat timed out");
                    } else {
                        self.timers.arm(due, TimerKind::Idle(conn));
                    }
                }
                TimerKind::SessionExpiry(conn) => {
                    let Some(expires_at) = self
                        .registry
                        .get(conn)
                        .and_then(|c| c.session.as_ref())
                        .map(|s| s.expires_at())
                    else {
                        continue;
                    };
                    if expires_at <= now {
                        self.counters.sessions_expired += 1;
                        self.send_error(
                            conn,
                            0,
                            pb::ErrorCode::TokenExpired,
                            "session token expired; log in with a fresh token",
                            0,
                        );
                        self.close(conn, CloseReason::SessionExpired);
                    } else {
                        self.timers.arm(expires_at, TimerKind::SessionExpiry(conn));
                    }
                }
                TimerKind::Housekeeping => {
                    self.revoked.prune(now);
                    self.timers.arm(
                        now.saturating_add(HOUSEKEEPING_INTERVAL),
                        TimerKind::Housekeeping,
                    );
                }
                TimerKind::RetryLoadRevoked => self.request_revocations(now),
                TimerKind::HeldLogin(conn) => self.release_held_login(conn),
                TimerKind::RoomAnswers => self.sweep_room_answers(now),
                TimerKind::Trim if self.draining_since.is_none() => {
                    self.storage(
                        Request::Trim {
                            now_ms: now.as_millis(),
                        },
                        Pending::Trim,
                    );
                }
                // No new retention step during a shutdown.
                TimerKind::Trim => {}
            }
        }
    }

    fn handle_storage(
        &mut self,
        now: Timestamp,
        ticket: Ticket,
        result: Result<Reply, StorageError>,
    ) {
        let Some(pending) = self.pending.remove(&ticket) else {
            self.counters.unknown_tickets += 1;
            return;
        };
        match pending {
            Pending::LoadRevoked => self.on_revocations_loaded(now, result),
            Pending::Background => {
                if result.is_err() {
                    self.counters.storage_errors += 1;
                }
            }
            Pending::Append(ctx) => self.on_appended(ctx, result),
            Pending::Op(ctx) => self.on_op_done(ctx, result),
            Pending::Sync(ctx) => self.on_synced(ctx, result),
            Pending::History(ctx) => self.on_history_done(ctx, result),
            Pending::Trim => self.on_trimmed(now, result),
            Pending::Api(pending) => self.on_api_storage(pending, result),
            Pending::Typing(ctx) => self.on_typing_members(ctx, result),
            Pending::Receipt(ctx) => self.on_receipt_members(ctx, result),
        }
    }

    /// Arms the next retention step `after` from now (never, if trimming is off).
    fn schedule_trim(&mut self, now: Timestamp, after: Duration) {
        if !self.config.trim_interval.is_zero() {
            self.timers.arm(now.saturating_add(after), TimerKind::Trim);
        }
    }

    /// Counts what a retention step removed and schedules the next step: soon if the
    /// pass is unfinished, at the next interval otherwise (or after a failure).
    fn on_trimmed(&mut self, now: Timestamp, result: Result<Reply, StorageError>) {
        let next = match result {
            Ok(Reply::Trimmed(report)) => {
                self.counters.trimmed_messages += report.messages;
                self.counters.trimmed_inbox_entries += report.inbox_entries;
                if report.pass_complete {
                    self.counters.trim_passes += 1;
                    self.config.trim_interval
                } else {
                    TRIM_STEP_PAUSE
                }
            }
            _ => {
                self.counters.storage_errors += 1;
                self.config.trim_interval
            }
        };
        self.schedule_trim(now, next);
    }

    // ---- outputs ----

    /// Queues a storage request and remembers what to do with its result.
    fn storage(&mut self, request: Request, pending: Pending) -> Ticket {
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        self.pending.insert(ticket, pending);
        self.actions.push_back(Action::Storage { ticket, request });
        ticket
    }

    /// Encodes `frame` into the shared encode buffer and splits it off. `None` (and the
    /// internal-error counter) if the frame exceeds the protocol's body limit; callers
    /// size what they build so this does not happen.
    fn encode(&mut self, frame: &Frame) -> Option<Bytes> {
        if self.encode_buf.capacity() < ENCODE_CHUNK / 4 {
            self.encode_buf.reserve(ENCODE_CHUNK);
        }
        match self.encoder.encode(frame, &mut self.encode_buf) {
            Ok(_) => Some(self.encode_buf.split().freeze()),
            Err(_) => {
                self.encode_buf.clear();
                self.counters.encode_errors += 1;
                None
            }
        }
    }

    /// Queues already-encoded bytes for `conn`. False if the connection is gone.
    fn send_bytes(&mut self, conn: ConnId, bytes: Bytes, frame_type: FrameType) -> bool {
        if self.registry.get(conn).is_none() {
            return false;
        }
        self.counters.frames_out.add(frame_type);
        self.actions.push_back(Action::Send { conn, bytes });
        true
    }

    /// Encodes and queues one frame for `conn`.
    fn send_frame(&mut self, conn: ConnId, frame: Frame) -> bool {
        if self.registry.get(conn).is_none() {
            return false;
        }
        let frame_type = frame.body.frame_type();
        match self.encode(&frame) {
            Some(bytes) => self.send_bytes(conn, bytes, frame_type),
            None => false,
        }
    }

    /// Answers request `rid` on `conn` with an `Error` frame (an unsolicited one if
    /// `rid` is 0).
    fn send_error(
        &mut self,
        conn: ConnId,
        rid: u32,
        code: pb::ErrorCode,
        message: &str,
        retry_after_ms: u32,
    ) {
        self.send_frame(conn, error_frame(rid, code, message, retry_after_ms));
    }

    /// Sends `Kick{reason}` and closes the connection.
    fn kick(&mut self, conn: ConnId, reason: pb::KickReason, message: &str) {
        self.kick_with(conn, reason, message, Vec::new());
    }

    /// Sends `Kick{reason, reconnect_to}` and closes the connection.
    fn kick_with(
        &mut self,
        conn: ConnId,
        reason: pb::KickReason,
        message: &str,
        reconnect_to: Vec<String>,
    ) {
        self.send_frame(
            conn,
            Frame::new(
                0,
                pb::Kick {
                    reason: reason as i32,
                    message: message.to_owned(),
                    reconnect_to,
                },
            ),
        );
        self.close(conn, CloseReason::Kicked(reason));
    }

    /// Forgets the connection and tells the transport to close it.
    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if self.forget(conn) {
            self.counters.connections_closed += 1;
            self.actions.push_back(Action::Close { conn, reason });
        }
    }

    /// Removes every trace of a connection: session, rooms. False if it was unknown.
    fn forget(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.registry.remove(conn) else {
            return false;
        };
        if !self.held_logins.is_empty() {
            self.held_logins.remove(&conn);
        }
        for room in c.rooms.rooms() {
            self.left_room(room, conn, true);
        }
        if let Some(user) = c.session.map(|s| s.user)
            && self.registry.user_conns(user).is_empty()
        {
            self.announce_offline(user);
        }
        true
    }

    /// Takes one request's worth from the connection's bucket; on failure answers
    /// `RateLimited` with the time until the next request is allowed.
    fn rate_limit(&mut self, now: Timestamp, conn: ConnId, rid: u32) -> bool {
        let Some(c) = self.registry.get_mut(conn) else {
            return false;
        };
        match c.bucket.try_take(now) {
            Ok(()) => true,
            Err(retry_after_ms) => {
                self.counters.rate_limited += 1;
                self.send_error(
                    conn,
                    rid,
                    pb::ErrorCode::RateLimited,
                    "request rate limit exceeded",
                    retry_after_ms,
                );
                false
            }
        }
    }

    /// Puts a token on the revocation list and persists it, unless it has expired
    /// anyway or is listed already.
    fn revoke_token(&mut self, now: Timestamp, id: [u8; TOKEN_ID_LEN], expires_at: Timestamp) {
        if expires_at <= now || self.revoked.contains(id) {
            return;
        }
        self.revoked.insert(id, expires_at);
        self.storage(
            Request::RevokeToken {
                token: TokenId(id),
                expires_at_ms: expires_at.as_millis(),
            },
            Pending::Background,
        );
        self.announce_revoked(id, expires_at);
    }

    // ---- start-up ----

    fn request_revocations(&mut self, now: Timestamp) {
        self.storage(
            Request::LoadRevoked {
                now_ms: now.as_millis(),
            },
            Pending::LoadRevoked,
        );
    }

    fn on_revocations_loaded(&mut self, now: Timestamp, result: Result<Reply, StorageError>) {
        match result {
            Ok(Reply::Revoked(list)) => {
                for entry in list {
                    self.revoked
                        .insert(entry.token.0, Timestamp(entry.expires_at_ms));
                }
                self.revocations_loaded = true;
            }
            _ => {
                self.counters.storage_errors += 1;
                self.timers.arm(
                    now.saturating_add(RELOAD_REVOKED_AFTER),
                    TimerKind::RetryLoadRevoked,
                );
            }
        }
    }
}

/// An `Error` frame answering request `rid` (an unsolicited one if `rid` is 0).
fn error_frame(rid: u32, code: pb::ErrorCode, message: &str, retry_after_ms: u32) -> Frame {
    let body = pb::Error {
        code: code as i32,
        message: message.to_owned(),
        retry_after_ms,
    };
    if rid == 0 {
        Frame::new(0, body)
    } else {
        Frame::response(rid, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retention steps a control plane asks for between `from` and `to`, each answered
    /// by `reply(step)`; returns the times the steps were asked at.
    fn trim_steps(
        control: &mut Control,
        from: Timestamp,
        to: Timestamp,
        mut reply: impl FnMut(usize) -> Result<Reply, StorageError>,
    ) -> Vec<u64> {
        let mut asked = Vec::new();
        let mut now = from;
        while now <= to {
            if control.poll_timeout().is_some_and(|t| t <= now) {
                control.handle(now, Event::Tick);
            }
            while let Some(action) = control.poll_action() {
                if let Action::Storage { ticket, request } = action {
                    match request {
                        Request::Trim { now_ms } => {
                            assert_eq!(now_ms, now.as_millis());
                            asked.push(now_ms - from.as_millis());
                            let r = reply(asked.len());
                            control.handle(now, Event::Storage { ticket, result: r });
                        }
                        Request::LoadRevoked { .. } => control.handle(
                            now,
                            Event::Storage {
                                ticket,
                                result: Ok(Reply::Revoked(Vec::new())),
                            },
                        ),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            now = now.saturating_add(Duration::from_millis(10));
        }
        asked
    }

    #[test]
    fn retention_steps_follow_each_other_until_a_pass_completes() {
        let t0 = Timestamp::from_millis(1_000_000);
        let keys = KeyRing::parse("k 000102030405060708090a0b0c0d0e0f\n").unwrap();
        let config = Config {
            trim_interval: Duration::from_secs(5),
            ..Config::default()
        };
        let mut control = Control::new(config, keys, t0);
        // Steps 1–3 leave the pass unfinished, step 4 completes it, step 5 fails.
        let asked = trim_steps(
            &mut control,
            t0,
            t0.saturating_add(Duration::from_secs(16)),
            |n| match n {
                5 => Err(StorageError::Backend("disk on fire".into())),
                _ => Ok(Reply::Trimmed(petrel_storage::TrimReport {
                    messages: 10,
                    inbox_entries: 1,
                    pass_complete: n >= 4,
                })),
            },
        );
        // First step after the interval, the next ones TRIM_STEP_PAUSE apart, then the
        // next pass one interval later, and after the failure one interval again.
        assert_eq!(asked, [5_000, 5_100, 5_200, 5_300, 10_300, 15_300]);
        let c = control.counters();
        assert_eq!(c.trimmed_messages, 50);
        assert_eq!(c.trimmed_inbox_entries, 5);
        assert_eq!(c.trim_passes, 2);
        assert_eq!(c.storage_errors, 1);
    }

    #[test]
    fn no_retention_steps_when_off_or_shutting_down() {
        let t0 = Timestamp::from_millis(1_000_000);
        let keys = KeyRing::parse("k 000102030405060708090a0b0c0d0e0f\n").unwrap();
        let off = Config {
            trim_interval: Duration::ZERO,
            ..Config::default()
        };
        let mut control = Control::new(off, keys.clone(), t0);
        let end = t0.saturating_add(Duration::from_secs(300));
        assert!(trim_steps(&mut control, t0, end, |_| unreachable!()).is_empty());
        let mut control = Control::new(Config::default(), keys, t0);
        control.begin_shutdown(t0);
        assert!(trim_steps(&mut control, t0, end, |_| unreachable!()).is_empty());
    }

    #[test]
    fn control_can_move_to_its_own_thread() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Control>();
        assert_send::<Event>();
        assert_send::<Action>();
    }
}
