//! `spillway inspect`: what a spool holds, read from its raw files without
//! sled and without changing a byte; exit 1 if the files are damaged.

use crate::{Outcome, human_bytes, human_duration, human_time, read, say};
use spillway::unstable::spool::check::Finding;
use spillway::unstable::spool::record;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object (fields: spool, records, spans, bytes,
    /// record_bytes, oldest_unix_ms, newest_unix_ms, dead_letter_records,
    /// dead_letter_spans, quarantined_records, unreadable_records,
    /// format_versions, services, damaged, damage, set_aside,
    /// oldest_age_ms, replay_spans_per_s, replay_measured_unix_ms,
    /// drain_spans_per_s, drain_rate, drain_eta_s).
    #[arg(long, conflicts_with = "openmetrics")]
    json: bool,
    /// Print the spool's gauges in the OpenMetrics text format (the names
    /// the library's metrics use).
    #[arg(long)]
    openmetrics: bool,
    /// Estimate the time to drain at this many spans per second instead of
    /// the replay rate last measured on this spool.
    #[arg(long, value_name = "SPANS_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
}

/// What `inspect` reports; its JSON form is stable (fields are only added).
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    spool: String,
    records: u64,
    spans: u64,
    /// The spool's files on disk.
    bytes: u64,
    /// Bytes of the queue's records.
    record_bytes: u64,
    oldest_unix_ms: Option<u64>,
    newest_unix_ms: Option<u64>,
    dead_letter_records: u64,
    dead_letter_spans: u64,
    quarantined_records: u64,
    /// Records whose bytes are damaged (see `verify`).
    unreadable_records: u64,
    /// Records by format version.
    format_versions: BTreeMap<u8, u64>,
    /// Queued spans by service name.
    services: BTreeMap<String, u64>,
    /// Whether opening the spool would set its files aside and salvage them.
    damaged: bool,
    /// What is wrong: file, offset, what it would cost.
    damage: Vec<Finding>,
    /// Damaged files set aside earlier, kept in these directories.
    set_aside: Vec<String>,
    /// How long ago the oldest queued record was spilled.
    oldest_age_ms: Option<u64>,
    /// The last replay rate measured on this spool, and when.
    replay_spans_per_s: Option<u64>,
    replay_measured_unix_ms: Option<u64>,
    /// The rate the estimate uses, and whether it was `given` or `measured`.
    drain_spans_per_s: Option<u64>,
    drain_rate: Option<&'static str>,
    /// Seconds to send the queue at that rate.
    drain_eta_s: Option<f64>,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let (_lock, check) = read(dir)?;
    let s = summarize(&check, dir, args.rate);
    let code = if s.damaged || s.unreadable_records > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        say!("{}", serde_json::to_string(&s)?);
    } else if args.openmetrics {
        write!(std::io::stdout(), "{}", openmetrics(&s))?;
    } else {
        print_text(&s)?;
    }
    Ok(code)
}

/// What the checked files of the spool at `dir` hold; `rate` is the drain
/// rate the operator gave, if any.
fn summarize(check: &spillway::unstable::spool::check::Check, dir: &Path, rate: Option<u64>) -> Summary {
    let view = &check.view;
    let mut s = Summary {
        spool: dir.display().to_string(),
        bytes: view.scan.bytes,
        quarantined_records: view.quarantined.len() as u64,
        unreadable_records: view.unreadable.len() as u64,
        damaged: check.damaged(),
        damage: check.findings.clone(),
        set_aside: spillway::unstable::spool::dir::set_asides(dir)
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        ..Summary::default()
    };
    for f in &view.queue {
        s.records += 1;
        s.spans += u64::from(f.spans);
        s.record_bytes += u64::from(f.at.len);
        *s.format_versions.entry(f.version).or_default() += 1;
        if let Some(t) = Some(f.meta.created_unix_ms).filter(|&t| t > 0) {
            s.oldest_unix_ms = Some(s.oldest_unix_ms.map_or(t, |o| o.min(t)));
            s.newest_unix_ms = Some(s.newest_unix_ms.map_or(t, |n| n.max(t)));
        }
        let service = view
            .scan
            .read_record(f)
            .ok()
            .and_then(|b| record::service(&b).ok())
            .unwrap_or_else(|| "<unreadable>".to_owned());
        *s.services.entry(service).or_default() += u64::from(f.spans);
    }
    for f in &view.dead {
        s.dead_letter_records += 1;
        s.dead_letter_spans += u64::from(f.spans);
        *s.format_versions.entry(f.version).or_default() += 1;
    }
    let now_ms = spillway::Clock::now_unix_ms(&spillway::SystemClock);
    s.oldest_age_ms = s.oldest_unix_ms.map(|t| now_ms.saturating_sub(t));
    let measured = view.state.and_then(|st| st.replay);
    s.replay_spans_per_s = measured.map(|r| r.spans_per_s);
    s.replay_measured_unix_ms = measured.map(|r| r.measured_unix_ms);
    (s.drain_spans_per_s, s.drain_rate) = match (rate, s.replay_spans_per_s) {
        (Some(r), _) => (Some(r), Some("given")),
        (None, Some(r)) => (Some(r), Some("measured")),
        (None, None) => (None, None),
    };
    s.drain_eta_s = s.drain_spans_per_s.map(|r| s.spans as f64 / r as f64);
    s
}

/// The spool's gauges in the OpenMetrics text format.
fn openmetrics(s: &Summary) -> String {
    let gauges = spillway::metrics::SpoolGauges {
        dead_letter_spans: s.dead_letter_spans,
        quarantined_records: s.quarantined_records,
        oldest_age_seconds: s.oldest_age_ms.map(|ms| ms as f64 / 1000.0),
        replay_spans_per_s: s.replay_spans_per_s,
        ..spillway::metrics::SpoolGauges::new(s.spans, s.record_bytes)
    };
    let snapshot = spillway::metrics::Snapshot {
        spool: Some(gauges),
        ..Default::default()
    };
    spillway::metrics::render(&snapshot)
}

/// The summary for a person, a line per fact.
fn print_text(s: &Summary) -> std::io::Result<()> {
    say!("spool        {}", s.spool);
    say!(
        "queue        {} spans in {} records, {} of records, {} on disk",
        s.spans,
        s.records,
        human_bytes(s.record_bytes),
        human_bytes(s.bytes)
    );
    let ago = s.oldest_age_ms.map_or_else(String::new, |ms| {
        format!(" ({} ago)", human_duration(ms as f64 / 1000.0))
    });
    say!("oldest       {}{ago}", human_time(s.oldest_unix_ms));
    say!("newest       {}", human_time(s.newest_unix_ms));
    match s.replay_spans_per_s {
        Some(rate) => say!(
            "replay rate  {rate} spans/s, measured {}",
            human_time(s.replay_measured_unix_ms)
        ),
        None => say!("replay rate  not measured yet"),
    }
    match (s.drain_eta_s, s.drain_spans_per_s, s.drain_rate) {
        (Some(eta), Some(rate), Some(how)) if s.spans > 0 => {
            say!("drains in    ~{} at {rate} spans/s ({how})", human_duration(eta))
        }
        _ if s.spans > 0 => say!("drains in    ? (give --rate SPANS_PER_S for an estimate)"),
        _ => {}
    }
    say!(
        "dead letters {} spans in {} records",
        s.dead_letter_spans,
        s.dead_letter_records
    );
    say!("quarantined  {} records", s.quarantined_records);
    if s.unreadable_records > 0 {
        say!(
            "unreadable   {} records (run `spillway verify` for where and why)",
            s.unreadable_records
        );
    }
    let versions: Vec<String> = s.format_versions.iter().map(|(v, n)| format!("v{v}: {n}")).collect();
    say!(
        "formats      {}",
        if versions.is_empty() {
            "-".into()
        } else {
            versions.join(", ")
        }
    );
    for (service, spans) in &s.services {
        say!("service      {service}: {spans} spans");
    }
    for d in &s.damage {
        say!("damaged      {d}");
    }
    if s.damaged {
        say!(
            "             opening the spool (the tracer, replay, purge, salvage) sets these files aside and salvages every sound record back; nothing sound is lost"
        );
    }
    for a in &s.set_aside {
        say!("set aside    {a}");
    }
    Ok(())
}
