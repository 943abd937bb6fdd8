//! One TCP connection on a dataplane core: its socket and its [`Framed`] half (decoder,
//! read buffer, outbound queue — shared with the AF_XDP transport).
//!
//! Performance-critical path: `read_frames` and `flush` run for every packet. They
//! allocate only to grow the read buffer for a partial frame; frames go to the core's
//! loop as they are decoded, and outbound `Bytes` are written with one vectored write
//! without being copied or concatenated.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::Bytes;
use mio::net::TcpStream;
use petrel_conn::{ConnId, TransportEvent};

use crate::framed::Framed;
use crate::peer::{PeerPolicy, Verdict};
use crate::proxy_header::ProxyOutcome;

/// Most bytes read from one connection per call of [`Connection::read_frames`]. A client
/// that pipelines megabytes of requests is answered a batch at a time, its answers pass
/// the congestion check between batches (so a client that does not read its answers is
/// paused, not overflowed), and the other connections of the core get their turn.
const READ_BUDGET: usize = 64 * 1024;

/// What reading a readable socket led to.
#[derive(Debug)]
pub(super) enum ReadOutcome {
    /// Read until the socket would block (or congestion paused it); the connection stays
    /// open.
    Open,
    /// Read [`READ_BUDGET`] bytes; the socket may hold more: read it again next time.
    More,
    /// The peer closed its side.
    PeerClosed,
    /// The socket failed.
    Failed(io::Error),
}

pub(super) struct Connection {
    pub(super) stream: TcpStream,
    framed: Framed,
    /// Registered for WRITABLE because a flush could not finish.
    pub(super) wants_write: bool,
    /// Close once everything queued is written.
    pub(super) closing: bool,
    /// In the core's list of connections to flush this wake-up.
    pub(super) dirty: bool,
    /// Its queued output passed twice the limit: closed without writing more.
    slow_consumer: bool,
    /// In the core's list of connections to read at the next `receive`.
    pub(super) read_pending: bool,
    /// A read was skipped while congested: read it again once drained (epoll reports
    /// only new data, not data left in the socket).
    pub(super) read_paused: bool,
}

impl Connection {
    pub(super) fn new(stream: TcpStream, framed: Framed) -> Connection {
        Connection {
            stream,
            framed,
            wants_write: false,
            closing: false,
            dirty: false,
            slow_consumer: false,
            read_pending: false,
            read_paused: false,
        }
    }

    /// The connection's id.
    pub(super) fn id(&self) -> ConnId {
        self.framed.id()
    }

    /// Whether it was closed as a slow consumer (see [`Connection::queue`]).
    pub(super) fn is_slow_consumer(&self) -> bool {
        self.slow_consumer
    }

    /// Reads until the socket would block, appending a `Frame` or `FrameError` event for
    /// every frame. `scratch` is the core's shared read buffer. A congested connection
    /// is not read (back-pressure on its peer) until it drains.
    pub(super) fn read_frames(
        &mut self,
        scratch: &mut [u8],
        peers: &PeerPolicy,
        events: &mut Vec<TransportEvent>,
    ) -> ReadOutcome {
        if self.framed.is_congested() {
            self.read_paused = true;
            return ReadOutcome::Open;
        }
        let mut budget = READ_BUDGET;
        while !self.framed.read_stopped() {
            if budget == 0 {
                return ReadOutcome::More;
            }
            let want = scratch.len().min(budget);
            let n = match self.stream.read(&mut scratch[..want]) {
                Ok(0) => return ReadOutcome::PeerClosed,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadOutcome::Failed(e),
            };
            budget -= n;
            let before = events.len();
            if let Some(outcome) = self.framed.ingest(&scratch[..n], events)
                && !self.settle(outcome, peers)
            {
                // Nothing it sent counts: not even what came with its header.
                events.truncate(before);
            }
        }
        if self.framed.refused() {
            // A TLS failure's alert, if any, goes out with the next flush, then it is
            // closed.
            self.closing = true;
        }
        ReadOutcome::Open
    }

    /// Its PROXY header (or a header where none was expected) was read: counts it and
    /// applies the per-address limit to the client it names. Returns whether it stays.
    fn settle(&mut self, outcome: ProxyOutcome, peers: &PeerPolicy) -> bool {
        let via = self
            .stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        match peers.settle(self.framed.id(), via, outcome) {
            Verdict::Admit(Some(slot)) => self.framed.hold_address(slot),
            Verdict::Admit(None) => {}
            Verdict::Refuse => {
                self.framed.refuse();
                return false;
            }
        }
        true
    }

    /// Whether anything waits to be written (frames, or TLS handshake records and
    /// alerts).
    pub(super) fn has_output(&self) -> bool {
        self.framed.has_output()
    }

    /// The server closes it once its output is written (on TLS, after a close_notify).
    pub(super) fn begin_close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.framed.begin_close();
        }
    }

    /// Queues bytes for the next flush. Past its cap ([`Framed::overflowed`]: `limit`
    /// more than when the driver noted the congestion) the connection is
    /// a slow consumer: what is queued is dropped, nothing more is written, and it is
    /// closed at the next flush. Returns whether that happened now.
    pub(super) fn queue(&mut self, bytes: Bytes, limit: usize) -> bool {
        if self.slow_consumer {
            return false;
        }
        if self.framed.queue(bytes, limit) {
            self.framed.clear_output();
            self.slow_consumer = true;
            return true;
        }
        false
    }

    /// Writes as much queued output as the socket takes. Returns the bytes written.
    pub(super) fn flush(&mut self) -> io::Result<usize> {
        let stream = &mut self.stream;
        self.framed
            .write_out(false, |slices| stream.write_vectored(slices))
    }

    /// The driver saw one `Congested` edge (see [`Framed::note_congestion`]).
    pub(super) fn note_congestion(&mut self) {
        self.framed.note_congestion();
    }

    /// The back-pressure edge after a flush, if any (see [`Framed::edge`]).
    pub(super) fn edge(&mut self, limit: usize) -> Option<TransportEvent> {
        self.framed.edge(limit)
    }
}
