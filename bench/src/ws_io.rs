//! WebSocket over the bench's connections (`--ws`): the upgrade, then every write is one
//! masked binary message and the server's binary messages are unwrapped, on top of either
//! transport and TLS ([`super::io::Io`]), so a WebSocket listener's cost is measured with
//! the same scenarios as plain TCP.
//!
//! Message headers are tungstenite's ([`FrameHeader`]: parsing the server's, formatting
//! ours); the masking is a plain XOR with a key from a per-process xorshift generator
//! (RFC 6455 wants unpredictable keys to protect browsers' intermediaries; a load
//! generator only needs the server to unmask correctly).
//!
//! Until the server's `101` answer arrives writes report `WouldBlock` (a client must not
//! send messages before), and the connection is reported writable once it is upgraded, so
//! the login latency the bench reports includes the upgrade.

use std::io::{self, Cursor, ErrorKind};
use std::net::IpAddr;
use std::time::Duration;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::io::{Handshake, Io, LayerWakes, Ready};

/// Raw bytes read from the inner transport per call.
const READ_CHUNK: usize = 16 * 1024;
/// Longest upgrade answer accepted.
const MAX_ANSWER: usize = 8 * 1024;

/// One connection's WebSocket state.
#[derive(Default)]
struct Conn {
    upgraded: bool,
    /// The upgrade answer so far, then the server's undecoded message bytes.
    raw: Vec<u8>,
    /// Decoded payload not yet handed to the engine, from `payload_at`.
    payload: Vec<u8>,
    payload_at: usize,
    /// Bytes for the inner transport that it did not take yet.
    out: Vec<u8>,
    out_at: usize,
    /// The server closed the WebSocket.
    closed: bool,
}

/// WebSocket connections over an inner transport. See the module docs.
pub struct WsIo {
    inner: Io,
    host: String,
    conns: Vec<Option<Conn>>,
    /// Connections with bytes the inner transport did not take, and those just upgraded.
    wakes: LayerWakes,
    chunk: Vec<u8>,
    mask_state: u64,
}

/// `io` as it is, or WebSocket over it when `--ws` asked for it (`host` goes in the
/// upgrade request's `Host`).
pub fn wrap(io: Io, ws: bool, host: &str) -> Io {
    if ws {
        Io::Ws(Box::new(WsIo::new(io, host)))
    } else {
        io
    }
}

impl WsIo {
    /// WebSocket over `inner`, asking for `host`.
    pub fn new(inner: Io, host: &str) -> WsIo {
        WsIo {
            inner,
            host: host.to_owned(),
            conns: Vec::new(),
            wakes: LayerWakes::default(),
            chunk: vec![0; READ_CHUNK],
            mask_state: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
        }
    }

    pub(crate) fn open(&mut self, i: usize, source: Option<IpAddr>) -> anyhow::Result<()> {
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        let key = self.next_mask().to_be_bytes();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
            self.host,
            base64_key(&key)
        );
        self.conns[i] = Some(Conn {
            out: request.into_bytes(),
            ..Conn::default()
        });
        self.inner.open(i, source)
    }

    pub(crate) fn handshake(&mut self, i: usize) -> Handshake {
        let tcp = self.inner.handshake(i);
        if matches!(tcp, Handshake::Done)
            && let Err(e) = self.send(i)
        {
            return Handshake::Failed(format!("WebSocket: {e}"));
        }
        tcp
    }

    pub(crate) fn read(&mut self, i: usize, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let conn = conn_of(&mut self.conns, i)?;
            if conn.payload_at < conn.payload.len() {
                let n = buf.len().min(conn.payload.len() - conn.payload_at);
                buf[..n].copy_from_slice(&conn.payload[conn.payload_at..conn.payload_at + n]);
                conn.payload_at += n;
                if conn.payload_at == conn.payload.len() {
                    conn.payload.clear();
                    conn.payload_at = 0;
                }
                return Ok(n);
            }
            if conn.closed {
                return Ok(0);
            }
            let n = self.inner.read(i, &mut self.chunk)?;
            if n == 0 {
                return Ok(0);
            }
            let conn = conn_of(&mut self.conns, i)?;
            conn.raw.extend_from_slice(&self.chunk[..n]);
            if !conn.upgraded {
                let Some(end) = conn.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if conn.raw.len() > MAX_ANSWER {
                        return Err(invalid("an upgrade answer without an end"));
                    }
                    continue;
                };
                if !conn.raw.starts_with(b"HTTP/1.1 101") {
                    let line = conn.raw.split(|&b| b == b'\r').next().unwrap_or_default();
                    return Err(invalid(&format!(
                        "upgrade refused: {}",
                        String::from_utf8_lossy(line)
                    )));
                }
                conn.raw.drain(..end + 4);
                conn.upgraded = true;
                self.wakes.wake_writable(i);
            }
            let pong = decode(conn)?;
            if let Some(payload) = pong {
                self.queue_message(
                    i,
                    OpCode::Control(tungstenite::protocol::frame::coding::Control::Pong),
                    &payload,
                )?;
            }
        }
    }

    pub(crate) fn write(&mut self, i: usize, buf: &[u8]) -> io::Result<usize> {
        let conn = conn_of(&mut self.conns, i)?;
        if !conn.upgraded || conn.out_at < conn.out.len() {
            // Not upgraded yet (woken once it is), or the last message is still going out
            // (woken by the socket's writable event).
            return Err(ErrorKind::WouldBlock.into());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.queue_message(i, OpCode::Data(Data::Binary), buf)?;
        Ok(buf.len())
    }

    pub(crate) fn close(&mut self, i: usize) {
        if let Some(slot) = self.conns.get_mut(i) {
            *slot = None;
        }
        self.inner.close(i);
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> anyhow::Result<()> {
        let WsIo {
            inner,
            conns,
            wakes,
            ..
        } = self;
        // Errors surface at the connection's next read or write.
        wakes.poll(inner, timeout, ready, |inner, wakes, i| {
            let _ = send(inner, conns, wakes, i);
        })
    }

    /// Queues one masked message with `payload` and sends what the socket takes.
    fn queue_message(&mut self, i: usize, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let mask = (self.next_mask() as u32).to_be_bytes();
        let conn = conn_of(&mut self.conns, i)?;
        if conn.out_at == conn.out.len() {
            conn.out.clear();
            conn.out_at = 0;
        }
        let header = FrameHeader {
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        header
            .format(payload.len() as u64, &mut conn.out)
            .map_err(|e| invalid(&e.to_string()))?;
        conn.out
            .extend(payload.iter().enumerate().map(|(k, b)| b ^ mask[k % 4]));
        self.send(i)
    }

    fn send(&mut self, i: usize) -> io::Result<()> {
        send(&mut self.inner, &mut self.conns, &mut self.wakes, i)
    }

    fn next_mask(&mut self) -> u64 {
        // xorshift64
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        x
    }
}

/// Writes connection `i`'s pending bytes until the inner transport blocks; what is left
/// is retried at the next poll.
fn send(
    inner: &mut Io,
    conns: &mut [Option<Conn>],
    wakes: &mut LayerWakes,
    i: usize,
) -> io::Result<()> {
    let conn = conn_of(conns, i)?;
    while conn.out_at < conn.out.len() {
        match inner.write(i, &conn.out[conn.out_at..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => conn.out_at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wakes.mark_unsent(i);
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Decodes the whole messages in `conn.raw` into `conn.payload`; returns the payload of
/// a ping to answer, if one came.
fn decode(conn: &mut Conn) -> io::Result<Option<Vec<u8>>> {
    let mut pong = None;
    loop {
        let mut cursor = Cursor::new(&conn.raw[..]);
        let Some((header, len)) =
            FrameHeader::parse(&mut cursor).map_err(|e| invalid(&e.to_string()))?
        else {
            return Ok(pong);
        };
        let start = cursor.position() as usize;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .ok_or_else(|| invalid("a message length past memory"))?;
        if conn.raw.len() < end {
            return Ok(pong);
        }
        match header.opcode {
            OpCode::Data(_) => conn.payload.extend_from_slice(&conn.raw[start..end]),
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping) => {
                pong = Some(conn.raw[start..end].to_vec());
            }
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Close) => {
                conn.closed = true;
            }
            OpCode::Control(_) => {}
        }
        conn.raw.drain(..end);
    }
}

fn conn_of(conns: &mut [Option<Conn>], i: usize) -> io::Result<&mut Conn> {
    conns
        .get_mut(i)
        .and_then(Option::as_mut)
        .ok_or_else(|| io::Error::new(ErrorKind::NotConnected, "no WebSocket connection"))
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("WebSocket: {why}"))
}

/// The request's `Sec-WebSocket-Key`: 16 bytes, base64.
fn base64_key(seed: &[u8; 8]) -> String {
    use base64::Engine;
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(seed);
    key[8..].copy_from_slice(seed);
    base64::engine::general_purpose::STANDARD.encode(key)
}
