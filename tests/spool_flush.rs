//! The flush pipeline with a durable spool, against a fault-injecting
//! server on 127.0.0.1: spill on failure, replay on recovery and after a
//! restart, dead letters, quarantine, ownership, and damaged directories.
//! The accounting invariant is asserted after every step.

use crate::common;

use bext_plugin_api::tracer::TracerPlugin;
use common::{Answer, FaultServer, record};
use spillway::{BuildError, Config, SpillwayTracer};
use std::path::Path;

fn tracer(url: &str, dir: &Path) -> SpillwayTracer {
    SpillwayTracer::new(common::spool_config(url, dir)).unwrap()
}

fn balanced(t: &SpillwayTracer) -> spillway::Stats {
    let s = t.stats();
    assert!(s.is_balanced(), "{s:?}");
    s
}

/// Flushes until the spool is empty, at least once and `limit` times at
/// most (each replays a window of it); the stats then, and how many
/// flushes that took.
fn flush_until_drained(t: &SpillwayTracer, limit: usize) -> (spillway::Stats, usize) {
    let mut flushes = 0;
    loop {
        t.flush().unwrap();
        flushes += 1;
        if flushes == limit || t.stats().spooled == 0 {
            return (balanced(t), flushes);
        }
    }
}

#[test]
fn failed_batches_spill_and_replay_when_the_collector_returns() {
    // The first flush's request fails through its retries (the circuit
    // opens), the second's probe is reset, then the collector is back.
    let mut script = common::failures(503, common::ATTEMPTS);
    script.push(Answer::Reset);
    let server = FaultServer::start(script);
    let dir = tempfile::tempdir().unwrap();
    let t = tracer(&server.url, dir.path());
    record(&t, 300, "a");
    let err = t.try_flush().unwrap_err();
    assert_eq!((err.spilled, err.kept_in_memory), (300, 0), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("300 spilled") && msg.contains("spool holds 300 spans"),
        "{msg}"
    );
    let s = balanced(&t);
    assert_eq!((s.spooled, s.in_memory), (300, 0));
    record(&t, 10, "b");
    // The fresh batch fails too (reset): spilled behind the first.
    assert_eq!(t.try_flush().unwrap_err().spilled, 10);
    record(&t, 5, "c");
    t.flush().unwrap();
    let s = balanced(&t);
    assert_eq!((s.delivered, s.spooled), (315, 0), "{s:?}");
    assert_eq!(server.span_ids().len(), 315);
}

#[test]
fn a_span_too_large_for_the_spool_is_counted_oversize_and_the_rest_spilled() {
    use bext_plugin_api::tracer::{AttrValue, SpanStart};
    let dir = tempfile::tempdir().unwrap();
    let t = SpillwayTracer::new(Config {
        // Room in a request for the span: only the spool's record limit
        // can refuse it.
        max_request_bytes: 64 << 20,
        ..common::spool_config(&common::refused_url(), dir.path())
    })
    .unwrap();
    record(&t, 100, "a");
    let huge = t.start_span(SpanStart {
        name: "huge",
        ..Default::default()
    });
    // Encodes in 2.1 MB; a record reader would count 16.8 MB.
    t.set_attribute(huge, "a", AttrValue::I64Array(vec![1; 2_100_000]));
    t.end_span(huge, None);
    record(&t, 100, "b");
    assert!(t.try_flush().is_err(), "the collector is down");
    // On a loaded machine one flush's budget may end before the spill
    // does: what is left stays in memory for the next flushes (a later one
    // is Ok when it only waited for the spill to land).
    common::wait_for("the spill to land", std::time::Duration::from_secs(60), || {
        if t.stats().in_memory == 0 {
            return Some(());
        }
        let _ = t.try_flush();
        None
    });
    let s = balanced(&t);
    assert_eq!((s.recorded, s.spooled, s.dropped.oversize), (201, 200, 1), "{s:?}");
    drop(t);
    // And what was spilled reads back.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("--spool")
        .arg(dir.path())
        .arg("verify")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_restart_replays_what_the_last_process_spilled() {
    let dir = tempfile::tempdir().unwrap();
    let dead = FaultServer::start(common::failures(500, 8 * common::ATTEMPTS));
    {
        let t = tracer(&dead.url, dir.path());
        record(&t, 120, "before-restart");
        assert!(t.flush().is_err());
        record(&t, 7, "never-flushed");
        // Dropping the tracer spills what is still in memory.
    }
    let server = FaultServer::start(vec![]);
    let t = tracer(&server.url, dir.path());
    assert_eq!(t.stats().recovered, 127);
    t.flush().unwrap();
    let s = balanced(&t);
    assert_eq!((s.delivered, s.spooled, s.recorded), (127, 0, 0));
    assert_eq!(server.span_ids().len(), 127);
}

#[test]
fn replay_is_bounded_per_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let dead = FaultServer::start(common::failures(500, common::ATTEMPTS));
        let t = tracer(&dead.url, dir.path());
        record(&t, 5_000, "old");
        assert!(t.flush().is_err());
    }
    let server = FaultServer::start(vec![]);
    let t = SpillwayTracer::new(Config {
        endpoint: server.url.clone(),
        spool_dir: Some(dir.path().to_path_buf()),
        replay_budget_spans: 1_000,
        ..Config::default()
    })
    .unwrap();
    record(&t, 3, "fresh");
    t.flush().unwrap();
    let s = balanced(&t);
    assert!(
        s.delivered >= 1_003 && s.delivered < 2_200,
        "fresh first, then about one budget: {s:?}"
    );
    let (s, more) = flush_until_drained(&t, 19);
    assert_eq!(s.delivered, 5_003, "{s:?}");
    let flushes = 1 + more;
    assert!(flushes >= 4, "drained over several flushes, not at once: {flushes}");
}

#[test]
fn a_second_process_is_told_the_spool_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = FaultServer::start(vec![]);
    let _first = tracer(&server.url, dir.path());
    let err = SpillwayTracer::new(Config {
        endpoint: server.url.clone(),
        spool_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    })
    .err()
    .expect("second opener must fail");
    assert!(matches!(err, BuildError::Spool(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("in use") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn refused_spans_become_dead_letters_not_losses() {
    fn refuse_poison(body: &str) -> u16 {
        if body.contains("poison") { 400 } else { 202 }
    }
    let server = FaultServer::start(vec![Answer::By(refuse_poison); 64]);
    let dir = tempfile::tempdir().unwrap();
    let t = tracer(&server.url, dir.path());
    record(&t, 10, "fine");
    record(&t, 2, "poison");
    let err = t.try_flush().unwrap_err();
    assert!(
        err.to_string()
            .contains("2 refused by the collector and kept as dead letters"),
        "{err}"
    );
    let s = balanced(&t);
    assert_eq!((s.delivered, s.dead_lettered, s.dropped.rejected), (10, 2, 0));
}

#[test]
fn a_corrupt_record_is_quarantined_by_key_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let dead = FaultServer::start(common::failures(500, 3 * common::ATTEMPTS));
        let t = tracer(&dead.url, dir.path());
        for name in ["first", "second", "third"] {
            record(&t, 10, name);
            assert!(t.flush().is_err());
        }
    }
    // Flip one byte in the middle record, as a bad disk would.
    let key;
    {
        let db = common::open_sled(dir.path());
        let queue = db.open_tree("queue").unwrap();
        let (k, v) = queue.iter().nth(1).unwrap().unwrap();
        let mut bad = v.to_vec();
        let at = bad.len() - 5;
        bad[at] ^= 0x40;
        queue.insert(&k, bad).unwrap();
        db.flush().unwrap();
        key = u64::from_be_bytes(k.as_ref().try_into().unwrap());
    }
    let server = FaultServer::start(vec![]);
    let t = tracer(&server.url, dir.path());
    let err = t.try_flush().unwrap_err();
    assert_eq!(err.quarantined().count(), 1, "{err}");
    assert_eq!(err.quarantined().next().map(|(k, _)| k), Some(key));
    // The damage is named down to the block and its offset in the record.
    let said = err.to_string();
    assert!(
        said.contains(&format!("spool record {key} quarantined (block at byte ")) && said.contains("CRC mismatch"),
        "{err}"
    );
    let s = balanced(&t);
    assert_eq!((s.delivered, s.dropped.corrupt, s.spooled), (20, 10, 0), "{s:?}");
    // The next flush is clean: the queue went on.
    t.flush().unwrap();
}

#[test]
fn an_unopenable_spool_is_set_aside_and_a_fresh_one_started() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("spool");
    std::fs::create_dir(&dir).unwrap();
    // Not a sled database: its config file is garbage.
    std::fs::write(dir.join("conf"), b"\x00\xffnot a sled config").unwrap();
    std::fs::write(dir.join("db"), b"garbage").unwrap();
    let server = FaultServer::start(vec![]);
    let t = tracer(&server.url, &dir);
    let aside = t.moved_aside().expect("set aside");
    assert!(t.stats().spool_moved_aside);
    assert!(aside.starts_with(dir.join("set-aside")), "{aside:?}");
    // Its bytes are kept.
    assert_eq!(std::fs::read(aside.join("db")).unwrap(), b"garbage");
    record(&t, 3, "x");
    let err = t.flush().unwrap_err();
    assert!(
        err.contains("set aside") && err.contains(&aside.display().to_string()),
        "{err}"
    );
    assert_eq!(balanced(&t).delivered, 3, "the spans still went out");
    t.flush().unwrap();
    assert_eq!(t.moved_aside(), Some(aside), "still known after the flush said it");
    assert!(t.stats().spool_moved_aside);
}

#[test]
fn a_path_that_is_not_a_spool_directory_is_refused_and_left_alone() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("notes.txt");
    std::fs::write(&file, b"mine").unwrap();
    let other = parent.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cat.jpg"), b"meow").unwrap();
    for path in [&file, &other] {
        let err = SpillwayTracer::new(common::spool_config(&common::refused_url(), path))
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("not a spool directory") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    assert_eq!(std::fs::read(other.join("cat.jpg")).unwrap(), b"meow");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1, "nothing added");
    let names: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing renamed: {names:?}");
    // A trailing slash and `.` are the same directory.
    let dir = parent.path().join("spool");
    let with_slash = format!("{}/", dir.display());
    drop(SpillwayTracer::new(common::spool_config(&common::refused_url(), Path::new(&with_slash))).unwrap());
    assert!(dir.join("db").exists());
}

/// A tracer sending to `url` with a 6,400-span batch, given `bursts` bursts
/// of 200 spans and no flush. The spiller, woken when half the shards are
/// full (3,200 spans), moves them out. A burst starts only once fewer than
/// half the batch is in memory, so even a spiller slow to run has the other
/// half (3,200 spans, 16 bursts) to catch up in: no burst may drop a span.
fn bursts(url: &str, dir: &Path, bursts: usize) -> SpillwayTracer {
    let cap = spillway::unstable::SHARDS * 100;
    let t = SpillwayTracer::new(Config {
        max_queue_spans: cap,
        ..common::spool_config(url, dir)
    })
    .unwrap();
    for burst in 0..bursts {
        record(&t, 200, "burst");
        common::wait_for(
            "the spiller to move the batch out",
            std::time::Duration::from_secs(10),
            || (t.stats().in_memory < cap as u64 / 2).then_some(()),
        );
        let s = balanced(&t);
        assert_eq!(s.dropped.queue_full, 0, "burst {burst}: {s:?}");
    }
    t
}

#[test]
fn a_full_batch_spills_early_instead_of_dropping() {
    // Down (503) while the bursts come, so the spiller spills; then back.
    static UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    fn answer(_: &str) -> u16 {
        if UP.load(std::sync::atomic::Ordering::SeqCst) {
            202
        } else {
            503
        }
    }
    let dead = FaultServer::start(vec![Answer::By(answer); 100_000]);
    let dir = tempfile::tempdir().unwrap();
    // 21,000 spans against a 6,400-span batch.
    let t = bursts(&dead.url, dir.path(), 105);
    let s = balanced(&t);
    assert!(s.spooled > 0, "{s:?}");
    UP.store(true, std::sync::atomic::Ordering::SeqCst);
    let (s, _) = flush_until_drained(&t, 10);
    assert_eq!((s.delivered, s.spooled, s.in_memory), (21_000, 0, 0), "{s:?}");
}

#[test]
fn a_full_batch_goes_early_to_a_healthy_collector() {
    let server = FaultServer::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    // No flush at all: the spiller sends what fills the batch. An early
    // send stops at its time bound (250 ms) and spills what it has not
    // sent, which a loaded machine can make happen: so the spool may hold
    // some (seen once in a run under a CPU hog: one wake's 3,200 spans of
    // three), and nothing is dropped. 20,000 spans wake it six times.
    let t = bursts(&server.url, dir.path(), 100);
    let s = balanced(&t);
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert!(s.delivered > 0, "sent before any flush: {s:?}");
    assert_eq!(server.span_ids().len() as u64, s.delivered);
    // Then flushes send what memory and the spool hold: every span once.
    let (s, _) = flush_until_drained(&t, 10);
    assert_eq!((s.delivered, s.spooled, s.in_memory), (20_000, 0, 0), "{s:?}");
    let received: usize = server.requests().iter().map(|r| r.spans().len()).sum();
    assert_eq!((server.span_ids().len(), received), (20_000, 20_000), "each span once");
}

#[test]
fn a_collector_slower_than_the_spans_gets_what_it_takes_and_the_spool_the_rest() {
    // Every request takes 50 ms: 64 spans a request is 1,280 spans/s, far
    // below the 20,000 a second recorded. The spiller, woken at 3,200 spans
    // of a 6,400-span batch, sends early a request at a time and stops as
    // soon as the batch is half full again; sending the whole batch for
    // its 250 ms would let 5,000 more spans arrive where 3,200 fit.
    fn slow(_: &str) -> u16 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        202
    }
    let server = FaultServer::start(vec![Answer::By(slow); 100_000]);
    let dir = tempfile::tempdir().unwrap();
    let t = SpillwayTracer::new(Config {
        max_queue_spans: spillway::unstable::SHARDS * 100,
        max_batch_spans: 64,
        ..common::spool_config(&server.url, dir.path())
    })
    .unwrap();
    // 200 spans every 10 ms (slower when the machine is busy), no flush.
    for _ in 0..200 {
        record(&t, 200, "steady");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    t.shutdown().unwrap();
    let s = balanced(&t);
    assert_eq!(s.dropped.total(), 0, "{s:?}");
    assert_eq!(s.delivered + s.spooled, 40_000, "{s:?}");
    assert!(s.delivered > 0 && s.spooled > 0, "{s:?}");
    // The collector has every delivered span, and may have more: a request
    // the early send's 250 ms bound cut short is spilled whole though the
    // collector took it late (at-least-once; seen under a CPU hog).
    let received = server.span_ids().len() as u64;
    assert!(s.delivered <= received && received <= 40_000, "{received}: {s:?}");
}

#[test]
fn spooled_spans_past_the_age_cap_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let t = SpillwayTracer::new(Config {
        max_spool_age_ms: Some(200),
        ..common::spool_config(&common::refused_url(), dir.path())
    })
    .unwrap();
    record(&t, 40, "ages");
    assert_eq!(t.try_flush().unwrap_err().spilled, 40);
    let err = common::wait_for(
        "the spooled spans to expire",
        std::time::Duration::from_secs(10),
        || t.try_flush().err().filter(|e| e.expired > 0),
    );
    assert!(
        err.to_string().contains("40 dropped as older than max_spool_age_ms"),
        "{err}"
    );
    let s = balanced(&t);
    assert_eq!((s.dropped.spool_expired, s.spooled), (40, 0), "{s:?}");
}

#[test]
fn replay_stops_at_its_time_budget() {
    fn slow(_: &str) -> u16 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        202
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let dead = FaultServer::start(common::failures(500, common::ATTEMPTS));
        let t = tracer(&dead.url, dir.path());
        record(&t, 20 * spillway::spool::RECORD_MAX_SPANS, "slow");
        assert!(t.flush().is_err());
    }
    // A collector that takes 30 ms per request and a 50 ms replay budget:
    // a flush replays a few records (at least one), not all twenty.
    let server = FaultServer::start(vec![Answer::By(slow); 64]);
    let t = SpillwayTracer::new(Config {
        replay_budget_ms: 50,
        replay_budget_spans: 1_000_000,
        ..common::spool_config(&server.url, dir.path())
    })
    .unwrap();
    t.flush().unwrap();
    let s = balanced(&t);
    assert!(s.delivered > 0 && s.spooled > 0, "{s:?}");
    assert!(s.delivered <= 5 * spillway::spool::RECORD_MAX_SPANS as u64, "{s:?}");
}

#[test]
fn while_a_backlog_drains_each_flush_delivers_its_own_fresh_spans() {
    // A backlog of twelve replay ceilings: it drains over a dozen flushes
    // or more, and every one of them sends the spans recorded since the
    // one before it. Fresh spans never wait behind the backlog.
    let dir = tempfile::tempdir().unwrap();
    common::spool_backlog(dir.path(), 60_000, "old");
    let server = FaultServer::start(vec![]);
    let t = SpillwayTracer::new(Config {
        replay_budget_spans: 5_000,
        ..common::spool_config(&server.url, dir.path())
    })
    .unwrap();
    let (mut seen, mut spooled, mut draining) = (0, 60_000, 0);
    for flush in 0..40 {
        let fresh = format!("fresh-{flush}");
        record(&t, 300, &fresh);
        t.flush().unwrap();
        let requests = server.requests();
        let arrived = requests[seen..]
            .iter()
            .flat_map(|r| r.spans())
            .filter(|s| s["name"] == fresh.as_str())
            .count();
        seen = requests.len();
        let s = balanced(&t);
        assert_eq!(arrived, 300, "flush {flush} sent its own spans: {s:?}");
        assert!(s.spooled <= spooled, "the backlog never grows while draining: {s:?}");
        spooled = s.spooled;
        if spooled == 0 {
            break;
        }
        draining += 1;
    }
    let s = balanced(&t);
    assert_eq!((s.spooled, s.dropped.total()), (0, 0), "drained, nothing lost: {s:?}");
    assert!(
        draining >= 11,
        "fresh spans checked on every flush of the drain: {draining}"
    );
    assert_eq!(server.span_ids().len(), 60_000 + 300 * (draining + 1));
}

#[test]
fn a_collector_asking_for_a_wait_ends_the_flushs_replay() {
    // A backlog of eight records, then a collector that takes the first two
    // flushes' replay whole: the pace's window doubles to four records,
    // and the request window grows to three, so the second flush sends its
    // two records side by side. The third flush's first request is
    // answered 429 with a `Retry-After`: that request is sent again after
    // the wait, the three records under way settle, and the fourth its
    // window allowed waits for the next flush instead of pressing on
    // against a collector that sheds load.
    let dir = tempfile::tempdir().unwrap();
    let per = spillway::spool::RECORD_MAX_SPANS as u64;
    common::spool_backlog(dir.path(), 8 * per as usize, "backlog");
    let server = FaultServer::start(vec![]);
    let t = tracer(&server.url, dir.path());
    t.flush().unwrap();
    assert_eq!(
        balanced(&t).delivered,
        per,
        "the first flush replays its window, one record"
    );
    t.flush().unwrap();
    let second = balanced(&t).delivered;
    assert_eq!(second, 3 * per, "then two records, side by side");
    let before = server.requests().len();
    server.then(vec![Answer::Status(429, vec![("Retry-After", "0".to_owned())], "")]);
    t.flush().unwrap();
    let s = balanced(&t);
    assert_eq!(
        s.delivered - second,
        3 * per,
        "the three under way, then the replay waits: {s:?}"
    );
    // Two requests a record, and the refused one's retry.
    let requests = server.requests().len() - before;
    assert_eq!(requests, 7, "{s:?}");
    let (s, _) = flush_until_drained(&t, 18);
    assert_eq!((s.delivered, s.spooled), (8 * per, 0), "{s:?}");
    assert_eq!(server.span_ids().len(), 8 * per as usize);
}
