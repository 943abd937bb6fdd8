//! `GET /v1/media/{sha256}` (and `HEAD`): the stored bytes, with single-range requests
//! answered by tower-http's file service (from a bucket: by `from_bucket`, the same
//! answers) (`206` with `Content-Range`, `416` for a range
//! outside the file, `Accept-Ranges: bytes`, `Last-Modified`). The `Content-Type` is the
//! MIME type detected at upload, served with `nosniff`; blobs never change, so they are
//! cacheable for good and their hash is their `ETag`.
//!
//! Any valid token may download any blob whose hash it knows: the hash (of the whole
//! file) is the capability, as a URI in a message is.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use tower::ServiceExt as _;
use tower_http::services::ServeFile;

use super::App;
use super::error::{ApiError, ApiResult};
use super::remote::RemoteBlobs;
use super::store::{BlobMeta, is_sha256_hex};

/// Serves one blob.
pub async fn download(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult<Response> {
    app.auth.check(request.headers())?;
    let Path(sha) = path.map_err(|e| ApiError::bad_request("bad_media_id", e.body_text()))?;
    if !is_sha256_hex(&sha) {
        return Err(ApiError::bad_request(
            "bad_media_id",
            "a media id is the SHA-256 of the file: 64 lowercase hex digits",
        ));
    }
    let meta = app
        .store
        .meta_async(&sha)
        .await
        .map_err(|e| ApiError::io("reading blob metadata", &e))?
        .ok_or_else(|| ApiError::not_found("media"))?;
    if let Some(remote) = app.store.remote() {
        let head = request.method() == axum::http::Method::HEAD;
        let response = from_bucket(remote, &sha, meta.size, request.headers(), head).await?;
        return Ok(with_blob_headers(response, &sha, &meta));
    }
    let size = std::fs::metadata(app.store.blob_path(&sha))
        .map_err(|e| ApiError::io("reading a blob", &e))?
        .len();
    let (parts, _) = request.into_parts();
    let request = Request::from_parts(parts, Body::empty());
    let response = ServeFile::new(app.store.blob_path(&sha))
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        return Err(range_not_satisfiable(size));
    }
    if response.status().is_server_error() {
        return Err(ApiError::io(
            "serving a blob",
            &std::io::Error::other(format!("file service answered {}", response.status())),
        ));
    }
    Ok(with_blob_headers(
        response.map(Body::new).into_response(),
        &sha,
        &meta,
    ))
}

/// The headers every blob answer carries: its detected type (with `nosniff`), cacheable
/// for good (blobs never change), its hash as the `ETag`.
fn with_blob_headers(mut response: Response, sha: &str, meta: &BlobMeta) -> Response {
    let headers = response.headers_mut();
    let mime = if meta.mime.is_empty() {
        "application/octet-stream"
    } else {
        &meta.mime
    };
    if let Ok(value) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// `416` for a blob of `size` bytes, with the `Content-Range` that names its length.
fn range_not_satisfiable(size: u64) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
        format!("the range is outside the file's {size} bytes or not a single byte range"),
    );
    error.content_range = Some(format!("bytes */{size}"));
    error
}

/// A blob kept in the bucket: all of it, or the one byte range asked for (`206` with
/// `Content-Range`; `416` for a range outside the blob or several ranges, as on disk),
/// streamed from the store without holding it in memory.
async fn from_bucket(
    remote: &RemoteBlobs,
    sha: &str,
    size: u64,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    let unsatisfiable = || range_not_satisfiable(size);
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| unsatisfiable())?;
            let ranges = http_range_header::parse_range_header(text)
                .and_then(|r| r.validate(size))
                .map_err(|_| unsatisfiable())?;
            match ranges.as_slice() {
                [one] => Some(*one.start()..*one.end() + 1),
                _ => return Err(unsatisfiable()),
            }
        }
    };
    let body = if head {
        // HEAD: the sidecar answered for size and type; no byte is fetched.
        Body::empty()
    } else {
        let got = remote.get(sha, range.clone()).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // A sidecar whose object was removed from the bucket by hand.
                ApiError::not_found("media")
            } else {
                ApiError::io("reading a blob from the bucket", &e)
            }
        })?;
        Body::from_stream(got.into_stream().map_err(std::io::Error::other))
    };
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_LENGTH,
            range.as_ref().map_or(size, |r| r.end - r.start),
        );
    builder = match &range {
        Some(r) => builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        ),
        None => builder.status(StatusCode::OK),
    };
    builder.body(body).map_err(|e| {
        ApiError::io(
            "building a blob answer",
            &std::io::Error::other(e.to_string()),
        )
    })
}
