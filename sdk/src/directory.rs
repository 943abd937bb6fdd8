//! Asking the server's dispatch directory where to connect (docs/CLUSTER.md,
//! "Dispatch"): `GET <url>/v1/dispatch` with this client's token, answered with an
//! ordered list of endpoints — the nodes of this user's pool that are up, then the
//! backup domains. The connection task asks at start and after
//! [`crate::ClientConfig::directory_after_failures`] failed connects in a row, tries
//! the directory URLs in order, and keeps its configured endpoints (after the
//! directory's) for when every directory is unreachable.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Largest answer read (a few dozen endpoints).
const MAX_ANSWER: usize = 64 * 1024;

/// The directory's answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dispatch {
    /// The pool the server has this user in (`general` unless the app's backend chose).
    pub pool: String,
    /// Whether no node of that pool is up (the list starts with the backup domains).
    #[serde(default)]
    pub pool_down: bool,
    /// Where to connect, in order.
    pub endpoints: Vec<String>,
}

/// Asks each of `urls` in turn (each within `timeout`) and returns the first answer;
/// an error naming every failure if none answered.
pub async fn ask(urls: &[String], token: &str, timeout: Duration) -> Result<Dispatch, String> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut failures = Vec::new();
    for url in urls {
        match tokio::time::timeout(timeout, ask_one(&http, url, token)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => failures.push(format!("{url}: {e}")),
            Err(_) => failures.push(format!("{url}: no answer in {timeout:?}")),
        }
    }
    Err(failures.join("; "))
}

async fn ask_one(
    http: &HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    token: &str,
) -> Result<Dispatch, String> {
    let uri = format!("{}/v1/dispatch", url.trim_end_matches('/'));
    let request = Request::builder()
        .method(Method::GET)
        .uri(&uri)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = http.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a dispatch answer: {e}"))
}

/// Checks a directory URL: `http://host:port` (https is not implemented yet).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") && url.len() > "http://".len() {
        Ok(())
    } else {
        Err(format!(
            "directory URL must be http://host:port (https is not implemented yet), got {url:?}"
        ))
    }
}
