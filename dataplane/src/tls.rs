//! TLS inside a connection's framed half, the same on every transport: ciphertext from
//! the socket (a kernel `read(2)` or a smoltcp receive buffer) goes through a rustls
//! [`ServerConnection`] and comes out as plaintext for the frame decoder; queued frames
//! go into rustls one record's worth ([`ENCRYPT_BATCH`]) at a time, and only once the
//! socket took all of the previous one. So rustls holds at most one record of
//! ciphertext, and the outbound queue, its limit and its congestion edges count the rest
//! as plaintext, as on a plain connection.
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

/// Plaintext handed to rustls per batch before its ciphertext is written out: one TLS
/// record's worth (the largest record carries 16 KiB).
const ENCRYPT_BATCH: usize = 16 * 1024;

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

    /// Whether its TLS failed (see the module docs): nothing more is decrypted or
    /// encrypted, only the alert already queued goes out.
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    /// Whether the handshake is still under way (nothing can be encrypted yet).
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Queues a close_notify alert (a clean end of the TLS stream) after the ciphertext
    /// rustls holds; the caller sends it only after its own queued frames.
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
        // The handshake may have completed in the same call that then failed.
        if self.handshaken || !self.conn.is_handshaking() {
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

#[cfg(test)]
mod tests {
    //! A rustls client talks to a [`Framed`] with TLS through in-memory "sockets", so
    //! the handshake, decryption into frames, and encryption as fast as the socket takes
    //! it are checked without a transport.

    use std::io::{IoSlice, Read, Write};
    use std::sync::Arc;

    use bytes::Bytes;
    use petrel_conn::{ConnId, TransportEvent};
    use petrel_proto::codec::FrameEncoder;
    use petrel_proto::{DecoderConfig, Frame, pb};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::{TlsAcceptor, TlsFailure, TlsStats};
    use crate::framed::Framed;

    struct Pair {
        server: Framed,
        client: rustls::ClientConnection,
        stats: Arc<TlsStats>,
        /// Plaintext the client has received and the test not taken yet.
        received: Vec<u8>,
    }

    fn pair() -> Pair {
        let generated = rcgen::generate_simple_self_signed(vec!["petrel.test".into()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![generated.cert.der().clone()], key)
            .unwrap();
        let stats = Arc::new(TlsStats::default());
        let acceptor = TlsAcceptor::new(Arc::new(server_config), stats.clone());
        let server = Framed::with_tls(
            ConnId::new(0, 1),
            DecoderConfig::default(),
            acceptor.session().unwrap(),
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(generated.cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = rustls::ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("petrel.test").unwrap(),
        )
        .unwrap();
        Pair {
            server,
            client,
            stats,
            received: Vec::new(),
        }
    }

    impl Pair {
        /// Moves bytes both ways until neither side has anything to say; the server's
        /// socket takes at most `room` bytes per round.
        fn pump(&mut self, room: usize, events: &mut Vec<TransportEvent>) {
            for _ in 0..100_000 {
                let mut to_server = Vec::new();
                while self.client.wants_write() {
                    self.client.write_tls(&mut to_server).unwrap();
                }
                if !to_server.is_empty() {
                    self.server.ingest(&to_server, events);
                }
                let mut to_client = Vec::new();
                let mut left = room;
                self.server
                    .write_out(true, |slices: &[IoSlice<'_>]| {
                        let mut n = 0;
                        for s in slices {
                            let k = s.len().min(left);
                            to_client.extend_from_slice(&s[..k]);
                            left -= k;
                            n += k;
                            if k < s.len() {
                                break;
                            }
                        }
                        Ok(n)
                    })
                    .unwrap();
                if !to_client.is_empty() {
                    let mut data = &to_client[..];
                    while !data.is_empty() {
                        self.client.read_tls(&mut data).unwrap();
                        self.client.process_new_packets().unwrap();
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = self.client.reader().read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            self.received.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                if to_server.is_empty() && to_client.is_empty() {
                    return;
                }
            }
            panic!("the two sides never went quiet");
        }

        fn client_plaintext(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.received)
        }
    }

    fn ping(id: u32) -> Bytes {
        FrameEncoder::default()
            .encode_to_bytes(&Frame::new(id, pb::Ping::default()))
            .unwrap()
    }

    #[test]
    fn frames_cross_a_handshake_and_come_out_decoded_and_answers_come_back_encrypted() {
        let mut p = pair();
        let mut events = Vec::new();
        p.client.writer().write_all(&ping(1)).unwrap();
        p.client.writer().write_all(&ping(2)).unwrap();
        p.pump(usize::MAX, &mut events);
        assert!(!p.client.is_handshaking());
        assert_eq!(p.stats.handshakes(), 1);
        let ids: Vec<u32> = events
            .iter()
            .map(|e| match e {
                TransportEvent::Frame { frame, .. } => frame.request_id,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2]);
        assert!(!p.server.queue(ping(3), 1 << 20));
        p.pump(usize::MAX, &mut events);
        assert_eq!(p.client_plaintext(), ping(3).to_vec());
    }

    #[test]
    fn a_full_socket_keeps_plaintext_queued_and_counted_for_back_pressure() {
        let mut p = pair();
        let mut events = Vec::new();
        p.pump(usize::MAX, &mut events);
        assert!(!p.client.is_handshaking());
        let limit = 10_000;
        let frame = ping(7);
        let count = 10_000;
        for _ in 0..count {
            p.server.queue(frame.clone(), limit * 100);
        }
        let queued = frame.len() * count;
        // A socket that takes nothing: one record's worth went into rustls, the rest
        // stays plaintext in the queue, counted.
        p.server.write_out(true, |_| Ok(0)).unwrap();
        assert_eq!(p.server.queued_bytes(), queued - super::ENCRYPT_BATCH);
        p.server.write_out(true, |_| Ok(0)).unwrap();
        assert_eq!(
            p.server.queued_bytes(),
            queued - super::ENCRYPT_BATCH,
            "nothing more is encrypted while the socket is full"
        );
        assert!(matches!(
            p.server.edge(limit),
            Some(TransportEvent::Congested { .. })
        ));
        // A socket that takes 1,000 bytes a round: everything arrives, in order.
        let mut got = Vec::new();
        for _ in 0..10_000 {
            p.pump(1_000, &mut events);
            got.extend(p.client_plaintext());
            if !p.server.has_output() {
                break;
            }
        }
        assert_eq!(got.len(), queued);
        assert!(got.chunks(frame.len()).all(|c| c == &frame[..]));
        assert!(matches!(
            p.server.edge(limit),
            Some(TransportEvent::Drained { .. })
        ));
    }

    #[test]
    fn a_plaintext_frame_and_a_corrupt_record_fail_with_their_reasons() {
        let mut plain = pair();
        let mut events = Vec::new();
        plain.server.ingest(&ping(1), &mut events);
        assert!(plain.server.tls_failed());
        assert!(events.is_empty(), "nothing decoded: {events:?}");
        assert!(!plain.server.has_output(), "no alert to a plaintext client");
        assert_eq!(plain.stats.failures(TlsFailure::NotTls), 1);

        let mut p = pair();
        p.pump(usize::MAX, &mut events);
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend([0xAB; 32]);
        p.server.ingest(&record, &mut events);
        assert!(p.server.tls_failed());
        assert!(p.server.has_output(), "an alert is queued");
        assert_eq!(p.stats.failures(TlsFailure::BadRecord), 1);
        // Later frames queued by the control plane are not sent after the failure.
        p.server.queue(ping(9), 1 << 20);
        let mut sent = Vec::new();
        p.server
            .write_out(true, |s: &[IoSlice<'_>]| {
                let n: usize = s.iter().map(|x| x.len()).sum();
                for x in s {
                    sent.extend_from_slice(x);
                }
                Ok(n)
            })
            .unwrap();
        assert_eq!(sent.len(), 5 + 19, "only the encrypted alert: {sent:02x?}");
        assert!(
            !p.server.has_output(),
            "then nothing: the transport can close it"
        );
    }

    #[test]
    fn a_server_close_sends_the_queued_frames_first_then_close_notify() {
        let mut p = pair();
        let mut events = Vec::new();
        p.pump(usize::MAX, &mut events);
        // The control plane's usual close: a last frame (a kick), then close.
        p.server.queue(ping(5), 1 << 20);
        p.server.begin_close();
        assert!(p.server.has_output());
        let mut closed = false;
        let mut to_client = Vec::new();
        p.server
            .write_out(true, |s: &[IoSlice<'_>]| {
                let n: usize = s.iter().map(|x| x.len()).sum();
                for x in s {
                    to_client.extend_from_slice(x);
                }
                Ok(n)
            })
            .unwrap();
        let mut data = &to_client[..];
        let mut got = Vec::new();
        while !data.is_empty() {
            if p.client.read_tls(&mut data).unwrap() == 0 {
                break;
            }
            let state = p.client.process_new_packets().unwrap();
            let mut buf = [0u8; 256];
            while let Ok(n) = p.client.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            closed |= state.peer_has_closed();
        }
        assert_eq!(got, ping(5).to_vec(), "the frame arrives before the close");
        assert!(closed, "then close_notify");
        assert!(!p.server.has_output());
    }

    #[test]
    fn closing_a_connection_still_in_its_handshake_sends_only_an_alert() {
        let mut p = pair();
        let mut events = Vec::new();
        // Only the client's hello arrives; the client never finishes.
        let mut hello = Vec::new();
        p.client.write_tls(&mut hello).unwrap();
        p.server.ingest(&hello, &mut events);
        // The login deadline: an error frame, then close.
        p.server.queue(ping(1), 1 << 20);
        p.server.begin_close();
        let mut sent = 0;
        for _ in 0..8 {
            sent += p
                .server
                .write_out(true, |s: &[IoSlice<'_>]| {
                    Ok(s.iter().map(|x| x.len()).sum())
                })
                .unwrap();
            if !p.server.has_output() {
                break;
            }
        }
        assert!(sent > 0, "the handshake's answer and the alert went out");
        assert!(
            !p.server.has_output(),
            "nothing is left that could keep the connection open"
        );
    }

    #[test]
    fn output_dropped_for_a_dead_socket_is_never_waited_for() {
        let mut p = pair();
        let mut events = Vec::new();
        p.pump(usize::MAX, &mut events);
        p.server.queue(ping(1), 1 << 20);
        p.server.begin_close();
        p.server.clear_output();
        assert!(!p.server.has_output());
        assert_eq!(p.server.write_out(true, |_| Ok(1)).unwrap(), 0);
        assert!(!p.server.queue(ping(2), 1 << 20));
        assert!(!p.server.has_output());
    }
}
