//! A real outage: the collector is a real Zipkin server this test starts on
//! a port of its own, so stopping it disturbs no other test. Spans are
//! recorded and flushed while it is down, then it comes up: every span
//! arrives, nothing is lost, and the spool ends empty.

use crate::common;

use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use common::{get_json, wait_for};
use spillway::{Config, SpillwayTracer};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Zipkin server process, killed on drop.
struct Zipkin(Child);

impl Zipkin {
    fn start(port: u16) -> Zipkin {
        let jar = std::env::var("SPILLWAY_ZIPKIN_JAR")
            .unwrap_or_else(|_| panic!("SPILLWAY_ZIPKIN_JAR is not set: run the suite with scripts/test.sh"));
        let child = Command::new("java")
            .args(["-Xms128m", "-Xmx512m", "-jar", &jar])
            .arg(format!("--armeria.ports[0].port={port}"))
            .arg("--armeria.ports[0].address=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("java starts");
        let health = format!("http://127.0.0.1:{port}/health");
        wait_for("Zipkin to become healthy", Duration::from_secs(120), || {
            ureq::get(&health).call().ok()
        });
        Zipkin(child)
    }
}

impl Drop for Zipkin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_outage_loses_nothing_and_the_spool_drains_when_zipkin_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let service = format!("outage-{:08x}", fastrand::u32(..));
    let dir = tempfile::tempdir().unwrap();
    let t = SpillwayTracer::new(Config {
        service_name: service.clone(),
        endpoint: format!("{base}/api/v2/spans"),
        spool_dir: Some(dir.path().to_path_buf()),
        backoff_initial_ms: 10,
        backoff_max_ms: 50,
        replay_budget_spans: 700,
        ..Config::default()
    })
    .unwrap();

    // Down: every flush fails and spills.
    let mut ids = BTreeSet::new();
    for round in 0..10 {
        for _ in 0..200 {
            let h = t.start_span(SpanStart {
                name: "during-outage",
                ..Default::default()
            });
            ids.insert(spillway::unstable::zipkin::hex(&h.span_id));
            t.end_span(h, None);
        }
        let err = t.flush().expect_err("Zipkin is down");
        assert!(err.contains("spool holds"), "round {round}: {err}");
    }
    let s = t.stats();
    assert_eq!((s.spooled, s.delivered), (2_000, 0), "{s:?}");
    assert!(s.is_balanced());

    // Up again: later flushes drain the spool, a budget at a time.
    let _zipkin = Zipkin::start(port);
    let drained = wait_for("the spool to drain", Duration::from_secs(60), || {
        let _ = t.flush();
        let s = t.stats();
        (s.spooled == 0 && s.in_memory == 0).then_some(s)
    });
    assert_eq!(drained.delivered, 2_000, "{drained:?}");
    assert!(drained.is_balanced());

    let url = format!("{base}/api/v2/traces?serviceName={service}&limit=5000&lookback=3600000");
    let stored = wait_for("Zipkin to hold every span", Duration::from_secs(30), || {
        let stored: BTreeSet<String> = get_json(&url)
            .as_array()?
            .iter()
            .flat_map(|trace| trace.as_array().cloned().unwrap_or_default())
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect();
        (stored.len() >= ids.len()).then_some(stored)
    });
    assert_eq!(stored, ids, "exactly the spans recorded during the outage");
}
