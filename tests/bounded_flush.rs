//! Whatever the collector does, every flush ends on time, the spool takes
//! what the network cannot, and no span is dropped while the disk keeps
//! pace. In-test HTTP servers on 127.0.0.1 play the faults (slow, flapping,
//! refusing everything, wrong path); a paced load records meanwhile, and a
//! flusher calls `flush` as bext's timer would, timing each call.
//!
//! The spool lives on tmpfs (`/dev/shm`): at 40,000 spans a second the
//! memory batch holds 0.8 s of spans, and another process's writeback can
//! stall an fsync on a real disk for longer; the tracer then drops and
//! counts `queue_full`, as designed (`tracer_contract` shows the count),
//! but these tests are about the collector, so the disk must keep pace
//! whatever else the machine writes. The real-disk paths are `spool_flush`,
//! `crash` and `power_cut` (`full_disk` fills a small tmpfs of its own).

use crate::common;

use bext_plugin_api::tracer::TracerPlugin;
use common::{Answer, FaultServer, record};
use spillway::{Config, SpillwayTracer, Stats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The flush budget of these tests, well under the request timeout.
const BUDGET: Duration = Duration::from_millis(2_500);
/// What a flush may take past its budget: the last request's wind-down,
/// and a busy test machine.
const MARGIN: Duration = Duration::from_millis(1_000);

fn slow(_: &str) -> u16 {
    std::thread::sleep(Duration::from_secs(2));
    202
}

static FLAP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn flapping(_: &str) -> u16 {
    if FLAP.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
        500
    } else {
        202
    }
}

fn refuse_all(_: &str) -> u16 {
    400
}

static FIXED: AtomicBool = AtomicBool::new(false);

fn wrong_path_until_fixed(_: &str) -> u16 {
    if FIXED.load(Ordering::SeqCst) { 202 } else { 404 }
}

struct Run {
    stats: Stats,
    longest_flush: Duration,
    flushes: usize,
}

/// Records `rate` spans a second for `secs` seconds on one thread while
/// another flushes every 200 ms; returns the stats after a last flush.
fn run(url: &str, rate: u64, secs: u64, tweak: impl FnOnce(&mut Config)) -> (SpillwayTracer, tempfile::TempDir, Run) {
    let _one = common::one_load();
    let dir = tempfile::Builder::new()
        .prefix("spillway-bounded-flush")
        .tempdir_in("/dev/shm")
        .expect("a spool on tmpfs at /dev/shm");
    let mut config = Config {
        flush_timeout_ms: BUDGET.as_millis() as u64,
        timeout_ms: 10_000,
        backoff_initial_ms: 100,
        backoff_max_ms: 400,
        // Room for a few spill rounds between flushes, so a busy machine
        // delaying the spiller thread is not taken for a full disk.
        max_queue_spans: 32_768,
        ..common::spool_config(url, dir.path())
    };
    config.timeout_ms = 10_000;
    tweak(&mut config);
    let t = SpillwayTracer::new(config).unwrap();
    let stop = AtomicBool::new(false);
    let (longest_flush, flushes) = std::thread::scope(|s| {
        let flusher = s.spawn(|| {
            let (mut longest, mut n) = (Duration::ZERO, 0);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let began = Instant::now();
                let _ = t.flush();
                longest = longest.max(began.elapsed());
                n += 1;
            }
            (longest, n)
        });
        let begin = Instant::now();
        let mut recorded = 0u64;
        while begin.elapsed() < Duration::from_secs(secs) {
            let due = (begin.elapsed().as_secs_f64() * rate as f64) as u64;
            if recorded < due {
                record(&t, (due - recorded) as usize, "GET /paced");
                recorded = due;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        stop.store(true, Ordering::Relaxed);
        flusher.join().unwrap()
    });
    let _ = t.flush();
    let stats = t.stats();
    (
        t,
        dir,
        Run {
            stats,
            longest_flush,
            flushes,
        },
    )
}

fn check(name: &str, r: &Run, server: &FaultServer) {
    let s = &r.stats;
    eprintln!(
        "{name}: {} flushes, longest {:?}; {s:?}; server received {} spans in {} requests",
        r.flushes,
        r.longest_flush,
        server.trace_span_ids().len(),
        server.requests().len()
    );
    assert!(s.is_balanced(), "{name}: {s:?}");
    assert_eq!(
        s.dropped.queue_full, 0,
        "{name}: spans dropped while the disk kept pace: {s:?}"
    );
    assert_eq!(s.dropped.total(), 0, "{name}: {s:?}");
    assert!(
        r.longest_flush <= BUDGET + MARGIN,
        "{name}: a flush took {:?}, over its {BUDGET:?} budget",
        r.longest_flush
    );
    assert!(
        s.delivered <= server.trace_span_ids().len() as u64,
        "{name}: {} delivered but the server holds {}",
        s.delivered,
        server.trace_span_ids().len()
    );
}

#[test]
fn a_slow_collector_holds_no_flush_past_its_deadline_and_the_spool_takes_the_rest() {
    let server = FaultServer::start(vec![Answer::By(slow); 10_000]);
    let (_t, _dir, r) = run(&server.url, 40_000, 5, |_| {});
    check("slow", &r, &server);
    // Most of the 200,000 spans waited on disk, spilled while flushes
    // waited on the collector.
    assert!(r.stats.spooled > r.stats.recorded / 2, "{:?}", r.stats);
}

#[test]
fn a_flapping_collector_loses_nothing_and_flushes_end_on_time() {
    let server = FaultServer::start(vec![Answer::By(flapping); 100_000]);
    let (_t, _dir, r) = run(&server.url, 40_000, 4, |_| {});
    check("flapping", &r, &server);
    assert!(r.stats.delivered > 0, "{:?}", r.stats);
}

#[test]
fn a_dead_collector_costs_nothing_but_disk() {
    let url = common::refused_url();
    let (t, _dir, r) = run(&url, 40_000, 4, |_| {});
    let s = &r.stats;
    // After the last flush some spans may still be on their way to disk
    // (its deadline may have come first on a busy machine): conservation
    // holds now, and a shutdown that says Ok has made every one durable.
    assert!(s.is_balanced() && s.dropped.total() == 0, "{s:?}");
    assert!(r.longest_flush <= BUDGET + MARGIN, "{:?}", r.longest_flush);
    t.shutdown_within(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    let s = t.stats();
    assert!(s.is_balanced() && s.dropped.total() == 0, "{s:?}");
    assert_eq!((s.spooled, s.in_memory), (s.recorded, 0), "{s:?}");
}

#[test]
fn a_collector_refusing_everything_costs_few_requests_and_keeps_every_span() {
    let server = FaultServer::start(vec![Answer::By(refuse_all); 1_000_000]);
    let (_t, _dir, r) = run(&server.url, 20_000, 3, |_| {});
    let s = &r.stats;
    eprintln!("refusing: {s:?}, {} requests", server.requests().len());
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!(s.dropped.total(), 0, "refused spans are dead letters, not drops: {s:?}");
    assert_eq!(s.dead_lettered + s.spooled + s.in_memory, s.recorded, "{s:?}");
    // One request per 512-span chunk, and a few more per flush to learn
    // that everything is refused: far below one per span.
    let chunks = s.recorded.div_ceil(512);
    let requests = server.requests().len() as u64;
    assert!(
        requests <= chunks + 7 * r.flushes as u64 + 16,
        "{requests} requests for {chunks} chunks in {} flushes",
        r.flushes
    );
    assert!(r.longest_flush <= BUDGET + MARGIN, "{:?}", r.longest_flush);
}

#[test]
fn a_wrong_path_backs_off_keeps_the_backlog_and_drains_it_once_fixed() {
    let server = FaultServer::start(vec![Answer::By(wrong_path_until_fixed); 1_000_000]);
    let (t, _dir, r) = run(&server.url, 20_000, 3, |_| {});
    let s = &r.stats;
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!((s.delivered, s.dead_lettered, s.dropped.total()), (0, 0, 0), "{s:?}");
    let err = t.try_flush().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("collector refuses every request: answered HTTP 404 Not Found")
            && msg.contains("check the endpoint"),
        "{msg}"
    );
    // Backoff: far fewer requests than flushes would make at full speed.
    assert!(
        server.requests().len() < r.flushes * 2,
        "{} requests",
        server.requests().len()
    );
    FIXED.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let s = t.stats();
        if s.delivered == s.recorded {
            break;
        }
        assert!(Instant::now() < until, "the backlog did not drain: {s:?}");
        let _ = t.flush();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.stats().is_balanced());
    assert_eq!(server.trace_span_ids().len() as u64, t.stats().recorded);
}

#[test]
fn shutdown_obeys_its_budget_on_a_hanging_collector() {
    let server = FaultServer::start(vec![Answer::Hang; 100]);
    let dir = tempfile::tempdir().unwrap();
    let t = SpillwayTracer::new(Config {
        flush_timeout_ms: 1_000,
        timeout_ms: 30_000,
        ..common::spool_config(&server.url, dir.path())
    })
    .unwrap();
    record(&t, 5_000, "GET /hang");
    let began = Instant::now();
    let err = t.try_flush().unwrap_err();
    let took = began.elapsed();
    assert!(
        took <= Duration::from_millis(1_000) + MARGIN,
        "flush took {took:?}: {err}"
    );
    assert!(
        err.to_string().contains("ran out of time") || err.cause().is_some(),
        "{err}"
    );
    record(&t, 100, "GET /after");
    let began = Instant::now();
    let first = t.shutdown_within(Duration::from_millis(500));
    assert!(began.elapsed() <= Duration::from_millis(500) + MARGIN);
    let s = t.stats();
    assert!(s.is_balanced(), "{s:?}");
    // Ok means everything is durable; else the error names exactly what
    // is not, and the stats agree.
    match first {
        Ok(()) => assert_eq!((s.spooled, s.in_memory), (5_100, 0), "{s:?}"),
        Err(e) => {
            let msg = e.to_string();
            let want = format!("shutdown ended with {} spans not yet durable", s.in_memory);
            assert!(s.in_memory > 0 && msg.contains(&want), "{msg}; {s:?}");
        }
    }
    // A shutdown with time enough finishes the job, whatever the first did.
    t.shutdown_within(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("second shutdown: {e}"));
    let s = t.stats();
    assert_eq!((s.spooled, s.in_memory), (5_100, 0), "{s:?}");
}
