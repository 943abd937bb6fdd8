//! The directory endpoint: `GET /v1/dispatch` with the client's own token
//! (`Authorization: Bearer <token>`, checked as the media service checks it), answered
//! with [`super::directory::Dispatch`] as JSON. On its own listener (`[dispatch] addr`),
//! a small thread and runtime of its own: it is for clients, where the API
//! (`api_addr`) is for the app's backend.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::directory::Directory;
use crate::media::auth::Authenticator;
use crate::media::error::ApiError;

struct App {
    directory: Arc<Directory>,
    auth: Authenticator,
}

/// Binds `addr` and serves the directory on a thread of its own until the process
/// exits. Returns the address bound (the port chosen, if 0 was asked for).
pub fn start(
    addr: SocketAddr,
    directory: Arc<Directory>,
    auth: Authenticator,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for dispatch on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the dispatch runtime")?;
    let app = router(Arc::new(App { directory, auth }));
    std::thread::Builder::new()
        .name("petrel-dispatch".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(error) => {
                        tracing::error!(%error, "dispatch: cannot use the listener");
                        return;
                    }
                };
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::error!(%error, "dispatch: server stopped");
                }
            });
        })
        .context("cannot start the dispatch thread")?;
    Ok(local)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/dispatch", get(dispatch))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "the directory has one route: GET /v1/dispatch",
            )
        })
        .with_state(app)
}

async fn dispatch(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let claims = match app.auth.check(&headers) {
        Ok(claims) => claims,
        Err(e) => return e.into_response(),
    };
    let answer = app.directory.answer(claims.user);
    tracing::debug!(user = claims.user, pool = %answer.pool, pool_down = answer.pool_down,
        "dispatch: answered");
    let mut response = axum::Json(answer).into_response();
    // Which nodes are up changes by the second: never from a cache.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
