//! Arbitrary bytes as a whole spool directory: sled's conf, log and
//! snapshots, a blob, the ledger. The check every open and every read-only
//! command runs before sled sees the files (`Check::run`: sled's recovery
//! modelled, the records scanned, the ledger compared) returns a verdict,
//! never panics, never hangs and never allocates past libFuzzer's
//! `-rss_limit_mb`, whatever the files hold.
//!
//! Input: repeated `[file: u8][length: u32 LE][bytes]`; `file` picks a
//! name from [`NAMES`]. The seeds are real spools in that form
//! (`fuzz/corpus/spool_dir/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::unstable::spool::check::Check;
use std::path::PathBuf;

const NAMES: [&str; 7] = [
    "conf",
    "db",
    "spillway.ledger",
    "snap.0000000000000000",
    "snap.00000000000007a0",
    "blobs/1",
    "blobs/2000",
];

/// The files of one input.
fn files(mut data: &[u8]) -> Vec<(&'static str, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        let name = NAMES[usize::from(data[0]) % NAMES.len()];
        let len = u32::from_le_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let body = &data[5..];
        let len = len.min(body.len());
        out.push((name, &body[..len]));
        data = &body[len..];
    }
    out
}

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("spillway-fuzz-spool-dir-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("blobs")).expect("a scratch directory");
    for (name, bytes) in files(data) {
        std::fs::write(dir.join(name), bytes).expect("a scratch file");
    }
    // A verdict either way; the fuzzer looks for panics, aborts and hangs.
    let _ = Check::run(&dir);
});
