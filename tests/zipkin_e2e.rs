//! End to end against the real Zipkin server (started by scripts/test.sh):
//! spans recorded through the tracer, flushed, and read back from Zipkin's
//! query API must match field by field; the `generate` command's accounting
//! must match what Zipkin stored.

use crate::common;

use bext_plugin_api::tracer::{AttrValue, SpanHandle, SpanKind, SpanStart, SpanStatus, TracerPlugin};
use common::{get_json, wait_for, zipkin_url};
use serde_json::{Value as Json, json};
use spillway::clock::{Clock, ManualClock, SystemClock};
use spillway::unstable::zipkin::hex;
use spillway::{Config, Encoding, SpillwayTracer};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

#[test]
fn a_bext_request_trace_round_trips_field_by_field() {
    round_trips_field_by_field(Encoding::Json);
}

#[test]
fn a_bext_request_trace_round_trips_field_by_field_in_proto3() {
    round_trips_field_by_field(Encoding::Proto3);
}

/// Two client calls to peers named by address: `ipv4` and `ipv6` in the
/// remote endpoint (raw bytes in proto3).
fn calls_by_address(tracer: &SpillwayTracer, clock: &ManualClock, parent: SpanHandle) -> [SpanHandle; 2] {
    [("10.1.2.3", "GET /stock"), ("[2001:db8::7]", "GET /price")].map(|(address, name)| {
        let call = tracer.start_span(SpanStart {
            name,
            kind: SpanKind::Client,
            parent: Some(parent),
            ..Default::default()
        });
        tracer.set_attribute(call, "server.address", AttrValue::String(address.into()));
        tracer.set_attribute(call, "server.port", AttrValue::I64(8080));
        clock.advance(10_000);
        tracer.end_span(call, None);
        call
    })
}

fn round_trips_field_by_field(encoding: Encoding) {
    let base = zipkin_url();
    let service = unique(&format!("e2e-users-{encoding:?}"));
    // Whole microseconds so Zipkin's µs values compare exactly.
    let t0 = SystemClock.now_unix_nanos() / 1000 * 1000;
    let clock = Arc::new(ManualClock::new(t0));
    let tracer = SpillwayTracer::builder()
        .config(Config {
            service_name: service.clone(),
            endpoint: format!("{base}/api/v2/spans"),
            encoding,
            ..Config::default()
        })
        .clock(clock.clone())
        .build()
        .unwrap();

    let (server, db) = common::failing_query(&tracer, &clock);
    let [v4, v6] = calls_by_address(&tracer, &clock, server);
    clock.advance(280_000);
    tracer.set_attribute(server, "http.response.status_code", AttrValue::I64(500));
    tracer.set_attribute(server, "sampled.fraction", AttrValue::F64(0.25));
    tracer.set_attribute(server, "cache.hit", AttrValue::Bool(false));
    tracer.set_status(
        server,
        SpanStatus::Error {
            description: "upstream failed".into(),
        },
    );
    tracer.end_span(server, None);
    tracer.flush().unwrap();
    let stats = tracer.stats();
    assert_eq!((stats.recorded, stats.delivered), (4, 4), "{stats:?}");

    let trace_id = hex(&server.trace_id);
    let url = format!("{base}/api/v2/trace/{trace_id}");
    let stored = wait_for("Zipkin to store the four spans", Duration::from_secs(20), || {
        let trace = ureq::get(&url).call().ok()?.into_body().read_to_string().ok()?;
        let spans: Vec<Json> = serde_json::from_str(&trace).ok()?;
        (spans.len() == 4).then_some(spans)
    });
    let by_id = |id: &[u8; 8]| stored.iter().find(|s| s["id"] == hex(id)).cloned().unwrap();
    let us = |nanos: u64| nanos / 1000;
    let lower = service.to_lowercase();

    assert_eq!(
        by_id(&server.span_id),
        json!({
            "traceId": trace_id,
            "id": hex(&server.span_id),
            "name": "get /users/:id",
            "kind": "SERVER",
            "timestamp": us(t0),
            "duration": 2_420,
            "localEndpoint": {"serviceName": lower},
            "tags": {
                "http.request.method": "GET",
                "http.route": "/users/:id",
                "url.path": "/users/42",
                "http.response.status_code": "500",
                "sampled.fraction": "0.25",
                "cache.hit": "false",
                "otel.status_code": "ERROR",
                "error": "upstream failed",
            },
        })
    );
    assert_eq!(
        by_id(&db.span_id),
        json!({
            "traceId": trace_id,
            "parentId": hex(&server.span_id),
            "id": hex(&db.span_id),
            "name": "select users",
            "kind": "CLIENT",
            "timestamp": us(t0 + 120_000),
            "duration": 2_000,
            "localEndpoint": {"serviceName": lower},
            "remoteEndpoint": {"serviceName": "postgres", "port": 5432},
            "annotations": [{
                "timestamp": us(t0 + 2_120_000),
                "value": "\"exception\": {\"exception.type\":\"QueryTimeout\",\"exception.message\":\"canceling statement due to statement timeout\"}",
            }],
            "tags": {
                "db.system": "postgresql",
                "peer.service": "postgres",
                "server.address": "db.internal",
                "server.port": "5432",
                "otel.status_code": "ERROR",
                "error": "statement timeout",
            },
        })
    );
    for (call, name, start, remote) in [
        (
            v4,
            "get /stock",
            t0 + 2_120_000,
            json!({"ipv4": "10.1.2.3", "port": 8080}),
        ),
        (
            v6,
            "get /price",
            t0 + 2_130_000,
            json!({"ipv6": "2001:db8::7", "port": 8080}),
        ),
    ] {
        assert_eq!(
            by_id(&call.span_id),
            json!({
                "traceId": trace_id,
                "parentId": hex(&server.span_id),
                "id": hex(&call.span_id),
                "name": name,
                "kind": "CLIENT",
                "timestamp": us(start),
                "duration": 10,
                "localEndpoint": {"serviceName": lower},
                "remoteEndpoint": remote,
                "tags": {"server.address": call_address(&remote), "server.port": "8080"},
            })
        );
    }
}

/// The `server.address` tag of a call by address, as recorded.
fn call_address(remote: &Json) -> String {
    match (remote["ipv4"].as_str(), remote["ipv6"].as_str()) {
        (Some(v4), _) => v4.to_owned(),
        (_, Some(v6)) => format!("[{v6}]"),
        _ => unreachable!("a call by address"),
    }
}

#[test]
fn generate_delivers_exactly_what_it_reports() {
    generate_delivers("json");
}

#[test]
fn generate_delivers_exactly_what_it_reports_in_proto3() {
    generate_delivers("proto3");
}

fn generate_delivers(encoding: &str) {
    let base = zipkin_url();
    let service = unique(&format!("e2e-generate-{encoding}"));
    let spool = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args([
            "generate",
            "--spans",
            "600",
            "--threads",
            "2",
            "--flush-every",
            "50",
            "--json",
            "--encoding",
            encoding,
        ])
        .args(["--service", &service, "--endpoint", &format!("{base}/api/v2/spans")])
        .arg("--spool")
        .arg(spool.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["recorded"], 600, "{report}");
    assert_eq!(report["delivered"], 600, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert_eq!(report["spooled"], 0, "{report}");

    let url = format!("{base}/api/v2/traces?serviceName={service}&limit=10000&lookback=3600000");
    let ids = wait_for("Zipkin to hold all 600 spans", Duration::from_secs(30), || {
        let traces = get_json(&url);
        let ids: BTreeSet<(String, String)> = traces
            .as_array()?
            .iter()
            .flat_map(|t| t.as_array().cloned().unwrap_or_default())
            .map(|s| {
                (
                    s["traceId"].as_str().unwrap_or("").to_owned(),
                    s["id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        (ids.len() >= 600).then_some(ids)
    });
    assert_eq!(ids.len(), 600, "distinct (traceId, id) pairs stored");
}

#[test]
fn generate_against_a_dead_collector_says_so_and_loses_nothing_silently() {
    let endpoint = common::refused_url();
    let spool = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["generate", "--spans", "100", "--json", "--endpoint", &endpoint])
        .env("SPILLWAY_SPOOL", spool.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable (connection refused)"), "{stderr}");
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["recorded"], 100);
    let accounted = report["delivered"].as_u64().unwrap()
        + report["pending"].as_u64().unwrap()
        + report["spooled"].as_u64().unwrap()
        + report["dropped"].as_u64().unwrap();
    assert_eq!(accounted, 100, "{report}");
}
