//! WebSocket (RFC 6455) on a listener, for browsers: every binary message a client sends
//! carries whole frames of docs/PROTOCOL.md, and every frame the server sends goes out in
//! a binary message of its own.
//!
//! Like TLS it lives in the connection's framed half ([`crate::framed`]), so it runs on
//! every transport, and over TLS too (WebSocket inside TLS: `wss://`). Layers in order:
//! TCP, the PROXY header, TLS, WebSocket, frames.
//!
//! **Receiving** is tungstenite's: the HTTP upgrade (the origin checked against the
//! allow-list; a refused one gets `403`), then messages, with its limits (a message past
//! [`WsAcceptor`]'s `max_message` is refused with close code 1009). It runs over an
//! in-memory stream ([`MemIo`]): bytes the transport read go in, what tungstenite writes
//! (the `101` answer, pongs, close frames) comes out and is queued like any output.
//!
//! **Sending** frames does not go through tungstenite: a server's frames are unmasked, so
//! a binary message is a 2–10 byte header in front of the frame bytes, which are queued as
//! they are (no copy). The headers are cut from a per-connection buffer, so there is no
//! allocation per message either.
//!
//! **Heartbeats.** A client's WebSocket ping is answered with a pong and counts as a
//! heartbeat: the transport reports [`petrel_conn::TransportEvent::Heartbeat`], which keeps
//! the session alive like a protocol `Ping` (browsers cannot send WebSocket pings; their
//! clients send protocol `Ping` frames, which work as everywhere).
//!
//! **Behind an HTTP proxy** (nginx's `http` module cannot write PROXY headers) an acceptor
//! built [`WsAcceptor::behind_proxy`] takes the client's address from the upgrade's
//! `X-Forwarded-For` (its last entry: the address the proxy itself saw) and refuses an
//! upgrade without one (`400`): such a listener is reachable only through the proxy.
//!
//! **Failures** — not a WebSocket upgrade, a refused origin, a text message, a message
//! too large, a protocol violation — close the connection after the answer tungstenite
//! gives (an HTTP error, a close frame), and are counted in [`WsStats`].

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// Longest upgrade request accepted (browsers send well under 2 KiB).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// tungstenite's read buffer per connection. Its default (128 KiB, allocated eagerly) is
/// far too much per idle connection; the bytes are in memory already ([`MemIo`]), so a
/// small one costs only more, smaller copies: 512 B measured the same CPU per message as
/// 4 KiB and took an idle connection from 7,010 to 3,032 B (docs/PERFORMANCE.md).
const READ_BUFFER_BYTES: usize = 512;
/// The per-connection buffer message headers are cut from (a new one every 13 to 64
/// messages).
const HEADER_ARENA_BYTES: usize = 128;

/// Settings of a WebSocket listener, shared by its connections.
#[derive(Debug, Clone)]
pub struct WsAcceptor {
    origins: Arc<[String]>,
    max_message: usize,
    stats: Arc<WsStats>,
    forwarded_for: bool,
}

impl WsAcceptor {
    /// Accepts upgrades whose `Origin` is one of `origins` (exactly, e.g.
    /// `https://chat.example.com`; empty: any), and messages of up to `max_message`
    /// bytes; counts into `stats`. A request without an `Origin` (not from a browser) is
    /// accepted.
    pub fn new(origins: Vec<String>, max_message: usize, stats: Arc<WsStats>) -> WsAcceptor {
        WsAcceptor {
            origins: origins.into(),
            max_message,
            stats,
            forwarded_for: false,
        }
    }

    /// The same, for listeners behind an HTTP proxy: every upgrade must carry
    /// `X-Forwarded-For`, whose last entry is taken as the client's address.
    pub fn behind_proxy(self) -> WsAcceptor {
        WsAcceptor {
            forwarded_for: true,
            ..self
        }
    }

    /// Whether its listeners are behind an HTTP proxy ([`WsAcceptor::behind_proxy`]): the
    /// client is known only once the upgrade is read.
    pub fn is_behind_proxy(&self) -> bool {
        self.forwarded_for
    }

    /// The counters of every connection it accepted.
    pub fn stats(&self) -> &Arc<WsStats> {
        &self.stats
    }

    pub(crate) fn session(&self) -> WsSession {
        WsSession {
            state: State::Request(BytesMut::new()),
            acceptor: self.clone(),
            headers: BytesMut::new(),
        }
    }
}

/// Why a WebSocket connection was closed by the server, as counted in [`WsStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFailure {
    /// The first bytes were not a WebSocket upgrade request (or a malformed one).
    Handshake,
    /// The request's `Origin` is not on the allow-list (answered `403`).
    Origin,
    /// A message larger than the limit (close code 1009).
    TooLarge,
    /// A text message, or a protocol violation (close code 1003 or 1002).
    Protocol,
}

impl WsFailure {
    /// Every reason, in the order of [`WsStats::failures`].
    pub const ALL: [WsFailure; 4] = [
        WsFailure::Handshake,
        WsFailure::Origin,
        WsFailure::TooLarge,
        WsFailure::Protocol,
    ];

    /// The reason's name in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WsFailure::Handshake => "handshake",
            WsFailure::Origin => "origin",
            WsFailure::TooLarge => "too_large",
            WsFailure::Protocol => "protocol",
        }
    }
}

/// Counters of WebSocket connections, shared by the cores (one relaxed atomic add per
/// upgrade, failure or client ping, never per message).
#[derive(Debug, Default)]
pub struct WsStats {
    upgrades: AtomicU64,
    pings: AtomicU64,
    failures: [AtomicU64; 4],
}

impl WsStats {
    /// Upgrades completed.
    pub fn upgrades(&self) -> u64 {
        self.upgrades.load(Ordering::Relaxed)
    }

    /// WebSocket pings from clients (each answered, each a heartbeat).
    pub fn pings(&self) -> u64 {
        self.pings.load(Ordering::Relaxed)
    }

    /// Connections closed for `reason`.
    pub fn failures(&self, reason: WsFailure) -> u64 {
        self.failures[reason as usize].load(Ordering::Relaxed)
    }
}

/// What tungstenite reads from and writes to: bytes the transport received, and bytes
/// to queue for sending.
#[derive(Debug, Default)]
pub(crate) struct MemIo {
    input: BytesMut,
    output: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input.split_to(n));
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks the upgrade request's `Origin` against the allow-list.
/// Checks the upgrade request's `Origin` against the allow-list and, behind a proxy,
/// reads the client's address from `X-Forwarded-For` into `client`.
struct UpgradeCheck<'a> {
    origins: Arc<[String]>,
    client: Option<&'a mut Option<IpAddr>>,
}

impl Callback for UpgradeCheck<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let refusal = |status, why: &str| {
            let mut refusal = ErrorResponse::new(Some(format!("{why}\n")));
            *refusal.status_mut() = status;
            refusal
        };
        let origin = request
            .headers()
            .get("origin")
            .map(|o| o.to_str().unwrap_or(""));
        if let Some(origin) = origin
            && !self.origins.is_empty()
            && !self.origins.iter().any(|o| o == origin)
        {
            return Err(refusal(
                tungstenite::http::StatusCode::FORBIDDEN,
                "origin not allowed",
            ));
        }
        if let Some(client) = self.client {
            let last = request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
            match last {
                Some(ip) => *client = Some(ip),
                None => {
                    return Err(refusal(
                        tungstenite::http::StatusCode::BAD_REQUEST,
                        "X-Forwarded-For required: this listener is behind a proxy",
                    ));
                }
            }
        }
        Ok(response)
    }
}

enum State {
    /// Collecting the upgrade request (up to its blank line).
    Request(BytesMut),
    /// Open: messages flow.
    Open(Box<WebSocket<MemIo>>),
    /// Failed or closed: nothing more is read.
    Done,
}

/// What one [`WsSession::ingest`] call found besides frame bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct WsRead {
    /// The client sent at least one WebSocket ping.
    pub(crate) pinged: bool,
    /// The client closed the WebSocket (its close frame was answered).
    pub(crate) closed: bool,
    /// The connection failed for this reason (its answer is in the output).
    pub(crate) failed: Option<WsFailure>,
    /// Behind a proxy: the client the upgrade's `X-Forwarded-For` named.
    pub(crate) forwarded_for: Option<IpAddr>,
}

/// One connection's WebSocket state. See the module docs.
pub(crate) struct WsSession {
    state: State,
    acceptor: WsAcceptor,
    /// Message headers are cut from here.
    headers: BytesMut,
}

impl WsSession {
    /// Whether the upgrade is still to come: nothing may be sent yet.
    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Request(_))
    }

    /// Takes `data` off the stream: appends the payload of every binary message to
    /// `frames`, and to `output` what must be sent back (the upgrade answer, pongs, close
    /// frames, an error answer).
    pub(crate) fn ingest(
        &mut self,
        data: &[u8],
        frames: &mut BytesMut,
        output: &mut Vec<Bytes>,
    ) -> WsRead {
        let mut read = WsRead::default();
        match &mut self.state {
            State::Done => return read,
            State::Open(ws) => ws.get_mut().input.extend_from_slice(data),
            State::Request(request) => {
                // The blank line may straddle the previous read: search from 3 back.
                let from = request.len().saturating_sub(3);
                request.extend_from_slice(data);
                match self.upgrade(output, &mut read.forwarded_for, from) {
                    Ok(true) => {}
                    Ok(false) => return read,
                    Err(reason) => {
                        read.failed = Some(self.fail(reason, output));
                        return read;
                    }
                }
            }
        }
        let State::Open(ws) = &mut self.state else {
            return read;
        };
        let mut failure = None;
        loop {
            match ws.read() {
                Ok(Message::Binary(payload)) => frames.extend_from_slice(&payload),
                Ok(Message::Ping(_)) => {
                    read.pinged = true;
                    self.acceptor.stats.pings.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {
                    read.closed = true;
                    break;
                }
                Ok(Message::Text(_)) => {
                    failure = Some((WsFailure::Protocol, CloseCode::Unsupported, "binary only"));
                    break;
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::Capacity(_)) => {
                    failure = Some((WsFailure::TooLarge, CloseCode::Size, "message too large"));
                    break;
                }
                Err(_) => {
                    failure = Some((WsFailure::Protocol, CloseCode::Protocol, "protocol error"));
                    break;
                }
            }
        }
        if let Some((reason, code, why)) = failure {
            let _ = ws.close(Some(CloseFrame {
                code,
                reason: why.into(),
            }));
            read.failed = Some(reason);
        }
        // Pongs and close frames tungstenite queued.
        let _ = ws.flush();
        let out = std::mem::take(&mut ws.get_mut().output);
        if !out.is_empty() {
            output.push(Bytes::from(out));
        }
        if let Some(reason) = read.failed {
            self.count_failure(reason);
            self.state = State::Done;
        } else if read.closed {
            self.state = State::Done;
        }
        read
    }

    /// Runs the upgrade once its request is complete (`Ok(true)`: open, with what came
    /// after the request in its input; `Ok(false)`: the request is incomplete).
    fn upgrade(
        &mut self,
        output: &mut Vec<Bytes>,
        client: &mut Option<IpAddr>,
        search_from: usize,
    ) -> Result<bool, WsFailure> {
        let State::Request(request) = &mut self.state else {
            return Ok(false);
        };
        if !b"GET ".starts_with(&request[..request.len().min(4)]) {
            return Err(WsFailure::Handshake);
        }
        let Some(end) = request[search_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| search_from + at)
        else {
            return if request.len() > MAX_REQUEST_BYTES {
                Err(WsFailure::Handshake)
            } else {
                Ok(false)
            };
        };
        let mut request = std::mem::take(request);
        // The request alone: tungstenite refuses bytes after it, and a client may send
        // its first message right behind the request.
        let rest = request.split_off(end + 4);
        let io = MemIo {
            input: request,
            output: Vec::new(),
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(self.acceptor.max_message))
            .max_frame_size(Some(self.acceptor.max_message));
        let check = UpgradeCheck {
            origins: self.acceptor.origins.clone(),
            client: self.acceptor.forwarded_for.then_some(client),
        };
        let handshake = ServerHandshake::start(io, check, Some(config));
        let result = handshake.handshake();
        match result {
            Ok(mut ws) => {
                let io = ws.get_mut();
                output.push(Bytes::from(std::mem::take(&mut io.output)));
                io.input = rest;
                self.acceptor.stats.upgrades.fetch_add(1, Ordering::Relaxed);
                self.state = State::Open(Box::new(ws));
                Ok(true)
            }
            // The whole request was there, and MemIo's writes never block.
            Err(HandshakeError::Interrupted(_)) => Err(WsFailure::Handshake),
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                // tungstenite wrote the answer into the stream it kept; write it again.
                let status = response.status();
                let mut answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    response.body().as_ref().map_or(0, Vec::len)
                )
                .into_bytes();
                answer.extend(response.body().iter().flatten());
                output.push(Bytes::from(answer));
                Err(if status == tungstenite::http::StatusCode::FORBIDDEN {
                    WsFailure::Origin
                } else {
                    WsFailure::Handshake
                })
            }
            Err(HandshakeError::Failure(_)) => Err(WsFailure::Handshake),
        }
    }

    /// Fails the upgrade for `reason`: a plain `400` unless an answer is out already.
    fn fail(&mut self, reason: WsFailure, output: &mut Vec<Bytes>) -> WsFailure {
        if reason == WsFailure::Handshake && output.is_empty() {
            output.push(Bytes::from_static(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ));
        }
        self.count_failure(reason);
        self.state = State::Done;
        reason
    }

    fn count_failure(&self, reason: WsFailure) {
        self.acceptor.stats.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The header of a binary message of `len` bytes (server to client: unmasked), cut
    /// from the connection's header buffer.
    pub(crate) fn message_header(&mut self, len: usize) -> Bytes {
        if self.headers.capacity() < 10 {
            self.headers = BytesMut::with_capacity(HEADER_ARENA_BYTES);
        }
        // FIN + binary opcode.
        self.headers.put_u8(0x82);
        match len {
            0..=125 => self.headers.put_u8(len as u8),
            126..=0xffff => {
                self.headers.put_u8(126);
                self.headers.put_u16(len as u16);
            }
            _ => {
                self.headers.put_u8(127);
                self.headers.put_u64(len as u64);
            }
        }
        self.headers.split().freeze()
    }

    /// The close frame the server sends when it closes the connection (code 1000, or 1001
    /// when the server is going away).
    pub(crate) fn close_frame(&mut self) -> Option<Bytes> {
        let State::Open(ws) = &mut self.state else {
            return None;
        };
        let _ = ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = ws.flush();
        let out = std::mem::take(&mut ws.get_mut().output);
        self.state = State::Done;
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: petrel.test\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n";

    fn acceptor(origins: &[&str]) -> WsAcceptor {
        WsAcceptor::new(
            origins.iter().map(|o| (*o).to_owned()).collect(),
            1024,
            Arc::default(),
        )
    }

    /// A client's masked frame.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
        }
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn text(output: &[Bytes]) -> String {
        output
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn an_upgrade_split_anywhere_then_binary_messages_carry_the_frames() {
        let mut session = acceptor(&[]).session();
        let mut wire = format!("{UPGRADE}\r\n").into_bytes();
        wire.extend(client_frame(0x2, b"PT-frame-1"));
        let (mut frames, mut output) = (BytesMut::new(), Vec::new());
        for byte in &wire[..40] {
            session.ingest(std::slice::from_ref(byte), &mut frames, &mut output);
            assert!(session.is_handshaking());
        }
        let read = session.ingest(&wire[40..], &mut frames, &mut output);
        assert_eq!(read, WsRead::default());
        let answer = text(&output);
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        assert!(
            answer.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "RFC 6455's example accept key"
        );
        assert_eq!(&frames[..], b"PT-frame-1");
        assert_eq!(acceptor(&[]).stats.upgrades(), 0, "stats are per acceptor");
        assert_eq!(session.acceptor.stats.upgrades(), 1);
    }

    #[test]
    fn a_ping_is_answered_and_reported_and_a_close_is_answered() {
        let mut session = acceptor(&[]).session();
        let (mut frames, mut output) = (BytesMut::new(), Vec::new());
        session.ingest(
            format!("{UPGRADE}\r\n").as_bytes(),
            &mut frames,
            &mut output,
        );
        output.clear();
        let read = session.ingest(&client_frame(0x9, b"hi"), &mut frames, &mut output);
        assert!(read.pinged && !read.closed);
        assert_eq!(
            &output.concat()[..],
            &[0x8a, 2, b'h', b'i'],
            "a pong with the payload"
        );
        output.clear();
        let read = session.ingest(&client_frame(0x8, &[0x03, 0xe8]), &mut frames, &mut output);
        assert!(read.closed);
        assert_eq!(output.concat()[0], 0x88, "a close frame back");
        assert_eq!(session.acceptor.stats.pings(), 1);
    }

    #[test]
    fn bad_requests_origins_text_and_oversized_messages_fail_with_their_answer() {
        let (mut frames, mut output) = (BytesMut::new(), Vec::new());
        // A Petrel frame on a WebSocket port.
        let mut s = acceptor(&[]).session();
        let read = s.ingest(b"PT\x01\x05", &mut frames, &mut output);
        assert_eq!(read.failed, Some(WsFailure::Handshake));
        assert!(text(&output).starts_with("HTTP/1.1 400"));
        // A request that never ends.
        let mut s = acceptor(&[]).session();
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(MAX_REQUEST_BYTES));
        let read = s.ingest(endless.as_bytes(), &mut frames, &mut output);
        assert_eq!(read.failed, Some(WsFailure::Handshake));
        // An origin not on the list; one on it.
        output.clear();
        let mut s = acceptor(&["https://chat.example.com"]).session();
        let wrong = format!("{UPGRADE}Origin: https://evil.example\r\n\r\n");
        let read = s.ingest(wrong.as_bytes(), &mut frames, &mut output);
        assert_eq!(read.failed, Some(WsFailure::Origin));
        assert!(
            text(&output).starts_with("HTTP/1.1 403"),
            "{}",
            text(&output)
        );
        let mut s = acceptor(&["https://chat.example.com"]).session();
        let right = format!("{UPGRADE}Origin: https://chat.example.com\r\n\r\n");
        assert_eq!(
            s.ingest(right.as_bytes(), &mut frames, &mut output).failed,
            None
        );
        // A text message, then (another connection) one over 1024 bytes.
        output.clear();
        let read = s.ingest(&client_frame(0x1, b"hello"), &mut frames, &mut output);
        assert_eq!(read.failed, Some(WsFailure::Protocol));
        assert_eq!(&output.concat()[..4], &[0x88, 13, 0x03, 0xeb], "close 1003");
        let mut s = acceptor(&[]).session();
        s.ingest(
            format!("{UPGRADE}\r\n").as_bytes(),
            &mut frames,
            &mut output,
        );
        output.clear();
        let read = s.ingest(&client_frame(0x2, &[7; 2000]), &mut frames, &mut output);
        assert_eq!(read.failed, Some(WsFailure::TooLarge));
        assert_eq!(&output.concat()[2..4], &[0x03, 0xf1], "close 1009");
        let stats = &s.acceptor.stats;
        assert_eq!(stats.failures(WsFailure::TooLarge), 1);
    }

    #[test]
    fn behind_a_proxy_the_last_forwarded_address_is_the_client_and_it_is_required() {
        let proxied = || acceptor(&[]).behind_proxy().session();
        let (mut frames, mut output) = (BytesMut::new(), Vec::new());
        let request = format!("{UPGRADE}X-Forwarded-For: 10.9.9.9, 198.51.100.7\r\n\r\n");
        let read = proxied().ingest(request.as_bytes(), &mut frames, &mut output);
        assert_eq!(read.failed, None);
        assert_eq!(read.forwarded_for, Some("198.51.100.7".parse().unwrap()));
        output.clear();
        let read = proxied().ingest(
            format!("{UPGRADE}\r\n").as_bytes(),
            &mut frames,
            &mut output,
        );
        assert_eq!(read.failed, Some(WsFailure::Handshake));
        let answer = text(&output);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "one answer: {answer}"
        );
        // Not behind a proxy: the header means nothing.
        let read = acceptor(&[])
            .session()
            .ingest(request.as_bytes(), &mut frames, &mut output);
        assert_eq!((read.failed, read.forwarded_for), (None, None));
    }

    #[test]
    fn message_headers_fit_each_length_class() {
        let mut s = acceptor(&[]).session();
        assert_eq!(&s.message_header(5)[..], &[0x82, 5]);
        assert_eq!(&s.message_header(300)[..], &[0x82, 126, 1, 44]);
        assert_eq!(
            &s.message_header(70_000)[..],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }
}
