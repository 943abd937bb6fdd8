//! The per-core event loop: accept, read and decode, apply commands, write.
//!
//! Performance-critical path. Per wake-up: handle every ready socket, drain the command
//! queue, then flush each connection with output once. No global locks (each core owns
//! its connections outright), no per-frame logging above debug level.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use petrel_control::{ConnId, Event};
use petrel_proto::DecoderConfig;
use slab::Slab;

use super::conn::{Connection, ReadOutcome};
use crate::boundary::CoreCommand;

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

pub(super) struct CoreSettings {
    pub(super) index: u8,
    pub(super) listeners: Vec<TcpListener>,
    pub(super) commands: Receiver<CoreCommand>,
    pub(super) events: Sender<Event>,
    pub(super) max_connections: usize,
    pub(super) max_outbound_bytes: usize,
    pub(super) decoder: DecoderConfig,
}

pub(super) struct CoreLoop {
    settings: CoreSettings,
    poll: Poll,
    waker: Arc<Waker>,
    conns: Slab<Connection>,
    keys: HashMap<ConnId, usize>,
    next_local: u64,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    shutdown_started: Option<Instant>,
    control_gone: bool,
    /// When the last "accept failed" warning was logged, and failures since.
    accept_warned: Option<Instant>,
    accept_failures: u64,
}

impl CoreLoop {
    pub(super) fn new(mut settings: CoreSettings) -> io::Result<CoreLoop> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        for (i, listener) in settings.listeners.iter_mut().enumerate() {
            poll.registry()
                .register(listener, Token(LISTENER_BASE - i), Interest::READABLE)?;
        }
        Ok(CoreLoop {
            settings,
            poll,
            waker,
            conns: Slab::new(),
            keys: HashMap::new(),
            next_local: 0,
            scratch: vec![0; SCRATCH_LEN],
            dirty: Vec::new(),
            shutdown_started: None,
            control_gone: false,
            accept_warned: None,
            accept_failures: 0,
        })
    }

    pub(super) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Runs until a `Shutdown` command has been handled (or the control plane is gone).
    pub(super) fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.shutdown_started.map(|_| Duration::from_millis(50));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(core = self.settings.index, error = %e, "poll failed; core stops");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t > LISTENER_BASE - self.settings.listeners.len() => {
                        self.accept(LISTENER_BASE - t);
                    }
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key);
                        }
                        if event.is_writable() {
                            self.mark_dirty(key);
                        }
                    }
                }
            }
            self.drain_commands();
            self.flush_dirty();
            if self.control_gone {
                self.begin_shutdown();
            }
            if let Some(started) = self.shutdown_started
                && (self.conns.is_empty() || started.elapsed() > SHUTDOWN_FLUSH_LIMIT)
            {
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.close(key);
                }
                return;
            }
        }
    }

    fn emit(&mut self, event: Event) -> bool {
        if self.control_gone {
            return false;
        }
        if self.settings.events.send(event).is_err() {
            self.control_gone = true;
        }
        !self.control_gone
    }

    fn accept(&mut self, listener_index: usize) {
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
            let id = ConnId::new(self.settings.index, self.next_local);
            self.next_local += 1;
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut stream, Token(key), Interest::READABLE)
            {
                tracing::warn!(error = %e, "register failed; dropping connection");
                continue;
            }
            entry.insert(Connection::new(id, stream, self.settings.decoder));
            self.keys.insert(id, key);
            if !self.emit(Event::Opened { conn: id }) {
                return;
            }
        }
    }

    fn read(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let events = &self.settings.events;
        let gone = &mut self.control_gone;
        let mut emit = |event: Event| {
            if events.send(event).is_err() {
                *gone = true;
            }
            !*gone
        };
        match conn.read_frames(&mut self.scratch, &mut emit) {
            ReadOutcome::Open | ReadOutcome::ControlGone => {}
            ReadOutcome::PeerClosed => self.close(key),
            ReadOutcome::Failed(e) => {
                tracing::debug!(conn = %conn.id, error = %e, "read failed");
                self.close(key);
            }
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

    fn drain_commands(&mut self) {
        loop {
            match self.settings.commands.try_recv() {
                Ok(CoreCommand::Send { conn, bytes }) => {
                    let Some(&key) = self.keys.get(&conn) else {
                        continue;
                    };
                    let limit = self.settings.max_outbound_bytes;
                    let c = &mut self.conns[key];
                    c.queue(bytes);
                    if c.queued_bytes() > limit {
                        tracing::debug!(%conn, queued = c.queued_bytes(), "outbound limit exceeded; closing");
                        self.close(key);
                    } else {
                        self.mark_dirty(key);
                    }
                }
                Ok(CoreCommand::Close { conn }) => {
                    if let Some(&key) = self.keys.get(&conn) {
                        self.conns[key].closing = true;
                        self.mark_dirty(key);
                    }
                }
                Ok(CoreCommand::Shutdown) => self.begin_shutdown(),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.begin_shutdown();
                    return;
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_started.is_some() {
            return;
        }
        self.shutdown_started = Some(Instant::now());
        for mut listener in std::mem::take(&mut self.settings.listeners) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.conns[key].closing = true;
            self.mark_dirty(key);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            let id = conn.id;
            let result = conn.flush();
            let done = conn.queued_bytes() == 0;
            match result {
                Ok(written) => {
                    if written > 0 {
                        self.emit(Event::Flushed {
                            conn: id,
                            bytes: written as u64,
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(conn = %id, error = %e, "write failed");
                    self.close(key);
                    continue;
                }
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if done && conn.closing {
                self.close(key);
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
                    self.close(key);
                }
            }
        }
        // Reuse the allocation next time.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.keys.remove(&conn.id);
        let id = conn.id;
        drop(conn);
        self.emit(Event::Closed { conn: id });
    }
}
