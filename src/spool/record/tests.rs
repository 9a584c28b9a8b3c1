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
    let h = check(&out).unwrap();
    let blocks = blocks(&out, &h, true).unwrap();
    assert_eq!(blocks.len(), 200usize.div_ceil(BLOCK_SPANS));
    assert!(blocks.iter().all(|b| b.codec == BLOCK_ZSTD));
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
    frame(3, &payload, FLAG_LZ4, 0, META, &mut rec);
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
        frame(3, &payload, FLAG_LZ4, 1, META, &mut rec);
        assert!(
            matches!(decode(&rec), Err(RecordError::Decode(_))),
            "claimed {claimed}: {:?}",
            decode(&rec).err()
        );
    }
    for cut in [0, 3] {
        let mut rec = Vec::new();
        frame(3, &good[..cut], FLAG_LZ4, 1, META, &mut rec);
        assert!(matches!(decode(&rec), Err(RecordError::Decode(_))), "cut to {cut}");
    }
    let mut rec = Vec::new();
    frame(3, &good, FLAG_LZ4, 1, META, &mut rec);
    assert_eq!(decode(&rec).unwrap().spans.len(), 1);
}

#[test]
fn codec_flags_a_version_does_not_know_are_unknown_flags() {
    for (version, flags) in [
        (2, FLAG_DEFLATE | FLAG_LZ4),
        (1, FLAG_LZ4),
        (2, 4),
        (3, FLAG_DEFLATE),
        (3, 4),
        (4, FLAG_LZ4),
        (4, FLAG_DEFLATE),
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

/// `n` distinct spans (each names its index) and their version 4 record.
fn distinct(n: usize) -> (Vec<Span>, Vec<u8>) {
    let spans: Vec<Span> = (0..n)
        .map(|i| Span::new([1; 16], (i as u64 + 1).to_le_bytes(), format!("GET /item/{i}")))
        .collect();
    let mut out = Vec::new();
    encode("svc", &spans, META, &mut out).unwrap();
    (spans, out)
}

/// The span ids a mended record holds.
fn kept_ids(m: &Mended) -> Vec<u64> {
    let r = decode(&m.record).expect("a mended record is sound");
    assert_eq!((r.meta, r.service.as_str()), (META, "svc"));
    r.spans.iter().map(|s| u64::from_le_bytes(s.span_id)).collect()
}

/// Where each block of a sound record starts and ends.
fn block_spans(record: &[u8]) -> Vec<(usize, usize)> {
    let h = check(record).unwrap();
    blocks(record, &h, true)
        .unwrap()
        .iter()
        .map(|b| (b.at, b.end))
        .collect()
}

#[test]
fn a_flipped_byte_costs_the_block_it_lands_in_and_no_other() {
    let (_, out) = distinct(1000);
    let ranges = block_spans(&out);
    assert_eq!(ranges.len(), 16);
    for (k, &(at, end)) in ranges.iter().enumerate() {
        // The block's head, its CRC and its stored bytes alike.
        for i in [at, at + 4, at + 9, (at + end) / 2, end - 1] {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode(&bad), Err(RecordError::Block { at: a, .. }) if a == at),
                "byte {i}: {:?}",
                decode(&bad).err()
            );
            let m = mend(&bad).expect("the other blocks are kept");
            let want: Vec<u64> = (1..=1000).filter(|id| (*id as usize - 1) / BLOCK_SPANS != k).collect();
            assert_eq!(kept_ids(&m), want, "byte {i} of block {k}");
            assert_eq!((m.kept, m.lost), (want.len() as u32, 1000 - want.len() as u32));
        }
    }
}

#[test]
fn zeroed_bytes_cost_only_the_blocks_they_touch() {
    let (_, out) = distinct(1000);
    let ranges = block_spans(&out);
    for from in (ranges[0].0..out.len()).step_by(97) {
        let to = (from + 256).min(out.len());
        let mut bad = out.clone();
        bad[from..to].fill(0);
        let touched: Vec<usize> = (0..ranges.len())
            .filter(|&k| ranges[k].0 < to && from < ranges[k].1)
            .collect();
        let want: Vec<u64> = (1..=1000u64)
            .filter(|id| !touched.contains(&((*id as usize - 1) / BLOCK_SPANS)))
            .collect();
        match mend(&bad) {
            Some(m) => assert_eq!(kept_ids(&m), want, "zeroed {from}..{to}"),
            None => assert!(want.is_empty(), "zeroed {from}..{to}: nothing kept"),
        }
    }
}

#[test]
fn a_record_cut_short_keeps_the_blocks_wholly_before_the_cut() {
    let (_, out) = distinct(300);
    let ranges = block_spans(&out);
    for len in 0..out.len() {
        let whole = ranges.iter().filter(|&&(_, end)| end <= len).count();
        let want: Vec<u64> = (1..=(whole * BLOCK_SPANS).min(300) as u64).collect();
        match mend(&out[..len]) {
            Some(m) => assert_eq!(kept_ids(&m), want, "cut to {len}"),
            None => assert!(want.is_empty(), "cut to {len}: nothing kept"),
        }
    }
}

#[test]
fn damage_to_the_head_keeps_nothing() {
    let (_, out) = distinct(100);
    let head = head_end(&out).unwrap();
    for i in (0..head).filter(|&i| !(16..20).contains(&i) || i == 17) {
        let mut bad = out.clone();
        bad[i] ^= 0x01;
        assert!(decode(&bad).is_err(), "byte {i}");
        assert_eq!(mend(&bad), None, "byte {i} of the head");
    }
    // A sound record is not a mended one.
    assert_eq!(mend(&out).map(|m| m.lost), Some(0));
}

#[test]
fn a_version_4_record_that_lies_is_an_error() {
    let (_, out) = distinct(100);
    let h = check(&out).unwrap();
    let first = blocks(&out, &h, true).unwrap()[0].at;
    let reframe = |edit: &dyn Fn(&mut Vec<u8>), spans: u32| {
        let mut payload = out[HEADER_LEN..].to_vec();
        edit(&mut payload);
        let mut rec = Vec::new();
        frame(4, &payload, 0, spans, META, &mut rec);
        rec
    };
    let at = first - HEADER_LEN;
    // Blocks that hold another count than the header's.
    assert!(matches!(decode(&reframe(&|_| {}, 99)), Err(RecordError::Count { .. })));
    assert!(matches!(decode(&reframe(&|_| {}, 101)), Err(RecordError::Count { .. })));
    // A byte after the last block, a block of 0 or 65 spans, an unknown
    // codec: refused before their CRC is looked at.
    assert!(decode(&reframe(&|p| p.push(0), 100)).is_err());
    for (byte, value) in [(4, 0u8), (4, 65), (6, 1), (6, FLAG_LZ4), (7, 1)] {
        let bad = reframe(&|p| p[at + byte] = value, 100);
        assert!(
            matches!(decode(&bad), Err(RecordError::Block { at: a, .. }) if a == first),
            "byte {byte} = {value}"
        );
    }
    // A service name that runs past the payload.
    let bad = reframe(&|p| p[0..4].copy_from_slice(&u32::MAX.to_le_bytes()), 100);
    assert!(decode(&bad).is_err());
    assert_eq!(mend(&bad), None);
}

#[test]
fn a_block_whose_crc_holds_but_does_not_decode_is_left_out() {
    let (_, out) = distinct(300);
    let ranges = block_spans(&out);
    let (at, end) = ranges[1];
    let mut bad = out.clone();
    // A faulty writer: bytes that do not decode, under a CRC of their own.
    bad[at + BLOCK_HEAD..end].fill(0xff);
    let crc = block_crc(&bad[at..end]);
    bad[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
    assert!(decode(&bad).is_err());
    let m = mend(&bad).expect("the other blocks are kept");
    let want: Vec<u64> = (1..=300).filter(|id| (*id as usize - 1) / BLOCK_SPANS != 1).collect();
    assert_eq!(kept_ids(&m), want);
    assert_eq!((m.kept, m.lost), (236, 64));
}
