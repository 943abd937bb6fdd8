//! `GET /v1/media/{sha256}` (and `HEAD`): the stored bytes, with single-range requests
//! answered by tower-http's file service (`206` with `Content-Range`, `416` for a range
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
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;
use tower_http::services::ServeFile;

use super::App;
use super::error::{ApiError, ApiResult};
use super::store::is_sha256_hex;

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
        .meta(&sha)
        .map_err(|e| ApiError::io("reading blob metadata", &e))?
        .ok_or_else(|| ApiError::not_found("media"))?;
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
        let mut error = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the range is outside the file's {size} bytes or not a single byte range"),
        );
        error.content_range = Some(format!("bytes */{size}"));
        return Err(error);
    }
    if response.status().is_server_error() {
        return Err(ApiError::io(
            "serving a blob",
            &std::io::Error::other(format!("file service answered {}", response.status())),
        ));
    }
    let mut response = response.map(Body::new).into_response();
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
    Ok(response)
}
