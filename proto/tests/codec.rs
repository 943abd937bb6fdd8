//! Streaming decoder behaviour: split frames, coalesced frames, every error case, and a
//! property test that encode → split randomly → decode round-trips for every frame type.

mod common;

use bytes::BytesMut;
use petrel_proto::codec::{EncodeError, FrameEncoder};
use petrel_proto::header::{FrameHeader, HEADER_LEN, HeaderRepr};
use petrel_proto::{DecoderConfig, Frame, FrameDecoder, FrameError, FrameFlags, FrameType, pb};
use proptest::prelude::*;

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    let encoder = FrameEncoder::default();
    for frame in frames {
        encoder.encode(frame, &mut wire).unwrap();
    }
    wire.to_vec()
}

/// Feeds `wire` to a fresh decoder in the given chunk sizes and collects every result.
fn decode_in_chunks(wire: &[u8], cuts: &[usize]) -> Vec<Result<Frame, FrameError>> {
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        buf.extend_from_slice(&wire[start..end]);
        start = end;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        return out;
                    }
                }
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    out
}

#[test]
fn every_frame_type_split_at_every_byte_boundary() {
    for frame in common::one_of_each() {
        let wire = encode_all(std::slice::from_ref(&frame));
        for cut in 0..=wire.len() {
            let got = decode_in_chunks(&wire, &[cut]);
            assert_eq!(
                got,
                vec![Ok(frame.clone())],
                "{:?} cut at {cut}",
                frame.body.frame_type()
            );
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    let frames = common::one_of_each();
    let wire = encode_all(&frames);
    let cuts: Vec<usize> = (1..wire.len()).collect();
    let got: Vec<Frame> = decode_in_chunks(&wire, &cuts)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, frames);
}

#[test]
fn many_frames_coalesced_in_one_read() {
    let frames = common::one_of_each();
    let wire = encode_all(&frames);
    let got: Vec<Frame> = decode_in_chunks(&wire, &[])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, frames);
}

#[test]
fn bodies_share_the_read_buffer_instead_of_copying() {
    let frame = Frame::new(9, common::body_for(FrameType::SendMessage, 0, "zero copy"));
    let wire = encode_all(std::slice::from_ref(&frame));
    let mut buf = BytesMut::from(&wire[..]);
    let base = buf.as_ptr() as usize;
    let raw = FrameDecoder::default()
        .decode_raw(&mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(raw.body.as_ptr() as usize, base + HEADER_LEN);
    assert_eq!(raw.decode_body().unwrap(), frame);
}

#[test]
fn empty_body_frames_decode() {
    let frame = Frame::new(3, pb::RenewToken {});
    let wire = encode_all(std::slice::from_ref(&frame));
    assert_eq!(wire.len(), HEADER_LEN);
    assert_eq!(decode_in_chunks(&wire, &[]), vec![Ok(frame)]);
}

fn header_bytes(frame_type: u8, body_len: u32) -> [u8; HEADER_LEN] {
    let mut h = HeaderRepr {
        frame_type: FrameType::Ping,
        flags: FrameFlags::NONE,
        request_id: 77,
        body_len,
    }
    .to_bytes();
    h[3] = frame_type;
    h
}

#[test]
fn bad_magic_is_fatal_and_sticky() {
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
    let err = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(err, FrameError::BadMagic { found: *b"GE" });
    assert!(err.is_fatal());
    assert!(decoder.has_failed());
    assert_eq!(decoder.decode(&mut buf).unwrap_err(), err);
}

#[test]
fn unsupported_version_is_fatal() {
    let mut h = header_bytes(FrameType::Ping as u8, 0);
    h[2] = 2;
    let err = FrameDecoder::default()
        .decode(&mut BytesMut::from(&h[..]))
        .unwrap_err();
    assert_eq!(err, FrameError::UnsupportedVersion { found: 2 });
    assert!(err.is_fatal());
}

#[test]
fn reserved_bits_are_fatal() {
    let mut h = header_bytes(FrameType::Ping as u8, 0);
    h[4] = 0x02;
    let err = FrameDecoder::default()
        .decode(&mut BytesMut::from(&h[..]))
        .unwrap_err();
    assert!(matches!(err, FrameError::ReservedBits { flags: 0x02, .. }));
    assert!(err.is_fatal());
}

#[test]
fn oversize_is_detected_from_the_header_alone() {
    // A header announcing 1 GiB, and not one body byte: the error must come now, not after
    // buffering the body.
    let h = header_bytes(FrameType::SendMessage as u8, 1 << 30);
    let mut buf = BytesMut::from(&h[..]);
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        FrameError::Oversize {
            len: 1 << 30,
            max: 64 * 1024
        }
    );
    assert!(err.is_fatal());
}

#[test]
fn max_body_len_is_configurable() {
    let frame = Frame::new(
        1,
        common::body_for(FrameType::SendMessage, 1, &"x".repeat(200)),
    );
    let wire = encode_all(std::slice::from_ref(&frame));
    let body_len = (wire.len() - HEADER_LEN) as u32;

    let mut tight = FrameDecoder::new(DecoderConfig {
        max_body_len: body_len - 1,
    });
    assert!(matches!(
        tight.decode(&mut BytesMut::from(&wire[..])),
        Err(FrameError::Oversize { .. })
    ));
    let mut exact = FrameDecoder::new(DecoderConfig {
        max_body_len: body_len,
    });
    assert_eq!(
        exact.decode(&mut BytesMut::from(&wire[..])),
        Ok(Some(frame))
    );
}

#[test]
fn unknown_type_is_skipped_and_the_stream_stays_in_sync() {
    let mut wire = header_bytes(0x7e, 5).to_vec();
    wire.extend_from_slice(b"junk!");
    let ping = Frame::new(2, pb::Ping { client_time_ms: 5 });
    wire.extend_from_slice(&encode_all(std::slice::from_ref(&ping)));
    for cut in 0..=wire.len() {
        let got = decode_in_chunks(&wire, &[cut]);
        assert_eq!(
            got,
            vec![
                Err(FrameError::UnknownType {
                    frame_type: 0x7e,
                    request_id: 77,
                    body_len: 5
                }),
                Ok(ping.clone())
            ],
            "cut at {cut}"
        );
    }
}

#[test]
fn invalid_protobuf_body_is_reported_and_the_stream_stays_in_sync() {
    // 0x0a = field 1, length-delimited, then a length running past the end of the body.
    let mut wire = header_bytes(FrameType::Login as u8, 2).to_vec();
    wire.extend_from_slice(&[0x0a, 0x05]);
    let ping = Frame::new(2, pb::Ping { client_time_ms: 5 });
    wire.extend_from_slice(&encode_all(std::slice::from_ref(&ping)));
    let got = decode_in_chunks(&wire, &[]);
    assert_eq!(got.len(), 2);
    match &got[0] {
        Err(
            e @ FrameError::InvalidBody {
                frame_type: FrameType::Login,
                request_id: 77,
                ..
            },
        ) => assert!(!e.is_fatal()),
        other => panic!("expected InvalidBody, got {other:?}"),
    }
    assert_eq!(got[1], Ok(ping));
}

#[test]
fn errors_map_to_distinct_protocol_codes() {
    let errors = [
        FrameError::BadMagic { found: [0, 0] },
        FrameError::UnsupportedVersion { found: 0 },
        FrameError::ReservedBits {
            flags: 0,
            reserved: [0; 3],
        },
        FrameError::Oversize { len: 0, max: 0 },
        FrameError::UnknownType {
            frame_type: 0,
            request_id: 0,
            body_len: 0,
        },
        FrameError::InvalidBody {
            frame_type: FrameType::Ping,
            request_id: 0,
            reason: String::new(),
        },
    ];
    let mut codes: Vec<i32> = errors.iter().map(|e| e.error_code() as i32).collect();
    codes.dedup();
    assert_eq!(codes.len(), errors.len());
}

#[test]
fn encoder_refuses_bodies_over_the_peer_limit_and_writes_nothing() {
    let frame = Frame::new(
        1,
        common::body_for(FrameType::SendMessage, 1, &"y".repeat(300)),
    );
    let mut buf = BytesMut::new();
    let err = FrameEncoder::new(100).encode(&frame, &mut buf).unwrap_err();
    assert!(matches!(err, EncodeError::BodyTooLarge { max: 100, .. }));
    assert!(buf.is_empty());
}

#[test]
fn encoder_into_a_fixed_buffer_reports_buffer_full_instead_of_panicking() {
    let frame = Frame::new(1, pb::Ping { client_time_ms: 1 });
    let mut storage = [0u8; 10];
    let mut dst = &mut storage[..];
    let err = FrameEncoder::default()
        .encode(&frame, &mut dst)
        .unwrap_err();
    assert!(matches!(err, EncodeError::BufferFull { available: 10, .. }));
}

#[test]
fn encoder_batches_frames_back_to_back() {
    let frames = common::one_of_each();
    let mut buf = BytesMut::new();
    let encoder = FrameEncoder::default();
    let mut total = 0;
    for f in &frames {
        total += encoder.encode(f, &mut buf).unwrap();
    }
    assert_eq!(total, buf.len());
    // Each frame starts where the previous one ended.
    let mut offset = 0;
    for f in &frames {
        let view = FrameHeader::new_checked(&buf[offset..]).unwrap();
        assert_eq!(view.frame_type(), f.body.frame_type() as u8);
        offset += HEADER_LEN + view.body_len() as usize;
    }
    assert_eq!(offset, buf.len());
}

#[test]
fn responses_carry_the_response_flag() {
    let frame = Frame::response(42, pb::Pong::default());
    let wire = encode_all(std::slice::from_ref(&frame));
    assert_eq!(wire[4], FrameFlags::RESPONSE.bits());
    let decoded = decode_in_chunks(&wire, &[]).pop().unwrap().unwrap();
    assert!(decoded.flags.is_response());
    assert_eq!(decoded.request_id, 42);
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        0..FrameType::ALL.len(),
        any::<u32>(),
        any::<bool>(),
        any::<u64>(),
        "\\PC{0,40}",
    )
        .prop_map(|(i, request_id, response, n, s)| {
            let body = common::body_for(FrameType::ALL[i], n, &s);
            if response {
                Frame::response(request_id, body)
            } else {
                Frame::new(request_id, body)
            }
        })
}

proptest! {
    #[test]
    fn encode_split_randomly_decode_round_trips(
        frames in proptest::collection::vec(arb_frame(), 1..12),
        cut_seeds in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let wire = encode_all(&frames);
        let mut cuts: Vec<usize> = cut_seeds.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        let got: Vec<Frame> = decode_in_chunks(&wire, &cuts)
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_buffer_past_the_limit(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
    ) {
        let mut decoder = FrameDecoder::new(DecoderConfig { max_body_len: 256 });
        let mut buf = BytesMut::new();
        'outer: for chunk in chunks {
            buf.extend_from_slice(&chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) if e.is_fatal() => break 'outer,
                    Err(_) => {}
                }
            }
            // Whatever stays buffered is at most one header plus one maximum body.
            prop_assert!(buf.len() <= HEADER_LEN + 256);
        }
    }
}
