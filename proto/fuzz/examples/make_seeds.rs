//! Writes the seed corpus of `content_view` into `seeds/content_view/`:
//! `cargo run --example make_seeds` from `proto/fuzz`. One encoded `Content` of every
//! body kind, with every field set (mentions, media with a thumbnail), encoded by prost
//! as a client would, plus inputs the check must refuse (an empty text, a body of the
//! wrong wire type). Each seed is checked here and the verdict printed.

use std::path::Path;

use petrel_proto::content::ContentView;
use petrel_proto::pb::{self, content::Body};
use prost::Message as _;

fn media(uri: &str, mime: &str) -> Option<pb::Media> {
    Some(pb::Media {
        uri: uri.into(),
        size: 48_213,
        mime_type: mime.into(),
        thumbnail_base64: "iVBORw0KGgo=".into(),
        thumbnail_mime_type: "image/png".into(),
    })
}

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/content_view");
    std::fs::create_dir_all(&dir)?;
    let bodies = [
        (
            "text",
            Body::Text(pb::Text {
                text: "hello @202 and @303".into(),
                mentions: vec![202, 303],
            }),
        ),
        (
            "image",
            Body::Image(pb::Image {
                media: media("https://media.example.com/ab/cd.jpg", "image/jpeg"),
                width: 1024,
                height: 768,
            }),
        ),
        (
            "emoji_sticker",
            Body::Emoji(pb::Emoji {
                code: "party".into(),
                pack: "petrel-birds".into(),
                media: media("https://media.example.com/st/party.webp", "image/webp"),
            }),
        ),
        (
            "voice",
            Body::Voice(pb::Voice {
                media: media("https://media.example.com/vo/1.ogg", "audio/ogg"),
                duration_ms: 4_200,
            }),
        ),
        (
            "video",
            Body::Video(pb::Video {
                media: media("https://media.example.com/vi/1.mp4", "video/mp4"),
                width: 1280,
                height: 720,
                duration_ms: 61_000,
            }),
        ),
        (
            "empty_text_refused",
            Body::Text(pb::Text {
                text: String::new(),
                mentions: Vec::new(),
            }),
        ),
    ];
    let mut seeds: Vec<(&str, Vec<u8>)> = bodies
        .into_iter()
        .map(|(name, body)| (name, pb::Content { body: Some(body) }.encode_to_vec()))
        .collect();
    // Field 1 (text) with wire type 0 (varint) instead of a length-delimited message.
    seeds.push(("text_as_varint_refused", vec![0x08, 0x01]));
    for (name, bytes) in seeds {
        let verdict = match ContentView::new_checked(&bytes) {
            Ok(view) => format!("accepted as {:?}", view.kind()),
            Err(e) => format!("refused: {e}"),
        };
        println!("{name}: {} bytes, {verdict}", bytes.len());
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
