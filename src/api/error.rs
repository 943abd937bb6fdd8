//! Every API error is one JSON shape, `{"error": {"code", "message", "field"}}`, with a
//! 4xx status for a client's mistake and 5xx only for the server's own trouble.
//!
//! `code` is a stable snake_case word: the protocol's error codes (docs/PROTOCOL.md,
//! e.g. `not_a_member`, `token_expired`) for what the control plane or storage refused,
//! and a few of the HTTP layer's own (`unauthorized`, `invalid_json`, `payload_too_large`,
//! `unsupported_media_type`, `route_not_found`, `method_not_allowed`, `busy`). `field` names the offending field (a JSON path such as
//! `content.text`, a path parameter or a query parameter) when there is one.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use petrel_control::api::ApiError;
use petrel_proto::pb;
use serde::Serialize;

use super::bridge::Unanswered;

/// An error response.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// The status.
    pub status: StatusCode,
    /// The stable code.
    pub code: String,
    /// For a human.
    pub message: String,
    /// The offending field, if any.
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    field: Option<&'a str>,
}

impl HttpError {
    /// An error with `status`, `code` and `message`, no field.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code: code.to_owned(),
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    /// `400 invalid_request` about `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", message).field(field)
    }

    /// Names the offending field.
    pub fn field(mut self, field: impl Into<String>) -> HttpError {
        self.field = Some(field.into());
        self
    }
}

/// The snake_case name of a protocol error code (`ERROR_CODE_NOT_A_MEMBER` → `not_a_member`).
pub fn code_name(code: pb::ErrorCode) -> String {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> HttpError {
        use pb::ErrorCode as C;
        let status = match e.code {
            C::NotFound => StatusCode::NOT_FOUND,
            C::NotAMember | C::PermissionDenied | C::Muted => StatusCode::FORBIDDEN,
            C::ContentTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            C::StorageFull | C::ShuttingDown | C::ServerBusy => StatusCode::SERVICE_UNAVAILABLE,
            C::Internal | C::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let retry_after_s = match (e.retry_after_ms, status) {
            (0, StatusCode::SERVICE_UNAVAILABLE) => Some(1),
            (0, _) => None,
            (ms, _) => Some(ms.div_ceil(1000)),
        };
        HttpError {
            status,
            code: code_name(e.code),
            message: e.message,
            field: None,
            retry_after_s,
        }
    }
}

impl From<Unanswered> for HttpError {
    fn from(u: Unanswered) -> HttpError {
        let mut e = match u {
            Unanswered::Busy => HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many API requests waiting for the server; retry after the delay",
            ),
            Unanswered::Stopped => HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
        };
        e.retry_after_s = Some(1);
        e
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: &self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_codes_become_snake_case_and_client_mistakes_are_4xx() {
        assert_eq!(code_name(pb::ErrorCode::NotAMember), "not_a_member");
        let e = HttpError::from(ApiError::new(pb::ErrorCode::NotFound, "no such group"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = HttpError::from(ApiError::new(pb::ErrorCode::TokenMalformed, "bad"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "token_malformed");
        let mut full = ApiError::new(pb::ErrorCode::StorageFull, "disk full");
        full.retry_after_ms = 5_000;
        let e = HttpError::from(full);
        assert_eq!(
            (e.status, e.retry_after_s),
            (StatusCode::SERVICE_UNAVAILABLE, Some(5))
        );
    }
}
