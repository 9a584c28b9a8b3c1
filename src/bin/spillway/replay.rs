//! `spillway replay`: sends a spool to a collector, oldest first, through
//! the exporter's own replay step (the same bisecting, dead-lettering and
//! acknowledgement the tracer uses).
//!
//! Safe to interrupt: a record is removed (synced) only after the collector
//! settled it, so a rerun sends the rest and at most the record in flight
//! twice. SIGINT or SIGTERM stops it after the record in hand, with the
//! summary printed and exit code 130 or 143. Exit 1 when it stopped early
//! (the collector failed) or delivered nothing because the collector
//! refused everything.

use crate::{Outcome, open, say};
use indicatif::{ProgressBar, ProgressStyle};
use spillway::clock::SystemClock;
use spillway::config::Config;
use spillway::spool::Tree;
use spillway::transport::HttpTransport;
use spillway::unstable::export::Exporter;
use spillway::unstable::export::books::Books;
use spillway::unstable::export::disk::Disk;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    collector: crate::collector::Collector,
    /// Send at most this many spans per second.
    #[arg(long, value_name = "SPANS_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Put at most this many bytes of requests on the wire per second,
    /// retries included, for metered links (default: the config file's
    /// `replay_max_bytes_per_s`, else no cap).
    #[arg(long, value_name = "BYTES_PER_S", value_parser = clap::value_parser!(u64).range(1024..=10 << 30))]
    max_bytes_per_s: Option<u64>,
    /// Stop after this many records (`--max-batches` is the old name).
    #[arg(long, value_name = "N", alias = "max-batches")]
    max_records: Option<u64>,
    /// Replay the dead letters instead of the queue (after fixing what made
    /// the collector refuse them); spans refused again stay dead letters.
    #[arg(long)]
    dead_letters: bool,
    /// Say what would be sent; send nothing, change nothing (the spool's
    /// files are read without sled; not a byte of them changes).
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object: delivered, remaining, dead_lettered,
    /// quarantined, records, seconds, stopped (the error, or null).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    delivered: u64,
    remaining: u64,
    dead_lettered: u64,
    quarantined: u64,
    records: u64,
    seconds: f64,
    stopped: Option<String>,
    /// Where opening the spool set its damaged files aside, if it did.
    set_aside: Option<String>,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let signals = crate::Signals::catch()?;
    let config = parse(&args)?;
    // Refuses a bad URL or TLS file before the spool is touched.
    let transport = HttpTransport::new(&config).map_err(crate::collector::Usage::from)?;
    let tree = if args.dead_letters { Tree::Dead } else { Tree::Queue };
    let max_records = args.max_records.unwrap_or(u64::MAX);
    if args.dry_run {
        return dry_run(dir, tree, max_records, args.json);
    }
    let mut spool = open(dir)?;
    let set_aside = spool
        .take_damage()
        .and_then(|d| d.set_aside)
        .map(|p| p.display().to_string());
    let books = Arc::new(Books::default());
    let disk = Arc::new(Disk::start(
        Ok(spool),
        dir.to_path_buf(),
        u64::MAX,
        u64::MAX,
        Arc::clone(&books),
    )?);
    let total = left(&disk, tree);
    let mut exporter = Exporter::new(
        &config,
        Box::new(transport),
        Some(Arc::clone(&disk)),
        books,
        Arc::new(SystemClock),
    );
    let started = Instant::now();
    let (mut s, refusal) = drive(&mut exporter, tree, max_records, args.rate, total, &signals);
    s.set_aside = set_aside;
    s.seconds = started.elapsed().as_secs_f64();
    drop(exporter);
    disk.stop(Instant::now() + Duration::from_secs(10));
    s.remaining = left(&disk, tree);
    report(&s, &args, &signals, refusal)
}

/// The collector's config from the options: `--endpoint`, the environment
/// or `--config` must name one; `--max-bytes-per-s` overrides the file.
fn parse(args: &Args) -> Result<Config, Box<dyn std::error::Error>> {
    let given = args.collector.endpoint.is_some()
        || args.collector.config.is_some()
        || std::env::var_os("OTEL_EXPORTER_ZIPKIN_ENDPOINT").is_some_and(|v| !v.is_empty());
    if !given {
        return Err(crate::collector::Usage(
            "replay needs a collector: --endpoint URL (or OTEL_EXPORTER_ZIPKIN_ENDPOINT, or --config FILE)".into(),
        )
        .into());
    }
    let mut config = args.collector.config(Config {
        max_spool_bytes: 1 << 40,
        ..Config::default()
    })?;
    config.replay_max_bytes_per_s = args.max_bytes_per_s.or(config.replay_max_bytes_per_s);
    Ok(config)
}

/// Spans left in `tree`, from the disk thread's view of the spool.
fn left(disk: &Disk, tree: Tree) -> u64 {
    disk.stats().map_or(0, |st| match tree {
        Tree::Queue => st.spans,
        Tree::Dead => st.dead_letter_spans,
    })
}

/// Replays records of `tree` oldest first until none is left, `max_records`
/// were sent, the collector fails or a signal comes, keeping to `rate`
/// spans a second and the exporter's byte allowance; returns the counts
/// and the collector's last refusal.
fn drive(
    exporter: &mut Exporter,
    tree: Tree,
    max_records: u64,
    rate: Option<u64>,
    total: u64,
    signals: &crate::Signals,
) -> (Summary, Option<spillway::transport::SendError>) {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} spans {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut s = Summary::default();
    let mut settled = 0u64;
    let mut refusal = None;
    while s.records < max_records && signals.caught().is_none() {
        match exporter.replay_next(tree) {
            Ok(None) => break,
            Ok(Some(r)) => {
                s.records += 1;
                s.delivered += r.delivered as u64;
                s.dead_lettered += r.refused as u64;
                if let Some(e) = r.refusal {
                    refusal = Some(e);
                }
                if let Some(why) = r.quarantined {
                    s.quarantined += 1;
                    bar.suspend(|| crate::tell!("spillway: record {} quarantined: {why}", r.key));
                }
                settled += r.spans;
                bar.set_position(settled.min(total));
            }
            Err(e) => {
                // The causes alone: the counts are this command's to report.
                let causes: Vec<String> = e.causes.iter().map(ToString::to_string).collect();
                s.stopped = Some(format!("{} {}", e.endpoint, causes.join("; ")));
                break;
            }
        }
        // Sleep until the spans sent so far fit `--rate` and the bytes the
        // byte allowance.
        let spans_due = rate.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(settled as f64 / rate as f64).saturating_sub(started.elapsed())
        });
        let until = Instant::now() + spans_due.max(exporter.replay_wait());
        // In steps, so a signal is answered within one.
        while let Some(wait) = until.checked_duration_since(Instant::now()) {
            if wait.is_zero() || signals.caught().is_some() {
                break;
            }
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    }
    bar.finish_and_clear();
    (s, refusal)
}

/// Prints the summary and says why the exit code is what it is.
fn report(
    s: &Summary,
    args: &Args,
    signals: &crate::Signals,
    refusal: Option<spillway::transport::SendError>,
) -> Outcome {
    if args.json {
        say!("{}", serde_json::to_string(s)?);
    } else {
        say!(
            "delivered {} spans in {} records ({:.1}s); {} dead-lettered; {} remain in {}",
            s.delivered,
            s.records,
            s.seconds,
            s.dead_lettered,
            s.remaining,
            if args.dead_letters {
                "the dead letters"
            } else {
                "the queue"
            }
        );
    }
    if let Some(code) = signals.exit_code() {
        crate::tell!(
            "spillway: replay interrupted, {} spans remain; rerun to send them",
            s.remaining
        );
        return Ok(code);
    }
    if let Some(why) = &s.stopped {
        crate::tell!(
            "spillway: replay stopped, {} spans remain; rerun when the collector is back: {why}",
            s.remaining
        );
        return Ok(ExitCode::FAILURE);
    }
    if s.delivered == 0 && s.dead_lettered > 0 {
        let why = refusal.map_or_else(String::new, |e| format!(": {e}"));
        crate::tell!(
            "spillway: the collector refused every span ({} now dead letters){why}; check what it expects, then `spillway replay --dead-letters`",
            s.dead_lettered
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a replay would send, read from the raw files: nothing is opened
/// for writing, nothing changes.
fn dry_run(dir: &Path, tree: Tree, max_records: u64, json: bool) -> Outcome {
    let (_lock, check) = crate::read(dir)?;
    let view = &check.view;
    let found = match tree {
        Tree::Queue => &view.queue,
        Tree::Dead => &view.dead,
    };
    let (mut records, mut spans, mut unreadable) = (0u64, 0u64, 0u64);
    for f in found.iter().take(usize::try_from(max_records).unwrap_or(usize::MAX)) {
        records += 1;
        spans += u64::from(f.spans);
        let sound = view
            .scan
            .read_record(f)
            .ok()
            .is_some_and(|b| spillway::unstable::spool::record::decode(&b).is_ok());
        unreadable += u64::from(!sound);
    }
    unreadable += view.unreadable.len() as u64;
    if json {
        let out = serde_json::json!({"dry_run": true, "records": records, "spans": spans, "unreadable": unreadable});
        say!("{out}");
    } else {
        say!("would send {spans} spans in {records} records ({unreadable} unreadable records would be quarantined)");
    }
    Ok(ExitCode::SUCCESS)
}
