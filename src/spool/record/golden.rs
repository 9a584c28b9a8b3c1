//! Unit tests of `record` (golden records).

use super::*;

/// The golden record of each format written, by file name.
const WRITTEN: &str = "record-v4.bin";

fn golden(name: &str) -> String {
    format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Reads the committed record `name` (of `version`), its bytes and what
/// they decode to. `SPILLWAY_WRITE_GOLDEN=1`
/// writes [`WRITTEN`], the format written now (only ever for a new format,
/// never to "fix" this test).
fn read(name: &str, version: u8) -> (Vec<u8>, Record) {
    let sample = tests::sample();
    if name == WRITTEN && std::env::var_os("SPILLWAY_WRITE_GOLDEN").is_some() {
        let mut out = Vec::new();
        encode("golden-svc", &sample, tests::META, &mut out).unwrap();
        std::fs::write(golden(name), &out).unwrap();
    }
    let bytes = std::fs::read(golden(name)).expect("golden record is committed");
    assert_eq!(bytes[4], version, "{name}");
    let r = decode(&bytes).unwrap();
    assert_eq!(
        r.meta.created_unix_ms,
        if version == 1 { 1_764_000_000_000 } else { 42 }
    );
    assert_eq!(r.spans.len(), 1);
    let (got, want) = (&r.spans[0], &sample[0]);
    assert_eq!(
        (got.trace_id, got.span_id, got.parent_id),
        (want.trace_id, want.span_id, want.parent_id)
    );
    assert_eq!(
        (&got.name, got.kind, &got.status),
        (&want.name, want.kind, &want.status)
    );
    assert_eq!(
        (got.start_unix_nanos, got.end_unix_nanos),
        (want.start_unix_nanos, want.end_unix_nanos)
    );
    assert_eq!(got.events, want.events);
    assert_eq!((got.dropped_attributes, got.dropped_events), (1, 2));
    let crate::span::Value::F64(nan) = got.attributes[0].1 else {
        panic!("nan attribute")
    };
    assert!(nan.is_nan());
    assert_eq!(&got.attributes[1..], &want.attributes[1..]);
    (bytes, r)
}

#[test]
fn version_1_golden_record_still_decodes() {
    let (_, r) = read("record-v1.bin", 1);
    assert_eq!(
        (r.service.as_str(), r.meta.seq, r.meta.tree),
        (UNKNOWN_SERVICE, 0, Tree::Queue)
    );
}

#[test]
fn version_2_golden_record_deflated_still_decodes() {
    let (bytes, r) = read("record-v2.bin", 2);
    assert_eq!(bytes[5], FLAG_DEFLATE);
    assert_eq!((r.service.as_str(), r.meta), ("golden-svc", tests::META));
}

#[test]
fn version_2_golden_record_in_lz4_still_decodes() {
    let (bytes, r) = read("record-v2-lz4.bin", 2);
    assert_eq!(bytes[5], FLAG_LZ4);
    assert_eq!((r.service.as_str(), r.meta), ("golden-svc", tests::META));
}

#[test]
fn version_3_golden_record_still_decodes() {
    let (bytes, r) = read("record-v3.bin", 3);
    assert_eq!(bytes[5], FLAG_LZ4);
    assert_eq!(service(&bytes).unwrap(), "golden-svc");
    assert_eq!((r.service.as_str(), r.meta), ("golden-svc", tests::META));
}

#[test]
fn version_4_golden_record_decodes_and_is_what_encode_writes() {
    let (bytes, r) = read(WRITTEN, 4);
    assert_eq!(service(&bytes).unwrap(), "golden-svc");
    assert_eq!((r.service.as_str(), r.meta), ("golden-svc", tests::META));
    let mut again = Vec::new();
    encode(&r.service, &r.spans, r.meta, &mut again).unwrap();
    assert_eq!(again, bytes);
}
