//! The tracer's hand-offs, model-checked: shuttle runs a real
//! [`SpillwayTracer`] (a real spool in a temporary directory, a collector
//! that takes everything or nothing) under many random schedules of the
//! threads that record, flush and shut it down, beside its spiller and
//! disk threads, and checks the invariants below in every one. Run by
//! `scripts/model-check.sh` (the `model` feature swaps `crate::sync` for
//! shuttle's primitives: the exporter's lock, the spiller's wake-up and
//! thread, the disk thread's hand-off).
//!
//! Invariants, whatever the interleaving:
//! - every recorded span ends in exactly one place of the accounting
//!   equation ([`Stats::is_balanced`]);
//! - `shutdown` `Ok` means every span recorded before the call is
//!   delivered, durable or counted as dropped (none is left in memory
//!   once nothing records any more), and the spool, opened again, holds
//!   what `spooled` says;
//! - nothing deadlocks (every wait ends by a notification: shuttle has no
//!   timeouts), and dropping the tracer joins its threads.

use super::SpillwayTracer;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::spool::Spool;
use crate::stats::Stats;
use crate::sync::thread;
use crate::transport::{SendError, Transport};
use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use std::sync::Arc;
use std::time::Duration;

/// Spans each recording thread records: more than the memory queue holds
/// in all (64), so the spiller is woken and some schedules drop.
const SPANS: usize = 40;

/// A collector that takes every request, or none (as if unreachable).
struct Collector {
    up: bool,
}

impl Transport for Collector {
    fn send(&mut self, _: &[u8], _: Duration) -> Result<(), SendError> {
        if self.up {
            Ok(())
        } else {
            Err(SendError::Unreachable("the model's collector is down".into()))
        }
    }
    fn endpoint(&self) -> &str {
        "model"
    }
}

fn record(tracer: &Arc<SpillwayTracer>) -> thread::JoinHandle<()> {
    let tracer = Arc::clone(tracer);
    thread::spawn(move || {
        for _ in 0..SPANS {
            let span = tracer.start_span(SpanStart {
                name: "GET /",
                ..Default::default()
            });
            tracer.end_span(span, None);
        }
    })
}

/// Shuts `tracer` down, which must succeed; then every span recorded
/// before is delivered, durable or dropped (counted), and, when nothing
/// records meanwhile (`alone`), nothing is left in memory. Returns the
/// stats after.
fn shut_down(tracer: &SpillwayTracer, alone: bool) -> Stats {
    let recorded = tracer.stats().recorded;
    if let Err(e) = tracer.shutdown() {
        panic!("shutdown failed with a healthy disk: {e}");
    }
    let s = tracer.stats();
    assert!(s.is_balanced(), "{s:?}");
    if alone {
        assert_eq!(s.in_memory, 0, "shutdown Ok left spans in memory: {s:?}");
    }
    assert!(
        s.delivered + s.spooled + s.dropped.total() >= recorded,
        "shutdown Ok but not every span recorded before it is accounted for: {recorded} recorded, {s:?}"
    );
    s
}

/// Two threads record while a third flushes; the owner shuts the tracer
/// down after them or, in `racing` schedules, while they record (then
/// once more after them).
fn scenario(up: bool, racing: bool) {
    let root = tempfile::tempdir().expect("a temporary directory");
    let dir = root.path().join("spool");
    let config = Config {
        spool_dir: Some(dir.clone()),
        max_queue_spans: 64,
        max_requests_in_flight: 1,
        ..Config::default()
    };
    let tracer = SpillwayTracer::builder()
        .config(config)
        .transport(Box::new(Collector { up }))
        .clock(Arc::new(SystemClock))
        .build()
        .expect("a tracer");
    let tracer = Arc::new(tracer);
    let recorders = [record(&tracer), record(&tracer)];
    let flusher = {
        let tracer = Arc::clone(&tracer);
        thread::spawn(move || {
            let _ = tracer.try_flush();
        })
    };
    if racing {
        shut_down(&tracer, false);
    }
    for t in recorders {
        t.join().expect("a recording thread");
    }
    flusher.join().expect("the flushing thread");
    let s = shut_down(&tracer, true);
    assert_eq!((s.started, s.recorded), (2 * SPANS as u64, 2 * SPANS as u64), "{s:?}");
    if !up {
        assert_eq!(s.delivered, 0, "{s:?}");
    }
    let Ok(tracer) = Arc::try_unwrap(tracer) else {
        panic!("a thread still holds the tracer");
    };
    drop(tracer);
    let reopened = Spool::open(&dir, u64::MAX).expect("the spool reopens");
    assert_eq!(reopened.stats().spans, s.spooled, "the spool holds what `spooled` says");
}

#[test]
fn recording_flushing_and_spilling_race_then_shutdown_is_durable() {
    crate::sync::check_random(|| scenario(false, false));
}

#[test]
fn a_shutdown_racing_recording_leaves_every_span_accounted() {
    crate::sync::check_random(|| scenario(false, true));
}

#[test]
fn with_a_healthy_collector_every_span_is_delivered_or_durable() {
    crate::sync::check_random(|| scenario(true, true));
}
