//! Unit tests of `ended`.

use super::*;
use crate::span::{Event, Kind, Status, Value};

/// A span with every kind of value, text that is not ASCII, an owned
/// name, an error status and several events with attributes.
fn odd_span(n: u8) -> Span {
    let mut s = Span::new([n; 16], [n.wrapping_add(1); 8], "GET /users/:id");
    s.parent_id = Some([0; 8]);
    s.name = Cow::Owned(format!("ünïcode \u{0}\u{1f600} {n}"));
    s.kind = Kind::Consumer;
    s.start_unix_nanos = u64::MAX;
    s.end_unix_nanos = 1;
    s.status = Status::Error("boom: \"quoted\"\n".into());
    s.attributes = vec![
        ("".into(), Value::String(String::new())),
        ("s".into(), Value::String("é".repeat(300))),
        ("b".into(), Value::Bool(true)),
        ("i".into(), Value::I64(i64::MIN)),
        ("nan".into(), Value::F64(f64::from_bits(0x7ff8_dead_beef_0001))),
        ("neg0".into(), Value::F64(-0.0)),
        (
            "sa".into(),
            Value::StringArray(vec!["a".into(), String::new(), "ζ".into()]),
        ),
        ("ba".into(), Value::BoolArray(vec![false, true])),
        ("ia".into(), Value::I64Array(vec![-1, 0, i64::MAX])),
        (
            "fa".into(),
            Value::F64Array(vec![f64::INFINITY, f64::NEG_INFINITY, 0.5]),
        ),
    ];
    s.events = (0..3)
        .map(|k| Event {
            name: format!("event {k}").into(),
            time_unix_nanos: k,
            attributes: vec![("k".into(), Value::I64(k as i64))],
        })
        .collect();
    s.dropped_attributes = 7;
    s.dropped_events = u32::MAX;
    s
}

/// Equal field by field, floats to the bit (NaN payloads too): the
/// spool's serde form of each.
fn same(a: &Span, b: &Span) -> bool {
    let bytes = |s: &Span| bincode::serde::encode_to_vec(s, bincode::config::standard()).ok();
    bytes(a).is_some() && bytes(a) == bytes(b)
}

#[test]
fn every_field_and_value_comes_back_as_pushed_in_order() {
    let mut plain = Span::new([9; 16], [8; 8], "plain");
    plain.status = Status::Ok;
    let spans = [odd_span(1), plain, odd_span(2), Span::new([3; 16], [4; 8], "")];
    let mut ended = Ended::default();
    for s in &spans {
        let mut copy = s.clone();
        ended.push(&mut copy);
        assert_eq!(copy.name, "", "the name moved out");
    }
    assert_eq!(ended.len(), spans.len());
    let mut batch = Vec::new();
    assert_eq!(ended.drain_into(&mut batch), 0);
    assert_eq!(batch.len(), spans.len());
    for (got, want) in batch.iter().zip(&spans) {
        assert!(same(got, want), "{got:?}\n!=\n{want:?}");
    }
    assert!(ended.is_empty());
    assert_eq!(ended.packed_bytes(), 0);
    // The emptied buffer is reused.
    ended.push(&mut spans[1].clone());
    batch.clear();
    assert_eq!(ended.drain_into(&mut batch), 0);
    assert!(same(&batch[0], &spans[1]));
}

#[test]
fn with_names_inline_every_field_comes_back_and_every_byte_is_read() {
    // The spool's form of the same layout (record version 3).
    let spans = [odd_span(3), Span::new([3; 16], [4; 8], ""), odd_span(4)];
    let mut bytes = Vec::new();
    spans.iter().for_each(|s| packed::put_span::<true>(&mut bytes, s));
    let mut r = Reader::new(&bytes, Names::Inline, usize::MAX);
    for want in &spans {
        let got = r.span().expect("decodes");
        assert!(same(&got, want), "{got:?}\n!=\n{want:?}");
    }
    assert!(r.rest().is_empty());
    // Cut anywhere, the last span is refused, never invented.
    for cut in 0..bytes.len() {
        let mut r = Reader::new(&bytes[..cut], Names::Inline, usize::MAX);
        assert!((0..3).map_while(|_| r.span()).count() < 3, "cut at {cut}");
    }
}

#[test]
fn the_standard_span_packs_in_under_200_bytes() {
    let mut s = Span::new([1; 16], [2; 8], "GET /users/:id");
    s.kind = Kind::Server;
    s.attributes = vec![
        ("http.request.method".into(), Value::from("GET")),
        ("http.route".into(), Value::from("/users/:id")),
        ("http.response.status_code".into(), Value::I64(200)),
    ];
    s.events.push(Event {
        name: "cache.miss".into(),
        time_unix_nanos: 5,
        attributes: vec![],
    });
    let mut ended = Ended::default();
    ended.push(&mut s);
    assert!(ended.packed_bytes() < 200, "{} bytes", ended.packed_bytes());
}

#[test]
fn a_drained_buffer_keeps_its_room_unless_mostly_unused_then_gives_half_back() {
    let span = odd_span(1);
    let mut ended = Ended::default();
    let interval = |spans: usize, ended: &mut Ended| {
        (0..spans).for_each(|_| ended.push(&mut span.clone()));
        let mut batch = Vec::new();
        assert_eq!(ended.drain_into(&mut batch), 0);
        assert_eq!(batch.len(), spans);
        (ended.bytes.capacity(), ended.names.capacity())
    };
    let room = interval(400, &mut ended);
    // Spans that use a quarter of both rooms, at least.
    let mut one = Ended::default();
    one.push(&mut span.clone());
    let (per_span, names_per_span) = (one.bytes.len(), one.names.len());
    let quarter = (room.0 / 4)
        .div_ceil(per_span)
        .max((room.1 / 4).div_ceil(names_per_span));
    assert_eq!(interval(quarter, &mut ended), room, "a quarter used: all kept");
    let (bytes, names) = interval(quarter / 2, &mut ended);
    assert!(bytes < room.0 && bytes >= room.0 / 2, "{bytes} of {}", room.0);
    assert!(names < room.1 && names >= room.1 / 2, "{names} of {}", room.1);
}

#[test]
fn drained_inline_the_spans_are_copied_as_packing_them_inline_would() {
    let mut plain = Span::new([9; 16], [8; 8], "plain");
    plain.status = Status::Ok;
    let spans = [odd_span(5), plain, odd_span(6), Span::new([3; 16], [4; 8], "")];
    let mut ended = Ended::default();
    spans.iter().for_each(|s| ended.push(&mut s.clone()));
    let mut run = Run::default();
    assert_eq!(ended.drain_inline(&mut run), 0);
    assert!(ended.is_empty() && ended.names.is_empty() && ended.packed_bytes() == 0);
    let mut want = Run::default();
    spans.iter().for_each(|s| want.push(s));
    assert_eq!(run.len(), spans.len());
    assert_eq!(run.bytes(0, run.len()), want.bytes(0, want.len()));
    let (back, lost) = run.unpack();
    assert_eq!(lost, 0);
    for (got, want) in back.iter().zip(&spans) {
        assert!(same(got, want), "{got:?}\n!=\n{want:?}");
    }
}

#[test]
fn a_truncated_buffer_reports_its_spans_instead_of_inventing_them() {
    for inline in [false, true] {
        let mut ended = Ended::default();
        ended.push(&mut odd_span(1));
        ended.push(&mut odd_span(2));
        let keep = ended.bytes.len() - 3;
        ended.bytes.truncate(keep);
        let (lost, batch) = if inline {
            let mut run = Run::default();
            (ended.drain_inline(&mut run), run.unpack().0)
        } else {
            let mut batch = Vec::new();
            (ended.drain_into(&mut batch), batch)
        };
        assert_eq!(lost, 1, "inline {inline}: the cut span is reported");
        assert_eq!(batch.len(), 1);
        assert!(same(&batch[0], &odd_span(1)));
        assert!(ended.is_empty() && ended.names.is_empty(), "and nothing is left behind");
    }
}
