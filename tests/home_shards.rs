//! Home shards outlive their threads: a thread started after another has
//! exited takes that thread's home shard (warm: its slab and buffers grown
//! to what a thread uses), and threads alive together keep shards of their
//! own. One test in a binary of its own, since any thread of the process
//! that records takes or gives back a home.

use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use spillway::{Config, SpillwayTracer};
use std::sync::Barrier;

/// Starts and ends a span on the calling thread; the shard it went to.
fn record(t: &SpillwayTracer) -> usize {
    let h = t.start_span(SpanStart {
        name: "GET /",
        ..Default::default()
    });
    assert!(!h.is_invalid());
    t.end_span(h, None);
    t.shard_of(&h)
}

#[test]
fn a_new_thread_takes_the_home_of_the_thread_that_exited_last() {
    // Nothing is flushed, so the default HTTP transport never sends.
    let tracer = SpillwayTracer::new(Config::default()).expect("tracer");
    let on_a_thread = || std::thread::scope(|s| s.spawn(|| record(&tracer)).join().expect("thread"));
    let first = on_a_thread();
    for _ in 0..3 {
        assert_eq!(on_a_thread(), first, "a thread after an exited one takes its home");
    }
    // Two threads alive at once: one takes the vacated home, the other a
    // shard of its own.
    let both = Barrier::new(2);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let shard = record(&tracer);
            both.wait();
            shard
        });
        let b = s.spawn(|| {
            let shard = record(&tracer);
            both.wait();
            shard
        });
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert!(a == first || b == first, "one of them took the vacated home");
    assert_ne!(a, b, "threads alive together have shards of their own");
    assert_eq!(tracer.stats().recorded, 6);
}
