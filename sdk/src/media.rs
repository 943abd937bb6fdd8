//! The media upload service's client (docs/MEDIA.md): [`MediaClient::upload`] sends a
//! file over HTTP with the login token and returns a [`MediaRef`] — the URI, size, MIME
//! type, SHA-256 and, for images, the server-made thumbnail and dimensions — which
//! [`MediaRef::media`] and the `*_content` builders turn into message content.
//!
//! Files up to [`CHUNK`] bytes go in one request; larger ones through an upload session
//! in [`CHUNK`]-sized pieces, each retried from the server's offset after a failure, so
//! memory stays at one chunk whatever the file's size. Plain HTTP/1.1 only: put the
//! service behind a TLS-terminating proxy and give the SDK an `http://` base URL on a
//! trusted network, or wait for TLS support (not implemented yet).

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use petrel_proto::pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::content;
use crate::error::SdkError;

/// Size of one request body: files up to this go in one request, larger ones in
/// chunks of this size.
pub const CHUNK: u64 = 4 << 20;
/// Attempts per chunk before an upload gives up.
const CHUNK_ATTEMPTS: usize = 3;

/// What an upload is for; the server applies each kind's size and MIME limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// A picture (thumbnailed by the server).
    Image,
    /// A voice message.
    Voice,
    /// A video.
    Video,
    /// Any other file.
    File,
}

impl MediaKind {
    fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Voice => "voice",
            MediaKind::Video => "video",
            MediaKind::File => "file",
        }
    }
}

/// An uploaded file, as the server described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// Where to download it: absolute if the server has a `public_url`, else a path
    /// relative to the media base URL.
    pub uri: String,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
    /// MIME type the server detected from the bytes.
    pub mime: String,
    /// The kind it was uploaded as.
    pub kind: MediaKind,
    /// Image width, pixels.
    #[serde(default)]
    pub width: Option<u32>,
    /// Image height, pixels.
    #[serde(default)]
    pub height: Option<u32>,
    /// Small JPEG thumbnail, standard base64 (images).
    #[serde(default)]
    pub thumbnail_base64: Option<String>,
    /// The thumbnail's MIME type.
    #[serde(default)]
    pub thumbnail_mime: Option<String>,
    /// Duration given at upload (voice, video), milliseconds.
    #[serde(default)]
    pub duration_ms: Option<u32>,
    /// Display name given at upload.
    #[serde(default)]
    pub name: Option<String>,
    /// The server already had these bytes.
    #[serde(default)]
    pub deduplicated: bool,
}

impl MediaRef {
    /// The message's media reference: URI, size, MIME type and thumbnail.
    pub fn media(&self) -> pb::Media {
        let mut media = content::media(&self.uri, self.size, &self.mime);
        if let Some(thumb) = &self.thumbnail_base64 {
            media.thumbnail_base64 = thumb.clone();
            media.thumbnail_mime_type = self
                .thumbnail_mime
                .clone()
                .unwrap_or_else(|| "image/jpeg".into());
        }
        media
    }

    /// Image content referencing this upload, with the server-measured dimensions.
    pub fn image_content(&self) -> pb::Content {
        content::image(
            self.media(),
            self.width.unwrap_or(0),
            self.height.unwrap_or(0),
        )
    }

    /// Voice content referencing this upload, with the duration given at upload.
    pub fn voice_content(&self) -> pb::Content {
        content::voice(self.media(), self.duration_ms.unwrap_or(0))
    }

    /// Video content referencing this upload; the client knows the frame size.
    pub fn video_content(&self, width: u32, height: u32) -> pb::Content {
        content::video(self.media(), width, height, self.duration_ms.unwrap_or(0))
    }
}

/// Optional details of an upload.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Voice/video duration, milliseconds (the server does not measure it).
    pub duration_ms: Option<u32>,
    /// A display name (never a path on the server).
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
    #[serde(default)]
    offset: Option<u64>,
}

#[derive(Deserialize)]
struct SessionStatus {
    upload_id: String,
    offset: u64,
}

/// An HTTP client for one media service, holding the login token it sends.
#[derive(Clone)]
pub struct MediaClient {
    base: String,
    token: Arc<Mutex<String>>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for MediaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn transfer(e: impl std::fmt::Display) -> SdkError {
    SdkError::MediaTransfer(e.to_string())
}

impl MediaClient {
    /// A client for the service at `base_url` (e.g. `http://10.0.0.5:9600`), sending
    /// `token` (the same as the IM login's). Needs a tokio runtime when used.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<MediaClient, SdkError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(SdkError::Config(format!(
                "media base URL must be http://host:port (https is not implemented yet), got {base_url:?}"
            )));
        }
        Ok(MediaClient {
            base,
            token: Arc::new(Mutex::new(token.into())),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Replaces the token (after a renewal).
    pub fn set_token(&self, token: impl Into<String>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token.into();
    }

    fn url(&self, path_or_uri: &str) -> String {
        if path_or_uri.starts_with("http://") || path_or_uri.starts_with("https://") {
            path_or_uri.to_owned()
        } else {
            format!("{}{path_or_uri}", self.base)
        }
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, SdkError> {
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .map_err(transfer)
    }

    /// Sends a request and returns the status and the whole body (answers are small).
    async fn call(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), SdkError> {
        let response = self.http.request(request).await.map_err(transfer)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(transfer)?
            .to_bytes();
        Ok((status, body))
    }

    fn error(status: StatusCode, body: &[u8]) -> (SdkError, Option<u64>) {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => (
                SdkError::Media {
                    status: status.as_u16(),
                    code: e.error,
                    message: e.message,
                },
                e.offset,
            ),
            Err(_) => (
                SdkError::Media {
                    status: status.as_u16(),
                    code: "http".into(),
                    message: String::from_utf8_lossy(body).into_owned(),
                },
                None,
            ),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<T, SdkError> {
        let (status, body) = self.call(request).await?;
        if !status.is_success() {
            return Err(Self::error(status, &body).0);
        }
        serde_json::from_slice(&body).map_err(transfer)
    }

    /// Uploads the file at `path` as `kind`.
    pub async fn upload(&self, path: &Path, kind: MediaKind) -> Result<MediaRef, SdkError> {
        self.upload_with(path, kind, UploadOptions::default()).await
    }

    /// Uploads the file at `path` as `kind` with a duration and/or display name.
    pub async fn upload_with(
        &self,
        path: &Path,
        kind: MediaKind,
        options: UploadOptions,
    ) -> Result<MediaRef, SdkError> {
        let mut file = tokio::fs::File::open(path).await.map_err(transfer)?;
        let size = file.metadata().await.map_err(transfer)?.len();
        if size <= CHUNK {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await.map_err(transfer)?;
            let mut url = format!("{}/v1/media?kind={}", self.base, kind.as_str());
            if let Some(d) = options.duration_ms {
                url.push_str(&format!("&duration_ms={d}"));
            }
            if let Some(name) = &options.name {
                url.push_str("&name=");
                url.push_str(&percent_encode(name));
            }
            let request = self.request(Method::POST, &url, bytes.into())?;
            return self.json(request).await;
        }
        self.upload_chunked(file, size, kind, options).await
    }

    async fn upload_chunked(
        &self,
        mut file: tokio::fs::File,
        size: u64,
        kind: MediaKind,
        options: UploadOptions,
    ) -> Result<MediaRef, SdkError> {
        let create = serde_json::json!({
            "kind": kind,
            "size": size,
            "duration_ms": options.duration_ms,
            "name": options.name,
        });
        let body = Bytes::from(serde_json::to_vec(&create).map_err(transfer)?);
        let mut request = self.request(Method::POST, &format!("{}/v1/uploads", self.base), body)?;
        request.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        let session: SessionStatus = self.json(request).await?;
        let session_url = format!("{}/v1/uploads/{}", self.base, session.upload_id);
        let mut offset = session.offset;
        let mut failures = 0;
        let mut buf = vec![0u8; CHUNK as usize];
        while offset < size {
            use tokio::io::AsyncSeekExt as _;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(transfer)?;
            let want = (size - offset).min(CHUNK) as usize;
            file.read_exact(&mut buf[..want]).await.map_err(transfer)?;
            let url = format!("{session_url}?offset={offset}");
            let request = self.request(Method::PUT, &url, Bytes::copy_from_slice(&buf[..want]))?;
            let outcome = match self.call(request).await {
                Ok((status, body)) if status.is_success() => {
                    serde_json::from_slice::<SessionStatus>(&body).map_err(transfer)
                }
                Ok((status, body)) => {
                    let (error, server_offset) = Self::error(status, &body);
                    // Only a disagreement about the offset, or a cut chunk, is worth
                    // retrying; limits and auth are not.
                    if status != StatusCode::CONFLICT && status != StatusCode::BAD_REQUEST {
                        return Err(error);
                    }
                    match server_offset {
                        Some(o) => Ok(SessionStatus {
                            upload_id: session.upload_id.clone(),
                            offset: o,
                        }),
                        None => Err(error),
                    }
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(status) if status.offset > offset => {
                    offset = status.offset;
                    failures = 0;
                }
                other => {
                    failures += 1;
                    if failures >= CHUNK_ATTEMPTS {
                        return Err(other.err().unwrap_or_else(|| {
                            SdkError::MediaTransfer("the upload made no progress".into())
                        }));
                    }
                    // Ask where to resume.
                    let request = self.request(Method::GET, &session_url, Bytes::new())?;
                    if let Ok(status) = self.json::<SessionStatus>(request).await {
                        offset = status.offset;
                    }
                }
            }
        }
        let request = self.request(
            Method::POST,
            &format!("{session_url}/complete"),
            Bytes::new(),
        )?;
        self.json(request).await
    }

    /// Downloads `uri` (a [`MediaRef::uri`] or a message's `Media.uri`) into memory.
    pub async fn download(&self, uri: &str) -> Result<Vec<u8>, SdkError> {
        let request = self.request(Method::GET, &self.url(uri), Bytes::new())?;
        let (status, body) = self.call(request).await?;
        if status != StatusCode::OK {
            return Err(Self::error(status, &body).0);
        }
        Ok(body.to_vec())
    }

    /// Downloads `uri` into the file at `path`, streaming, and checks the bytes against
    /// the SHA-256 in the URI. Returns the length.
    pub async fn download_to(&self, uri: &str, path: &Path) -> Result<u64, SdkError> {
        let request = self.request(Method::GET, &self.url(uri), Bytes::new())?;
        let response = self.http.request(request).await.map_err(transfer)?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await.map_err(transfer)?.to_bytes();
            return Err(Self::error(status, &bytes).0);
        }
        let mut file = tokio::fs::File::create(path).await.map_err(transfer)?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(transfer)?;
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
                len += data.len() as u64;
                file.write_all(&data).await.map_err(transfer)?;
            }
        }
        file.flush().await.map_err(transfer)?;
        let sha = hex::encode(hasher.finalize());
        if !uri.trim_end_matches('/').ends_with(&sha) {
            return Err(SdkError::MediaTransfer(format!(
                "downloaded bytes hash to {sha}, which is not the one in {uri}"
            )));
        }
        Ok(len)
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_ref_becomes_image_content_with_its_thumbnail() {
        let r = MediaRef {
            uri: "/v1/media/ab".into(),
            sha256: "ab".into(),
            size: 10,
            mime: "image/png".into(),
            kind: MediaKind::Image,
            width: Some(4),
            height: Some(3),
            thumbnail_base64: Some("AAAA".into()),
            thumbnail_mime: Some("image/jpeg".into()),
            duration_ms: None,
            name: None,
            deduplicated: false,
        };
        let c = r.image_content();
        assert_eq!(content::summary(&c), "[image 4x3]");
        let Some(pb::content::Body::Image(image)) = c.body else {
            panic!()
        };
        let media = image.media.unwrap();
        assert_eq!(media.thumbnail_base64, "AAAA");
        assert_eq!(media.thumbnail_mime_type, "image/jpeg");
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
        assert!(MediaClient::new("https://x", "t").is_err());
    }
}
