//! Damage to sled's own files (bit flips, truncation), not just to single
//! records: the tracer must come up (setting damaged files aside and
//! salvaging them), never crash, keep its accounting balanced, and deliver
//! what can be read. Each attempt runs in a child process, so that a panic
//! on any thread, or an abort, fails the test instead of passing unnoticed.
//! Each attempt must end with every span delivered or counted as `corrupt`.

use crate::common;

use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
use common::FaultServer;
use spillway::SpillwayTracer;
use std::path::{Path, PathBuf};

const CHILD_DIR: &str = "SPILLWAY_DAMAGE_DIR";
const CHILD_URL: &str = "SPILLWAY_DAMAGE_URL";

use common::spool_config as config;

/// The child: opens the damaged spool, drains it, prints the final stats.
#[test]
#[ignore = "run by damaged_spool_files_never_crash_the_process as its child process"]
fn damage_child() {
    let (Some(dir), Ok(url)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_URL)) else {
        return;
    };
    let t = SpillwayTracer::new(config(&url, Path::new(&dir))).expect("the tracer comes up");
    for _ in 0..50 {
        let _ = t.flush();
        if t.stats().spooled == 0 {
            break;
        }
    }
    let s = t.stats();
    assert!(s.is_balanced(), "{s:?}");
    println!("@@{}", serde_json::to_string(&s).unwrap());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if std::fs::metadata(&p).unwrap().len() > 0 {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn damaged_spool_files_never_crash_the_process() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    {
        let dead = FaultServer::start(common::failures(500, 20 * common::ATTEMPTS));
        let t = SpillwayTracer::new(config(&dead.url, &pristine)).unwrap();
        for _ in 0..20 {
            for _ in 0..100 {
                let h = t.start_span(SpanStart {
                    name: "damaged",
                    ..Default::default()
                });
                t.end_span(h, None);
            }
            assert!(t.flush().is_err());
        }
    }
    let server = FaultServer::start(vec![]);
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for attempt in 0..24 {
        let dir = root.path().join(format!("attempt-{attempt}"));
        copy_dir(&pristine, &dir);
        let targets = files(&dir);
        let file = &targets[rng.usize(..targets.len())];
        let mut bytes = std::fs::read(file).unwrap();
        let what = if attempt % 3 == 2 {
            let len = rng.usize(..bytes.len());
            bytes.truncate(len);
            format!("truncated {} to {len}", file.display())
        } else {
            for _ in 0..1 + attempt % 4 {
                let at = rng.usize(..bytes.len());
                bytes[at] ^= 1 << rng.u8(0..8);
            }
            format!("flipped bits in {}", file.display())
        };
        std::fs::write(file, &bytes).unwrap();
        let out = common::child::command(&[], "file_damage::damage_child")
            .env(CHILD_DIR, &dir)
            .env(CHILD_URL, &server.url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "attempt {attempt} ({what}): the process failed\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats = stdout
            .split_once("@@")
            .map(|(_, s)| s.lines().next().unwrap_or_default())
            .unwrap_or_default();
        let s: serde_json::Value = serde_json::from_str(stats).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(s["spooled"], 0, "attempt {attempt} ({what}): the queue went on: {s}");
        let (delivered, corrupt) = (
            s["delivered"].as_u64().unwrap(),
            s["dropped"]["corrupt"].as_u64().unwrap(),
        );
        // Nothing silently lost, set aside or not: each span delivered or
        // counted.
        assert_eq!(delivered + corrupt, 2000, "attempt {attempt} ({what}): {s}");
    }
}
