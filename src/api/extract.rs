//! Request extractors that turn every client mistake into an [`HttpError`] naming the
//! field: a JSON body ([`ApiJson`]: content type, size limit, syntax, unknown or missing
//! fields, wrong types — the path into the document is tracked with
//! `serde_path_to_error`), path parameters ([`ApiPath`]) and query strings
//! ([`parse_query`]: integers only, unknown parameters refused).

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::HttpError;

/// A JSON body of type `T` (which should `deny_unknown_fields`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// The field a serde error is about: the path to where it happened, plus the name an
/// "unknown field" / "missing field" message quotes (those are raised at the parent).
fn field_of(path: &str, message: &str) -> Option<String> {
    let quoted = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.split_once(prefix))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name);
    let path = (path != ".").then_some(path);
    match (path, quoted) {
        // An unknown field is already on the path; a missing one is not.
        (Some(p), Some(q)) if p == q || p.ends_with(&format!(".{q}")) => Some(p.to_owned()),
        (Some(p), Some(q)) => Some(format!("{p}.{q}")),
        (Some(p), None) => Some(p.to_owned()),
        (None, Some(q)) => Some(q.to_owned()),
        (None, None) => None,
    }
}

/// Rewrites numbers written with a fraction of zero (`7.0`, `1e3`) as the integers they
/// are: JSON Schema (and so the OpenAPI document) counts them as integers, serde's `u64`
/// does not. Others (`7.5`, negative or beyond `u64`) stay floats and are refused where
/// an integer is expected.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && (0.0..=u64::MAX as f64).contains(&f)
                && f < u64::MAX as f64
            {
                *value = Value::from(f as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Fields that are objects wherever they appear in this API's bodies. serde's derive
/// would also take an array of a struct's fields in order; the API promises objects.
const OBJECT_FIELDS: [&str; 2] = ["conversation", "media"];

/// The path of the first [`OBJECT_FIELDS`] field holding something other than an object
/// (or `null`), if any.
fn array_for_object(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(map) => map.iter().find_map(|(key, v)| {
            if OBJECT_FIELDS.contains(&key.as_str()) && !(v.is_object() || v.is_null()) {
                Some(join(key))
            } else {
                array_for_object(v, &join(key))
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| array_for_object(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Parses `bytes` as JSON into `T`, with the error naming the field.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    integral_floats_as_integers(&mut value);
    if let Some(field) = array_for_object(&value, "") {
        return Err(HttpError::invalid(&field, "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let mut error = HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", message.clone());
        error.field = field_of(&path, &message);
        error
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request bodies are limited to {} bytes", super::BODY_LIMIT),
                )
            } else {
                HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    rejection.body_text(),
                )
            }
        })?;
        from_json(&bytes).map(ApiJson)
    }
}

/// Path parameters of type `T`; a parameter that does not parse names itself.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        // A route with one parameter reports a parse error without its name.
        let only = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) if params.iter().count() == 1 => {
                params.iter().next().map(|(k, _)| k.to_owned())
            }
            _ => None,
        };
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                use axum::extract::path::ErrorKind;
                let message = e.body_text();
                let field = match e.into_kind() {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::DeserializeError { key, .. } => Some(key),
                    _ => only,
                };
                let mut error = HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
                error.field = field;
                Err(error)
            }
            Err(other) => Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                other.body_text(),
            )),
        }
    }
}

/// Parses a query string of unsigned integers: `names` are the parameters allowed; each
/// value found is stored at the same index of the result. Unknown parameters, repeats and
/// values that are not integers are refused, naming the parameter.
pub fn parse_query<const N: usize>(
    query: Option<&str>,
    names: [&str; N],
) -> Result<[Option<u64>; N], HttpError> {
    let mut values = [None; N];
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(i) = names.iter().position(|n| *n == key) else {
            return Err(HttpError::invalid(
                key,
                format!("unknown query parameter; allowed: {}", names.join(", ")),
            ));
        };
        if values[i].is_some() {
            return Err(HttpError::invalid(key, "query parameter given twice"));
        }
        values[i] = Some(value.parse::<u64>().map_err(|_| {
            HttpError::invalid(key, format!("{value:?} is not an unsigned integer"))
        })?);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        user: u64,
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        text: String,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = from_json::<Outer>(br#"{"user": "x", "inner": {"text": "a"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("user"));
        let e =
            from_json::<Outer>(br#"{"user": 1, "inner": {"text": "a", "bold": 1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("inner.bold"));
        let e = from_json::<Outer>(br#"{"user": 1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("inner"));
        let e = from_json::<Outer>(br#"{"user": 1,"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert!(from_json::<Outer>(br#"{"user": 1, "inner": {"text": "a"}}"#).is_ok());
        // JSON Schema's integers include 7.0; 7.5 and -1 are not u64s.
        assert_eq!(
            from_json::<Outer>(br#"{"user": 7.0, "inner": {"text": "a"}}"#)
                .unwrap()
                .user,
            7
        );
        let e = from_json::<Outer>(br#"{"user": 7.5, "inner": {"text": "a"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("user"));
        let e = from_json::<Outer>(br#"{"user": -1, "inner": {"text": "a"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("user"));
        // Objects stay objects: no struct from an array of its fields.
        let e = from_json::<Outer>(br#"[1, {"text": "a"}]"#).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        let e = from_json::<serde_json::Value>(br#"{"content": {"media": ["u"]}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("content.media"));
    }

    #[test]
    fn query_parameters_are_integers_and_known() {
        let q = parse_query(Some("user=3&limit=10"), ["user", "before_seq", "limit"]).unwrap();
        assert_eq!(q, [Some(3), None, Some(10)]);
        let e = parse_query(Some("user=x"), ["user"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("user"));
        let e = parse_query(Some("nope=1"), ["user"]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("nope"));
    }
}
