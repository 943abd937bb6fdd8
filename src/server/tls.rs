//! TLS for client listeners (docs/CONFIGURATION.md, "TLS"): the `[tls]` table and the
//! `--tls-cert`/`--tls-key` flags, the rustls server configuration every dataplane's
//! connections share ([`petrel_dataplane::TlsAcceptor`]), and reloading the certificate
//! on SIGHUP without touching a connection.
//!
//! **Reload.** The configuration resolves its certificate through [`ReloadableCert`],
//! which hands out whatever certified key it holds now; a reload reads both files, checks
//! that the key matches the certificate, and swaps it in. Handshakes from then on present
//! the new certificate; established connections keep their session (TLS has no need of
//! the certificate after the handshake). A reload that fails leaves the old one in place
//! and says why in the log.
//!
//! **Resumption.** TLS 1.3 tickets (rustls's ticketer: ChaCha20-Poly1305, rotating keys,
//! 12-hour lifetime) and a TLS 1.2 session cache, so a phone that reconnects after a
//! network change skips the certificate and its signature.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use petrel_dataplane::{TlsAcceptor, TlsStats};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

/// The ALPN protocol name of Petrel's framed protocol (docs/PROTOCOL.md).
pub const ALPN_PETREL: &str = "petrel";

/// TLS 1.2 sessions kept for resumption by id (TLS 1.3 uses tickets, which the server
/// does not store).
const SESSION_CACHE_ENTRIES: usize = 4096;

/// The `[tls]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    listen: Option<Vec<std::net::SocketAddr>>,
    alpn: Option<Vec<String>>,
    tls12: Option<bool>,
}

/// The resolved TLS settings: off unless a certificate and a key are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// ALPN protocols offered, in order of preference. A client that offers ALPN must
    /// offer one of them; one that offers none is served too.
    pub alpn: Vec<String>,
    /// Whether TLS 1.2 is accepted besides TLS 1.3.
    pub tls12: bool,
    /// Addresses that speak TLS beside the plaintext `listen` ones (kernel sockets only);
    /// empty: every `listen` address speaks TLS.
    pub listen: Vec<std::net::SocketAddr>,
}

impl TlsSettings {
    /// Flags ← file. Returns `None` when neither names a certificate; an error when only
    /// one of certificate and key is given.
    pub fn resolve(
        file: Option<&TlsFile>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> anyhow::Result<Option<TlsSettings>> {
        let cert = cert
            .map(Path::to_path_buf)
            .or_else(|| file.and_then(|f| f.cert.clone()));
        let key = key
            .map(Path::to_path_buf)
            .or_else(|| file.and_then(|f| f.key.clone()));
        let (cert, key) = match (cert, key) {
            (None, None) => {
                if file.is_some_and(|f| f.alpn.is_some() || f.tls12.is_some() || f.listen.is_some())
                {
                    bail!("[tls] needs `cert` and `key` (or --tls-cert and --tls-key)");
                }
                return Ok(None);
            }
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => bail!("TLS needs a private key too: --tls-key or `key` in [tls]"),
            (None, Some(_)) => {
                bail!("TLS needs a certificate too: --tls-cert or `cert` in [tls]")
            }
        };
        let alpn = file
            .and_then(|f| f.alpn.clone())
            .unwrap_or_else(|| vec![ALPN_PETREL.to_owned()]);
        if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            bail!("[tls] alpn: every protocol name has 1 to 255 bytes");
        }
        Ok(Some(TlsSettings {
            cert,
            key,
            alpn,
            tls12: file.and_then(|f| f.tls12).unwrap_or(true),
            listen: file.and_then(|f| f.listen.clone()).unwrap_or_default(),
        }))
    }
}

/// The certificate the server presents, swappable while it runs. See the module docs.
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    reloaded: AtomicU64,
    reload_failed: AtomicU64,
}

impl ReloadableCert {
    /// Reloads that swapped a new certificate in (`ok`) or left the old one (`!ok`).
    pub fn reloads(&self, ok: bool) -> u64 {
        if ok {
            self.reloaded.load(Ordering::Relaxed)
        } else {
            self.reload_failed.load(Ordering::Relaxed)
        }
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One read lock per handshake (not per message); a poisoned lock still holds a
        // valid key.
        let current = match self.current.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(current.clone())
    }
}

/// TLS for the server's listeners: the acceptor the dataplane uses and the handle that
/// reloads its certificate.
pub struct TlsServer {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    cert: Arc<ReloadableCert>,
    acceptor: TlsAcceptor,
}

impl TlsServer {
    /// Reads the certificate and key and builds the server configuration.
    pub fn start(settings: &TlsSettings) -> anyhow::Result<TlsServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_certified_key(settings, &provider)?;
        let cert = Arc::new(ReloadableCert {
            current: RwLock::new(Arc::new(key)),
            reloaded: AtomicU64::new(0),
            reload_failed: AtomicU64::new(0),
        });
        let config = server_config(settings, &provider, &cert, &settings.alpn)?;
        let acceptor = TlsAcceptor::new(Arc::new(config), Arc::new(TlsStats::default()));
        Ok(TlsServer {
            settings: settings.clone(),
            provider,
            cert,
            acceptor,
        })
    }

    /// An acceptor for an HTTPS endpoint of this server (the dispatch directory): the
    /// same certificate, reloaded with it, the same protocol versions, ALPN `http/1.1`.
    pub fn https_acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let alpn = ["http/1.1".to_owned()];
        let config = server_config(&self.settings, &self.provider, &self.cert, &alpn)?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// The acceptor every core's connections share.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// What the metrics endpoint renders: handshake and failure counts, reloads.
    pub fn metrics(&self) -> TlsMetrics {
        TlsMetrics {
            stats: self.acceptor.stats().clone(),
            cert: self.cert.clone(),
        }
    }

    /// A handle that reloads the certificate (for the signal thread).
    pub fn reloader(&self) -> CertReloader {
        CertReloader {
            settings: self.settings.clone(),
            provider: self.provider.clone(),
            cert: self.cert.clone(),
        }
    }
}

/// A rustls server configuration presenting `cert`, offering `alpn`, with session
/// resumption (tickets and a TLS 1.2 cache).
fn server_config(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
    cert: &Arc<ReloadableCert>,
    alpn: &[String],
) -> anyhow::Result<rustls::ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS: protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new().context("TLS: session ticket keys")?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    Ok(config)
}

/// The TLS figures a scrape renders.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    /// Handshakes and failures of every connection.
    pub stats: Arc<TlsStats>,
    /// Reload counts.
    pub cert: Arc<ReloadableCert>,
}

/// Reloads the certificate and key from their files (SIGHUP). See the module docs.
#[derive(Clone)]
pub struct CertReloader {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    cert: Arc<ReloadableCert>,
}

impl CertReloader {
    /// Reads both files again and swaps the new certificate in; on any error the old one
    /// stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = match load_certified_key(&self.settings, &self.provider) {
            Ok(key) => key,
            Err(e) => {
                self.cert.reload_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.cert.reloaded.fetch_add(1, Ordering::Relaxed);
        let mut current = match self.cert.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(key);
        Ok(())
    }
}

/// Reads the PEM certificate chain and private key and checks they belong together.
fn load_certified_key(
    settings: &TlsSettings,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(&settings.cert)
        .with_context(|| format!("TLS: cannot read {}", settings.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("TLS: bad PEM in {}", settings.cert.display()))?;
    if chain.is_empty() {
        bail!(
            "TLS: {} holds no certificate (expected PEM `CERTIFICATE` blocks)",
            settings.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key).with_context(|| {
        format!(
            "TLS: cannot read a private key from {} (PEM: PKCS#8, PKCS#1 or SEC1)",
            settings.key.display()
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "TLS: the key in {} does not fit the certificate in {}",
            settings.key.display(),
            settings.cert.display()
        )
    })
}
