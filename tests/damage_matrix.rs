//! The damage matrix: every file of a spool (sled's log, `conf`, the
//! snapshot, a blob file, the ledger), damaged every way a disk damages
//! them (one flipped byte at three offsets, 16 flipped bytes, 4 KiB zeroed,
//! truncation to 0, 50 and 95 %, deletion), on a young spool (never
//! reopened) and on a reopened one. For each case:
//!
//! - **the baseline**: `spillway salvage` run first on an untouched copy of
//!   the damaged files, into a fresh spool: what could be saved;
//! - **(a) the operator guide, in order**: `inspect`, `verify`, `export`,
//!   `replay --dry-run` (every file's hash unchanged after them), then
//!   `replay` to the real Zipkin and `salvage`, then `replay` again;
//! - **(b) a tracer restarted** on the damaged files with Zipkin up,
//!   flushing until its spool is empty.
//!
//! In both, Zipkin must hold every span the baseline recovered. Every
//! command and the tracer run in child processes, so a panic fails the
//! case, never the run. CI runs a fixed sample of at least 12 damage kinds
//! over the files and ages; `DAMAGE_MATRIX=full` runs every combination.

use crate::common;

use common::{Ids, refused_url, zipkin_ids};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const CHILD_ENV: &str = "SPILLWAY_MATRIX_CHILD";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    /// One byte flipped at this fraction of the file.
    Flip(f64),
    /// 16 bytes flipped across the file.
    Flip16,
    /// 4 KiB zeroed at the middle.
    Zero4k,
    /// Cut to this fraction of its length.
    Truncate(f64),
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Log,
    Conf,
    Snapshot,
    Blob,
    Ledger,
}

const DAMAGES: [Damage; 10] = [
    Damage::Flip(0.1),
    Damage::Flip(0.5),
    Damage::Flip(0.9),
    Damage::Flip16,
    Damage::Zero4k,
    Damage::Truncate(0.0),
    Damage::Truncate(0.5),
    Damage::Truncate(0.95),
    Damage::Delete,
    Damage::Flip(0.99),
];

use common::spillway;

fn ran(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command that must not crash: exit 0 or 1 (never 101, a panic), and
/// whatever it says is for people: no debug dump of a sled error.
fn no_crash(dir: &Path, args: &[&str]) -> Output {
    let out = spillway(dir, args);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{args:?} crashed: {}",
        ran(&out)
    );
    let said = ran(&out);
    for debug in ["backtrace", "Corruption", "ReportableBug", "Os {", "kind: "] {
        assert!(!said.contains(debug), "{args:?} printed {debug:?}: {said}");
    }
    out
}

/// A spool of 2,000 spans of `service` with 512 bytes of random text each (so
/// records stay large and sled keeps some of its pages as blob files),
/// spilled in 20 flushes against a dead collector; reopened and written
/// to again if `reopened`.
fn make_spool(dir: &Path, service: &str, reopened: bool) {
    let config = spillway::Config {
        service_name: service.to_owned(),
        ..common::spool_config(&refused_url(), dir)
    };
    let rounds = |t: &spillway::SpillwayTracer, n: usize| {
        use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
        for _ in 0..n {
            for _ in 0..100 {
                let h = t.start_span(SpanStart {
                    name: "GET /matrix",
                    ..Default::default()
                });
                let text: String = (0..512).map(|_| fastrand::alphanumeric()).collect();
                t.set_attribute(h, "payload", text.into());
                t.end_span(h, None);
            }
            assert!(t.try_flush().is_err(), "the collector is dead");
        }
    };
    let t = spillway::SpillwayTracer::new(config.clone()).unwrap();
    rounds(&t, if reopened { 12 } else { 20 });
    drop(t);
    if reopened {
        let t = spillway::SpillwayTracer::new(config).unwrap();
        rounds(&t, 8);
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("blobs")] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// The file `target` picks in `dir`, if the spool has one.
fn pick(dir: &Path, target: Target) -> Option<PathBuf> {
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    files(dir).into_iter().find(|p| match target {
        Target::Log => name(p) == "db",
        Target::Conf => name(p) == "conf",
        Target::Snapshot => name(p).starts_with("snap."),
        Target::Blob => p.parent().is_some_and(|d| d.ends_with("blobs")),
        Target::Ledger => name(p) == spillway::unstable::spool::ledger::FILE,
    })
}

fn damage(file: &Path, how: Damage) {
    if how == Damage::Delete {
        std::fs::remove_file(file).unwrap();
        return;
    }
    let mut bytes = std::fs::read(file).unwrap();
    let len = bytes.len();
    let at = |f: f64| ((len as f64 * f) as usize).min(len.saturating_sub(1));
    match how {
        Damage::Flip(f) if len > 0 => bytes[at(f)] ^= 0x10,
        Damage::Flip16 if len > 0 => {
            for i in 0..16 {
                bytes[at(i as f64 / 16.0 + 0.01)] ^= 0x01 << (i % 8);
            }
        }
        Damage::Zero4k => {
            let from = len / 2;
            bytes[from..(from + 4096).min(len)].fill(0);
        }
        Damage::Truncate(f) => bytes.truncate((len as f64 * f) as usize),
        _ => {}
    }
    std::fs::write(file, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn hashes(dir: &Path) -> BTreeMap<PathBuf, (u64, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                out.insert(e.path(), (bytes.len() as u64, crc32fast::hash(&bytes)));
            }
        }
    }
    out
}

/// The spans a spool's files hold, read raw.
fn held_ids(dir: &Path) -> Ids {
    let view = spillway::unstable::spool::view::View::read(dir).unwrap();
    let mut ids = Ids::new();
    for f in &view.queue {
        let bytes = view.scan.read(f.at).unwrap();
        for s in spillway::unstable::spool::record::decode(&bytes).unwrap().spans {
            ids.insert((
                spillway::unstable::zipkin::hex(&s.trace_id),
                spillway::unstable::zipkin::hex(&s.span_id),
            ));
        }
    }
    ids
}

/// The child for (b): a tracer on the damaged spool with Zipkin up,
/// flushing until the spool is empty (bounded).
#[test]
#[ignore = "run by the damage matrix as its child process"]
fn restarted_tracer_child() {
    let Ok(env) = std::env::var(CHILD_ENV) else { return };
    let (dir, url) = env.split_once('\t').unwrap();
    let t = spillway::SpillwayTracer::new(common::spool_config(url, Path::new(dir))).expect("the tracer comes up");
    for _ in 0..200 {
        let _ = bext_plugin_api::TracerPlugin::flush(&t);
        if t.stats().spooled == 0 {
            break;
        }
    }
    let s = t.stats();
    assert!(s.is_balanced(), "{s:?}");
    println!("@@{}", serde_json::to_string(&s).unwrap());
}

/// Runs one case; returns (recoverable, delivered) span counts.
fn case(root: &Path, n: usize, target: Target, how: Damage, reopened: bool, restart: bool) -> Option<(usize, usize)> {
    let what = format!(
        "case {n}: {how:?} of {target:?}, {} spool, {}",
        if reopened { "reopened" } else { "young" },
        if restart { "tracer restarted" } else { "operator guide" }
    );
    let service = format!("matrix-{n}-{:08x}", fastrand::u32(..));
    let dir = root.join(format!("case-{n}"));
    make_spool(&dir, &service, reopened);
    let file = pick(&dir, target)?;
    damage(&file, how);

    // The baseline: salvage first, on an untouched copy.
    let copy = root.join(format!("copy-{n}"));
    copy_dir(&dir, &copy);
    let baseline_dir = root.join(format!("baseline-{n}"));
    let out = no_crash(&baseline_dir, &["salvage", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{what}: baseline salvage: {}", ran(&out));
    let baseline = held_ids(&baseline_dir);

    let endpoint = format!("{}/api/v2/spans", common::zipkin_url());
    if restart {
        let out = common::child::command(&[], "damage_matrix::restarted_tracer_child")
            .env(CHILD_ENV, format!("{}\t{endpoint}", dir.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{what}: the tracer failed: {}", ran(&out));
    } else {
        let before = hashes(&dir);
        let exported = root.join(format!("export-{n}.json"));
        for args in [
            vec!["inspect"],
            vec!["verify"],
            vec!["export", "-o", exported.to_str().unwrap()],
            vec!["replay", "--dry-run", "--endpoint", &endpoint],
        ] {
            no_crash(&dir, &args);
            assert_eq!(
                hashes(&dir),
                before,
                "{what}: `{}` changed the spool's files",
                args.join(" ")
            );
        }
        for args in [
            vec!["replay", "--endpoint", &endpoint],
            vec!["salvage"],
            vec!["replay", "--endpoint", &endpoint],
        ] {
            no_crash(&dir, &args);
        }
    }
    let at_zipkin = if baseline.is_empty() {
        Ids::new()
    } else {
        zipkin_ids(&service, baseline.len())
    };
    let lost: Vec<_> = baseline.difference(&at_zipkin).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} of {} recoverable spans never reached Zipkin",
        lost.len(),
        baseline.len()
    );
    Some((baseline.len(), at_zipkin.len()))
}

#[test]
fn damaged_spools_lose_only_what_salvage_could_not_save() {
    let root = tempfile::tempdir().unwrap();
    let full = std::env::var("DAMAGE_MATRIX").is_ok_and(|v| v == "full");
    let targets = [
        Target::Log,
        Target::Conf,
        Target::Snapshot,
        Target::Blob,
        Target::Ledger,
    ];
    let mut cases = Vec::new();
    for (di, how) in DAMAGES.iter().enumerate() {
        if full {
            for target in targets {
                for reopened in [false, true] {
                    for restart in [false, true] {
                        cases.push((target, *how, reopened, restart));
                    }
                }
            }
        } else {
            // CI: each damage on two files, ages and modes alternating.
            for k in 0..2 {
                let target = targets[(di + 2 * k) % targets.len()];
                cases.push((target, *how, (di + k) % 2 == 1, (di + k) % 2 == 0));
            }
        }
    }
    let mut kinds = std::collections::BTreeSet::new();
    for (n, (target, how, reopened, restart)) in cases.into_iter().enumerate() {
        if let Some((recoverable, delivered)) = case(root.path(), n, target, how, reopened, restart) {
            eprintln!(
                "case {n}: {how:?} of {target:?}, {}, {}: {recoverable} recoverable, {delivered} delivered",
                if reopened { "reopened" } else { "young" },
                if restart { "restart" } else { "guide" }
            );
            kinds.insert(format!("{how:?} {target:?}"));
        }
    }
    eprintln!("{} damage kinds", kinds.len());
    assert!(kinds.len() >= 12, "only {} damage kinds ran", kinds.len());
}
