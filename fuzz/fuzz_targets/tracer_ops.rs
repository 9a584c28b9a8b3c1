//! Arbitrary sequences of the seven `TracerPlugin` calls, with handles that
//! are live, ended, invalid or foreign, against a fake transport whose
//! answers come from the input (delivered, unreachable, 503, 429, 400, 413,
//! 404): never a panic, and the accounting invariant
//! (`recorded + recovered == delivered + in_memory + spooled + dead_lettered + dropped`)
//! holds after every call. Limits are set small so every drop path is
//! reachable within a short input.
//!
//! Run with `-detect_leaks=0`: each tracer interns up to 2 MiB of span and
//! event names as leaked `&'static str` by design (see `spillway::tracer`),
//! and this target builds one tracer per input.
#![no_main]

use arbitrary::Arbitrary;
use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanHandle, SpanKind, SpanStart, SpanStatus, TracerPlugin};
use libfuzzer_sys::fuzz_target;
use spillway::clock::ManualClock;
use spillway::transport::{SendError, Transport};
use spillway::{Config, SpillwayTracer};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Handle {
    /// The n-th handle `start_span` returned (live or since ended).
    Started(u8),
    Invalid,
    /// A handle no tracer made.
    Foreign([u8; 4]),
}

#[derive(Arbitrary, Debug)]
enum Val {
    Str(String),
    Bool(bool),
    I64(i64),
    F64(f64),
    Strs(Vec<String>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Start {
        name: String,
        kind: u8,
        parent: Option<Handle>,
        attributes: Vec<(String, Val)>,
        start: Option<u64>,
    },
    SetAttribute(Handle, String, Val),
    SetStatus(Handle, Option<Option<String>>),
    AddEvent(Handle, String, Vec<(String, Val)>, Option<u64>),
    End(Handle, Option<u64>),
    Flush,
    Name,
    Tick(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    adopt_remote_parent: bool,
    answers: Vec<u8>,
    ops: Vec<Op>,
}

struct Fake(Arc<Mutex<VecDeque<u8>>>);

impl Transport for Fake {
    fn send(&mut self, _json: &[u8], _timeout: std::time::Duration) -> Result<(), SendError> {
        let answer = self.0.lock().unwrap().pop_front().unwrap_or(0);
        let status = |status| {
            Err(SendError::Status {
                status,
                retry_after: None,
                body: String::new(),
            })
        };
        match answer % 8 {
            0 | 1 => Ok(()),
            2 => Err(SendError::Unreachable("connection refused".into())),
            3 => status(503),
            4 => status(429),
            5 => status(400),
            6 => status(413),
            _ => status(404),
        }
    }

    fn endpoint(&self) -> &str {
        "http://127.0.0.1:9/api/v2/spans"
    }
}

fn value(v: Val) -> AttrValue {
    match v {
        Val::Str(s) => AttrValue::String(s),
        Val::Bool(b) => AttrValue::Bool(b),
        Val::I64(i) => AttrValue::I64(i),
        Val::F64(f) => AttrValue::F64(f),
        Val::Strs(a) => AttrValue::StringArray(a),
    }
}

fn attrs(a: Vec<(String, Val)>) -> Vec<(String, AttrValue)> {
    a.into_iter().map(|(k, v)| (k, value(v))).collect()
}

fuzz_target!(|input: Input| {
    let answers = Arc::new(Mutex::new(VecDeque::from(input.answers)));
    let clock = Arc::new(ManualClock::new(1_764_000_000_000_000_000));
    let config = Config {
        adopt_remote_parent: input.adopt_remote_parent,
        max_queue_spans: 64,
        // One live span per shard: starts are refused often.
        max_live_spans: 64,
        max_retry_spans: 16,
        max_batch_spans: 4,
        max_request_bytes: 1024,
        max_attributes_per_span: 4,
        max_events_per_span: 2,
        backoff_initial_ms: 0,
        backoff_max_ms: 0,
        ..Config::default()
    };
    let tracer = SpillwayTracer::builder()
        .config(config)
        .clock(clock.clone())
        .transport(Box::new(Fake(answers)))
        .build()
        .expect("a valid config builds");
    let mut started: Vec<SpanHandle> = Vec::new();
    let resolve = |h: Handle, started: &[SpanHandle]| match h {
        Handle::Started(i) if !started.is_empty() => started[usize::from(i) % started.len()],
        Handle::Started(_) | Handle::Invalid => SpanHandle::INVALID,
        Handle::Foreign(b) => SpanHandle {
            trace_id: [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            span_id: [b[3], b[2], b[1], b[0], 0, 0, 0, 1],
        },
    };
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Start {
                name,
                kind,
                parent,
                attributes,
                start,
            } => {
                let kinds = [
                    SpanKind::Internal,
                    SpanKind::Server,
                    SpanKind::Client,
                    SpanKind::Producer,
                    SpanKind::Consumer,
                ];
                let h = tracer.start_span(SpanStart {
                    name: &name,
                    kind: kinds[usize::from(kind % 5)],
                    parent: parent.map(|p| resolve(p, &started)),
                    attributes: attrs(attributes),
                    start_time_unix_nanos: start,
                });
                started.push(h);
            }
            Op::SetAttribute(h, k, v) => tracer.set_attribute(resolve(h, &started), &k, value(v)),
            Op::SetStatus(h, s) => tracer.set_status(
                resolve(h, &started),
                match s {
                    None => SpanStatus::Unset,
                    Some(None) => SpanStatus::Ok,
                    Some(Some(description)) => SpanStatus::Error { description },
                },
            ),
            Op::AddEvent(h, name, a, t) => tracer.add_event(
                resolve(h, &started),
                SpanEvent {
                    name: &name,
                    attributes: attrs(a),
                    time_unix_nanos: t,
                },
            ),
            Op::End(h, t) => tracer.end_span(resolve(h, &started), t),
            Op::Flush => {
                let _ = tracer.flush();
            }
            Op::Name => assert!(!tracer.name().is_empty()),
            Op::Tick(ns) => clock.advance(u64::from(ns)),
        }
        let s = tracer.stats();
        assert!(s.is_balanced(), "invariant broken: {s:?}");
        assert!(s.live <= 64, "live spans past max_live_spans: {s:?}");
        assert_eq!(
            s.started,
            s.live + s.recorded,
            "a started span is live or recorded: {s:?}"
        );
    }
});
