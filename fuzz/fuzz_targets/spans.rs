//! The fuzz targets' arbitrary spans: what `arbitrary` builds, turned
//! into spans as the tracer makes them (non-zero ids, unique attribute
//! keys), and the tracer's ended-span buffer they pass through.

use arbitrary::Arbitrary;
use spillway::unstable::ended::Ended;
use spillway::unstable::span::{Event, Kind, Span, Status, Value};

#[derive(Arbitrary, Debug)]
enum FValue {
    Str(String),
    Bool(bool),
    I64(i64),
    F64(f64),
    StrArray(Vec<String>),
    BoolArray(Vec<bool>),
    I64Array(Vec<i64>),
    F64Array(Vec<f64>),
}

#[derive(Arbitrary, Debug)]
pub struct FSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    name: String,
    kind: u8,
    start: u64,
    end: u64,
    status: Option<Option<String>>,
    attributes: Vec<(String, FValue)>,
    events: Vec<(String, u64, Vec<(String, FValue)>)>,
    dropped_attributes: u32,
    dropped_events: u32,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub service: String,
    pub spans: Vec<FSpan>,
}

fn value(v: FValue) -> Value {
    match v {
        FValue::Str(s) => Value::String(s),
        FValue::Bool(b) => Value::Bool(b),
        FValue::I64(i) => Value::I64(i),
        FValue::F64(f) => Value::F64(f),
        FValue::StrArray(a) => Value::StringArray(a),
        FValue::BoolArray(a) => Value::BoolArray(a),
        FValue::I64Array(a) => Value::I64Array(a),
        FValue::F64Array(a) => Value::F64Array(a),
    }
}

/// Attributes as the tracer keeps them: unique keys, the last write wins.
fn attributes(raw: Vec<(String, FValue)>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for (k, v) in raw {
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = value(v),
            None => out.push((k, value(v))),
        }
    }
    out
}

pub fn span(f: FSpan) -> Span {
    // The tracer never makes all-zero ids.
    let nonzero = |mut id: Vec<u8>| {
        if id.iter().all(|&b| b == 0) {
            id[0] = 1;
        }
        id
    };
    Span {
        trace_id: nonzero(f.trace_id.to_vec()).try_into().unwrap(),
        span_id: nonzero(f.span_id.to_vec()).try_into().unwrap(),
        parent_id: f.parent_id.map(|p| nonzero(p.to_vec()).try_into().unwrap()),
        name: f.name.into(),
        kind: [
            Kind::Internal,
            Kind::Server,
            Kind::Client,
            Kind::Producer,
            Kind::Consumer,
        ][usize::from(f.kind % 5)],
        start_unix_nanos: f.start,
        end_unix_nanos: f.end,
        status: match f.status {
            None => Status::Unset,
            Some(None) => Status::Ok,
            Some(Some(d)) => Status::Error(d),
        },
        attributes: attributes(f.attributes),
        events: f
            .events
            .into_iter()
            .map(|(name, t, attrs)| Event {
                name: name.into(),
                time_unix_nanos: t,
                attributes: attributes(attrs),
            })
            .collect(),
        dropped_attributes: f.dropped_attributes,
        dropped_events: f.dropped_events,
    }
}

/// `spans` packed and unpacked as the tracer's ended batch.
pub fn through_the_batch(spans: &[Span]) -> Vec<Span> {
    let mut ended = Ended::default();
    for s in spans {
        ended.push(&mut s.clone());
    }
    assert_eq!(ended.len(), spans.len());
    let mut out = Vec::new();
    assert_eq!(ended.drain_into(&mut out), 0, "every span unpacks");
    assert!(ended.is_empty());
    // Debug is exact but for NaN payloads, which nothing downstream keeps apart.
    assert_eq!(format!("{out:?}"), format!("{spans:?}"));
    out
}
