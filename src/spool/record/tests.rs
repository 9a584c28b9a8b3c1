//! Unit tests of `record`.

use super::*;
use crate::span::{Event, Kind, Status, Value};

pub(super) fn sample() -> Vec<Span> {
    vec![Span {
        trace_id: [1; 16],
        span_id: [2; 8],
        parent_id: Some([3; 8]),
        name: "GET /users/:id".into(),
        kind: Kind::Server,
        start_unix_nanos: 1_764_000_000_000_000_000,
        end_unix_nanos: 1_764_000_000_001_000_000,
        status: Status::Error("boom".into()),
        attributes: vec![
            ("nan".into(), Value::F64(f64::NAN)),
            ("inf".into(), Value::F64(f64::NEG_INFINITY)),
            ("arr".into(), Value::StringArray(vec!["a".into()])),
        ],
        events: smallvec::smallvec![Event {
            name: "exception".into(),
            time_unix_nanos: 5,
            attributes: vec![]
        }],
        dropped_attributes: 1,
        dropped_events: 2,
    }]
}

pub(super) const META: Meta = Meta {
    seq: 9,
    tree: Tree::Dead,
    created_unix_ms: 42,
};

#[test]
fn round_trips_and_keeps_nan_bits() {
    let mut out = Vec::new();
    encode("svc", &sample(), META, &mut out).unwrap();
    let r = decode(&out).unwrap();
    assert_eq!((r.meta, r.service.as_str()), (META, "svc"));
    let Value::F64(nan) = r.spans[0].attributes[0].1 else {
        panic!()
    };
    assert!(nan.is_nan());
    let mut again = Vec::new();
    encode(&r.service, &r.spans, r.meta, &mut again).unwrap();
    assert_eq!(out, again);
}

#[test]
fn repetitive_batches_are_compressed_and_still_round_trip() {
    let many: Vec<Span> = (0..200).flat_map(|_| sample()).collect();
    let mut out = Vec::new();
    encode("svc", &many, META, &mut out).unwrap();
    assert_eq!(out[5], FLAG_LZ4);
    let mut plain = Vec::new();
    payload("svc", &many, &mut plain);
    assert!(out.len() * 4 < plain.len(), "{} vs {}", out.len(), plain.len());
    assert_eq!(decode(&out).unwrap().spans.len(), 200);
}

#[test]
fn a_deflate_bomb_is_refused_within_the_bound() {
    // Valid header and CRC around a payload that inflates past MAX_PAYLOAD.
    let zeros = vec![0u8; MAX_PAYLOAD + 4096];
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &zeros).unwrap();
    let bomb = enc.finish().unwrap();
    let mut rec = Vec::new();
    frame(2, &bomb, FLAG_DEFLATE, 0, META, &mut rec);
    assert!(
        matches!(decode(&rec), Err(RecordError::TooLarge(_))),
        "{:?}",
        decode(&rec).err()
    );
}

#[test]
fn an_lz4_payload_claiming_more_than_the_bound_is_refused_before_allocating() {
    let mut payload = (MAX_PAYLOAD as u32 + 1).to_le_bytes().to_vec();
    payload.extend_from_slice(&[0x10, b'x']);
    let mut rec = Vec::new();
    frame(VERSION, &payload, FLAG_LZ4, 0, META, &mut rec);
    assert!(
        matches!(decode(&rec), Err(RecordError::TooLarge(n)) if n == MAX_PAYLOAD + 1),
        "{:?}",
        decode(&rec).err()
    );
    assert!(matches!(service(&rec), Err(RecordError::TooLarge(_))));
}

#[test]
fn an_lz4_payload_shorter_or_longer_than_it_claims_is_an_error() {
    let mut plain = Vec::new();
    payload("svc", &sample(), &mut plain);
    let good = lz4_flex::block::compress_prepend_size(&plain);
    for claimed in [plain.len() - 1, plain.len() + 1, 0] {
        let mut payload = (claimed as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(&good[4..]);
        let mut rec = Vec::new();
        frame(VERSION, &payload, FLAG_LZ4, 1, META, &mut rec);
        assert!(
            matches!(decode(&rec), Err(RecordError::Decode(_))),
            "claimed {claimed}: {:?}",
            decode(&rec).err()
        );
    }
    for cut in [0, 3] {
        let mut rec = Vec::new();
        frame(VERSION, &good[..cut], FLAG_LZ4, 1, META, &mut rec);
        assert!(matches!(decode(&rec), Err(RecordError::Decode(_))), "cut to {cut}");
    }
    let mut rec = Vec::new();
    frame(VERSION, &good, FLAG_LZ4, 1, META, &mut rec);
    assert_eq!(decode(&rec).unwrap().spans.len(), 1);
}

#[test]
fn both_codec_flags_lz4_in_version_1_or_deflate_in_3_are_unknown_flags() {
    for (version, flags) in [
        (2, FLAG_DEFLATE | FLAG_LZ4),
        (1, FLAG_LZ4),
        (2, 4),
        (3, FLAG_DEFLATE),
        (3, 4),
    ] {
        let mut rec = Vec::new();
        frame(version, b"x", flags, 1, META, &mut rec);
        assert_eq!(decode(&rec).err(), Some(RecordError::UnknownFlags(flags)));
    }
}

#[test]
fn a_huge_claimed_event_count_is_an_error_not_an_abort() {
    // Found by the spool_record fuzzer: the payload claims ~4 EiB of events.
    let data = include_bytes!("../../../tests/golden/crash-smallvec-reserve.bin");
    let (&flags, payload) = data.split_first().unwrap();
    let mut framed = Vec::new();
    frame(
        1,
        payload,
        flags & FLAG_DEFLATE,
        payload.len().min(64) as u32,
        META,
        &mut framed,
    );
    assert!(decode(&framed).is_err());
}

#[test]
fn every_single_bit_flip_and_truncation_is_detected() {
    let mut out = Vec::new();
    encode("svc", &sample(), META, &mut out).unwrap();
    for i in 0..out.len() {
        for bit in 0..8 {
            let mut bad = out.clone();
            bad[i] ^= 1 << bit;
            assert!(decode(&bad).is_err(), "flip at byte {i} bit {bit} went unnoticed");
        }
    }
    for len in 0..out.len() {
        assert!(decode(&out[..len]).is_err(), "truncation to {len} went unnoticed");
    }
}

/// One span holding `n` attributes with empty keys and boolean values
/// (6 bytes each packed, the most memory a packed byte decodes to).
fn flag_span(n: usize) -> Vec<Span> {
    let mut s = Span::new([1; 16], [2; 8], "x");
    s.attributes = vec![(String::new(), Value::Bool(true)); n];
    vec![s]
}

#[test]
fn what_encode_writes_decode_reads_at_the_memory_boundary() {
    // 2 M such attributes fit a payload (12 MB) but not MAX_DECODED.
    let mut out = Vec::new();
    let err = encode("svc", &flag_span(2_000_000), Meta::default(), &mut out).unwrap_err();
    assert!(
        matches!(err, RecordError::Undecodable(_)) && err.is_too_large(),
        "{err}"
    );
    // Find the boundary: the largest span encode takes must decode.
    let (mut lo, mut hi) = (1usize, 2_000_000usize);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        out.clear();
        if encode("svc", &flag_span(mid), Meta::default(), &mut out).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    out.clear();
    encode("svc", &flag_span(lo), Meta::default(), &mut out).unwrap();
    let back = decode(&out).unwrap_or_else(|e| panic!("{lo} attributes encoded but do not decode: {e}"));
    assert_eq!(back.spans, flag_span(lo));
    assert!(lo > 1_000_000, "the limit is not needlessly low: {lo}");
}

#[test]
fn the_decoded_size_of_a_packed_byte_is_bounded() {
    use std::mem::size_of;
    // The smallest packed form of each thing the decoder allocates, and
    // what it takes in memory.
    let fits = |memory: usize, packed: usize| memory <= DECODED_PER_BYTE * packed;
    assert!(fits(size_of::<(String, Value)>(), 4 + 1 + 1), "empty key, bool");
    assert!(fits(size_of::<String>(), 4), "empty string in an array");
    assert!(fits(size_of::<Event>(), 8 + 4 + 4), "bare event");
    assert!(
        fits(size_of::<Span>(), 16 + 8 + 8 + 2 + 8 + 8 + 4 + 4 + 4 + 4 + 4),
        "bare span"
    );
    assert!(fits(size_of::<i64>(), 8) && fits(size_of::<bool>(), 1));
}

#[test]
fn a_version_3_payload_that_lies_is_an_error() {
    let mut plain = Vec::new();
    payload("svc", &sample(), &mut plain);
    let cases: [(&str, Vec<u8>, u32); 4] = [
        ("one span short", plain.clone(), 2),
        ("one span too many", plain.clone(), 0),
        ("trailing byte", [plain.as_slice(), &[0]].concat(), 1),
        ("a count of 4 G spans", plain.clone(), u32::MAX),
    ];
    for (what, payload, spans) in cases {
        let mut rec = Vec::new();
        frame(3, &payload, 0, spans, META, &mut rec);
        assert!(decode(&rec).is_err(), "{what}");
    }
    // A list claiming 4 G items is refused by the budget, not allocated.
    let mut crafted = Vec::new();
    packed::put_str(&mut crafted, "svc");
    let mut one = Vec::new();
    packed::put_span::<true>(&mut one, &Span::new([1; 16], [2; 8], "x"));
    crafted.extend_from_slice(&one[..58]);
    crafted.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut rec = Vec::new();
    frame(3, &crafted, 0, 1, META, &mut rec);
    assert!(matches!(decode(&rec), Err(RecordError::Decode(_))));
}
