//! `spillway salvage` streams and resumes: its memory stays bounded
//! whatever the size of the files it reads, and killed at any point
//! (`kill -9`) and run again, it ends with every recoverable record in the
//! target exactly once.

use spillway::spool::{Spool, Tree};
use spillway::unstable::spool::view::View;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn salvage_cmd(into: &Path, from: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env_remove("SPILLWAY_SPOOL")
        .arg("--spool")
        .arg(into)
        .args(["salvage", "--json"])
        .arg(from);
    c
}

/// Records (sequence, span count) of a spool's queue, read raw.
fn queue(dir: &Path) -> BTreeMap<u64, u32> {
    View::read(dir)
        .unwrap()
        .queue
        .iter()
        .map(|f| (f.meta.seq, f.spans))
        .collect()
}

#[test]
fn salvage_killed_at_any_point_and_run_again_holds_every_record_exactly_once() {
    let root = tempfile::tempdir().unwrap();
    let from = root.path().join("from");
    {
        let mut s = Spool::open(&from, u64::MAX).unwrap();
        // Incompressible spans, so there are many records to write.
        let spans: Vec<_> = (0..2_000u64)
            .map(|i| {
                let mut span = spillway::unstable::span::Span::new([3; 16], (i + 1).to_be_bytes(), "GET /salvaged");
                let text: String = (0..1000).map(|_| fastrand::alphanumeric()).collect();
                span.attributes.push(("payload".into(), text.into()));
                span
            })
            .collect();
        for _ in 0..40 {
            s.append("svc", &spans, 1).unwrap();
        }
        s.commit().unwrap();
    }
    let want = queue(&from);
    assert!(want.len() > 500, "{} records", want.len());
    let into = root.path().join("into");
    let mut kills = 0;
    for round in 0..6 {
        let mut child = salvage_cmd(&into, &from)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(fastrand::u64(50..600)));
        match child.try_wait().unwrap() {
            Some(status) => {
                // Finished before the kill: a finished salvage is not redone.
                eprintln!("round {round}: finished first ({status:?})");
                break;
            }
            None => {
                child.kill().unwrap();
                let _ = child.wait();
                kills += 1;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = salvage_cmd(&into, &from).output().unwrap();
    assert!(Instant::now() < deadline);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || stderr.contains("already salvaged"), "{stderr}");
    let got = queue(&into);
    assert_eq!(got, want, "every record once, under its own key, after {kills} kills");
    let spool = Spool::open(&into, u64::MAX).unwrap();
    let spans: u64 = want.values().map(|&n| u64::from(n)).sum();
    assert_eq!(spool.stats().spans, spans, "counted once");
    assert_eq!(spool.records(Tree::Queue).count(), want.len());
    eprintln!("{kills} kills, {} records", want.len());
}

#[test]
fn salvage_memory_is_bounded_whatever_the_file_sizes() {
    let root = tempfile::tempdir().unwrap();
    let from = root.path().join("from");
    std::fs::create_dir(&from).unwrap();
    // A 1 GiB log, sparse, with records scattered through it.
    let log = std::fs::File::create(from.join("db")).unwrap();
    log.set_len(1 << 30).unwrap();
    let spans: Vec<_> = (0..200u64)
        .map(|i| spillway::unstable::span::Span::new([4; 16], (i + 1).to_be_bytes(), "GET /sparse"))
        .collect();
    use std::os::unix::fs::FileExt;
    for i in 0..64u64 {
        let mut rec = Vec::new();
        let meta = spillway::unstable::spool::record::Meta {
            seq: i,
            tree: Tree::Queue,
            created_unix_ms: 1,
        };
        spillway::unstable::spool::record::encode("svc", &spans, meta, &mut rec).unwrap();
        log.write_all_at(&rec, i * (16 << 20) + 12_345).unwrap();
    }
    drop(log);
    let into = root.path().join("into");
    // GNU time (Debian's `time`, which `.ci/run` installs) reports the
    // child's peak resident memory.
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M", env!("CARGO_BIN_EXE_spillway"), "--spool"])
        .arg(&into)
        .args(["salvage", "--json"])
        .arg(&from)
        .env_remove("SPILLWAY_SPOOL")
        .output()
        .expect("/usr/bin/time (Debian's time)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], 64, "{report}");
    let rss: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rss in {stderr}"));
    eprintln!("salvage of a 1 GiB file: {} MiB peak RSS", rss / 1024);
    assert!(rss <= 64 << 10, "peak RSS {} KiB over 64 MiB", rss);
}
