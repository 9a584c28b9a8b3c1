//! The bext `TracerPlugin` contract, checked call by call through a
//! transport that records what it is asked to send.

use crate::common;

use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanHandle, SpanKind, SpanStart, SpanStatus, TracerPlugin};
use serde_json::Value as Json;
use spillway::clock::ManualClock;
use spillway::transport::{SendError, Transport};
use spillway::{Config, SpillwayTracer};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Json>>>);

impl Transport for Recorder {
    fn send(&mut self, json: &[u8], _timeout: std::time::Duration) -> Result<(), SendError> {
        let spans: Vec<Json> = serde_json::from_slice(json).expect("valid JSON");
        self.0.lock().unwrap().extend(spans);
        Ok(())
    }
    fn endpoint(&self) -> &str {
        "recorder"
    }
}

const T0: u64 = 1_764_000_000_000_000_000;

fn tracer_with(config: Config) -> (SpillwayTracer, Recorder, Arc<ManualClock>) {
    let rec = Recorder::default();
    let clock = Arc::new(ManualClock::new(T0));
    let tracer = SpillwayTracer::builder()
        .config(config)
        .clock(clock.clone())
        .transport(Box::new(rec.clone()))
        .build()
        .unwrap();
    (tracer, rec, clock)
}

fn tracer() -> (SpillwayTracer, Recorder, Arc<ManualClock>) {
    tracer_with(Config::default())
}

fn start(t: &SpillwayTracer, name: &str, parent: Option<SpanHandle>) -> SpanHandle {
    t.start_span(SpanStart {
        name,
        parent,
        ..Default::default()
    })
}

/// Adds an event without attributes at the tracer's clock.
fn event(t: &SpillwayTracer, h: SpanHandle, name: &str) {
    t.add_event(
        h,
        SpanEvent {
            name,
            attributes: vec![],
            time_unix_nanos: None,
        },
    );
}

fn flushed(t: &SpillwayTracer, rec: &Recorder) -> Vec<Json> {
    t.flush().unwrap();
    let spans = std::mem::take(&mut *rec.0.lock().unwrap());
    let s = t.stats();
    assert!(s.is_balanced(), "{s:?}");
    spans
}

#[test]
fn invalid_and_unknown_handles_are_noops() {
    let (t, rec, _) = tracer();
    let foreign = SpanHandle {
        trace_id: [7; 16],
        span_id: [9; 8],
    };
    for h in [SpanHandle::INVALID, foreign] {
        t.set_attribute(h, "k", "v".into());
        t.set_status(h, SpanStatus::Ok);
        event(&t, h, "e");
        t.end_span(h, None);
    }
    assert!(flushed(&t, &rec).is_empty());
    assert_eq!(t.stats().recorded, 0);
}

#[test]
fn child_of_invalid_is_invalid() {
    let (t, _, _) = tracer();
    assert_eq!(start(&t, "child", Some(SpanHandle::INVALID)), SpanHandle::INVALID);
    assert_eq!(t.stats().started, 0);
}

#[test]
fn child_of_live_parent_joins_its_trace() {
    let (t, rec, _) = tracer();
    let parent = start(&t, "parent", None);
    let child = start(&t, "child", Some(parent));
    assert_eq!(child.trace_id, parent.trace_id);
    assert_ne!(child.span_id, parent.span_id);
    t.end_span(child, None);
    t.end_span(parent, None);
    let spans = flushed(&t, &rec);
    let child_json = spans.iter().find(|s| s["name"] == "child").unwrap();
    assert_eq!(child_json["parentId"], spillway::unstable::zipkin::hex(&parent.span_id));
    assert_eq!(child_json["traceId"], spillway::unstable::zipkin::hex(&parent.trace_id));
}

#[test]
fn unknown_valid_parent_is_rooted_by_default_and_adopted_when_configured() {
    let remote = SpanHandle {
        trace_id: [0x11; 16],
        span_id: [0x22; 8],
    };
    let (t, rec, _) = tracer();
    let h = start(&t, "rooted", Some(remote));
    assert_ne!(h.trace_id, remote.trace_id);
    t.end_span(h, None);
    let spans = flushed(&t, &rec);
    assert!(spans[0].get("parentId").is_none());

    let (t, rec, _) = tracer_with(Config {
        adopt_remote_parent: true,
        ..Config::default()
    });
    let h = start(&t, "adopted", Some(remote));
    assert_eq!(h.trace_id, remote.trace_id);
    t.end_span(h, None);
    let spans = flushed(&t, &rec);
    assert_eq!(spans[0]["parentId"], "2222222222222222");
    assert_eq!(spans[0]["traceId"], "11111111111111111111111111111111");
}

#[test]
fn ended_parent_is_unknown() {
    let (t, rec, _) = tracer();
    let parent = start(&t, "parent", None);
    t.end_span(parent, None);
    let late = start(&t, "late", Some(parent));
    assert_ne!(
        late.trace_id, parent.trace_id,
        "a dead handle must not be used as a parent"
    );
    t.end_span(late, None);
    assert_eq!(flushed(&t, &rec).len(), 2);
}

#[test]
fn sampling_zero_returns_invalid_and_counts() {
    let (t, rec, _) = tracer_with(Config {
        sample_ratio: 0.0,
        ..Config::default()
    });
    for _ in 0..100 {
        let h = start(&t, "x", None);
        assert_eq!(h, SpanHandle::INVALID);
        assert_eq!(start(&t, "child", Some(h)), SpanHandle::INVALID);
        t.end_span(h, None);
    }
    assert!(flushed(&t, &rec).is_empty());
    let s = t.stats();
    assert_eq!((s.sampled_out, s.started, s.recorded), (100, 0, 0));
}

#[test]
fn sampling_ratio_keeps_whole_traces() {
    let (t, rec, _) = tracer_with(Config {
        sample_ratio: 0.5,
        ..Config::default()
    });
    for _ in 0..4000 {
        let root = start(&t, "root", None);
        let child = start(&t, "child", Some(root));
        assert_eq!(root.is_invalid(), child.is_invalid(), "a child follows its parent");
        t.end_span(child, None);
        t.end_span(root, None);
    }
    let spans = flushed(&t, &rec);
    let s = t.stats();
    assert_eq!(s.sampled_out + s.started / 2, 4000);
    // Binomial(4000, 0.5): 6 sigma is ~190.
    assert!((1800..=2200).contains(&(s.started / 2)), "{s:?}");
    assert_eq!(spans.len() as u64, s.started);
}

#[test]
fn clock_status_attributes_and_events() {
    let (t, rec, clock) = tracer();
    let h = t.start_span(SpanStart {
        name: "GET /users/:id",
        kind: SpanKind::Server,
        attributes: vec![("http.request.method".into(), "GET".into())],
        ..Default::default()
    });
    clock.advance(1_500_000);
    t.set_attribute(h, "http.request.method", "POST".into());
    t.set_attribute(h, "retries", AttrValue::I64(2));
    t.set_status(
        h,
        SpanStatus::Error {
            description: "first".into(),
        },
    );
    t.set_status(h, SpanStatus::Ok);
    event(&t, h, "cache.miss");
    t.add_event(
        h,
        SpanEvent {
            name: "explicit",
            attributes: vec![],
            time_unix_nanos: Some(T0 + 7_000),
        },
    );
    clock.advance(500_000);
    t.end_span(h, None);
    // The handle is dead now.
    t.set_attribute(h, "late", "x".into());
    t.end_span(h, None);
    let spans = flushed(&t, &rec);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s["timestamp"], T0 / 1000);
    assert_eq!(s["duration"], 2000);
    assert_eq!(s["kind"], "SERVER");
    assert_eq!(s["tags"]["http.request.method"], "POST");
    assert_eq!(s["tags"]["retries"], "2");
    assert_eq!(s["tags"]["otel.status_code"], "OK");
    assert!(s["tags"].get("error").is_none(), "last set_status wins");
    assert!(s["tags"].get("late").is_none());
    assert_eq!(s["annotations"][0]["timestamp"], (T0 + 1_500_000) / 1000);
    assert_eq!(s["annotations"][1]["timestamp"], (T0 + 7_000) / 1000);
    assert_eq!(t.stats().recorded, 1);
}

#[test]
fn explicit_end_time_and_start_override() {
    let (t, rec, _) = tracer();
    let h = t.start_span(SpanStart {
        name: "old",
        start_time_unix_nanos: Some(T0 - 86_400_000_000_000),
        ..Default::default()
    });
    t.end_span(h, Some(T0));
    let spans = flushed(&t, &rec);
    assert_eq!(spans[0]["duration"], 86_400_000_000u64, "a one-day span in µs");
}

#[test]
fn limits_count_what_they_drop() {
    let cfg = Config {
        max_attributes_per_span: 2,
        max_events_per_span: 1,
        ..Config::default()
    };
    let (t, rec, _) = tracer_with(cfg);
    let h = t.start_span(SpanStart {
        name: "x",
        attributes: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("c".into(), "3".into()),
        ],
        ..Default::default()
    });
    t.set_attribute(h, "d", "4".into());
    t.set_attribute(h, "a", "overwrite is not a new attribute".into());
    for _ in 0..3 {
        event(&t, h, "e");
    }
    t.end_span(h, None);
    let s = &flushed(&t, &rec)[0];
    assert_eq!(s["tags"]["otel.dropped_attributes_count"], "2");
    assert_eq!(s["tags"]["otel.dropped_events_count"], "2");
    assert_eq!(s["tags"]["a"], "overwrite is not a new attribute");
    assert_eq!(s["annotations"].as_array().unwrap().len(), 1);
}

#[test]
fn full_queue_drops_and_counts() {
    let (t, rec, _) = tracer_with(Config {
        max_queue_spans: 64,
        ..Config::default()
    });
    for _ in 0..10_000 {
        let h = start(&t, "x", None);
        t.end_span(h, None);
    }
    let s = t.stats();
    // The whole table's batch (one span per shard) fills before any drop.
    assert_eq!((s.in_memory, s.dropped.queue_full), (64, 10_000 - 64), "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
    let delivered = flushed(&t, &rec).len() as u64;
    assert_eq!(delivered + t.stats().dropped.queue_full, 10_000);
}

#[test]
fn threads_fill_the_whole_batch_before_dropping_and_a_flush_frees_it() {
    let (t, rec, _) = tracer_with(Config {
        max_queue_spans: 640, // ten per shard
        ..Config::default()
    });
    let record = |n: usize| {
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..n {
                        let h = start(&t, "x", None);
                        t.end_span(h, None);
                    }
                });
            }
        })
    };
    // A thread's spans go to its own shard until it is full, then to the
    // next with room: 8 threads x 80 spans fill all 64 shards exactly.
    record(80);
    let s = t.stats();
    assert_eq!((s.in_memory, s.dropped.queue_full), (640, 0), "{s:?}");
    record(1);
    assert_eq!(t.stats().dropped.queue_full, 8, "full everywhere: dropped");
    // The flush empties every shard; the threads find room again.
    assert_eq!(flushed(&t, &rec).len(), 640);
    record(80);
    let s = t.stats();
    assert_eq!((s.in_memory, s.dropped.queue_full), (640, 8), "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
}

#[test]
fn spans_never_ended_are_bounded_and_refusals_counted() {
    let (t, rec, _) = tracer_with(Config {
        max_live_spans: 64, // one per shard
        ..Config::default()
    });
    let handles: Vec<SpanHandle> = (0..1_000).map(|_| start(&t, "leaked", None)).collect();
    let live: Vec<SpanHandle> = handles.iter().copied().filter(|h| !h.is_invalid()).collect();
    let s = t.stats();
    assert_eq!((s.live, live.len()), (64, 64), "every shard's share is used: {s:?}");
    assert_eq!(s.refused_live_full, 1_000 - 64, "every refusal is counted: {s:?}");
    // Ending the first span frees a slot in a shard this thread has since
    // left: the next span finds it, with no flush in between.
    t.end_span(live[0], None);
    let again = start(&t, "again", None);
    assert!(!again.is_invalid(), "a freed slot in another shard is found");
    // A refused handle is a no-op everywhere; ending the live ones frees room.
    for h in handles.iter().chain([&again]) {
        t.end_span(*h, None);
    }
    let s = t.stats();
    assert_eq!((s.live, s.recorded), (0, live.len() as u64 + 1), "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
    let h = start(&t, "after", None);
    assert!(!h.is_invalid(), "room again once spans end");
    t.end_span(h, None);
    assert_eq!(flushed(&t, &rec).len(), live.len() + 2);
}

#[test]
fn ids_are_random_and_never_zero() {
    let (t, rec, _) = tracer();
    let mut seen = HashSet::new();
    for _ in 0..20_000 {
        let h = start(&t, "x", None);
        assert_ne!(h.trace_id, [0; 16]);
        assert_ne!(h.span_id, [0; 8]);
        assert!(seen.insert(h.span_id), "span id repeated");
        t.end_span(h, None);
    }
    for s in flushed(&t, &rec) {
        let trace = s["traceId"].as_str().unwrap();
        assert_eq!(trace.len(), 32);
        assert!(trace.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}

#[test]
fn many_threads_record_while_flushing() {
    let (t, rec, _) = tracer_with(Config {
        max_queue_spans: 1_000_000,
        ..Config::default()
    });
    let threads = 4;
    let per_thread = 5_000;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..per_thread {
                    let root = start(&t, "root", None);
                    let child = start(&t, "child", Some(root));
                    t.set_attribute(child, "i", AttrValue::I64(i));
                    t.end_span(child, None);
                    t.end_span(root, None);
                }
            });
        }
        s.spawn(|| {
            for _ in 0..50 {
                t.flush().unwrap();
                std::thread::yield_now();
            }
        });
    });
    let rest = flushed(&t, &rec);
    drop(rest);
    let s = t.stats();
    assert_eq!(s.recorded, threads * per_thread as u64 * 2);
    assert_eq!(s.delivered, s.recorded);
    assert_eq!(s.live, 0);
}

#[test]
fn high_cardinality_names_survive_past_the_interner_bound() {
    let (t, rec, _) = tracer_with(Config {
        max_queue_spans: 100_000,
        ..Config::default()
    });
    let n = spillway::unstable::SHARDS * spillway::unstable::MAX_NAMES_PER_SHARD * 2;
    for i in 0..n {
        let name = format!("GET /users/{i}");
        let h = start(&t, &name, None);
        event(&t, h, &format!("event-{i}"));
        t.end_span(h, None);
    }
    let long = "n".repeat(spillway::unstable::MAX_INTERNED_LEN + 1);
    let h = start(&t, &long, None);
    t.end_span(h, None);
    let spans = flushed(&t, &rec);
    assert_eq!(spans.len(), n + 1);
    let names: HashSet<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), n + 1);
    assert!(names.contains(long.as_str()));
    for s in &spans[..n.min(spans.len())] {
        let name = s["name"].as_str().unwrap();
        if let Some(i) = name.strip_prefix("GET /users/") {
            assert_eq!(s["annotations"][0]["value"], format!("event-{i}"));
        }
    }
}

const NAMES_CHILD_ENV: &str = "SPILLWAY_NAMES_CHILD";

/// This process's resident set, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// The child: builds and drops 1,000 tracers, each recording spans under
/// 200 names of its own (about 100 bytes each, as a site's routes), and
/// reports its resident set after the first 10 and after them all.
#[test]
#[ignore = "run by a thousand_tracers_built_and_dropped_leak_no_names as its child process"]
fn names_child() {
    if std::env::var_os(NAMES_CHILD_ENV).is_none() {
        return;
    }
    let pad = "x".repeat(60);
    for tracer_n in 0..1_000 {
        let (t, _rec, _) = tracer();
        for name_n in 0..200 {
            let name = format!("GET /site-{tracer_n}/{pad}/route-{name_n}");
            for _ in 0..3 {
                let h = start(&t, &name, None);
                t.end_span(h, None);
            }
        }
        t.flush().unwrap();
        drop(t);
        if tracer_n == 9 {
            common::child::say(&format!("rss {}", rss_bytes()));
        }
    }
    common::child::say(&format!("rss {}", rss_bytes()));
}

#[test]
fn a_thousand_tracers_built_and_dropped_leak_no_names() {
    let out = common::child::spawn("tracer_contract::names_child", NAMES_CHILD_ENV, "1")
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rss: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("@@rss ")?.1.parse().ok())
        .collect();
    let [after_10, after_1000] = rss[..] else {
        panic!("two readings: {rss:?}")
    };
    eprintln!("resident after 10 tracers {after_10} bytes, after 1,000 {after_1000}");
    // Leaked per tracer, 200 names of 112 bytes would be 22 MB.
    assert!(
        after_1000 <= after_10 + (8 << 20),
        "{after_10} bytes after 10 tracers, {after_1000} after 1,000"
    );
}
