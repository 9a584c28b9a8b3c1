//! The read-only commands (`inspect`, `verify`, `export`, `replay
//! --dry-run`) read a spool's raw files and nothing else: they work on a
//! read-only mount, and change no byte of a spool on a writable one.
//! Needs root (a loop-mounted ext4 image); the mount is undone however the
//! test ends.

mod common;

use common::fs::Fs;
use std::path::Path;

use common::spillway;

fn hashes(dir: &Path) -> Vec<(String, u64, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                out.push((e.path().display().to_string(), meta.len(), crc32fast::hash(&bytes)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn read_only_commands_work_on_a_read_only_mount_and_change_nothing() {
    let mut fs = Fs::new("ext4");
    let dir = fs.path("spool");
    {
        let t = spillway::SpillwayTracer::new(common::spool_config(&common::refused_url(), &dir)).unwrap();
        common::record(&t, 3_000, "GET /ro");
        assert!(t.try_flush().is_err());
    }
    let before = hashes(&dir);
    let out_dir = tempfile::tempdir().unwrap();
    let exported = out_dir.path().join("spans.json");
    let commands: [Vec<&str>; 4] = [
        vec!["inspect", "--json"],
        vec!["verify"],
        vec!["export", "--force", "-o", exported.to_str().unwrap()],
        vec![
            "replay",
            "--dry-run",
            "--json",
            "--endpoint",
            "http://127.0.0.1:9/api/v2/spans",
        ],
    ];
    let succeeds = |args: &[&str]| {
        let out = spillway(&dir, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    };
    // Writable mount: every byte as it was.
    for args in &commands {
        succeeds(args);
        assert_eq!(hashes(&dir), before, "{args:?} changed the spool");
    }
    // Read-only mount: they still work, and say the same.
    fs.unmount();
    fs.mount_read_only();
    for args in &commands {
        succeeds(args);
    }
    let inspect: serde_json::Value = serde_json::from_slice(&spillway(&dir, &["inspect", "--json"]).stdout).unwrap();
    assert_eq!(inspect["spans"], 3_000, "{inspect}");
    let exported: serde_json::Value = serde_json::from_slice(&std::fs::read(&exported).unwrap()).unwrap();
    assert_eq!(exported.as_array().unwrap().len(), 3_000);
    assert_eq!(hashes(&dir), before);
}
