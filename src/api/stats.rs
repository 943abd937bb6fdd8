//! Requests served by the API, by method, route template and status, for `/metrics`
//! (`petrel_api_requests_total`), and the log line of each request.
//!
//! Counted in a small map behind a mutex held for one increment: API calls come from the
//! deployment's backend, not from every client message, and never from a core loop.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// (method, route template, status) → requests.
#[derive(Debug, Default)]
pub struct ApiStats {
    counts: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl ApiStats {
    fn count(&self, method: &str, route: &str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// Every (method, route, status, count), sorted.
    pub fn snapshot(&self) -> Vec<(String, String, u16, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((m, r, s), n)| (m.clone(), r.clone(), *s, *n))
            .collect()
    }
}

/// Middleware (outermost, so it sees 401s and 404s too): counts and logs every request
/// with its outcome. Successful message sends are logged at debug (a backend may send
/// many); everything else at info, server errors at warn.
pub async fn observe(State(stats): State<Arc<ApiStats>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    stats.count(&method, &route, status.as_u16());
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let status = status.as_u16();
    if status >= 500 {
        tracing::warn!(%method, %path, status, ms, "api request failed");
    } else if status < 300 && route == "/v1/messages" {
        tracing::debug!(%method, %path, status, ms, "api request");
    } else {
        tracing::info!(%method, %path, status, ms, "api request");
    }
    response
}
