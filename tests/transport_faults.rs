//! The failure matrix for the HTTP path, against a server on 127.0.0.1 that
//! answers as each test scripts it: retryable faults keep the spans, 400
//! and 413 are bisected, other 4xx are dropped and counted, and no fault
//! makes a flush hang past the configured timeout or panic.

use crate::common;

use bext_plugin_api::tracer::TracerPlugin;
use common::{Answer, FaultServer, record};
use spillway::transport::{Class, SendError};
use spillway::{Config, SpillwayTracer};
use std::time::{Duration, Instant};

fn tracer(url: &str, tweak: impl FnOnce(&mut Config)) -> SpillwayTracer {
    // No backoff here: these tests retry at once on purpose; backoff has its own tests.
    let mut cfg = Config {
        endpoint: url.to_owned(),
        timeout_ms: 1_000,
        connect_timeout_ms: 500,
        backoff_initial_ms: 0,
        backoff_max_ms: 0,
        ..Config::default()
    };
    tweak(&mut cfg);
    SpillwayTracer::new(cfg).unwrap()
}

fn flush_err(t: &SpillwayTracer) -> Box<spillway::FlushError> {
    t.try_flush().expect_err("flush should fail")
}

#[test]
fn retryable_statuses_keep_spans_until_the_collector_answers() {
    for (status, headers) in [
        (500, vec![]),
        (503, vec![("Retry-After", "1".to_owned())]),
        (429, vec![]),
        (408, vec![]),
    ] {
        // Failing through the request's retries, so the flush keeps them.
        let server = FaultServer::start(vec![Answer::Status(status, headers.clone(), "busy"); common::ATTEMPTS]);
        let t = tracer(&server.url, |_| {});
        record(&t, 10, "x");
        let err = flush_err(&t);
        assert_eq!(err.kept_in_memory, 10, "{err}");
        let cause = err.cause().cloned().unwrap();
        assert_eq!(cause.class(), Class::Retry);
        assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
        if status == 503 {
            assert_eq!(cause.retry_after(), Some(Duration::from_secs(1)));
        }
        let s = t.stats();
        assert_eq!((s.in_memory, s.delivered), (10, 0));
        assert!(s.is_balanced());
        // The collector recovers: new spans and the kept ones are delivered
        // once the backoff (here only Retry-After) has passed.
        record(&t, 5, "y");
        common::wait_for(
            "the backoff to pass and the flush to succeed",
            Duration::from_secs(10),
            || t.flush().ok(),
        );
        let s = t.stats();
        assert_eq!((s.delivered, s.in_memory), (15, 0), "{s:?}");
        assert_eq!(server.span_ids().len(), 15);
        assert!(s.is_balanced());
    }
}

#[test]
fn connection_refused_is_reported_and_kept() {
    let url = common::refused_url();
    let t = tracer(&url, |_| {});
    record(&t, 3, "x");
    let err = flush_err(&t);
    assert!(matches!(err.cause(), Some(SendError::Unreachable(_))), "{err:?}");
    let msg = t.flush().unwrap_err();
    assert!(msg.contains(&url) && msg.contains("3 kept in memory"), "{msg}");
}

#[test]
fn reset_and_garbage_are_retryable_and_do_not_panic() {
    // The first flush's request is reset through its retries (the circuit
    // opens); the second flush's probe gets garbage; then the collector is back.
    let mut script = vec![Answer::Reset; common::ATTEMPTS];
    script.push(Answer::Garbage);
    let server = FaultServer::start(script);
    let t = tracer(&server.url, |_| {});
    record(&t, 4, "x");
    for _ in 0..2 {
        let err = flush_err(&t);
        assert_eq!(err.cause().map(SendError::class), Some(Class::Retry), "{err}");
        assert_eq!(err.kept_in_memory, 4);
    }
    t.flush().unwrap();
    assert_eq!(t.stats().delivered, 4);
}

#[test]
fn a_token_in_the_endpoints_query_is_never_printed() {
    let url = format!("{}?api_key=MARKER-s3cr3t&region=eu", common::refused_url());
    let t = tracer(&url, |_| {});
    record(&t, 3, "x");
    let err = t.flush().unwrap_err();
    assert!(err.contains("api_key=***") && err.contains("region=eu"), "{err}");
    assert!(!err.contains("MARKER"), "{err}");
}

#[test]
fn a_request_that_fails_is_retried_within_the_flush() {
    // A 503, a reset and a 429 asking for no wait, then 202: one flush
    // delivers everything, and nothing is reported as a failure.
    let server = FaultServer::start(vec![
        Answer::Status(503, vec![], ""),
        Answer::Reset,
        Answer::Status(429, vec![("Retry-After", "0".to_owned())], ""),
    ]);
    let t = tracer(&server.url, |_| {});
    record(&t, 10, "x");
    t.flush().unwrap();
    let s = t.stats();
    assert_eq!((s.delivered, s.in_memory, s.failed_requests), (10, 0, 3), "{s:?}");
    assert_eq!(server.span_ids().len(), 10);
}

#[test]
fn a_hanging_collector_costs_a_timeout_per_attempt() {
    let server = FaultServer::start(vec![Answer::Hang; common::ATTEMPTS]);
    let t = tracer(&server.url, |c| {
        c.timeout_ms = 300;
        c.connect_timeout_ms = 100;
    });
    record(&t, 2_000, "x");
    let began = Instant::now();
    let err = flush_err(&t);
    let took = began.elapsed();
    assert!(matches!(err.cause(), Some(SendError::Timeout(_))), "{err:?}");
    // Bounded by a timeout per attempt (plus scheduling slack), not by the
    // number of requests the batch would need: the circuit opens.
    assert!(took < Duration::from_secs(5), "flush took {took:?}");
    assert_eq!(err.kept_in_memory, 2_000);
}

#[test]
fn bad_request_bisects_so_only_the_refused_span_is_dropped() {
    fn refuse_poison(body: &str) -> u16 {
        if body.contains("poison") { 400 } else { 202 }
    }
    let server = FaultServer::start(vec![Answer::By(refuse_poison); 64]);
    let t = tracer(&server.url, |_| {});
    record(&t, 20, "fine");
    record(&t, 1, "poison");
    record(&t, 20, "fine");
    let err = flush_err(&t);
    assert_eq!((err.refused, err.delivered, err.kept_in_memory), (1, 40, 0), "{err}");
    let s = t.stats();
    assert_eq!((s.delivered, s.dropped.rejected, s.in_memory), (40, 1, 0));
    assert!(s.is_balanced());
    assert_eq!(server.span_ids().len(), 41, "the poison span was sent alone once");
}

#[test]
fn payload_too_large_splits_until_it_fits() {
    fn small_only(body: &str) -> u16 {
        if body.len() > 3_000 { 413 } else { 202 }
    }
    let server = FaultServer::start(vec![Answer::By(small_only); 256]);
    let t = tracer(&server.url, |_| {});
    record(&t, 100, "x");
    t.flush().unwrap();
    let s = t.stats();
    assert_eq!((s.delivered, s.dropped.total()), (100, 0), "{s:?}");
    assert!(server.requests().iter().filter(|r| r.json.len() <= 3_000).count() >= 4);
}

#[test]
fn other_client_errors_drop_and_count() {
    let server = FaultServer::start(vec![Answer::Status(422, vec![], "unprocessable"); 16]);
    let t = tracer(&server.url, |_| {});
    record(&t, 7, "x");
    let err = flush_err(&t);
    assert_eq!(err.refused, 7);
    assert!(
        err.to_string().contains("HTTP 422 Unprocessable Entity: unprocessable"),
        "{err}"
    );
    let s = t.stats();
    assert_eq!((s.dropped.rejected, s.in_memory), (7, 0));
    assert!(s.is_balanced());
}

#[test]
fn a_wrong_endpoint_or_credentials_keep_the_spans_and_say_what_to_check() {
    for (status, hint) in [
        (404, "check the endpoint"),
        (401, "check the credentials"),
        (403, "check the credentials"),
    ] {
        let server = FaultServer::start(vec![Answer::Status(status, vec![], "nope"); 3]);
        let t = tracer(&server.url, |_| {});
        record(&t, 7, "x");
        let err = flush_err(&t);
        let msg = err.to_string();
        assert!(err.misconfigured(), "{msg}");
        assert!(
            msg.contains("collector refuses every request") && msg.contains(hint),
            "{msg}"
        );
        assert_eq!((err.refused, err.kept_in_memory), (0, 7), "{msg}");
        assert_eq!(server.requests().len(), 1, "one request, no bisection: {msg}");
        let s = t.stats();
        assert_eq!((s.dropped.total(), s.in_memory), (0, 7));
        assert!(s.is_balanced());
        // Fixed (the server accepts again): the backlog flows by itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.flush().is_err() {
            assert!(Instant::now() < deadline, "{:?}", t.stats());
        }
        assert_eq!(t.stats().delivered, 7);
        assert_eq!(server.span_ids().len(), 7);
    }
}

#[test]
fn requests_respect_span_and_byte_limits() {
    let server = FaultServer::start(vec![]);
    let t = tracer(&server.url, |c| {
        c.max_batch_spans = 10;
        c.max_request_bytes = 4096;
    });
    record(&t, 95, "x");
    let big = "y".repeat(3_000);
    record(&t, 3, &big);
    t.flush().unwrap();
    let reqs = server.requests();
    assert!(reqs.iter().all(|r| r.spans().len() <= 10 && r.json.len() <= 4096));
    assert_eq!(server.span_ids().len(), 98);
}

#[test]
fn a_span_larger_than_a_request_is_dropped_as_oversize() {
    let server = FaultServer::start(vec![]);
    let t = tracer(&server.url, |c| c.max_request_bytes = 2048);
    record(&t, 1, &"z".repeat(5_000));
    record(&t, 2, "ok");
    let err = flush_err(&t);
    assert_eq!((err.oversize, err.delivered), (1, 2), "{err}");
    assert!(err.to_string().contains("larger than max_request_bytes"));
    assert_eq!(t.stats().dropped.oversize, 1);
}

#[test]
fn retry_buffer_is_bounded_and_counts_the_oldest_it_drops() {
    let server = FaultServer::start(common::failures(503, 3 * common::ATTEMPTS));
    let t = tracer(&server.url, |c| c.max_retry_spans = 25);
    for _ in 0..3 {
        record(&t, 10, "x");
        let _ = flush_err(&t);
    }
    let s = t.stats();
    assert_eq!((s.in_memory, s.dropped.retry_full), (25, 5), "{s:?}");
    assert!(s.is_balanced());
}

#[test]
fn gzip_headers_and_plain_mode() {
    let server = FaultServer::start(vec![]);
    let t = tracer(&server.url, |c| {
        c.headers.insert("Authorization".into(), "Bearer t0k".into());
    });
    record(&t, 3, "x");
    t.flush().unwrap();
    let plain = tracer(&server.url, |c| c.gzip = false);
    record(&plain, 2, "y");
    plain.flush().unwrap();
    let reqs = server.requests();
    assert_eq!(reqs[0].header("content-encoding"), Some("gzip"));
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert_eq!(reqs[0].header("authorization"), Some("Bearer t0k"));
    assert_eq!(reqs[0].spans().len(), 3);
    assert_eq!(reqs[1].header("content-encoding"), None);
    assert_eq!(reqs[1].spans().len(), 2);
}

#[test]
fn bad_endpoints_are_refused_at_build_time() {
    for url in [
        "",
        "localhost:9411",
        "ftp://127.0.0.1/x",
        "http://",
        "http://user:pw@127.0.0.1:9411/api/v2/spans",
    ] {
        let err = SpillwayTracer::new(Config {
            endpoint: url.into(),
            ..Config::default()
        })
        .err()
        .expect(url);
        assert!(err.to_string().contains("endpoint"), "{url}: {err}");
    }
}

#[test]
fn backoff_keeps_flushes_off_the_network_and_honours_retry_after() {
    let server = FaultServer::start(vec![Answer::Status(503, vec![("Retry-After", "60".to_owned())], "")]);
    let t = tracer(&server.url, |c| {
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 120_000;
    });
    record(&t, 5, "x");
    let first = flush_err(&t);
    let wait = first.next_attempt_in.expect("backing off");
    assert!(
        wait >= Duration::from_secs(59),
        "Retry-After 60 beats a 10 ms backoff: {wait:?}"
    );
    assert!(first.to_string().contains("next attempt in"), "{first}");
    record(&t, 3, "y");
    let second = flush_err(&t);
    assert!(second.next_attempt_in.is_some());
    assert_eq!(second.cause(), None, "no request was made: {second}");
    assert_eq!(server.requests().len(), 1);
    assert_eq!(second.kept_in_memory, 8);
    assert!(t.stats().is_balanced());
    // Up to the longest wait the operator allows, not the collector's.
    let server = FaultServer::start(vec![Answer::Status(503, vec![("Retry-After", "3600".to_owned())], "")]);
    let t = tracer(&server.url, |c| {
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 20;
    });
    record(&t, 5, "x");
    let wait = flush_err(&t).next_attempt_in.expect("backing off");
    assert!(wait <= Duration::from_millis(20), "capped by backoff_max_ms: {wait:?}");
}

#[test]
fn backoff_grows_with_full_jitter_within_its_cap() {
    let t = tracer(&common::refused_url(), |c| {
        c.backoff_initial_ms = 1;
        c.backoff_max_ms = 4;
    });
    let mut waits = Vec::new();
    for _ in 0..40 {
        record(&t, 1, "x");
        let deadline = Instant::now() + Duration::from_secs(5);
        // Wait out the (at most 4 ms) backoff so each flush reaches the network.
        let err = loop {
            let err = flush_err(&t);
            if err.cause().is_some() || Instant::now() > deadline {
                break err;
            }
            std::thread::yield_now();
        };
        waits.push(err.next_attempt_in.unwrap_or_default());
    }
    assert!(waits.iter().all(|w| *w <= Duration::from_millis(4)), "{waits:?}");
    let distinct: std::collections::BTreeSet<_> = waits.iter().map(|w| w.as_micros()).collect();
    assert!(distinct.len() > 10, "jittered: {waits:?}");
    assert_eq!(t.stats().in_memory, 40);
}
