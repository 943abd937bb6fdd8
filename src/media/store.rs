//! Content-addressed blob storage on local disk, under `DATA_DIR/media`:
//!
//! ```text
//! media/blobs/ab/abcdef…   the bytes, named by their SHA-256 (lowercase hex)
//! media/blobs/ab/abcdef….json   what the server learnt of them (MIME, dimensions, thumbnail)
//! media/tmp/               uploads being received (same file system: rename is atomic)
//! media/uploads/           chunked upload sessions (see `session`)
//! ```
//!
//! With `[media.s3]` the blobs and sidecars live in a bucket instead (`remote`); the
//! temporary files and upload sessions stay here.
//!
//! An upload is written to a temporary file in `tmp/`, fsynced, then linked to its hash
//! name without replacing an existing one (`persist_noclobber`): the same bytes
//! uploaded twice are stored once, and a blob name never points at a half-written
//! file. Temporary files of a crashed server are removed at start. Client-supplied
//! names never reach a path: only hashes (checked to be 64 hex digits) do.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use super::remote::RemoteBlobs;

/// What is known of a stored blob (its `.json` sidecar).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMeta {
    /// Length in bytes.
    pub size: u64,
    /// MIME type detected from the bytes.
    pub mime: String,
    /// Image width in pixels (images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height in pixels (images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A small JPEG, base64 (images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_base64: Option<String>,
}

/// The media directory, and the bucket when blobs live in one.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    remote: Option<Arc<RemoteBlobs>>,
}

/// Whether `id` is a blob name: exactly 64 lowercase hex digits.
pub fn is_sha256_hex(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl BlobStore {
    /// Opens (creating) `root` and removes temporary files left by a crash.
    pub fn open(root: &Path) -> io::Result<BlobStore> {
        let store = BlobStore {
            root: root.to_path_buf(),
            remote: None,
        };
        std::fs::create_dir_all(store.blobs_dir())?;
        std::fs::create_dir_all(store.uploads_dir())?;
        let tmp = store.tmp_dir();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(store)
    }

    /// Keeps blobs in `remote` from now on (temporary files stay local).
    pub fn with_remote(mut self, remote: RemoteBlobs) -> BlobStore {
        self.remote = Some(Arc::new(remote));
        self
    }

    /// The bucket, when blobs live in one.
    pub fn remote(&self) -> Option<&RemoteBlobs> {
        self.remote.as_deref()
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where chunked upload sessions live.
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// A new temporary file for an incoming upload (deleted when dropped unless
    /// committed).
    pub fn temp_file(&self) -> io::Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix("up-")
            .tempfile_in(self.tmp_dir())
    }

    /// The path of blob `sha` (which must be [`is_sha256_hex`]).
    pub fn blob_path(&self, sha: &str) -> PathBuf {
        debug_assert!(is_sha256_hex(sha));
        self.blobs_dir().join(&sha[..2]).join(sha)
    }

    fn meta_path(&self, sha: &str) -> PathBuf {
        self.blobs_dir().join(&sha[..2]).join(format!("{sha}.json"))
    }

    /// The sidecar of blob `sha`, if the blob exists: from the bucket, or read from
    /// disk (one small file).
    pub async fn meta_async(&self, sha: &str) -> io::Result<Option<BlobMeta>> {
        match &self.remote {
            Some(remote) => remote.meta(sha).await,
            None => self.meta(sha),
        }
    }

    /// Writes the sidecar of `sha`: one PUT to the bucket, or [`BlobStore::write_meta`]
    /// on a blocking thread.
    pub async fn write_meta_async(&self, sha: &str, meta: &BlobMeta) -> io::Result<()> {
        if let Some(remote) = &self.remote {
            return remote.write_meta(sha, meta).await;
        }
        let (store, sha, meta) = (self.clone(), sha.to_owned(), meta.clone());
        tokio::task::spawn_blocking(move || store.write_meta(&sha, &meta))
            .await
            .map_err(io::Error::other)?
    }

    /// Stores a complete upload: copied to the bucket (the temporary file is deleted
    /// afterwards either way), or [`BlobStore::commit`] on a blocking thread. Returns
    /// whether the blob was there already.
    pub async fn commit_async(
        &self,
        tmp: NamedTempFile,
        sha: &str,
        meta: &BlobMeta,
    ) -> io::Result<bool> {
        if let Some(remote) = &self.remote {
            return remote.commit(tmp.path(), sha, meta).await;
        }
        let (store, sha, meta) = (self.clone(), sha.to_owned(), meta.clone());
        tokio::task::spawn_blocking(move || store.commit(tmp, &sha, &meta))
            .await
            .map_err(io::Error::other)?
    }

    /// The sidecar of blob `sha` on disk, if the blob exists (blocking).
    pub fn meta(&self, sha: &str) -> io::Result<Option<BlobMeta>> {
        if !self.blob_path(sha).exists() {
            return Ok(None);
        }
        match std::fs::read(self.meta_path(sha)) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(BlobMeta::default())),
            Err(e) => Err(e),
        }
    }

    /// Writes the sidecar of `sha` on disk atomically (temporary file, fsync, rename).
    /// Blocking.
    pub fn write_meta(&self, sha: &str, meta: &BlobMeta) -> io::Result<()> {
        let dir = self.blobs_dir().join(&sha[..2]);
        std::fs::create_dir_all(&dir)?;
        let mut side = tempfile::Builder::new()
            .prefix(".meta-")
            .tempfile_in(&dir)?;
        side.write_all(&serde_json::to_vec(meta).map_err(io::Error::other)?)?;
        side.as_file().sync_all()?;
        side.persist(self.meta_path(sha)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Stores `tmp` (complete, `meta.size` bytes hashing to `sha`) as blob `sha`. The
    /// sidecar goes first, then the bytes are linked in without replacing an existing
    /// blob; either way the temporary file is gone afterwards. Returns whether the blob
    /// was already there (a duplicate upload).
    pub fn commit(&self, tmp: NamedTempFile, sha: &str, meta: &BlobMeta) -> io::Result<bool> {
        let dir = self.blobs_dir().join(&sha[..2]);
        let path = self.blob_path(sha);
        if path.exists() {
            return Ok(true);
        }
        std::fs::create_dir_all(&dir)?;
        tmp.as_file().sync_all()?;
        self.write_meta(sha, meta)?;
        let duplicate = match tmp.persist_noclobber(&path) {
            Ok(_) => false,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => true,
            Err(e) => return Err(e.error),
        };
        File::open(&dir)?.sync_all()?;
        Ok(duplicate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_are_stored_once_and_crash_leftovers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let sha = "ab".repeat(32);
        let meta = BlobMeta {
            size: 3,
            mime: "application/octet-stream".into(),
            ..BlobMeta::default()
        };
        for expect_dup in [false, true] {
            let mut tmp = store.temp_file().unwrap();
            tmp.write_all(b"abc").unwrap();
            assert_eq!(store.commit(tmp, &sha, &meta).unwrap(), expect_dup);
        }
        assert_eq!(std::fs::read(store.blob_path(&sha)).unwrap(), b"abc");
        assert_eq!(store.meta(&sha).unwrap(), Some(meta));
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        let left = store.temp_file().unwrap().keep().unwrap().1;
        assert!(left.exists());
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(
            !left.exists(),
            "a crashed upload's temp file is removed at start"
        );
        assert!(store.blob_path(&sha).exists());
    }

    #[test]
    fn only_hex_hashes_are_blob_names() {
        assert!(is_sha256_hex(&"0f".repeat(32)));
        for bad in [
            "",
            "../keys",
            &"0F".repeat(32),
            &"0f".repeat(31),
            &format!("{}/", "a".repeat(63)),
        ] {
            assert!(!is_sha256_hex(bad), "{bad}");
        }
    }
}
