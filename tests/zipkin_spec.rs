//! Every encoding is valid against the official Zipkin v2 spec
//! (vendored in `tests/vendor/zipkin-api/zipkin2-api.yaml`, `ListOfSpans`), parses
//! with an independent Zipkin model (`zipkin-types`), and meets what
//! Zipkin's own decoder demands beyond the spec's (unanchored) patterns:
//! exact-length lower-case hex ids, no zero duration, string tags, no
//! `INTERNAL` kind. Checked for ordinary spans, hand-made nasty ones, and
//! proptest-generated ones.
//!
//! The same spans in proto3 decode, by an independent decoder built from
//! the vendored `zipkin.proto` (`common::proto3`), to exactly that JSON,
//! field by field.

use crate::common;

use common::{proto3, validator};
use proptest::prelude::*;
use serde_json::Value as Json;
use spillway::Encoding;
use spillway::unstable::span::{Event, Kind, Span, Status, Value};
use spillway::unstable::zipkin::Encoder;
use std::sync::OnceLock;

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `zipkin.proto3.ListOfSpans`, compiled once.
fn list_of_spans() -> &'static prost_reflect::MessageDescriptor {
    static LIST: OnceLock<prost_reflect::MessageDescriptor> = OnceLock::new();
    LIST.get_or_init(proto3::list_of_spans)
}

/// Encodes `spans` in proto3 and decodes them independently into the
/// Zipkin v2 JSON model; each must equal what the JSON encoder wrote.
fn check_proto3(spans: &[Span], json: &Json) {
    let mut body = Vec::new();
    Encoder::with_encoding(Encoding::Proto3, "svc").encode_batch(spans, &mut body);
    let decoded = proto3::decode(list_of_spans(), &body).unwrap_or_else(|e| panic!("proto3 does not decode: {e}"));
    let json = json.as_array().expect("array");
    assert_eq!(decoded.len(), json.len(), "one message per span");
    for (p, j) in decoded.iter().zip(json) {
        assert_eq!(p, j, "proto3 and JSON disagree");
    }
    // A body is the concatenation of its spans, as the sender builds it
    // one span at a time.
    let mut one_by_one = Vec::new();
    let mut encoder = Encoder::with_encoding(Encoding::Proto3, "svc");
    for span in spans {
        encoder.encode_span(span, &mut one_by_one);
    }
    assert_eq!(one_by_one, body);
}

/// Encodes `spans` and checks the output every way; returns the JSON.
fn check(spans: &[Span]) -> Json {
    let json = check_json(spans);
    check_proto3(spans, &json);
    json
}

fn check_json(spans: &[Span]) -> Json {
    let mut out = Vec::new();
    Encoder::new("svc").encode_batch(spans, &mut out);
    let json: Json = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
    let errors: Vec<String> = validator()
        .iter_errors(&json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "spec violations: {errors:?}\n{json}");
    let parsed: Vec<zipkin_types::Span> =
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("zipkin-types refuses it: {e}\n{json}"));
    assert_eq!(parsed.len(), spans.len());
    for (span, j) in spans.iter().zip(json.as_array().expect("array")) {
        assert!(is_lower_hex(j["traceId"].as_str().unwrap(), 32), "{j}");
        assert!(is_lower_hex(j["id"].as_str().unwrap(), 16), "{j}");
        if let Some(p) = j.get("parentId") {
            assert!(is_lower_hex(p.as_str().unwrap(), 16), "{j}");
        }
        assert!(j["duration"].as_u64().unwrap() >= 1, "{j}");
        assert_ne!(j.get("kind").and_then(Json::as_str), Some("INTERNAL"));
        if let Some(tags) = j.get("tags") {
            assert!(tags.as_object().unwrap().values().all(Json::is_string), "{j}");
        }
        if !span.name.is_empty() {
            assert_eq!(j["name"], &*span.name, "names survive escaping");
        }
        for (k, v) in &span.attributes {
            if let Value::String(s) = v
                && k != "error"
                && k != "otel.status_code"
            {
                assert_eq!(j["tags"][k], s.as_str(), "tag {k:?} survives escaping");
            }
        }
    }
    json
}

fn base() -> Span {
    Span {
        trace_id: [0x5a; 16],
        span_id: [0x01, 0, 0, 0, 0, 0, 0, 0xff],
        parent_id: Some([0x0f; 8]),
        name: "GET /users/:id".into(),
        kind: Kind::Server,
        start_unix_nanos: 1_764_000_000_000_000_000,
        end_unix_nanos: 1_764_000_000_250_000_000,
        status: Status::Ok,
        attributes: vec![("http.request.method".into(), Value::String("GET".into()))],
        events: Default::default(),
        dropped_attributes: 0,
        dropped_events: 0,
    }
}

#[test]
fn ordinary_spans_of_every_kind() {
    let spans: Vec<Span> = [
        Kind::Internal,
        Kind::Server,
        Kind::Client,
        Kind::Producer,
        Kind::Consumer,
    ]
    .into_iter()
    .map(|kind| Span { kind, ..base() })
    .collect();
    let json = check(&spans);
    assert!(json[0].get("kind").is_none());
    assert_eq!(json[2]["kind"], "CLIENT");
}

#[test]
fn nasty_spans() {
    let all_controls: String = (0u32..0x20).filter_map(char::from_u32).collect();
    let unicode = "é 漢字 😀 \u{2028}\u{2029} \u{feff} \u{7f} \" \\ / \u{10ffff}";
    let huge: Vec<String> = (0..10_000).map(|i| format!("item-{i}")).collect();
    let mut nasty = base();
    nasty.name = format!("{all_controls}{unicode}").into();
    nasty.kind = Kind::Client;
    nasty.status = Status::Error(format!("{unicode}{all_controls}"));
    nasty.attributes = vec![
        (all_controls.clone(), Value::String(unicode.into())),
        (unicode.into(), Value::String(all_controls.clone())),
        ("nan".into(), Value::F64(f64::NAN)),
        ("inf".into(), Value::F64(f64::INFINITY)),
        ("-inf".into(), Value::F64(f64::NEG_INFINITY)),
        ("tiny".into(), Value::F64(5e-324)),
        ("floats".into(), Value::F64Array(vec![f64::NAN, -0.0, 1e308])),
        ("empty".into(), Value::StringArray(vec![])),
        ("empty.i".into(), Value::I64Array(vec![])),
        ("bools".into(), Value::BoolArray(vec![true, false])),
        ("ints".into(), Value::I64Array(vec![i64::MIN, i64::MAX])),
        ("huge".into(), Value::StringArray(huge)),
        ("".into(), Value::String("".into())),
        ("peer.service".into(), Value::String(unicode.into())),
        ("server.port".into(), Value::I64(99_999)),
    ];
    nasty.events = smallvec::smallvec![
        Event {
            name: all_controls.clone().into(),
            time_unix_nanos: 0,
            attributes: vec![],
        },
        Event {
            name: unicode.into(),
            time_unix_nanos: u64::MAX,
            attributes: vec![
                ("x".into(), Value::F64(f64::NAN)),
                (all_controls.clone(), Value::StringArray(vec![unicode.into()])),
            ],
        },
    ];
    let zero_length = Span {
        end_unix_nanos: base().start_unix_nanos,
        ..base()
    };
    let multi_day = Span {
        end_unix_nanos: base().start_unix_nanos + 3 * 86_400 * 1_000_000_000,
        ..base()
    };
    let backwards = Span {
        end_unix_nanos: 1,
        ..base()
    };
    let json = check(&[nasty, zero_length, multi_day, backwards]);
    assert_eq!(json[0]["tags"]["nan"], "NaN");
    assert_eq!(json[0]["tags"]["floats"], "[\"NaN\",-0.0,1e308]");
    assert!(
        json[0]["remoteEndpoint"].get("port").is_none(),
        "port 99999 is not sent"
    );
    assert_eq!(json[1]["duration"], 1);
    assert_eq!(json[2]["duration"], 3u64 * 86_400 * 1_000_000);
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::F64),
        prop::collection::vec(any::<String>(), 0..4).prop_map(Value::StringArray),
        prop::collection::vec(any::<bool>(), 0..4).prop_map(Value::BoolArray),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(Value::I64Array),
        prop::collection::vec(any::<f64>(), 0..4).prop_map(Value::F64Array),
    ]
}

/// Attributes that name a remote endpoint (by name, IPv4 or IPv6), with
/// a port in or out of range, or none.
fn peer() -> impl Strategy<Value = Vec<(String, Value)>> {
    let key = prop::sample::select(vec![
        "peer.service",
        "server.address",
        "net.peer.name",
        "network.peer.address",
    ]);
    let address = prop_oneof![
        any::<String>(),
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u8; 16]>().prop_map(|o| format!("[{}]", std::net::Ipv6Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| std::net::Ipv6Addr::from(o).to_string()),
    ];
    let port = prop::sample::select(vec!["server.port", "net.peer.port", "network.peer.port"]);
    prop::option::of((key, address, prop::option::of((port, -2i64..70_000)))).prop_map(|peer| {
        let Some((key, address, port)) = peer else {
            return vec![];
        };
        let mut attrs = vec![(key.to_owned(), Value::String(address))];
        attrs.extend(port.map(|(k, p)| (k.to_owned(), Value::I64(p))));
        attrs
    })
}

fn span() -> impl Strategy<Value = Span> {
    let kind = prop_oneof![
        Just(Kind::Internal),
        Just(Kind::Server),
        Just(Kind::Client),
        Just(Kind::Producer),
        Just(Kind::Consumer)
    ];
    let status = prop_oneof![
        Just(Status::Unset),
        Just(Status::Ok),
        any::<String>().prop_map(Status::Error)
    ];
    let attrs = (prop::collection::btree_map(any::<String>(), value(), 0..6), peer()).prop_map(|(m, peer)| {
        let mut attrs: Vec<(String, Value)> = m.into_iter().collect();
        attrs.extend(peer);
        attrs
    });
    let event = (
        any::<String>(),
        any::<u64>(),
        prop::collection::vec((any::<String>(), value()), 0..3),
    )
        .prop_map(|(name, time_unix_nanos, attributes)| Event {
            name: name.into(),
            time_unix_nanos,
            attributes,
        });
    (
        (
            any::<[u8; 16]>(),
            any::<[u8; 8]>(),
            any::<Option<[u8; 8]>>(),
            any::<String>(),
            kind,
        ),
        (
            any::<u64>(),
            any::<u64>(),
            status,
            attrs,
            prop::collection::vec(event, 0..3).prop_map(spillway::unstable::span::Events::from_vec),
            any::<u32>(),
            any::<u32>(),
        ),
    )
        .prop_filter("the tracer never makes zero ids", |((t, s, p, ..), _)| {
            *t != [0; 16] && *s != [0; 8] && p.is_none_or(|p| p != [0; 8])
        })
        .prop_map(
            |((trace_id, span_id, parent_id, name, kind), (start, end, status, attributes, events, da, de))| Span {
                trace_id,
                span_id,
                parent_id,
                name: name.into(),
                kind,
                start_unix_nanos: start,
                end_unix_nanos: end,
                status,
                attributes,
                events,
                dropped_attributes: da,
                dropped_events: de,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_spans_satisfy_the_spec(spans in prop::collection::vec(span(), 1..4)) {
        check(&spans);
    }
}

#[test]
fn the_validator_refuses_what_zipkin_refuses() {
    // A control: the checks above would be empty if the schema accepted anything.
    for bad in [
        serde_json::json!([{"traceId": "abc", "id": "0000000000000001"}]),
        serde_json::json!([{"traceId": "5a5a5a5a5a5a5a5a", "id": "0000000000000001", "kind": "INTERNAL"}]),
        serde_json::json!([{"traceId": "5a5a5a5a5a5a5a5a", "id": "0000000000000001", "tags": {"n": 1}}]),
        serde_json::json!([{"traceId": "5a5a5a5a5a5a5a5a", "id": "0000000000000001", "timestamp": 1.5}]),
        serde_json::json!([{"traceId": "5a5a5a5a5a5a5a5a"}]),
        serde_json::json!({"traceId": "5a5a5a5a5a5a5a5a", "id": "0000000000000001"}),
    ] {
        assert!(!validator().is_valid(&bad), "accepted {bad}");
    }
}
