//! Measures how much the process's resident memory grows while spilling
//! about 500 MB of records to a spool (issue target: at most 128 MiB).
//!
//! `cargo run --release --example spool_rss [MB]`

use spillway::spool::Spool;
use spillway::unstable::span::{Kind, Span, Status, Value};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target_mb: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let batch: Vec<Span> = (0..512u64)
        .map(|i| Span {
            trace_id: [7; 16],
            span_id: (i + 1).to_be_bytes(),
            parent_id: None,
            name: "GET /users/:id".into(),
            kind: Kind::Server,
            start_unix_nanos: 1_764_000_000_000_000_000 + i,
            end_unix_nanos: 1_764_000_000_001_000_000 + i,
            status: Status::Ok,
            attributes: vec![
                ("http.request.method".into(), Value::String("GET".into())),
                ("http.route".into(), Value::String("/users/:id".into())),
                ("url.path".into(), Value::String(format!("/users/{i}"))),
            ],
            events: Default::default(),
            dropped_attributes: 0,
            dropped_events: 0,
        })
        .collect();
    let dir = tempfile::tempdir()?;
    let mut spool = Spool::open(dir.path(), u64::MAX)?;
    spool.append("svc", &batch, 1)?;
    spool.commit()?;
    let before = rss_kib();
    let started = std::time::Instant::now();
    while spool.stats().bytes < target_mb << 20 {
        spool.append("svc", &batch, 1)?;
        spool.commit()?;
    }
    let after = rss_kib();
    let st = spool.stats();
    println!(
        "spilled {} MiB ({} spans) in {:.1}s; {} MiB on disk; RSS {} -> {} MiB (+{} MiB)",
        st.bytes >> 20,
        st.spans,
        started.elapsed().as_secs_f64(),
        spool.size_on_disk() >> 20,
        before >> 10,
        after >> 10,
        after.saturating_sub(before) >> 10
    );
    Ok(())
}
