//! The read-only commands (`inspect`, `verify`, `export`, `replay
//! --dry-run`) read a spool's raw files and nothing else: they work on a
//! read-only mount, change no byte of a spool on a writable one, and wait
//! for a writer letting go as a writer does.
//! Needs root (a loop-mounted ext4 image); the mount is undone however the
//! test ends.

use crate::common;

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

#[test]
/// A read-only command run while a writer closes (or right after: a fork of
/// the writer's process keeps its lock until it execs) waits, as a writer
/// does, instead of refusing.
fn a_reader_waits_for_a_fork_that_holds_the_writers_lock_until_it_execs() {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let lock = spillway::unstable::spool::dir::Lock::exclusive(dir.path(), std::time::Duration::ZERO).unwrap();
    // A child forked while the lock is open holds its copy until it
    // execs; this one waits for `go` before it does.
    let (mut forked_rx, forked_tx) = std::io::pipe().unwrap();
    let (go_rx, mut go_tx) = std::io::pipe().unwrap();
    let (forked, go) = (forked_tx.as_raw_fd(), go_rx.as_raw_fd());
    let mut command = std::process::Command::new("true");
    // SAFETY: the hook calls only `write` and `read` (async-signal-safe).
    unsafe {
        command.pre_exec(move || {
            let (forked, go) = (BorrowedFd::borrow_raw(forked), BorrowedFd::borrow_raw(go));
            rustix::io::write(forked, b"f")?;
            rustix::io::read(go, &mut [0u8; 1])?;
            Ok(())
        });
    }
    // `spawn` returns once the child has exec'd, so on its own thread.
    let child = std::thread::spawn(move || command.spawn().and_then(|mut c| c.wait()));
    forked_rx.read_exact(&mut [0u8; 1]).unwrap();
    drop(lock);
    let err = spillway::unstable::spool::dir::ReadLock::shared(dir.path(), std::time::Duration::ZERO).unwrap_err();
    assert!(
        matches!(err, spillway::spool::SpoolError::InUse { .. }),
        "the fork holds the lock: {err:?}"
    );
    let path = dir.path().to_path_buf();
    let reader = std::thread::spawn(move || {
        spillway::unstable::spool::dir::ReadLock::shared(&path, std::time::Duration::from_secs(60)).map(drop)
    });
    go_tx.write_all(b"g").unwrap();
    reader.join().unwrap().expect("a reader waits for the fork to exec");
    assert!(child.join().unwrap().unwrap().success());
}
