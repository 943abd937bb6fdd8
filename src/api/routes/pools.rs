//! A user's dispatch pool (docs/CLUSTER.md, "Dispatch"): read it
//! (`GET /v1/users/{user_id}/pool`) or put the user in one (`PUT`, body
//! `{"pool": "dedicated"}`; `"general"` takes them out of every other). Kept in the
//! cluster's NATS key-value bucket ([`crate::dispatch::pools`]), so it holds on every
//! node; the directory answers with the new pool within a NATS round trip. Only a
//! cluster has pools: a single server answers `409 no_cluster`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{AppState, user_id};
use crate::api::error::HttpError;
use crate::api::extract::{ApiJson, ApiPath};
use crate::dispatch::PoolBook;
use crate::dispatch::pools::PoolError;

/// A user's pool.
#[derive(Debug, Serialize)]
pub struct PoolOut {
    user_id: u64,
    pool: String,
}

/// Body of `PUT /v1/users/{user_id}/pool`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolBody {
    pool: String,
}

fn book(state: &AppState) -> Result<&Arc<PoolBook>, HttpError> {
    state.pools.as_ref().ok_or_else(|| {
        HttpError::new(
            StatusCode::CONFLICT,
            "no_cluster",
            "pools are sets of cluster nodes: this server is no cluster ([cluster] table)",
        )
    })
}

/// `GET /v1/users/{user_id}/pool`.
pub async fn get(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<u64>,
) -> Result<Json<PoolOut>, HttpError> {
    let user = user_id("user_id", user)?;
    let pool = book(&state)?.pool_of(user).ok_or_else(|| {
        unavailable("the pool assignments are not read yet (NATS down, or without JetStream)")
    })?;
    Ok(Json(PoolOut {
        user_id: user,
        pool,
    }))
}

/// `PUT /v1/users/{user_id}/pool`.
pub async fn put(
    State(state): State<AppState>,
    ApiPath(user): ApiPath<u64>,
    ApiJson(body): ApiJson<PoolBody>,
) -> Result<Json<PoolOut>, HttpError> {
    let user = user_id("user_id", user)?;
    if body.pool.is_empty() || body.pool.len() > 32 {
        return Err(HttpError::invalid(
            "pool",
            "a pool name is 1 to 32 characters",
        ));
    }
    let book = book(&state)?;
    match book.set(user, &body.pool).await {
        Ok(()) => Ok(Json(PoolOut {
            user_id: user,
            pool: body.pool,
        })),
        Err(e @ PoolError::UnknownPool(..)) => {
            Err(
                HttpError::new(StatusCode::BAD_REQUEST, "unknown_pool", e.to_string())
                    .field("pool"),
            )
        }
        Err(e @ PoolError::Unavailable(_)) => Err(unavailable(e.to_string())),
    }
}

/// `503 unavailable`, retry in a second.
fn unavailable(message: impl Into<String>) -> HttpError {
    let mut error = HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    error.retry_after_s = Some(1);
    error
}
