//! The directory endpoint: `GET /v1/dispatch` with the client's own token
//! (`Authorization: Bearer <token>`, checked as the media service checks it), answered
//! with [`super::directory::Dispatch`] as JSON. On its own listener (`[dispatch] addr`),
//! a small thread and runtime of its own: it is for clients, where the API
//! (`api_addr`) is for the app's backend. HTTPS with the server's `[tls]` certificate
//! (`[dispatch] tls`, on whenever the server has one): the request carries the token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::directory::Directory;
use crate::http_serve::Limits;
use crate::media::auth::Authenticator;
use crate::media::error::ApiError;

struct App {
    directory: Arc<Directory>,
    auth: Authenticator,
}

/// Binds `addr` and serves the directory on a thread of its own until the process
/// exits, within `limits`, over HTTPS with `tls`. Returns the address bound (the port chosen, if 0 was
/// asked for).
pub fn start(
    addr: SocketAddr,
    directory: Arc<Directory>,
    auth: Authenticator,
    (limits, tls): (Limits, Option<tokio_rustls::TlsAcceptor>),
) -> anyhow::Result<SocketAddr> {
    let app = router(Arc::new(App { directory, auth }));
    crate::http_serve::serve_on_thread("dispatch", addr, app, limits, tls)
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
    let Some(answer) = app.directory.answer(claims.user) else {
        // The SDK asks the next directory, or keeps its endpoints.
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "this node has not read the pool assignments yet (NATS down, or without JetStream)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    tracing::debug!(user = claims.user, pool = %answer.pool, pool_down = answer.pool_down,
        "dispatch: answered");
    let mut response = axum::Json(answer).into_response();
    // Which nodes are up changes by the second: never from a cache.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
