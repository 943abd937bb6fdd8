//! The connection task: one tokio task per client that connects, logs in, keeps the
//! session alive and reconnects when it drops.
//!
//! Life of the task:
//! 1. At start, and after `directory_after_failures` failed connects in a row, ask the
//!    dispatch directory (if configured) where to connect ([`crate::directory`]).
//!    Pick the endpoint and delay from the [`Reconnector`]; get a token (cache, else the
//!    provider); connect; send `Login`.
//! 2. On `LoginResult`: report `Connected`, rejoin the app's chatrooms, send
//!    `SyncRequest` from the stored cursors
//!    (following `has_more` pages), and send the outbox (at most `send_window` in flight).
//! 3. While connected, one `select!` loop handles: frames from the server, commands from
//!    the [`crate::Client`] handle, the heartbeat timer (Ping; a Pong missing after
//!    `pong_timeout` ends the connection), the token-renewal timer (`RenewToken` before
//!    expiry) and the outbox retry timer (after `RATE_LIMITED`).
//! 4. When the connection ends: pending requests fail with `ConnectionLost`; unacked
//!    sends stay in the outbox; wait the back-off delay (cut short by `reconnect_now`)
//!    and go to 1. A send the server refused with `SHUTTING_DOWN` stays in the outbox
//!    too, and no further sends go out on that connection: after the reconnect the same
//!    `client_msg_id` is sent again (the server stores it at most once). Kicks for `REPLACED`, `TOKEN_REVOKED` and `ADMIN`, and a token refused
//!    twice in a row, stop the task from reconnecting by itself (`Stopped`).
//!
//! Events are emitted while the store lock is held, so the app sees messages in the
//! order the store delivered them even when the API side (history loading) also
//! delivers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use petrel_proto::{Body, Frame, pb};
use tokio::net::TcpStream;

use crate::stream::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout};

use crate::backoff::Reconnector;
use crate::config::ClientConfig;
use crate::conn::{ConnError, FramedIo};
use crate::error::SdkError;
use crate::event::{ConnectionState, Event};
use crate::store::{Applied, Store};
use crate::token::{Token, TokenCache, TokenProvider};

/// What the [`crate::Client`] handle asks of the task.
pub(crate) enum Command {
    /// The outbox has new entries.
    Flush,
    /// Send a request and hand back the answer.
    Request {
        body: Box<Body>,
        reply: oneshot::Sender<Result<Body, SdkError>>,
    },
    /// Tell the conversation's other online members this user is (not) typing.
    Typing {
        conversation: crate::ConversationKey,
        typing: bool,
    },
    /// The network changed: reconnect immediately.
    ReconnectNow,
    /// Log out (optionally revoking the token) and end the task.
    Shutdown { revoke_token: bool },
}

/// State shared by the task and the handle.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Chatrooms the app is in; rejoined after every reconnect (the server forgets a
    /// connection's rooms when it closes).
    pub rooms: Mutex<BTreeSet<u64>>,
}

impl Shared {
    /// The store, recovering from a poisoned lock (no code path panics while holding it,
    /// and the store's own transactions keep it consistent).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chatrooms to rejoin.
    pub fn rooms(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Emits what applying server input produced. Call with the store lock held.
    pub fn emit(&self, applied: Applied) {
        for (client_msg_id, conversation, seq) in applied.acked {
            let _ = self.events.send(Event::Acked {
                client_msg_id,
                conversation,
                seq,
            });
        }
        for m in applied.deliver {
            let _ = self.events.send(Event::Message(m));
        }
        for m in applied.edited {
            let _ = self.events.send(Event::Edited(m));
        }
        for (conversation, seq, recall) in applied.recalled {
            let _ = self.events.send(Event::Recalled {
                conversation,
                seq,
                recall,
            });
        }
        for (conversation, from_seq, to_seq) in applied.gone {
            let _ = self.events.send(Event::Gap {
                conversation,
                from_seq,
                to_seq,
            });
        }
    }
}

/// How long the SDK gathers delivered positions before sending their receipts: a burst
/// of pushes to one conversation makes one `MarkDelivered`.
const DELIVERY_RECEIPT_DELAY: Duration = Duration::from_millis(250);

/// How one connection attempt ended.
pub(crate) enum Outcome {
    /// No session was established (connect, token or login failed).
    ConnectFailed(String),
    /// The server refused the login for now (`ServerBusy` or `RateLimited`: admission
    /// control): try again, no sooner than `retry_after`.
    Busy {
        reason: String,
        retry_after: Duration,
    },
    /// An established session ended; reconnect (to the next endpoint with `move_on`).
    Ended { reason: String, move_on: bool },
    /// Do not reconnect by itself.
    Stop(String),
    /// The app shut the client down.
    Shutdown,
}

/// A request waiting for its answer.
enum Pending {
    Ping,
    Renew,
    Sync,
    Send(u64),
    User(oneshot::Sender<Result<Body, SdkError>>),
    Rejoin(u64),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn is_token_error(code: i32) -> bool {
    use pb::ErrorCode as C;
    [
        C::TokenMalformed,
        C::TokenBadSignature,
        C::TokenExpired,
        C::TokenUnknownKey,
        C::TokenRevoked,
        C::TokenMismatch,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

/// The per-client connection task.
pub(crate) struct Task {
    config: ClientConfig,
    provider: Arc<dyn TokenProvider>,
    cache: TokenCache,
    shared: Arc<Shared>,
    state: watch::Sender<ConnectionState>,
    commands: mpsc::UnboundedReceiver<Command>,
    reconnector: Reconnector,
    next_request: u32,
    /// The last login was refused for its token: ask the provider (once).
    auth_failed: bool,
    /// The dispatch directory has been asked (it is asked at start, then again after
    /// `directory_after_failures` failed connects in a row).
    asked_directory: bool,
    /// How to reach `https://` directories (with `tls` and a directory).
    directory_tls: Option<crate::directory::DirectoryTls>,
}

/// One live session's bookkeeping. It holds no socket (the session's `TcpStream` is
/// passed to each read and flush), so the frame handling ([`Task::on_frame`]) is
/// synchronous and can be driven without one (the `fuzzing` feature's harness does).
pub(crate) struct Live {
    pub(crate) io: FramedIo,
    pending: HashMap<u32, Pending>,
    in_flight: HashSet<u64>,
    sends_paused_until: Option<tokio::time::Instant>,
    syncing: bool,
    resync: bool,
    last_sync: Option<pb::SyncRequest>,
    next_ping: tokio::time::Instant,
    ping_interval: Duration,
    pong_deadline: Option<tokio::time::Instant>,
    renew_at: Option<tokio::time::Instant>,
    /// The server answered `SHUTTING_DOWN`: send nothing more on this connection.
    server_draining: bool,
    /// Delivery receipts to send: the highest delivered seq per conversation since the
    /// last batch went out (coalesced: a burst of pushes makes one receipt).
    receipts_due: HashMap<crate::ConversationKey, u64>,
    /// When the due receipts go out.
    receipts_at: Option<tokio::time::Instant>,
}

impl Live {
    /// A session just logged in.
    pub(crate) fn new(
        io: FramedIo,
        ping_interval: Duration,
        renew_at: Option<tokio::time::Instant>,
    ) -> Live {
        Live {
            io,
            pending: HashMap::new(),
            in_flight: HashSet::new(),
            sends_paused_until: None,
            syncing: false,
            resync: false,
            last_sync: None,
            next_ping: tokio::time::Instant::now() + ping_interval,
            ping_interval,
            pong_deadline: None,
            renew_at,
            server_draining: false,
            receipts_due: HashMap::new(),
            receipts_at: None,
        }
    }

    /// Requests waiting for an answer.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sends waiting for an ack.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

impl Task {
    pub(crate) fn new(
        config: ClientConfig,
        provider: Arc<dyn TokenProvider>,
        shared: Arc<Shared>,
        state: watch::Sender<ConnectionState>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Task {
        let seed = config.jitter_seed.unwrap_or_else(rand::random);
        let directory_tls = config
            .tls
            .as_ref()
            .filter(|_| !config.directory.is_empty())
            .map(crate::directory::DirectoryTls::new);
        Task {
            reconnector: Reconnector::new(config.endpoints.clone(), config.backoff, seed),
            cache: TokenCache::new(config.token_cache_path.clone()),
            config,
            provider,
            shared,
            state,
            commands,
            next_request: 0,
            auth_failed: false,
            asked_directory: false,
            directory_tls,
        }
    }

    /// Queued sends in the store's outbox.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn store_outbox_len(&self) -> usize {
        self.shared.store().outbox_len().unwrap_or(0)
    }

    fn set_state(&self, state: ConnectionState) {
        // The state first: an app that reads it on seeing the event sees this one.
        self.state.send_replace(state.clone());
        let _ = self.shared.events.send(Event::State(state));
    }

    fn request_id(&mut self) -> u32 {
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.next_request
    }

    pub(crate) async fn run(mut self) {
        loop {
            // Again after a full round of failures (at least `directory_after_failures`),
            // so every endpoint of the list gets its turn first.
            let round = u32::try_from(self.reconnector.endpoint_count())
                .unwrap_or(u32::MAX)
                .max(self.config.directory_after_failures);
            if !self.config.directory.is_empty()
                && (!self.asked_directory || self.reconnector.failures() >= round)
            {
                self.ask_directory().await;
            }
            self.set_state(ConnectionState::Connecting {
                endpoint: self.reconnector.endpoint().to_owned(),
                attempt: self.reconnector.attempt(),
            });
            let delay = match self.attempt().await {
                Outcome::Shutdown => {
                    self.set_state(ConnectionState::Stopped {
                        reason: "shut down by the app".into(),
                    });
                    return;
                }
                Outcome::ConnectFailed(reason) => {
                    let retry_in = self.reconnector.connect_failed();
                    self.set_state(ConnectionState::Disconnected { reason, retry_in });
                    retry_in
                }
                Outcome::Busy {
                    reason,
                    retry_after,
                } => {
                    let retry_in = self.reconnector.connect_failed().max(retry_after);
                    self.set_state(ConnectionState::Disconnected { reason, retry_in });
                    retry_in
                }
                Outcome::Ended { reason, move_on } => {
                    let retry_in = self.reconnector.disconnected(Instant::now(), move_on);
                    self.set_state(ConnectionState::Disconnected { reason, retry_in });
                    retry_in
                }
                Outcome::Stop(reason) => {
                    // Started again by the app (`reconnect_now`): the directory first,
                    // as at start (the backend may have moved the user to another pool).
                    self.asked_directory = false;
                    self.set_state(ConnectionState::Stopped { reason });
                    if !self.idle(None).await {
                        return;
                    }
                    continue;
                }
            };
            if !self.idle(Some(delay)).await {
                return;
            }
        }
    }

    /// Waits out a back-off delay (or, with `None`, until `reconnect_now`), answering
    /// requests with `NotConnected`. Returns false if the client shut down.
    async fn idle(&mut self, delay: Option<Duration>) -> bool {
        let deadline = delay.map(|d| tokio::time::Instant::now() + d);
        loop {
            let command = match deadline {
                Some(at) => tokio::select! {
                    c = self.commands.recv() => c,
                    _ = sleep_until(at) => return true,
                },
                None => self.commands.recv().await,
            };
            match command {
                None | Some(Command::Shutdown { .. }) => return false,
                Some(Command::ReconnectNow) => {
                    self.reconnector.reconnect_now();
                    return true;
                }
                Some(Command::Request { reply, .. }) => {
                    let _ = reply.send(Err(SdkError::NotConnected));
                }
                // Ephemeral: not worth keeping for a later connection.
                Some(Command::Flush | Command::Typing { .. }) => {}
            }
        }
    }

    /// Asks the dispatch directory where to connect; its answer goes before the
    /// configured endpoints. Unanswered: the configured endpoints alone.
    async fn ask_directory(&mut self) {
        self.asked_directory = true;
        let token = match self.token().await {
            Ok((token, _)) => token,
            Err(error) => {
                tracing::warn!(%error, "dispatch: no token to ask the directory with");
                self.reconnector.directory_unanswered();
                return;
            }
        };
        // One limit for all the directories together (the app's commands wait
        // meanwhile), shared between them so one that never answers leaves the next
        // its turn.
        let limit = self.config.connect_timeout;
        let count = u32::try_from(self.config.directory.len().max(1)).unwrap_or(u32::MAX);
        let each = (limit / count).max(Duration::from_secs(1)).min(limit);
        let asked = timeout(
            limit,
            crate::directory::ask(
                &self.config.directory,
                &token.token,
                each,
                self.directory_tls.as_ref(),
            ),
        )
        .await
        .unwrap_or_else(|_| Err("no directory answered in time".to_owned()));
        match asked {
            Ok(answer) => {
                tracing::info!(pool = %answer.pool, pool_down = answer.pool_down,
                    endpoints = ?answer.endpoints, "dispatch: the directory answered");
                self.reconnector.use_directory(&answer.endpoints);
            }
            Err(error) => {
                tracing::warn!(%error, "dispatch: no directory answered; keeping the endpoints as they are");
                self.reconnector.directory_unanswered();
            }
        }
    }

    async fn token(&mut self) -> Result<(Token, bool), String> {
        if !self.auth_failed
            && let Some(t) = self.cache.load(now_ms(), 5_000)
        {
            return Ok((t, false));
        }
        let token = match timeout(self.config.login_timeout, self.provider.fetch()).await {
            Ok(result) => result?,
            Err(_) => return Err("the token provider did not answer in time".into()),
        };
        if let Err(e) = self.cache.store(&token) {
            tracing::warn!(error = %e, "could not write the token cache");
        }
        Ok((token, true))
    }

    async fn attempt(&mut self) -> Outcome {
        let (token, fresh) = match self.token().await {
            Ok(t) => t,
            Err(e) => return Outcome::ConnectFailed(format!("token provider: {e}")),
        };
        let endpoint = self.reconnector.endpoint().to_owned();
        let stream = match timeout(self.config.connect_timeout, TcpStream::connect(&endpoint)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Outcome::ConnectFailed(format!("connect {endpoint}: {e}")),
            Err(_) => return Outcome::ConnectFailed(format!("connect {endpoint}: timed out")),
        };
        let _ = stream.set_nodelay(true);
        let tls = self.config.tls.as_ref();
        let mut stream = match timeout(
            self.config.connect_timeout,
            Stream::open(stream, &endpoint, tls),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Outcome::ConnectFailed(format!("TLS with {endpoint}: {e}")),
            Err(_) => {
                return Outcome::ConnectFailed(format!("TLS with {endpoint}: timed out"));
            }
        };
        let mut io = FramedIo::new();
        let rid = self.request_id();
        let attempt = self
            .shared
            .store()
            .next_login_attempt()
            .unwrap_or_else(|e| {
                // Without it the server lets the newest login it handles win, as for
                // clients that do not count.
                tracing::error!(error = %e, "local store: cannot count the login attempt");
                0
            });
        let login = pb::Login {
            token: token.token.clone(),
            user_id: self.config.user_id,
            device_id: self.config.device_id.clone(),
            platform: self.config.platform as i32,
            client_version: self.config.client_version.clone(),
            attempt,
        };
        let answer = async {
            io.queue(&Frame::new(rid, login))?;
            io.flush(&mut stream).await?;
            loop {
                match io.read_frame(&mut stream).await? {
                    Some(f) if f.flags.is_response() && f.request_id == rid => {
                        return Ok::<_, ConnError>(Some(f.body));
                    }
                    Some(Frame {
                        body: Body::Kick(k),
                        ..
                    }) => return Ok(Some(Body::Kick(k))),
                    Some(_) => continue,
                    None => return Ok(None),
                }
            }
        };
        let result = match timeout(self.config.login_timeout, answer).await {
            Err(_) => return Outcome::ConnectFailed("login timed out".into()),
            Ok(Err(e)) => return Outcome::ConnectFailed(format!("login: {e}")),
            Ok(Ok(None)) => return Outcome::ConnectFailed("server closed during login".into()),
            Ok(Ok(Some(Body::LoginResult(r)))) => r,
            Ok(Ok(Some(Body::Error(e)))) if is_token_error(e.code) => {
                let _ = self.cache.clear();
                if fresh {
                    // The provider's own token was refused: asking again would loop.
                    return Outcome::Stop(format!(
                        "the server refused a fresh token from the provider: {}",
                        SdkError::from_server(&e)
                    ));
                }
                self.auth_failed = true;
                return Outcome::ConnectFailed(format!(
                    "token refused ({}); fetching a new one",
                    SdkError::from_server(&e)
                ));
            }
            Ok(Ok(Some(Body::Error(e))))
                if e.code == pb::ErrorCode::ServerBusy as i32
                    || e.code == pb::ErrorCode::RateLimited as i32 =>
            {
                return Outcome::Busy {
                    retry_after: Duration::from_millis(u64::from(e.retry_after_ms)),
                    reason: format!("login refused for now: {}", SdkError::from_server(&e)),
                };
            }
            Ok(Ok(Some(other))) => {
                return Outcome::ConnectFailed(format!("login refused: {other:?}"));
            }
        };
        self.auth_failed = false;
        if expiry_differs(&token, result.token_expires_at_ms) {
            let _ = self.cache.store(&Token {
                token: token.token.clone(),
                expires_at_ms: result.token_expires_at_ms,
            });
        }
        self.reconnector.connected(Instant::now());
        self.set_state(ConnectionState::Connected {
            endpoint,
            session_id: result.session_id,
        });
        let mut ping_interval = self.config.heartbeat_interval;
        if result.heartbeat_interval_s > 0 {
            ping_interval =
                ping_interval.min(Duration::from_secs(result.heartbeat_interval_s.into()));
        }
        let mut live = Live::new(io, ping_interval, self.renew_at(result.token_expires_at_ms));
        let outcome = self.session(&mut live, &mut stream).await;
        for (_, p) in live.pending.drain() {
            if let Pending::User(reply) = p {
                let _ = reply.send(Err(SdkError::ConnectionLost));
            }
        }
        outcome
    }

    /// When to renew a token expiring at `expires_at_ms`: `renew_before` ahead of expiry,
    /// or halfway through the remaining life if that comes first.
    fn renew_at(&self, expires_at_ms: u64) -> Option<tokio::time::Instant> {
        if expires_at_ms == 0 {
            return None;
        }
        let remaining = Duration::from_millis(expires_at_ms.saturating_sub(now_ms()));
        let lead = self.config.renew_before.min(remaining / 2);
        Some(tokio::time::Instant::now() + (remaining - lead))
    }

    /// What a new session sends first: chatroom rejoins, a sync, the outbox.
    pub(crate) fn begin(&mut self, live: &mut Live) -> Result<(), ConnError> {
        self.rejoin_rooms(live)?;
        self.start_sync(live)?;
        self.flush_outbox(live)
    }

    async fn session(&mut self, live: &mut Live, stream: &mut Stream) -> Outcome {
        let result: Result<Option<Outcome>, ConnError> = async {
            self.begin(live)?;
            live.io.flush(stream).await?;
            loop {
                let paused = live.sends_paused_until;
                let renew_at = live.renew_at;
                let pong_deadline = live.pong_deadline;
                let receipts_at = live.receipts_at;
                tokio::select! {
                    frame = live.io.read_frame(stream) => match frame? {
                        Some(frame) => {
                            if let Some(outcome) = self.on_frame(live, frame)? {
                                return Ok(Some(outcome));
                            }
                        }
                        None => return Ok(Some(Outcome::Ended {
                            reason: "the server closed the connection".into(),
                            move_on: false,
                        })),
                    },
                    command = self.commands.recv() => match command {
                        None => return Ok(Some(Outcome::Shutdown)),
                        Some(Command::Shutdown { revoke_token }) => {
                            let rid = self.request_id();
                            live.io.queue(&Frame::new(rid, pb::Logout { revoke_token }))?;
                            live.io.flush(stream).await?;
                            if revoke_token {
                                let _ = self.cache.clear();
                            }
                            return Ok(Some(Outcome::Shutdown));
                        }
                        Some(Command::ReconnectNow) => {
                            self.reconnector.reconnect_now();
                            return Ok(Some(Outcome::Ended {
                                reason: "reconnect requested (network change)".into(),
                                move_on: false,
                            }));
                        }
                        Some(Command::Flush) => self.flush_outbox(live)?,
                        Some(Command::Typing { conversation, typing }) => {
                            // Fire and forget: request id 0, never answered.
                            live.io.queue(&Frame::new(
                                0,
                                pb::Typing {
                                    conversation: Some(conversation.to_wire()),
                                    typing,
                                },
                            ))?;
                        }
                        Some(Command::Request { body, reply }) => {
                            let rid = self.request_id();
                            live.io.queue(&Frame::new(rid, *body))?;
                            live.pending.insert(rid, Pending::User(reply));
                        }
                    },
                    _ = sleep_until(live.next_ping) => {
                        let rid = self.request_id();
                        live.io.queue(&Frame::new(rid, pb::Ping { client_time_ms: now_ms() }))?;
                        live.pending.insert(rid, Pending::Ping);
                        live.next_ping = tokio::time::Instant::now() + live.ping_interval;
                        if live.pong_deadline.is_none() {
                            live.pong_deadline =
                                Some(tokio::time::Instant::now() + self.config.pong_timeout);
                        }
                    },
                    _ = sleep_until_opt(pong_deadline) => {
                        return Ok(Some(Outcome::Ended {
                            reason: format!("no pong within {:?}", self.config.pong_timeout),
                            move_on: false,
                        }));
                    },
                    _ = sleep_until_opt(renew_at) => {
                        live.renew_at = None;
                        let rid = self.request_id();
                        live.io.queue(&Frame::new(rid, pb::RenewToken {}))?;
                        live.pending.insert(rid, Pending::Renew);
                    },
                    _ = sleep_until_opt(paused) => {
                        live.sends_paused_until = None;
                        self.flush_outbox(live)?;
                    },
                    _ = sleep_until_opt(receipts_at) => self.send_delivery_receipts(live)?,
                }
                live.io.flush(stream).await?;
            }
        }
        .await;
        match result {
            Ok(Some(outcome)) => outcome,
            Ok(None) => Outcome::Ended {
                reason: "session ended".into(),
                move_on: false,
            },
            Err(e) => Outcome::Ended {
                reason: e.to_string(),
                move_on: false,
            },
        }
    }

    /// Joins again the chatrooms the app was in (before the outbox is flushed, so queued
    /// chatroom messages find their room).
    fn rejoin_rooms(&mut self, live: &mut Live) -> Result<(), ConnError> {
        let rooms: Vec<u64> = self.shared.rooms().iter().copied().collect();
        for room in rooms {
            let rid = self.request_id();
            let op = pb::ConversationOp {
                op: Some(pb::conversation_op::Op::JoinChatroom(pb::JoinChatroom {
                    room_id: room,
                })),
            };
            live.io.queue(&Frame::new(rid, op))?;
            live.pending.insert(rid, Pending::Rejoin(room));
        }
        Ok(())
    }

    /// Starts a sync from the stored cursors, or asks for another one after the sync in
    /// progress.
    fn start_sync(&mut self, live: &mut Live) -> Result<(), ConnError> {
        if live.syncing {
            live.resync = true;
            return Ok(());
        }
        self.send_sync(live, false)
    }

    /// Sends a `SyncRequest`. With `continuing` (the last page said `has_more`), a request
    /// identical to the previous one means no progress is possible (the server keeps
    /// answering with messages beyond a hole it cannot fill): the hole is skipped first.
    fn send_sync(&mut self, live: &mut Live, continuing: bool) -> Result<(), ConnError> {
        let limit = self.config.sync_page_limit;
        let mut request = self.shared.store().sync_request(limit);
        if continuing && request.as_ref().ok() == live.last_sync.as_ref() {
            self.apply(|s| s.skip_unfillable_gaps());
            request = self.shared.store().sync_request(limit);
            if request.as_ref().ok() == live.last_sync.as_ref() {
                tracing::warn!("sync makes no progress; stopping until the next reconnect");
                return Ok(());
            }
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "local store: cannot build a sync request");
                return Ok(());
            }
        };
        let rid = self.request_id();
        live.io.queue(&Frame::new(rid, request.clone()))?;
        live.last_sync = Some(request);
        live.pending.insert(rid, Pending::Sync);
        live.syncing = true;
        Ok(())
    }

    /// Sends queued messages until `send_window` are in flight.
    fn flush_outbox(&mut self, live: &mut Live) -> Result<(), ConnError> {
        if live.sends_paused_until.is_some() || live.server_draining {
            return Ok(());
        }
        let window = self.config.send_window;
        if live.in_flight.len() >= window {
            return Ok(());
        }
        let entries = match self.shared.store().outbox(0, window) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "local store: cannot read the outbox");
                return Ok(());
            }
        };
        for entry in entries {
            if live.in_flight.len() >= window {
                break;
            }
            if !live.in_flight.insert(entry.client_msg_id) {
                continue;
            }
            let rid = self.request_id();
            live.io.queue(&Frame::new(
                rid,
                pb::SendMessage {
                    client_msg_id: entry.client_msg_id,
                    conversation: Some(entry.conversation.to_wire()),
                    content: petrel_proto::wire::encode_content(&entry.content),
                    reply_to: entry.refs.reply_to,
                    mentions: entry.refs.mentions.clone(),
                },
            ))?;
            live.pending.insert(rid, Pending::Send(entry.client_msg_id));
        }
        Ok(())
    }

    /// Sends the due delivery receipts (`MarkDelivered`, one per conversation; their
    /// answers are not waited for).
    fn send_delivery_receipts(&mut self, live: &mut Live) -> Result<(), ConnError> {
        live.receipts_at = None;
        for (conversation, seq) in std::mem::take(&mut live.receipts_due) {
            let rid = self.request_id();
            live.io.queue(&Frame::new(
                rid,
                pb::ConversationOp {
                    op: Some(pb::conversation_op::Op::MarkDelivered(pb::MarkDelivered {
                        conversation: Some(conversation.to_wire()),
                        seq,
                    })),
                },
            ))?;
        }
        Ok(())
    }

    /// Notes the delivered positions `advanced` for the next batch of delivery receipts
    /// (sent [`DELIVERY_RECEIPT_DELAY`] after the first, so a burst makes one receipt).
    fn note_delivered(&self, live: &mut Live, advanced: &[(crate::ConversationKey, u64)]) {
        if !self.config.send_delivery_receipts {
            return;
        }
        for &(conversation, seq) in advanced {
            if !conversation.is_persisted() {
                continue;
            }
            let due = live.receipts_due.entry(conversation).or_insert(0);
            *due = (*due).max(seq);
            live.receipts_at
                .get_or_insert_with(|| tokio::time::Instant::now() + DELIVERY_RECEIPT_DELAY);
        }
    }

    /// Applies store input and emits the result, under one lock.
    fn apply(&self, f: impl FnOnce(&mut Store) -> Result<Applied, SdkError>) -> Option<Applied> {
        let mut store = self.shared.store();
        match f(&mut store) {
            Ok(mut applied) => {
                let gap = applied.gap;
                let inserted = applied.inserted;
                let advanced = std::mem::take(&mut applied.advanced);
                self.shared.emit(applied);
                Some(Applied {
                    gap,
                    inserted,
                    advanced,
                    ..Applied::default()
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "local store write failed");
                None
            }
        }
    }

    /// Handles one frame from the server: answers to pending requests, pushes, kicks.
    /// `Some` when the session must end.
    pub(crate) fn on_frame(
        &mut self,
        live: &mut Live,
        frame: Frame,
    ) -> Result<Option<Outcome>, ConnError> {
        if frame.flags.is_response() {
            let Some(pending) = live.pending.remove(&frame.request_id) else {
                return Ok(None);
            };
            return self.on_response(live, pending, frame.body);
        }
        match frame.body {
            Body::MessagePush(push) => {
                if let Some(applied) = self.apply(|s| s.apply_push(&push)) {
                    self.note_delivered(live, &applied.advanced);
                    if applied.gap {
                        self.start_sync(live)?;
                    }
                }
            }
            Body::ConversationEvent(ev) => {
                let key = crate::ConversationKey::from_wire(ev.conversation.as_ref());
                let delivery = ev.kind == pb::ConversationEventKind::DeliveryReceipt as i32;
                if delivery || ev.kind == pb::ConversationEventKind::ReadReceipt as i32 {
                    // Another member's position: theirs, not this user's unread count.
                    if let Some(conversation) = key {
                        let (user, seq) = (ev.actor, ev.seq);
                        let _ = self.shared.events.send(if delivery {
                            Event::DeliveryReceipt {
                                conversation,
                                user,
                                seq,
                            }
                        } else {
                            Event::ReadReceipt {
                                conversation,
                                reader: user,
                                seq,
                            }
                        });
                    }
                    return Ok(None);
                }
                // Taken out of a chatroom by the operator (kicked, or the room closed):
                // stop rejoining it after reconnects.
                if let Some(conversation) = key
                    && conversation.kind == pb::ConversationKind::Chatroom
                    && (ev.kind == pb::ConversationEventKind::Dissolved as i32
                        || (ev.kind == pb::ConversationEventKind::MembersRemoved as i32
                            && ev.users.contains(&self.config.user_id)))
                {
                    self.shared.rooms().remove(&conversation.id);
                }
                if ev.kind == pb::ConversationEventKind::Recalled as i32 {
                    if let Some(conversation) = key {
                        let recall = crate::Recalled {
                            by: ev.actor,
                            at_ms: now_ms(),
                        };
                        if let Err(e) =
                            self.shared
                                .store()
                                .apply_recall(conversation, ev.seq, recall)
                        {
                            tracing::error!(error = %e, "local store write failed");
                        }
                        let _ = self.shared.events.send(Event::Recalled {
                            conversation,
                            seq: ev.seq,
                            recall,
                        });
                    }
                    return Ok(None);
                }
                if ev.kind == pb::ConversationEventKind::Read as i32
                    && ev.actor == self.config.user_id
                    && let Some(key) = key
                    && let Err(e) = self.shared.store().set_read(key, ev.seq)
                {
                    tracing::error!(error = %e, "local store write failed");
                }
                let _ = self.shared.events.send(Event::Conversation(ev));
            }
            Body::Kick(kick) => {
                let reason = pb::KickReason::try_from(kick.reason).unwrap_or_default();
                let _ = self.shared.events.send(Event::Kicked {
                    reason,
                    message: kick.message.clone(),
                });
                let why = format!("kicked ({reason:?}): {}", kick.message);
                return Ok(Some(match reason {
                    pb::KickReason::Replaced | pb::KickReason::Admin => Outcome::Stop(why),
                    pb::KickReason::TokenRevoked => {
                        let _ = self.cache.clear();
                        Outcome::Stop(why)
                    }
                    pb::KickReason::ServerShutdown => {
                        // A cluster node names the other nodes: reconnect there first.
                        self.reconnector.prefer(&kick.reconnect_to);
                        Outcome::Ended {
                            reason: why,
                            move_on: true,
                        }
                    }
                    _ => Outcome::Ended {
                        reason: why,
                        move_on: false,
                    },
                }));
            }
            Body::Gap(gap) => {
                if let Some(conversation) =
                    crate::ConversationKey::from_wire(gap.conversation.as_ref())
                {
                    let _ = self.shared.events.send(Event::Gap {
                        conversation,
                        from_seq: gap.from_seq,
                        to_seq: gap.to_seq,
                    });
                }
            }
            Body::TypingNotice(notice) => {
                if let Some(conversation) =
                    crate::ConversationKey::from_wire(notice.conversation.as_ref())
                {
                    let _ = self.shared.events.send(Event::Typing {
                        conversation,
                        user: notice.user,
                        typing: notice.typing,
                        expires: std::time::Duration::from_millis(notice.expires_ms.into()),
                    });
                }
            }
            Body::Error(e) => {
                tracing::debug!(code = e.code, message = %e.message, "connection-level error");
            }
            other => tracing::debug!(frame = ?other.frame_type(), "ignoring unsolicited frame"),
        }
        Ok(None)
    }

    fn on_response(
        &mut self,
        live: &mut Live,
        pending: Pending,
        body: Body,
    ) -> Result<Option<Outcome>, ConnError> {
        match (pending, body) {
            (Pending::Ping, _) => live.pong_deadline = None,
            (Pending::Renew, Body::RenewResult(r)) => {
                let token = Token {
                    token: r.token,
                    expires_at_ms: r.expires_at_ms,
                };
                if let Err(e) = self.cache.store(&token) {
                    tracing::warn!(error = %e, "could not write the token cache");
                }
                live.renew_at = self.renew_at(r.expires_at_ms);
                let _ = self.shared.events.send(Event::TokenRenewed {
                    expires_at_ms: r.expires_at_ms,
                });
            }
            (Pending::Renew, other) => {
                // The session ends when the old token expires; the next login uses the
                // provider if the cached token is no longer valid.
                tracing::warn!(answer = ?other, "token renewal refused");
            }
            (Pending::Sync, Body::SyncResponse(page)) => {
                live.syncing = false;
                if let Some(applied) = self.apply(|s| s.apply_sync_page(&page)) {
                    self.note_delivered(live, &applied.advanced);
                }
                if page.has_more {
                    self.send_sync(live, true)?;
                } else {
                    // Complete: holes still open cannot be filled from the server.
                    if let Some(applied) = self.apply(|s| s.skip_unfillable_gaps()) {
                        self.note_delivered(live, &applied.advanced);
                    }
                    if std::mem::take(&mut live.resync) {
                        self.start_sync(live)?;
                    }
                }
            }
            (Pending::Sync, other) => {
                live.syncing = false;
                tracing::warn!(answer = ?other, "sync failed");
            }
            (Pending::Send(id), Body::Ack(ack)) => {
                live.in_flight.remove(&id);
                self.apply(|s| s.apply_ack(&ack));
                self.flush_outbox(live)?;
            }
            (Pending::Send(id), Body::Error(e)) => {
                live.in_flight.remove(&id);
                let code = pb::ErrorCode::try_from(e.code).unwrap_or_default();
                if matches!(
                    code,
                    pb::ErrorCode::RateLimited
                        | pb::ErrorCode::ServerBusy
                        | pb::ErrorCode::StorageFull
                ) {
                    // Not refused for good: wait as told, then send it again (same id).
                    let wait = Duration::from_millis(u64::from(e.retry_after_ms.max(100)));
                    live.sends_paused_until = Some(tokio::time::Instant::now() + wait);
                } else if code == pb::ErrorCode::ShuttingDown {
                    // Not refused for good: the entry stays in the outbox and goes out
                    // again, with the same client_msg_id, after the reconnect that the
                    // server's shutdown kick starts.
                    live.server_draining = true;
                } else {
                    let store = self.shared.store();
                    if store_removed(store, id) {
                        let _ = self.shared.events.send(Event::SendFailed {
                            client_msg_id: id,
                            code,
                            message: e.message,
                        });
                    }
                    self.flush_outbox(live)?;
                }
            }
            (Pending::Send(id), other) => {
                live.in_flight.remove(&id);
                tracing::warn!(answer = ?other, "unexpected answer to SendMessage");
            }
            (Pending::Rejoin(room), Body::ConversationOpResult(_)) => {
                tracing::debug!(room, "rejoined chatroom");
            }
            (Pending::Rejoin(room), Body::Error(e))
                if e.code == pb::ErrorCode::ShuttingDown as i32 =>
            {
                // Rejoined after the reconnect.
                tracing::debug!(room, "chatroom rejoin refused: server shutting down");
            }
            (Pending::Rejoin(room), other) => {
                tracing::warn!(room, answer = ?other, "could not rejoin chatroom");
                self.shared.rooms().remove(&room);
            }
            (Pending::User(reply), body) => {
                let answer = match body {
                    Body::Error(e) => Err(SdkError::from_server(&e)),
                    other => Ok(other),
                };
                let _ = reply.send(answer);
            }
        }
        Ok(None)
    }
}

fn store_removed(mut store: MutexGuard<'_, Store>, id: u64) -> bool {
    store.outbox_remove(id).unwrap_or_else(|e| {
        tracing::error!(error = %e, "local store write failed");
        false
    })
}

fn expiry_differs(token: &Token, expires_at_ms: u64) -> bool {
    expires_at_ms != 0 && token.expires_at_ms != expires_at_ms
}

/// Sleeps until `at`, or forever with `None` (a disabled `select!` branch).
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
