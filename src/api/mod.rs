//! The server HTTP API for the deployment's own backend (`petrel serve --api-addr`,
//! docs/API.md, the OpenAPI document docs/openapi.json served at `/v1/openapi.json`).
//!
//! **Where it runs.** On its own thread (`petrel-api`) with a one-thread tokio runtime
//! serving axum; never on a core loop. What needs the control plane travels to the home
//! core over [`bridge`] (bounded; full → `503 busy` with `Retry-After`) and is handled by
//! the sans-IO [`petrel_control::Control::handle_api`], whose answer comes back over a
//! oneshot — the same plane, storage path and fan-out as client frames.
//!
//! **Modules.** [`auth`] (API key, constant-time), [`extract`] (bodies, paths and queries
//! with errors naming the field), [`error`] (the one JSON error shape), [`json`] (shared
//! shapes), [`routes`] (the `/v1` handlers), [`stats`] (request log and
//! `petrel_api_requests_total`).

pub mod auth;
pub mod bridge;
pub mod error;
pub mod extract;
pub mod json;
pub mod routes;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};

use self::auth::ApiKey;
use self::bridge::ApiBridge;
use self::error::HttpError;
use self::routes::{
    AppState, chatrooms, conversations, messages, pools, presence, sessions, tokens,
};
use self::stats::ApiStats;
use crate::http_serve::Limits;

/// Largest request body, bytes (a message's content is at most 60 KiB encoded).
pub const BODY_LIMIT: usize = 128 * 1024;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// What the API needs to start.
pub struct ApiSettings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The key requests must carry.
    pub key: ApiKey,
    /// The user `"system": true` messages are sent as.
    pub system_user: Option<u64>,
    /// The users' dispatch pools (a cluster only).
    pub pools: Option<Arc<crate::dispatch::PoolBook>>,
}

/// The `/v1` router.
pub fn router(state: AppState, key: ApiKey, stats: Arc<ApiStats>) -> Router {
    let protected = Router::new()
        .route("/v1/tokens", post(tokens::issue))
        .route("/v1/tokens/revoke", post(tokens::revoke))
        .route(
            "/v1/users/{user_id}/tokens/revoke",
            post(tokens::revoke_user),
        )
        .route("/v1/users/{user_id}/sessions", get(sessions::list))
        .route("/v1/users/{user_id}/kick", post(sessions::kick))
        .route("/v1/users/{user_id}/pool", get(pools::get).put(pools::put))
        .route("/v1/presence", post(presence::presence))
        .route("/v1/messages", post(messages::send))
        .route("/v1/messages/recall", post(messages::recall))
        .route("/v1/messages/edit", post(messages::edit))
        .route(
            "/v1/conversations/{kind}/{id}/messages",
            get(messages::history),
        )
        .route(
            "/v1/conversations/{kind}/{id}/messages/{seq}/reads",
            get(messages::read_count),
        )
        .route("/v1/groups", post(conversations::create_group))
        .route(
            "/v1/groups/{group_id}/members",
            get(conversations::group_members).post(conversations::add_members),
        )
        .route(
            "/v1/groups/{group_id}/members/remove",
            post(conversations::remove_members),
        )
        .route(
            "/v1/groups/{group_id}/members/{user_id}/role",
            put(conversations::set_role),
        )
        .route("/v1/groups/{group_id}/leave", post(conversations::leave))
        .route(
            "/v1/groups/{group_id}/dissolve",
            post(conversations::dissolve),
        )
        .route("/v1/groups/{group_id}/mute", post(conversations::mute))
        .route("/v1/chatrooms", post(chatrooms::open))
        .route("/v1/chatrooms/{room_id}/members", get(chatrooms::members))
        .route("/v1/chatrooms/{room_id}/kick", post(chatrooms::kick))
        .route("/v1/chatrooms/{room_id}/close", post(chatrooms::close))
        .route("/v1/public-accounts", post(conversations::create_account))
        .route(
            "/v1/public-accounts/{account_id}/followers",
            get(conversations::followers).post(conversations::follow),
        )
        .route(
            "/v1/public-accounts/{account_id}/followers/remove",
            post(conversations::unfollow),
        )
        .route_layer(from_fn_with_state(Arc::new(key), auth::require_key))
        .with_state(state);
    let public = Router::new().route(
        "/v1/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
    );
    protected
        .merge(public)
        .fallback(|| async {
            HttpError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        })
        .method_not_allowed_fallback(|| async {
            HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
            .into_response()
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(stats, stats::observe))
}

/// A running API endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens (the port chosen, if 0 was asked for).
    pub addr: SocketAddr,
}

/// Binds `settings.addr` and serves the API on a thread of its own until the process
/// exits.
pub fn start(
    settings: ApiSettings,
    bridge: ApiBridge,
    stats: Arc<ApiStats>,
) -> anyhow::Result<Endpoint> {
    let app = router(
        AppState {
            bridge,
            system_user: settings.system_user,
            pools: settings.pools,
        },
        settings.key,
        stats,
    );
    let addr = crate::http_serve::serve_on_thread("api", settings.addr, app, Limits::API, None)?;
    Ok(Endpoint { addr })
}
