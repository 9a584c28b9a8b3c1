//! How old the backlog is and when it will be gone: `Stats` reports the
//! age of the oldest spooled record by when it was spilled (not by span
//! timestamps) and the replay rate last measured, which the spool keeps
//! across restarts; `spillway inspect` shows both for a spool at rest with
//! the time to drain, and the OpenMetrics rendering carries them. Replays
//! go to the real Zipkin (started by scripts/test.sh).

use crate::common;

use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use common::{refused_url, spool_config, zipkin_url};
use serde_json::Value as Json;
use spillway::SpillwayTracer;
use spillway::clock::{Clock, ManualClock, SystemClock};
use std::path::Path;
use std::sync::Arc;

const HOUR_NS: u64 = 3_600_000_000_000;

fn tracer(url: &str, dir: &Path, clock: &Arc<ManualClock>) -> SpillwayTracer {
    let mut config = spool_config(url, dir);
    config.replay_budget_spans = 100;
    config.max_batch_spans = 100;
    SpillwayTracer::builder()
        .config(config)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Records `n` spans whose own timestamps claim to be a day old (a site
/// with a wrong clock): the backlog's age must not read them.
fn record_stale(t: &SpillwayTracer, clock: &ManualClock, n: usize) {
    let day_ago = clock.now_unix_nanos() - 24 * HOUR_NS;
    for _ in 0..n {
        let h = t.start_span(SpanStart {
            name: "stale",
            start_time_unix_nanos: Some(day_ago),
            ..Default::default()
        });
        t.end_span(h, Some(day_ago + 1_000));
    }
}

#[test]
fn stats_give_the_backlogs_age_by_spill_time_and_the_replay_rate_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = SystemClock.now_unix_nanos();
    let clock = Arc::new(ManualClock::new(t0));
    {
        let t = tracer(&refused_url(), dir.path(), &clock);
        assert_eq!(t.stats().oldest_spooled_age_ms, None, "nothing spooled yet");
        record_stale(&t, &clock, 100);
        assert!(t.try_flush().is_err());
        clock.advance(30_000_000_000);
        for _ in 0..4 {
            record_stale(&t, &clock, 100);
            assert!(t.try_flush().is_err());
        }
        clock.advance(60_000_000_000);
        let s = t.stats();
        assert_eq!(s.spooled, 500);
        assert_eq!(
            s.oldest_spooled_age_ms,
            Some(90_000),
            "spilled 90 s ago, whatever the spans say"
        );
        assert_eq!(s.replay_spans_per_s, None, "no replay yet");
        let metrics = t.openmetrics();
        for line in [
            "spillway_exporter_queue_size_spans{store=\"spool\"} 500",
            "spillway_exporter_queue_oldest_age_seconds 90.0",
            "spillway_exporter_queue_capacity_bytes 536870912",
        ] {
            assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
        }
    }
    // The collector is back: a budget of 100 spans per flush sends the
    // oldest record first; the age moves on to the next one.
    {
        let t = tracer(&format!("{}/api/v2/spans", zipkin_url()), dir.path(), &clock);
        assert_eq!(
            t.stats().oldest_spooled_age_ms,
            Some(90_000),
            "the age survives a restart"
        );
        for _ in 0..3 {
            t.try_flush().unwrap();
        }
        let s = t.stats();
        assert_eq!(s.spooled, 200, "{s:?}");
        assert_eq!(
            s.oldest_spooled_age_ms,
            Some(60_000),
            "the next record was spilled 60 s ago"
        );
        assert!(s.replay_spans_per_s.is_some_and(|r| r > 0), "{s:?}");
    }
    let t = tracer(&refused_url(), dir.path(), &clock);
    let s = t.stats();
    assert!(
        s.replay_spans_per_s.is_some_and(|r| r > 0),
        "the rate is kept in the spool: {s:?}"
    );
}

use common::spillway;

fn inspect_json(dir: &Path, extra: &[&str]) -> Json {
    let mut args = vec!["inspect", "--json"];
    args.extend_from_slice(extra);
    let out = spillway(dir, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_shows_the_age_the_measured_rate_and_the_time_to_drain() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = SpillwayTracer::new(spool_config(&refused_url(), dir.path())).unwrap();
        for _ in 0..10 {
            common::record(&t, 200, "backlog");
            assert!(t.try_flush().is_err());
        }
    }
    let before = inspect_json(dir.path(), &[]);
    assert_eq!(before["spans"], 2000);
    assert!(before["oldest_age_ms"].as_u64().is_some());
    assert_eq!(before["replay_spans_per_s"], Json::Null);
    assert_eq!(before["drain_eta_s"], Json::Null);
    let text = String::from_utf8(spillway(dir.path(), &["inspect"]).stdout).unwrap();
    assert!(text.contains("replay rate  not measured yet"), "{text}");
    assert!(text.contains("give --rate"), "{text}");
    let given = inspect_json(dir.path(), &["--rate", "100"]);
    assert_eq!(given["drain_rate"], "given");
    assert_eq!(given["drain_eta_s"], 20.0);

    // Three records replayed: the rate is measured and kept.
    let endpoint = format!("{}/api/v2/spans", zipkin_url());
    let out = spillway(dir.path(), &["replay", "--endpoint", &endpoint, "--max-batches", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = inspect_json(dir.path(), &[]);
    assert_eq!(after["spans"], 1400);
    let rate = after["replay_spans_per_s"].as_u64().expect("a measured rate");
    assert!(rate > 0);
    assert_eq!(after["drain_rate"], "measured");
    let eta = after["drain_eta_s"].as_f64().unwrap();
    assert!((eta - 1400.0 / rate as f64).abs() < 1e-9, "{eta} for {rate} spans/s");
    assert!(after["replay_measured_unix_ms"].as_u64().is_some());
    let text = String::from_utf8(spillway(dir.path(), &["inspect"]).stdout).unwrap();
    assert!(
        text.contains(&format!("replay rate  {rate} spans/s, measured")),
        "{text}"
    );
    assert!(text.contains(&format!("at {rate} spans/s (measured)")), "{text}");

    let out = spillway(dir.path(), &["inspect", "--openmetrics"]);
    assert!(out.status.success());
    let metrics = String::from_utf8(out.stdout).unwrap();
    for line in [
        "spillway_exporter_queue_size_spans{store=\"spool\"} 1400".to_owned(),
        format!("spillway_exporter_replay_rate_spans_per_second {rate}"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("spillway_exporter_queue_oldest_age_seconds "));
    assert!(!metrics.contains("_total"), "no process counters for a spool at rest");
    assert!(metrics.ends_with("# EOF\n"));
}

/// The bytes a record's requests may put on the wire at most in these
/// tests: 512 spans of `common::record`'s JSON, with room to spare.
const ONE_RECORD: u64 = 256 << 10;

#[test]
fn replay_puts_no_more_bytes_on_the_wire_than_its_cap_and_still_drains() {
    const CAP: u64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    common::spool_backlog(dir.path(), 10_240, "GET /metered");
    let sink = common::FaultServer::sink();
    let t = SpillwayTracer::new(spillway::Config {
        gzip: false, // the sink counts spans in plain JSON
        replay_max_bytes_per_s: Some(CAP),
        ..spool_config(&sink.url, dir.path())
    })
    .unwrap();
    let began = std::time::Instant::now();
    // Flushes far more often than bext's timer, so the cap is the limit.
    for _ in 0..3_000 {
        let _ = t.flush();
        // The elapsed time is read after the bytes: the bound only loosens.
        let bytes = sink.bytes_received.load(std::sync::atomic::Ordering::Relaxed);
        let secs = began.elapsed().as_secs_f64();
        let bound = CAP as f64 * (secs + 1.0) + ONE_RECORD as f64;
        assert!(
            bytes as f64 <= bound,
            "{bytes} bytes in {secs:.2} s: over the cap of {CAP} a second"
        );
        let s = t.stats();
        if s.spooled == 0 && s.in_memory == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let s = t.stats();
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!(s.delivered, 10_240, "the capped backlog drained: {s:?}");
    assert_eq!(sink.spans_received.load(std::sync::atomic::Ordering::Relaxed), 10_240);
    eprintln!(
        "capped replay: {} bytes in {:.1} s ({:.0} bytes/s, cap {CAP})",
        sink.bytes_received.load(std::sync::atomic::Ordering::Relaxed),
        began.elapsed().as_secs_f64(),
        sink.bytes_received.load(std::sync::atomic::Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
    );
}

#[test]
fn the_replay_command_keeps_to_max_bytes_per_s() {
    const CAP: u64 = 128 << 10;
    let dir = tempfile::tempdir().unwrap();
    common::spool_backlog(dir.path(), 4_096, "GET /metered");
    let sink = common::FaultServer::sink();
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), r#"{"gzip": false}"#).unwrap();
    let began = std::time::Instant::now();
    let out = spillway(
        dir.path(),
        &[
            "replay",
            "--json",
            "--endpoint",
            &sink.url,
            "--config",
            conf.path().to_str().unwrap(),
            "--max-bytes-per-s",
            &CAP.to_string(),
        ],
    );
    let secs = began.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["delivered"], 4_096, "{summary}");
    assert_eq!(summary["remaining"], 0, "{summary}");
    let bytes = sink.bytes_received.load(std::sync::atomic::Ordering::Relaxed);
    // The command waits after each record for the tracer's byte allowance:
    // at most the cap a second, plus the second's worth it starts with and
    // one record's overdraft.
    assert!(
        bytes as f64 <= CAP as f64 * (secs + 1.0) + ONE_RECORD as f64,
        "{bytes} bytes in {secs:.2} s: over the cap of {CAP} a second"
    );
    assert!(bytes > 2 * CAP, "the test sends enough to be capped: {bytes}");

    // A cap below 1 KiB/s is refused, naming the option.
    let out = spillway(
        dir.path(),
        &["replay", "--endpoint", &sink.url, "--max-bytes-per-s", "10"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-bytes-per-s"));
}
