//! Span lifecycle cost on the recording path, 1 and 2 threads.
//!
//! The threads record in rounds of `CHUNK` spans each; between rounds the
//! batch is flushed to a discarding transport while they wait, outside the
//! timing. That keeps the batch bounded and warm, as bext's interval flush
//! does, so what is measured is the hot path (and not page faults from an
//! ever-growing batch). Reported time is wall time per span over all
//! threads: the inverse of throughput.
//!
//! Where the flush runs matters to the allocator, since the spans hold the
//! strings bext allocated: the plain rows flush on one of the recording
//! threads; the `_flush_thread` rows flush on a thread of its own, as bext's
//! interval timer does, so whatever a tracer frees at flush is freed by
//! another thread than the one that allocated it.
//!
//! The peers get the same span: `opentelemetry_sdk` (its tracer, a batch
//! processor and a discarding exporter) and `fastrace` (a local span under
//! a per-thread root). Their plain variants take `&'static str` attributes,
//! which bext's trait cannot hand over; the `_owned_strings` variants
//! allocate the keys and values as bext does for spillway.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

mod common;
mod peers;

const CHUNK: u64 = 4096;

fn lifecycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("span_lifecycle");
    g.throughput(Throughput::Elements(1));
    peers::fastrace_init();
    for threads in [1usize, 2] {
        let tracer = common::tracer();
        let otel = peers::otel();
        let shapes: &[(&str, FlushOn)] = match threads {
            1 => &[("", FlushOn::Recorder), ("_flush_thread", FlushOn::OwnThread)],
            _ => &[("", FlushOn::Recorder)],
        };
        for &(shape, on) in shapes {
            g.bench_function(format!("spillway{shape}/{threads}t"), |b| {
                b.iter_custom(|iters| run(&tracer, threads, iters, common::record_one, spillway_flush, on))
            });
            g.bench_function(format!("opentelemetry_sdk{shape}/{threads}t"), |b| {
                b.iter_custom(|iters| run(&otel, threads, iters, peers::otel_record_one, peers::otel_flush, on))
            });
            g.bench_function(format!("fastrace{shape}/{threads}t"), |b| {
                b.iter_custom(|iters| {
                    run(
                        &(),
                        threads,
                        iters,
                        peers::fastrace_record_one,
                        peers::fastrace_flush,
                        on,
                    )
                })
            });
            if threads == 1 {
                // The peers with the same owned strings bext hands to spillway.
                g.bench_function(format!("opentelemetry_sdk_owned_strings{shape}/1t"), |b| {
                    b.iter_custom(|iters| run(&otel, 1, iters, peers::otel_record_one_owned, peers::otel_flush, on))
                });
                g.bench_function(format!("fastrace_owned_strings{shape}/1t"), |b| {
                    b.iter_custom(|iters| {
                        run(
                            &(),
                            1,
                            iters,
                            peers::fastrace_record_one_owned,
                            peers::fastrace_flush,
                            on,
                        )
                    })
                });
            }
        }
    }
    // The floor the trait's signature sets: what bext itself allocates for
    // the same span (the owned attribute keys, values and vector), dropped
    // in bulk between rounds as a flush would.
    let sink = std::sync::Mutex::new(Vec::new());
    g.bench_function("caller_allocations_only/1t", |b| {
        b.iter_custom(|iters| {
            run(
                &sink,
                1,
                iters,
                |s| s.lock().unwrap_or_else(|e| e.into_inner()).push(common::attributes()),
                |s| s.lock().unwrap_or_else(|e| e.into_inner()).clear(),
                FlushOn::Recorder,
            )
        })
    });
    g.finish();
}

fn spillway_flush(t: &spillway::SpillwayTracer) {
    let _ = t.try_flush();
}

/// Which thread flushes between rounds.
#[derive(Clone, Copy)]
pub enum FlushOn {
    /// One of the recording threads.
    Recorder,
    /// A thread that only flushes (bext's interval timer).
    OwnThread,
}

/// Records `iters` spans over `threads` threads in rounds; returns the wall
/// time of the recording, scaled to `iters` spans.
pub fn run<T: Sync>(tracer: &T, threads: usize, iters: u64, record: fn(&T), flush: fn(&T), on: FlushOn) -> Duration {
    let per_thread = iters.div_ceil(threads as u64).max(1);
    let rounds = per_thread.div_ceil(CHUNK);
    let start = Barrier::new(threads);
    let end = Barrier::new(threads);
    // The flusher and the round's leader meet before and after each flush.
    let flush_barriers = (Barrier::new(2), Barrier::new(2));
    let (flush_go, flush_done) = (&flush_barriers.0, &flush_barriers.1);
    let elapsed = std::thread::scope(|s| {
        if let FlushOn::OwnThread = on {
            s.spawn(move || {
                for _ in 0..rounds {
                    flush_go.wait();
                    flush(tracer);
                    flush_done.wait();
                }
            });
        }
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (start, end) = (&start, &end);
                s.spawn(move || {
                    let mut spent = Duration::ZERO;
                    let mut left = per_thread;
                    for _ in 0..rounds {
                        let n = left.min(CHUNK);
                        left -= n;
                        start.wait();
                        let t = Instant::now();
                        for _ in 0..n {
                            record(black_box(tracer));
                        }
                        spent += t.elapsed();
                        if end.wait().is_leader() {
                            match on {
                                FlushOn::Recorder => flush(tracer),
                                FlushOn::OwnThread => {
                                    flush_go.wait();
                                    flush_done.wait();
                                }
                            }
                        }
                    }
                    spent
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .max()
            .unwrap_or_default()
    });
    elapsed.mul_f64(iters as f64 / (per_thread * threads as u64) as f64)
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
