//! The media service's settings: the `[media]` table of the config file and
//! `--media-addr`, resolved into [`MediaSettings`] (every key and default is in
//! docs/CONFIGURATION.md, "Media").

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::kind::Kind;

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
}
