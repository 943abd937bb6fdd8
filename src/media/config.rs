//! The media service's settings: the `[media]` table of the config file (with
//! `[media.s3]` for an object store) and `--media-addr`, resolved into [`MediaSettings`] (every key and default is in
//! docs/CONFIGURATION.md, "Media").

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::kind::Kind;
use crate::http_serve::Limits;

/// One kind's limits in the config file (`[media.image]`, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindFile {
    max_bytes: Option<u64>,
    mime_types: Option<Vec<String>>,
}

/// The `[media]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaFile {
    addr: Option<SocketAddr>,
    public_url: Option<String>,
    worker_threads: Option<usize>,
    upload_session_ttl_secs: Option<u64>,
    thumbnail_max_side: Option<u32>,
    image: Option<KindFile>,
    voice: Option<KindFile>,
    video: Option<KindFile>,
    file: Option<KindFile>,
    s3: Option<S3File>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
}

/// The `[media.s3]` table: keep blobs in an S3-compatible object store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3File {
    bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    prefix: Option<String>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<std::path::PathBuf>,
}

/// Where blobs live when not on local disk: an S3-compatible bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket (it must exist).
    pub bucket: String,
    /// The service's URL (`http://…` or `https://…`); `None` = AWS itself.
    pub endpoint: Option<String>,
    /// The region to sign for (`None`: `AWS_REGION` / `AWS_DEFAULT_REGION`, else
    /// `us-east-1`).
    pub region: Option<String>,
    /// Prepended to every object key (`PREFIX/blobs/<sha256>`), without slashes at the
    /// ends; empty = none.
    pub prefix: String,
    /// Static credentials, if configured (else the standard `AWS_*` environment and
    /// instance credentials apply).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("credentials", &self.credentials.as_ref().map(|(id, _)| id))
            .finish()
    }
}

fn resolve_s3(file: &S3File) -> anyhow::Result<S3Settings> {
    let Some(bucket) = file.bucket.clone().filter(|b| !b.is_empty()) else {
        bail!("media.s3.bucket is required with a [media.s3] table");
    };
    if let Some(url) = &file.endpoint
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("media.s3.endpoint must start with http:// or https://, got {url:?}");
    }
    let credentials = match (&file.access_key_id, &file.secret_access_key_file) {
        (None, None) => None,
        (Some(id), Some(path)) => {
            let secret = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read media.s3.secret_access_key_file {}: {e}",
                    path.display()
                )
            })?;
            let secret = secret.trim().to_owned();
            if secret.is_empty() {
                bail!(
                    "media.s3.secret_access_key_file {} is empty",
                    path.display()
                );
            }
            Some((id.clone(), secret))
        }
        _ => bail!(
            "media.s3.access_key_id and media.s3.secret_access_key_file go together (or \
             leave both out to use the AWS_* environment)"
        ),
    };
    Ok(S3Settings {
        bucket,
        endpoint: file
            .endpoint
            .as_ref()
            .map(|e| e.trim_end_matches('/').to_owned()),
        region: file.region.clone(),
        prefix: file
            .prefix
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_owned(),
        credentials,
    })
}

/// What one kind of media may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindLimits {
    /// Largest accepted upload, bytes.
    pub max_bytes: u64,
    /// MIME types accepted, as detected from the bytes; empty = any (`file` only).
    pub mime_types: Vec<String>,
}

/// The resolved media settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    /// Where the HTTP server listens; `None` = the service is off (the default).
    pub addr: Option<SocketAddr>,
    /// Base URL put in front of `/v1/media/<sha256>` in upload answers (e.g.
    /// `https://media.example.com`); `None` = answers carry the path alone.
    pub public_url: Option<String>,
    /// Threads of the media service's own tokio runtime.
    pub worker_threads: usize,
    /// How long an unfinished chunked upload is kept after its last chunk.
    pub upload_session_ttl: Duration,
    /// Longest side of a server-made image thumbnail, pixels.
    pub thumbnail_max_side: u32,
    /// Limits of image uploads.
    pub image: KindLimits,
    /// Limits of voice uploads.
    pub voice: KindLimits,
    /// Limits of video uploads.
    pub video: KindLimits,
    /// Limits of other files.
    pub file: KindLimits,
    /// Blobs in an S3-compatible bucket instead of the data directory.
    pub s3: Option<S3Settings>,
    /// The service's connection limits ([`Limits::MEDIA`] unless set).
    pub limits: Limits,
}

const MIB: u64 = 1 << 20;

fn default_limits(kind: Kind) -> KindLimits {
    let (max_bytes, mimes): (u64, &[&str]) = match kind {
        Kind::Image => (
            20 * MIB,
            &["image/jpeg", "image/png", "image/gif", "image/webp"],
        ),
        Kind::Voice => (
            20 * MIB,
            &[
                "audio/ogg",
                "audio/mpeg",
                "audio/aac",
                "audio/m4a",
                "audio/x-wav",
                "audio/amr",
                "audio/x-flac",
                "audio/webm",
                "video/webm",
            ],
        ),
        Kind::Video => (
            500 * MIB,
            &[
                "video/mp4",
                "video/webm",
                "video/quicktime",
                "video/x-matroska",
            ],
        ),
        Kind::File => (100 * MIB, &[]),
    };
    KindLimits {
        max_bytes,
        mime_types: mimes.iter().map(|m| (*m).to_owned()).collect(),
    }
}

fn resolve_kind(kind: Kind, file: Option<&KindFile>) -> anyhow::Result<KindLimits> {
    let mut limits = default_limits(kind);
    if let Some(file) = file {
        if let Some(max) = file.max_bytes {
            if max == 0 {
                bail!("media.{}.max_bytes must be at least 1", kind.as_str());
            }
            limits.max_bytes = max;
        }
        if let Some(mimes) = &file.mime_types {
            if mimes.is_empty() && kind != Kind::File {
                bail!(
                    "media.{}.mime_types must name at least one type (only `file` may accept any)",
                    kind.as_str()
                );
            }
            limits.mime_types = mimes.clone();
        }
    }
    Ok(limits)
}

impl MediaSettings {
    /// The file's `[media]` table (or the defaults), with `--media-addr` over its `addr`.
    pub fn resolve(
        file: Option<&MediaFile>,
        flag_addr: Option<SocketAddr>,
    ) -> anyhow::Result<MediaSettings> {
        let empty = MediaFile::default();
        let file = file.unwrap_or(&empty);
        let worker_threads = file.worker_threads.unwrap_or(2);
        if worker_threads == 0 {
            bail!("media.worker_threads must be at least 1");
        }
        let public_url = file
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned());
        if let Some(url) = &public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("media.public_url must start with http:// or https://, got {url:?}");
        }
        Ok(MediaSettings {
            addr: flag_addr.or(file.addr),
            public_url,
            worker_threads,
            upload_session_ttl: Duration::from_secs(
                file.upload_session_ttl_secs.unwrap_or(24 * 3600).max(1),
            ),
            thumbnail_max_side: file.thumbnail_max_side.unwrap_or(160).clamp(16, 1024),
            image: resolve_kind(Kind::Image, file.image.as_ref())?,
            voice: resolve_kind(Kind::Voice, file.voice.as_ref())?,
            video: resolve_kind(Kind::Video, file.video.as_ref())?,
            file: resolve_kind(Kind::File, file.file.as_ref())?,
            s3: file.s3.as_ref().map(resolve_s3).transpose()?,
            limits: Limits::MEDIA.configured(
                "media",
                file.max_connections,
                file.max_connections_per_address,
            )?,
        })
    }

    /// The limits of `kind`.
    pub fn limits(&self, kind: Kind) -> &KindLimits {
        match kind {
            Kind::Image => &self.image,
            Kind::Voice => &self.voice,
            Kind::Video => &self.video,
            Kind::File => &self.file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_with_limits_per_kind() {
        let s = MediaSettings::resolve(None, None).unwrap();
        assert_eq!(s.addr, None);
        assert_eq!(s.image.max_bytes, 20 * MIB);
        assert!(s.image.mime_types.contains(&"image/png".to_owned()));
        assert!(s.file.mime_types.is_empty());
    }

    #[test]
    fn the_table_sets_limits_and_the_flag_wins_for_the_address() {
        let file: MediaFile = toml::from_str(
            "addr = \"127.0.0.1:1\"\n[image]\nmax_bytes = 1000\nmime_types = [\"image/png\"]\n",
        )
        .unwrap();
        let s = MediaSettings::resolve(Some(&file), None).unwrap();
        assert_eq!(s.addr, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(s.image.max_bytes, 1000);
        assert_eq!(s.image.mime_types, vec!["image/png".to_owned()]);
        let s = MediaSettings::resolve(Some(&file), Some("127.0.0.1:2".parse().unwrap())).unwrap();
        assert_eq!(s.addr, Some("127.0.0.1:2".parse().unwrap()));
        let bad: MediaFile = toml::from_str("[voice]\nmime_types = []\n").unwrap();
        assert!(MediaSettings::resolve(Some(&bad), None).is_err());
        assert!(toml::from_str::<MediaFile>("[image]\nmax_byte = 1\n").is_err());
    }

    #[test]
    fn an_s3_table_needs_a_bucket_and_both_credentials_or_none() {
        let s3 = |text: &str| {
            let file: MediaFile = toml::from_str(text).unwrap();
            MediaSettings::resolve(Some(&file), None).map(|s| s.s3)
        };
        let s = s3("[s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9/\"\nprefix = \"/p/\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                s.bucket.as_str(),
                s.endpoint.as_deref(),
                s.region.as_deref(),
                s.prefix.as_str()
            ),
            ("b", Some("http://127.0.0.1:9"), None, "p")
        );
        assert!(s.credentials.is_none());
        assert!(s3("[s3]\nendpoint = \"http://x\"\n").is_err(), "no bucket");
        assert!(s3("[s3]\nbucket = \"b\"\nendpoint = \"ftp://x\"\n").is_err());
        assert!(s3("[s3]\nbucket = \"b\"\naccess_key_id = \"k\"\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        let s = s3(&format!(
            "[s3]\nbucket = \"b\"\naccess_key_id = \"k\"\nsecret_access_key_file = {:?}\n",
            secret.display().to_string()
        ))
        .unwrap()
        .unwrap();
        assert_eq!(s.credentials, Some(("k".into(), "s3cr3t".into())));
        assert!(
            !format!("{s:?}").contains("s3cr3t"),
            "the secret is never printed"
        );
    }
}
