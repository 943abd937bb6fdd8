//! Serving an axum router on a listener with the limits an endpoint open to clients
//! needs, so that no client, stuck or hostile, holds a connection for ever:
//! - at most [`Limits::max_connections`] connections at once (the next ones wait in the
//!   kernel's accept backlog until one closes), so a flood cannot take every file
//!   descriptor of the process;
//! - at most [`Limits::max_per_address`] of them from one client address (more are
//!   answered `429 Too Many Requests` and closed; over TLS only closed, before the
//!   handshake), so one host cannot take the others' places;
//! - a request's headers within [`Limits::header_timeout`], which is also how long a
//!   kept-alive connection may sit idle between requests (hyper's header read timeout);
//! - once a request is under way, bytes must move one way or the other at least every
//!   [`Limits::stall_timeout`] (a body that stops coming, an answer nobody reads), or
//!   the connection is closed.
//!
//! With a TLS acceptor (the dispatch directory when the server has a certificate) each
//! connection's handshake comes first, within the header timeout too.
//!
//! The API, the dispatch directory and the media service run this way. `axum::serve`
//! has none of these limits nor TLS, hence the accept loop here, over hyper's HTTP/1.1
//! connection (every client of these endpoints speaks HTTP/1.1; cleartext HTTP/2 is not
//! served; upgrades are kept for axum). Each endpoint has its own defaults
//! ([`Limits::API`], [`Limits::DISPATCH`], [`Limits::MEDIA`]); the directory's and the
//! media service's connection limits are settings (`[dispatch]`, `[media]`), since
//! behind a proxy every connection comes from the proxy's address.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use petrel_dataplane::address_limit::AddressLimiter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// What one endpoint allows its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Connections from one client address at once (IPv4-mapped IPv6 counts as the
    /// IPv4 address, an IPv6 client as its /64); 0: no limit. Past it a plaintext
    /// connection is answered `429` (at most 64 such answers at once; more are closed
    /// without one), a TLS one closed before the handshake.
    pub max_per_address: usize,
    /// A request's headers must arrive within this, and an idle kept-alive connection
    /// is closed after it.
    pub header_timeout: Duration,
    /// Longest time without a byte moving either way while a request is under way
    /// (never shorter than `header_timeout`, which governs the time between requests).
    pub stall_timeout: Duration,
}

impl Limits {
    /// The API: the deployment's own backend, a few connection pools' worth. Idle
    /// connections are kept longer than common HTTP clients keep theirs (90 s), so a
    /// backend's pool closes an idle connection before the server does and never sends
    /// a request on one the server is closing.
    pub const API: Limits = Limits {
        max_connections: 256,
        // The backend's pools all come from a few addresses.
        max_per_address: 0,
        header_timeout: Duration::from_secs(100),
        stall_timeout: Duration::from_secs(100),
    };
    /// The dispatch directory: every client asks it at start, briefly.
    pub const DISPATCH: Limits = Limits {
        max_connections: 1024,
        // A client asks once, on a connection of its own, briefly; many mobile
        // clients can share an address behind a carrier's NAT.
        max_per_address: 64,
        header_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(10),
    };
    /// The media service: uploads and downloads that may take a while once started,
    /// as long as their bytes keep moving.
    pub const MEDIA: Limits = Limits {
        max_connections: 512,
        // Parallel uploads and downloads of the clients behind one (NAT) address.
        max_per_address: 64,
        header_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(60),
    };
}

impl Limits {
    /// These limits with the connection counts of a config table over them:
    /// `max_connections` (1 to [`MAX_CONNECTIONS`]) and `max_connections_per_address`
    /// (0: no limit, the setting for an endpoint behind a proxy). `table` names the
    /// table in errors.
    pub fn configured(
        self,
        table: &str,
        max_connections: Option<usize>,
        max_per_address: Option<usize>,
    ) -> anyhow::Result<Limits> {
        let max_connections = max_connections.unwrap_or(self.max_connections);
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            anyhow::bail!(
                "[{table}] max_connections must be 1 to {MAX_CONNECTIONS}, got {max_connections}"
            );
        }
        Ok(Limits {
            max_connections,
            max_per_address: max_per_address.unwrap_or(self.max_per_address),
            ..self
        })
    }
}

/// Most connections one endpoint may be set to serve at once: well under the
/// process's file descriptors, which its client connections need most.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Binds `addr` and serves `app` with `limits` on a thread of its own
/// (`petrel-<what>`, a one-thread tokio runtime) until the process exits; never on a
/// core loop; HTTPS with `tls`. Returns the address bound (the port chosen, if 0 was
/// asked for). The API and the dispatch directory run this way.
pub fn serve_on_thread(
    what: &str,
    addr: SocketAddr,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for the {what} on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .with_context(|| format!("cannot build the {what}'s runtime"))?;
    let name = what.to_owned();
    std::thread::Builder::new()
        .name(format!("petrel-{what}"))
        .spawn(move || runtime.block_on(serve_std(listener, app, limits, tls, &name)))
        .with_context(|| format!("cannot start the {what} thread"))?;
    Ok(local)
}

/// [`serve`] on a bound, non-blocking std listener; logs why it cannot.
pub async fn serve_std(
    listener: std::net::TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    name: &str,
) {
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => serve(listener, app, limits, tls, name).await,
        Err(error) => tracing::error!(%error, "{name}: cannot use the listener"),
    }
}

/// Accepts connections on `listener` and serves `app` on each, within `limits` (and
/// inside TLS with `tls`), for ever. `name` labels its log lines.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    name: &str,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = (limits.max_per_address > 0)
        .then(|| AddressLimiter::new(u32::try_from(limits.max_per_address).unwrap_or(u32::MAX)));
    let mut crowded = Occasionally::default();
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut full = Occasionally::default();
    let mut failing = Occasionally::default();
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if full.due() {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "{name}: connection limit reached; new connections wait to be accepted"
                    );
                }
                match permits.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    // Never closed; if it were, stop serving rather than spin.
                    Err(_) => return,
                }
            }
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // A connection that went before it was accepted: nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                // Out of descriptors or memory: it repeats; wait rather than spin.
                if failing.due() {
                    tracing::warn!(%error, "{name}: accept failed; retrying every second");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let slot = match &per_address {
            None => None,
            Some(limiter) => match limiter.acquire(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    if crowded.due() {
                        tracing::warn!(
                            address = %peer.ip(),
                            limit = limits.max_per_address,
                            refused = limiter.refused(),
                            "{name}: too many connections from one address; refusing more"
                        );
                    }
                    drop(permit);
                    if tls.is_none()
                        && let Ok(refusing) = refusals.clone().try_acquire_owned()
                    {
                        tokio::spawn(async move {
                            refuse_crowded(stream).await;
                            drop(refusing);
                        });
                    }
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let tls = tls.clone();
        let name = name.to_owned();
        let stall_timeout = limits.stall_timeout.max(limits.header_timeout);
        tokio::spawn(async move {
            let moved = Arc::new(Moved::new());
            let stream = Watched {
                io: stream,
                moved: moved.clone(),
            };
            let connection = async {
                match tls {
                    None => serve_one(&http, stream, service).await,
                    Some(tls) => {
                        match tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await
                        {
                            Ok(Ok(stream)) => serve_one(&http, stream, service).await,
                            Ok(Err(error)) => Err(format!("TLS handshake: {error}")),
                            Err(_) => Err("TLS handshake: too slow".to_owned()),
                        }
                    }
                }
            };
            let served = tokio::select! {
                served = connection => served,
                () = moved.stalled(stall_timeout) => {
                    Err(format!("no byte moved for {stall_timeout:?}"))
                }
            };
            if let Err(error) = served {
                // A client that went away or timed out: its business, not an operator's.
                tracing::debug!(%error, %peer, "{name}: connection ended");
            }
            drop((permit, slot));
        });
    }
}

/// The whole answer to a connection over its address's limit.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: text/plain\r\ncontent-length: 51\r\nconnection: close\r\n\r\n\
too many connections from this address; retry later";

/// Refusals of connections over their address's limit being written at once, at most:
/// past it a refused connection is closed without an answer.
const REFUSALS_AT_ONCE: usize = 64;

/// Tells a plaintext connection over its address's limit so, then closes it, all
/// within a second. What the client sent is read first (and dropped): closing a socket
/// with unread bytes resets the connection, and the client would see a reset instead
/// of the answer.
async fn refuse_crowded(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(TOO_MANY_CONNECTIONS).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
}

/// A warning's schedule: at most once a minute.
#[derive(Default)]
struct Occasionally(Option<Instant>);

impl Occasionally {
    /// Whether to warn now (and not again for a minute).
    fn due(&mut self) -> bool {
        let due = self
            .0
            .is_none_or(|at| at.elapsed() > Duration::from_secs(60));
        if due {
            self.0 = Some(Instant::now());
        }
        due
    }
}

/// When a connection last moved a byte, in milliseconds since it was accepted.
struct Moved {
    since: Instant,
    at_ms: AtomicU64,
}

impl Moved {
    fn new() -> Moved {
        Moved {
            since: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `limit`. (An idle kept-alive connection
    /// is closed by the header timeout before this, where that is shorter.)
    async fn stalled(&self, limit: Duration) {
        loop {
            let last = self.since + Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
            let due = last + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A connection's stream that notes in [`Moved`] each time bytes go through it.
struct Watched<I> {
    io: I,
    moved: Arc<Moved>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, bytes);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 on one connection until it ends.
async fn serve_one<I>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    service: TowerToHyperService<Router>,
) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    http.serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use axum::Router;
    use axum::routing::{get, post};

    use super::{Limits, serve};

    /// Serves a one-route app with `limits` on a thread of its own; its address.
    fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new()
                    .route("/", get(|| async { "hello" }))
                    .route("/echo", post(|body: String| async move { body }));
                serve(listener, app, limits, None, "test").await;
            });
        });
        addr
    }

    /// Sends one request on a new connection and reads the answer to the end.
    fn get_root(addr: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// Everything the server sends on `stream` until it ends the connection (a FIN or
    /// a reset); fails the test if it is still open after 10 s.
    fn until_closed(stream: &mut TcpStream) -> String {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut bytes = Vec::new();
        let ended = stream.read_to_end(&mut bytes);
        assert!(
            !matches!(&ended, Err(e) if matches!(e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "the server left the connection open: {ended:?}"
        );
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let addr = start(Limits {
            max_connections: 4,
            max_per_address: 0,
            header_timeout: Duration::from_millis(300),
            stall_timeout: Duration::from_secs(30),
        });
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").unwrap();
        // Closed (perhaps after a 408), or reset.
        assert!(!until_closed(&mut slow).contains("hello"));
        // The endpoint still serves others.
        assert!(get_root(addr).contains("hello"));
    }

    #[test]
    fn a_kept_alive_connection_left_idle_is_closed() {
        let addr = start(Limits {
            max_connections: 4,
            max_per_address: 0,
            header_timeout: Duration::from_millis(300),
            stall_timeout: Duration::from_secs(30),
        });
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        // The answer, then nothing more from the client: the server ends the
        // connection, and the read sees its end rather than its own time-out.
        let mut everything = Vec::new();
        let ended = idle.read_to_end(&mut everything);
        assert!(
            ended.is_ok(),
            "the idle connection was not closed: {ended:?}"
        );
        assert!(String::from_utf8_lossy(&everything).contains("hello"));
    }

    #[test]
    fn an_upload_that_stops_coming_is_disconnected() {
        let addr = start(Limits {
            max_connections: 4,
            max_per_address: 0,
            header_timeout: Duration::from_millis(200),
            stall_timeout: Duration::from_millis(400),
        });
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nten bytes.")
            .unwrap();
        assert!(!until_closed(&mut stalled).contains("200 OK"));
        assert!(get_root(addr).contains("hello"));
    }

    #[test]
    fn connections_past_the_limit_wait_until_one_closes() {
        let addr = start(Limits {
            max_connections: 2,
            max_per_address: 0,
            header_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
        });
        let first = TcpStream::connect(addr).unwrap();
        let second = TcpStream::connect(addr).unwrap();
        // Both accepted and idle; a third is not served while they stay.
        let mut third = TcpStream::connect(addr).unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        third
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut byte = [0u8; 1];
        let waited = third.read(&mut byte);
        assert!(
            matches!(&waited, Err(e) if matches!(e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "the third connection was served while two were open: {waited:?}"
        );
        drop(first);
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        third.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("hello"), "{answer}");
        drop(second);
    }

    /// A connection to `addr` from local address `from`.
    fn connect_from(from: std::net::IpAddr, addr: std::net::SocketAddr) -> TcpStream {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::new(from, 0).into())
            .unwrap();
        socket.connect(&addr.into()).unwrap();
        socket.into()
    }

    #[test]
    fn one_address_past_its_limit_is_refused_and_others_are_served() {
        let addr = start(Limits {
            max_connections: 8,
            max_per_address: 2,
            header_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
        });
        let crowd: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let first = connect_from(crowd, addr);
        let _second = connect_from(crowd, addr);
        // Accepted in order: the third is the one over the limit.
        let mut third = connect_from(crowd, addr);
        third
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let answer = until_closed(&mut third);
        assert!(
            answer.starts_with("HTTP/1.1 429 ")
                && answer.ends_with("too many connections from this address; retry later"),
            "{answer}"
        );
        // Another address is served meanwhile.
        let mut other = connect_from("127.0.0.2".parse().unwrap(), addr);
        other
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        assert!(until_closed(&mut other).contains("hello"));
        // Once the server has seen one of its connections close, the address has a
        // place again (refused until then).
        drop(first);
        let since = std::time::Instant::now();
        while !get_root(addr).contains("hello") {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "the closed connection's place was not given back"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
