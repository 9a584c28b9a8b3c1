//! Arbitrary spans (built with `arbitrary`) through what the tracer does to
//! an ended span: packed into the ended-span buffer and unpacked at the
//! flush (they come back exactly as they went in), then through the Zipkin
//! v2 encoder: the output always parses with serde_json, matches each span
//! field by field, and keeps the constraints Zipkin's own decoder enforces
//! beyond the spec's schema (lower-case hex ids of exact length, duration
//! at least 1, every tag value a string).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use spans::{Input, span, through_the_batch};
use spillway::unstable::span::{Kind, Span, Status, Value};

mod spans;
use spillway::unstable::zipkin::{Encoder, duration_micros, hex, kind_name};

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
    let annotations = j
        .get("annotations")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
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
    let tags = j
        .get("tags")
        .map_or(&empty, |t| t.as_object().expect("tags is an object"));
    assert!(!tags.is_empty() || j.get("tags").is_none(), "no empty tags object");
    assert!(tags.values().all(Json::is_string), "every tag is a string");
    let is_error = matches!(span.status, Status::Error(_));
    for (k, v) in &span.attributes {
        let owned_by_status = (k == "otel.status_code" && span.status != Status::Unset)
            || (k == "error"
                && (is_error || matches!(v, Value::Bool(false)) || matches!(v, Value::String(s) if s == "false")))
            || (k.starts_with("otel.dropped_") && (span.dropped_attributes > 0 || span.dropped_events > 0));
        if owned_by_status {
            continue;
        }
        let tag = tags
            .get(k.as_str())
            .and_then(Json::as_str)
            .unwrap_or_else(|| panic!("tag {k:?} missing"));
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
