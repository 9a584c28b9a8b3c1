//! The requests `spillway generate` records, shaped as bext records them:
//! a SERVER span with a DB CLIENT child, attributes, and now and then an
//! error with an exception event. Shared with the benchmarks, so what
//! they measure on "generate's spans" is what generate sends.

use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanKind, SpanStart, SpanStatus, TracerPlugin};

/// Records request number `n` through `tracer`: two spans; it fails
/// (an error status and an exception event) with probability `error_ratio`.
pub fn request<T: TracerPlugin + ?Sized>(tracer: &T, rng: &mut fastrand::Rng, n: u64, error_ratio: f64) {
    let user = rng.u32(1..100_000);
    let failed = rng.f64() < error_ratio;
    let server = tracer.start_span(SpanStart {
        name: "GET /users/:id",
        kind: SpanKind::Server,
        parent: None,
        attributes: vec![
            ("http.request.method".to_owned(), "GET".into()),
            ("http.route".to_owned(), "/users/:id".into()),
            ("url.path".to_owned(), format!("/users/{user}").into()),
            ("client.address".to_owned(), "127.0.0.1".into()),
        ],
        start_time_unix_nanos: None,
    });
    let db = tracer.start_span(SpanStart {
        name: "SELECT users",
        kind: SpanKind::Client,
        parent: Some(server),
        attributes: vec![
            ("db.system".to_owned(), "postgresql".into()),
            ("db.query.text".to_owned(), "SELECT * FROM users WHERE id = $1".into()),
            ("server.address".to_owned(), "db.internal".into()),
            ("server.port".to_owned(), AttrValue::I64(5432)),
        ],
        start_time_unix_nanos: None,
    });
    tracer.set_attribute(db, "db.response.returned_rows", AttrValue::I64(i64::from(!failed)));
    tracer.end_span(db, None);
    if failed {
        tracer.add_event(
            server,
            SpanEvent {
                name: "exception",
                attributes: vec![
                    ("exception.type".to_owned(), "TimeoutError".into()),
                    ("exception.message".to_owned(), format!("request {n} timed out").into()),
                ],
                time_unix_nanos: None,
            },
        );
        tracer.set_status(
            server,
            SpanStatus::Error {
                description: "upstream timeout".into(),
            },
        );
        tracer.set_attribute(server, "http.response.status_code", AttrValue::I64(504));
    } else {
        tracer.set_status(server, SpanStatus::Ok);
        tracer.set_attribute(server, "http.response.status_code", AttrValue::I64(200));
    }
    tracer.end_span(server, None);
}
