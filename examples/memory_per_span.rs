//! Memory per buffered span: the growth of the process's resident memory
//! with 1 M standard spans (3 attributes, 1 event, as bext hands them over)
//! ended and waiting for a flush. Issue target: at most 400 bytes per span.
//!
//! `cargo run --release --example memory_per_span [SPANS]`

use spillway::{Config, SpillwayTracer};

/// The benchmarks' standard span, recorded exactly as they record it.
#[allow(dead_code)]
#[path = "../benches/common.rs"]
mod common;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spans: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let tracer = SpillwayTracer::new(Config {
        max_queue_spans: spans as usize * 2,
        ..Config::default()
    })?;
    let before = rss_bytes();
    for _ in 0..spans {
        common::record_one(&tracer);
    }
    let after = rss_bytes();
    let s = tracer.stats();
    assert_eq!(s.in_memory, spans, "every span is buffered: {s:?}");
    println!(
        "{spans} spans buffered: RSS +{:.1} MiB, {:.0} bytes per span",
        (after - before) as f64 / f64::from(1 << 20),
        (after - before) as f64 / spans as f64
    );
    // Nothing is flushed: the endpoint is never contacted.
    std::mem::forget(tracer);
    Ok(())
}
