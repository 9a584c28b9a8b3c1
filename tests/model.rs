//! A model test: random sequences of record / flush / outage / recovery /
//! restart against the simplest model of the promise, "every recorded span
//! is delivered once the collector is back". The transport is an in-process
//! switch (no HTTP fault is needed to model an outage); the spool is real,
//! and a restart drops the tracer and opens a new one on the same directory.

use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use proptest::prelude::*;
use spillway::transport::{SendError, Transport};
use spillway::{Config, SpillwayTracer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Switch {
    down: Arc<AtomicBool>,
    /// Every span id the collector acknowledged, with how often.
    got: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Transport for Switch {
    fn send(&mut self, json: &[u8], _timeout: std::time::Duration) -> Result<(), SendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SendError::Unreachable("switched off".into()));
        }
        let spans: Vec<serde_json::Value> = serde_json::from_slice(json).expect("valid JSON");
        let mut got = self.got.lock().unwrap();
        for s in spans {
            *got.entry(s["id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        Ok(())
    }
    fn endpoint(&self) -> &str {
        "switch"
    }
}

#[derive(Debug, Clone)]
enum Op {
    Record(u16),
    Flush,
    Down,
    Up,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..300).prop_map(Op::Record),
        4 => Just(Op::Flush),
        1 => Just(Op::Down),
        1 => Just(Op::Up),
        1 => Just(Op::Restart),
    ]
}

fn build(dir: &std::path::Path, switch: &Switch) -> SpillwayTracer {
    SpillwayTracer::builder()
        .config(Config {
            spool_dir: Some(dir.to_path_buf()),
            backoff_initial_ms: 0,
            backoff_max_ms: 0,
            max_batch_spans: 100,
            replay_budget_spans: 250,
            ..Config::default()
        })
        .transport(Box::new(switch.clone()))
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn every_recorded_span_is_delivered_exactly_once(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let switch = Switch::default();
        let mut tracer = build(dir.path(), &switch);
        let mut recorded = Vec::new();
        for op in &ops {
            match op {
                Op::Record(n) => {
                    for _ in 0..*n {
                        let h = tracer.start_span(SpanStart { name: "m", ..Default::default() });
                        recorded.push(spillway::unstable::zipkin::hex(&h.span_id));
                        tracer.end_span(h, None);
                    }
                }
                Op::Flush => {
                    let _ = tracer.flush();
                }
                Op::Down => switch.down.store(true, Ordering::SeqCst),
                Op::Up => switch.down.store(false, Ordering::SeqCst),
                Op::Restart => {
                    drop(tracer);
                    tracer = build(dir.path(), &switch);
                }
            }
            let s = tracer.stats();
            prop_assert!(s.is_balanced(), "after {:?}: {:?}", op, s);
            prop_assert_eq!(s.dropped.total(), 0);
        }
        // Recovery: the collector is back; flushes drain everything.
        switch.down.store(false, Ordering::SeqCst);
        for _ in 0..200 {
            if tracer.flush().is_ok() && tracer.stats().spooled == 0 {
                break;
            }
        }
        let s = tracer.stats();
        prop_assert_eq!((s.spooled, s.in_memory), (0, 0), "{:?}", s);
        let got = switch.got.lock().unwrap();
        prop_assert_eq!(got.len(), recorded.len(), "every span delivered");
        prop_assert!(recorded.iter().all(|id| got.get(id) == Some(&1)), "each exactly once");
    }
}
