//! Chunked, resumable uploads for large files:
//!
//! 1. `POST /v1/uploads` `{"kind": "video", "size": N, ...}` → `201 {"upload_id", "offset": 0, "size"}`
//! 2. `PUT /v1/uploads/{id}?offset=K` with the next bytes → `{"offset": K + len}`
//!    (fsynced before the answer: an acknowledged offset survives a crash)
//! 3. after a lost connection, `GET /v1/uploads/{id}` → the offset to resume from
//! 4. `POST /v1/uploads/{id}/complete` → the same answer as a one-request upload
//!
//! A session is two files in `media/uploads/`: `<id>.json` (owner, kind, size, ...)
//! and `<id>.part` (the bytes so far). Only its owner (the token's user) may touch it;
//! another user gets 403. A chunk that fails half-way is cut back to the offset it
//! started at. Sessions untouched for `upload_session_ttl` are deleted.

use std::collections::HashSet;
use std::io::{self, Read as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempPath};

use super::App;
use super::error::{ApiError, ApiResult};
use super::kind::Kind;
use super::upload::{self, Declared, MediaRef, Received};

/// The body of `POST /v1/uploads`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// What the upload is for.
    pub kind: Kind,
    /// Total length, bytes.
    pub size: u64,
    /// Voice/video duration, milliseconds.
    pub duration_ms: Option<u32>,
    /// Display name.
    pub name: Option<String>,
}

/// A session as stored in `<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    owner: u64,
    kind: Kind,
    size: u64,
    duration_ms: Option<u32>,
    name: Option<String>,
}

/// Where a session stands.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The session's id.
    pub upload_id: String,
    /// Bytes received and synced so far: where the next chunk starts.
    pub offset: u64,
    /// The declared total.
    pub size: u64,
    /// The declared kind.
    pub kind: Kind,
}

/// `?offset=` of a chunk.
#[derive(Debug, Deserialize)]
pub struct ChunkParams {
    /// Where this chunk starts.
    pub offset: u64,
}

/// Sessions with a request in progress: a second concurrent request is refused (409)
/// rather than interleaving writes.
#[derive(Debug, Default)]
pub struct Busy(Mutex<HashSet<String>>);

struct BusyGuard<'a>(&'a Busy, String);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Busy {
    fn claim(&self, id: &str) -> ApiResult<BusyGuard<'_>> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(id.to_owned()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "busy",
                "another request on this upload is in progress",
            ));
        }
        Ok(BusyGuard(self, id.to_owned()))
    }
}

fn is_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn paths(app: &App, id: &str) -> (PathBuf, PathBuf) {
    let dir = app.store.uploads_dir();
    (
        dir.join(format!("{id}.json")),
        dir.join(format!("{id}.part")),
    )
}

/// Loads session `id` for `user`: 400 for a malformed id, 404 if missing or expired,
/// 403 if it is another user's.
fn load(app: &App, id: &str, user: u64) -> ApiResult<(Session, u64)> {
    if !is_session_id(id) {
        return Err(ApiError::bad_request(
            "bad_upload_id",
            "an upload id is 32 hex digits",
        ));
    }
    let (meta, part) = paths(app, id);
    let bytes = match std::fs::read(&meta) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ApiError::not_found("upload")),
        Err(e) => return Err(ApiError::io("reading an upload session", &e)),
    };
    let session: Session = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::io("parsing an upload session", &io::Error::other(e)))?;
    if session.owner != user {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this upload belongs to another user",
        ));
    }
    let part_meta = std::fs::metadata(&part).map_err(|e| ApiError::io("reading an upload", &e))?;
    let idle = part_meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    if idle > app.settings.upload_session_ttl {
        remove(app, id);
        return Err(ApiError::not_found("upload"));
    }
    Ok((session, part_meta.len()))
}

fn remove(app: &App, id: &str) {
    let (meta, part) = paths(app, id);
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(meta);
}

/// Deletes sessions idle longer than the TTL (at start and periodically).
pub fn sweep(app: &App) {
    let Ok(entries) = std::fs::read_dir(app.store.uploads_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .map(str::to_owned)
        else {
            continue;
        };
        let (meta, part) = paths(app, &id);
        // A session's age is that of its last chunk (the `.part` file), whichever of
        // its two files this entry is; a stray file counts from its own change.
        let aged = if part.exists() {
            part.clone()
        } else {
            path.clone()
        };
        let idle = std::fs::metadata(&aged)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        let orphan = !is_session_id(&id) || !meta.exists() || !part.exists();
        // An orphan younger than a minute may be a session being created right now.
        let orphan = orphan && idle > std::time::Duration::from_secs(60);
        if orphan || idle > app.settings.upload_session_ttl {
            tracing::debug!(id, "media: removing an expired upload session");
            if is_session_id(&id) {
                remove(app, &id);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// `POST /v1/uploads`: opens a session.
pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Status>)> {
    let claims = app.auth.check(&headers)?;
    let Json(req) = body.map_err(|e| ApiError::bad_request("bad_json", e.body_text()))?;
    upload::check_name(req.name.as_deref())?;
    let limits = app.settings.limits(req.kind);
    if req.size > limits.max_bytes {
        return Err(ApiError::too_large(req.kind.as_str(), limits.max_bytes));
    }
    if req.size == 0 {
        return Err(ApiError::bad_request(
            "empty",
            "an upload has at least one byte",
        ));
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    let session = Session {
        owner: claims.user,
        kind: req.kind,
        size: req.size,
        duration_ms: req.duration_ms,
        name: req.name,
    };
    let (meta, part) = paths(&app, &id);
    let write = || -> io::Result<()> {
        std::fs::File::create(&part)?.sync_all()?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".session-")
            .tempfile_in(app.store.uploads_dir())?;
        std::io::Write::write_all(
            &mut tmp,
            &serde_json::to_vec(&session).map_err(io::Error::other)?,
        )?;
        tmp.as_file().sync_all()?;
        tmp.persist(&meta).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| {
        remove(&app, &id);
        ApiError::io("creating an upload session", &e)
    })?;
    Ok((
        StatusCode::CREATED,
        Json(Status {
            upload_id: id,
            offset: 0,
            size: session.size,
            kind: session.kind,
        }),
    ))
}

fn id_of(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request("bad_upload_id", e.body_text()))
}

/// `GET /v1/uploads/{id}`: where to resume.
pub async fn status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Status>> {
    let claims = app.auth.check(&headers)?;
    let id = id_of(path)?;
    let (session, offset) = load(&app, &id, claims.user)?;
    Ok(Json(Status {
        upload_id: id,
        offset,
        size: session.size,
        kind: session.kind,
    }))
}

/// `PUT /v1/uploads/{id}?offset=K`: appends the body at `K`, which must be the current
/// offset (409 with the right one otherwise).
pub async fn put_chunk(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ChunkParams>, QueryRejection>,
    body: Body,
) -> ApiResult<Json<Status>> {
    let claims = app.auth.check(&headers)?;
    let id = id_of(path)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let _busy = app.busy.claim(&id)?;
    let (session, offset) = load(&app, &id, claims.user)?;
    if params.offset != offset {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            format!(
                "this upload continues at offset {offset}, not {}",
                params.offset
            ),
        )
        .with_offset(offset));
    }
    let budget = session.size - offset;
    if upload::content_length(&headers).is_some_and(|len| len > budget) {
        return Err(too_far(&session, offset));
    }
    let (_, part) = paths(&app, &id);
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .await
        .map_err(|e| ApiError::io("opening an upload", &e))?;
    let outcome = upload::receive(body, &mut file, budget, None).await;
    let cut_back = |file: tokio::fs::File| async move {
        let _ = file.set_len(offset).await;
        let _ = file.sync_all().await;
    };
    let written = match outcome {
        Ok(n) => n,
        Err(Received::TooLarge) => {
            cut_back(file).await;
            return Err(too_far(&session, offset));
        }
        Err(Received::Truncated(why)) => {
            cut_back(file).await;
            tracing::debug!(why, id, "media: chunk ended early");
            return Err(ApiError::truncated(format!(
                "the chunk ended before its end ({why}); resume at offset {offset}"
            ))
            .with_offset(offset));
        }
        Err(Received::Io(e)) => {
            cut_back(file).await;
            return Err(ApiError::io("writing a chunk", &e));
        }
    };
    file.sync_data()
        .await
        .map_err(|e| ApiError::io("syncing a chunk", &e))?;
    Ok(Json(Status {
        upload_id: id,
        offset: offset + written,
        size: session.size,
        kind: session.kind,
    }))
}

fn too_far(session: &Session, offset: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the chunk goes past the declared size {} (offset {offset})",
            session.size
        ),
    )
    .with_offset(offset)
}

/// `POST /v1/uploads/{id}/complete`: checks and stores the assembled file.
pub async fn complete(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<MediaRef>)> {
    let claims = app.auth.check(&headers)?;
    let id = id_of(path)?;
    let busy = app.busy.claim(&id)?;
    let (session, offset) = load(&app, &id, claims.user)?;
    if offset != session.size {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "incomplete",
            format!("only {offset} of {} bytes have arrived", session.size),
        )
        .with_offset(offset));
    }
    // Move the bytes into the store's temporary directory; from here on the session is
    // over whether or not the content is accepted.
    let (meta, part) = paths(&app, &id);
    let tmp_path = app
        .store
        .temp_file()
        .map_err(|e| ApiError::io("creating a temporary file", &e))?
        .into_temp_path();
    std::fs::rename(&part, &tmp_path).map_err(|e| ApiError::io("moving an upload", &e))?;
    let _ = std::fs::remove_file(meta);
    drop(busy);
    let hashed = tokio::task::spawn_blocking(move || -> io::Result<(NamedTempFile, String)> {
        let file = std::fs::File::open(&tmp_path)?;
        let sha = hash(&file)?;
        let tmp = NamedTempFile::from_parts(file, TempPath::try_from_path(tmp_path.keep()?)?);
        Ok((tmp, sha))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    let (tmp, sha) = hashed.map_err(|e| ApiError::io("hashing an upload", &e))?;
    let declared = Declared {
        kind: session.kind,
        duration_ms: session.duration_ms,
        name: session.name,
    };
    let media = upload::finish(app, tmp, sha, offset, declared).await?;
    let status = if media.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(media)))
}

fn hash(mut file: &std::fs::File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `DELETE /v1/uploads/{id}`: abandons a session.
pub async fn abort(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let claims = app.auth.check(&headers)?;
    let id = id_of(path)?;
    let _busy = app.busy.claim(&id)?;
    load(&app, &id, claims.user)?;
    remove(&app, &id);
    Ok(StatusCode::NO_CONTENT)
}
