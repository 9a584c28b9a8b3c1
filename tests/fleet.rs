//! A fleet of backlogs against one collector that sheds load: everything
//! arrives, nothing is lost, and the fleet shares the collector's rate.
//!
//! Twenty tracers, each reopening a spool that holds a backlog (as twenty
//! bext processes do when their collector comes back after an outage),
//! start at once against an in-test collector on 127.0.0.1 that admits a
//! fixed number of spans a second (a token bucket) and answers 429 with
//! `Retry-After: 1` beyond it. Each tracer is flushed every second, as
//! bext's timer does, until its backlog is gone.
//!
//! The test asserts conservation (every tracer balanced, nothing dropped),
//! that every span arrives, and that the collector took each span once.
//! The figures (time to drain against the ideal `spans / rate`, the share
//! of requests refused, the slowest tracer against the median) are
//! printed for BENCHMARKS.md; they are goals, not assertions, since a
//! loaded machine stretches them.
//!
//! `FLEET_TRACERS` (default 20), `FLEET_SPANS` (backlog per tracer,
//! default 25,000) and `FLEET_RATE` (spans a second the collector admits,
//! default 25,000) size the run.

use crate::common;

use bext_plugin_api::tracer::TracerPlugin;
use common::FaultServer;
use spillway::{Config, SpillwayTracer};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// How long the fleet may take to drain at most: far above a real run, so
/// only a backlog that stops draining trips it.
const DRAIN_LIMIT: Duration = Duration::from_secs(900);

fn config(url: &str, dir: &std::path::Path) -> Config {
    Config {
        gzip: false, // the collector counts spans in plain JSON
        // The defaults' backoff, as a site runs it.
        backoff_initial_ms: Config::default().backoff_initial_ms,
        backoff_max_ms: Config::default().backoff_max_ms,
        timeout_ms: 2_000,
        ..common::spool_config(url, dir)
    }
}

#[test]
fn a_fleet_of_backlogs_drains_through_a_collector_that_sheds_load() {
    let _one = common::one_load();
    let tracers = env("FLEET_TRACERS", 20) as usize;
    let per = env("FLEET_SPANS", 25_000) as usize;
    let rate = env("FLEET_RATE", 25_000);
    let dirs: Vec<_> = (0..tracers).map(|_| tempfile::tempdir().unwrap()).collect();
    for d in &dirs {
        common::spool_backlog(d.path(), per, "GET /backlog");
    }
    let collector = FaultServer::admitting(rate);
    let began = Instant::now();
    let finished: Vec<(Duration, spillway::Stats)> = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|d| {
                let url = collector.url.clone();
                s.spawn(move || {
                    let t = SpillwayTracer::new(config(&url, d.path())).unwrap();
                    loop {
                        let _ = t.flush();
                        let s = t.stats();
                        if s.spooled == 0 && s.in_memory == 0 {
                            return (began.elapsed(), s);
                        }
                        assert!(began.elapsed() < DRAIN_LIMIT, "a backlog stopped draining: {s:?}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = (tracers * per) as u64;
    for (_, s) in &finished {
        assert!(s.is_balanced(), "{s:?}");
        assert_eq!(s.dropped.total(), 0, "{s:?}");
        assert_eq!(s.recovered, per as u64, "each tracer found its backlog: {s:?}");
        assert_eq!(s.delivered, per as u64, "each tracer delivered its backlog: {s:?}");
    }
    let received = collector.spans_received.load(Ordering::Relaxed);
    assert_eq!(received, total, "the collector took every span once");

    let mut times: Vec<f64> = finished.iter().map(|(t, _)| t.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let slowest = times[times.len() - 1];
    let median = times[times.len() / 2];
    let ideal = total as f64 / rate as f64;
    let requests = collector.sink_requests();
    let refused = collector.refused_requests();
    eprintln!(
        "fleet: {tracers} tracers x {per} spans at {rate} spans/s admitted: drained in {slowest:.1} s \
         ({:.2}x the ideal {ideal:.1} s); {refused} of {requests} requests refused ({:.1} %); \
         slowest {slowest:.1} s, median {median:.1} s ({:.2}x), fastest {:.1} s",
        slowest / ideal,
        100.0 * refused as f64 / requests.max(1) as f64,
        slowest / median,
        times[0],
    );
}
