//! The content check agrees with prost's decoder: whatever it accepts decodes, with the
//! body it named and a non-empty text; and it accepts every well-formed content that has
//! something to say.

use petrel_proto::content::{ContentError, ContentKind, ContentView};
use petrel_proto::pb::{self, content::Body};
use proptest::prelude::*;
use prost::Message as _;

fn media() -> impl Strategy<Value = Option<pb::Media>> {
    proptest::option::of(
        (
            "\\PC{0,12}",
            any::<u64>(),
            "[a-z/]{0,10}",
            "[A-Za-z0-9+/=]{0,8}",
        )
            .prop_map(|(uri, size, mime_type, thumbnail_base64)| pb::Media {
                uri,
                size,
                mime_type,
                thumbnail_base64,
                thumbnail_mime_type: String::new(),
            }),
    )
}

fn content() -> impl Strategy<Value = pb::Content> {
    let body = prop_oneof![
        ("\\PC{0,16}", proptest::collection::vec(any::<u64>(), 0..4))
            .prop_map(|(text, mentions)| Body::Text(pb::Text { text, mentions })),
        (media(), any::<u32>(), any::<u32>()).prop_map(|(media, width, height)| {
            Body::Image(pb::Image {
                media,
                width,
                height,
            })
        }),
        ("\\PC{0,4}", "[a-z]{0,6}", media())
            .prop_map(|(code, pack, media)| Body::Emoji(pb::Emoji { code, pack, media })),
        (media(), any::<u32>())
            .prop_map(|(media, duration_ms)| Body::Voice(pb::Voice { media, duration_ms })),
        (media(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(media, width, height, duration_ms)| Body::Video(pb::Video {
                media,
                width,
                height,
                duration_ms,
            })
        ),
    ];
    proptest::option::of(body).prop_map(|body| pb::Content { body })
}

fn kind_of(body: &Body) -> ContentKind {
    match body {
        Body::Text(_) => ContentKind::Text,
        Body::Image(_) => ContentKind::Image,
        Body::Emoji(_) => ContentKind::Emoji,
        Body::Voice(_) => ContentKind::Voice,
        Body::Video(_) => ContentKind::Video,
    }
}

/// What the check must say about bytes prost decodes to `decoded`.
fn expected(decoded: &pb::Content) -> Result<ContentKind, ContentError> {
    match &decoded.body {
        None => Err(ContentError::NoBody),
        Some(Body::Text(t)) if t.text.is_empty() => Err(ContentError::EmptyText),
        Some(body) => Ok(kind_of(body)),
    }
}

proptest! {
    #[test]
    fn well_formed_content_is_judged_like_the_decoded_message(c in content()) {
        let bytes = c.encode_to_vec();
        let got = ContentView::new_checked(&bytes).map(|v| v.kind());
        prop_assert_eq!(got, expected(&c));
    }

    #[test]
    fn accepted_bytes_always_decode_to_what_the_check_said(
        c in content(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..6),
    ) {
        let mut bytes = c.encode_to_vec();
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        if !bytes.is_empty() {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes.extend(tail);
        if let Ok(view) = ContentView::new_checked(&bytes) {
            let decoded = pb::Content::decode(&bytes[..]);
            prop_assert!(decoded.is_ok(), "accepted but prost refuses: {:02x?}", bytes);
            prop_assert_eq!(Ok(view.kind()), expected(&decoded.unwrap()));
        }
    }

    #[test]
    fn random_bytes_never_pass_unless_prost_decodes_them(
        bytes in proptest::collection::vec(any::<u8>(), 0..64)
    ) {
        if let Ok(view) = ContentView::new_checked(&bytes) {
            let decoded = pb::Content::decode(&bytes[..]);
            prop_assert!(decoded.is_ok());
            prop_assert_eq!(Ok(view.kind()), expected(&decoded.unwrap()));
        }
    }
}
