//! Unit tests of `record` (golden records).

use super::*;

fn golden(version: u8) -> String {
    format!("{}/tests/golden/record-v{version}.bin", env!("CARGO_MANIFEST_DIR"))
}

/// Reads a committed record of `version`. `SPILLWAY_WRITE_GOLDEN=1`
/// writes the current version's (only ever for a new format version,
/// never to "fix" this test).
fn read(version: u8) -> Record {
    let sample = tests::sample();
    if version == VERSION && std::env::var_os("SPILLWAY_WRITE_GOLDEN").is_some() {
        let mut out = Vec::new();
        encode("golden-svc", &sample, tests::META, &mut out).unwrap();
        std::fs::write(golden(version), &out).unwrap();
    }
    let bytes = std::fs::read(golden(version)).expect("golden record is committed");
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
    r
}

#[test]
fn version_1_golden_record_still_decodes() {
    let r = read(1);
    assert_eq!(
        (r.service.as_str(), r.meta.seq, r.meta.tree),
        (UNKNOWN_SERVICE, 0, Tree::Queue)
    );
}

#[test]
fn version_2_golden_record_still_decodes() {
    let r = read(2);
    assert_eq!((r.service.as_str(), r.meta), ("golden-svc", tests::META));
}
