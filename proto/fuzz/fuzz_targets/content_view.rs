//! Fuzz target: the server's content check on arbitrary bytes.
//!
//! Whatever `ContentView::new_checked` accepts must decode with prost into a `Content`
//! with the body kind the view reported (a server stores what it accepts and every
//! client decodes it). A panic or a disagreement is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_proto::content::{ContentKind, ContentView};
use petrel_proto::pb::{self, content::Body};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(view) = ContentView::new_checked(data) else {
        return;
    };
    let decoded = pb::Content::decode(data).expect("accepted content must decode");
    let kind = match decoded.body.expect("accepted content has a body") {
        Body::Text(t) => {
            assert!(!t.text.is_empty(), "accepted an empty text");
            ContentKind::Text
        }
        Body::Image(_) => ContentKind::Image,
        Body::Emoji(_) => ContentKind::Emoji,
        Body::Voice(_) => ContentKind::Voice,
        Body::Video(_) => ContentKind::Video,
    };
    assert_eq!(view.kind(), kind);
});
