//! TLS inside a connection's framed half, the same on every transport: ciphertext from
//! the socket (a kernel `read(2)` or a smoltcp receive buffer) goes through a rustls
//! [`ServerConnection`] and comes out as plaintext for the frame decoder; queued frames
//! go into rustls only when the socket can take more, so the outbound queue, its limit
//! and its congestion edges count plaintext exactly as on a plain connection, and rustls
//! holds at most one batch of ciphertext.
//!
//! rustls's connection API needs no socket, which is what lets TLS run inside the
//! AF_XDP and DPDK per-core loops over the userspace TCP stream, with no thread and no
//! copy beyond the encryption itself.
//!
//! A connection whose TLS fails (a plaintext client on a TLS port, garbage, a handshake
//! rustls refuses) gets rustls's alert, is closed by its transport, and the reason is
//! counted in [`TlsStats`]; nothing reaches the control plane but `Opened` and `Closed`.

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use rustls::{ServerConfig, ServerConnection};

/// The TLS record type of a handshake message (RFC 8446, section 5.1).
const HANDSHAKE_RECORD: u8 = 22;

/// Plaintext handed to rustls per batch before its ciphertext is written out.
const ENCRYPT_BATCH: usize = 64 * 1024;

/// What a transport needs to speak TLS on its listener: the server configuration
/// (certificates through its resolver, ALPN, tickets) and the counters its connections
/// add to. Cloned into every core.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    stats: Arc<TlsStats>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor for `config`, counting into `stats`.
    pub fn new(config: Arc<ServerConfig>, stats: Arc<TlsStats>) -> TlsAcceptor {
        TlsAcceptor { config, stats }
    }

    /// The counters of every connection it accepted.
    pub fn stats(&self) -> &Arc<TlsStats> {
        &self.stats
    }

    /// A new server-side session for an accepted connection.
    pub(crate) fn session(&self) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: ServerConnection::new(self.config.clone())?,
            stats: self.stats.clone(),
            received: false,
            handshaken: false,
            failed: false,
            peer_closed: false,
        })
    }
}

/// Why a TLS connection was closed by the server, as counted in [`TlsStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The first bytes were not a TLS record: a plaintext client on a TLS port.
    NotTls,
    /// The handshake failed: no shared version, cipher suite or ALPN protocol, a bad
    /// message, or an alert from the client.
    Handshake,
    /// A record after the handshake did not decrypt or parse.
    BadRecord,
}

impl TlsFailure {
    /// Every reason, in the order of [`TlsStats::failures`].
    pub const ALL: [TlsFailure; 3] = [
        TlsFailure::NotTls,
        TlsFailure::Handshake,
        TlsFailure::BadRecord,
    ];

    /// The reason's name in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Handshake => "handshake",
            TlsFailure::BadRecord => "bad_record",
        }
    }
}

/// Counters of one listener's TLS connections, shared by its cores (one relaxed atomic
/// add per handshake or failure, never per message).
#[derive(Debug, Default)]
pub struct TlsStats {
    handshakes: AtomicU64,
    resumed: AtomicU64,
    failures: [AtomicU64; 3],
}

impl TlsStats {
    /// Handshakes completed.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Of those, handshakes that resumed an earlier session (a ticket or a cached id).
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    /// Connections closed for `reason`.
    pub fn failures(&self, reason: TlsFailure) -> u64 {
        self.failures[reason as usize].load(Ordering::Relaxed)
    }

    fn count_failure(&self, reason: TlsFailure) {
        self.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One connection's TLS state: a rustls server session. See the module docs.
pub(crate) struct TlsSession {
    conn: ServerConnection,
    stats: Arc<TlsStats>,
    /// Any byte arrived yet.
    received: bool,
    handshaken: bool,
    failed: bool,
    peer_closed: bool,
}

impl TlsSession {
    /// Takes ciphertext off the wire and appends the plaintext it yields to `plain`.
    /// After an `Err` the connection is over: the alert rustls queued is its last output.
    pub(crate) fn decrypt(
        &mut self,
        mut data: &[u8],
        plain: &mut BytesMut,
    ) -> Result<(), TlsFailure> {
        if self.failed || self.peer_closed {
            return Ok(());
        }
        if !self.received && !data.is_empty() {
            self.received = true;
            if data[0] != HANDSHAKE_RECORD {
                // A client's first record is its hello, a handshake record: anything else
                // (a plaintext client's frame, an HTTP request) is not TLS at all.
                return Err(self.fail(TlsFailure::NotTls));
            }
        }
        while !data.is_empty() {
            match self.conn.read_tls(&mut data) {
                Ok(_) => {}
                Err(_) => return Err(self.fail(self.failure_kind())),
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(_) => return Err(self.fail(self.failure_kind())),
            };
            self.note_handshake();
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            self.read_plaintext(state.plaintext_bytes_to_read(), plain);
            if self.peer_closed {
                break;
            }
        }
        Ok(())
    }

    /// Whether rustls holds ciphertext (handshake messages, records, an alert) that the
    /// socket has not taken yet.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Queues a close_notify alert (a clean end of the TLS stream) after what is queued.
    pub(crate) fn close_notify(&mut self) {
        if !self.failed {
            self.conn.send_close_notify();
        }
    }

    /// Writes rustls's pending ciphertext through `write` until it is all taken or the
    /// socket is full. Returns whether everything went out.
    pub(crate) fn flush_ciphertext(
        &mut self,
        zero_is_full: bool,
        write: &mut dyn FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        let mut sink = SocketSink { write };
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut sink) {
                Ok(0) if zero_is_full => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Encrypts up to [`ENCRYPT_BATCH`] bytes of `plain` (taken front to back); returns
    /// how many were taken. Before the handshake completes rustls takes nothing (the
    /// bytes stay queued as plaintext, counted against the connection's limit).
    pub(crate) fn encrypt<'a>(&mut self, plain: impl Iterator<Item = &'a [u8]>) -> usize {
        if self.conn.is_handshaking() || self.failed {
            return 0;
        }
        let mut taken = 0;
        for chunk in plain {
            let room = ENCRYPT_BATCH - taken;
            let part = &chunk[..chunk.len().min(room)];
            let n = self.conn.writer().write(part).unwrap_or(0);
            taken += n;
            if n < chunk.len() || taken >= ENCRYPT_BATCH {
                break;
            }
        }
        taken
    }

    fn failure_kind(&self) -> TlsFailure {
        if self.handshaken {
            TlsFailure::BadRecord
        } else {
            TlsFailure::Handshake
        }
    }

    fn fail(&mut self, reason: TlsFailure) -> TlsFailure {
        self.failed = true;
        self.stats.count_failure(reason);
        tracing::debug!(reason = reason.as_str(), "TLS failed; closing");
        reason
    }

    fn note_handshake(&mut self) {
        if !self.handshaken && !self.conn.is_handshaking() {
            self.handshaken = true;
            self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
            if self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                self.stats.resumed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Moves the `available` bytes of plaintext rustls decrypted into `plain`, which
    /// grows by exactly that much (no oversized buffer to zero and trim per read).
    fn read_plaintext(&mut self, available: usize, plain: &mut BytesMut) {
        if available == 0 {
            return;
        }
        let start = plain.len();
        plain.resize(start + available, 0);
        let mut filled = 0;
        while filled < available {
            match self.conn.reader().read(&mut plain[start + filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        plain.truncate(start + filled);
    }
}

/// `io::Write` over a transport's write function, for rustls's `write_tls`.
struct SocketSink<'a> {
    write: &'a mut dyn FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
}

impl Write for SocketSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (self.write)(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (self.write)(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
