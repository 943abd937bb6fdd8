//! One-request uploads (`POST /v1/media?kind=…`, `PUT` too) and what every upload ends
//! with: the MIME check, the image probe and the commit into the content-addressed
//! store ([`finish`], shared with chunked sessions).
//!
//! The body is streamed to a temporary file while it is hashed and counted: memory
//! stays bounded whatever the size, a body over the kind's limit is refused (413) as soon
//! as it crosses it, and a body that ends early (connection lost before the announced
//! length) leaves nothing behind.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt as _;

use super::App;
use super::error::{ApiError, ApiResult};
use super::kind::{self, Kind};
use super::store::BlobMeta;
use super::thumbnail;

/// Query parameters of a one-request upload.
#[derive(Debug, Deserialize)]
pub struct UploadParams {
    /// What the upload is for (`image`, `voice`, `video`, `file`).
    pub kind: Kind,
    /// Duration of a voice message or video, milliseconds, as the client measured it.
    pub duration_ms: Option<u32>,
    /// The file's name for display; never used as a path.
    pub name: Option<String>,
}

/// The answer to a finished upload: what a message needs to reference the media.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MediaRef {
    /// Where to download it (`public_url` + `/v1/media/<sha256>`, or the path alone).
    pub uri: String,
    /// SHA-256 of the bytes, lowercase hex: the blob's name.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
    /// MIME type detected from the bytes.
    pub mime: String,
    /// The kind it was uploaded as.
    pub kind: Kind,
    /// Image width, pixels (images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height, pixels (images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A small JPEG, standard base64 (images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail_base64: Option<String>,
    /// `image/jpeg` when there is a thumbnail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail_mime: Option<String>,
    /// The client's duration, echoed (voice, video).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u32>,
    /// The client's display name, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether these bytes were already stored (the upload added nothing on disk).
    pub deduplicated: bool,
}

/// Longest display name, bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A display name is fine unless it could be mistaken for a path or hide text:
/// no `/`, `\`, control characters, and not `.` or `..`. It is never used as one.
pub fn check_name(name: Option<&str>) -> ApiResult<()> {
    let Some(name) = name else { return Ok(()) };
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(ApiError::bad_request(
            "bad_name",
            "name must be 1-255 bytes without '/', '\\' or control characters, not '.' or '..'",
        ));
    }
    Ok(())
}

/// Why receiving a body stopped.
pub enum Received {
    /// It went past the byte budget.
    TooLarge,
    /// The connection failed or ended before the body did.
    Truncated(String),
    /// Writing it failed.
    Io(std::io::Error),
}

/// Streams `body` into `file`, at most `budget` bytes, feeding `hasher` if given.
/// Returns the bytes written; the caller decides what a failure leaves behind.
pub async fn receive(
    body: Body,
    file: &mut tokio::fs::File,
    budget: u64,
    mut hasher: Option<&mut Sha256>,
) -> Result<u64, Received> {
    let mut body = body;
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Received::Truncated(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        written += data.len() as u64;
        if written > budget {
            return Err(Received::TooLarge);
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&data);
        }
        file.write_all(&data).await.map_err(Received::Io)?;
    }
    file.flush().await.map_err(Received::Io)?;
    Ok(written)
}

/// The announced `Content-Length`, if any.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What the client said about an upload, besides its bytes.
#[derive(Debug, Clone)]
pub struct Declared {
    /// The kind.
    pub kind: Kind,
    /// Voice/video duration.
    pub duration_ms: Option<u32>,
    /// Display name.
    pub name: Option<String>,
}

/// Checks a complete upload in `tmp` (`size` bytes hashing to `sha`) against its kind,
/// probes images, and commits it to the store. The temporary file is gone afterwards
/// whatever happens.
///
/// The checks and the probe read the file on a blocking thread; the store is then
/// asked from here (async), so a bucket's requests never wait inside a blocking thread
/// for another one (the media runtime has only a few).
pub async fn finish(
    app: Arc<App>,
    tmp: NamedTempFile,
    sha: String,
    size: u64,
    declared: Declared,
) -> ApiResult<MediaRef> {
    let limits = app.settings.limits(declared.kind).clone();
    if size == 0 {
        return Err(ApiError::bad_request("empty", "the upload has no bytes"));
    }
    if size > limits.max_bytes {
        return Err(ApiError::too_large(
            declared.kind.as_str(),
            limits.max_bytes,
        ));
    }
    let existing = app
        .store
        .meta_async(&sha)
        .await
        .map_err(|e| ApiError::io("reading blob metadata", &e))?;
    let thumbnail_max_side = app.settings.thumbnail_max_side;
    let kind = declared.kind;
    let known = existing.clone();
    let job = tokio::task::spawn_blocking(move || {
        let checked = check_and_probe(&tmp, size, kind, &limits, known, thumbnail_max_side);
        checked.map(|(meta, probed)| (tmp, meta, probed))
    });
    let (tmp, meta, probed) = job.await.map_err(|e| {
        tracing::error!(error = %e, "media: checking an upload panicked");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })??;
    let duplicate = if existing.is_some() {
        // The bytes are stored already; an image first uploaded as a `file` gets its
        // probe recorded now.
        if probed {
            app.store
                .write_meta_async(&sha, &meta)
                .await
                .map_err(|e| ApiError::io("writing blob metadata", &e))?;
        }
        drop(tmp);
        true
    } else {
        app.store
            .commit_async(tmp, &sha, &meta)
            .await
            .map_err(|e| ApiError::io("committing an upload", &e))?
    };
    tracing::debug!(sha, size, mime = %meta.mime, duplicate, "media stored");
    let image = declared.kind == Kind::Image;
    Ok(MediaRef {
        uri: app.uri_of(&sha),
        sha256: sha,
        size,
        mime: meta.mime,
        kind: declared.kind,
        width: meta.width.filter(|_| image),
        height: meta.height.filter(|_| image),
        thumbnail_mime: (image && meta.thumbnail_base64.is_some()).then(|| "image/jpeg".into()),
        thumbnail_base64: meta.thumbnail_base64.filter(|_| image),
        duration_ms: declared.duration_ms,
        name: declared.name,
        deduplicated: duplicate,
    })
}

/// The blob's metadata for an upload of `kind` in `tmp`: what is `known` of the same
/// bytes already, or the MIME type detected from the first bytes; refused if the type
/// is not one of the kind's; images probed (dimensions, thumbnail) unless known.
/// Returns the metadata and whether it was probed now. Blocking (file reads, decoding).
fn check_and_probe(
    tmp: &NamedTempFile,
    size: u64,
    kind: Kind,
    limits: &super::config::KindLimits,
    known: Option<BlobMeta>,
    thumbnail_max_side: u32,
) -> ApiResult<(BlobMeta, bool)> {
    let mut meta = match known {
        Some(meta) if !meta.mime.is_empty() => meta,
        _ => {
            let mut head = vec![0u8; kind::SNIFF_LEN];
            let n = read_head(tmp.path(), &mut head).map_err(|e| ApiError::io("sniffing", &e))?;
            BlobMeta {
                size,
                mime: kind::detect(&head[..n]).to_owned(),
                ..BlobMeta::default()
            }
        }
    };
    if !kind::allowed(&meta.mime, &limits.mime_types) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the bytes are {} (detected from the content), not one of the {} types: {}",
                meta.mime,
                kind.as_str(),
                limits.mime_types.join(", ")
            ),
        ));
    }
    let probed = kind == Kind::Image && meta.thumbnail_base64.is_none();
    if probed {
        let probe = thumbnail::probe(tmp.path(), thumbnail_max_side).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_image",
                format!("the image cannot be decoded: {e}"),
            )
        })?;
        meta.width = Some(probe.width);
        meta.height = Some(probe.height);
        meta.thumbnail_base64 = Some(probe.thumbnail_base64);
    }
    Ok((meta, probed))
}

fn read_head(path: &std::path::Path, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `POST /v1/media?kind=…` (and `PUT`): the whole file in one request body.
pub async fn upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<UploadParams>, QueryRejection>,
    body: Body,
) -> ApiResult<(StatusCode, Json<MediaRef>)> {
    app.auth.check(&headers)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    check_name(params.name.as_deref())?;
    let limits = app.settings.limits(params.kind);
    if content_length(&headers).is_some_and(|len| len > limits.max_bytes) {
        return Err(ApiError::too_large(params.kind.as_str(), limits.max_bytes));
    }
    let tmp = app
        .store
        .temp_file()
        .map_err(|e| ApiError::io("creating a temporary file", &e))?;
    let std_file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| ApiError::io("opening a temporary file", &e))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut hasher = Sha256::new();
    let size = match receive(body, &mut file, limits.max_bytes, Some(&mut hasher)).await {
        Ok(size) => size,
        Err(Received::TooLarge) => {
            return Err(ApiError::too_large(params.kind.as_str(), limits.max_bytes));
        }
        Err(Received::Truncated(why)) => {
            tracing::debug!(why, "media: upload body ended early");
            return Err(ApiError::truncated(format!(
                "the upload ended before its end ({why}); nothing was stored"
            )));
        }
        Err(Received::Io(e)) => return Err(ApiError::io("writing an upload", &e)),
    };
    drop(file);
    let sha = hex::encode(hasher.finalize());
    let declared = Declared {
        kind: params.kind,
        duration_ms: params.duration_ms,
        name: params.name,
    };
    let media = finish(app, tmp, sha, size, declared).await?;
    let status = if media.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(media)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_display_text_not_paths() {
        assert!(check_name(None).is_ok());
        assert!(check_name(Some("holiday photo.jpg")).is_ok());
        for bad in [
            "",
            ".",
            "..",
            "../../keys",
            "a/b",
            "a\\b",
            "a\nb",
            &"x".repeat(256),
        ] {
            assert!(check_name(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
