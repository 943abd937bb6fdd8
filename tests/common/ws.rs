//! A blocking WebSocket client for the end-to-end tests: tungstenite's client (an
//! implementation independent of the server's own message framing), one protocol frame
//! per binary message, over plain TCP or TLS (`wss://`).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use petrel_proto::codec::FrameEncoder;
use petrel_proto::pb;
use petrel_proto::{Body, Frame, FrameDecoder};
use tungstenite::handshake::client::generate_key;
use tungstenite::http::Request;
use tungstenite::{Message, WebSocket};

/// Plain TCP or TLS under the WebSocket.
pub enum Wire {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Wire {
    fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(s) => &s.sock,
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// A logged-in (or about to be) WebSocket client.
pub struct WsClient {
    pub ws: WebSocket<Wire>,
    decoder: FrameDecoder,
    buf: BytesMut,
    pending: VecDeque<Frame>,
    next_request: u32,
    pub user: u64,
}

/// The upgrade request for `path` on `host`, with `origin` if given.
fn request(host: &str, path: &str, origin: Option<&str>) -> Request<()> {
    let mut builder = Request::get(format!("ws://{host}{path}"))
        .header("Host", host)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", generate_key());
    if let Some(origin) = origin {
        builder = builder.header("Origin", origin);
    }
    builder.body(()).expect("request")
}

impl WsClient {
    /// Upgrades a plain TCP connection to `addr`.
    pub fn connect(addr: SocketAddr, origin: Option<&str>) -> Result<WsClient, tungstenite::Error> {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        WsClient::over(Wire::Plain(stream), &addr.to_string(), "/", origin)
    }

    /// Upgrades `stream` (already connected) with a request for `path`.
    pub fn over_tcp(stream: TcpStream, path: &str) -> Result<WsClient, tungstenite::Error> {
        stream.set_nodelay(true).expect("nodelay");
        let host = stream.peer_addr().expect("peer").to_string();
        WsClient::over(Wire::Plain(stream), &host, path, None)
    }

    /// Upgrades a TLS connection to `addr` (`wss://`) with a request for `path`, trusting
    /// `config`'s roots for `server_name`.
    pub fn connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
        path: &str,
    ) -> Result<WsClient, tungstenite::Error> {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let name =
            rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("server name");
        let conn = rustls::ClientConnection::new(config, name).expect("TLS client");
        let wire = Wire::Tls(Box::new(rustls::StreamOwned::new(conn, stream)));
        WsClient::over(wire, server_name, path, None)
    }

    fn over(
        wire: Wire,
        host: &str,
        path: &str,
        origin: Option<&str>,
    ) -> Result<WsClient, tungstenite::Error> {
        wire.tcp()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (ws, _response) =
            tungstenite::client(request(host, path, origin), wire).map_err(|e| match e {
                tungstenite::HandshakeError::Failure(e) => e,
                tungstenite::HandshakeError::Interrupted(_) => {
                    tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
                }
            })?;
        Ok(WsClient {
            ws,
            decoder: FrameDecoder::default(),
            buf: BytesMut::new(),
            pending: VecDeque::new(),
            next_request: 1,
            user: 0,
        })
    }

    /// Sends `frame` as one binary message.
    pub fn send(&mut self, frame: &Frame) {
        let bytes = FrameEncoder::default()
            .encode_to_bytes(frame)
            .expect("encode");
        self.ws.send(Message::Binary(bytes)).expect("send");
    }

    /// The next frame; `None` once the server closed the WebSocket.
    pub fn try_recv(&mut self) -> Option<Frame> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).expect("valid frame") {
                return Some(frame);
            }
            match self.ws.read() {
                Ok(Message::Binary(payload)) => self.buf.extend_from_slice(&payload),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub fn recv(&mut self) -> Frame {
        self.try_recv().expect("the server closed the WebSocket")
    }

    /// Sends a request and returns its response; other frames stay queued.
    pub fn request(&mut self, body: impl Into<Body>) -> Frame {
        let id = self.next_request;
        self.next_request += 1;
        self.send(&Frame::new(id, body));
        loop {
            let frame = self
                .try_recv()
                .expect("closed while waiting for a response");
            if frame.flags.is_response() && frame.request_id == id {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// Logs in; panics unless the server answers LoginResult.
    pub fn log_in(mut self, token: &str, user: u64, device: &str) -> WsClient {
        self.user = user;
        let result = self.request(pb::Login {
            token: token.into(),
            user_id: user,
            device_id: device.into(),
            // The harness mints desktop tokens.
            platform: pb::Platform::Desktop as i32,
            client_version: "petrel-tests-ws".into(),
            attempt: 0,
        });
        assert!(
            matches!(result.body, Body::LoginResult(_)),
            "login of user {user} failed: {:?}",
            result.body
        );
        self
    }

    /// Sends `text` to user `to`; panics unless acked.
    pub fn send_text(&mut self, to: u64, client_msg_id: u64, text: &str) {
        let answer = self.request(pb::SendMessage {
            client_msg_id,
            conversation: Some(super::client::single(to)),
            content: petrel_proto::wire::encode_content(&super::client::text_content(text)),
            ..Default::default()
        });
        assert!(matches!(answer.body, Body::Ack(_)), "{:?}", answer.body);
    }

    /// The next message pushed to it.
    pub fn push(&mut self) -> pb::MessagePush {
        loop {
            if let Some(i) = self
                .pending
                .iter()
                .position(|f| matches!(f.body, Body::MessagePush(_)))
            {
                let Some(Frame {
                    body: Body::MessagePush(push),
                    ..
                }) = self.pending.remove(i)
                else {
                    unreachable!("checked above");
                };
                return push;
            }
            let frame = self.try_recv().expect("closed while waiting for a push");
            self.pending.push_back(frame);
        }
    }
}
