//! The byte stream a session runs over: a TCP connection, in plaintext or through TLS
//! (rustls via tokio-rustls), chosen by [`crate::ClientConfig::tls`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// TLS settings of a client: whom to trust and what name to expect.
#[derive(Clone)]
pub struct TlsConfig {
    /// rustls's client configuration: trusted roots, ALPN (`petrel`), resumption. The
    /// same `Arc` across reconnects keeps its session tickets, so a reconnect resumes.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry; `None` uses each endpoint's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// A configuration that trusts `roots`, offers ALPN `petrel` and expects each
    /// endpoint's host name.
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<TlsConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"petrel".to_vec()];
        Ok(TlsConfig {
            config: Arc::new(config),
            server_name: None,
        })
    }
}

/// A session's connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Wraps a connected `tcp` to `endpoint` (`host:port`), running the TLS handshake
    /// when `tls` is set.
    pub(crate) async fn open(
        tcp: TcpStream,
        endpoint: &str,
        tls: Option<&TlsConfig>,
    ) -> io::Result<Stream> {
        let Some(tls) = tls else {
            return Ok(Stream::Plain(tcp));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let stream = connect_tls(&connector, tls.server_name.as_deref(), endpoint, tcp).await?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// Runs the TLS handshake over `tcp` to `endpoint` (`host:port`), expecting the
/// certificate to name `server_name`, or the endpoint's host when that is `None`.
/// Sessions and the dispatch directory connect this way.
pub(crate) async fn connect_tls(
    connector: &tokio_rustls::TlsConnector,
    server_name: Option<&str>,
    endpoint: &str,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let host = server_name.unwrap_or_else(|| host_of(endpoint)).to_owned();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS server name {host:?}: {e}"),
        )
    })?;
    connector.connect(name, tcp).await
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(endpoint: &str) -> &str {
    let host = match endpoint.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => endpoint,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_endpoint_drops_the_port_and_brackets() {
        assert_eq!(host_of("chat.example.com:9500"), "chat.example.com");
        assert_eq!(host_of("127.0.0.1:9500"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9500"), "::1");
        assert_eq!(host_of("chat.example.com"), "chat.example.com");
    }
}
