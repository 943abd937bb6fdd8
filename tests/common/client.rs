//! A small blocking client for tests: frames over a std `TcpStream`, in plaintext or
//! through a rustls client session (TLS listeners).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use petrel_proto::codec::FrameEncoder;
use petrel_proto::pb::{self, ConversationKind};
use petrel_proto::{Body, Frame, FrameDecoder, FrameError};

/// How long `recv` waits before failing the test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestClient {
    pub stream: TcpStream,
    /// The TLS session, on a TLS listener: every byte goes through it.
    pub tls: Option<rustls::ClientConnection>,
    decoder: FrameDecoder,
    buf: BytesMut,
    next_request: u32,
    /// Frames received while waiting for something else, in arrival order.
    pending: VecDeque<Frame>,
    pub user: u64,
    /// The session id the server gave at login (0 before).
    pub session_id: u64,
}

impl TestClient {
    pub fn connect(addr: SocketAddr) -> TestClient {
        TestClient::over(TcpStream::connect(addr).expect("connect"))
    }

    /// A client over an already connected stream.
    pub fn over(stream: TcpStream) -> TestClient {
        stream.set_nodelay(true).expect("nodelay");
        TestClient {
            stream,
            tls: None,
            decoder: FrameDecoder::default(),
            buf: BytesMut::new(),
            next_request: 1,
            pending: VecDeque::new(),
            user: 0,
            session_id: 0,
        }
    }

    /// A client that speaks TLS to `addr` with `config`, expecting the certificate to
    /// name `server_name`. The handshake happens with the first write or read.
    pub fn connect_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> TestClient {
        let name =
            rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("server name");
        let mut client = TestClient::connect(addr);
        client.tls = Some(rustls::ClientConnection::new(config, name).expect("TLS client"));
        client
    }

    /// Writes `bytes` (through TLS on a TLS client).
    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.tls {
            Some(tls) => {
                let mut stream = rustls::Stream::new(tls, &mut self.stream);
                stream.write_all(bytes)?;
                stream.flush()
            }
            None => self.stream.write_all(bytes),
        }
    }

    /// Reads some bytes (through TLS on a TLS client); `Ok(0)` when the server closed.
    fn read_bytes(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.tls {
            Some(tls) => match rustls::Stream::new(tls, &mut self.stream).read(buf) {
                // A close without close_notify (a reset, a failed handshake) is a close.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
            None => self.stream.read(buf),
        }
    }

    /// Connects and logs in; panics unless the server answers LoginResult.
    pub fn login(addr: SocketAddr, token: &str, user: u64, device: &str) -> TestClient {
        TestClient::connect(addr).log_in(token, user, device)
    }

    /// Logs in on this connection; panics unless the server answers LoginResult.
    pub fn log_in(self, token: &str, user: u64, device: &str) -> TestClient {
        self.log_in_as(token, user, device, pb::Platform::Desktop)
    }

    /// Logs in on this connection as a device of `platform` (which the token must
    /// name); panics unless the server answers LoginResult.
    pub fn log_in_as(
        self,
        token: &str,
        user: u64,
        device: &str,
        platform: pb::Platform,
    ) -> TestClient {
        self.log_in_numbered(token, (user, device, platform), 0)
    }

    /// Logs in as a device of `platform` with `Login.attempt` = `attempt`; panics unless
    /// the server answers LoginResult.
    pub fn log_in_numbered(
        mut self,
        token: &str,
        (user, device, platform): (u64, &str, pb::Platform),
        attempt: u64,
    ) -> TestClient {
        self.user = user;
        let result = self.request(pb::Login {
            token: token.into(),
            user_id: user,
            device_id: device.into(),
            platform: platform as i32,
            client_version: "petrel-tests".into(),
            attempt,
        });
        match result.body {
            Body::LoginResult(r) => {
                assert_eq!(r.user_id, user);
                self.session_id = r.session_id;
            }
            other => panic!("login of user {user} failed: {other:?}"),
        }
        self
    }

    pub fn send(&mut self, frame: &Frame) {
        let bytes = FrameEncoder::default()
            .encode_to_bytes(frame)
            .expect("encode");
        self.write_bytes(&bytes).expect("write");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_bytes(bytes)
    }

    /// Sends a request and returns the response with the same request id; frames that
    /// arrive meanwhile (pushes, events) stay queued for later `recv` calls.
    pub fn request(&mut self, body: impl Into<Body>) -> Frame {
        let id = self.next_request;
        self.next_request += 1;
        self.send(&Frame::new(id, body));
        self.recv_matching(|f| f.flags.is_response() && f.request_id == id)
    }

    /// Next frame, or `None` if the server closed the connection.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Option<Frame>, FrameError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        self.read_frame(timeout)
    }

    fn read_frame(&mut self, timeout: Duration) -> Result<Option<Frame>, FrameError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no frame within {timeout:?}");
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 16 * 1024];
            match self.read_bytes(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("no frame within {timeout:?}")
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    pub fn recv(&mut self) -> Frame {
        self.try_recv(RECV_TIMEOUT)
            .expect("valid frame")
            .expect("connection closed while waiting for a frame")
    }

    /// The first frame (queued or new) that matches; frames that don't stay queued in
    /// order, except `ConversationEvent`s, which no test here inspects.
    pub fn recv_matching(&mut self, mut pred: impl FnMut(&Frame) -> bool) -> Frame {
        if let Some(i) = self.pending.iter().position(&mut pred) {
            return self.pending.remove(i).expect("index in range");
        }
        loop {
            let f = self
                .read_frame(RECV_TIMEOUT)
                .expect("valid frame")
                .expect("connection closed while waiting for a frame");
            if pred(&f) {
                return f;
            }
            if !matches!(f.body, Body::ConversationEvent(_)) {
                self.pending.push_back(f);
            }
        }
    }

    /// Reads until the server closes the connection; returns every frame seen.
    pub fn recv_until_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return frames;
            }
            match self.try_recv(left) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) | Err(_) => return frames,
            }
        }
    }

    pub fn send_text(
        &mut self,
        conv: pb::ConversationId,
        client_msg_id: u64,
        text: &str,
    ) -> pb::Ack {
        let frame = self.request(pb::SendMessage {
            client_msg_id,
            conversation: Some(conv),
            content: petrel_proto::wire::encode_content(&text_content(text)),
            ..Default::default()
        });
        match frame.body {
            Body::Ack(ack) => ack,
            other => panic!("send failed: {other:?}"),
        }
    }

    /// Creates a group named `name` with `members` (and this user as owner); its id.
    pub fn create_group(&mut self, name: &str, members: &[u64]) -> pb::ConversationId {
        let created = self.request(pb::ConversationOp {
            op: Some(pb::conversation_op::Op::CreateGroup(pb::CreateGroup {
                name: name.into(),
                members: members.to_vec(),
            })),
        });
        let Body::ConversationOpResult(created) = created.body else {
            panic!("create group failed: {created:?}");
        };
        created.conversation.expect("group id")
    }

    pub fn push(&mut self) -> pb::MessagePush {
        match self
            .recv_matching(|f| matches!(f.body, Body::MessagePush(_)))
            .body
        {
            Body::MessagePush(p) => p,
            _ => unreachable!(),
        }
    }

    /// Syncs from scratch (inbox cursor 0, no per-conversation cursors), following pages
    /// until `has_more` is false. Returns every message.
    pub fn sync_all(&mut self) -> Vec<pb::MessagePush> {
        let (mut inbox_cursor, mut inbox_position) = (0, Vec::new());
        let mut cursors: Vec<pb::Cursor> = Vec::new();
        let mut all = Vec::new();
        loop {
            let frame = self.request(pb::SyncRequest {
                inbox_cursor,
                inbox_position: inbox_position.clone(),
                cursors: cursors.clone(),
                limit: 0,
            });
            let Body::SyncResponse(page) = frame.body else {
                panic!("sync failed: {frame:?}");
            };
            for m in &page.messages {
                let conv = m.conversation.expect("conversation");
                match cursors.iter_mut().find(|c| c.conversation == Some(conv)) {
                    Some(c) => c.after_seq = c.after_seq.max(m.seq),
                    None => cursors.push(pb::Cursor {
                        conversation: Some(conv),
                        after_seq: m.seq,
                    }),
                }
            }
            all.extend(page.messages);
            inbox_cursor = page.inbox_cursor;
            inbox_position = page.inbox_position;
            if !page.has_more {
                return all;
            }
        }
    }
}

pub fn single(peer: u64) -> pb::ConversationId {
    pb::ConversationId {
        kind: ConversationKind::Single as i32,
        id: peer,
    }
}

pub fn text_content(text: &str) -> pb::Content {
    pb::Content {
        body: Some(pb::content::Body::Text(pb::Text {
            text: text.into(),
            mentions: vec![],
        })),
    }
}

pub fn text_of(push: &pb::MessagePush) -> String {
    match push.decode_content().map(|c| c.body) {
        Ok(Some(pb::content::Body::Text(t))) => t.text,
        other => panic!("not a text message: {other:?}"),
    }
}
