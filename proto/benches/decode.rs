//! Decoder throughput: frames with a 100-byte protobuf body, decoded from one read buffer
//! holding many coalesced frames (the common case under load), header only and with the
//! protobuf body decoded.
//!
//! Run: `cargo bench -p petrel-proto --bench decode`. Results go in docs/PERFORMANCE.md.

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use petrel_proto::codec::FrameEncoder;
use petrel_proto::header::HEADER_LEN;
use petrel_proto::pb::{self, ConversationKind};
use petrel_proto::{Frame, FrameDecoder};

const FRAMES_PER_BATCH: usize = 1024;

/// A SendMessage frame whose protobuf body is exactly 100 bytes.
fn frame_with_100_byte_body() -> Frame {
    let mut text = String::new();
    loop {
        let frame = Frame::new(
            1,
            pb::SendMessage {
                client_msg_id: 123_456_789,
                conversation: Some(pb::ConversationId {
                    kind: ConversationKind::Single as i32,
                    id: 42,
                }),
                content: petrel_proto::wire::encode_content(&pb::Content {
                    body: Some(pb::content::Body::Text(pb::Text {
                        text: text.clone(),
                        mentions: vec![],
                    })),
                }),
                ..Default::default()
            },
        );
        if frame.body.encoded_len() >= 100 {
            assert_eq!(
                frame.body.encoded_len(),
                100,
                "adjust the text to hit 100 bytes"
            );
            return frame;
        }
        text.push('x');
    }
}

fn bench_decode(c: &mut Criterion) {
    let frame = frame_with_100_byte_body();
    let mut wire = BytesMut::new();
    for _ in 0..FRAMES_PER_BATCH {
        FrameEncoder::default().encode(&frame, &mut wire).unwrap();
    }
    assert_eq!(wire.len(), FRAMES_PER_BATCH * (HEADER_LEN + 100));
    let wire = wire.freeze();

    let mut group = c.benchmark_group("decode_100B_body");
    group.throughput(Throughput::Elements(FRAMES_PER_BATCH as u64));
    group.bench_function("raw_frames", |b| {
        // The read buffer is refilled outside the timed section.
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let mut decoder = FrameDecoder::default();
                let mut n = 0;
                while let Some(raw) = decoder.decode_raw(&mut buf).unwrap() {
                    n += raw.body.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("frames_with_protobuf_body", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let mut decoder = FrameDecoder::default();
                let mut n = 0;
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    n += frame.request_id as usize;
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("encode_100B_body");
    group.throughput(Throughput::Elements(FRAMES_PER_BATCH as u64));
    group.bench_function("into_reused_buffer", |b| {
        let encoder = FrameEncoder::default();
        let mut out = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            for _ in 0..FRAMES_PER_BATCH {
                encoder.encode(&frame, &mut out).unwrap();
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
