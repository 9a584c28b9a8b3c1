//! `spillway inspect`: what a spool holds, without changing it.

use crate::{Outcome, human_bytes, human_time, open, say};
use spillway::spool::{Part, record};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object (fields: batches, spans, bytes, record_bytes,
    /// oldest_unix_ms, newest_unix_ms, dead_letter_batches, dead_letter_spans,
    /// quarantined_records, unreadable_records, format_versions, services).
    #[arg(long)]
    json: bool,
}

/// What `inspect` reports; its JSON form is stable.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    spool: String,
    batches: u64,
    spans: u64,
    /// sled's size on disk.
    bytes: u64,
    /// Bytes of the queue's records.
    record_bytes: u64,
    oldest_unix_ms: Option<u64>,
    newest_unix_ms: Option<u64>,
    dead_letter_batches: u64,
    dead_letter_spans: u64,
    quarantined_records: u64,
    /// Queue and dead-letter records that fail their checks (see `verify`).
    unreadable_records: u64,
    /// Records by format version.
    format_versions: BTreeMap<u8, u64>,
    /// Queued spans by service name.
    services: BTreeMap<String, u64>,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let spool = open(dir)?;
    let mut s = Summary {
        spool: dir.display().to_string(),
        bytes: spool.size_on_disk(),
        quarantined_records: spool.stats().quarantined_records,
        ..Summary::default()
    };
    for part in [Part::Queue, Part::Dead] {
        for entry in spool.entries(part) {
            let entry = entry?;
            if let Ok(h) = record::header(entry.raw()) {
                *s.format_versions.entry(h.version).or_default() += 1;
            }
            if entry.spans.is_err() {
                s.unreadable_records += 1;
            }
            if part == Part::Dead {
                s.dead_letter_batches += 1;
                s.dead_letter_spans += entry.declared_spans;
                continue;
            }
            s.batches += 1;
            s.spans += entry.declared_spans;
            s.record_bytes += entry.bytes as u64;
            if entry.created_unix_ms > 0 {
                let t = Some(entry.created_unix_ms);
                s.oldest_unix_ms = s.oldest_unix_ms.min(t).or(t);
                s.newest_unix_ms = s.newest_unix_ms.max(t);
            }
            if let Ok(spans) = &entry.spans {
                *s.services.entry(entry.service.clone()).or_default() += spans.len() as u64;
            }
        }
    }
    if args.json {
        say!("{}", serde_json::to_string(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("spool        {}", s.spool);
    say!(
        "queue        {} spans in {} batches, {} of records, {} on disk",
        s.spans,
        s.batches,
        human_bytes(s.record_bytes),
        human_bytes(s.bytes)
    );
    say!(
        "oldest       {}\nnewest       {}",
        human_time(s.oldest_unix_ms),
        human_time(s.newest_unix_ms)
    );
    say!(
        "dead letters {} spans in {} batches",
        s.dead_letter_spans,
        s.dead_letter_batches
    );
    say!("quarantined  {} records", s.quarantined_records);
    if s.unreadable_records > 0 {
        say!(
            "unreadable   {} records (run `spillway verify` for keys and reasons)",
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
    Ok(ExitCode::SUCCESS)
}
