//! Serving an axum router on a listener with the limits an endpoint open to clients
//! needs: at most [`Limits::max_connections`] connections at once (the next ones wait
//! in the kernel's accept backlog until one closes, so a flood cannot take every file
//! descriptor of the process), and a request's headers within
//! [`Limits::header_timeout`], which is also how long a kept-alive connection may sit
//! idle between requests (hyper's header read timeout), so a client that connects and
//! sends nothing, or a byte at a time, does not hold a connection for ever.
//!
//! With a TLS acceptor (the dispatch directory when the server has a certificate) each
//! connection's handshake comes first, within the header timeout too.
//!
//! The API, the dispatch directory and the media service run this way. `axum::serve`
//! has neither limit nor TLS, hence the accept loop here, over hyper's HTTP/1.1
//! connection (every client of these endpoints speaks HTTP/1.1; upgrades are kept for
//! axum).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// What one endpoint allows its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle kept-alive connection
    /// is closed after it.
    pub header_timeout: Duration,
}

impl Limits {
    /// The API: the deployment's own backend, a few connection pools' worth.
    pub const API: Limits = Limits {
        max_connections: 256,
        header_timeout: Duration::from_secs(10),
    };
    /// The dispatch directory: every client asks it at start, briefly.
    pub const DISPATCH: Limits = Limits {
        max_connections: 1024,
        header_timeout: Duration::from_secs(5),
    };
    /// The media service: uploads and downloads that may take a while once started
    /// (their bodies are not bound by the header timeout).
    pub const MEDIA: Limits = Limits {
        max_connections: 512,
        header_timeout: Duration::from_secs(10),
    };
}

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
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // The warning when the limit is reached, at most once a minute.
    let mut warned_full: Option<std::time::Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if warned_full.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "{name}: connection limit reached; new connections wait to be accepted"
                    );
                    warned_full = Some(std::time::Instant::now());
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
            Err(error) => {
                // Out of descriptors or memory, or a connection reset before accept:
                // wait a moment rather than spin on an error that repeats.
                tracing::warn!(%error, "{name}: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let tls = tls.clone();
        let header_timeout = limits.header_timeout;
        let name = name.to_owned();
        tokio::spawn(async move {
            let served = match tls {
                None => serve_one(&http, stream, service).await,
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_one(&http, stream, service).await,
                    Ok(Err(error)) => Err(format!("TLS handshake: {error}")),
                    Err(_) => Err("TLS handshake: too slow".to_owned()),
                },
            };
            if let Err(error) = served {
                // A client that went away or timed out: its business, not an operator's.
                tracing::debug!(%error, %peer, "{name}: connection ended");
            }
            drop(permit);
        });
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
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::routing::get;

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
                let app = Router::new().route("/", get(|| async { "hello" }));
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

    #[test]
    fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let addr = start(Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
        });
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        // The server closes the connection (perhaps after a 408); a read error other
        // than a timeout counts as closed too (a reset).
        match slow.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the connection was still open after {:?}",
                started.elapsed()
            ),
        }
        assert!(!String::from_utf8_lossy(&rest).contains("hello"));
        // The endpoint still serves others.
        assert!(get_root(addr).contains("hello"));
    }

    #[test]
    fn a_kept_alive_connection_left_idle_is_closed() {
        let addr = start(Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
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
    fn connections_past_the_limit_wait_until_one_closes() {
        let addr = start(Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(30),
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
}
