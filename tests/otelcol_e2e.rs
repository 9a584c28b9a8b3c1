//! End to end against a second, independent Zipkin receiver: the real
//! OpenTelemetry Collector (Zipkin receiver, file exporter; started by
//! `scripts/test.sh`), beside the real Zipkin.
//!
//! The same request bodies go to both; the collector's OTLP JSON output is
//! read back and checked against what was recorded, field by field, as the
//! collector's Zipkin receiver (contrib `pkg/translator/zipkin`, v0.161.0)
//! maps Zipkin v2 to OpenTelemetry. Where that mapping loses what the
//! OpenTelemetry Zipkin exporter spec puts in (an `OK` status, `INTERNAL`
//! kind, event attributes), the test pins what the collector does, so a
//! change on either side shows.
//!
//! Unlike Zipkin's query API, the collector keeps duplicates visible, so
//! the replay test here sees the one record a `kill -9` mid-replay sends
//! twice.

use crate::common;

use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanKind, SpanStart, SpanStatus, TracerPlugin};
use common::otelcol::{self, Span as OtlpSpan};
use common::toxiproxy::Toxiproxy;
use common::{wait_for, zipkin_url};
use serde_json::{Value as Json, json};
use spillway::clock::{Clock, ManualClock, SystemClock};
use spillway::transport::{HttpTransport, SendError, Transport};
use spillway::unstable::zipkin::hex;
use spillway::{Config, Encoding, SpillwayTracer};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// Sends every body to Zipkin and to the collector; succeeds only if both
/// took it.
struct Both(HttpTransport, HttpTransport);

impl Transport for Both {
    fn send(&mut self, json: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.0.send(json, timeout)?;
        self.1.send(json, timeout)
    }
    fn endpoint(&self) -> &str {
        "zipkin and the collector"
    }
}

fn transport(endpoint: String, gzip: bool, encoding: Encoding) -> HttpTransport {
    HttpTransport::new(&Config {
        endpoint,
        gzip,
        encoding,
        ..Config::default()
    })
    .unwrap()
}

/// What a test recorded of one span, to compare with what arrived.
struct Recorded {
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &'static str,
    kind: SpanKind,
    start: u64,
    end: u64,
}

/// A bext request: a server span with a database call that fails
/// (`common::failing_query`: an exception event with attributes), a template render (internal, OK,
/// an event without attributes), and a job handed to a queue (producer)
/// that a worker takes (consumer). Times are whole microseconds.
fn record_request(tracer: &SpillwayTracer, clock: &ManualClock) -> (Vec<Recorded>, [u8; 16]) {
    let mut out = Vec::new();
    let t0 = clock.now_unix_nanos();
    let (server, db) = common::failing_query(tracer, clock);
    out.push(Recorded {
        id: db.span_id,
        parent: Some(server.span_id),
        name: "SELECT users",
        kind: SpanKind::Client,
        start: t0 + 120_000,
        end: t0 + 2_120_000,
    });
    let render = tracer.start_span(SpanStart {
        name: "render users/show",
        parent: Some(server),
        ..Default::default()
    });
    clock.advance(300_000);
    tracer.add_event(
        render,
        SpanEvent {
            name: "template.cached",
            attributes: vec![],
            time_unix_nanos: None,
        },
    );
    tracer.set_status(render, SpanStatus::Ok);
    clock.advance(200_000);
    tracer.end_span(render, None);
    out.push(Recorded {
        id: render.span_id,
        parent: Some(server.span_id),
        name: "render users/show",
        kind: SpanKind::Internal,
        start: t0 + 2_120_000,
        end: t0 + 2_620_000,
    });
    let produce = tracer.start_span(SpanStart {
        name: "publish audit",
        kind: SpanKind::Producer,
        parent: Some(server),
        ..Default::default()
    });
    clock.advance(50_000);
    // Taken while the producer span is still open (a parent must be live
    // to be inherited without `adopt_remote_parent`).
    let consume = tracer.start_span(SpanStart {
        name: "process audit",
        kind: SpanKind::Consumer,
        parent: Some(produce),
        ..Default::default()
    });
    tracer.end_span(produce, None);
    clock.advance(70_000);
    tracer.end_span(consume, None);
    out.push(Recorded {
        id: produce.span_id,
        parent: Some(server.span_id),
        name: "publish audit",
        kind: SpanKind::Producer,
        start: t0 + 2_620_000,
        end: t0 + 2_670_000,
    });
    out.push(Recorded {
        id: consume.span_id,
        parent: Some(produce.span_id),
        name: "process audit",
        kind: SpanKind::Consumer,
        start: t0 + 2_670_000,
        end: t0 + 2_740_000,
    });
    tracer.set_attribute(server, "http.response.status_code", AttrValue::I64(500));
    tracer.set_status(
        server,
        SpanStatus::Error {
            description: "upstream failed".into(),
        },
    );
    clock.advance(30_000);
    tracer.end_span(server, None);
    out.push(Recorded {
        id: server.span_id,
        parent: None,
        name: "GET /users/:id",
        kind: SpanKind::Server,
        start: t0,
        end: t0 + 2_770_000,
    });
    (out, server.trace_id)
}

/// OTLP attributes as `key -> value object`.
fn attributes(v: &Json) -> BTreeMap<String, Json> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["key"].as_str().unwrap_or_default().to_owned(), a["value"].clone()))
        .collect()
}

fn s(v: &str) -> Json {
    json!({ "stringValue": v })
}

/// OTLP JSON's span kind numbers.
fn otlp_kind(kind: SpanKind) -> u64 {
    match kind {
        // Zipkin has no INTERNAL; the OpenTelemetry Zipkin exporter spec
        // omits the kind, and the receiver reads a missing kind as
        // UNSPECIFIED (it would need a `span.kind=internal` tag).
        SpanKind::Internal => 0,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn same_traces_reach_both(gzip: bool, encoding: Encoding) {
    let service = unique(&format!("OtelUsers-{encoding:?}-{}", if gzip { "gz" } else { "plain" }));
    let t0 = SystemClock.now_unix_nanos() / 1000 * 1000;
    let clock = Arc::new(ManualClock::new(t0));
    let both = Both(
        transport(format!("{}/api/v2/spans", zipkin_url()), gzip, encoding),
        transport(otelcol::url(), gzip, encoding),
    );
    let tracer = SpillwayTracer::builder()
        .config(Config {
            service_name: service.clone(),
            encoding,
            ..Config::default()
        })
        .clock(clock.clone())
        .transport(Box::new(both))
        .build()
        .unwrap();
    let (recorded, trace_id) = record_request(&tracer, &clock);
    tracer.flush().unwrap();
    assert_eq!(tracer.stats().delivered, recorded.len() as u64);
    let trace = hex(&trace_id);

    // The collector: every span once, under the service as configured.
    let got = otelcol::wait_spans(&otelcol::out(), &service, recorded.len());
    assert_eq!(got.len(), recorded.len(), "every span arrives once");
    let by_id: BTreeMap<String, &OtlpSpan> = got.iter().map(|s| (s.id().1, s)).collect();
    assert_eq!(by_id.len(), recorded.len(), "no span twice");
    for r in &recorded {
        let span = by_id
            .get(&hex(&r.id))
            .unwrap_or_else(|| panic!("{} missing from the collector", r.name));
        let j = &span.json;
        assert_eq!(j["traceId"], trace.as_str(), "{}", r.name);
        assert_eq!(
            j["parentSpanId"].as_str().unwrap_or_default(),
            r.parent.map(|p| hex(&p)).unwrap_or_default(),
            "{}",
            r.name
        );
        assert_eq!(j["name"], r.name, "the collector keeps the name's case");
        assert_eq!(j["kind"].as_u64().unwrap_or(0), otlp_kind(r.kind), "{}", r.name);
        assert_eq!(j["startTimeUnixNano"], r.start.to_string(), "{}", r.name);
        assert_eq!(j["endTimeUnixNano"], r.end.to_string(), "{}", r.name);
    }
    let server = &by_id[&hex(&recorded[4].id)].json;
    let db = &by_id[&hex(&recorded[0].id)].json;
    let render = &by_id[&hex(&recorded[1].id)].json;
    let consume = &by_id[&hex(&recorded[3].id)].json;

    // Status: the receiver knows `otel.status_code` values "Error" and
    // "STATUS_CODE_ERROR", not the spec's "ERROR"; the `error` tag makes
    // the status ERROR, and the description stays in that attribute
    // rather than becoming the status message.
    assert_eq!(db["status"], json!({"code": 2}));
    assert_eq!(server["status"], json!({"code": 2}));
    // An OK status reaches the collector as UNSET (it drops "OK").
    assert_eq!(render["status"], json!({}));
    assert_eq!(consume["status"], json!({}));

    // Attributes: tags as strings, the remote endpoint as peer attributes,
    // status tags consumed.
    assert_eq!(
        attributes(&db["attributes"]),
        BTreeMap::from([
            ("db.system".to_owned(), s("postgresql")),
            ("peer.service".to_owned(), s("postgres")),
            ("server.address".to_owned(), s("db.internal")),
            ("server.port".to_owned(), s("5432")),
            ("error".to_owned(), s("statement timeout")),
            // The remote endpoint, in the old and the new conventions.
            ("net.peer.port".to_owned(), json!({"intValue": "5432"})),
            ("service.peer.name".to_owned(), s("postgres")),
        ])
    );
    assert_eq!(
        attributes(&server["attributes"]),
        BTreeMap::from([
            ("http.request.method".to_owned(), s("GET")),
            ("http.route".to_owned(), s("/users/:id")),
            ("url.path".to_owned(), s("/users/42")),
            ("http.response.status_code".to_owned(), s("500")),
            ("error".to_owned(), s("upstream failed")),
        ])
    );
    assert_eq!(attributes(&render["attributes"]), BTreeMap::new());

    // Events from annotations, at their times. The receiver splits a
    // value on `|` (its own exporter's format); the spec's
    // `"name": {attributes}` arrives whole, as the event's name.
    assert_eq!(
        db["events"],
        json!([{
            "timeUnixNano": (t0 + 2_120_000).to_string(),
            "name": "\"exception\": {\"exception.type\":\"QueryTimeout\",\"exception.message\":\"canceling statement due to statement timeout\"}",
        }])
    );
    assert_eq!(
        render["events"],
        json!([{"timeUnixNano": (t0 + 2_420_000).to_string(), "name": "template.cached"}])
    );

    // Zipkin stored the very same spans: same ids, parents and times
    // (it lowercases names and the service; the collector does not).
    let url = format!("{}/api/v2/trace/{trace}", zipkin_url());
    let stored = wait_for("Zipkin to store the trace", Duration::from_secs(20), || {
        let body = ureq::get(&url).call().ok()?.into_body().read_to_string().ok()?;
        let spans: Vec<Json> = serde_json::from_str(&body).ok()?;
        (spans.len() == recorded.len()).then_some(spans)
    });
    for z in &stored {
        let id = z["id"].as_str().unwrap();
        let o = &by_id[id].json;
        assert_eq!(
            z["parentId"].as_str().unwrap_or_default(),
            o["parentSpanId"].as_str().unwrap_or_default()
        );
        let start_us = z["timestamp"].as_u64().unwrap();
        let end_us = start_us + z["duration"].as_u64().unwrap();
        assert_eq!((start_us * 1000).to_string(), o["startTimeUnixNano"].as_str().unwrap());
        assert_eq!((end_us * 1000).to_string(), o["endTimeUnixNano"].as_str().unwrap());
        assert_eq!(z["name"], o["name"].as_str().unwrap().to_lowercase());
        assert_eq!(z["localEndpoint"]["serviceName"], service.to_lowercase());
    }
}

#[test]
fn a_bext_request_reaches_zipkin_and_the_collector_alike_gzipped() {
    same_traces_reach_both(true, Encoding::Json);
}

#[test]
fn a_bext_request_reaches_zipkin_and_the_collector_alike_uncompressed() {
    same_traces_reach_both(false, Encoding::Json);
}

#[test]
fn a_bext_request_reaches_zipkin_and_the_collector_alike_in_proto3() {
    same_traces_reach_both(true, Encoding::Proto3);
}

#[test]
fn a_bext_request_reaches_zipkin_and_the_collector_alike_in_proto3_uncompressed() {
    same_traces_reach_both(false, Encoding::Proto3);
}

/// Span ids per record of the spool at `dir`, oldest first, as `export
/// --ndjson` writes them (one POST body per record).
fn records(dir: &std::path::Path) -> Vec<Vec<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["export", "--ndjson", "--spool"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let spans: Vec<Json> = serde_json::from_str(line).unwrap();
            spans.iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
        })
        .collect()
}

#[test]
fn a_replay_killed_mid_way_sends_at_most_its_one_record_in_flight_twice() {
    let service = unique("otel-replay-kill");
    let dir = tempfile::tempdir().unwrap();
    {
        let mut config = common::spool_config(&common::refused_url(), dir.path());
        config.service_name = service.clone();
        let t = SpillwayTracer::new(config).unwrap();
        for _ in 0..12 {
            common::record(&t, 40, "queued");
            assert!(t.try_flush().is_err(), "the collector refuses: spilled");
        }
    }
    let spooled = records(dir.path());
    assert!(spooled.len() >= 12, "{} records", spooled.len());
    let all: BTreeSet<String> = spooled.iter().flatten().cloned().collect();

    // A link to the collector whose answers take 3 s: the collector has a
    // record long before the replay hears so.
    let toxiproxy = Toxiproxy::start();
    let upstream = otelcol::url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let listen = toxiproxy.proxy("collector", &upstream);
    toxiproxy.toxic("collector", "latency", "downstream", 1.0, json!({"latency": 3000}));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["replay", "--timeout-ms", "20000", "--endpoint"])
        .arg(format!("http://{listen}/api/v2/spans"))
        .arg("--spool")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = otelcol::wait_spans(&otelcol::out(), &service, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "killed only after {:?}: the first answer may have arrived",
        started.elapsed()
    );
    let in_flight: BTreeSet<String> = first.iter().map(|s| s.id().1).collect();
    assert_eq!(
        in_flight,
        spooled[0].iter().cloned().collect(),
        "the collector had the oldest record"
    );

    // Replayed again, straight to the collector, to the end.
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["replay", "--endpoint", &otelcol::url(), "--spool"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(records(dir.path()).is_empty(), "the spool is empty after the replay");
    // The collector writes in the order it took requests, so once every
    // span is there, so is any second copy (sent first).
    let seen = wait_for("the collector to write every span", Duration::from_secs(30), || {
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for span in otelcol::spans(&otelcol::out()).iter().filter(|s| s.service == service) {
            *seen.entry(span.id().1).or_default() += 1;
        }
        (seen.keys().cloned().collect::<BTreeSet<_>>() == all).then_some(seen)
    });
    let twice: BTreeSet<String> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect();
    assert!(seen.values().all(|n| *n <= 2), "no span more than twice");
    // The record in flight when the replay was killed, and nothing else,
    // arrived twice: sled still held it, since its removal waits for the
    // collector's answer.
    assert_eq!(twice, in_flight, "only the record in flight came twice");
}
