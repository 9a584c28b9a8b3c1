//! Arbitrary spans (built with `arbitrary`) through what the tracer does to
//! an ended span: packed into the ended-span buffer and unpacked at the
//! flush (they come back exactly as they went in), then through the Zipkin
//! v2 encoder: the output always parses with serde_json, matches each span
//! field by field, and keeps the constraints Zipkin's own decoder enforces
//! beyond the spec's schema (lower-case hex ids of exact length, duration
//! at least 1, every tag value a string).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use spillway::unstable::ended::Ended;
use spillway::unstable::span::{Event, Kind, Span, Status, Value};
use spillway::unstable::zipkin::{Encoder, duration_micros, hex, kind_name};

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
struct FSpan {
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
struct Input {
    service: String,
    spans: Vec<FSpan>,
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

fn span(f: FSpan) -> Span {
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
        kind: [Kind::Internal, Kind::Server, Kind::Client, Kind::Producer, Kind::Consumer][usize::from(f.kind % 5)],
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

fn is_lower_hex(v: &Json, len: usize) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn check(span: &Span, service: &str, j: &Json) {
    assert!(is_lower_hex(&j["traceId"], 32) && j["traceId"] == hex(&span.trace_id));
    assert!(is_lower_hex(&j["id"], 16) && j["id"] == hex(&span.span_id));
    match &span.parent_id {
        Some(p) => assert!(is_lower_hex(&j["parentId"], 16) && j["parentId"] == hex(p)),
        None => assert!(j.get("parentId").is_none()),
    }
    if span.name.is_empty() {
        assert!(j.get("name").is_none());
    } else {
        assert_eq!(j["name"], *span.name);
    }
    assert_eq!(j.get("kind").and_then(Json::as_str), kind_name(span.kind));
    let ts = span.start_unix_nanos / 1000;
    assert_eq!(j.get("timestamp").and_then(Json::as_u64), (ts > 0).then_some(ts));
    let duration = j["duration"].as_u64().expect("duration is an integer");
    assert!(duration >= 1);
    assert_eq!(duration, duration_micros(span));
    assert_eq!(j["localEndpoint"]["serviceName"], service);
    if let Some(remote) = j.get("remoteEndpoint") {
        assert!(matches!(span.kind, Kind::Client | Kind::Producer) && remote.is_object());
    }
    let annotations = j.get("annotations").and_then(Json::as_array).cloned().unwrap_or_default();
    assert_eq!(annotations.len(), span.events.len());
    for (a, e) in annotations.iter().zip(&span.events) {
        assert_eq!(a["timestamp"].as_u64(), Some(e.time_unix_nanos / 1000));
        let text = a["value"].as_str().expect("annotation value is a string");
        if e.attributes.is_empty() {
            assert_eq!(text, e.name);
        } else {
            // `"name": {attributes}`: braced, it is a JSON object.
            let obj: Json = serde_json::from_str(&format!("{{{text}}}")).expect("name: {attributes}");
            let attrs = obj[&*e.name].as_object().expect("attributes object");
            assert_eq!(attrs.len(), e.attributes.len());
        }
    }
    let empty = serde_json::Map::new();
    let tags = j.get("tags").map_or(&empty, |t| t.as_object().expect("tags is an object"));
    assert!(!tags.is_empty() || j.get("tags").is_none(), "no empty tags object");
    assert!(tags.values().all(Json::is_string), "every tag is a string");
    let is_error = matches!(span.status, Status::Error(_));
    for (k, v) in &span.attributes {
        let owned_by_status = (k == "otel.status_code" && span.status != Status::Unset)
            || (k == "error" && (is_error || matches!(v, Value::Bool(false)) || matches!(v, Value::String(s) if s == "false")))
            || (k.starts_with("otel.dropped_") && (span.dropped_attributes > 0 || span.dropped_events > 0));
        if owned_by_status {
            continue;
        }
        let tag = tags.get(k.as_str()).and_then(Json::as_str).unwrap_or_else(|| panic!("tag {k:?} missing"));
        match v {
            Value::String(s) => assert_eq!(tag, s),
            Value::Bool(b) => assert_eq!(tag, b.to_string()),
            Value::I64(i) => assert_eq!(tag, i.to_string()),
            Value::F64(f) if f.is_nan() => assert_eq!(tag, "NaN"),
            Value::F64(f) => assert_eq!(tag.parse::<f64>().ok(), Some(*f), "{tag}"),
            Value::StringArray(a) => assert_eq!(serde_json::from_str::<Vec<String>>(tag).ok().as_ref(), Some(a)),
            Value::BoolArray(a) => assert_eq!(serde_json::from_str::<Vec<bool>>(tag).ok().as_ref(), Some(a)),
            Value::I64Array(a) => assert_eq!(serde_json::from_str::<Vec<i64>>(tag).ok().as_ref(), Some(a)),
            Value::F64Array(a) => {
                let parsed: Vec<Json> = serde_json::from_str(tag).expect("a JSON array");
                assert_eq!(parsed.len(), a.len());
            }
        }
    }
    match &span.status {
        Status::Unset => {}
        Status::Ok => assert_eq!(tags["otel.status_code"], "OK"),
        Status::Error(d) => {
            assert_eq!(tags["otel.status_code"], "ERROR");
            assert_eq!(tags["error"], d.as_str());
        }
    }
}

/// `spans` packed and unpacked as the tracer's ended batch.
fn through_the_batch(spans: &[Span]) -> Vec<Span> {
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

fuzz_target!(|input: Input| {
    let spans: Vec<Span> = input.spans.into_iter().map(span).collect();
    let spans = through_the_batch(&spans);
    let mut encoder = Encoder::new(&input.service);
    let mut out = Vec::new();
    encoder.encode_batch(&spans, &mut out);
    let parsed: Json = serde_json::from_slice(&out).expect("the encoder's output is JSON");
    let list = parsed.as_array().expect("a batch is an array");
    assert_eq!(list.len(), spans.len());
    for (span, j) in spans.iter().zip(list) {
        check(span, &input.service, j);
    }
});
