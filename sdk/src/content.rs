//! Builders for message content. Media bytes never travel in frames: upload them first
//! and pass the URI (and optionally a small base64 thumbnail) in a [`pb::Media`].

use petrel_proto::pb::{self, content::Body};

/// A text message.
pub fn text(text: &str) -> pb::Content {
    pb::Content {
        body: Some(Body::Text(pb::Text {
            text: text.into(),
            mentions: Vec::new(),
        })),
    }
}

/// An image.
pub fn image(media: pb::Media, width: u32, height: u32) -> pb::Content {
    pb::Content {
        body: Some(Body::Image(pb::Image {
            media: Some(media),
            width,
            height,
        })),
    }
}

/// A standard emoji (`pack` empty) or a sticker.
pub fn emoji(code: &str, pack: &str) -> pb::Content {
    pb::Content {
        body: Some(Body::Emoji(pb::Emoji {
            code: code.into(),
            pack: pack.into(),
            media: None,
        })),
    }
}

/// A voice message.
pub fn voice(media: pb::Media, duration_ms: u32) -> pb::Content {
    pb::Content {
        body: Some(Body::Voice(pb::Voice {
            media: Some(media),
            duration_ms,
        })),
    }
}

/// A video.
pub fn video(media: pb::Media, width: u32, height: u32, duration_ms: u32) -> pb::Content {
    pb::Content {
        body: Some(Body::Video(pb::Video {
            media: Some(media),
            width,
            height,
            duration_ms,
        })),
    }
}

/// A media reference: where it was uploaded, its size and MIME type.
pub fn media(uri: &str, size: u64, mime_type: &str) -> pb::Media {
    pb::Media {
        uri: uri.into(),
        size,
        mime_type: mime_type.into(),
        thumbnail_base64: String::new(),
        thumbnail_mime_type: String::new(),
    }
}

/// A one-line description for terminals and notifications.
pub fn summary(content: &pb::Content) -> String {
    match &content.body {
        Some(Body::Text(t)) => t.text.clone(),
        Some(Body::Image(i)) => format!("[image {}x{}]", i.width, i.height),
        Some(Body::Emoji(e)) if e.pack.is_empty() => e.code.clone(),
        Some(Body::Emoji(e)) => format!("[sticker {}/{}]", e.pack, e.code),
        Some(Body::Voice(v)) => format!("[voice {} ms]", v.duration_ms),
        Some(Body::Video(v)) => format!("[video {} ms]", v.duration_ms),
        None => "[empty]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_summary() {
        let m = media("https://m.example/a", 10, "image/jpeg");
        let all = [
            (text("hi"), "hi"),
            (image(m.clone(), 4, 3), "[image 4x3]"),
            (emoji("🙂", ""), "🙂"),
            (emoji("wave", "cats"), "[sticker cats/wave]"),
            (voice(m.clone(), 1500), "[voice 1500 ms]"),
            (video(m, 4, 3, 9000), "[video 9000 ms]"),
            (pb::Content::default(), "[empty]"),
        ];
        for (content, expected) in all {
            assert_eq!(summary(&content), expected);
        }
    }
}
