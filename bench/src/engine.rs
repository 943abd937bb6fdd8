//! The load generator's client: many connections on one loop, speaking the wire protocol
//! through `petrel-proto`'s codec (or MQTT 3.1.1 to a broker, [`super::mqtt`]), over
//! kernel sockets or the AF_XDP userspace TCP ([`super::io`]).
//!
//! Kept cheap so the client is not the bottleneck: frames are encoded straight into each
//! connection's output buffer (one reused `SendMessage` frame, no allocation per send),
//! every connection with output is written once per loop iteration (many frames, one
//! `write`), and reads go through one shared 64 KiB scratch buffer. No per-message state
//! is kept: a message's `client_msg_id` *is* its scheduled send time in nanoseconds since
//! the Unix epoch, so an `Ack` or a `MessagePush` carries everything needed to compute
//! its latency.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use petrel_control::{KeyRing, TokenSpec};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::pb;
use petrel_proto::{Body, Frame, FrameDecoder, FrameType};
use prost::Message as _;

use super::io::{Handshake, Io, Ready};
use super::mqtt;
use super::stats::Stats;

/// What the connections speak.
pub enum Protocol {
    /// Petrel's protocol; tokens are minted from the server's key ring.
    Petrel(KeyRing),
    /// MQTT 3.1.1, QoS 1 ([`super::mqtt`]).
    Mqtt,
}

/// Output queued for one connection beyond which the schedule's sends to it are skipped
/// (and counted): the server is not reading, and the client must not grow without bound.
const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// The fields of a `MessagePush` (`proto/schema/petrel/v1/message.proto`) the bench
/// reads; prost skips the others (content, sender device) without allocating them.
#[derive(Clone, PartialEq, prost::Message)]
struct PushIds {
    /// `MessagePush.client_msg_id`: the scheduled send time (ns since the epoch).
    #[prost(uint64, tag = "5")]
    client_msg_id: u64,
}

/// A clock in nanoseconds since the Unix epoch, monotonic within the process (wall
/// time read once, then advanced by `Instant`), so latencies never go negative when the
/// system clock is adjusted mid-run.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

impl Clock {
    /// Reads the wall clock once.
    pub fn new() -> Clock {
        let base_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Clock {
            base: Instant::now(),
            base_unix_ns,
        }
    }

    /// Now, in ns since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        self.base_unix_ns + self.base.elapsed().as_nanos() as u64
    }
}

/// One connection to open.
#[derive(Debug, Clone, Copy)]
pub struct ConnSpec {
    /// Its user id (device `bench-<user>`).
    pub user: u64,
    /// Source address to bind, if not the kernel's choice.
    pub source: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotOpened,
    Connecting,
    LoginSent,
    Ready,
    Closed,
}

#[derive(Debug)]
struct Conn {
    spec: ConnSpec,
    state: State,
    rbuf: BytesMut,
    decoder: FrameDecoder,
    out: BytesMut,
    write_blocked: bool,
    dirty: bool,
    next_request: u32,
    last_msg_id: u64,
    outstanding: u32,
    ping_sent_ns: u64,
    /// The ping in flight is a measured heartbeat (not a keep-alive of the setup phases).
    ping_measured: bool,
    connect_ns: u64,
    /// Refused connects or logins so far (each retried after a back-off).
    attempts: u32,
    /// MQTT only: packet ids in flight.
    mqtt: mqtt::Session,
}

/// How the connect phase treats a refused connection (`--connect-retries`,
/// `--connect-backoff-ms`): it tries again up to `attempts` times, after a back-off that
/// starts at `base`, doubles per refusal up to 64 × `base`, and is half fixed, half
/// random, so refused clients do not come back in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// Retries per connection; 0 ends the run at the first refusal.
    pub attempts: u32,
    /// The first back-off.
    pub base: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 0,
            base: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// The back-off before retry number `attempt` (0 first), given a random `unit` in
    /// [0, 1).
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let full = self.base.saturating_mul(1 << attempt.min(6));
        full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }
}

/// Many client connections on one poll loop.
pub struct Engine {
    io: Io,
    ready: Vec<Ready>,
    clock: Clock,
    protocol: Protocol,
    /// MQTT: bytes per PUBLISH payload.
    payload_len: usize,
    conns: Vec<Conn>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    encoder: FrameEncoder,
    template: Frame,
    measure_from_ns: u64,
    pending_logins: usize,
    outstanding_total: u64,
    window: Option<u32>,
    first_failure: Option<String>,
    capture_responses: bool,
    last_rx_ns: u64,
    /// Keep-alive interval while connecting and setting up (0: off).
    keepalive_ns: u64,
    /// Logged-in connections by when they need their next keep-alive ping.
    keepalive_due: VecDeque<(u64, usize)>,
    /// What this engine measured.
    pub stats: Stats,
    /// Responses captured during setup (`capture_responses`): connection index, frame.
    pub responses: Vec<(usize, Frame)>,
    /// Senders whose flat-out window has room again since the last look.
    pub freed: Vec<usize>,
    retry: RetryPolicy,
    /// Refused connections waiting for their back-off, by when to open them again.
    retry_due: BinaryHeap<Reverse<(u64, usize)>>,
}

impl Engine {
    /// An engine for these connections (none opened yet) over `io`. `payload` is the text
    /// of every message.
    pub fn new(
        io: Io,
        protocol: Protocol,
        specs: &[ConnSpec],
        payload: &str,
        clock: Clock,
    ) -> anyhow::Result<Engine> {
        let conns = specs
            .iter()
            .map(|&spec| Conn {
                spec,
                state: State::NotOpened,
                rbuf: BytesMut::new(),
                decoder: FrameDecoder::default(),
                out: BytesMut::new(),
                write_blocked: false,
                dirty: false,
                next_request: 1,
                last_msg_id: 0,
                outstanding: 0,
                ping_sent_ns: 0,
                ping_measured: false,
                connect_ns: 0,
                attempts: 0,
                mqtt: mqtt::Session::default(),
            })
            .collect();
        let template = Frame::new(
            0,
            pb::SendMessage {
                client_msg_id: 0,
                conversation: None,
                content: petrel_proto::wire::encode_content(&pb::Content {
                    body: Some(pb::content::Body::Text(pb::Text {
                        text: payload.to_owned(),
                        mentions: vec![],
                    })),
                }),
                ..Default::default()
            },
        );
        Ok(Engine {
            io,
            ready: Vec::with_capacity(4096),
            clock,
            protocol,
            payload_len: payload.len(),
            conns,
            dirty: Vec::new(),
            scratch: vec![0; 64 * 1024],
            encoder: FrameEncoder::default(),
            template,
            measure_from_ns: u64::MAX,
            pending_logins: 0,
            outstanding_total: 0,
            window: None,
            first_failure: None,
            capture_responses: false,
            last_rx_ns: 0,
            keepalive_ns: 0,
            keepalive_due: VecDeque::new(),
            stats: Stats::default(),
            responses: Vec::new(),
            freed: Vec::new(),
            retry: RetryPolicy::default(),
            retry_due: BinaryHeap::new(),
        })
    }

    /// How refused connections are retried while connecting (default: not at all).
    pub fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Sends scheduled at or after this time are measured; earlier ones are warm-up.
    pub fn set_measure_from(&mut self, ns: u64) {
        self.measure_from_ns = ns;
    }

    /// Flat-out mode: report senders whose unacknowledged count drops below `window`.
    pub fn set_window(&mut self, window: Option<u32>) {
        self.window = window;
    }

    /// Capture request responses (setup) instead of counting them as send results.
    pub fn set_capture_responses(&mut self, on: bool) {
        self.capture_responses = on;
    }

    /// Sends not yet answered on connections still open.
    pub fn outstanding(&self) -> u64 {
        self.outstanding_total
    }

    /// When the last frame arrived (ns since the epoch).
    pub fn last_rx_ns(&self) -> u64 {
        self.last_rx_ns
    }

    /// User id of connection `i`.
    pub fn user(&self, i: usize) -> u64 {
        self.conns[i].spec.user
    }

    /// Keeps logged-in connections alive with a ping per `interval` while the run is not
    /// measuring yet (a long connect phase would otherwise outlast the server's idle
    /// timeout and get the first connections kicked), or stops that (`None`). These
    /// pings are not counted or measured; [`Engine::keep_alive`] sends them.
    pub fn set_keepalive(&mut self, interval: Option<Duration>) {
        self.keepalive_ns = interval.map_or(0, |d| d.as_nanos() as u64);
        if self.keepalive_ns == 0 {
            self.keepalive_due = VecDeque::new();
        }
    }

    /// Sends the keep-alive pings that are due (see [`Engine::set_keepalive`]).
    pub fn keep_alive(&mut self) {
        if self.keepalive_ns == 0 {
            return;
        }
        let now = self.clock.now_ns();
        while let Some(&(due, i)) = self.keepalive_due.front() {
            if due > now {
                break;
            }
            self.keepalive_due.pop_front();
            if self.conns[i].state == State::Ready {
                self.send_ping(i, false);
                self.keepalive_due.push_back((now + self.keepalive_ns, i));
            }
        }
    }

    /// Opens every connection and logs each in, at most `concurrency` handshakes at a
    /// time and (if given) `rate` new connections per second, within `timeout`. Fails on
    /// the first refused login or connect error.
    pub fn connect_all(
        &mut self,
        concurrency: usize,
        rate: Option<f64>,
        timeout: Duration,
        mut progress: impl FnMut(&Stats),
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let started_ns = self.clock.now_ns();
        let mut next = 0;
        let mut last_progress = Instant::now();
        while (self.stats.counts.logged_in as usize) < self.conns.len() {
            let allowed = rate.map_or(self.conns.len(), |r| {
                ((start.elapsed().as_secs_f64() * r) as usize + 1).min(self.conns.len())
            });
            let now = self.clock.now_ns();
            while self.pending_logins < concurrency
                && let Some(&Reverse((due, i))) = self.retry_due.peek()
                && due <= now
            {
                self.retry_due.pop();
                self.open(i)?;
            }
            while next < allowed && self.pending_logins < concurrency {
                self.open(next)?;
                next += 1;
            }
            self.poll_once(Some(Duration::from_millis(5)))?;
            self.keep_alive();
            if let Some(failure) = &self.first_failure {
                bail!(
                    "{failure} ({} of {} connections logged in)",
                    self.stats.counts.logged_in,
                    self.conns.len()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "only {} of {} connections logged in within {timeout:?} (raise \
                     --connect-timeout, or lower the load)",
                    self.stats.counts.logged_in,
                    self.conns.len()
                );
            }
            if last_progress.elapsed() > Duration::from_millis(200) {
                progress(&self.stats);
                last_progress = Instant::now();
            }
        }
        self.stats.connect_secs = (self.clock.now_ns() - started_ns) as f64 / 1e9;
        Ok(())
    }

    fn open(&mut self, i: usize) -> anyhow::Result<()> {
        self.io.open(i, self.conns[i].spec.source)?;
        let conn = &mut self.conns[i];
        // A retry starts from a clean stream.
        conn.decoder = FrameDecoder::default();
        conn.write_blocked = false;
        conn.state = State::Connecting;
        conn.connect_ns = self.clock.now_ns();
        self.pending_logins += 1;
        Ok(())
    }

    /// The transport, for its own counters.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// Queues a request frame on connection `i`; returns its request id.
    pub fn request(&mut self, i: usize, body: impl Into<Body>) -> anyhow::Result<u32> {
        let conn = &mut self.conns[i];
        let id = conn.next_request;
        conn.next_request = conn.next_request.wrapping_add(1).max(1);
        self.encoder
            .encode(&Frame::new(id, body), &mut conn.out)
            .context("cannot encode a request")?;
        mark_dirty(&mut self.dirty, i, conn);
        Ok(id)
    }

    /// Queues one `SendMessage` to `conversation`, scheduled at `scheduled_ns`. Returns
    /// false (and counts it as skipped) if the connection is closed or its output queue
    /// is full.
    pub fn send_message(
        &mut self,
        i: usize,
        conversation: pb::ConversationId,
        scheduled_ns: u64,
    ) -> bool {
        let conn = &mut self.conns[i];
        if conn.state != State::Ready || conn.out.len() > MAX_QUEUED_BYTES {
            self.stats.counts.skipped += 1;
            return false;
        }
        let id = scheduled_ns.max(conn.last_msg_id + 1);
        conn.last_msg_id = id;
        let written = match self.protocol {
            Protocol::Petrel(_) => {
                if let Body::SendMessage(m) = &mut self.template.body {
                    m.client_msg_id = id;
                    m.conversation = Some(conversation);
                }
                self.template.request_id = conn.next_request;
                conn.next_request = conn.next_request.wrapping_add(1).max(1);
                self.encoder.encode(&self.template, &mut conn.out).is_ok()
            }
            // The peer's topic: chat1v1's conversations are the peer's user id.
            Protocol::Mqtt => mqtt::write_publish(
                &mut conn.mqtt,
                conversation.id,
                id,
                self.payload_len,
                &mut conn.out,
            )
            .is_ok(),
        };
        if !written {
            self.stats.counts.skipped += 1;
            return false;
        }
        conn.outstanding += 1;
        self.outstanding_total += 1;
        self.stats.counts.sent += 1;
        if scheduled_ns >= self.measure_from_ns {
            self.stats.counts.sent_measured += 1;
        }
        mark_dirty(&mut self.dirty, i, conn);
        true
    }

    /// Unacknowledged sends of connection `i`.
    pub fn outstanding_of(&self, i: usize) -> u32 {
        self.conns[i].outstanding
    }

    /// Queues a `Ping` on connection `i` (if it is logged in).
    pub fn ping(&mut self, i: usize) {
        self.send_ping(i, true);
    }

    fn send_ping(&mut self, i: usize, measured: bool) {
        let now = self.clock.now_ns();
        let conn = &mut self.conns[i];
        if conn.state != State::Ready {
            return;
        }
        let written = match self.protocol {
            Protocol::Petrel(_) => {
                let id = conn.next_request;
                conn.next_request = conn.next_request.wrapping_add(1).max(1);
                let frame = Frame::new(
                    id,
                    pb::Ping {
                        client_time_ms: now / 1_000_000,
                    },
                );
                self.encoder.encode(&frame, &mut conn.out).is_ok()
            }
            Protocol::Mqtt => mqtt::write_ping(&mut conn.out).is_ok(),
        };
        if written {
            conn.ping_sent_ns = now;
            conn.ping_measured = measured;
            if measured {
                self.stats.counts.pings += 1;
            }
            mark_dirty(&mut self.dirty, i, conn);
        }
    }

    /// Writes queued output, waits up to `timeout` for socket events, handles them, and
    /// writes again.
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> anyhow::Result<()> {
        self.flush();
        let mut ready = std::mem::take(&mut self.ready);
        self.io.poll(timeout, &mut ready)?;
        for &Ready {
            conn: i,
            readable,
            writable,
        } in &ready
        {
            if self.conns[i].state == State::Connecting {
                self.check_connected(i);
                continue;
            }
            if writable && self.conns[i].state != State::Closed {
                let conn = &mut self.conns[i];
                conn.write_blocked = false;
                if !conn.out.is_empty() {
                    mark_dirty(&mut self.dirty, i, conn);
                }
            }
            if readable {
                self.read(i);
            }
        }
        self.ready = ready;
        self.flush();
        Ok(())
    }

    fn check_connected(&mut self, i: usize) {
        match self.io.handshake(i) {
            Handshake::Pending => return,
            Handshake::Failed(e) => {
                let user = self.conns[i].spec.user;
                self.refused_or_failed(i, format!("connect (user {user}): {e}"));
                return;
            }
            Handshake::Done => {}
        }
        let conn = &mut self.conns[i];
        conn.state = State::LoginSent;
        let user = conn.spec.user;
        let keyring = match &self.protocol {
            Protocol::Petrel(keyring) => keyring,
            Protocol::Mqtt => {
                match mqtt::write_connect(user, &mut conn.out) {
                    Ok(()) => mark_dirty(&mut self.dirty, i, conn),
                    Err(e) => self.fail_login(i, format!("{e:#}")),
                }
                return;
            }
        };
        let device = format!("bench-{user}");
        let token = match mint(keyring, user, &device, self.clock.now_ns()) {
            Ok(t) => t,
            Err(e) => {
                self.fail_login(i, format!("cannot mint a token for user {user}: {e}"));
                return;
            }
        };
        let login = pb::Login {
            token,
            user_id: user,
            device_id: device,
            platform: pb::Platform::Desktop as i32,
            client_version: "petrel-bench".into(),
            attempt: 0,
        };
        if let Err(e) = self.request(i, login) {
            self.fail_login(i, format!("{e:#}"));
        }
    }

    /// A refusal worth retrying: the connection backs off and is opened again, unless it
    /// used up its retries (then it failed).
    fn refused_or_failed(&mut self, i: usize, why: String) {
        self.refused_or_failed_after(i, why, Duration::ZERO, false);
    }

    /// [`Engine::refused_or_failed`], waiting at least `floor` (the server's
    /// `retry_after_ms`); `busy`: the refusal was `SERVER_BUSY` (counted apart).
    fn refused_or_failed_after(&mut self, i: usize, why: String, floor: Duration, busy: bool) {
        let attempt = self.conns[i].attempts;
        if attempt >= self.retry.attempts {
            return self.fail_login(i, why);
        }
        self.stats.counts.refused += 1;
        self.stats.counts.busy += u64::from(busy);
        self.close(i);
        let conn = &mut self.conns[i];
        conn.attempts += 1;
        let delay = self
            .retry
            .backoff(attempt, rand::random::<f64>())
            .max(floor);
        let due = self.clock.now_ns() + u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.retry_due.push(Reverse((due, i)));
    }

    fn fail_login(&mut self, i: usize, why: String) {
        self.stats.counts.login_failures += 1;
        self.first_failure.get_or_insert(why);
        self.close(i);
    }

    fn close(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        match conn.state {
            State::Connecting | State::LoginSent => self.pending_logins -= 1,
            State::Ready => self.stats.counts.disconnects += 1,
            State::NotOpened | State::Closed => {}
        }
        self.io.close(i);
        self.outstanding_total -= u64::from(conn.outstanding);
        conn.outstanding = 0;
        conn.state = State::Closed;
        conn.out = BytesMut::new();
        conn.rbuf = BytesMut::new();
    }

    fn read(&mut self, i: usize) {
        loop {
            if self.conns[i].state == State::Closed {
                return;
            }
            match self.io.read(i, &mut self.scratch) {
                Ok(0) => {
                    self.closed_by_peer(i, "the server closed the connection");
                    return;
                }
                Ok(n) => {
                    self.conns[i].rbuf.extend_from_slice(&self.scratch[..n]);
                    self.decode(i);
                    if self.conns[i].state == State::Closed {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed_by_peer(i, &e.to_string());
                    return;
                }
            }
        }
    }

    fn closed_by_peer(&mut self, i: usize, why: &str) {
        if matches!(self.conns[i].state, State::Connecting | State::LoginSent) {
            let user = self.conns[i].spec.user;
            self.refused_or_failed(i, format!("login of user {user}: {why}"));
        } else {
            self.close(i);
        }
    }

    fn decode(&mut self, i: usize) {
        let now = self.clock.now_ns();
        self.last_rx_ns = now;
        if matches!(self.protocol, Protocol::Mqtt) {
            return self.decode_mqtt(i, now);
        }
        loop {
            let conn = &mut self.conns[i];
            let raw = match conn.decoder.decode_raw(&mut conn.rbuf) {
                Ok(Some(raw)) => raw,
                Ok(None) => return,
                Err(e) => {
                    self.bad_frame(i, &e.to_string());
                    return;
                }
            };
            if raw.header.frame_type == FrameType::MessagePush {
                // The hot frame of every fan-out: only its id is needed, and the slim view
                // skips the text and device strings without allocating them.
                match PushIds::decode(raw.body) {
                    Ok(ids) => self.on_push(ids.client_msg_id, now),
                    Err(e) => {
                        self.bad_frame(i, &e.to_string());
                        return;
                    }
                }
                continue;
            }
            match raw.decode_body() {
                Ok(frame) => self.on_frame(i, frame, now),
                Err(e) => {
                    self.bad_frame(i, &e.to_string());
                    return;
                }
            }
            if self.conns[i].state == State::Closed {
                return;
            }
        }
    }

    fn decode_mqtt(&mut self, i: usize, now: u64) {
        loop {
            let conn = &mut self.conns[i];
            let user = conn.spec.user;
            let incoming = match mqtt::read(&mut conn.mqtt, user, &mut conn.rbuf, &mut conn.out) {
                Ok(Some(incoming)) => incoming,
                Ok(None) => return,
                Err(e) => return self.bad_frame(i, &format!("{e:#}")),
            };
            if !conn.out.is_empty() {
                mark_dirty(&mut self.dirty, i, conn);
            }
            match incoming {
                mqtt::Incoming::LoggedIn if conn.state == State::LoginSent => {
                    self.logged_in(i, now)
                }
                mqtt::Incoming::Acked(id) => self.on_ack(i, id, false, now),
                // Nothing of this run's to answer (a broker bug); not Petrel's duplicate.
                mqtt::Incoming::StrayAck => {}
                mqtt::Incoming::Delivered(id) => self.on_push(id, now),
                mqtt::Incoming::Pong => self.on_pong(i, now),
                mqtt::Incoming::LoggedIn | mqtt::Incoming::Nothing => {}
            }
        }
    }

    fn bad_frame(&mut self, i: usize, why: &str) {
        let conn = &self.conns[i];
        let user = conn.spec.user;
        if conn.state == State::LoginSent {
            self.fail_login(i, format!("user {user}: bad frame from the server: {why}"));
        } else {
            self.close(i);
        }
    }

    fn on_push(&mut self, client_msg_id: u64, now: u64) {
        let c = &mut self.stats.counts;
        c.delivered += 1;
        if client_msg_id >= self.measure_from_ns {
            c.delivered_measured += 1;
            self.stats
                .delivery
                .record(now.saturating_sub(client_msg_id));
        }
    }

    fn on_frame(&mut self, i: usize, frame: Frame, now: u64) {
        let logging_in = self.conns[i].state == State::LoginSent;
        match frame.body {
            Body::LoginResult(_) if logging_in => self.logged_in(i, now),
            Body::Error(e) if logging_in => {
                let user = self.conns[i].spec.user;
                let code = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified);
                let why = format!("login of user {user} refused: {code:?} {}", e.message);
                // The server is busy or going away: worth another try later, no sooner
                // than it asked. Anything else (a bad token) would be refused again.
                if matches!(
                    code,
                    pb::ErrorCode::RateLimited
                        | pb::ErrorCode::ShuttingDown
                        | pb::ErrorCode::ServerBusy
                ) {
                    let floor = Duration::from_millis(u64::from(e.retry_after_ms));
                    let busy = code == pb::ErrorCode::ServerBusy;
                    self.refused_or_failed_after(i, why, floor, busy);
                } else {
                    self.fail_login(i, why);
                }
            }
            Body::Ack(ack) => self.on_ack(i, ack.client_msg_id, ack.duplicate, now),
            Body::MessagePush(push) => self.on_push(push.client_msg_id, now),
            Body::Pong(_) => self.on_pong(i, now),
            Body::Kick(_) => self.stats.counts.kicks += 1,
            // Chatroom pushes this connection fell too far behind to get.
            Body::ConversationEvent(_) | Body::Gap(_) => {}
            Body::Error(e) if !self.capture_responses && frame.flags.is_response() => {
                let c = &mut self.stats.counts;
                c.send_errors += 1;
                if e.code == pb::ErrorCode::RateLimited as i32 {
                    c.rate_limited += 1;
                }
                self.answered(i);
            }
            body => {
                if self.capture_responses && frame.flags.is_response() {
                    self.responses.push((i, Frame { body, ..frame }));
                }
            }
        }
    }

    fn logged_in(&mut self, i: usize, now: u64) {
        let conn = &mut self.conns[i];
        conn.state = State::Ready;
        self.pending_logins -= 1;
        self.stats.counts.logged_in += 1;
        self.stats.login.record(now.saturating_sub(conn.connect_ns));
        if self.keepalive_ns > 0 {
            self.keepalive_due.push_back((now + self.keepalive_ns, i));
        }
    }

    fn on_ack(&mut self, i: usize, client_msg_id: u64, duplicate: bool, now: u64) {
        let c = &mut self.stats.counts;
        c.acked += 1;
        if duplicate {
            c.duplicates += 1;
        }
        if client_msg_id >= self.measure_from_ns {
            c.acked_measured += 1;
            self.stats.ack.record(now.saturating_sub(client_msg_id));
        }
        self.answered(i);
    }

    /// A pong: measured if it answers a measured heartbeat (not a keep-alive ping of the
    /// connect or setup phase).
    fn on_pong(&mut self, i: usize, now: u64) {
        let conn = &mut self.conns[i];
        if conn.ping_measured {
            conn.ping_measured = false;
            self.stats.counts.pongs += 1;
            self.stats
                .pong
                .record(now.saturating_sub(conn.ping_sent_ns));
        }
    }

    fn answered(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.outstanding > 0 {
            conn.outstanding -= 1;
            self.outstanding_total -= 1;
            if let Some(window) = self.window
                && conn.outstanding + 1 == window
            {
                self.freed.push(i);
            }
        }
    }

    /// Writes every connection with queued output once.
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            let conn = &mut self.conns[i];
            conn.dirty = false;
            if conn.write_blocked || conn.state == State::Closed {
                continue;
            }
            while !conn.out.is_empty() {
                match self.io.write(i, &conn.out) {
                    Ok(n) => conn.out.advance(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        conn.write_blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.close(i);
                        break;
                    }
                }
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        // Keep the allocation; anything marked dirty while writing is already in self.dirty.
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }
}

fn mark_dirty(dirty: &mut Vec<usize>, i: usize, conn: &mut Conn) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(i);
    }
}

/// Mints a one-day token for `user`/`device` from the server's key ring.
pub fn mint(ring: &KeyRing, user: u64, device: &str, now_ns: u64) -> anyhow::Result<String> {
    Ok(petrel_control::token::mint(
        ring,
        &TokenSpec {
            user,
            device,
            platform: pb::Platform::Desktop,
            issued_at: petrel_control::Timestamp::from_millis(now_ns / 1_000_000),
            ttl: Duration::from_secs(24 * 3600),
            token_id: rand::random(),
        },
    )?
    .token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_back_off_doubles_up_to_64_times_the_base_half_of_it_random() {
        let policy = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(100),
        };
        assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(policy.backoff(0, 0.999_999).as_millis(), 99);
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(600));
        assert_eq!(policy.backoff(6, 0.0), Duration::from_millis(3_200));
        assert_eq!(policy.backoff(30, 0.0), policy.backoff(6, 0.0), "capped");
        assert_eq!(
            policy.backoff(2, 7.0),
            policy.backoff(2, 1.0),
            "unit clamped"
        );
    }

    #[test]
    fn push_view_reads_the_id_of_a_full_push() {
        let push = pb::MessagePush {
            conversation: Some(pb::ConversationId {
                kind: pb::ConversationKind::Group as i32,
                id: 7,
            }),
            seq: 42,
            sender: 1001,
            server_time_ms: 1_700_000_000_000,
            client_msg_id: 1_764_000_000_123_456_789,
            content: petrel_proto::wire::encode_content(&pb::Content {
                body: Some(pb::content::Body::Text(pb::Text {
                    text: "x".repeat(100),
                    mentions: vec![3],
                })),
            }),
            sender_device: "bench-1001".into(),
            recalled_by: 0,
            recalled_at_ms: 0,
            edited_at_ms: 0,
            ..Default::default()
        };
        let bytes = push.encode_to_vec();
        let ids = PushIds::decode(bytes.as_slice()).unwrap();
        assert_eq!(ids.client_msg_id, 1_764_000_000_123_456_789);
    }

    #[test]
    fn clock_is_wall_time_and_monotonic() {
        let clock = Clock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
        // Some time after 2024.
        assert!(a > 1_700_000_000_000_000_000);
    }
}
