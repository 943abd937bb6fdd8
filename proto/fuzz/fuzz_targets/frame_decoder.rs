//! Fuzz target: the streaming frame decoder on arbitrary bytes, fed in arbitrary chunks.
//!
//! The first input byte picks a chunk size so that split headers and bodies are explored;
//! the rest is the byte stream. Anything decoded must re-encode to the same frame. A panic,
//! a hang or an allocation beyond the body limit is a bug.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use petrel_proto::codec::FrameEncoder;
use petrel_proto::{DecoderConfig, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk_seed % 32) + 1;
    let mut decoder = FrameDecoder::new(DecoderConfig { max_body_len: 4096 });
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let wire = FrameEncoder::new(u32::MAX).encode_to_bytes(&frame).unwrap();
                    let mut again = BytesMut::from(&wire[..]);
                    let round = FrameDecoder::new(DecoderConfig { max_body_len: u32::MAX })
                        .decode(&mut again)
                        .unwrap()
                        .unwrap();
                    assert_eq!(round, frame);
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
        assert!(buf.len() <= 16 + 4096);
    }
});
