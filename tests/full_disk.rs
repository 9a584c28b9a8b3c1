//! A full disk: the spool on a small tmpfs, `spillway generate` run again
//! and again against a dead collector until the filesystem is full, and
//! then restarted on it. Every run must end (a watchdog fails the test on
//! a hang), the spool is never set aside, and the accounting stays exact:
//! what one run leaves spooled, the next finds, and the directory holds.
//!
//! Needs root (to mount the tmpfs); the mount is undone however the test
//! ends.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Tmpfs {
    mnt: PathBuf,
    mounted: bool,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .status()
            .expect("mount runs (the test needs root)")
            .success();
        assert!(ok, "mount -t tmpfs (the test needs root)");
        Tmpfs {
            mnt,
            mounted: true,
            _dir: dir,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted
            && !Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Runs `generate` on `spool`, failing the test if it does not end within
/// the watchdog's minute; returns its accounting.
fn generate(spool: &Path, spans: u64, flush_every: u64) -> serde_json::Value {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/api/v2/spans", l.local_addr().unwrap().port())
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
    cmd.arg("--spool")
        .arg(spool)
        .args(["generate", "--json", "--endpoint", &dead])
        .args(["--spans", &spans.to_string(), "--flush-every", &flush_every.to_string()])
        .env_remove("OTEL_EXPORTER_ZIPKIN_ENDPOINT");
    let out = common::output_within(cmd, Duration::from_secs(60), "generate on the full disk");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn n(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("no {field} in {v}"))
}

#[test]
fn a_full_disk_never_hangs_never_sets_the_spool_aside_and_counts_exactly() {
    let fs = Tmpfs::new("8m");
    let spool = fs.mnt.join("spool");
    let mut left = 0;
    let mut filled = false;
    for run in 0..20 {
        let (spans, every) = [(200_000, 200), (20_000, 50), (100_000, 1_000)][run % 3];
        let out = generate(&spool, spans, every);
        eprintln!("run {run}: {out}");
        assert_eq!(out["spool_moved_aside"], false, "run {run}: {out}");
        assert_eq!(
            n(&out, "recovered"),
            left,
            "run {run}: what the last run left is found: {out}"
        );
        let right = n(&out, "delivered")
            + n(&out, "pending")
            + n(&out, "spooled")
            + n(&out, "dead_lettered")
            + n(&out, "dropped");
        assert_eq!(n(&out, "recorded") + n(&out, "recovered"), right, "run {run}: {out}");
        assert_eq!(
            out["dropped_by_reason"]["corrupt"], 0,
            "run {run}: nothing lost to damage: {out}"
        );
        left = n(&out, "spooled");
        filled |= n(&out, "pending") > 0;
        // After the shutdown, what is still in memory leaves with the
        // process: the report calls it lost, not pending.
        assert_eq!(n(&out, "lost_at_exit"), n(&out, "pending"), "run {run}: {out}");
        let entries: Vec<String> = std::fs::read_dir(&fs.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["spool"], "run {run}: nothing set aside");
    }
    assert!(filled, "the disk never filled up");
    let on_disk = spillway::spool::Spool::open_existing(&spool, u64::MAX)
        .unwrap()
        .stats()
        .spans;
    assert_eq!(
        on_disk, left,
        "the directory holds what the last run counted as spooled"
    );
}
