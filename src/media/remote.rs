//! Blobs in an S3-compatible object store (`[media.s3]`), through the `object_store`
//! crate (Apache Arrow's; it signs, retries and does multipart uploads):
//!
//! ```text
//! PREFIX/blobs/<sha256>        the bytes
//! PREFIX/blobs/<sha256>.json   what the server learnt of them (the same sidecar as on disk)
//! ```
//!
//! Uploads are still received into the data directory (`media/tmp`, `media/uploads`):
//! hashing, MIME detection and thumbnails need the whole file, and a resumable session
//! must survive a restart. A complete upload is then copied to the bucket: the bytes
//! first (one PUT, or a multipart upload in 8 MiB parts above that), the sidecar last.
//! A blob counts as stored once its sidecar exists, so a crash between the two leaves
//! at worst an orphan object that the next upload of the same bytes overwrites with the
//! same content — never a sidecar naming missing or partial bytes.

use std::io;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt as _;

use super::config::S3Settings;
use super::store::BlobMeta;

/// Part size of a multipart upload (S3 wants at least 5 MiB per part but the last).
const PART: usize = 8 << 20;

/// The bucket holding the blobs.
pub struct RemoteBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    bucket: String,
}

impl std::fmt::Debug for RemoteBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBlobs")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// An object store error as an I/O error (not found stays `NotFound`).
fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(other),
    }
}

impl RemoteBlobs {
    /// A client for `settings`' bucket (no request is made yet: see [`RemoteBlobs::check`]).
    pub fn new(settings: &S3Settings) -> anyhow::Result<RemoteBlobs> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&settings.bucket);
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                // Self-hosted stores (MinIO, Ceph, moto) name the bucket in the path.
                .with_virtual_hosted_style_request(false);
        }
        if let Some((id, secret)) = &settings.credentials {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| anyhow::anyhow!("media.s3: {e}"))?;
        Ok(RemoteBlobs {
            store: Arc::new(store),
            prefix: settings.prefix.clone(),
            bucket: settings.bucket.clone(),
        })
    }

    /// Writes (and removes) a small probe object, so a wrong bucket, endpoint or
    /// credential — or one that may read but not write — stops the server at start with
    /// the store's own words instead of failing the first upload.
    pub async fn check(&self) -> anyhow::Result<()> {
        let probe = self.key(".petrel-probe");
        self.store
            .put(&probe, PutPayload::from_static(b"petrel"))
            .await
            .map_err(|e| {
                anyhow::anyhow!("the media bucket {:?} is not usable: {e}", self.bucket)
            })?;
        // A probe that stays behind is harmless; the next start overwrites it.
        let _ = self.store.delete(&probe).await;
        Ok(())
    }

    fn key(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    fn blob_key(&self, sha: &str) -> Path {
        self.key(&format!("blobs/{sha}"))
    }

    fn meta_key(&self, sha: &str) -> Path {
        self.key(&format!("blobs/{sha}.json"))
    }

    /// The sidecar of blob `sha`, if the blob is stored.
    pub async fn meta(&self, sha: &str) -> io::Result<Option<BlobMeta>> {
        let got = match self.store.get(&self.meta_key(sha)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        let bytes = got.bytes().await.map_err(io_error)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes the sidecar of `sha` (one PUT: atomic in S3).
    pub async fn write_meta(&self, sha: &str, meta: &BlobMeta) -> io::Result<()> {
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        self.store
            .put(&self.meta_key(sha), PutPayload::from(json))
            .await
            .map_err(io_error)?;
        Ok(())
    }

    /// Copies the complete upload at `file` (`meta.size` bytes hashing to `sha`) into
    /// the bucket, then its sidecar. Returns whether the blob was stored already.
    pub async fn commit(&self, file: &FsPath, sha: &str, meta: &BlobMeta) -> io::Result<bool> {
        if self.meta(sha).await?.is_some() {
            return Ok(true);
        }
        let mut f = tokio::fs::File::open(file).await?;
        let key = self.blob_key(sha);
        if meta.size as usize <= PART {
            let mut all = Vec::with_capacity(meta.size as usize);
            f.read_to_end(&mut all).await?;
            self.store
                .put(&key, PutPayload::from(Bytes::from(all)))
                .await
                .map_err(io_error)?;
        } else {
            let upload = self.store.put_multipart(&key).await.map_err(io_error)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; 1 << 20];
            let copied: io::Result<()> = async {
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    // At most two parts in flight: memory stays bounded for any size.
                    writer.wait_for_capacity(2).await.map_err(io_error)?;
                    writer.write(&buf[..n]);
                }
            }
            .await;
            if let Err(e) = copied {
                // The store keeps (and bills) the parts of an upload never completed.
                let _ = writer.abort().await;
                return Err(e);
            }
            writer.finish().await.map_err(io_error)?;
        }
        self.write_meta(sha, meta).await?;
        Ok(false)
    }

    /// The bytes of blob `sha` in `range` (all of them with `None`), as a stream.
    pub async fn get(&self, sha: &str, range: Option<Range<u64>>) -> io::Result<GetResult> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        self.store
            .get_opts(&self.blob_key(sha), options)
            .await
            .map_err(io_error)
    }
}
