//! `spillway salvage`: every sound record of damaged spool files, read raw
//! without trusting sled, into a spool that works. See
//! `spillway::spool::salvage`.
//!
//! - `salvage FROM`: adds what the spool files in FROM hold (a copy made
//!   before anything opened a damaged spool, another machine's spool) to
//!   this spool. FROM is only read. Resumable; refused once done.
//! - `salvage` alone: opens this spool (which sets damaged files aside and
//!   salvages them, or resumes a salvage cut short), then salvages each of
//!   its set-aside directories not salvaged yet.

use crate::{Outcome, human_bytes, open, say};
use spillway::spool::salvage::{Report, SalvageError, salvage};
use spillway::unstable::spool::dir::set_asides;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Spool files to recover from (only read). Without it, this spool's
    /// own damaged files: set aside now if the spool is damaged, or earlier.
    from: Option<PathBuf>,
    /// Print the report as one JSON object (one per source salvaged, in
    /// `salvaged`; `set_aside`: where damaged files were moved).
    #[arg(long)]
    json: bool,
}

/// What a salvage did: a report per source salvaged, where the damaged
/// files were set aside (if this run did it), and whether a source failed.
struct Salvaged {
    reports: Vec<(PathBuf, Report)>,
    set_aside: Option<PathBuf>,
    failed: bool,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let from = args.from.filter(|f| f.canonicalize().ok() != dir.canonicalize().ok());
    if let Some(from) = &from
        && !from.is_dir()
    {
        return Err(format!("{} is not a directory", from.display()).into());
    }
    let done = salvage_into(dir, from.as_deref())?;
    if args.json {
        print_json(dir, &done)?;
    } else {
        print_text(dir, &done)?;
    }
    let unreadable_files = done.reports.iter().any(|(_, r)| !r.unreadable_files.is_empty());
    Ok(if done.failed || unreadable_files {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Opens the spool at `dir` and salvages `from` into it, or its own
/// set-aside directories when `from` is `None`.
fn salvage_into(dir: &Path, from: Option<&Path>) -> Result<Salvaged, Box<dyn std::error::Error>> {
    let mut spool = match from {
        // The target may be new: created, private, as the tracer would.
        Some(_) => {
            let spool = spillway::spool::Spool::open_with(dir, u64::MAX, std::time::Duration::ZERO)?;
            if let Some(d) = spool.damage() {
                crate::tell!("spillway: {d}");
            }
            spool
        }
        None => open(dir)?,
    };
    let mut done = Salvaged {
        reports: Vec::new(),
        set_aside: None,
        failed: false,
    };
    if let Some(mut d) = spool.take_damage()
        && let Some(aside) = d.set_aside.clone()
    {
        if let Some(report) = d.salvage.take() {
            done.reports.push((aside.clone(), *report));
        }
        done.set_aside = Some(aside);
    }
    let sources: Vec<PathBuf> = match from {
        Some(f) => vec![f.to_path_buf()],
        None => set_asides(dir),
    };
    for source in sources {
        match salvage(&source, &mut spool) {
            Ok(r) => done.reports.push((source, r)),
            // Salvaged before (by the open just now, or an earlier run).
            Err(SalvageError::AlreadyDone { .. }) if from.is_none() => {}
            Err(e) => {
                crate::tell!("spillway: {e}");
                done.failed = true;
            }
        }
    }
    Ok(done)
}

fn print_json(dir: &Path, done: &Salvaged) -> std::io::Result<()> {
    let salvaged: Vec<serde_json::Value> = done
        .reports
        .iter()
        .map(|(from, r)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["from"] = from.display().to_string().into();
            v
        })
        .collect();
    let mut out = serde_json::json!({
        "spool": dir.display().to_string(),
        "set_aside": done.set_aside.as_ref().map(|p| p.display().to_string()),
        "salvaged": salvaged,
    });
    // The first report's fields at the top level too, as before.
    if let Some((_, r)) = done.reports.first()
        && let (Some(o), Ok(serde_json::Value::Object(first))) = (out.as_object_mut(), serde_json::to_value(r))
    {
        for (k, v) in first {
            o.entry(k).or_insert(v);
        }
    }
    say!("{out}");
    Ok(())
}

fn print_text(dir: &Path, done: &Salvaged) -> std::io::Result<()> {
    if done.reports.is_empty() && done.set_aside.is_none() && !done.failed {
        say!(
            "the spool at {} is sound and every set-aside directory was salvaged: nothing to do",
            dir.display()
        );
    }
    for (from, r) in &done.reports {
        say!(
            "scanned {} files ({}) in {}",
            r.files,
            human_bytes(r.bytes_scanned),
            from.display()
        );
        say!(
            "recovered {} spans in {} records into the queue of {}{}",
            r.spans,
            r.records,
            dir.display(),
            if r.resumed { " (resumed where it stopped)" } else { "" }
        );
        if r.dead_letter_records > 0 {
            say!(
                "recovered {} dead-letter spans in {} records",
                r.dead_letter_spans,
                r.dead_letter_records
            );
        }
        say!(
            "skipped {} records already delivered or dropped (below watermark {}), {} stale copies",
            r.settled_records,
            r.watermark.map_or("-".into(), |w| w.to_string()),
            r.copies
        );
        if r.missing.records > 0 || r.missing.spans > 0 {
            say!(
                "lost {} records ({} spans) whose bytes are damaged",
                r.missing.records,
                r.missing.spans
            );
        }
        for u in &r.unreadable {
            say!("unreadable {} at byte {}: {}", u.file.display(), u.offset, u.reason);
        }
        for (file, why) in &r.unreadable_files {
            say!("unreadable file {}: {why}", file.display());
        }
    }
    Ok(())
}
