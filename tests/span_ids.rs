//! Span ids look uniformly random (W3C trace context asks for randomly
//! generated ids, and tools sample or shard by id bits), are never zero,
//! never repeat within a tracer, and differ between tracers.
//!
//! The bounds are several standard deviations wide for the sample size, so
//! a uniform generator passes with overwhelming odds, while the structured
//! ids of earlier versions (slot and shard in the low 30 bits) fail every
//! one of them.

use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use spillway::{Config, SpillwayTracer};
use std::collections::HashSet;

const SPANS: usize = 200_000;

fn tracer() -> SpillwayTracer {
    SpillwayTracer::builder()
        .config(Config {
            max_queue_spans: SPANS * 2,
            ..Config::default()
        })
        .build()
        .unwrap()
}

/// Span ids as bext sees them, from spans started and ended the way a
/// request does: some nested (parents live while children start), on
/// several threads.
fn ids(tracer: &SpillwayTracer) -> Vec<u64> {
    let per_thread = SPANS / 4;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut ids = Vec::with_capacity(per_thread);
                    for _ in 0..per_thread / 2 {
                        let parent = tracer.start_span(SpanStart {
                            name: "request",
                            ..Default::default()
                        });
                        let child = tracer.start_span(SpanStart {
                            name: "db",
                            parent: Some(parent),
                            ..Default::default()
                        });
                        ids.push(u64::from_be_bytes(parent.span_id));
                        ids.push(u64::from_be_bytes(child.span_id));
                        tracer.end_span(child, None);
                        tracer.end_span(parent, None);
                    }
                    ids
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn span_ids_are_nonzero_unique_and_look_uniformly_random() {
    let t = tracer();
    let ids = ids(&t);
    let n = ids.len();
    assert_eq!(n, SPANS);
    assert!(ids.iter().all(|&id| id != 0), "no id is zero");
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), n, "no id repeats within a tracer");
    assert_eq!(t.stats().recorded, n as u64, "every span was live when it ended");

    // Every bit is set half the time (sd = 0.0011 at this size).
    for bit in 0..64 {
        let set = ids.iter().filter(|&&id| id >> bit & 1 == 1).count() as f64 / n as f64;
        assert!((set - 0.5).abs() < 0.007, "bit {bit} is set in {set:.4} of ids");
    }
    // The low 12 bits are zero in about 1 of 4,096 ids (49 expected).
    let low_zero = ids.iter().filter(|&&id| id & 0xfff == 0).count();
    assert!(low_zero < 100, "{low_zero} of {n} ids end in 000");
    // Each hex digit position is uniform: chi-square with 15 degrees of
    // freedom stays under 60 (p < 1e-6) for a uniform source.
    for digit in 0..16 {
        let mut counts = [0f64; 16];
        for &id in &ids {
            counts[(id >> (4 * digit) & 0xf) as usize] += 1.0;
        }
        let expected = n as f64 / 16.0;
        let chi2: f64 = counts.iter().map(|c| (c - expected).powi(2) / expected).sum();
        assert!(chi2 < 60.0, "hex digit {digit}: chi-square {chi2:.1}");
    }
    // Ids started one after another share no pattern: on average half
    // their bits differ (sd of the mean = 0.009 bits).
    let mean_diff = ids.windows(2).map(|w| (w[0] ^ w[1]).count_ones() as f64).sum::<f64>() / (n - 1) as f64;
    assert!(
        (mean_diff - 32.0).abs() < 0.1,
        "consecutive ids differ in {mean_diff:.3} bits on average"
    );
}

#[test]
fn two_tracers_hand_out_different_ids() {
    let (a, b) = (tracer(), tracer());
    let first = |t: &SpillwayTracer| {
        (0..1_000)
            .map(|_| {
                let h = t.start_span(SpanStart {
                    name: "x",
                    ..Default::default()
                });
                t.end_span(h, None);
                u64::from_be_bytes(h.span_id)
            })
            .collect::<HashSet<u64>>()
    };
    let (ia, ib) = (first(&a), first(&b));
    assert_eq!((ia.len(), ib.len()), (1_000, 1_000));
    // Without a per-tracer key, both would start from the same addresses.
    assert_eq!(ia.intersection(&ib).count(), 0, "tracers share ids");
}
