//! How long the check before sled opens a spool takes (issue goal: it adds
//! at most 1 s to opening a 512 MiB spool), and what `inspect` and
//! `verify` cost on a large spool.
//!
//! `cargo run --release --example open_check [MiB] [spans]`: builds a spool
//! of about MiB mebibytes of incompressible records (default 512), times
//! `Check::run` over it five times (warm page cache), then times opening it
//! whole; then builds a spool of `spans` standard spans (default 1.8 M)
//! and times reading it as `inspect` and `verify` do.

#[path = "../benches/common.rs"]
#[allow(dead_code)]
mod bench;

use spillway::spool::Spool;
use spillway::unstable::span::Span;
use spillway::unstable::spool::check::Check;
use spillway::unstable::spool::record;
use spillway::unstable::spool::view::View;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let span_count: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_800_000);
    let big = tempfile::tempdir()?;
    {
        let mut s = Spool::open(big.path(), u64::MAX)?;
        let batch: Vec<Span> = (0..256u64)
            .map(|i| {
                let mut span = Span::new([5; 16], (i + 1).to_be_bytes(), "GET /big");
                let text: String = (0..1000).map(|_| fastrand::alphanumeric()).collect();
                span.attributes.push(("payload".into(), text.into()));
                span
            })
            .collect();
        while s.stats().bytes < mib << 20 {
            s.append("svc", &batch, 1)?;
            if s.stats().records % 64 == 0 {
                s.commit()?;
            }
        }
        s.commit()?;
        println!(
            "spool of {} MiB of records, {} MiB on disk",
            s.stats().bytes >> 20,
            s.size_on_disk() >> 20
        );
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let c = Check::run(big.path())?;
        times.push(t.elapsed().as_secs_f64());
        assert!(!c.damaged(), "{:?}", c.findings);
    }
    println!("check before open: median {:.3} s of 5 (warm cache)", median(times));
    let t = Instant::now();
    drop(Spool::open(big.path(), u64::MAX)?);
    println!("whole open (check included): {:.3} s", t.elapsed().as_secs_f64());

    let dir = tempfile::tempdir()?;
    {
        let mut s = Spool::open(dir.path(), u64::MAX)?;
        let mut batch = Vec::new();
        for i in 0..512u64 {
            let mut span = Span::new([6; 16], (i + 1).to_be_bytes(), "GET /users/:id");
            span.attributes = bench::attributes();
            batch.push(span);
        }
        let mut n = 0;
        while n < span_count {
            s.append("svc", &batch, 1)?;
            n += batch.len() as u64;
        }
        s.commit()?;
        println!(
            "spool of {} standard spans, {} MiB on disk",
            s.stats().spans,
            s.size_on_disk() >> 20
        );
    }
    let (mut inspect, mut verify) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let view = View::read(dir.path())?;
        for f in &view.queue {
            let _ = record::service(&view.scan.read(f.at)?);
        }
        inspect.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let view = View::read(dir.path())?;
        let mut spans = 0;
        for f in &view.queue {
            spans += record::decode(&view.scan.read(f.at)?)?.spans.len();
        }
        verify.push(t.elapsed().as_secs_f64());
        assert_eq!(spans as u64, span_count.div_ceil(512) * 512);
    }
    println!(
        "reading as inspect does: median {:.3} s; as verify does (every span decoded): median {:.3} s",
        median(inspect),
        median(verify)
    );
    Ok(())
}
