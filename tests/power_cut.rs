//! Power cuts, for real: a spool on a loop-mounted XFS or ext4 image made
//! in the test's temporary directory, a child process writing to it, and
//! the filesystem shut down under the child without flushing its log
//! (`xfs_io -x -c shutdown`, the `FS_IOC_GOINGDOWN` ioctl with
//! `NOLOGFLUSH`, on both filesystems): what had not reached the image by
//! then is gone, as in a power cut. The child is then killed, the image
//! unmounted and mounted again (log recovery runs), and what the child had
//! been told was durable is checked, by span id.
//!
//! Needs root and Debian's `xfsprogs` and `e2fsprogs` (`.ci/run` installs
//! them); without them every test here fails, it does not skip. Each mount
//! is undone when the test ends, also when it fails. `POWER_CUTS` sets how
//! many cuts each test makes in all (default: enough for 24 in the file).

use crate::common;

use common::child::{self, Reporter};
use common::fs::{Fs, sh};

use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use spillway::clock::SystemClock;
use spillway::spool::{Spool, Tree};
use spillway::unstable::export::Exporter;
use spillway::unstable::export::books::Books;
use spillway::unstable::export::disk::Disk;
use spillway::unstable::span::Span;
use spillway::{Config, SpillwayTracer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SPILLWAY_POWER_CHILD";

/// Cuts each test makes, from `POWER_CUTS` (the total over the file's
/// tests) or `default`.
fn cuts(default: usize) -> usize {
    std::env::var("POWER_CUTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(default, |total| total.div_ceil(TESTS).max(1))
}

/// The tests in this file that cut power (for sharing `POWER_CUTS`).
const TESTS: usize = 6;

/// A span's identity: its trace id and span id, in hex (span ids alone
/// are unique only within a trace).
fn id_of(trace_id: &[u8], span_id: &[u8]) -> String {
    format!(
        "{}:{}",
        spillway::unstable::zipkin::hex(trace_id),
        spillway::unstable::zipkin::hex(span_id)
    )
}

fn span_key(s: &Span) -> String {
    id_of(&s.trace_id, &s.span_id)
}

fn child_args() -> Option<Vec<String>> {
    child::args(CHILD_ENV)
}

/// A tracer spilling to `dir` (the collector is dead) with a flush budget
/// that leaves every spill time to become durable before it is reported.
fn spilling_tracer(dir: &Path, max_spool_bytes: u64) -> SpillwayTracer {
    SpillwayTracer::new(Config {
        flush_timeout_ms: 60_000,
        max_spool_bytes,
        ..common::spool_config(&common::refused_url(), dir)
    })
    .unwrap()
}

/// The child of the spilling tests: records batches of varied size and
/// flushes each; prints the ids of every batch a flush reported spilled
/// (durably: nothing still being written), then goes on.
#[test]
#[ignore = "run by the power-cut tests as their child process"]
fn spill_child() {
    let Some(args) = child_args() else { return };
    let t = spilling_tracer(Path::new(&args[0]), args[1].parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0..100_000u64 {
        if Instant::now() > deadline {
            break;
        }
        let n = 1 + (round * 37 % 300) as usize;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let h = t.start_span(SpanStart {
                name: "GET /cut",
                ..Default::default()
            });
            t.set_attribute(h, "url.path", format!("/cut/{round}").into());
            t.end_span(h, None);
            ids.push(id_of(&h.trace_id, &h.span_id));
        }
        match t.try_flush() {
            Err(e) if e.spilled == n && e.spilling == 0 => child::say(&format!("SPILLED {}", ids.join(" "))),
            _ => child::say("NOTHING"),
        }
    }
}

/// Every span id the spool in `dir` holds, by part, after checking that it
/// opens without finding damage and that every record is sound.
fn spool_ids(dir: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut spool = Spool::open(dir, u64::MAX).expect("the spool opens after the cut");
    assert_eq!(spool.take_damage(), None, "the ledger claims no more than is on disk");
    let mut parts = [BTreeSet::new(), BTreeSet::new()];
    for (i, part) in [Tree::Queue, Tree::Dead].into_iter().enumerate() {
        for entry in spool.records(part) {
            let entry = entry.unwrap();
            let spans = entry
                .spans
                .as_ref()
                .unwrap_or_else(|e| panic!("record {} is corrupt after the cut: {e}", entry.key));
            parts[i].extend(spans.iter().map(span_key));
        }
    }
    assert_eq!(spool.stats().quarantined_records, 0);
    let [queue, dead] = parts;
    (queue, dead)
}

fn reported(lines: &[String], tag: &str) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(tag))
        .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
        .collect()
}

/// Cuts power under a spilling child, `rounds` times on one filesystem
/// (recovery after recovery), checking after each that every span a flush
/// reported spilled is on disk, sound, and counted as recovered.
fn spills_survive(kind: &'static str, rounds: usize) -> usize {
    let mut fs = Fs::new(kind);
    let dir = fs.path("spool");
    let mut all = BTreeSet::new();
    for round in 0..rounds {
        let mut child = Reporter::start(
            "power_cut::spill_child",
            CHILD_ENV,
            &[dir.to_str().unwrap(), "1099511627776"],
        );
        let mut lines = child.let_it_work(400);
        fs.cut_and_restart(&mut child.child);
        lines.extend(child.rest());
        let ids = reported(&lines, "SPILLED ");
        all.extend(ids);
        let (queue, _) = spool_ids(&dir);
        let missing: Vec<&String> = all.difference(&queue).collect();
        assert!(
            missing.is_empty(),
            "{kind} round {round}: {} of {} spans reported spilled are gone after the cut, e.g. {:?}",
            missing.len(),
            all.len(),
            missing.iter().take(3).collect::<Vec<_>>()
        );
        let t = spilling_tracer(&dir, 1 << 40);
        let s = t.stats();
        assert_eq!(s.recovered, queue.len() as u64, "{kind} round {round}: {s:?}");
        drop(t);
        // What was spilled after the last report is there too, maybe:
        // count it from now on, as it was found.
        all = spool_ids(&dir).0;
    }
    eprintln!(
        "power cuts: {rounds} on {kind} under a spilling child, {} spans checked",
        all.len()
    );
    all.len()
}

#[test]
fn spilled_spans_survive_power_cuts_on_xfs() {
    let spans = spills_survive("xfs", cuts(5));
    assert!(spans > 0, "the child spilled nothing before the cuts");
}

#[test]
fn spilled_spans_survive_power_cuts_on_ext4() {
    let spans = spills_survive("ext4", cuts(5));
    assert!(spans > 0, "the child spilled nothing before the cuts");
}

/// The child of the replay test: replays the spool in `args[0]` to the
/// collector at `args[1]` record by record, printing each record's key and
/// its span ids once its removal is durable.
#[test]
#[ignore = "run by the power-cut tests as their child process"]
fn replay_child() {
    let Some(args) = child_args() else { return };
    let dir = PathBuf::from(&args[0]);
    let config = Config {
        endpoint: args[1].clone(),
        flush_timeout_ms: 60_000,
        ..Config::default()
    };
    let spool = Spool::open(&dir, u64::MAX).unwrap();
    let books = Arc::new(Books::default());
    let disk = Arc::new(Disk::start(Ok(spool), dir, u64::MAX, u64::MAX, Arc::clone(&books)).unwrap());
    let transport = spillway::transport::HttpTransport::new(&config).unwrap();
    let mut exporter = Exporter::new(&config, Box::new(transport), Some(disk), books, Arc::new(SystemClock));
    child::say("STARTED");
    loop {
        match exporter.replay_next(Tree::Queue) {
            Ok(Some(r)) => child::say(&format!("REMOVED {} {} {}", r.key, r.delivered, r.refused)),
            Ok(None) => break,
            Err(e) => {
                child::say(&format!("STOPPED {e}"));
                break;
            }
        }
    }
    child::say("DONE");
}

/// Spans of a spool's queue, by record key.
fn records(dir: &Path) -> Vec<(u64, Vec<Span>)> {
    let spool = Spool::open(dir, u64::MAX).unwrap();
    spool
        .records(Tree::Queue)
        .map(|e| {
            let e = e.unwrap();
            (e.key, e.spans.unwrap())
        })
        .collect()
}

/// A spool of `records` records of `per` spans each, spilled by a tracer
/// against a dead collector, under `service`.
fn fill(dir: &Path, service: &str, records: usize, per: usize) {
    let t = SpillwayTracer::new(Config {
        service_name: service.to_owned(),
        flush_timeout_ms: 60_000,
        ..common::spool_config(&common::refused_url(), dir)
    })
    .unwrap();
    for _ in 0..records {
        common::record(&t, per, "GET /replayed");
        let e = t.try_flush().unwrap_err();
        assert_eq!(e.spilled, per, "{e}");
    }
}

#[test]
fn replay_survives_power_cuts_nothing_owed_is_lost_nothing_removed_comes_back() {
    let url = format!("{}/api/v2/spans", common::zipkin_url());
    let mut cut = 0;
    for kind in ["xfs", "ext4"] {
        let mut fs = Fs::new(kind);
        let dir = fs.path("spool");
        let service = format!("power-cut-replay-{kind}-{}", fastrand::u32(..));
        fill(&dir, &service, 40, 100);
        let before = records(&dir);
        let owed: BTreeSet<String> = before.iter().flat_map(|(_, s)| s.iter().map(span_key)).collect();
        for _ in 0..cuts(4).div_ceil(2) {
            cut += 1;
            let mut child = Reporter::start("power_cut::replay_child", CHILD_ENV, &[dir.to_str().unwrap(), &url]);
            let mut lines = child.let_it_work(300);
            fs.cut_and_restart(&mut child.child);
            lines.extend(child.rest());
            let removed: Vec<u64> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("REMOVED "))
                .filter_map(|r| r.split_whitespace().next()?.parse().ok())
                .collect();
            let after = records(&dir);
            let keys: BTreeSet<u64> = after.iter().map(|(k, _)| *k).collect();
            for key in &removed {
                assert!(
                    !keys.contains(key),
                    "{kind} cut {cut}: record {key} was reported removed and is back"
                );
            }
            // Nothing owed disappeared: every span is still queued or at Zipkin.
            let queued: BTreeSet<String> = after.iter().flat_map(|(_, s)| s.iter().map(span_key)).collect();
            let gone: BTreeSet<&String> = owed.difference(&queued).collect();
            if !gone.is_empty() {
                // Zipkin stores after its 202: wait for it, a bounded while.
                let until = Instant::now() + Duration::from_secs(30);
                let lost = loop {
                    let at_zipkin: BTreeSet<String> = common::zipkin_now(&service)
                        .into_iter()
                        .map(|(t, id)| format!("{t}:{id}"))
                        .collect();
                    let lost: Vec<String> = gone
                        .iter()
                        .filter(|id| !at_zipkin.contains(**id))
                        .map(|id| (*id).clone())
                        .collect();
                    if lost.is_empty() || Instant::now() > until {
                        break lost;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                };
                assert!(
                    lost.is_empty(),
                    "{kind} cut {cut}: {} spans neither queued nor at Zipkin, e.g. {:?}",
                    lost.len(),
                    lost.first()
                );
            }
        }
    }
}

/// The child of the dead-letter test: replays to a collector that refuses
/// some spans, printing each record settled.
#[test]
#[ignore = "run by the power-cut tests as their child process"]
fn dead_letter_child() {
    replay_child();
}

#[test]
fn dead_letters_survive_power_cuts() {
    fn refuse_odd(body: &str) -> u16 {
        // Spans of odd-numbered requests are refused: "odd" in their name.
        if body.contains("GET /odd") { 400 } else { 202 }
    }
    let server = common::FaultServer::start(vec![common::Answer::By(refuse_odd); 100_000]);
    for kind in ["xfs", "ext4"] {
        for cut in 0..cuts(4).div_ceil(2) {
            let mut fs = Fs::new(kind);
            let dir = fs.path("spool");
            {
                let t = spilling_tracer(&dir, 1 << 40);
                for i in 0..40 {
                    let name = if i % 2 == 1 { "GET /odd" } else { "GET /even" };
                    common::record(&t, 50, name);
                    assert_eq!(t.try_flush().unwrap_err().spilled, 50);
                }
            }
            let before: BTreeSet<String> = records(&dir).iter().flat_map(|(_, s)| s.iter().map(span_key)).collect();
            let mut child = Reporter::start(
                "power_cut::dead_letter_child",
                CHILD_ENV,
                &[dir.to_str().unwrap(), &server.url],
            );
            let mut lines = child.let_it_work(300);
            fs.cut_and_restart(&mut child.child);
            lines.extend(child.rest());
            let (queue, dead) = spool_ids(&dir);
            let delivered = server.trace_span_ids();
            // Every span is queued, a dead letter, or was delivered; a
            // refused span reported settled is a dead letter.
            for id in &before {
                assert!(
                    queue.contains(id) || dead.contains(id) || delivered.contains(id),
                    "{kind} cut {cut}: span {id} is gone"
                );
            }
            let settled_refused: usize = lines
                .iter()
                .filter_map(|l| l.strip_prefix("REMOVED "))
                .filter_map(|r| r.split_whitespace().nth(2)?.parse::<usize>().ok())
                .sum();
            assert!(
                dead.len() >= settled_refused,
                "{kind} cut {cut}: {settled_refused} spans reported dead-lettered, {} in the dead letters",
                dead.len()
            );
        }
    }
}

#[test]
fn cap_evictions_survive_power_cuts_oldest_first() {
    for kind in ["xfs", "ext4"] {
        let mut fs = Fs::new(kind);
        let dir = fs.path("spool");
        for cut in 0..cuts(4).div_ceil(2) {
            // A 1 MiB cap: the child's spills evict the oldest records.
            let mut child = Reporter::start("power_cut::spill_child", CHILD_ENV, &[dir.to_str().unwrap(), "1048576"]);
            let mut lines = child.let_it_work(1_500);
            fs.cut_and_restart(&mut child.child);
            lines.extend(child.rest());
            let ids = reported(&lines, "SPILLED ");
            let (queue, _) = spool_ids(&dir);
            // Evictions go oldest first: what is missing of what this run
            // reported spilled comes before everything still there.
            let first_kept = ids.iter().position(|id| queue.contains(id));
            if let Some(first) = first_kept {
                let missing_after: Vec<&String> = ids[first..].iter().filter(|id| !queue.contains(*id)).collect();
                assert!(
                    missing_after.is_empty(),
                    "{kind} cut {cut}: {} spans reported spilled are gone although older ones were kept",
                    missing_after.len()
                );
            }
        }
    }
}

/// The child of the salvage test: salvages `args[0]` into a fresh spool in
/// `args[1]` and says when it is done.
#[test]
#[ignore = "run by the power-cut tests as their child process"]
fn salvage_child() {
    let Some(args) = child_args() else { return };
    child::say("STARTED");
    let mut into = Spool::open(Path::new(&args[1]), u64::MAX).unwrap();
    let report = spillway::spool::salvage::salvage(Path::new(&args[0]), &mut into).unwrap();
    child::say(&format!("SALVAGED {}", report.spans));
}

#[test]
fn salvaged_spools_survive_power_cuts() {
    for kind in ["xfs", "ext4"] {
        let mut fs = Fs::new(kind);
        let from = fs.path("from");
        fill(&from, "salvaged", 20, 200);
        let owed: BTreeSet<String> = records(&from)
            .iter()
            .flat_map(|(_, s)| s.iter().map(span_key))
            .collect();
        for cut in 0..cuts(4).div_ceil(2) {
            let into = fs.path(&format!("into-{cut}"));
            let mut child = Reporter::start(
                "power_cut::salvage_child",
                CHILD_ENV,
                &[from.to_str().unwrap(), into.to_str().unwrap()],
            );
            let mut lines = child.let_it_work(200);
            fs.cut_and_restart(&mut child.child);
            lines.extend(child.rest());
            if lines.iter().any(|l| l.starts_with("SALVAGED ")) {
                let (queue, _) = spool_ids(&into);
                assert_eq!(queue, owed, "{kind} cut {cut}: salvage said it was done");
            }
        }
    }
}

/// The child of the quarantine test: [`replay_child`], saying which
/// records it quarantined.
#[test]
#[ignore = "run by the power-cut tests as their child process"]
fn quarantine_child() {
    replay_child();
}

/// Rewrites every `every`th queue record of the (closed) spool in `dir`
/// with one payload byte flipped, through sled, so only spillway's CRC can
/// tell; returns their keys.
fn corrupt_records(dir: &Path, every: usize) -> BTreeSet<u64> {
    let db = common::open_sled(dir);
    let queue = db.open_tree("queue").unwrap();
    let mut keys = BTreeSet::new();
    for (i, item) in queue.iter().enumerate() {
        let (k, v) = item.unwrap();
        if i % every == 0 {
            let mut bad = v.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 0x40;
            queue.insert(&k, bad).unwrap();
            keys.insert(u64::from_be_bytes(k.as_ref().try_into().unwrap()));
        }
    }
    db.flush().unwrap();
    keys
}

#[test]
fn quarantined_records_survive_power_cuts() {
    let url = format!("{}/api/v2/spans", common::zipkin_url());
    for kind in ["xfs", "ext4"] {
        for cut in 0..cuts(2).div_ceil(2) {
            let mut fs = Fs::new(kind);
            let dir = fs.path("spool");
            fill(&dir, &format!("power-cut-quarantine-{kind}"), 30, 40);
            let bad = corrupt_records(&dir, 3);
            // The rewrite is made durable before the cuts start.
            fs.unmount();
            fs.mount();
            let mut child = Reporter::start("power_cut::quarantine_child", CHILD_ENV, &[dir.to_str().unwrap(), &url]);
            let _ = child.let_it_work(300);
            fs.cut_and_restart(&mut child.child);
            let mut spool = Spool::open(&dir, u64::MAX).unwrap();
            assert_eq!(spool.take_damage(), None, "{kind} cut {cut}");
            let queued: BTreeSet<u64> = spool.records(Tree::Queue).map(|e| e.unwrap().key).collect();
            let quarantined: BTreeSet<u64> = spool.quarantined().map(|q| q.unwrap().0).collect();
            for key in &bad {
                assert!(
                    queued.contains(key) ^ quarantined.contains(key),
                    "{kind} cut {cut}: bad record {key} is neither queued nor quarantined (or both)"
                );
            }
            assert!(
                quarantined.is_subset(&bad),
                "{kind} cut {cut}: {quarantined:?} ⊄ {bad:?}"
            );
        }
    }
}

/// ext4's torn tail: the log's new size reached the disk and its data did
/// not, so its end reads as zeros. Opening and salvaging lose nothing that
/// was synced, and neither panics.
#[test]
fn a_tail_of_zeros_after_the_synced_data_loses_nothing() {
    let mut fs = Fs::new("ext4");
    let dir = fs.path("spool");
    fill(&dir, "torn-tail", 10, 100);
    let owed: BTreeSet<String> = records(&dir).iter().flat_map(|(_, s)| s.iter().map(span_key)).collect();
    let log = dir.join("db");
    for grow in [1u64, 4096, 512 << 10, 3 << 20] {
        let len = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(len + grow)
            .unwrap();
        fs.unmount();
        fs.mount();
        // Salvage first, on a copy nothing opened, then open for real.
        let copy = fs.path(&format!("copy-{grow}"));
        sh(Command::new("cp").arg("-a").arg(&dir).arg(&copy));
        let target = fs.path(&format!("salvaged-{grow}"));
        let mut into = Spool::open(&target, u64::MAX).unwrap();
        let report = spillway::spool::salvage::salvage(&copy, &mut into).unwrap();
        drop(into);
        assert_eq!(report.spans, owed.len() as u64, "salvage after {grow} zero bytes");
        assert_eq!(spool_ids(&target).0, owed);
        assert_eq!(spool_ids(&dir).0, owed, "open after {grow} zero bytes");
    }
}
