//! The `spillway` binary against real spools made by the tracer and the
//! real Zipkin server (started by scripts/test.sh): replay, replay killed
//! with `kill -9` and rerun, export, verify, purge, salvage, the in-use
//! refusal and the exit codes.

use crate::common;

use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanKind, SpanStart, SpanStatus, TracerPlugin};
use common::{FaultServer, Ids, ids_of, refused_url, spool_config, validator, zipkin_ids, zipkin_url};
use serde_json::Value as Json;
use spillway::SpillwayTracer;
use spillway::spool::{Spool, Tree};
use spillway::unstable::zipkin::hex;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

use common::spillway;

fn json(out: &Output) -> Json {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Records `n` bext-like spans as `service` while the collector is down, so
/// they all end in the spool; returns their (traceId, id) pairs.
fn spool_spans(dir: &Path, service: &str, n: usize) -> Ids {
    let tracer = SpillwayTracer::new(spillway::Config {
        service_name: service.to_owned(),
        ..spool_config(&refused_url(), dir)
    })
    .unwrap();
    for i in 0..n {
        let h = tracer.start_span(SpanStart {
            name: "GET /users/:id",
            kind: SpanKind::Server,
            attributes: vec![
                ("http.request.method".into(), "GET".into()),
                ("http.response.status_code".into(), AttrValue::I64(200)),
            ],
            ..Default::default()
        });
        if i % 7 == 0 {
            tracer.add_event(
                h,
                SpanEvent {
                    name: "exception",
                    attributes: vec![("exception.message".into(), "boom \"quoted\" ✓".into())],
                    time_unix_nanos: None,
                },
            );
            tracer.set_status(
                h,
                SpanStatus::Error {
                    description: "boom".into(),
                },
            );
        }
        tracer.end_span(h, None);
    }
    tracer.flush().expect_err("the collector is down");
    assert_eq!(tracer.stats().spooled, n as u64);
    drop(tracer);
    spooled_ids(dir)
}

/// The (traceId, id) pairs in the spool's queue, read through the library.
fn spooled_ids(dir: &Path) -> Ids {
    let spool = Spool::open(dir, u64::MAX).unwrap();
    spool
        .records(Tree::Queue)
        .flat_map(|e| e.unwrap().spans.unwrap())
        .map(|s| (hex(&s.trace_id), hex(&s.span_id)))
        .collect()
}

fn endpoint() -> String {
    format!("{}/api/v2/spans", zipkin_url())
}

#[test]
fn replay_after_an_outage_delivers_exactly_the_spooled_spans() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique("cli-replay");
    let spooled = spool_spans(dir.path(), &service, 2500);
    assert_eq!(spooled.len(), 2500);

    let out = spillway(dir.path(), &["replay", "--endpoint", &endpoint(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["delivered"], 2500, "{summary}");
    assert_eq!(summary["remaining"], 0, "{summary}");
    assert_eq!(summary["dead_lettered"], 0, "{summary}");
    assert!(
        summary["records"].as_u64().unwrap() >= 3,
        "records of at most 1,024 spans: {summary}"
    );

    assert_eq!(zipkin_ids(&service, 2500), spooled);
    let inspect = json(&spillway(dir.path(), &["inspect", "--json"]));
    assert_eq!(
        (inspect["spans"].as_u64(), inspect["records"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn replay_killed_mid_way_then_rerun_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique("cli-kill");
    let spooled = spool_spans(dir.path(), &service, 6000);
    let first_record = {
        let spool = Spool::open(dir.path(), u64::MAX).unwrap();
        let first = spool.records(Tree::Queue).next().unwrap().unwrap();
        first.spans.unwrap().len()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("--spool")
        .arg(dir.path())
        .args(["replay", "--endpoint", &endpoint(), "--rate", "1500"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it mid-way, with --rate holding the whole run to about four
    // seconds. Replay sends a record only after the previous one was
    // removed (synced), so once Zipkin holds more spans than the first
    // record, the spool has given at least that record up.
    let seen = zipkin_ids(&service, first_record + 1).len();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status:?}");
    assert!(seen < 6000, "killed mid-way ({seen} delivered)");

    let left = spooled_ids(dir.path());
    assert!(
        !left.is_empty() && left.len() < 6000,
        "some but not all replayed: {} left",
        left.len()
    );
    let out = spillway(dir.path(), &["replay", "--endpoint", &endpoint(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["remaining"], 0, "{summary}");
    // Acknowledgements are synced, so the rerun sends exactly what was
    // left: only the record in flight at the kill can be sent twice.
    assert_eq!(summary["delivered"].as_u64(), Some(left.len() as u64), "{summary}");
    assert_eq!(zipkin_ids(&service, 6000), spooled);
}

#[test]
fn export_is_valid_zipkin_json_that_zipkin_accepts_and_leaves_the_spool_alone() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique("cli-export");
    let spooled = spool_spans(dir.path(), &service, 1500);

    let out = spillway(dir.path(), &["export"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(validator().is_valid(&all), "export validates against zipkin2-api.yaml");
    let spans = all.as_array().unwrap();
    assert_eq!(ids_of(spans), spooled);
    assert!(
        spans
            .iter()
            .all(|s| s["localEndpoint"]["serviceName"] == service.as_str())
    );

    let file = dir.path().join("out.ndjson");
    let out = spillway(dir.path(), &["export", "--ndjson", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    let mut from_lines = Ids::new();
    for line in text.lines() {
        let batch: Json = serde_json::from_str(line).unwrap();
        assert!(validator().is_valid(&batch));
        from_lines.extend(ids_of(batch.as_array().unwrap()));
        let resp = ureq::post(&endpoint())
            .header("Content-Type", "application/json")
            .send(line)
            .unwrap();
        assert_eq!(resp.status(), 202, "Zipkin accepts an exported batch");
    }
    assert!(text.lines().count() >= 2, "one line per record");
    assert_eq!(from_lines, spooled);
    assert_eq!(zipkin_ids(&service, 1500), spooled);
    assert_eq!(spooled_ids(dir.path()), spooled, "export removes nothing");
}

/// Flips a byte in the raw log inside the queue's first record (as a disk
/// would); returns the record's key and the spans it holds.
fn damage_first_record(dir: &Path) -> (u64, usize) {
    let view = spillway::unstable::spool::view::View::read(dir).unwrap();
    let first = view.queue[0];
    let file = &view.scan.files[first.at.file];
    let mut bytes = std::fs::read(file).unwrap();
    // In a block, past the record's head (header and service name).
    bytes[first.at.offset as usize + first.at.len as usize / 2] ^= 0x40;
    std::fs::write(file, bytes).unwrap();
    (first.meta.seq, first.spans as usize)
}

#[test]
fn verify_names_damage_by_file_and_offset_and_replay_salvages_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique("cli-verify");
    let spooled = spool_spans(dir.path(), &service, 2100);
    let ok = spillway(dir.path(), &["verify"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    let (_key, damaged_spans) = damage_first_record(dir.path());
    let bad = spillway(dir.path(), &["verify", "--json"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    let report = json(&bad);
    assert_eq!(report["sound"], false, "{report}");
    let damage = report["damage"][0].clone();
    assert!(damage["file"].as_str().unwrap().ends_with("/db"), "{report}");
    assert!(damage["offset"].as_u64().is_some(), "{report}");
    let inspect = spillway(dir.path(), &["inspect"]);
    assert_eq!(inspect.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("damaged"));

    // Replay opens it: the damaged files are set aside, every sound record
    // salvaged back, and replayed.
    let out = spillway(dir.path(), &["replay", "--endpoint", &endpoint(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("set aside"), "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["remaining"], 0, "{summary}");
    // The damaged block is lost (at most 64 spans, never the whole record
    // unless it is one block), unless sled kept a second copy of it.
    let delivered = summary["delivered"].as_u64().unwrap() as usize;
    let block = damaged_spans.min(64);
    assert!((2100 - block..=2100).contains(&delivered), "{summary}");
    let at_zipkin = zipkin_ids(&service, delivered);
    assert_eq!(at_zipkin.len(), delivered);
    assert!(at_zipkin.is_subset(&spooled));
    let after = json(&spillway(dir.path(), &["inspect", "--json"]));
    assert_eq!(after["set_aside"].as_array().unwrap().len(), 1, "{after}");
    assert_eq!(after["damaged"], false, "{after}");
    let purged = spillway(dir.path(), &["purge", "--set-aside", "--yes"]);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert!(spillway::unstable::spool::dir::set_asides(dir.path()).is_empty());
}

#[test]
fn rejected_spans_become_dead_letters_that_replay_and_purge_can_handle() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique("cli-dead");
    let spooled = spool_spans(dir.path(), &service, 300);
    // A collector that refuses everything for good (a 400 on every span).
    let refusing = FaultServer::start(vec![common::Answer::Status(400, vec![], "bad span"); 2000]);
    let out = spillway(dir.path(), &["replay", "--endpoint", &refusing.url, "--json"]);
    // Delivering nothing because everything was refused is a failure, said so.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused every span") && stderr(&out).contains("HTTP 400"),
        "{}",
        stderr(&out)
    );
    assert!(
        refusing.requests().len() <= 16,
        "{} requests for 300 spans",
        refusing.requests().len()
    );
    let summary = json(&out);
    assert_eq!(
        (summary["dead_lettered"].as_u64(), summary["remaining"].as_u64()),
        (Some(300), Some(0))
    );
    let inspect = json(&spillway(dir.path(), &["inspect", "--json"]));
    assert_eq!(inspect["dead_letter_spans"], 300, "{inspect}");

    let dry = json(&spillway(
        dir.path(),
        &[
            "replay",
            "--dead-letters",
            "--dry-run",
            "--json",
            "--endpoint",
            &endpoint(),
        ],
    ));
    assert_eq!(dry["spans"], 300, "{dry}");
    let out = spillway(
        dir.path(),
        &["replay", "--dead-letters", "--endpoint", &endpoint(), "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["delivered"], 300);
    assert_eq!(zipkin_ids(&service, 300), spooled);

    let purge = spillway(dir.path(), &["purge", "--dead-letters", "--yes"]);
    assert!(purge.status.success());
    assert!(String::from_utf8_lossy(&purge.stdout).contains("purged dead letters: 0 spans"));
}

#[test]
fn salvage_recovers_what_was_owed_from_a_spool_sled_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let service = unique("cli-salvage");
    spool_spans(&spool, &service, 5000);
    // Deliver the first two records, so the files also hold settled ones.
    let out = spillway(
        &spool,
        &["replay", "--endpoint", &endpoint(), "--max-records", "2", "--json"],
    );
    let delivered = json(&out)["delivered"].as_u64().unwrap() as usize;
    let owed = spooled_ids(&spool);
    assert!(delivered > 0 && owed.len() == 5000 - delivered, "{delivered} delivered");

    // Damage sled's log header: sled refuses the directory.
    let db = spool.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..32].fill(0);
    std::fs::write(&db, bytes).unwrap();
    let inspect = spillway(&spool, &["inspect"]);
    assert_eq!(inspect.status.code(), Some(1), "sled cannot open it");

    let out = spillway(&spool, &["salvage", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["spans"], owed.len(), "{report}");
    assert_eq!(report["settled_records"], 2, "{report}");
    assert_eq!(spooled_ids(&spool), owed, "exactly what was owed, in a fresh spool");
    let aside = spillway::unstable::spool::dir::set_asides(&spool);
    assert_eq!(aside.len(), 1, "the damaged files are kept aside: {aside:?}");
    assert_eq!(report["set_aside"], aside[0].display().to_string(), "{report}");
    // Salvaging again brings nothing back twice.
    let again = spillway(&spool, &["salvage"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(spooled_ids(&spool), owed);
    let json_out = spillway(&spool, &["export"]);
    assert!(validator().is_valid(&json(&json_out)));
}

#[test]
fn every_command_refuses_a_spool_a_tracer_holds_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique("cli-inuse");
    let spooled = spool_spans(dir.path(), &service, 100);
    let holder = SpillwayTracer::new(spool_config(&refused_url(), dir.path())).unwrap();
    let name = dir.path().display().to_string();
    let ep = endpoint();
    let commands: [&[&str]; 7] = [
        &["inspect"],
        &["verify"],
        &["replay", "--endpoint", &ep],
        &["export"],
        &["purge", "--all", "--yes"],
        &["salvage"],
        &["salvage", &name],
    ];
    // One wording everywhere, naming the holder by pid and lock file.
    let said = format!(
        "spool {name} is in use by another process (pid {} holds {name}/spillway.lock)",
        std::process::id()
    );
    for args in commands {
        let out = spillway(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(&said), "{args:?}: {err}");
    }
    drop(holder);
    assert_eq!(spooled_ids(dir.path()), spooled, "nothing changed");
}

#[test]
fn usage_errors_exit_2_and_missing_spools_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    spool_spans(dir.path(), &unique("cli-usage"), 10);
    for args in [
        &["purge", "--all"][..],
        &["purge", "--yes"],
        &["replay"],
        &["inspect", "--bogus"],
    ] {
        let out = spillway(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(spooled_ids(dir.path()).len(), 10, "purge without --yes deleted nothing");
    let out = spillway(&dir.path().join("nope"), &["inspect"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no spool at"), "{}", stderr(&out));
    assert!(!dir.path().join("nope").exists(), "inspect creates nothing");
    // A bad configuration is a usage error: exit 2, naming the field.
    let out = spillway(dir.path(), &["replay", "--endpoint", "ftp://example"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("endpoint"), "{}", stderr(&out));
    // So is a --spool that names a file: exit 2, and the file untouched.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"mine").unwrap();
    for args in [
        &["inspect"][..],
        &["generate", "--spans", "1"],
        &["purge", "--all", "--yes"],
    ] {
        let out = spillway(&file, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
}

/// Sends `sig` to `child` (by the `kill` command: no unsafe here).
fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[test]
fn replay_stops_cleanly_on_sigint_and_says_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let service = unique("cli-sigint");
    let spooled = spool_spans(dir.path(), &service, 6000);
    let first_record = {
        let spool = Spool::open(dir.path(), u64::MAX).unwrap();
        spool.records(Tree::Queue).next().unwrap().unwrap().spans.unwrap().len()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("--spool")
        .arg(dir.path())
        .args(["replay", "--json", "--endpoint", &endpoint(), "--rate", "1500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    zipkin_ids(&service, first_record + 1);
    signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    let summary = json(&out);
    let left = spooled_ids(dir.path());
    assert!(!left.is_empty() && left.len() < 6000, "stopped mid-way: {summary}");
    assert_eq!(summary["remaining"].as_u64(), Some(left.len() as u64), "{summary}");
    // Nothing lost: what left the spool is at Zipkin.
    let at_zipkin = zipkin_ids(&service, 6000 - left.len());
    assert_eq!(at_zipkin.union(&left).count(), spooled.len());
}

#[test]
fn generate_spills_and_reports_on_sigint_and_sigterm() {
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .arg("--spool")
            .arg(dir.path())
            .args(["generate", "--json", "--duration", "60s", "--rate", "20000"])
            .args(["--endpoint", &refused_url()])
            .env_remove("OTEL_EXPORTER_ZIPKIN_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // At work once its first flush has spilled (the ledger is written).
        let ledger = dir.path().join(spillway::unstable::spool::ledger::FILE);
        common::wait_for("a first spill", Duration::from_secs(20), || {
            (std::fs::metadata(&ledger).is_ok_and(|m| m.len() > 0)).then_some(())
        });
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{sig}: {}", stderr(&out));
        let s = json(&out);
        let (recorded, spooled) = (s["recorded"].as_u64().unwrap(), s["spooled"].as_u64().unwrap());
        assert!(recorded > 0, "{s}");
        assert_eq!(s["pending"], 0, "{sig}: everything in memory was spilled: {s}");
        assert_eq!(spooled, recorded, "{sig}: {s}");
        let on_disk = Spool::open(dir.path(), u64::MAX).unwrap().stats().spans;
        assert_eq!(on_disk, spooled, "{sig}");
    }
}

#[test]
fn generate_against_a_collector_that_never_answers_exits_1_with_every_span_durable() {
    // Each request times out (500 ms); the flushes run out of time or open
    // the circuit, and the spans go to the spool.
    let server = FaultServer::start(vec![common::Answer::Hang; 64]);
    let dir = tempfile::tempdir().unwrap();
    let out = common::spillway_with(
        dir.path(),
        &[("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "500")],
        &["generate", "--json", "--spans", "2000", "--endpoint", &server.url],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let s = json(&out);
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!((n("recorded"), n("delivered"), n("dropped")), (2000, 0, 0), "{s}");
    // The report separates what is durable from what is on its way.
    assert_eq!(n("pending") + n("spooled"), 2000, "{s}");
    assert!(stderr(&out).contains("took none of the 2000 spans"), "{}", stderr(&out));
    // Once the process has ended, every span is on disk.
    let on_disk = Spool::open(dir.path(), u64::MAX).unwrap().stats().spans;
    assert_eq!(on_disk, 2000);
}
