//! Sustained, paced recording on two threads with a collector that does
//! not keep up, the spool taking the rest (real fsync): how many spans per
//! second go through with no span dropped, how long each flush takes, and
//! what a recording call costs meanwhile.
//!
//! ```text
//! cargo run --release --example sustained -- [dead|slow|flapping] [RATE] [SECONDS]
//! cargo run --release --example sustained -- [dead|slow|flapping] find [SECONDS]
//! ```
//!
//! `dead`: nothing listens; `slow`: every answer takes 2 s; `flapping`:
//! every third request gets a 500. RATE is spans per second over both
//! threads (default 500000); `find` tries rising rates and reports the
//! highest with no `queue_full` drop. The spool lives in a temporary
//! directory under `TMPDIR`; bext's flush interval is 1 s.

#[path = "../benches/common.rs"]
#[allow(dead_code)]
mod bench;
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod fixtures;

use bext_plugin_api::tracer::TracerPlugin;
use fixtures::{Answer, FaultServer};
use spillway::{Config, SpillwayTracer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn slow(_: &str) -> u16 {
    std::thread::sleep(Duration::from_secs(2));
    202
}

/// Every third request a 500, the others 202.
fn flapping(n: u64) -> Option<u16> {
    (n % 3 == 2).then_some(500)
}

/// Recording-call latencies in 10 ns buckets up to 1 ms (the last bucket
/// holds everything slower).
struct Histogram(Vec<u64>);

impl Histogram {
    fn new() -> Self {
        Histogram(vec![0; 100_001])
    }
    fn add(&mut self, ns: u64) {
        let i = ((ns / 10) as usize).min(self.0.len() - 1);
        self.0[i] += 1;
    }
    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.0.iter().sum();
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= want {
                return i as u64 * 10;
            }
        }
        0
    }
}

struct Run {
    recorded: u64,
    delivered: u64,
    spooled: u64,
    queue_full: u64,
    dropped: u64,
    seconds: f64,
    flush_max_ms: f64,
    flush_median_ms: f64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
}

fn run(collector: &str, rate: u64, seconds: u64) -> Run {
    let server = match collector {
        "slow" => Some(FaultServer::start(vec![Answer::By(slow); 1_000_000])),
        // A counting sink: it keeps no body, so its own cost is small.
        "flapping" => Some(FaultServer::failing_sink(flapping)),
        _ => None,
    };
    let endpoint = server.as_ref().map_or_else(fixtures::refused_url, |s| s.url.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let tracer = SpillwayTracer::new(Config {
        endpoint,
        spool_dir: Some(dir.path().to_path_buf()),
        max_spool_bytes: 1 << 40,
        timeout_ms: 3_000,
        ..Config::default()
    })
    .expect("tracer");
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let per_thread = rate as f64 / 2.0;
    let (hist, flushes) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut h = Histogram::new();
                    let begin = Instant::now();
                    let end = begin + Duration::from_secs(seconds);
                    let mut n = 0u64;
                    // Spans fall due evenly; whatever is due is recorded at
                    // once, then the thread sleeps (timers are coarser than
                    // one span's interval). One call in eight is timed.
                    loop {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        let due = ((now - begin).as_secs_f64() * per_thread) as u64;
                        if n >= due {
                            std::thread::sleep(Duration::from_micros(100));
                            continue;
                        }
                        while n < due {
                            if n.is_multiple_of(8) {
                                let t = Instant::now();
                                bench::record_one(&tracer);
                                h.add(t.elapsed().as_nanos() as u64);
                            } else {
                                bench::record_one(&tracer);
                            }
                            n += 1;
                        }
                    }
                    h
                })
            })
            .collect();
        let flusher = s.spawn(|| {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let t = Instant::now();
                let _ = tracer.flush();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times
        });
        let mut hist = Histogram::new();
        for w in workers {
            hist.merge(&w.join().expect("worker"));
        }
        stop.store(true, Ordering::Relaxed);
        (hist, flusher.join().expect("flusher"))
    });
    let seconds = started.elapsed().as_secs_f64();
    let s = tracer.stats();
    let mut sorted = flushes.clone();
    sorted.sort_by(f64::total_cmp);
    Run {
        recorded: s.recorded,
        delivered: s.delivered,
        spooled: s.spooled,
        queue_full: s.dropped.queue_full,
        dropped: s.dropped.total(),
        seconds,
        flush_max_ms: sorted.last().copied().unwrap_or(0.0),
        flush_median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        p50_ns: hist.quantile(0.5),
        p99_ns: hist.quantile(0.99),
        p999_ns: hist.quantile(0.999),
    }
}

fn print(collector: &str, rate: u64, r: &Run) {
    println!(
        "{collector} collector, {rate} spans/s asked: recorded {} ({:.0}/s), delivered {}, spooled {}, dropped {} (queue_full {}); \
         flush median {:.1} ms, max {:.1} ms; recording call p50 {} ns, p99 {} ns, p99.9 {} ns",
        r.recorded,
        r.recorded as f64 / r.seconds,
        r.delivered,
        r.spooled,
        r.dropped,
        r.queue_full,
        r.flush_median_ms,
        r.flush_max_ms,
        r.p50_ns,
        r.p99_ns,
        r.p999_ns
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let collector = args.first().map_or("dead", String::as_str).to_owned();
    if args.get(1).map(String::as_str) == Some("find") {
        let seconds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
        let mut best = None;
        for rate in [250_000u64, 500_000, 750_000, 1_000_000, 1_250_000, 1_500_000] {
            let r = run(&collector, rate, seconds);
            print(&collector, rate, &r);
            if r.dropped > 0 {
                break;
            }
            best = Some(rate);
        }
        match best {
            Some(rate) => println!("{collector}: highest rate with no drop: {rate} spans/s"),
            None => println!("{collector}: drops at every rate tried"),
        }
        return;
    }
    let rate = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(500_000);
    let seconds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    print(&collector, rate, &run(&collector, rate, seconds));
}
