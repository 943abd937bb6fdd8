//! The kinds of media (image, voice, video, file) and the MIME check: the type is
//! detected from the file's first bytes (magic numbers, the `infer` crate), never taken
//! from the client's `Content-Type`.

use serde::{Deserialize, Serialize};

/// What an upload is for; each kind has its own size and MIME limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A picture: thumbnailed, with its dimensions measured.
    Image,
    /// A voice message (duration from the client).
    Voice,
    /// A video (duration from the client).
    Video,
    /// Any other file.
    File,
}

impl Kind {
    /// The lowercase name used in the API and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Voice => "voice",
            Kind::Video => "video",
            Kind::File => "file",
        }
    }
}

/// How many leading bytes MIME detection reads.
pub const SNIFF_LEN: usize = 8192;

/// The MIME type of content starting with `head`, from its magic number;
/// `application/octet-stream` when nothing is recognised.
pub fn detect(head: &[u8]) -> &'static str {
    infer::get(head).map_or("application/octet-stream", |t| t.mime_type())
}

/// Whether `mime` is accepted by a kind whose allow-list is `allowed` (empty = any).
pub fn allowed(mime: &str, allowed: &[String]) -> bool {
    allowed.is_empty() || allowed.iter().any(|a| a == mime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_reads_the_bytes_not_a_name() {
        assert_eq!(detect(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(detect(b"\xff\xd8\xff\xe0\0\x10JFIF\0"), "image/jpeg");
        assert_eq!(detect(b"just some text"), "application/octet-stream");
        assert!(allowed("image/png", &["image/png".into()]));
        assert!(!allowed("text/html", &["image/png".into()]));
        assert!(allowed("text/html", &[]));
    }
}
