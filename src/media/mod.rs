//! The media upload service (`petrel serve --media-addr ADDR`, off by default): HTTP
//! upload and download of images, voice, video and files, authenticated with the IM
//! connection's tokens, stored content-addressed under `DATA_DIR/media`. Messages carry
//! only the answer's URI and thumbnail. docs/MEDIA.md is the client's reference.
//!
//! It runs inside the server process on its own threads — a small tokio runtime
//! (`petrel-media`), never on the per-core loops — and reads nothing of the server but
//! the key ring and the revocation list. Modules, one job each:
//! [`config`] (settings), [`kind`] (kinds, MIME sniffing), [`auth`] (bearer tokens),
//! [`store`] (content-addressed files), [`thumbnail`] (image probe), [`upload`]
//! (one-request uploads and the shared finish), [`session`] (chunked uploads),
//! [`download`] (range downloads), [`error`] (JSON errors).

pub mod auth;
pub mod config;
pub mod download;
pub mod error;
pub mod kind;
pub mod remote;
pub mod session;
pub mod store;
pub mod thumbnail;
pub mod upload;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use petrel_control::KeyRing;

pub use auth::RevocationSource;
pub use config::{MediaFile, MediaSettings};

use self::auth::Authenticator;
use self::error::ApiError;
use self::store::BlobStore;

/// What every handler shares.
pub struct App {
    /// Limits and options.
    pub settings: MediaSettings,
    /// The blob store.
    pub store: BlobStore,
    /// Token checks.
    pub auth: Authenticator,
    /// Upload sessions with a request in progress.
    pub busy: session::Busy,
}

impl App {
    /// The URI of blob `sha` as put in upload answers.
    pub fn uri_of(&self, sha: &str) -> String {
        format!(
            "{}/v1/media/{sha}",
            self.settings.public_url.as_deref().unwrap_or("")
        )
    }
}

/// The HTTP routes (docs/MEDIA.md).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/media", post(upload::upload).put(upload::upload))
        .route("/v1/media/{sha256}", get(download::download))
        .route("/v1/uploads", post(session::create))
        .route(
            "/v1/uploads/{id}",
            get(session::status)
                .put(session::put_chunk)
                .delete(session::abort),
        )
        .route("/v1/uploads/{id}/complete", post(session::complete))
        .fallback(|| async { ApiError::not_found("endpoint") })
        // Uploads are streamed to disk against each kind's own limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// Binds `addr` and serves the media API on a new `petrel-media` runtime until the
/// process exits. Returns the bound address (port 0 picks one).
pub fn start(
    settings: MediaSettings,
    addr: SocketAddr,
    data_dir: &Path,
    ring: KeyRing,
    revoked: RevocationSource,
) -> anyhow::Result<SocketAddr> {
    let mut store = BlobStore::open(&data_dir.join("media"))
        .with_context(|| format!("cannot open the media store in {}", data_dir.display()))?;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for media on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads)
        .max_blocking_threads(8)
        .thread_name("petrel-media")
        .enable_all()
        .build()
        .context("cannot start the media runtime")?;
    if let Some(s3) = &settings.s3 {
        let remote = remote::RemoteBlobs::new(s3)?;
        runtime.block_on(remote.check())?;
        tracing::info!(bucket = %s3.bucket, prefix = %s3.prefix, "media blobs in an object store");
        store = store.with_remote(remote);
    }
    let app = Arc::new(App {
        settings,
        store,
        auth: Authenticator::new(ring, revoked),
        busy: session::Busy::default(),
    });
    session::sweep(&app);
    std::thread::Builder::new()
        .name("petrel-media".into())
        .spawn(move || {
            runtime.block_on(async move {
                let sweeper = app.clone();
                tokio::spawn(async move {
                    let every = sweeper
                        .settings
                        .upload_session_ttl
                        .min(Duration::from_secs(600));
                    loop {
                        tokio::time::sleep(every).await;
                        let app = sweeper.clone();
                        let _ = tokio::task::spawn_blocking(move || session::sweep(&app)).await;
                    }
                });
                let limits = app.settings.limits;
                crate::http_serve::serve_std(listener, router(app), limits, None, "media").await;
            });
        })
        .context("cannot start the media thread")?;
    Ok(local)
}
