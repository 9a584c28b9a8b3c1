//! Unit tests of `zipkin`.

use super::*;
use crate::span::Event;

fn span() -> Span {
    Span {
        trace_id: [0xab; 16],
        span_id: [0x01; 8],
        parent_id: Some([0x02; 8]),
        name: "GET /users/:id".into(),
        kind: Kind::Client,
        start_unix_nanos: 1_700_000_000_123_456_789,
        end_unix_nanos: 1_700_000_000_123_457_000,
        status: Status::Error("boom \"quoted\"".into()),
        attributes: vec![
            ("a.bool".into(), Value::Bool(true)),
            ("a.int".into(), Value::I64(-42)),
            ("a.nan".into(), Value::F64(f64::NAN)),
            ("a.inf".into(), Value::F64(f64::NEG_INFINITY)),
            ("a.float".into(), Value::F64(0.25)),
            ("a.arr".into(), Value::F64Array(vec![1.5, f64::INFINITY])),
            ("a.strs".into(), Value::StringArray(vec!["x\"y".into(), "\u{1}".into()])),
            ("server.address".into(), Value::String("db.internal".into())),
            ("peer.service".into(), Value::String("Postgres".into())),
            ("server.port".into(), Value::I64(5432)),
            ("error".into(), Value::Bool(true)),
        ],
        events: smallvec::smallvec![
            Event {
                name: "retry".into(),
                time_unix_nanos: 1_700_000_000_123_456_999,
                attributes: vec![],
            },
            Event {
                name: "exception".into(),
                time_unix_nanos: 1_700_000_000_123_457_000,
                attributes: vec![("exception.message".into(), Value::String("line\nbreak".into()))],
            },
        ],
        dropped_attributes: 3,
        dropped_events: 0,
    }
}

fn encode(span: &Span) -> serde_json::Value {
    let mut out = Vec::new();
    Encoder::new("svc\u{7}").encode_batch(std::slice::from_ref(span), &mut out);
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
}

#[test]
fn maps_every_field() {
    let j = &encode(&span())[0];
    assert_eq!(j["traceId"], "abababababababababababababababab");
    assert_eq!(j["id"], "0101010101010101");
    assert_eq!(j["parentId"], "0202020202020202");
    assert_eq!(j["name"], "GET /users/:id");
    assert_eq!(j["kind"], "CLIENT");
    assert_eq!(j["timestamp"], 1_700_000_000_123_456u64);
    assert_eq!(j["duration"], 1, "211 ns rounds to 0 and is sent as 1");
    assert_eq!(j["localEndpoint"]["serviceName"], "svc\u{7}");
    assert_eq!(
        j["remoteEndpoint"],
        serde_json::json!({"serviceName": "Postgres", "port": 5432})
    );
    let tags = &j["tags"];
    assert_eq!(tags["a.bool"], "true");
    assert_eq!(tags["a.int"], "-42");
    assert_eq!(tags["a.nan"], "NaN");
    assert_eq!(tags["a.inf"], "-Infinity");
    assert_eq!(tags["a.float"], "0.25");
    assert_eq!(tags["a.arr"], "[1.5,\"Infinity\"]");
    assert_eq!(tags["a.strs"], "[\"x\\\"y\",\"\\u0001\"]");
    assert_eq!(tags["otel.status_code"], "ERROR");
    assert_eq!(tags["error"], "boom \"quoted\"");
    assert_eq!(tags["otel.dropped_attributes_count"], "3");
    assert!(tags.get("otel.dropped_events_count").is_none());
    assert_eq!(
        j["annotations"][0],
        serde_json::json!({"timestamp": 1_700_000_000_123_456u64, "value": "retry"})
    );
    assert_eq!(
        j["annotations"][1]["value"],
        "\"exception\": {\"exception.message\":\"line\\nbreak\"}"
    );
}

#[test]
fn internal_unset_span_omits_optional_fields() {
    let mut s = span();
    s.kind = Kind::Internal;
    s.status = Status::Unset;
    s.parent_id = None;
    s.attributes = vec![("error".into(), Value::String("false".into()))];
    s.events.clear();
    s.dropped_attributes = 0;
    s.name = "".into();
    let j = &encode(&s)[0];
    let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["duration", "id", "localEndpoint", "timestamp", "traceId"]);
}

#[test]
fn remote_endpoint_ip_and_rank() {
    let mut s = span();
    s.attributes = vec![
        ("db.name".into(), Value::String("users".into())),
        ("network.peer.address".into(), Value::String("10.1.2.3".into())),
        ("network.peer.port".into(), Value::I64(70000)),
    ];
    assert_eq!(encode(&s)[0]["remoteEndpoint"], serde_json::json!({"ipv4": "10.1.2.3"}));
    s.attributes[1].1 = Value::String("::1".into());
    s.attributes[2].1 = Value::I64(443);
    assert_eq!(
        encode(&s)[0]["remoteEndpoint"],
        serde_json::json!({"ipv6": "::1", "port": 443})
    );
    s.kind = Kind::Server;
    assert!(encode(&s)[0].get("remoteEndpoint").is_none());
}

#[test]
fn escapes_every_control_character() {
    let mut s = span();
    s.name = (0u8..0x20)
        .map(char::from)
        .chain("\"\\é😀\u{2028}".chars())
        .collect::<String>()
        .into();
    assert_eq!(encode(&s)[0]["name"], &*s.name);
}

#[test]
fn end_before_start_gives_duration_one() {
    let mut s = span();
    s.end_unix_nanos = 0;
    assert_eq!(encode(&s)[0]["duration"], 1);
}
