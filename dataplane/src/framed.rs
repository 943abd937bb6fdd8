//! The framed half of a connection, the same for every transport: received bytes become
//! frames (a read buffer and a [`FrameDecoder`]), and frames to send wait in one outbound
//! queue of `Bytes` with one limit until the transport's socket takes them.
//!
//! **Back-pressure, one limit, one edge.** After each write the transport asks
//! [`Framed::edge`]: a queue still over the limit makes the connection *congested*
//! (reported once, [`TransportEvent::Congested`]); the transport then stops reading it,
//! so its own requests add no more answers, and the control plane stops pushing to it.
//! Once the queue is down to half the limit it is *drained* ([`TransportEvent::Drained`])
//! and reading resumes.
//!
//! **Slow consumers.** What the control plane handed over before it learned of the
//! congestion still queues: on a server with more than one core that can be a whole ring
//! of pushes, sent while the connection's core was descheduled. So the close rule is
//! measured from the moment the control plane *noted* the edge
//! ([`Framed::note_congestion`], one per `Congested`, in order with its sends): past
//! `limit` more than was queued then, the peer reads nothing at all and the transport
//! closes it. Before it is noted, only a safety cap of [`UNNOTED_CAP_FACTOR`] × `limit`
//! applies (a driver that never notes; see [`Framed::overflowed`]).
//!
//! The kernel transport (`kernel::conn`) feeds it from `read(2)` and drains it with one
//! `writev`; the AF_XDP transport (`xdp::poller`) feeds it from a smoltcp socket's receive
//! buffer and drains it into the socket's send buffer. Neither keeps a decoder, read
//! buffer or outbound queue of its own.
//!
//! **TLS.** A connection on a TLS listener carries a [`TlsSession`]: `ingest` decrypts
//! before decoding and `write_out` encrypts what the socket can take, so the queue, its
//! limit and its edges count plaintext as on a plain connection (see [`crate::tls`]).
//!
//! **WebSocket.** On a WebSocket listener a [`WsSession`] sits between TLS (if any) and
//! the decoder: binary messages' payloads are decoded as frames, and each queued frame
//! buffer goes out as one binary message, its header queued in front of it
//! ([`crate::websocket`]).
//!
//! **PROXY protocol.** On a listener behind a load balancer the connection starts with a
//! PROXY header naming the real client ([`crate::proxy_header`]); `ingest` reads it before
//! anything else (before TLS: the balancer writes it in the clear) and hands its outcome
//! to the transport once. On any other listener a connection that *starts* with a header
//! is refused: its address would be forged.
//!
//! Performance-critical path. Frames are split off the read buffer without copying (their
//! bodies share its allocation); outbound `Bytes` are handed to the socket as they are,
//! never concatenated; an idle connection holds no read buffer at all.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use petrel_conn::{ConnId, TransportEvent};
use petrel_proto::{DecoderConfig, FrameDecoder};

use crate::address_limit::AddressSlot;
use crate::proxy_header::{self, Parsed, ProxyFailure, ProxyOutcome};
use crate::tls::TlsSession;
use crate::websocket::WsSession;

/// Most buffers handed to one write.
pub(crate) const MAX_IOVECS: usize = 64;

/// Before the control plane has noted a connection's congestion, its queue may grow to
/// this many times the limit before it is closed. What a control plane on another core
/// sends before it sees the edge is bounded by the rings between the cores; this cap is
/// only the safety net for a driver that never notes.
pub(crate) const UNNOTED_CAP_FACTOR: usize = 8;

/// A connection's frames in and bytes out. See the module docs.
pub(crate) struct Framed {
    id: ConnId,
    read_buf: BytesMut,
    decoder: FrameDecoder,
    /// After a fatal framing error the stream is out of sync: nothing more is decoded,
    /// and the control plane sends its error frame and closes.
    read_stopped: bool,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Reported congested and not drained since.
    congested: bool,
    /// `Congested` edges reported and not yet noted by the control plane.
    unnoted: u32,
    /// `out_bytes` when the control plane noted the last edge.
    noted_at: usize,
    /// The connection's TLS session, on a TLS listener (boxed: a plain connection pays
    /// one pointer for it).
    tls: Option<Box<TlsSession>>,
    /// The connection's WebSocket session, on a WebSocket listener.
    ws: Option<Box<WsSession>>,
    /// The server closes it: on TLS, a close_notify goes out once `out` is empty.
    close_notify_pending: bool,
    /// [`Framed::clear_output`] was called: nothing is ever written again.
    output_dead: bool,
    /// Refused or ended by a stream layer (a PROXY header that failed or was not
    /// expected, a WebSocket failure or close): the transport closes it once what is
    /// queued (a WebSocket answer, a TLS close_notify) is written; nothing more is read.
    refused: bool,
    /// Where its first bytes stand with respect to a PROXY header.
    proxy: ProxyStage,
    /// Its place in the per-address connection limit, if one applies (given back when the
    /// connection is dropped).
    address: Option<Box<AddressSlot>>,
}

/// Where a connection's first bytes stand with respect to a PROXY header.
enum ProxyStage {
    /// Not expected: a header at the very start is refused.
    Unexpected,
    /// Expected (a PROXY listener): the bytes of an incomplete header so far.
    Expecting(Vec<u8>),
    /// Settled: everything received is the stream itself.
    Settled,
}

impl Framed {
    pub(crate) fn new(id: ConnId, decoder: DecoderConfig) -> Framed {
        Framed {
            id,
            read_buf: BytesMut::new(),
            decoder: FrameDecoder::new(decoder),
            read_stopped: false,
            out: VecDeque::new(),
            out_bytes: 0,
            congested: false,
            unnoted: 0,
            noted_at: 0,
            tls: None,
            ws: None,
            close_notify_pending: false,
            output_dead: false,
            refused: false,
            proxy: ProxyStage::Unexpected,
            address: None,
        }
    }

    /// It speaks WebSocket through `session` (inside TLS, if it has that too).
    pub(crate) fn speak_websocket(&mut self, session: WsSession) {
        self.ws = Some(Box::new(session));
    }

    /// Its first bytes must be a PROXY header (the connection is on a PROXY listener).
    pub(crate) fn expect_proxy_header(&mut self) {
        self.proxy = ProxyStage::Expecting(Vec::new());
    }

    /// Holds `slot` (its place in the per-address limit) for as long as it lives.
    pub(crate) fn hold_address(&mut self, slot: AddressSlot) {
        self.address = Some(Box::new(slot));
    }

    /// Whether it was refused before its first frame, or its TLS failed: the transport
    /// closes it as soon as what is queued (a TLS alert, if any) is written.
    pub(crate) fn refused(&self) -> bool {
        self.refused || self.tls_failed()
    }

    /// Refuses it: nothing more is read or written, and the transport closes it.
    pub(crate) fn refuse(&mut self) {
        self.refused = true;
        self.read_stopped = true;
        self.read_buf = BytesMut::new();
        self.clear_output();
    }

    /// A connection that speaks TLS through `session`.
    pub(crate) fn with_tls(id: ConnId, decoder: DecoderConfig, session: TlsSession) -> Framed {
        let mut framed = Framed::new(id, decoder);
        framed.tls = Some(Box::new(session));
        framed
    }

    /// Whether its TLS failed (see [`crate::tls`]): the transport closes it as soon as
    /// what is queued (the alert) is written.
    pub(crate) fn tls_failed(&self) -> bool {
        self.tls.as_deref().is_some_and(TlsSession::failed)
    }

    /// The server closes the connection: on TLS, a close_notify alert goes out after
    /// what is queued. A connection still in its handshake can never read a frame, so
    /// what is queued for it is dropped and only the alert goes.
    pub(crate) fn begin_close(&mut self) {
        if let Some(ws) = self.ws.as_deref_mut() {
            if ws.is_handshaking() {
                self.out.clear();
                self.out_bytes = 0;
            } else if let Some(close) = ws.close_frame()
                && !self.output_dead
            {
                self.out_bytes += close.len();
                self.out.push_back(close);
            }
        }
        let Some(tls) = self.tls.as_deref() else {
            return;
        };
        if tls.is_handshaking() {
            self.out.clear();
            self.out_bytes = 0;
        }
        self.close_notify_pending = !tls.failed();
    }

    /// The connection's id.
    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// Whether a fatal framing error stopped reading.
    pub(crate) fn read_stopped(&self) -> bool {
        self.read_stopped
    }

    /// Takes `data` off the wire: appends a `Frame` event for every whole frame it
    /// completes, a `FrameError` for every bad one (and stops reading after a fatal one).
    /// Returns what its PROXY header said, once, on the call that settles it (a failure
    /// refuses the connection; see [`Framed::refused`]).
    pub(crate) fn ingest(
        &mut self,
        data: &[u8],
        events: &mut Vec<TransportEvent>,
    ) -> Option<ProxyOutcome> {
        if self.read_stopped {
            return None;
        }
        match std::mem::replace(&mut self.proxy, ProxyStage::Settled) {
            ProxyStage::Settled => self.ingest_stream(data, events),
            ProxyStage::Unexpected if proxy_header::starts_like_header(data) => {
                self.refuse();
                Some(ProxyOutcome::Failed(ProxyFailure::Unexpected))
            }
            ProxyStage::Unexpected => self.ingest_stream(data, events),
            ProxyStage::Expecting(mut pending) => {
                let parsed = if pending.is_empty() {
                    proxy_header::parse(data)
                } else {
                    pending.extend_from_slice(data);
                    proxy_header::parse(&pending)
                };
                match parsed {
                    Parsed::Incomplete => {
                        if pending.is_empty() {
                            pending.extend_from_slice(data);
                        }
                        self.proxy = ProxyStage::Expecting(pending);
                        None
                    }
                    Parsed::Done {
                        outcome: outcome @ ProxyOutcome::Failed(_),
                        ..
                    } => {
                        self.refuse();
                        Some(outcome)
                    }
                    Parsed::Done { consumed, outcome } => {
                        // (A listener is never both PROXY and behind an HTTP proxy.)
                        if pending.is_empty() {
                            self.ingest_stream(&data[consumed..], events);
                        } else {
                            self.ingest_stream(&pending[consumed..], events);
                        }
                        Some(outcome)
                    }
                }
            }
        }
    }

    /// [`Framed::ingest`] past the PROXY header: decrypts (on TLS), unwraps WebSocket
    /// messages (on a WebSocket listener) and decodes frames. Returns the client an
    /// upgrade's `X-Forwarded-For` named (behind an HTTP proxy).
    fn ingest_stream(
        &mut self,
        data: &[u8],
        events: &mut Vec<TransportEvent>,
    ) -> Option<ProxyOutcome> {
        if data.is_empty() {
            return None;
        }
        // On WebSocket over TLS the plaintext goes through a buffer of its own first (not
        // kept: an idle connection holds none).
        let mut ws_plain = BytesMut::new();
        let plain_into = if self.ws.is_some() {
            &mut ws_plain
        } else {
            &mut self.read_buf
        };
        let plain: &[u8] = match self.tls.as_deref_mut() {
            None if self.ws.is_some() => data,
            None => {
                plain_into.extend_from_slice(data);
                &[]
            }
            Some(tls) => {
                if tls.decrypt(data, plain_into).is_err() {
                    // The stream cannot be trusted past this point: nothing more is
                    // decoded, nothing queued is sent, only rustls's alert.
                    self.read_stopped = true;
                    self.read_buf = BytesMut::new();
                    self.out.clear();
                    self.out_bytes = 0;
                    self.close_notify_pending = false;
                    return None;
                }
                &ws_plain
            }
        };
        let mut forwarded = None;
        if let Some(ws) = self.ws.as_deref_mut() {
            let mut answers = Vec::new();
            let read = ws.ingest(plain, &mut self.read_buf, &mut answers);
            forwarded = read.forwarded_for.map(|ip| ProxyOutcome::Forwarded {
                source: std::net::SocketAddr::new(ip, 0),
            });
            let ended = read.failed.is_some() || read.closed;
            if ended {
                // What is queued goes out whole (a message cut short would garble the
                // close frame behind it), then the WebSocket answer, then (on TLS) a
                // close_notify; nothing new is queued.
                self.refused = true;
                if let Some(tls) = self.tls.as_deref() {
                    self.close_notify_pending = !tls.failed();
                }
            }
            for answer in answers {
                self.out_bytes += answer.len();
                self.out.push_back(answer);
            }
            if read.pinged {
                events.push(TransportEvent::Heartbeat { conn: self.id });
            }
            if ended {
                // The messages before the close still count.
                self.decode_frames(events);
                self.read_stopped = true;
                self.read_buf = BytesMut::new();
                return forwarded;
            }
        }
        self.decode_frames(events);
        forwarded
    }

    /// Decodes every whole frame in the read buffer into `events`; after a fatal error,
    /// stops reading.
    fn decode_frames(&mut self, events: &mut Vec<TransportEvent>) {
        loop {
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(frame)) => events.push(TransportEvent::Frame {
                    conn: self.id,
                    frame,
                }),
                Ok(None) => break,
                Err(error) => {
                    let fatal = error.is_fatal();
                    events.push(TransportEvent::FrameError {
                        conn: self.id,
                        error,
                    });
                    if fatal {
                        self.read_stopped = true;
                        self.read_buf = BytesMut::new();
                        return;
                    }
                }
            }
        }
        if self.read_buf.is_empty() {
            // Idle connections hold no read buffer: memory per idle connection is a
            // headline number.
            self.read_buf = BytesMut::new();
        }
    }

    /// Queues `bytes` (whole frames) after what is queued. Returns whether the queue is
    /// now past its cap ([`Framed::overflowed`]): the transport closes it.
    pub(crate) fn queue(&mut self, bytes: Bytes, limit: usize) -> bool {
        if self.output_dead || self.refused() {
            // Nothing is sent after a TLS failure but its alert, nor on a connection
            // whose output was dropped.
            return false;
        }
        if let Some(ws) = self.ws.as_deref_mut()
            && !bytes.is_empty()
        {
            if ws.is_handshaking() {
                // It cannot read a frame before its upgrade: dropped.
                return false;
            }
            let header = ws.message_header(bytes.len());
            self.out_bytes += header.len();
            self.out.push_back(header);
        }
        if !bytes.is_empty() {
            self.out_bytes += bytes.len();
            self.out.push_back(bytes);
        }
        self.overflowed(limit)
    }

    /// Whether the queue is past its cap. Once the control plane has noted the
    /// congestion, the cap is `limit` above what was queued then (at least twice `limit`):
    /// what it sent knowing, the peer did not read either. Until then it is
    /// [`UNNOTED_CAP_FACTOR`] × `limit`.
    pub(crate) fn overflowed(&self, limit: usize) -> bool {
        let cap = if self.congested && self.unnoted == 0 {
            self.noted_at.max(limit).saturating_add(limit)
        } else {
            limit.saturating_mul(UNNOTED_CAP_FACTOR)
        };
        self.out_bytes > cap
    }

    /// The control plane took one `Congested` edge of this connection into account; what
    /// it queues from now on it queued knowing (see the module docs).
    pub(crate) fn note_congestion(&mut self) {
        self.unnoted = self.unnoted.saturating_sub(1);
        if self.unnoted == 0 {
            self.noted_at = self.out_bytes;
        }
    }

    /// Whether the connection is congested: its transport does not read it.
    pub(crate) fn is_congested(&self) -> bool {
        self.congested
    }

    /// The back-pressure edge to report after a write, if the queue crossed a mark:
    /// `Congested` when it is over `limit`, `Drained` when a congested one is down to half
    /// of it. At most one event per crossing.
    pub(crate) fn edge(&mut self, limit: usize) -> Option<TransportEvent> {
        if !self.congested && self.out_bytes > limit {
            self.congested = true;
            self.unnoted += 1;
            Some(TransportEvent::Congested { conn: self.id })
        } else if self.congested && self.out_bytes <= limit / 2 {
            self.congested = false;
            Some(TransportEvent::Drained { conn: self.id })
        } else {
            None
        }
    }

    /// Bytes queued and not yet taken by the socket.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.out_bytes
    }

    /// Whether anything is queued (on TLS, also ciphertext rustls holds: handshake
    /// messages, an alert).
    pub(crate) fn has_output(&self) -> bool {
        !self.output_dead
            && (!self.out.is_empty()
                || self.close_notify_pending
                || self.tls.as_deref().is_some_and(TlsSession::wants_write))
    }

    /// Drops everything queued (the connection is reset or can never send again),
    /// including TLS records rustls holds: nothing is written from now on.
    pub(crate) fn clear_output(&mut self) {
        self.out.clear();
        self.out_bytes = 0;
        self.close_notify_pending = false;
        self.output_dead = true;
    }

    /// Hands the queued output to `write` — up to [`MAX_IOVECS`] buffers at a time, in
    /// order — until it is all taken or `write` takes nothing more. `write` returns how
    /// many bytes it took from the front; `Err(WouldBlock)` (or `Ok(0)` where
    /// `zero_is_full`) means the socket is full for now. Returns the bytes taken; any other
    /// error is the connection's failure. On TLS the bytes taken are ciphertext, and
    /// plaintext is encrypted only as fast as the socket takes it.
    pub(crate) fn write_out(
        &mut self,
        zero_is_full: bool,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.output_dead {
            return Ok(0);
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            let mut written = 0;
            let mut counted = |slices: &[IoSlice<'_>]| {
                let n = write(slices)?;
                written += n;
                Ok(n)
            };
            while tls.flush_ciphertext(zero_is_full, &mut counted)? {
                if self.out.is_empty() {
                    if !self.close_notify_pending {
                        break;
                    }
                    // Every frame is out: now the end of the TLS stream.
                    self.close_notify_pending = false;
                    tls.close_notify();
                    continue;
                }
                let n = tls.encrypt(self.out.iter().map(|b| &b[..]));
                if n == 0 {
                    break;
                }
                advance(&mut self.out, &mut self.out_bytes, n);
            }
            return Ok(written);
        }
        let mut written = 0;
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            let n = match write(&slices[..count]) {
                Ok(0) if zero_is_full => break,
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            written += n;
            advance(&mut self.out, &mut self.out_bytes, n);
        }
        Ok(written)
    }
}

/// Drops `n` bytes from the front of a queue of `out_bytes` (they were written).
fn advance(out: &mut VecDeque<Bytes>, out_bytes: &mut usize, n: usize) {
    *out_bytes -= n;
    let mut left = n;
    while left > 0 {
        let Some(front) = out.front_mut() else {
            break;
        };
        if front.len() <= left {
            left -= front.len();
            out.pop_front();
        } else {
            front.advance(left);
            left = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use petrel_proto::codec::FrameEncoder;
    use petrel_proto::{Frame, pb};

    use super::*;

    fn ping(id: u32) -> Vec<u8> {
        FrameEncoder::default()
            .encode_to_bytes(&Frame::new(id, pb::Ping::default()))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn frames_split_across_reads_come_out_whole_and_idle_holds_no_buffer() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        let mut wire = ping(1);
        wire.extend(ping(2));
        let mut events = Vec::new();
        let (a, b) = wire.split_at(5);
        f.ingest(a, &mut events);
        assert!(events.is_empty());
        f.ingest(b, &mut events);
        let ids: Vec<u32> = events
            .iter()
            .map(|e| match e {
                TransportEvent::Frame { frame, .. } => frame.request_id,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(f.read_buf.capacity(), 0);
    }

    fn frame_ids(events: &[TransportEvent]) -> Vec<u32> {
        events
            .iter()
            .map(|e| match e {
                TransportEvent::Frame { frame, .. } => frame.request_id,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_proxy_header_split_across_reads_names_the_client_and_the_frames_follow() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        f.expect_proxy_header();
        let mut wire = b"PROXY TCP4 198.51.100.4 10.0.0.1 41000 9500\r\n".to_vec();
        wire.extend(ping(1));
        wire.extend(ping(2));
        let mut events = Vec::new();
        // A byte at a time through the header, then the rest at once.
        let mut outcomes = Vec::new();
        for byte in &wire[..20] {
            outcomes.extend(f.ingest(std::slice::from_ref(byte), &mut events));
        }
        assert!(outcomes.is_empty() && events.is_empty());
        outcomes.extend(f.ingest(&wire[20..], &mut events));
        assert_eq!(
            outcomes,
            vec![ProxyOutcome::Proxied {
                version: 1,
                source: "198.51.100.4:41000".parse().unwrap(),
            }]
        );
        assert_eq!(frame_ids(&events), vec![1, 2]);
        assert!(!f.refused());
        // Settled: a later "PROXY" is just bytes for the decoder, never a second header.
        assert_eq!(f.ingest(&ping(3), &mut events), None);
        assert_eq!(frame_ids(&events), vec![1, 2, 3]);
    }

    #[test]
    fn a_proxy_listener_refuses_a_client_without_a_header() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        f.expect_proxy_header();
        f.queue(Bytes::from_static(b"queued"), 1 << 20);
        let mut events = Vec::new();
        assert_eq!(
            f.ingest(&ping(1), &mut events),
            Some(ProxyOutcome::Failed(ProxyFailure::Missing))
        );
        assert!(events.is_empty(), "nothing decoded");
        assert!(f.refused() && f.read_stopped());
        assert!(
            !f.has_output(),
            "nothing is written to a refused connection"
        );
    }

    #[test]
    fn a_header_on_an_ordinary_listener_is_a_forgery_and_refused() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        let mut events = Vec::new();
        assert_eq!(
            f.ingest(b"PROXY TCP4 1.2.3.4 10.0.0.1 1 9500\r\n", &mut events),
            Some(ProxyOutcome::Failed(ProxyFailure::Unexpected))
        );
        assert!(f.refused() && events.is_empty());

        // Frames are not mistaken for one.
        let mut g = Framed::new(ConnId::new(0, 2), DecoderConfig::default());
        assert_eq!(g.ingest(&ping(7), &mut events), None);
        assert_eq!(frame_ids(&events), vec![7]);
    }

    /// A client's masked WebSocket frame.
    fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn a_websocket_message_sent_right_before_a_close_still_counts_and_output_stays_whole() {
        let acceptor =
            crate::websocket::WsAcceptor::new(Vec::new(), 1024, std::sync::Arc::default());
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        f.speak_websocket(acceptor.session());
        let mut events = Vec::new();
        f.ingest(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            &mut events,
        );
        // A frame queued for it, half written when the client closes.
        f.queue(Bytes::from(ping(7)), 1 << 20);
        let mut sink = Vec::new();
        let mut budget = 129 + 5; // the 101 answer, and a few bytes of the message
        f.write_out(true, |slices| {
            let mut n = 0;
            for s in slices {
                let k = s.len().min(budget - n);
                sink.extend_from_slice(&s[..k]);
                n += k;
                if n == budget {
                    break;
                }
            }
            budget -= n;
            Ok(n)
        })
        .unwrap();
        let mut wire = ws_frame(0x2, &ping(1));
        wire.extend(ws_frame(0x8, &[0x03, 0xe8]));
        f.ingest(&wire, &mut events);
        assert_eq!(frame_ids(&events), vec![1], "the message before the close");
        assert!(f.refused() && f.read_stopped());
        // The rest of the half-written message goes out, then the close frame.
        f.write_out(false, |slices| {
            let n: usize = slices.iter().map(|s| s.len()).sum();
            for s in slices {
                sink.extend_from_slice(s);
            }
            Ok(n)
        })
        .unwrap();
        let message = [&[0x82, 16][..], &ping(7)[..]].concat();
        let at = sink.windows(message.len()).position(|w| w == message);
        assert!(at.is_some(), "the message went out whole");
        assert_eq!(
            sink[at.unwrap() + message.len()],
            0x88,
            "then the close frame"
        );
    }

    #[test]
    fn a_fatal_error_stops_reading() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        let mut events = Vec::new();
        f.ingest(&[0xff; 32], &mut events);
        assert!(matches!(events[..], [TransportEvent::FrameError { .. }]));
        assert!(f.read_stopped());
        f.ingest(&ping(3), &mut events);
        assert_eq!(events.len(), 1, "nothing decoded after a fatal error");
    }

    #[test]
    fn output_is_taken_in_order_across_partial_writes_and_an_overflow_is_reported() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        assert!(!f.queue(Bytes::from_static(b"hello "), 1));
        assert!(
            f.queue(Bytes::from_static(b"world"), 1),
            "11 bytes > 8 x 1, and nothing was noted"
        );
        let mut sink = Vec::new();
        // A socket that takes 4 bytes per call, then is full.
        let mut budget = 8;
        let taken = f
            .write_out(true, |slices| {
                let mut n = 0;
                for s in slices {
                    let k = s.len().min(4 - n).min(budget);
                    sink.extend_from_slice(&s[..k]);
                    n += k;
                    budget -= k;
                    if n == 4 || budget == 0 {
                        break;
                    }
                }
                Ok(n)
            })
            .unwrap();
        assert_eq!(taken, 8);
        assert_eq!(f.queued_bytes(), 3);
        let rest = f
            .write_out(false, |slices| {
                let n: usize = slices.iter().map(|s| s.len()).sum();
                for s in slices {
                    sink.extend_from_slice(s);
                }
                Ok(n)
            })
            .unwrap();
        assert_eq!(rest, 3);
        assert_eq!(sink, b"hello world");
        assert!(!f.has_output());
    }

    #[test]
    fn a_socket_that_takes_nothing_is_full_or_failed_as_asked() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        f.queue(Bytes::from_static(b"x"), 10);
        assert_eq!(f.write_out(true, |_| Ok(0)).unwrap(), 0);
        assert_eq!(
            f.write_out(false, |_| Ok(0)).unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
        assert_eq!(
            f.write_out(false, |_| Err(io::ErrorKind::WouldBlock.into()))
                .unwrap(),
            0
        );
        assert_eq!(f.queued_bytes(), 1);
    }

    #[test]
    fn congestion_is_one_edge_each_way_with_half_the_limit_as_the_low_mark() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        let limit = 100;
        assert!(!f.queue(Bytes::from(vec![0; 100]), limit));
        assert!(f.edge(limit).is_none(), "at the limit is not over it");
        assert!(!f.queue(Bytes::from(vec![0; 50]), limit));
        assert!(matches!(
            f.edge(limit),
            Some(TransportEvent::Congested { .. })
        ));
        assert!(f.is_congested());
        assert!(f.edge(limit).is_none(), "reported once");
        f.note_congestion();
        // 120 of 150 written: 30 left, still over half? No: 30 <= 50 drains.
        let mut taken = 0;
        f.write_out(true, |slices| {
            let n = slices[0].len().min(120 - taken);
            taken += n;
            Ok(n)
        })
        .unwrap();
        assert_eq!(f.queued_bytes(), 30);
        assert!(matches!(
            f.edge(limit),
            Some(TransportEvent::Drained { .. })
        ));
        assert!(!f.is_congested());
        assert!(f.edge(limit).is_none());
        // Congested again (130 queued) and noted: `limit` more than that closes it.
        assert!(!f.queue(Bytes::from(vec![0; 100]), limit));
        assert!(f.edge(limit).is_some());
        f.note_congestion();
        assert!(!f.queue(Bytes::from(vec![0; 100]), limit));
        assert!(f.queue(Bytes::from(vec![0; 1]), limit));
    }

    #[test]
    fn what_was_on_its_way_before_the_congestion_was_noted_does_not_close_it() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        let limit = 100;
        assert!(!f.queue(Bytes::from(vec![0; 150]), limit));
        assert!(matches!(
            f.edge(limit),
            Some(TransportEvent::Congested { .. })
        ));
        // A ring's worth of pushes sent before the control plane saw the edge.
        assert!(!f.queue(Bytes::from(vec![0; 500]), limit));
        f.note_congestion();
        // From here, `limit` more than the 650 queued when it was noted.
        assert!(!f.queue(Bytes::from(vec![0; 100]), limit));
        assert!(f.queue(Bytes::from(vec![0; 1]), limit));

        // Without a note, only the safety cap.
        let mut g = Framed::new(ConnId::new(0, 2), DecoderConfig::default());
        assert!(!g.queue(Bytes::from(vec![0; 150]), limit));
        assert!(g.edge(limit).is_some());
        assert!(!g.queue(Bytes::from(vec![0; 8 * limit - 150]), limit));
        assert!(g.queue(Bytes::from(vec![0; 1]), limit));
    }

    #[test]
    fn a_late_note_of_an_earlier_edge_does_not_count_for_the_next_one() {
        let mut f = Framed::new(ConnId::new(0, 1), DecoderConfig::default());
        let limit = 100;
        f.queue(Bytes::from(vec![0; 150]), limit);
        assert!(f.edge(limit).is_some());
        f.write_out(true, |s| Ok(s[0].len())).unwrap();
        assert!(matches!(
            f.edge(limit),
            Some(TransportEvent::Drained { .. })
        ));
        // Congested again before the first edge's note arrives.
        f.queue(Bytes::from(vec![0; 150]), limit);
        assert!(f.edge(limit).is_some());
        f.note_congestion();
        assert!(
            !f.queue(Bytes::from(vec![0; 300]), limit),
            "the second edge is not noted yet: only the safety cap applies"
        );
        f.note_congestion();
        assert!(f.queue(Bytes::from(vec![0; 101]), limit));
    }
}
