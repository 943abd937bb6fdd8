//! TLS over the bench's connections (`--tls`): a rustls client session per connection on
//! top of either transport ([`super::io::Io`]), so the server's TLS cost is measured with
//! the same scenarios. The engine still sees plain bytes: `read` decrypts, `write`
//! encrypts, and ciphertext the socket did not take waits in rustls until the next write,
//! read or poll.
//!
//! The TCP connection counts as open for the engine as soon as TCP is: its Login is
//! written into rustls, which holds it until the handshake completes, so the login
//! latency the bench reports includes the TLS handshake.

use std::io::{self, ErrorKind, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};

use super::config::TlsSetup;
use super::io::{Handshake, Io, LayerWakes, Ready};

/// Ciphertext read from the socket per call: small enough that what it decrypts to
/// stays far below rustls's 16 KiB limit of undelivered plaintext (`read` hands out
/// what rustls has before it reads more).
const CIPHERTEXT_CHUNK: usize = 4 * 1024;

/// `io` as it is, or with TLS over it when `--tls` asked for it.
pub fn wrap(io: Io, tls: Option<&TlsSetup>) -> anyhow::Result<Io> {
    Ok(match tls {
        None => io,
        Some(tls) => Io::Tls(Box::new(TlsIo::new(
            io,
            TlsClient::new(&tls.ca, &tls.server_name)?,
        ))),
    })
}

/// What `--tls` sets up: whom to trust and what name to expect.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the PEM certificates in `ca` and expects `name` on the server's
    /// certificate; offers ALPN `petrel`. Every connection of the bench shares the config,
    /// so reconnects resume their sessions.
    pub fn new(ca: &Path, name: &str) -> anyhow::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("--tls-ca: cannot read {}", ca.display()))?
        {
            let cert = cert.with_context(|| format!("--tls-ca: bad PEM in {}", ca.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("--tls-ca: a certificate in {}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"petrel".to_vec()];
        let name = ServerName::try_from(name.to_owned())
            .with_context(|| format!("--tls-server-name {name:?}"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }
}

/// TLS sessions over an inner transport. See the module docs.
pub struct TlsIo {
    inner: Io,
    client: TlsClient,
    sessions: Vec<Option<ClientConnection>>,
    /// Connections with ciphertext the socket did not take, and those whose handshake
    /// just ended.
    wakes: LayerWakes,
    ciphertext: Vec<u8>,
}

impl TlsIo {
    /// TLS over `inner` with `client`'s settings.
    pub fn new(inner: Io, client: TlsClient) -> TlsIo {
        TlsIo {
            inner,
            client,
            sessions: Vec::new(),
            wakes: LayerWakes::default(),
            ciphertext: vec![0; CIPHERTEXT_CHUNK],
        }
    }

    pub(crate) fn open(&mut self, i: usize, source: Option<IpAddr>) -> anyhow::Result<()> {
        if self.sessions.len() <= i {
            self.sessions.resize_with(i + 1, || None);
        }
        let session = ClientConnection::new(self.client.config.clone(), self.client.name.clone())
            .context("TLS client session")?;
        self.sessions[i] = Some(session);
        self.inner.open(i, source)
    }

    pub(crate) fn handshake(&mut self, i: usize) -> Handshake {
        let tcp = self.inner.handshake(i);
        if matches!(tcp, Handshake::Done) {
            // The ClientHello goes out now; the rest of the handshake runs as the engine
            // reads.
            if let Err(e) = self.send_ciphertext(i) {
                return Handshake::Failed(format!("TLS: {e}"));
            }
        }
        tcp
    }

    pub(crate) fn read(&mut self, i: usize, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let session = self.session(i)?;
            match session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The server closed without close_notify: the end of the stream.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let n = match self.inner.read(i, &mut self.ciphertext) {
                Ok(0) => return Ok(0),
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            let mut data = &self.ciphertext[..n];
            let session = session_of(&mut self.sessions, i)?;
            let was_handshaking = session.is_handshaking();
            while !data.is_empty() {
                // 0: the server's close_notify came; what follows it is ignored.
                if session.read_tls(&mut data)? == 0 {
                    break;
                }
                let state = session
                    .process_new_packets()
                    .map_err(|e| io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}")))?;
                if state.peer_has_closed() {
                    break;
                }
            }
            if was_handshaking && !session.is_handshaking() {
                // What the engine could not write while rustls held its pre-handshake
                // bytes can go now, though the socket reports no new room.
                self.wakes.wake_writable(i);
            }
            // Handshake messages, or what the engine wrote before the handshake ended.
            self.send_ciphertext(i)?;
        }
    }

    pub(crate) fn write(&mut self, i: usize, buf: &[u8]) -> io::Result<usize> {
        let mut n = self.session(i)?.writer().write(buf)?;
        self.send_ciphertext(i)?;
        if n == 0 && !buf.is_empty() {
            // rustls's own buffer was full; the flush may have made room.
            n = self.session(i)?.writer().write(buf)?;
            self.send_ciphertext(i)?;
        }
        if n == 0 && !buf.is_empty() {
            // Still full: the socket did not take rustls's ciphertext (a writable event
            // follows), or the handshake is not done (`read` wakes the writer then).
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    pub(crate) fn close(&mut self, i: usize) {
        if let Some(slot) = self.sessions.get_mut(i) {
            *slot = None;
        }
        self.inner.close(i);
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> anyhow::Result<()> {
        let TlsIo {
            inner,
            sessions,
            wakes,
            ..
        } = self;
        // Errors surface at the connection's next read or write.
        wakes.poll(inner, timeout, ready, |inner, wakes, i| {
            let _ = send_ciphertext(inner, sessions, wakes, i);
        })
    }

    fn session(&mut self, i: usize) -> io::Result<&mut ClientConnection> {
        session_of(&mut self.sessions, i)
    }

    fn send_ciphertext(&mut self, i: usize) -> io::Result<()> {
        send_ciphertext(&mut self.inner, &mut self.sessions, &mut self.wakes, i)
    }
}

/// Writes connection `i`'s pending ciphertext until the socket blocks; what is left is
/// retried at the next poll.
fn send_ciphertext(
    inner: &mut Io,
    sessions: &mut [Option<ClientConnection>],
    wakes: &mut LayerWakes,
    i: usize,
) -> io::Result<()> {
    let session = session_of(sessions, i)?;
    while session.wants_write() {
        let mut sink = Sink { inner, conn: i };
        match session.write_tls(&mut sink) {
            Ok(_) => {}
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

fn session_of(
    sessions: &mut [Option<ClientConnection>],
    i: usize,
) -> io::Result<&mut ClientConnection> {
    sessions
        .get_mut(i)
        .and_then(Option::as_mut)
        .ok_or_else(|| io::Error::new(ErrorKind::NotConnected, "no TLS session"))
}

/// `io::Write` into one connection of the inner transport, for rustls's `write_tls`.
struct Sink<'a> {
    inner: &'a mut Io,
    conn: usize,
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(self.conn, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
