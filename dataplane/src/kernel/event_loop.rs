//! One core's kernel sockets: its listeners and connections behind [`CoreIo`].
//!
//! Performance-critical path. `wait` is one `epoll_wait`; `receive` accepts and reads
//! every socket it reported until it would block, decoding frames in place; `transmit`
//! writes each connection with output **once** (a vectored write of everything queued).
//! No global locks (each core owns its connections outright), no hash per lookup (a
//! [`ConnId`] carries its slab slot), no per-frame logging above debug level.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use petrel_conn::{ConnId, TransportEvent};
use petrel_proto::DecoderConfig;
use slab::Slab;

use super::conn::{Connection, ReadOutcome};
use crate::boundary::{CoreIo, RoundLoad, Wake};
use crate::framed::Framed;
use crate::peer::{PeerPolicy, Verdict};
use crate::tls::TlsAcceptor;
use crate::websocket::WsAcceptor;

const WAKER: Token = Token(usize::MAX);
/// Listener `i` uses token `LISTENER_BASE - i`; connections use their slab key.
const LISTENER_BASE: usize = usize::MAX - 1;
/// Shared read buffer per core.
const SCRATCH_LEN: usize = 64 * 1024;
/// How long a shutting-down core keeps trying to flush before it closes regardless.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(3);
/// At most one "accept failed" warning per core per this interval: out of descriptors,
/// every new SYN would otherwise log a line (a log flood exactly when the host is full).
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Readiness events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

pub(super) struct CoreSettings {
    pub(super) index: u8,
    pub(super) listeners: Vec<TcpListener>,
    pub(super) max_connections: usize,
    pub(super) max_outbound_bytes: usize,
    pub(super) decoder: DecoderConfig,
    /// The listeners from index `tls_from` on speak TLS with this acceptor.
    pub(super) tls: Option<TlsAcceptor>,
    /// The first TLS listener (0: all of them).
    pub(super) tls_from: usize,
    /// Per listener: whether its connections start with a PROXY header.
    pub(super) proxy_listeners: Vec<bool>,
    /// PROXY header counters and the per-address limit.
    pub(super) peers: PeerPolicy,
    /// WebSocket on the listeners `ws_listeners` marks.
    pub(super) websocket: Option<WsAcceptor>,
    /// Per listener: whether it speaks WebSocket.
    pub(super) ws_listeners: Vec<bool>,
}

/// One core's kernel sockets. See the module docs.
pub struct KernelCore {
    settings: CoreSettings,
    poll: Poll,
    ready: Events,
    waker: Arc<Waker>,
    conns: Slab<Connection>,
    next_generation: u64,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    /// Readable connections to read in the next `receive`.
    readable: Vec<usize>,
    /// Listeners with pending connections.
    accepting: Vec<usize>,
    /// What the round since the last `receive` did ([`CoreIo::round_load`]).
    load: RoundLoad,
    shutdown_started: Option<Instant>,
    /// When the last "accept failed" warning was logged, and failures since.
    accept_warned: Option<Instant>,
    accept_failures: u64,
}

impl std::fmt::Debug for KernelCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCore")
            .field("index", &self.settings.index)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl KernelCore {
    pub(super) fn new(mut settings: CoreSettings) -> io::Result<KernelCore> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        for (i, listener) in settings.listeners.iter_mut().enumerate() {
            poll.registry()
                .register(listener, Token(LISTENER_BASE - i), Interest::READABLE)?;
        }
        Ok(KernelCore {
            settings,
            poll,
            ready: Events::with_capacity(EVENTS_PER_WAIT),
            waker,
            conns: Slab::new(),
            next_generation: crate::boundary::first_generation(),
            scratch: vec![0; SCRATCH_LEN],
            dirty: Vec::new(),
            readable: Vec::new(),
            accepting: Vec::new(),
            load: RoundLoad::default(),
            shutdown_started: None,
            accept_warned: None,
            accept_failures: 0,
        })
    }

    /// The connection `conn` names, if it is still open.
    fn key_of(&self, conn: ConnId) -> Option<usize> {
        let key = conn.slot();
        (conn.core() == self.settings.index && self.conns.get(key).is_some_and(|c| c.id() == conn))
            .then_some(key)
    }

    fn accept(&mut self, listener_index: usize, events: &mut Vec<TransportEvent>) {
        loop {
            if self.shutdown_started.is_some() {
                return;
            }
            let Some(listener) = self.settings.listeners.get(listener_index) else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE and friends: leave the rest in the backlog for now.
                    self.accept_failures += 1;
                    if self
                        .accept_warned
                        .is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_INTERVAL)
                    {
                        tracing::warn!(
                            core = self.settings.index,
                            error = %e,
                            failures = self.accept_failures,
                            "accept failed (logged at most every 10 s per core; failures \
                             counts every one since the last line)"
                        );
                        self.accept_warned = Some(Instant::now());
                        self.accept_failures = 0;
                    }
                    return;
                }
            };
            if self.conns.len() >= self.settings.max_connections {
                tracing::debug!(%peer, "connection limit reached; refusing");
                drop(stream);
                continue;
            }
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "TCP_NODELAY failed");
            }
            let acceptor = self
                .settings
                .tls
                .as_ref()
                .filter(|_| listener_index >= self.settings.tls_from);
            let tls = match acceptor.map(TlsAcceptor::session) {
                None => None,
                Some(Ok(session)) => Some(session),
                Some(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "cannot start a TLS session; dropping connection");
                    continue;
                }
            };
            let proxied = self
                .settings
                .proxy_listeners
                .get(listener_index)
                .copied()
                .unwrap_or(false);
            let ws_listener = self
                .settings
                .ws_listeners
                .get(listener_index)
                .copied()
                .unwrap_or(false);
            // Behind a PROXY listener (or an HTTP proxy, for WebSocket) the client is
            // known once its header or upgrade is read; otherwise it is the TCP peer,
            // limited now.
            let deferred = proxied
                || (ws_listener
                    && self
                        .settings
                        .websocket
                        .as_ref()
                        .is_some_and(WsAcceptor::is_behind_proxy));
            let address = if deferred {
                None
            } else {
                match self.settings.peers.admit(peer) {
                    Verdict::Admit(slot) => slot,
                    Verdict::Refuse => continue,
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let Ok(slot) = u32::try_from(key) else {
                tracing::warn!("connection slab past 2^32 slots; refusing");
                continue;
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut stream, Token(key), Interest::READABLE)
            {
                tracing::warn!(error = %e, "register failed; dropping connection");
                continue;
            }
            let id = ConnId::from_slot(self.settings.index, slot, self.next_generation);
            self.next_generation = self.next_generation.wrapping_add(1);
            let mut framed = match tls {
                Some(session) => Framed::with_tls(id, self.settings.decoder, session),
                None => Framed::new(id, self.settings.decoder),
            };
            if proxied {
                framed.expect_proxy_header();
            }
            if let Some(ws) = self.settings.websocket.as_ref().filter(|_| ws_listener) {
                framed.speak_websocket(ws.session());
            }
            if let Some(address) = address {
                framed.hold_address(address);
            }
            entry.insert(Connection::new(stream, framed));
            events.push(TransportEvent::Opened { conn: id });
        }
    }

    fn read(&mut self, key: usize, events: &mut Vec<TransportEvent>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let outcome = conn.read_frames(&mut self.scratch, &self.settings.peers, events);
        // A TLS handshake answer to write, or a TLS failure's alert and close.
        let flush = conn.has_output() || conn.closing;
        match outcome {
            ReadOutcome::Open => {}
            ReadOutcome::More => {
                // Its turn is over for this iteration; the next `receive` reads on (no new
                // epoll edge would come for data already there).
                self.load.backlogged = true;
                conn.read_pending = true;
                self.readable.push(key);
            }
            ReadOutcome::PeerClosed => self.remove(key, events),
            ReadOutcome::Failed(e) => {
                tracing::debug!(conn = %conn.id(), error = %e, "read failed");
                self.remove(key, events);
            }
        }
        if flush {
            self.mark_dirty(key);
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn remove(&mut self, key: usize, events: &mut Vec<TransportEvent>) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        events.push(TransportEvent::Closed { conn: conn.id() });
    }
}

impl CoreIo for KernelCore {
    fn index(&self) -> u8 {
        self.settings.index
    }

    fn receive(&mut self, events: &mut Vec<TransportEvent>) {
        self.load = RoundLoad {
            worked: !self.accepting.is_empty() || !self.readable.is_empty(),
            backlogged: false,
        };
        let mut accepting = std::mem::take(&mut self.accepting);
        for &listener in &accepting {
            self.accept(listener, events);
        }
        accepting.clear();
        self.accepting = accepting;
        let mut readable = std::mem::take(&mut self.readable);
        for &key in &readable {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.read_pending = false;
            }
            self.read(key, events);
        }
        // Keep the allocation; what `read` listed again (budget used up) is next.
        readable.clear();
        readable.append(&mut self.readable);
        self.readable = readable;
    }

    fn send(&mut self, conn: ConnId, bytes: Bytes) {
        let Some(key) = self.key_of(conn) else {
            return;
        };
        let limit = self.settings.max_outbound_bytes;
        if self.conns[key].queue(bytes, limit) {
            // Closed as a slow consumer: nothing more is written; `transmit` reports it.
            tracing::debug!(%conn, limit, "outbound limit exceeded; closing");
        }
        self.mark_dirty(key);
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(key) = self.key_of(conn) {
            self.conns[key].begin_close();
            self.mark_dirty(key);
        }
    }

    fn note_congestion(&mut self, conn: ConnId) {
        if let Some(key) = self.key_of(conn) {
            self.conns[key].note_congestion();
        }
    }

    fn transmit(&mut self, events: &mut Vec<TransportEvent>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.is_slow_consumer() {
                self.remove(key, events);
                continue;
            }
            let id = conn.id();
            if let Err(e) = conn.flush() {
                tracing::debug!(conn = %id, error = %e, "write failed");
                self.remove(key, events);
                continue;
            }
            let done = !conn.has_output();
            match conn.edge(self.settings.max_outbound_bytes) {
                Some(edge @ TransportEvent::Drained { .. }) => {
                    events.push(edge);
                    // Data left unread while congested gets no new epoll edge.
                    if std::mem::take(&mut conn.read_paused) && !conn.read_pending {
                        conn.read_pending = true;
                        self.readable.push(key);
                    }
                }
                Some(edge) => events.push(edge),
                None => {}
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if done && conn.closing {
                self.remove(key, events);
                continue;
            }
            let wants_write = !done;
            if wants_write != conn.wants_write {
                let interest = if wants_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                conn.wants_write = wants_write;
                if let Err(e) =
                    self.poll
                        .registry()
                        .reregister(&mut conn.stream, Token(key), interest)
                {
                    tracing::debug!(conn = %id, error = %e, "reregister failed");
                    self.remove(key, events);
                }
            }
        }
        // Reuse the allocation next time.
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // A drained connection waits to be read (see `transmit`): do not sleep.
        let timeout = if self.readable.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let timeout = match self.shutdown_started {
            Some(_) => Some(timeout.map_or(Duration::from_millis(50), |t| {
                t.min(Duration::from_millis(50))
            })),
            None => timeout,
        };
        match self.poll.poll(&mut self.ready, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let listeners = self.settings.listeners.len();
        for event in self.ready.iter() {
            match event.token() {
                WAKER => {}
                Token(t) if t > LISTENER_BASE - listeners => {
                    // A caller that does not `receive` between waits (back-pressure)
                    // must not grow these lists: each entry is listed once.
                    if !self.accepting.contains(&(LISTENER_BASE - t)) {
                        self.accepting.push(LISTENER_BASE - t);
                    }
                }
                Token(key) => {
                    if (event.is_readable() || event.is_read_closed() || event.is_error())
                        && let Some(conn) = self.conns.get_mut(key)
                        && !conn.read_pending
                    {
                        conn.read_pending = true;
                        self.readable.push(key);
                    }
                    if event.is_writable()
                        && let Some(conn) = self.conns.get_mut(key)
                        && !conn.dirty
                    {
                        conn.dirty = true;
                        self.dirty.push(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn round_load(&self) -> RoundLoad {
        self.load
    }

    /// Kernel sockets accept regardless: the kernel completes the handshake before
    /// Petrel sees a connection, so one left in the listen backlog looks open to its
    /// client, which sends its login into a socket nobody reads, times out, and comes
    /// back while the server later serves the stale login. Accepting is cheap; the
    /// overloaded control plane's refusal of the login (`SERVER_BUSY`, a retry time,
    /// close) is the shedding here.
    fn admit_connections(&mut self, _admit: bool) {}

    fn begin_shutdown(&mut self) {
        if self.shutdown_started.is_some() {
            return;
        }
        self.shutdown_started = Some(Instant::now());
        for mut listener in std::mem::take(&mut self.settings.listeners) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accepting.clear();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.conns[key].begin_close();
            self.mark_dirty(key);
        }
    }

    fn shutdown_done(&mut self, events: &mut Vec<TransportEvent>) -> bool {
        let Some(started) = self.shutdown_started else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if started.elapsed() > SHUTDOWN_FLUSH_LIMIT {
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.remove(key, events);
            }
            return true;
        }
        false
    }

    fn connections(&self) -> usize {
        self.conns.len()
    }
}
