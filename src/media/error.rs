//! The media service's errors: every failure is an HTTP status with a JSON body
//! `{"error": "<code>", "message": "<text>"}`. Client mistakes are 4xx; only the
//! server's own trouble (disk, I/O) is 5xx, and its detail goes to the log, not the
//! client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A failed request: its status, a stable machine-readable code and a sentence.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable code for programs (docs/MEDIA.md lists them).
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Extra fields of the body (e.g. the expected `offset`).
    pub offset: Option<u64>,
    /// For 416: the `Content-Range: bytes */LEN` header value.
    pub content_range: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            offset: None,
            content_range: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no token, or one that does not verify.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404.
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 413: over the kind's size limit.
    pub fn too_large(kind: &str, max: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{kind} uploads are limited to {max} bytes"),
        )
    }

    /// 400: the body ended before the length the client announced.
    pub fn truncated(message: impl Into<String>) -> ApiError {
        ApiError::bad_request("truncated", message)
    }

    /// 500 for I/O trouble on the server; the detail is logged, the client gets a
    /// generic sentence. A full disk is 507 so clients can tell it from a bug.
    pub fn io(context: &str, error: &std::io::Error) -> ApiError {
        if error.kind() == std::io::ErrorKind::StorageFull {
            tracing::warn!(%error, context, "media store: disk full");
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                "the server's disk is full; retry later",
            );
        }
        tracing::error!(%error, context, "media store I/O error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error while storing or reading media",
        )
    }

    /// The same error with an `offset` field.
    pub fn with_offset(mut self, offset: u64) -> ApiError {
        self.offset = Some(offset);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            message: &self.message,
            offset: self.offset,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"petrel-media\""),
            );
        }
        if let Some(range) = self.content_range
            && let Ok(value) = HeaderValue::from_str(&range)
        {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        response
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
