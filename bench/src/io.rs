//! How the bench's connections reach the server: one kernel TCP socket each on a mio
//! loop ([`KernelIo`]), or userspace TCP over AF_XDP sockets ([`super::xdp_io::XdpIo`],
//! no descriptor per connection). The [`super::engine::Engine`] speaks the protocol the
//! same way over either: it opens connection `i`, learns which connections may have
//! something to read or room to write, and reads and writes bytes.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::tls_io::TlsIo;
use super::ws_io::WsIo;
use super::xdp_io::XdpIo;

/// A connection that may have changed.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// Index of the connection.
    pub conn: usize,
    /// Data, end of stream or an error may be waiting.
    pub readable: bool,
    /// Room to write may have opened.
    pub writable: bool,
}

/// Where a connection's handshake is.
#[derive(Debug)]
pub enum Handshake {
    /// Still connecting.
    Pending,
    /// Established.
    Done,
    /// Refused, reset or timed out.
    Failed(String),
}

/// The client side's transport.
pub enum Io {
    /// Kernel sockets.
    Kernel(KernelIo),
    /// Userspace TCP over AF_XDP.
    Xdp(Box<XdpIo>),
    /// TLS over one of the others (`--tls`).
    Tls(Box<TlsIo>),
    /// WebSocket over one of the others (`--ws`).
    Ws(Box<WsIo>),
}

impl Io {
    /// Starts connecting connection `i` from `source` (if given).
    pub fn open(&mut self, i: usize, source: Option<IpAddr>) -> anyhow::Result<()> {
        match self {
            Io::Kernel(k) => k.open(i, source),
            Io::Xdp(x) => x.open(i, source),
            Io::Tls(t) => t.open(i, source),
            Io::Ws(w) => w.open(i, source),
        }
    }

    /// Where connection `i`'s handshake is (call when it was reported ready).
    pub fn handshake(&mut self, i: usize) -> Handshake {
        match self {
            Io::Kernel(k) => k.handshake(i),
            Io::Xdp(x) => x.handshake(i),
            Io::Tls(t) => t.handshake(i),
            Io::Ws(w) => w.handshake(i),
        }
    }

    /// Reads from connection `i`: `Ok(0)` is the end of the stream, `WouldBlock` means
    /// nothing more for now.
    pub fn read(&mut self, i: usize, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Kernel(k) => k.read(i, buf),
            Io::Xdp(x) => x.read(i, buf),
            Io::Tls(t) => t.read(i, buf),
            Io::Ws(w) => w.read(i, buf),
        }
    }

    /// Writes to connection `i`; `WouldBlock` when it has no room.
    pub fn write(&mut self, i: usize, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Kernel(k) => k.write(i, buf),
            Io::Xdp(x) => x.write(i, buf),
            Io::Tls(t) => t.write(i, buf),
            Io::Ws(w) => w.write(i, buf),
        }
    }

    /// Drops connection `i`.
    pub fn close(&mut self, i: usize) {
        match self {
            Io::Kernel(k) => k.close(i),
            Io::Xdp(x) => x.close(i),
            Io::Tls(t) => t.close(i),
            Io::Ws(w) => w.close(i),
        }
    }

    /// Sends what was written, waits up to `timeout` for something to happen and lists
    /// the connections that may have changed in `ready`.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> anyhow::Result<()> {
        ready.clear();
        match self {
            Io::Kernel(k) => k.poll(timeout, ready),
            Io::Xdp(x) => x.poll(timeout, ready),
            Io::Tls(t) => t.poll(timeout, ready),
            Io::Ws(w) => w.poll(timeout, ready),
        }
    }
}

/// What a layer over a transport ([`TlsIo`], [`WsIo`]) must do at every poll: retry the
/// connections whose bytes the transport did not take, and report writable the ones
/// that became able to write without an event from the socket (a handshake or upgrade
/// finished).
#[derive(Default)]
pub(crate) struct LayerWakes {
    /// Connections with bytes left to hand down, each listed once (`listed`).
    unsent: Vec<usize>,
    listed: Vec<bool>,
    /// Connections to report writable at the next poll.
    wake_writable: Vec<usize>,
}

impl LayerWakes {
    /// Connection `i` has bytes the transport did not take: retried at the next poll.
    pub(crate) fn mark_unsent(&mut self, i: usize) {
        if self.listed.len() <= i {
            self.listed.resize(i + 1, false);
        }
        if !self.listed[i] {
            self.listed[i] = true;
            self.unsent.push(i);
        }
    }

    /// Connection `i` can write now, though its socket reports nothing new.
    pub(crate) fn wake_writable(&mut self, i: usize) {
        self.wake_writable.push(i);
    }

    /// The layer's poll over `inner`: `send(inner, self, i)` hands connection `i`'s
    /// pending bytes down (calling [`LayerWakes::mark_unsent`] for what is left), for the
    /// connections left over and those the socket reports writable; the wait is zero
    /// while connections are to be woken, and they are reported writable after the
    /// transport's own events.
    pub(crate) fn poll(
        &mut self,
        inner: &mut Io,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
        mut send: impl FnMut(&mut Io, &mut LayerWakes, usize),
    ) -> anyhow::Result<()> {
        let mut unsent = std::mem::take(&mut self.unsent);
        for &i in &unsent {
            self.listed[i] = false;
            send(inner, self, i);
        }
        unsent.clear();
        unsent.append(&mut self.unsent);
        self.unsent = unsent;
        let timeout = if self.wake_writable.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        inner.poll(timeout, ready)?;
        for r in ready.iter().filter(|r| r.writable) {
            send(inner, self, r.conn);
        }
        ready.extend(self.wake_writable.drain(..).map(|conn| Ready {
            conn,
            readable: false,
            writable: true,
        }));
        Ok(())
    }
}

/// Kernel TCP sockets on one epoll instance (mio), one per connection.
pub struct KernelIo {
    poll: Poll,
    events: Events,
    server: SocketAddr,
    /// Where the odd connections go instead (`--peer-server`); `first` is the plan index
    /// of connection 0, so odd means odd in the whole run.
    peer: Option<(SocketAddr, u64)>,
    streams: Vec<Option<TcpStream>>,
}

impl KernelIo {
    /// Sockets to `server` for `connections` connections (none opened yet).
    pub fn new(server: SocketAddr, connections: usize) -> anyhow::Result<KernelIo> {
        Ok(KernelIo {
            poll: Poll::new().context("cannot create an epoll instance")?,
            events: Events::with_capacity(4096),
            server,
            peer: None,
            streams: (0..connections).map(|_| None).collect(),
        })
    }

    /// Connection `i` connects to `peer` when `first + i` is odd (`--peer-server`).
    pub fn with_peer(mut self, peer: Option<SocketAddr>, first: u64) -> KernelIo {
        self.peer = peer.map(|p| (p, first));
        self
    }

    fn server_of(&self, i: usize) -> SocketAddr {
        match self.peer {
            Some((peer, first)) if (first + i as u64) % 2 == 1 => peer,
            _ => self.server,
        }
    }

    fn open(&mut self, i: usize, source: Option<IpAddr>) -> anyhow::Result<()> {
        let server = self.server_of(i);
        let domain = Domain::for_address(server);
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
            .context("cannot create a TCP socket (file descriptor limit?)")?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(source) = source {
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .with_context(|| format!("cannot bind source address {source}"))?;
        }
        match socket.connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => bail!(
                "connect to {server}: {e} — out of source ports; spread connections over more \
                 source addresses with --source-ips"
            ),
            Err(e) => return Err(e).with_context(|| format!("connect to {server}")),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .context("cannot register a socket with epoll")?;
        self.streams[i] = Some(stream);
        Ok(())
    }

    fn handshake(&mut self, i: usize) -> Handshake {
        let Some(stream) = &self.streams[i] else {
            return Handshake::Failed("closed".into());
        };
        let error = match stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => match stream.peer_addr() {
                Ok(_) => return Handshake::Done,
                Err(e) if e.kind() == ErrorKind::NotConnected => return Handshake::Pending,
                Err(e) => e,
            },
        };
        Handshake::Failed(error.to_string())
    }

    fn read(&mut self, i: usize, buf: &mut [u8]) -> io::Result<usize> {
        match self.streams[i].as_mut() {
            Some(stream) => stream.read(buf),
            None => Err(ErrorKind::NotConnected.into()),
        }
    }

    fn write(&mut self, i: usize, buf: &[u8]) -> io::Result<usize> {
        match self.streams[i].as_mut() {
            Some(stream) => stream.write(buf),
            None => Err(ErrorKind::NotConnected.into()),
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(mut stream) = self.streams[i].take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
    }

    fn poll(&mut self, timeout: Option<Duration>, ready: &mut Vec<Ready>) -> anyhow::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e).context("epoll_wait failed"),
        }
        ready.extend(self.events.iter().map(|event| Ready {
            conn: event.token().0,
            readable: event.is_readable() || event.is_read_closed() || event.is_error(),
            writable: event.is_writable() || event.is_write_closed(),
        }));
        Ok(())
    }
}
