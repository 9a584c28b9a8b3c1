//! Shared pieces of the benchmarks: a transport that discards, and the
//! standard span every benchmark records.

use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanKind, SpanStart, TracerPlugin};
use spillway::transport::{SendError, Transport};
use spillway::{Config, SpillwayTracer};

/// Accepts every request without I/O.
pub struct Discard;

impl Transport for Discard {
    fn send(&mut self, _json: &[u8], _timeout: std::time::Duration) -> Result<(), SendError> {
        Ok(())
    }
    fn endpoint(&self) -> &str {
        "discard"
    }
}

pub fn tracer() -> SpillwayTracer {
    SpillwayTracer::builder()
        .config(Config {
            max_queue_spans: 1 << 22,
            ..Config::default()
        })
        .transport(Box::new(Discard))
        .build()
        .expect("bench tracer")
}

/// The standard span: a SERVER span started with 3 attributes, one event, ended.
#[inline]
pub fn record_one(tracer: &SpillwayTracer) {
    let span = tracer.start_span(SpanStart {
        name: "GET /users/:id",
        kind: SpanKind::Server,
        parent: None,
        attributes: attributes(),
        start_time_unix_nanos: None,
    });
    tracer.add_event(
        span,
        SpanEvent {
            name: "cache.miss",
            attributes: Vec::new(),
            time_unix_nanos: None,
        },
    );
    tracer.end_span(span, None);
}

/// The standard span's three attributes, as bext hands them over.
#[inline]
pub fn attributes() -> Vec<(String, AttrValue)> {
    vec![
        ("http.request.method".to_owned(), AttrValue::from("GET")),
        ("http.route".to_owned(), AttrValue::from("/users/:id")),
        ("http.response.status_code".to_owned(), AttrValue::I64(200)),
    ]
}
